"""A small in-memory stand-in for the service: it drives the pure domain the way the service does.

For every step it loads each account it touches from its JSON state (``PrepaidAccount.from_state``), applies the
action, evaluates the account (with the site's rate limiter), drains events and ledger entries, saves the state
back as JSON, and checks that the balance equals the sum of the ledger (opening entry included). Payments and
reversals are idempotent by ``(source, payment_id)`` as in the service. The file format is in
``test_scenarios.py`` and ``docs/balance-engine.md``.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.domain.account import Decision, PrepaidAccount, Thresholds
from gateway.domain.errors import DomainError
from gateway.domain.events import Event
from gateway.domain.ledger import LedgerEntry
from gateway.domain.money import parse_yuan
from gateway.domain.policy import SitePolicy
from gateway.domain.policy_config import site_policy_from_dict
from gateway.domain.tariff_config import tariff_from_dict
from gateway.domain.tariffs import Tariff
from gateway.domain.timeutil import from_iso, parse_duration

__all__ = ["ACTIONS", "AccountConfig", "Harness", "StepResult", "yuan"]

ACTIONS = ("reading", "payment", "reversal", "tick", "protect", "unprotect", "hold", "release_hold", "accept",
           "rebase", "emergency_credit", "adjust", "offline", "online")


def yuan(value: Any, *, allow_negative: bool = False) -> int:
    """A YAML amount in yuan ("12.34", or an integer) -> fen."""
    return parse_yuan(str(value), allow_zero=True, allow_negative=allow_negative)


@dataclass(frozen=True)
class AccountConfig:
    id: str
    tariff: Tariff
    thresholds: Thresholds
    credit_class: str
    protected: bool
    meters: dict[str, dict[str, Any]]


@dataclass
class StepResult:
    events: list[Event] = field(default_factory=list)
    entries: dict[str, list[LedgerEntry]] = field(default_factory=dict)
    decisions: dict[str, Decision] = field(default_factory=dict)
    charged_fen: int = 0
    error: str | None = None


class Harness:
    def __init__(self, spec: dict[str, Any], base_dir: Path) -> None:
        holidays_text = None
        if "holidays_file" in spec:
            holidays_text = (base_dir / spec["holidays_file"]).read_text(encoding="utf-8")
        self.site: SitePolicy = site_policy_from_dict(spec.get("site"), holidays_text=holidays_text,
                                                      holidays_source=spec.get("holidays_file", "holidays"))
        tariffs = {name: tariff_from_dict(t, where=f"tariffs.{name}") for name, t in spec["tariffs"].items()}
        self.configs: dict[str, AccountConfig] = {}
        self.states: dict[str, str] = {}
        self.ledger: dict[str, list[dict[str, Any]]] = {}
        self.meter_account: dict[str, str] = {}
        for account_id, a in spec["accounts"].items():
            th = a.get("thresholds") or {}
            overdraft = th.get("overdraft")
            thresholds = Thresholds(
                warning1_fen=yuan(th.get("warning1", "20.00")), warning2_fen=yuan(th.get("warning2", "5.00")),
                overdraft_fen=None if overdraft is None else yuan(overdraft),
                reconnect_min_topup_fen=yuan(th.get("reconnect_min_topup", "1.00")))
            config = AccountConfig(account_id, tariffs[a["tariff"]], thresholds, a.get("credit_class", ""),
                                   bool(a.get("protected", False)), dict(a.get("meters") or {}))
            self.configs[account_id] = config
            opening = yuan(a.get("balance", "0"), allow_negative=True)
            account = PrepaidAccount(account_id, config.tariff, thresholds, balance_fen=opening, site=self.site,
                                     credit_class=config.credit_class, protected=config.protected)
            self.states[account_id] = json.dumps(account.state_dict())
            self.ledger[account_id] = [{"kind": "opening", "amount_fen": opening, "balance_after_fen": opening}]
            for meter_id in config.meters:
                self.meter_account[meter_id] = account_id
        self.limiter_state: dict[str, Any] = {}
        self.payments: dict[tuple[str, str], tuple[str, int]] = {}
        self.reversed: set[tuple[str, str]] = set()
        self.offline: set[str] = set()
        start = from_iso(str(spec["start"]))
        assert start is not None
        self.now: dt.datetime = start

    # --- persistence, as the service does it ------------------------------------------------------------
    def load(self, account_id: str) -> PrepaidAccount:
        config = self.configs[account_id]
        account = PrepaidAccount.from_state(json.loads(self.states[account_id]), id=account_id, tariff=config.tariff,
                                            thresholds=config.thresholds, site=self.site,
                                            credit_class=config.credit_class, protected=config.protected)
        for meter_id, options in config.meters.items():
            account.add_meter(meter_id, **(options or {}))
        return account

    def save(self, account: PrepaidAccount, result: StepResult) -> None:
        entries, account.entries = account.entries, []
        events, account.events = account.events, []
        result.events += events
        result.entries.setdefault(account.id, []).extend(entries)
        ledger = self.ledger[account.id]
        for entry in entries:
            expected_after = ledger[-1]["balance_after_fen"] + entry.amount_fen
            assert entry.balance_after_fen == expected_after, f"entry {entry} does not follow the ledger"
            ledger.append(entry.to_dict())
        total = sum(e["amount_fen"] for e in ledger)
        assert account.balance_fen == total, f"{account.id}: balance {account.balance_fen} != ledger sum {total}"
        state = account.state_dict()
        text = json.dumps(state)
        reloaded = PrepaidAccount.from_state(json.loads(text), id=account.id, tariff=account.tariff,
                                             thresholds=account.thresholds, site=self.site,
                                             credit_class=account.credit_class, protected=account.protected)
        assert reloaded.state_dict() == state, "state does not round-trip through JSON"
        self.states[account.id] = text

    def evaluate(self, account: PrepaidAccount, result: StepResult) -> None:
        limiter = self.site.limiter(self.limiter_state)
        offline = {m for m in account.cursors if m in self.offline}
        decision = account.evaluate(self.now, offline=offline, limiter=limiter)
        self.limiter_state = limiter.state_dict()
        if decision is not Decision.NONE:
            result.decisions[account.id] = decision

    # --- steps ------------------------------------------------------------------------------------------
    def advance(self, step: dict[str, Any]) -> None:
        if "at" in step:
            when = from_iso(str(step["at"]))
        elif "after" in step:
            when = self.now + parse_duration(step["after"], "after")
        else:
            return
        assert when is not None and when >= self.now, "the clock must not go backwards"
        self.now = when

    def account_for(self, params: dict[str, Any]) -> str:
        if "account" in params:
            return str(params["account"])
        if "meter" in params:
            return self.meter_account[str(params["meter"])]
        assert len(self.configs) == 1, f"name the account for {params!r}"
        return next(iter(self.configs))

    def run(self, action: str, args: Any) -> StepResult:
        result = StepResult()
        if action == "tick":
            for account_id in sorted(args if isinstance(args, list) else self.configs):
                account = self.load(account_id)
                self.evaluate(account, result)
                self.save(account, result)
            return result
        params: dict[str, Any] = dict(args) if isinstance(args, dict) else {}
        if isinstance(args, str):
            params["meter" if args in self.meter_account else "account"] = args
        account = self.load(self.account_for(params))
        try:
            result.charged_fen = self._apply(account, action, params)
        except (DomainError, ValueError) as exc:  # a refused action: nothing is saved
            result.error = f"{type(exc).__name__}: {exc}"
            return result
        self.evaluate(account, result)
        self.save(account, result)
        return result

    def _apply(self, account: PrepaidAccount, action: str, args: dict[str, Any]) -> int:
        now = self.now
        if action == "reading":
            taken_at = from_iso(str(args["taken_at"])) if "taken_at" in args else now
            assert taken_at is not None
            return account.apply_reading(str(args["meter"]), int(args["energy_wh"]), taken_at,
                                         rates_wh=args.get("rates_wh"))
        if action == "payment":
            key = (str(args.get("source", "billing")), str(args["id"]))
            amount = yuan(args["amount"])
            if key in self.payments:  # idempotent: the same payment again changes nothing
                if self.payments[key] != (account.id, amount):
                    raise ValueError(f"payment {key[0]}/{key[1]} conflicts with the recorded one")
                return 0
            self.payments[key] = (account.id, amount)
            account.apply_payment(key[0], key[1], amount)
        elif action == "reversal":
            key = (str(args.get("source", "billing")), str(args["id"]))
            if key in self.reversed:
                return 0
            account_id, amount = self.payments[key]
            assert account_id == account.id
            self.reversed.add(key)
            account.apply_reversal(key[0], key[1], amount, reason=str(args.get("reason", "")))
        elif action in ("protect", "unprotect"):
            account.set_protected(action == "protect", by="operator")
        elif action == "hold":
            until = from_iso(str(args["until"])) if "until" in args else now + parse_duration(args["for"])
            assert until is not None
            account.place_hold(until, by="operator")
        elif action == "release_hold":
            account.release_hold(by="operator")
        elif action == "accept":
            return account.accept_reading(str(args["meter"]), energy_wh=args.get("energy_wh"), by="operator")
        elif action == "rebase":
            return account.rebase_meter(str(args["meter"]), energy_wh=args.get("energy_wh"), by="operator")
        elif action == "emergency_credit":
            grant = yuan(args["amount"]) if "amount" in args else None
            account.grant_emergency_credit(now, amount_fen=grant, by="operator")
        elif action == "adjust":
            account.apply_adjustment(yuan(args["amount"], allow_negative=True), str(args.get("reason", "")))
        elif action in ("offline", "online"):
            meter = str(args["meter"])
            (self.offline.add if action == "offline" else self.offline.discard)(meter)
        else:
            raise AssertionError(f"unknown action {action}")
        return 0
