"""Runs a scenario file through the real gateway: ``gateway.bootstrap.Gateway`` on a real database.

``ScenarioRun`` builds the gateway's ``Settings`` from the scenario (``scenario_settings.py``: tariffs, site
policy, holiday calendar, accounts and their meters, on one Modbus TCP bus that is never polled:
``run_buses=False``), opens the gateway on a SQLite file (or a PostgreSQL database) with a clock the scenario
moves, and performs each step through the service's public entry points, the way the gateway's own callers do:

- readings as the bus scheduler hands them over (``service.record_reading``), failed polls as it reports them
  (``service.record_failure``), the periodic re-evaluation of deferred disconnects (``service.evaluate_accounts``);
- payments and reversals as the API's payment routes do (``service.record_payment`` / ``reverse_payment``);
- operator actions with the functions, audit actions and details of the API's routes, through
  ``service.change_account`` (``operator_actions.py``).

Each call returns after its commit. What the step did is then read back from the database (with an engine of
the harness's own, plain SQL on the gateway's tables): the ledger rows, the outbox events and the relay commands
it added. After every step the harness checks that each account's balance equals its ledger (opening entry
included, every ``balance_after`` the running sum), that the stored state reads back into the same account
with the row's columns agreeing with it, and that no meter has more than one active relay command. The file
format is in ``test_scenarios.py`` and ``docs/balance-engine.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
from pathlib import Path
from typing import Any, Self

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from drivers.base import Reading
from gateway.bootstrap import Gateway
from gateway.domain import events as ev
from gateway.domain.account import PrepaidAccount
from gateway.domain.errors import DomainError
from gateway.domain.relay import ACTIVE
from gateway.domain.timeutil import from_iso, parse_duration
from gateway.service.facade import PaymentConflict
from tests.scenarios.operator_actions import OPERATOR_ACTIONS, amount_fen, operator_action
from tests.scenarios.scenario_settings import settings_for

__all__ = ["ACTIONS", "ScenarioRun", "StepResult"]

ACTIONS = ("reading", "readings", "poll_failure", "payment", "reversal", "tick", *OPERATOR_ACTIONS)
BILLING = "billing"  # the name of the API key payments are posted and reversed under
DOMAIN_EVENTS = frozenset(cls.__name__ for cls in ev.Event.__subclasses__())
ACTIVE_STATES = ", ".join(sorted(f"'{state.value}'" for state in ACTIVE))  # an SQL list of constants
# what the service refuses (the API answers 4xx): the step's ``error``; anything else fails the test
REFUSALS = (DomainError, PaymentConflict, LookupError)


class Clock:
    """The gateway's time: where the scenario has moved it."""

    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


@dataclasses.dataclass
class StepResult:
    events: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # domain events in the outbox
    entries: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # new ledger rows, in order
    commands: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # new relay commands
    decisions: dict[str, str] = dataclasses.field(default_factory=dict)  # account -> disconnect | reconnect
    value: Any = None  # what the service call returned
    error: str | None = None

    @property
    def charged_fen(self) -> int:
        return -sum(e["amount_fen"] for e in self.entries if e["kind"] == "charge")


