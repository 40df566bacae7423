"""The two write paths of the writer's batches store the same rows: the portable one (SQLAlchemy Core multi-row
statements, SQLite and PostgreSQL) and the SQLite pipeline (driver statements on a connection of its own). Both
refuse a batch whose rows changed since they were read, and write nothing of it."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from gateway.adapters import bulk
from gateway.adapters import tables as t
from gateway.adapters.account_rows import account_row, state_json
from gateway.adapters.database import create_engine
from gateway.adapters.sql import LIMITER, SqlStorage, chunks
from gateway.adapters.sqlite_pipeline import SqlitePipelineStorage
from gateway.domain.account import PrepaidAccount, Thresholds
from gateway.domain.billing import TariffChange
from gateway.domain.tariff_config import tariff_from_dict
from gateway.service.catalog import MeterSpec
from gateway.service.ports import BatchChanges, StaleWrite
from tests.unit.test_domain_state import SITE, TOU, busy_account

T0 = dt.datetime(2026, 11, 23, 8, 0, 0, 123456, tzinfo=dt.UTC)
SHANGHAI = ZoneInfo("Asia/Shanghai")
FLAT = tariff_from_dict({"kind": "flat", "price": "0.5600"})


def account(account_id: str, balance_fen: int) -> PrepaidAccount:
    a = PrepaidAccount(account_id, FLAT, Thresholds(2000, 500), balance_fen=balance_fen, site=SITE)
    a.add_meter(f"M-{account_id}")
    return a


async def prepared(url: str, *, pipeline: bool = False, accounts: int = 3) -> SqlStorage:
    engine = create_engine(url)
    async with engine.begin() as conn:
        await conn.run_sync(t.metadata.create_all)
    storage = SqlitePipelineStorage(engine) if pipeline else SqlStorage(engine)
    async with storage() as uow:
        await uow.accounts.add([account(f"A-{i:03d}", 1_000) for i in range(accounts)], T0)
        await uow.fleet.put_meters([MeterSpec(f"M-A-{i:03d}", f"A-{i:03d}", f"b{i // 247}", unit_id=i % 247 + 1)
                                    for i in range(accounts)], rev=1)
        await uow.ensure_limiter()
        await uow.commit()
    return storage


def batch(n: int = 3) -> BatchChanges:
    """A batch of every kind of row, with the odd values: a time in another zone, NULLs, JSON, floats."""
    later = T0.astimezone(SHANGHAI) + dt.timedelta(seconds=1)
    changed = [account(f"A-{i:03d}", 900 + i) for i in range(n)]
    changed[0].deferred_reason, changed[0].deferred_until = "notice_period", later
    return BatchChanges(
        now=T0,
        accounts=[(a.id, 0, account_row(a, T0)) for a in changed],
        ledger=[dict(account_id=a.id, kind="charge", amount_fen=-100, balance_after_fen=a.balance_fen, created_at=T0,
                     reference=None, payment_source=None, payment_id=None, meter_id=f"M-{a.id}", energy_wh=178,
                     reading_wh=1_178, period="2026-11", detail=None) for a in changed],
        payments=[dict(source="billing", payment_id="P-1", account_id="A-000", amount_fen=500, paid_at=later,
                       channel=None, balance_after_fen=1_500, received_at=T0, reversed_at=None, reversal_reason=None,
                       recorded_by="erp", reversed_by=None)],
        readings=[dict(meter_id=f"M-{a.id}", taken_at=later, energy_wh=1_178, power_w=None, voltage_v=230.5,
                       current_a=None, relay="closed", billed=True) for a in changed],
        meters={"M-A-000": {"health": "online", "consecutive_failures": 0, "last_error": None,
                            "last_success_at": later},
                "M-A-001": {"relay": "open", "last_success_at": T0}},
        limiter=({"recent": []}, {"recent": [T0.isoformat()]}),
        outbox=[dict(topic="accounts/A-000/balance", payload={"balance_fen": 900, "at": later.astimezone(dt.UTC),
                                                                "n": [1, None]},
                     created_at=T0)],
        audits=[dict(at=T0, actor="op", action="payment.reverse", target="A-000", detail=None)])


TABLES = (t.accounts, t.meters, t.readings, t.ledger, t.payments, t.outbox, t.audit_log, t.site_state)


async def rows(storage: SqlStorage) -> dict[str, list[dict[str, Any]]]:
    async with storage.reading() as conn:
        return {table.name: [dict(r) for r in (await conn.execute(
            sa.select(table).order_by(*table.primary_key.columns))).mappings()] for table in TABLES}


async def raw(storage: SqlStorage) -> dict[str, list[tuple[Any, ...]]]:
    """What is in the SQLite file, as the driver reads it (no type conversion)."""
    async with storage.reading() as conn:
        return {table.name: [tuple(r) for r in (await conn.exec_driver_sql(
            f"SELECT * FROM {table.name} ORDER BY rowid"))] for table in TABLES}


async def test_the_pipeline_stores_the_very_rows_of_the_portable_path(tmp_path: Path) -> None:
    portable = await prepared(f"sqlite:///{tmp_path / 'portable.db'}")
    pipeline = await prepared(f"sqlite:///{tmp_path / 'pipeline.db'}", pipeline=True)
    try:
        for storage in (portable, pipeline):
            await storage.commit_batch(batch())
        assert await raw(pipeline) == await raw(portable)  # the same text in the file, byte for byte
        stored = await rows(portable)
        assert [a["version"] for a in stored["accounts"]] == [1, 1, 1]
        assert stored["accounts"][0]["deferred_until"] == T0 + dt.timedelta(seconds=1)
        assert stored["site_state"] == [{"name": LIMITER, "state": {"recent": [T0.isoformat()]}}]
        assert stored["outbox"][0]["payload"] == {"balance_fen": 900, "at": "2026-11-23T08:00:01.123456Z",
                                                  "n": [1, None]}
    finally:
        for storage in (portable, pipeline):
            await storage.aclose()
            await storage.engine.dispose()


async def test_the_portable_path_stores_the_same_values_on_both_databases(db_url: str, tmp_path: Path) -> None:
    storage = await prepared(db_url)
    reference = await prepared(f"sqlite:///{tmp_path / 'reference.db'}", pipeline=True)
    try:
        for s in (storage, reference):
            await s.commit_batch(batch())
        assert await rows(storage) == await rows(reference)
    finally:
        for s in (storage, reference):
            await s.aclose()
            await s.engine.dispose()


async def test_a_batch_whose_rows_changed_since_they_were_read_writes_nothing(database: dict[str, Any]) -> None:
    """One account of 300 changed meanwhile (its version moved), or the rate limiter did: StaleWrite, and not one
    row of the batch is written."""
    storage = await prepared(database["url"], pipeline=bool(database.get("sqlite_pipeline")), accounts=300)
    try:
        before = await rows(storage)
        stale = batch(300)
        stale.accounts[299] = (stale.accounts[299][0], 7, stale.accounts[299][2])
        with pytest.raises(StaleWrite):
            await storage.commit_batch(stale)
        assert await rows(storage) == before
        moved = batch(300)
        moved.limiter = ({"recent": ["somebody else's"]}, {"recent": []})
        with pytest.raises(StaleWrite):
            await storage.commit_batch(moved)
        assert await rows(storage) == before
        await storage.commit_batch(batch(300))  # as read: written
        assert [a["balance_fen"] for a in (await rows(storage))["accounts"]] == [900 + i for i in range(300)]
    finally:
        await storage.aclose()
        await storage.engine.dispose()


async def test_a_naive_time_is_refused_on_both_paths(tmp_path: Path) -> None:
    for pipeline in (False, True):
        storage = await prepared(f"sqlite:///{tmp_path / f'{pipeline}.db'}", pipeline=pipeline)
        try:
            naive = batch()
            naive.readings[0]["taken_at"] = T0.replace(tzinfo=None)
            with pytest.raises((ValueError, sa.exc.StatementError), match="naive"):
                await storage.commit_batch(naive)
        finally:
            await storage.aclose()
            await storage.engine.dispose()


def test_state_json_reads_back_as_the_same_state() -> None:
    busy = busy_account()
    fresh = PrepaidAccount("A-1", TOU, busy.thresholds, balance_fen=300, site=SITE, credit_class="B")
    fresh.add_meter("M-1")
    for a in (busy, fresh):
        text = state_json(a)
        again = PrepaidAccount.from_state(json.loads(text), id="A-1", tariff=TOU, thresholds=a.thresholds,
                                          site=SITE, credit_class="B")
        assert again.state_dict() == a.state_dict()
        assert bulk.dumps_json(text) is text  # already encoded: stored as it is
    document = json.loads(state_json(busy))
    expected = busy.state_dict()
    assert {k: v for k, v in document.items() if k != "meters"} == {
        k: v for k, v in expected.items() if k != "meters" and v not in (None, False)}
    assert document["meters"]["M-1"]["pending"] == expected["meters"]["M-1"]["pending"]
    # what from_state takes by default is left out: a fresh account's row is small
    assert json.loads(state_json(fresh)) == {
        "version": 1, "balance_fen": 300, "supply": "connected",
        "billing": {"period_start": None, "energy_wh": 0, "charged_fen": 0},
        "meters": {"M-1": {"energy_wh": None, "taken_at": None, "seen_at": None}}}


def test_state_json_keeps_a_tariff_switch_its_base_and_a_closing() -> None:
    """The fast encoding writes what a tariff change and a closing leave in the state: without the billing base
    the rest of the period would be charged at the new tariff from zero."""
    change = TariffChange(T0 + dt.timedelta(hours=1), "dear", tariff_from_dict({"kind": "flat", "price": "1.0000"}))
    account = PrepaidAccount("A-1", FLAT, Thresholds(2000, 500), balance_fen=10_000, site=SITE, tariff_change=change)
    account.add_meter("M-1")
    account.apply_reading("M-1", 1_000, T0)
    account.apply_reading("M-1", 3_000, T0 + dt.timedelta(hours=2))  # half before the change, half after
    assert account.tariff_switch is not None and account.billing.base_fen

    def again(a: PrepaidAccount) -> PrepaidAccount:
        return PrepaidAccount.from_state(json.loads(state_json(a)), id="A-1", tariff=FLAT, thresholds=a.thresholds,
                                         site=SITE, tariff_change=change)

    assert again(account).state_dict() == account.state_dict()
    assert again(account).tariff is change.tariff
    account.detach_meter("M-1", final_wh=3_500, at=T0 + dt.timedelta(hours=3))
    account.close(T0 + dt.timedelta(hours=3))
    assert again(account).state_dict() == account.state_dict() and again(account).closed


@pytest.mark.parametrize("split", [chunks, bulk.chunks], ids=["portable", "pipeline"])
def test_multi_row_chunks_are_powers_of_two_within_the_parameter_limit(split: Any) -> None:
    limit = 30_000 if split is chunks else bulk._MAX_PARAMS
    for n in (1, 2, 3, 255, 256, 257, 300, 1000):
        for width in (1, 8, 12, 200):
            parts = list(split(n, width))
            assert sum(size for _, size in parts) == n
            assert [start for start, _ in parts] == [sum(s for _, s in parts[:i]) for i in range(len(parts))]
            assert all(size & (size - 1) == 0 and size * width <= limit for _, size in parts)


async def test_a_batch_never_sets_a_key_column(database: dict[str, Any]) -> None:
    """The UPDATEs of a batch set the changed columns only: setting a row's key, even to itself, makes SQLite
    check every row that refers to it (a scan of the payments per account: batches got slower as they grew)."""
    storage = await prepared(database["url"], pipeline=bool(database.get("sqlite_pipeline")))
    updates: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith(("UPDATE", "WITH")):
            updates.append(" ".join(statement.split()))

    sa.event.listen(storage.engine.sync_engine, "before_cursor_execute", seen)
    try:
        await storage.commit_batch(batch())
    finally:
        sa.event.remove(storage.engine.sync_engine, "before_cursor_execute", seen)
        await storage.aclose()
        await storage.engine.dispose()
    portable = not database.get("sqlite_pipeline")
    assert [u for u in updates if "accounts" in u] or not portable, updates
    for statement in updates:
        sets = statement.split(" SET ", 1)[1].split(" WHERE ")[0].split(" FROM ")[0]
        assert not any(part.strip().split("=")[0].strip() in ("id", "name") for part in sets.split(",")), statement


async def test_the_rate_limiter_is_stored_when_it_had_no_row(database: dict[str, Any]) -> None:
    storage = await prepared(database["url"], pipeline=bool(database.get("sqlite_pipeline")))
    try:
        async with storage() as uow:
            await uow.execute(sa.delete(t.site_state))
            await uow.commit()
        first = batch()
        first.limiter = (None, {"recent": ["2026-11-23T08:00:00Z"]})
        await storage.commit_batch(first)
        assert (await rows(storage))["site_state"] == [{"name": LIMITER, "state": {"recent": ["2026-11-23T08:00:00Z"]}}]
    finally:
        await storage.aclose()
        await storage.engine.dispose()


async def test_a_unit_of_work_that_writes_takes_sqlites_write_lock_as_it_begins(tmp_path: Path) -> None:
    """Else one that read first is refused at once ("database is locked", no busy wait) when another connection
    wrote meanwhile: seen with two gateways on one file under load."""
    import sqlite3

    path = tmp_path / "gw.db"
    storage = await prepared(f"sqlite:///{path}")
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        async with storage() as uow:
            await uow.accounts.versions(["A-000"])  # a read first
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")  # the write lock is this unit of work's already
            await uow.commit()
        async with storage(readonly=True) as uow:
            await uow.accounts.versions(["A-000"])
            other.execute("BEGIN IMMEDIATE")  # a reading unit of work leaves it free
            other.execute("ROLLBACK")
    finally:
        other.close()
        await storage.aclose()
        await storage.engine.dispose()
