"""The writer's bulk statements store exactly what SQLAlchemy's own statements store, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import json
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.adapters import bulk
from gateway.adapters import tables as t
from gateway.adapters.database import create_engine
from gateway.domain.account import PrepaidAccount
from gateway.service.accounts import state_json
from tests.unit.test_domain_state import SITE, TOU, busy_account

T0 = dt.datetime(2026, 11, 23, 8, 0, 0, 123456, tzinfo=dt.UTC)
SHANGHAI = ZoneInfo("Asia/Shanghai")


async def insert_many(conn: AsyncConnection, table: sa.Table, rows: list[dict[str, object]]) -> None:
    await bulk.run_statements(conn, bulk.insert_statements(conn.dialect.name, table, rows))


async def update_many(conn: AsyncConnection, table: sa.Table, key: str, rows: list[dict[str, object]], *,
                      increment: str) -> None:
    await bulk.run_statements(conn, bulk.update_statements(conn.dialect.name, table, key, rows,
                                                           increment=increment))


def account_row(account_id: str, state: object) -> dict[str, object]:
    return dict(id=account_id, balance_fen=100, supply="connected", deferred_reason="", deferred_until=None,
                state=state, version=0, updated_at=T0)


async def test_bulk_statements_store_what_sqlalchemy_stores(db_url: str) -> None:
    engine = create_engine(db_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(t.metadata.create_all)
            state = {"balance_fen": 100, "nested": {"b": [1, 2]}}
            await conn.execute(sa.insert(t.accounts), [account_row("A-sa", state)])
            await insert_many(conn, t.accounts, [account_row("A-bulk", state),
                                                      account_row("A-raw", bulk.RawJson(json.dumps(state)))])
            await conn.execute(sa.insert(t.meters), [dict(id="M-1", account_id="A-sa")])
            readings = [dict(meter_id="M-1", taken_at=T0, energy_wh=1_000, power_w=None, voltage_v=230.5,
                             current_a=None, relay="closed", billed=True),
                        dict(meter_id="M-1", taken_at=T0.astimezone(SHANGHAI) + dt.timedelta(seconds=1),
                             energy_wh=1_001, power_w=5, voltage_v=None, current_a=1.5, relay=None, billed=False)]
            await conn.execute(sa.insert(t.readings), readings)
            await insert_many(conn, t.readings, readings)

            rows = (await conn.execute(sa.select(t.accounts).order_by(t.accounts.c.id))).mappings().all()
            assert [r["state"] for r in rows] == [state, state, state]
            assert {r["updated_at"] for r in rows} == {T0}
            got = (await conn.execute(sa.select(t.readings).order_by(t.readings.c.id))).mappings().all()
            assert [{k: v for k, v in r.items() if k != "id"} for r in got[:2]] == [
                readings[0], readings[1] | {"taken_at": T0 + dt.timedelta(seconds=1)}]
            assert [dict(r) | {"id": 0} for r in got[:2]] == [dict(r) | {"id": 0} for r in got[2:]]
            if conn.dialect.name == "sqlite":  # the very same text in the file
                raw = (await conn.exec_driver_sql("SELECT taken_at, billed FROM readings ORDER BY id")).all()
                assert raw[:2] == raw[2:]

            await update_many(conn, t.accounts, "id", [
                dict(id="A-bulk", balance_fen=50, deferred_until=T0), dict(id="A-raw", balance_fen=60),
                dict(id="A-sa", balance_fen=70, state={"x": 1})], increment="version")
            rows = (await conn.execute(sa.select(t.accounts).order_by(t.accounts.c.id))).mappings().all()
            assert [(r["id"], r["balance_fen"], r["version"], r["deferred_until"]) for r in rows] == [
                ("A-bulk", 50, 1, T0), ("A-raw", 60, 1, None), ("A-sa", 70, 1, None)]
            assert rows[2]["state"] == {"x": 1}

            if conn.dialect.name == "sqlite":  # a row changed since it was read is not overwritten
                with pytest.raises(bulk.StaleWrite):
                    await update_many(conn, t.accounts, "id", [dict(id="A-sa", balance_fen=1, version=0)],
                                           increment="version")
                assert (await conn.execute(sa.select(t.accounts.c.balance_fen).where(
                    t.accounts.c.id == "A-sa"))).scalar_one() == 70

            found = await bulk.select_in(conn, t.accounts, ("id", "version"), "id", ["A-sa", "A-bulk", "A-none"],
                                         for_update=True)
            assert [(r.id, r.version) for r in found] == [("A-bulk", 1), ("A-sa", 1)]
            assert await bulk.select_in(conn, t.accounts, ("id",), "id", []) == []
            version = sa.select(t.accounts.c.version).where(t.accounts.c.id == "A-raw")
            assert await bulk.scalar(conn, version) == 1
            assert await bulk.scalar(conn, version.where(t.accounts.c.balance_fen == 0)) is None
            both = sa.select(t.accounts.c.id, t.accounts.c.balance_fen).where(
                t.accounts.c.id.in_(["A-sa", "A-raw", "A-none"])).order_by(t.accounts.c.id)
            assert await bulk.fetch(conn, both) == [("A-raw", 60), ("A-sa", 70)]

            with pytest.raises((ValueError, sa.exc.StatementError), match="naive"):
                await insert_many(conn, t.readings, [readings[0] | {"taken_at": T0.replace(tzinfo=None)}])
    finally:
        await engine.dispose()


def test_state_json_reads_back_as_the_same_state() -> None:
    busy = busy_account()
    fresh = PrepaidAccount("A-1", TOU, busy.thresholds, balance_fen=300, site=SITE, credit_class="B")
    fresh.add_meter("M-1")
    for account in (busy, fresh):
        text = state_json(account)
        again = PrepaidAccount.from_state(json.loads(text), id="A-1", tariff=TOU, thresholds=account.thresholds,
                                          site=SITE, credit_class="B")
        assert again.state_dict() == account.state_dict()
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


async def test_many_rows_go_in_multi_row_statements_and_a_stale_one_is_caught(db_url: str) -> None:
    """300 rows (SQLite: chunks of 256 + 32 + 8 + 4 rows per statement) are all written as given; an UPDATE of
    300 rows of which one was changed meanwhile raises StaleWrite; a key given twice is updated in order."""
    engine = create_engine(db_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(t.metadata.create_all)
            accounts = [account_row(f"A-{i:03d}", {"i": i}) for i in range(300)]
            await insert_many(conn, t.accounts, accounts)
            rows = (await conn.execute(sa.select(t.accounts.c.id, t.accounts.c.state)
                                       .order_by(t.accounts.c.id))).all()
            assert [(r.id, r.state) for r in rows] == [(a["id"], a["state"]) for a in accounts]

            await update_many(conn, t.accounts, "id", [dict(id=f"A-{i:03d}", balance_fen=i, version=0)
                                                       for i in range(300)], increment="version")
            rows = (await conn.execute(sa.select(t.accounts.c.balance_fen, t.accounts.c.version)
                                       .order_by(t.accounts.c.id))).all()
            assert [tuple(r) for r in rows] == [(i, 1) for i in range(300)]
            if conn.dialect.name == "sqlite":
                stale = [dict(id=f"A-{i:03d}", balance_fen=-1, version=0 if i == 299 else 1) for i in range(300)]
                with pytest.raises(bulk.StaleWrite, match="1 of"):
                    await update_many(conn, t.accounts, "id", stale, increment="version")
            await update_many(conn, t.accounts, "id", [dict(id="A-000", balance_fen=5),
                                                       dict(id="A-000", balance_fen=6)], increment="version")
            assert (await conn.execute(sa.select(t.accounts.c.balance_fen, t.accounts.c.version).where(
                t.accounts.c.id == "A-000"))).one() == (6, 4 if conn.dialect.name == "sqlite" else 3)
            # (on SQLite the stale UPDATE's first chunks ran; the writer rolls such a transaction back)
    finally:
        await engine.dispose()


def test_multi_row_chunks_are_powers_of_two_within_the_parameter_limit() -> None:
    for rows in (1, 2, 3, 255, 256, 257, 300, 1000):
        for width in (1, 8, 12, 200):
            chunks = list(bulk._chunks(rows, width))
            assert sum(size for _, size in chunks) == rows
            assert [start for start, _ in chunks] == [sum(s for _, s in chunks[:i]) for i in range(len(chunks))]
            assert all(size & (size - 1) == 0 and size * width <= bulk._MAX_PARAMS for _, size in chunks)
