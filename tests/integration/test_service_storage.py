"""The service layer on real databases (a SQLite file and PostgreSQL): payments exactly once, charges, commands,
the ledger invariant."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import pytest
import sqlalchemy as sa

from drivers.base import Reading
from gateway.adapters import tables as t
from gateway.bootstrap import Gateway
from gateway.service.handlers import PaymentConflict
from gateway.service.verify import verify_ledger
from gateway.settings import Settings

NOW = dt.datetime(2026, 11, 23, 8, 0, tzinfo=dt.UTC)


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> dt.datetime:
        return self.now


def site(db_url: str) -> Settings:
    return Settings.model_validate({
        "database": {"url": db_url},
        "tariffs": {"flat": {"kind": "flat", "price": "0.5000"}},
        "accounts": [{"id": "A-1", "tariff": "flat", "opening_balance": "1.00", "reconnect_min_topup": "1.00"}],
        "meters": [],
    })


@pytest.fixture
async def gateway(db_url: str, tmp_path: Path):
    async with Gateway(site(db_url), clock=Clock(), base_dir=tmp_path) as gw:
        yield gw


async def test_paying_twice_with_the_same_id_credits_once(gateway: Gateway) -> None:
    service = gateway.service
    first = await service.record_payment(source="billing", payment_id="P-1", account_id="A-1", amount_fen=5000)
    again = await service.record_payment(source="billing", payment_id="P-1", account_id="A-1", amount_fen=5000)
    assert first.created and not again.created
    assert again.record == first.record
    async with gateway.uow(readonly=True) as uow:
        balance = (await uow.execute(sa.select(t.accounts.c.balance_fen))).scalar_one()
        entries = (await uow.execute(sa.select(sa.func.count()).select_from(t.ledger)
                                     .where(t.ledger.c.kind == "payment"))).scalar_one()
        assert await verify_ledger(uow) == []
    assert (balance, entries) == (100 + 5000, 1)


async def test_same_id_other_content_is_a_conflict(gateway: Gateway) -> None:
    service = gateway.service
    await service.record_payment(source="billing", payment_id="P-1", account_id="A-1", amount_fen=5000)
    with pytest.raises(PaymentConflict):
        await service.record_payment(source="billing", payment_id="P-1", account_id="A-1", amount_fen=4000)
    # another source may reuse the id
    other = await service.record_payment(source="counter", payment_id="P-1", account_id="A-1", amount_fen=4000)
    assert other.created


async def test_concurrent_duplicates_credit_once(gateway: Gateway) -> None:
    service = gateway.service
    results = await asyncio.gather(*[
        service.record_payment(source="billing", payment_id=f"P-{i % 10}", account_id="A-1", amount_fen=100)
        for i in range(50)])
    assert sum(r.created for r in results) == 10
    async with gateway.uow(readonly=True) as uow:
        assert (await uow.execute(sa.select(t.accounts.c.balance_fen))).scalar_one() == 100 + 10 * 100
        assert await verify_ledger(uow) == []


async def test_payment_survives_a_new_engine(tmp_path: Path) -> None:
    """A 2xx means committed: a fresh process (engine) sees it."""
    url = f"sqlite:///{tmp_path / 'gw.db'}"
    async with Gateway(site(url), base_dir=tmp_path) as gw:
        await gw.service.record_payment(source="billing", payment_id="P-9", account_id="A-1", amount_fen=700)
    async with Gateway(site(url), base_dir=tmp_path) as gw:
        async with gw.uow(readonly=True) as uow:
            assert (await uow.execute(sa.select(t.accounts.c.balance_fen))).scalar_one() == 800
            assert (await uow.execute(sa.text("PRAGMA journal_mode"))).scalar_one() == "wal"
            assert (await uow.execute(sa.text("PRAGMA synchronous"))).scalar_one() == 2  # FULL


async def test_the_verifier_finds_a_broken_balance(gateway: Gateway) -> None:
    async with gateway.uow() as uow:
        await uow.execute(sa.update(t.accounts).values(balance_fen=1))
        assert any("balance 1" in p for p in await verify_ledger(uow))


async def test_readings_charge_and_disconnect_then_payment_reconnects(db_url: str, tmp_path: Path) -> None:
    settings = Settings.model_validate({
        "database": {"url": db_url},
        "policy": {"notice_period": 0},
        "tariffs": {"flat": {"kind": "flat", "price": "1.0000"}},
        "accounts": [{"id": "A-1", "tariff": "flat", "opening_balance": "1.00", "reconnect_min_topup": "1.00"}],
        "buses": [{"id": "b", "protocol": "modbus-tcp", "host": "127.0.0.1", "port": 1}],
        "meters": [{"id": "M-1", "bus": "b", "unit_id": 1, "account": "A-1"}],
    })
    clock = Clock()
    gw = Gateway(settings, clock=clock, base_dir=tmp_path)
    from gateway.adapters.database import migrate
    from gateway.service.accounts import ensure_catalog_rows

    await migrate(gw.engine)
    async with gw.uow() as uow:
        await ensure_catalog_rows(uow, gw.catalog, clock())
        await uow.commit()
    service = gw.service
    try:
        def reading(wh: int, minutes: int) -> Reading:
            return Reading("M-1", NOW + dt.timedelta(minutes=minutes), wh)

        clock.now = NOW + dt.timedelta(minutes=1)
        assert await service.record_reading(reading(10_000, 1)) == []  # baseline
        clock.now = NOW + dt.timedelta(minutes=2)
        assert await service.record_reading(reading(10_500, 2)) == []  # 0.50 yuan charged, balance 0.50
        clock.now = NOW + dt.timedelta(minutes=3)
        [cmd] = await service.record_reading(reading(11_000, 3))  # balance 0.00 = disconnect point
        assert (cmd.action, cmd.origin, cmd.state) == ("open", "automatic", "queued")
        result = await service.record_payment(source="billing", payment_id="P-1", account_id="A-1",
                                              amount_fen=50)
        async with gw.uow(readonly=True) as uow:
            commands = (await uow.execute(sa.select(t.commands.c.action, t.commands.c.state)
                                          .order_by(t.commands.c.created_at))).all()
        assert [tuple(c) for c in commands] == [("open", "queued")]  # 0.50 < reconnect threshold 1.00
        clock.now = NOW + dt.timedelta(minutes=4)
        await service.record_payment(source="billing", payment_id="P-2", account_id="A-1", amount_fen=100)
        async with gw.uow(readonly=True) as uow:
            commands = (await uow.execute(sa.select(t.commands.c.action, t.commands.c.state)
                                          .order_by(t.commands.c.created_at))).all()
            assert await verify_ledger(uow) == []
        assert [tuple(c) for c in commands] == [("open", "superseded"), ("close", "queued")]
        assert result.record["balance_after_fen"] == 50
    finally:
        await gw.engine.dispose()


async def test_a_deferred_disconnect_goes_ahead_when_its_reason_ends(db_url: str, tmp_path: Path) -> None:
    """The notice period after the final warning defers the disconnect; the periodic re-evaluation carries it
    out once the notice period is over (and not before)."""
    settings = Settings.model_validate({
        "database": {"url": db_url},
        "policy": {"notice_period": "1h", "stale_after": None},
        "tariffs": {"flat": {"kind": "flat", "price": "1.0000"}},
        "accounts": [{"id": "A-1", "tariff": "flat", "opening_balance": "0.50", "warning1": "2.00",
                      "warning2": "1.00"}],
        "buses": [{"id": "b", "protocol": "modbus-tcp", "host": "127.0.0.1", "port": 1}],
        "meters": [{"id": "M-1", "bus": "b", "unit_id": 1, "account": "A-1"}],
    })
    clock = Clock()
    async with Gateway(settings, clock=clock, base_dir=tmp_path, run_buses=False) as gw:
        service = gw.service
        await service.record_reading(Reading("M-1", NOW, 10_000))  # final warning (balance <= 1.00): notice
        clock.now = NOW + dt.timedelta(minutes=1)
        assert await service.record_reading(Reading("M-1", clock.now, 11_000)) == []  # -0.50, but notice
        async with gw.uow(readonly=True) as uow:
            row = (await uow.execute(sa.select(t.accounts.c.deferred_reason, t.accounts.c.deferred_until))).one()
        assert row.deferred_reason == "notice_period" and row.deferred_until == NOW + dt.timedelta(hours=1)

        async def open_commands() -> int:
            async with gw.uow(readonly=True) as uow:
                return int((await uow.execute(sa.select(sa.func.count()).select_from(t.commands)
                                              .where(t.commands.c.action == "open"))).scalar_one())

        clock.now = NOW + dt.timedelta(minutes=30)
        await service.evaluate_accounts()
        assert await open_commands() == 0
        clock.now = NOW + dt.timedelta(hours=1, seconds=1)
        await service.evaluate_accounts()
        assert await open_commands() == 1
