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
    account = busy_account()
    text = state_json(account)
    again = PrepaidAccount.from_state(json.loads(text), id="A-1", tariff=TOU, thresholds=account.thresholds,
                                      site=SITE, credit_class="B")
    assert again.state_dict() == account.state_dict()
    document = json.loads(text)
    assert {k: v for k, v in document.items() if k != "meters"} == {
        k: v for k, v in account.state_dict().items() if k != "meters"}
    assert document["meters"]["M-1"]["pending"] == account.state_dict()["meters"]["M-1"]["pending"]
    assert bulk.dumps_json(text) is text  # already encoded: stored as it is
