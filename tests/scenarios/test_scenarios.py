"""Balance-engine scenarios through the real gateway: one test per YAML file in this folder.

Each file runs on a ``gateway.bootstrap.Gateway`` over a SQLite file (``harness.ScenarioRun``): every step goes
through the service's public entry points and commits, and the expectations are checked against what the gateway
stored and published (ledger rows, outbox events, relay commands, the accounts' rows and the API's read models).
A file with ``postgres: true`` runs a second time on PostgreSQL (test id ``<file>-postgresql``, marked
``postgresql`` and ``tool("postgres")``: ``-m "not postgresql"`` leaves those out).

File format (also in docs/balance-engine.md)::

    description: what the scenario shows
    start: 2026-11-23T00:00:00Z          # the gateway's clock before the first step (UTC)
    postgres: true                       # optional: run on PostgreSQL too
    site: {...}                          # the site policy (settings' ``policy``, and ``timezone``); default: defaults
    holidays_file: holidays.example.txt  # optional holiday calendar file, relative to the scenario
    tariffs: {name: {...}}               # the settings' tariffs (gateway.domain.tariff_config)
    accounts:
      A-1:
        tariff: name
        balance: "10.00"                 # opening balance, yuan (the ledger's opening entry)
        thresholds: {warning1: "20.00", warning2: "5.00", overdraft: null, reconnect_min_topup: "1.00"}
                                         # overdraft null (default): from the credit class
        credit_class: AA                 # optional
        protected: false                 # protected by configuration
        meters: {M-1: {max_power_w: 10000}}   # the meters' settings (on one bus that is never polled)
    steps:
      - at: 2026-11-23T08:00:00Z         # or  after: 10m  (s, m, h, d); the clock never goes back
        <one action>                     # see below; the service evaluates what the action changed
        expect: {...}                    # see below; every key is optional

Actions (each one service call, returning after its commit): ``reading: {meter, energy_wh, rates_wh?: [r1..r4],
taken_at?}`` (``record_reading``) · ``readings: [{...}, ...]`` (several at once) · ``poll_failure: {meter, error?,
count?}`` or ``poll_failure: M-1`` (``record_failure``; 3 in a row make a meter offline) · ``payment: {id, amount,
source?, account?}`` · ``reversal: {id, source?, reason?}`` · ``tick: {}`` (``evaluate_accounts``: the accounts
whose deferred disconnect is due, ``deferred_until`` passed) · and operator actions as the API makes them
(``change_account``): ``protect: A-1`` · ``unprotect: A-1`` · ``hold: {until | for, account?}`` ·
``release_hold: A-1`` · ``accept: {meter, energy_wh?}`` · ``rebase: {meter, energy_wh?}`` ·
``emergency_credit: {amount?, account?}`` · ``adjust: {amount, reason, account?}``.

Expectations: ``events`` (the exact list of the domain events the step put in the outbox: a type name, or a
mapping with ``type`` and the fields to compare) · ``events_include`` (these, in this order, among others) ·
``events_exclude`` (type names) · ``decisions`` ({account: disconnect | reconnect}; the exact set of the engine's
decisions, each with the relay commands queued for the account's meters; default {}: an unexpected relay decision
always fails) · ``decision`` (for the step's account) · ``entries`` (the exact list of the ledger rows written,
mappings compared on the columns given) · ``charged`` (fen, the step's charge rows) · ``error`` (a substring of
the refusal, ``<ExceptionType>: <message>``; a step without it must not be refused) · account checks ``balance``
(yuan) / ``balance_fen`` / ``supply`` / ``credit_state`` (as the API shows it) / ``deferred`` (reason code, "" for
none) / ``state`` (a subset of the stored state, read back: ``state_dict()``), for the step's account or per
account under ``accounts: {A-1: {...}}`` · ``meters: {M-1: {health: ...}}`` (as the API shows the meter).
After every step the harness checks the ledger invariant, the stored state and the relay commands (see harness).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.scenarios.harness import ACTIONS, ScenarioRun, StepResult
from tests.scenarios.scenario_settings import yuan

HERE = Path(__file__).parent
FILES = sorted(HERE.glob("*.yaml"))
TOP_KEYS = {"description", "start", "postgres", "site", "holidays_file", "tariffs", "accounts", "steps"}
STEP_KEYS = {"at", "after", "expect", "note", *ACTIONS}
EXPECT_KEYS = {"events", "events_include", "decision", "events_exclude", "decisions", "entries", "charged", "error",
               "balance", "balance_fen", "supply", "credit_state", "deferred", "state", "accounts", "meters"}
ACCOUNT_KEYS = {"balance", "balance_fen", "supply", "credit_state", "deferred", "state"}
METER_KEYS = {"health"}


def _load(path: Path) -> dict[str, Any]:
    spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(spec, dict), f"{path.name}: not a mapping"
    return spec


def _cases() -> list[Any]:
    cases = [pytest.param(path, "sqlite", id=path.stem) for path in FILES]
    cases += [pytest.param(path, "postgresql", id=f"{path.stem}-postgresql",
                           marks=[pytest.mark.postgresql, pytest.mark.tool("postgres")])
              for path in FILES if _load(path).get("postgres")]
    return cases


def _same(want: Any, got: Any) -> bool:
    if isinstance(want, dt.datetime):  # a YAML timestamp against an ISO 8601 string of the outbox
        when = want if want.tzinfo is not None else want.replace(tzinfo=dt.UTC)
        try:
            return isinstance(got, str) and dt.datetime.fromisoformat(got) == when
        except ValueError:
            return False
    return bool(want == got)


def _matches(item: Any, got: dict[str, Any], kind_field: str) -> bool:
    """``item`` (a name or a mapping of expected fields) against an event payload (``type``) or a ledger row
    (``kind``)."""
    if isinstance(item, str):
        return bool(got[kind_field] == item)
    for key, want in item.items():
        assert key in got, f"{key!r} is not a field of {got[kind_field]} ({sorted(got)})"
        if not _same(want, got[key]):
            return False
    return True


def _describe(rows: list[dict[str, Any]]) -> str:
    return "\n  ".join(repr({k: v for k, v in row.items() if v is not None}) for row in rows) or "(none)"


def _subset(want: Any, got: Any, path: str) -> None:
    if isinstance(want, dict):
        assert isinstance(got, dict), f"{path}: expected a mapping, got {got!r}"
        for key, value in want.items():
            assert key in got, f"{path}.{key}: missing in {sorted(got)}"
            _subset(value, got[key], f"{path}.{key}")
    else:
        assert want == got, f"{path}: expected {want!r}, got {got!r}"


async def _check_account(run: ScenarioRun, account_id: str, want: dict[str, Any], where: str) -> None:
    unknown = set(want) - ACCOUNT_KEYS
    assert not unknown, f"{where}: unknown expectation(s) {unknown}"
    row = await run.account(account_id)
    if "balance" in want:
        assert row["balance_fen"] == yuan(want["balance"], allow_negative=True), \
            f"{where}: balance {row['balance_fen']} fen, expected {want['balance']}"
    if "balance_fen" in want:
        assert row["balance_fen"] == want["balance_fen"], f"{where}: balance {row['balance_fen']} fen"
    if "supply" in want:
        assert row["supply"] == want["supply"], f"{where}: supply {row['supply']}"
    if "credit_state" in want:
        credit = (await run.view(account_id))["credit"]
        assert credit == want["credit_state"], f"{where}: credit state {credit}"
    if "deferred" in want:
        assert row["deferred_reason"] == want["deferred"], f"{where}: deferred {row['deferred_reason']!r}"
    if "state" in want:
        _subset(want["state"], row["domain"].state_dict(), f"{where}: state")


async def _check_meter(run: ScenarioRun, meter_id: str, want: dict[str, Any], where: str) -> None:
    unknown = set(want) - METER_KEYS
    assert not unknown, f"{where}: unknown expectation(s) {unknown}"
    meter = await run.meter_view(meter_id)
    if "health" in want:
        assert meter["health"] == want["health"], f"{where}: health {meter['health']}"


async def _check(run: ScenarioRun, step: dict[str, Any], action: str, result: StepResult, where: str) -> None:
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
        assert not any(e["type"] == name for e in events), f"{where}: unexpected {name}"
    wanted = dict(expect.get("decisions") or {})
    if "decision" in expect:
        wanted[_step_account(run, step, action)] = expect["decision"]
    assert result.decisions == {a: d for a, d in wanted.items() if d != "none"}, \
        f"{where}: decisions {result.decisions}; relay commands:\n  {_describe(result.commands)}"
    if "entries" in expect:
        ok = len(expect["entries"]) == len(result.entries) and all(
            _matches(w, e, "kind") for w, e in zip(expect["entries"], result.entries, strict=True))
        assert ok, f"{where}: entries differ; got:\n  {_describe(result.entries)}"
    if "charged" in expect:
        assert result.charged_fen == expect["charged"], f"{where}: charged {result.charged_fen} fen"
    own = {k: v for k, v in expect.items() if k in ACCOUNT_KEYS}
    if own:
        await _check_account(run, _step_account(run, step, action), own, where)
    for account_id, want in (expect.get("accounts") or {}).items():
        await _check_account(run, account_id, want, f"{where} [{account_id}]")
    for meter_id, want in (expect.get("meters") or {}).items():
        await _check_meter(run, meter_id, want, f"{where} [{meter_id}]")


def _step_account(run: ScenarioRun, step: dict[str, Any], action: str) -> str:
    return run.account_for(run.params(step[action]))


@pytest.mark.parametrize(("path", "backend"), _cases())
async def test_scenario(path: Path, backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    spec = _load(path)
    unknown = set(spec) - TOP_KEYS
    assert not unknown, f"{path.name}: unknown key(s) {unknown}"
    if backend == "sqlite":
        db_url = f"sqlite:///{tmp_path / 'gw.db'}"
    else:
        db_url = str(request.getfixturevalue("pg_cluster").create_database())
    async with ScenarioRun(spec, path.parent, db_url, tmp_path) as run:
        for number, step in enumerate(spec["steps"], start=1):
            unknown = set(step) - STEP_KEYS
            assert not unknown, f"step {number}: unknown key(s) {unknown}"
            actions = [k for k in step if k in ACTIONS]
            assert len(actions) == 1, f"step {number}: exactly one action expected, got {actions}"
            run.advance(step)
            result = await run.step(actions[0], step[actions[0]])
            await _check(run, step, actions[0], result, f"{path.name} step {number} ({actions[0]})")


def test_there_are_enough_scenarios() -> None:
    assert len(FILES) >= 40
    assert sum(bool(_load(path).get("postgres")) for path in FILES) >= 3
