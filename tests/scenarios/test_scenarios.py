"""Balance-engine scenarios: one test per YAML file in this folder, run through ``harness.Harness``.

File format (also in docs/balance-engine.md; the same files can later be run through the real service)::

    description: what the scenario shows
    start: 2026-11-23T00:00:00Z          # the clock before the first step (UTC)
    site: {...}                          # SitePolicy data (gateway.domain.policy_config); default: all defaults
    holidays_file: holidays.example.txt  # optional holiday calendar file, relative to the scenario
    tariffs: {name: {...}}               # tariff data (gateway.domain.tariff_config)
    accounts:
      A-1:
        tariff: name
        balance: "10.00"                 # opening balance, yuan (the ledger's opening entry)
        thresholds: {warning1: "20.00", warning2: "5.00", overdraft: null, reconnect_min_topup: "1.00"}
                                         # overdraft null (default): from the credit class
        credit_class: AA                 # optional
        protected: false                 # protected by configuration
        meters: {M-1: {max_power_w: 10000, rollover_wh: 1000000000, margin: 1.5, resolution_wh: 10}}
    steps:
      - at: 2026-11-23T08:00:00Z         # or  after: 10m  (s, m, h, d); the clock never goes back
        <one action>                     # see below; the harness then evaluates the account(s)
        expect: {...}                    # see below; every key is optional

Actions: ``reading: {meter, energy_wh, rates_wh?: [r1..r4], taken_at?}`` · ``payment: {id, amount, source?,
account?}`` · ``reversal: {id, source?}`` · ``tick: {}`` (evaluate every account, or ``tick: [A-1, A-2]``) ·
``protect: A-1`` · ``unprotect: A-1`` · ``hold: {until | for, account?}`` · ``release_hold: A-1`` ·
``accept: {meter, energy_wh?}`` · ``rebase: {meter, energy_wh?}`` · ``emergency_credit: {amount?, account?}`` ·
``adjust: {amount, reason, account?}`` · ``offline: M-1`` · ``online: M-1``.

Expectations: ``events`` (the exact list of events of the step: a type name, or a mapping with ``type`` and the
fields to compare) · ``events_include`` (these, in this order, among others) · ``events_exclude`` (type names) ·
``decisions`` ({account: disconnect | reconnect}; the exact set of non-"none" decisions, default {} — an
unexpected relay decision always fails) · ``entries`` (the exact list of ledger entries, mappings compared on the
keys given) · ``charged`` (fen) · ``error`` (a substring of the refusal of an operator action) · account checks
``balance`` (yuan) / ``balance_fen`` / ``supply`` / ``credit_state`` / ``deferred`` (reason code, "" for none) /
``state`` (a subset of ``state_dict()``), for the step's account, or per account under ``accounts: {A-1: {...}}``.
After every step the harness checks balance == opening + sum of ledger entries, and the JSON round trip.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.scenarios.harness import ACTIONS, Harness, StepResult, yuan

HERE = Path(__file__).parent
FILES = sorted(HERE.glob("*.yaml"))
TOP_KEYS = {"description", "start", "site", "holidays_file", "tariffs", "accounts", "steps"}
STEP_KEYS = {"at", "after", "expect", "note", *ACTIONS}
EXPECT_KEYS = {"events", "events_include", "decision", "events_exclude", "decisions", "entries", "charged", "error", "balance",
               "balance_fen", "supply", "credit_state", "deferred", "state", "accounts"}
ACCOUNT_KEYS = {"balance", "balance_fen", "supply", "credit_state", "deferred", "state"}


def _plain(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, enum.Enum):
        return value.value
    return value


def _matches(item: Any, obj: Any, kind_field: str) -> bool:
    """``item`` (a name or a mapping of expected fields) against an event or entry."""
    name = type(obj).__name__ if kind_field == "type" else _plain(obj.kind)
    if isinstance(item, str):
        return bool(name == item)
    expected = dict(item)
    if kind_field in expected and expected.pop(kind_field) != name:
        return False
    for key, want in expected.items():
        got = _plain(getattr(obj, key))
        if isinstance(want, dt.datetime):
            want = _plain(want)
        if got != want:
            return False
    return True


def _describe(objs: list[Any]) -> str:
    return "\n  ".join(repr({k: _plain(v) for k, v in dataclasses.asdict(o).items()} | {"_": type(o).__name__})
                       for o in objs) or "(none)"


def _subset(want: Any, got: Any, path: str) -> None:
    if isinstance(want, dict):
        assert isinstance(got, dict), f"{path}: expected a mapping, got {got!r}"
        for key, value in want.items():
            assert key in got, f"{path}.{key}: missing in {sorted(got)}"
            _subset(value, got[key], f"{path}.{key}")
    else:
        assert want == got, f"{path}: expected {want!r}, got {got!r}"


def _check_account(h: Harness, account_id: str, want: dict[str, Any], where: str) -> None:
    unknown = set(want) - ACCOUNT_KEYS
    assert not unknown, f"{where}: unknown expectation(s) {unknown}"
    account = h.load(account_id)
    if "balance" in want:
        assert account.balance_fen == yuan(want["balance"], allow_negative=True), \
            f"{where}: balance {account.balance_fen} fen, expected {want['balance']}"
    if "balance_fen" in want:
        assert account.balance_fen == want["balance_fen"], f"{where}: balance {account.balance_fen} fen"
    if "supply" in want:
        assert account.supply.value == want["supply"], f"{where}: supply {account.supply.value}"
    if "credit_state" in want:
        assert account.credit_state() == want["credit_state"], f"{where}: credit state {account.credit_state()}"
    if "deferred" in want:
        assert account.deferred_reason == want["deferred"], f"{where}: deferred {account.deferred_reason!r}"
    if "state" in want:
        _subset(want["state"], account.state_dict(), f"{where}: state")


def _check(h: Harness, step: dict[str, Any], action: str, result: StepResult, where: str) -> None:
    expect = step.get("expect") or {}
    unknown = set(expect) - EXPECT_KEYS
    assert not unknown, f"{where}: unknown expectation(s) {unknown}"
    if result.error is not None:
        assert "error" in expect, f"{where}: unexpected error {result.error}"
        assert expect["error"] in result.error, f"{where}: error {result.error!r}"
    elif "error" in expect:
        raise AssertionError(f"{where}: expected the error {expect['error']!r}, the action succeeded")
    events = result.events
    if "events" in expect:
        ok = len(expect["events"]) == len(events) and all(
            _matches(w, e, "type") for w, e in zip(expect["events"], events, strict=True))
        assert ok, f"{where}: events differ; got:\n  {_describe(events)}"
    if "events_include" in expect:
        remaining = iter(events)
        for want in expect["events_include"]:
            assert any(_matches(want, e, "type") for e in remaining), \
                f"{where}: no event {want!r} (in order); got:\n  {_describe(events)}"
    for name in expect.get("events_exclude", []):
        assert not any(type(e).__name__ == name for e in events), f"{where}: unexpected {name}"
    decisions = {a: d.value for a, d in result.decisions.items()}
    wanted = dict(expect.get("decisions") or {})
    if "decision" in expect:
        wanted[_step_account(h, step, action)] = expect["decision"]
    assert decisions == {a: d for a, d in wanted.items() if d != "none"}, f"{where}: decisions {decisions}"
    if "entries" in expect:
        entries = [e for es in result.entries.values() for e in es]
        ok = len(expect["entries"]) == len(entries) and all(
            _matches(w, e, "kind") for w, e in zip(expect["entries"], entries, strict=True))
        assert ok, f"{where}: entries differ; got:\n  {_describe(entries)}"
    if "charged" in expect:
        assert result.charged_fen == expect["charged"], f"{where}: charged {result.charged_fen} fen"
    own = {k: v for k, v in expect.items() if k in ACCOUNT_KEYS}
    if own:
        _check_account(h, _step_account(h, step, action), own, where)
    for account_id, want in (expect.get("accounts") or {}).items():
        _check_account(h, account_id, want, f"{where} [{account_id}]")


def _step_account(h: Harness, step: dict[str, Any], action: str) -> str:
    args = step[action]
    params = dict(args) if isinstance(args, dict) else {}
    if isinstance(args, str):
        params = {"meter" if args in h.meter_account else "account": args}
    return h.account_for(params)


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_scenario(path: Path) -> None:
    spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    unknown = set(spec) - TOP_KEYS
    assert not unknown, f"{path.name}: unknown key(s) {unknown}"
    h = Harness(spec, path.parent)
    for number, step in enumerate(spec["steps"], start=1):
        unknown = set(step) - STEP_KEYS
        assert not unknown, f"step {number}: unknown key(s) {unknown}"
        actions = [k for k in step if k in ACTIONS]
        assert len(actions) == 1, f"step {number}: exactly one action expected, got {actions}"
        h.advance(step)
        result = h.run(actions[0], step[actions[0]])
        _check(h, step, actions[0], result, f"{path.name} step {number} ({actions[0]})")


def test_there_are_enough_scenarios() -> None:
    assert len(FILES) >= 40