class ScenarioRun:
    """One scenario on one gateway: ``async with ScenarioRun(...) as run: await run.step(action, args)``."""

    def __init__(self, spec: dict[str, Any], base_dir: Path, db_url: str, work_dir: Path) -> None:
        self.settings = settings_for(spec, base_dir, db_url)
        self.db_url = db_url
        self.work_dir = work_dir
        start = from_iso(spec["start"])
        assert start is not None
        self.clock = Clock(start)
        self.account_ids = list(spec["accounts"])
        self.meter_account = {m.id: m.account for m in self.settings.meters}
        self._stack = contextlib.AsyncExitStack()
        self.gateway: Gateway
        self.db: AsyncEngine

    @property
    def now(self) -> dt.datetime:
        return self.clock.now

    async def __aenter__(self) -> Self:
        try:
            self.gateway = await self._stack.enter_async_context(
                Gateway(self.settings, clock=self.clock, base_dir=self.work_dir, run_buses=False))
            self.db = _reader(self.db_url)
            self._stack.push_async_callback(self.db.dispose)
            await self.check_invariants()  # the opening balances
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._stack.aclose()

    # --- time -----------------------------------------------------------------------------------------------
    def advance(self, step: dict[str, Any]) -> None:
        if "at" in step:
            when = from_iso(step["at"])
        elif "after" in step:
            when = self.now + parse_duration(step["after"], "after")
        else:
            return
        assert when is not None and when >= self.now, "the clock must not go backwards"
        self.clock.now = when

    # --- which account a step is about ----------------------------------------------------------------------
    def params(self, args: Any) -> dict[str, Any]:
        if isinstance(args, str):
            return {"meter" if args in self.meter_account else "account": args}
        return dict(args) if isinstance(args, dict) else {}

    def account_for(self, params: dict[str, Any]) -> str:
        if "account" in params:
            return str(params["account"])
        if "meter" in params:
            return self.meter_account[str(params["meter"])]
        assert len(self.account_ids) == 1, f"name the account for {params!r}"
        return self.account_ids[0]

    # --- steps ----------------------------------------------------------------------------------------------
    async def step(self, action: str, args: Any) -> StepResult:
        """Perform one action through the gateway and read back what it stored and published."""
        marks = await self._marks()
        result = StepResult()
        try:
            result.value = await self._do(action, args)
        except REFUSALS as exc:  # refused: the service changes nothing (checked below: no rows)
            result.error = f"{type(exc).__name__}: {exc}"
        await self._collect(marks, result)
        if result.error is not None:
            assert not (result.entries or result.events or result.commands), \
                f"a refused action left rows behind: {result.entries} {result.events} {result.commands}"
        if action in ("accept", "rebase") and result.error is None:  # what the API answers as "charged"
            assert result.value == result.charged_fen, \
                f"{action} returned a charge of {result.value} fen, the ledger says {result.charged_fen}"
        await self.check_invariants()
        return result

    async def _do(self, action: str, args: Any) -> Any:
        service, now = self.gateway.service, self.now
        params = self.params(args)
        if action == "reading":
            return await service.record_reading(self._reading(params))
        if action == "readings":  # several polls handed over at once (as a bus scheduler does)
            return await asyncio.gather(*(service.record_reading(self._reading(dict(r))) for r in args))
        if action == "tick":
            assert args in ({}, None), "tick takes no arguments: the service re-evaluates the accounts that are due"
            return await service.evaluate_accounts()
        if action == "poll_failure":
            for _ in range(int(params.get("count", 1))):
                await service.record_failure(str(params["meter"]), str(params.get("error", "timeout")))
            return None
        if action == "payment":  # as POST /v1/payments
            return await service.record_payment(
                source=str(params.get("source", "billing")), payment_id=str(params["id"]),
                account_id=self.account_for(params), amount_fen=amount_fen(service, params["amount"]), paid_at=now,
                recorded_by=BILLING)
        if action == "reversal":  # as POST /v1/payments/{source}/{payment_id}/reversal
            return await service.reverse_payment(source=str(params.get("source", "billing")),
                                                 payment_id=str(params["id"]), reason=str(params.get("reason", "")),
                                                 reversed_by=BILLING)
        return await operator_action(service, action, self.account_for(params), params, now)

    def _reading(self, params: dict[str, Any]) -> Reading:
        taken_at = from_iso(params["taken_at"]) if "taken_at" in params else self.now
        assert taken_at is not None
        rates = params.get("rates_wh")
        return Reading(str(params["meter"]), taken_at, int(params["energy_wh"]),
                       energy_wh_by_rate=tuple(int(r) for r in rates) if rates is not None else None)

    # --- what the gateway stored ----------------------------------------------------------------------------
    async def _rows(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        async with self.db.connect() as conn:
            return [dict(row._mapping) for row in await conn.execute(sa.text(sql), params)]

    async def _marks(self) -> tuple[int, int, set[str]]:
        ledger = await self._rows("SELECT COALESCE(MAX(id), 0) AS n FROM ledger_entries")
        outbox = await self._rows("SELECT COALESCE(MAX(id), 0) AS n FROM outbox")
        commands = await self._rows("SELECT id FROM commands")
        return ledger[0]["n"], outbox[0]["n"], {c["id"] for c in commands}

    async def _collect(self, marks: tuple[int, int, set[str]], result: StepResult) -> None:
        ledger_mark, outbox_mark, known = marks
        result.entries = await self._rows("SELECT * FROM ledger_entries WHERE id > :m ORDER BY id", m=ledger_mark)
        for row in await self._rows("SELECT payload FROM outbox WHERE id > :m ORDER BY id", m=outbox_mark):
            payload = _json(row["payload"])
            if payload.get("type") in DOMAIN_EVENTS:
                result.events.append(payload)
        result.commands = [c for c in await self._rows("SELECT * FROM commands ORDER BY created_at, meter_id")
                           if c["id"] not in known]
        # The engine's decisions: its events, and the relay commands the gateway queued for them (one per meter
        # of the account; operator commands are not the engine's).
        by_events: dict[str, str] = {}
        for event in result.events:
            kind = {"DisconnectRequired": "disconnect", "ReconnectRequired": "reconnect"}.get(event["type"])
            if kind is not None:
                assert event["account_id"] not in by_events, f"two decisions for {event['account_id']} in one step"
                by_events[event["account_id"]] = kind
        by_commands: dict[str, set[str]] = {}
        for command in result.commands:
            if command["origin"] != "operator":
                assert command["state"] == "queued", f"a new command is {command['state']}: {command}"
                action = {"open": "disconnect", "close": "reconnect"}[command["action"]]
                by_commands.setdefault(self.meter_account[command["meter_id"]], set()).add(action)
        for account_id in set(by_events) | set(by_commands):
            meters = sorted(m for m, a in self.meter_account.items() if a == account_id)
            if meters:
                wanted = {by_events[account_id]} if account_id in by_events else set()
                assert by_commands.get(account_id, set()) == wanted, \
                    f"{account_id}: decision {by_events.get(account_id)} but relay commands {result.commands}"
                made = sorted(c["meter_id"] for c in result.commands
                              if c["origin"] != "operator" and self.meter_account[c["meter_id"]] == account_id)
                assert made == meters, f"{account_id}: commands for {made}, the account's meters are {meters}"
        result.decisions = by_events

    async def account(self, account_id: str) -> dict[str, Any]:
        """The account's row, with the engine's state read back from it (``PrepaidAccount``) as ``domain``."""
        [row] = await self._rows("SELECT * FROM accounts WHERE id = :id", id=account_id)
        row["state"] = _json(row["state"])
        row["domain"] = self.gateway.service.catalog.account(account_id, row["state"])
        return row

    async def view(self, account_id: str) -> dict[str, Any]:
        """The account as the API shows it (``service.views``)."""
        return await self.gateway.service.views.account(account_id)

    async def meter_view(self, meter_id: str) -> dict[str, Any]:
        return await self.gateway.service.views.meter(meter_id)

    async def check_invariants(self) -> None:
        """Balance == opening entry + the sum of the ledger; the stored state reads back, and the row's columns agree
        with it; at most one active relay command per meter."""
        running: dict[str, int] = {}
        for entry in await self._rows("SELECT id, account_id, kind, amount_fen, balance_after_fen "
                                      "FROM ledger_entries ORDER BY id"):
            account_id = entry["account_id"]
            assert (account_id in running) == (entry["kind"] != "opening"), f"entry {entry}: opening entry first"
            running[account_id] = running.get(account_id, 0) + entry["amount_fen"]
            assert entry["balance_after_fen"] == running[account_id], f"entry {entry} does not follow the ledger"
        for account_id in self.account_ids:
            row = await self.account(account_id)
            account: PrepaidAccount = row["domain"]
            assert row["balance_fen"] == running[account_id], \
                f"{account_id}: balance {row['balance_fen']} != ledger sum {running[account_id]}"
            assert (row["balance_fen"], row["supply"], row["deferred_reason"], _utc(row["deferred_until"])) == (
                account.balance_fen, account.supply.value, account.deferred_reason, account.deferred_until), \
                f"{account_id}: the row's columns disagree with its state {row['state']}"
            state = account.state_dict()
            assert self.gateway.service.catalog.account(account_id, json.loads(json.dumps(state))).state_dict() \
                == state, f"{account_id}: the state does not round-trip"
        busy = await self._rows(f"SELECT meter_id, COUNT(*) AS n FROM commands WHERE state IN ({ACTIVE_STATES}) "
                                "GROUP BY meter_id HAVING COUNT(*) > 1")
        assert not busy, f"meters with more than one active relay command: {busy}"


def _reader(db_url: str) -> AsyncEngine:
    """The harness's own engine on the gateway's database (reads only)."""
    if db_url.startswith("sqlite:///"):
        return create_async_engine("sqlite+aiosqlite:///" + db_url.removeprefix("sqlite:///"))
    return create_async_engine("postgresql+asyncpg://" + db_url.split("://", 1)[1])


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str | bytes) else value


def _utc(value: Any) -> dt.datetime | None:
    """A stored time (SQLite gives text without a zone, PostgreSQL an aware datetime) as aware UTC."""
    if value is None:
        return None
    when = dt.datetime.fromisoformat(value) if isinstance(value, str) else value
    return when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when.astimezone(dt.UTC)
