"""Several gateway instances on one PostgreSQL database: the site's rate limiter of automatic disconnects holds
across them, and it never makes payments or readings wait (DESIGN.md §12: nothing serialises all instances on
one row)."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from drivers.base import Reading
from gateway.adapters import tables as t
from gateway.adapters.database import create_engine
from gateway.bootstrap import Gateway
from gateway.adapters.sql import LIMITER
from gateway.service.verify import verify_ledger
from gateway.settings import Settings
from tests.support import SetClock

pytestmark = pytest.mark.tool("postgres")

NOW = dt.datetime(2026, 11, 23, 8, 0, tzinfo=dt.UTC)


def Clock() -> SetClock:  # noqa: N802 - a clock at NOW
    return SetClock(NOW)


def site(url: str, accounts: int, *, limit: int | None) -> Settings:
    return Settings.model_validate({
        "database": {"url": url},
        "policy": {"notice_period": 0, "stale_after": None, "friendly_windows": [],
                   "max_auto_disconnects_per_minute": limit},
        "tariffs": {"flat": {"kind": "flat", "price": "1.0000"}},
        "accounts": [{"id": f"A-{i}", "tariff": "flat", "opening_balance": "1.00", "overdraft": "0.00"}
                     for i in range(accounts)],
        "buses": [{"id": "b", "protocol": "modbus-tcp", "host": "127.0.0.1", "port": 1}],
        "meters": [{"id": f"M-{i}", "bus": "b", "unit_id": i + 1, "account": f"A-{i}"} for i in range(accounts)],
    })


@pytest.fixture
def pg_url(pg_cluster: Any) -> str:
    return str(pg_cluster.create_database())


async def test_payments_and_readings_never_wait_for_the_rate_limiter(pg_url: str, tmp_path: Path) -> None:
    """Another instance holds the limiter's row locked (it is counting a trip): this instance's payments and
    readings that trip nothing still commit at once."""
    clock = Clock()
    async with Gateway(site(pg_url, 1, limit=2), clock=clock, base_dir=tmp_path, run_buses=False) as gw:
        await gw.service.record_reading(Reading("M-0", NOW, 10_000))
        other = create_engine(pg_url)
        try:
            async with other.connect() as conn:
                await conn.begin()
                locked = (await conn.execute(sa.select(t.site_state.c.state).where(t.site_state.c.name == LIMITER)
                                             .with_for_update())).one()
                assert locked.state == {"recent": []}
                clock.now = NOW + dt.timedelta(minutes=1)
                result = await asyncio.wait_for(gw.service.record_payment(
                    source="billing", payment_id="P-1", account_id="A-0", amount_fen=500), timeout=10)
                assert result.created
                commands = await asyncio.wait_for(gw.service.record_reading(Reading("M-0", clock.now, 10_200)),
                                                  timeout=10)
                assert commands == []
                await conn.rollback()
        finally:
            await other.dispose()
        async with gw.uow(readonly=True) as uow:
            assert (await uow.execute(sa.select(t.accounts.c.balance_fen))).scalar_one() == 100 + 500 - 20
            assert await verify_ledger(uow) == []


async def test_two_instances_trip_no_more_than_the_site_limit(pg_url: str, tmp_path: Path) -> None:
    """Two instances run out the credit of different accounts at the same moment, with a limit of one automatic
    disconnect per minute: one account is disconnected, the other deferred (rate_limit), whichever wins."""
    accounts = 6
    clock = Clock()
    settings = site(pg_url, accounts, limit=1)
    async with Gateway(settings, clock=clock, base_dir=tmp_path / "one", run_buses=False) as one, \
            Gateway(settings, clock=clock, base_dir=tmp_path / "two", run_buses=False) as two:
        instances = [one, two]
        await asyncio.gather(*[instances[i % 2].service.record_reading(Reading(f"M-{i}", NOW, 10_000))
                               for i in range(accounts)])
        clock.now = NOW + dt.timedelta(minutes=10)
        # every account's credit runs out (1.00 yuan at 1.00/kWh), half through each instance, all at once
        results = await asyncio.gather(*[
            instances[i % 2].service.record_reading(Reading(f"M-{i}", clock.now, 11_500)) for i in range(accounts)])
        trips = [c for commands in results for c in commands if c.action == "open"]
        assert len(trips) == 1, trips
        async with one.uow(readonly=True) as uow:
            rows = (await uow.execute(sa.select(t.accounts.c.id, t.accounts.c.deferred_reason)
                                      .order_by(t.accounts.c.id))).all()
            stored = (await uow.execute(sa.select(sa.func.count()).select_from(t.commands)
                                        .where(t.commands.c.action == "open"))).scalar_one()
            limiter = (await uow.execute(sa.select(t.site_state.c.state).where(t.site_state.c.name == LIMITER))
                       ).scalar_one()
            assert await verify_ledger(uow) == []
        tripped = trips[0].meter_id.replace("M-", "A-")
        assert {r.id: r.deferred_reason for r in rows} == {
            f"A-{i}": "" if f"A-{i}" == tripped else "rate_limit" for i in range(accounts)}
        assert stored == 1
        assert len(limiter["recent"]) == 1


async def test_instances_starting_together_on_one_database_both_start(pg_cluster: Any, tmp_path: Path) -> None:
    """Two instances starting at the same moment, on an empty database and then on one where the settings
    named new accounts: both start (one migrates while the other waits; an account one of them added is left
    alone by the other), and every account has exactly one opening entry."""
    for attempt in range(3):
        url = str(pg_cluster.create_database())
        for accounts in (2, 5):  # an empty database, then three new accounts on both
            stack = [Gateway(site(url, accounts, limit=None), clock=Clock(), base_dir=tmp_path, run_buses=False)
                     for _ in range(2)]
            started = await asyncio.gather(*(gw.__aenter__() for gw in stack), return_exceptions=True)
            for gw, outcome in zip(stack, started, strict=True):
                if not isinstance(outcome, BaseException):
                    await gw.__aexit__(None, None, None)
            assert [o for o in started if isinstance(o, BaseException)] == [], (attempt, accounts)
        engine = create_engine(url)
        try:
            async with engine.connect() as conn:
                openings = (await conn.execute(sa.select(t.ledger.c.account_id, sa.func.count())
                                               .where(t.ledger.c.kind == "opening")
                                               .group_by(t.ledger.c.account_id))).all()
                meters = (await conn.execute(sa.select(sa.func.count()).select_from(t.meters))).scalar_one()
        finally:
            await engine.dispose()
        assert sorted(openings) == [(f"A-{i}", 1) for i in range(5)] and meters == 5
