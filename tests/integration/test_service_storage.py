"""The service layer on real databases (a SQLite file and PostgreSQL): payments exactly once, charges, commands,
the ledger invariant."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from drivers.base import Reading
from gateway.adapters import bulk
from gateway.adapters import tables as t
from gateway.bootstrap import Gateway
from gateway.service.facade import PaymentConflict
from gateway.service.verify import verify_ledger
from gateway.settings import Settings
from tests.support import SetClock

NOW = dt.datetime(2026, 11, 23, 8, 0, tzinfo=dt.UTC)


def Clock() -> SetClock:  # noqa: N802 - a clock at NOW
    return SetClock(NOW)


def site(database: dict[str, Any]) -> Settings:
    return Settings.model_validate({
        "database": database,
        "tariffs": {"flat": {"kind": "flat", "price": "0.5000"}},
        "accounts": [{"id": "A-1", "tariff": "flat", "opening_balance": "1.00", "reconnect_min_topup": "1.00"}],
        "meters": [],
    })


def one_meter(database: dict[str, Any]) -> Settings:
    """Account A-1 (10.00 yuan, 1 yuan/kWh) with one meter, M-1."""
    return Settings.model_validate({
        "database": database,
        "tariffs": {"flat": {"kind": "flat", "price": "1.0000"}},
        "accounts": [{"id": "A-1", "tariff": "flat", "opening_balance": "10.00"}],
        "buses": [{"id": "b", "protocol": "modbus-tcp", "host": "127.0.0.1", "port": 1}],
        "meters": [{"id": "M-1", "bus": "b", "unit_id": 1, "account": "A-1"}],
    })


@pytest.fixture
async def gateway(database: dict[str, Any], tmp_path: Path):
    async with Gateway(site(database), clock=Clock(), base_dir=tmp_path) as gw:
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
    url = {"url": f"sqlite:///{tmp_path / 'gw.db'}"}
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


async def test_readings_charge_and_disconnect_then_payment_reconnects(database: dict[str, Any], tmp_path: Path) -> None:
    settings = Settings.model_validate({
        "database": database,
        "policy": {"notice_period": 0},
        "tariffs": {"flat": {"kind": "flat", "price": "1.0000"}},
        "accounts": [{"id": "A-1", "tariff": "flat", "opening_balance": "1.00", "reconnect_min_topup": "1.00"}],
        "buses": [{"id": "b", "protocol": "modbus-tcp", "host": "127.0.0.1", "port": 1}],
        "meters": [{"id": "M-1", "bus": "b", "unit_id": 1, "account": "A-1"}],
    })
    clock = Clock()
    gw = Gateway(settings, clock=clock, base_dir=tmp_path)
    from gateway.adapters.database import migrate

    await migrate(gw.engine)
    await gw.prepare_fleet()
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
        await service.writer.aclose()
        await gw.engine.dispose()


async def test_a_deferred_disconnect_goes_ahead_when_its_reason_ends(database: dict[str, Any], tmp_path: Path) -> None:
    """The notice period after the final warning defers the disconnect; the periodic re-evaluation carries it
    out once the notice period is over (and not before)."""
    settings = Settings.model_validate({
        "database": database,
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


async def test_a_reading_that_changes_nothing_is_not_stored_until_the_history_interval(database: dict[str, Any],
                                                                                      tmp_path: Path) -> None:
    """A reading with the energy and relay of the meter's last stored one, of an account with nothing to decide,
    is not stored (no row, no transaction) for at most ``reading_history_s``; it shows as the meter's latest
    reading. More energy, a relay change or an account past its disconnect point always go through the ledger,
    and the account never sees the readings that were not stored."""
    from drivers.base import RelayState

    settings = Settings.model_validate({
        "database": database,
        "engine": {"reading_history_s": 60},
        "policy": {"notice_period": "1h", "stale_after": None},
        "tariffs": {"flat": {"kind": "flat", "price": "1.0000"}},
        "accounts": [{"id": "A-1", "tariff": "flat", "opening_balance": "0.10"}],  # final warning already
        "buses": [{"id": "b", "protocol": "modbus-tcp", "host": "127.0.0.1", "port": 1}],
        "meters": [{"id": "M-1", "bus": "b", "unit_id": 1, "account": "A-1"}],
    })
    clock = Clock()
    closed = RelayState.CLOSED

    def at(seconds: int, wh: int, relay: RelayState | None = closed) -> Reading:
        return Reading("M-1", NOW + dt.timedelta(seconds=seconds), wh, relay=relay, power_w=0)

    async with Gateway(settings, clock=clock, base_dir=tmp_path, run_buses=False) as gw:
        service, writer = gw.service, gw.service.writer
        assert not writer.takes_unchanged(at(0, 10_000))  # nothing stored yet
        await service.record_reading(at(0, 10_000))  # the baseline
        assert not writer.takes_unchanged(at(1, 10_000))  # the billing period starts with the first reading billed
        await service.record_reading(at(1, 10_000))
        assert writer.takes_unchanged(at(5, 10_000))
        assert writer.takes_unchanged(at(10, 10_000))
        assert not writer.takes_unchanged(at(1, 10_000))  # not newer than the stored one
        assert not writer.takes_unchanged(at(15, 10_000, RelayState.OPEN))  # the relay moved
        assert not writer.takes_unchanged(at(12, 10_001))  # energy to bill: billed now
        await service.record_reading(at(12, 10_001))
        await service.record_reading(at(15, 10_050))
        assert writer.takes_unchanged(at(20, 10_050))
        assert writer.takes_unchanged(at(74, 10_050))
        assert not writer.takes_unchanged(at(75, 10_050))  # 60 s after the last stored one: stored
        assert (await service.views.meter("M-1"))["last_reading"]["taken_at"] == NOW + dt.timedelta(seconds=74)
        account = writer.cache.entries["A-1"][1]
        assert account.cursors["M-1"].seen_at == NOW + dt.timedelta(seconds=15)  # the account saw none of them
        await service.record_reading(at(75, 10_050))
        assert account.cursors["M-1"].seen_at == NOW + dt.timedelta(seconds=75)

        await service.record_reading(at(80, 10_150))  # -0.05 yuan: past the disconnect point, notice period
        assert not writer.takes_unchanged(at(85, 10_150))  # an account with a deferred disconnect is evaluated
        async with gw.uow(readonly=True) as uow:
            stored = (await uow.execute(sa.select(t.readings.c.taken_at).order_by(t.readings.c.id))).scalars().all()
            balance, reason = (await uow.execute(sa.select(t.accounts.c.balance_fen,
                                                           t.accounts.c.deferred_reason))).one()
            assert await verify_ledger(uow) == []
        assert [s.replace(tzinfo=dt.UTC) if s.tzinfo is None else s for s in stored] == [
            NOW + dt.timedelta(seconds=s) for s in (0, 1, 12, 15, 75, 80)]
        assert (balance, reason) == (10 - 5 - 10, "notice_period")
        assert writer.freshness.skipped == 4


async def test_with_no_history_interval_every_reading_is_stored(database: dict[str, Any], tmp_path: Path) -> None:
    settings = Settings.model_validate({
        "database": database,
        "engine": {"reading_history_s": 0},
        "tariffs": {"flat": {"kind": "flat", "price": "1.0000"}},
        "accounts": [{"id": "A-1", "tariff": "flat", "opening_balance": "10.00"}],
        "buses": [{"id": "b", "protocol": "modbus-tcp", "host": "127.0.0.1", "port": 1}],
        "meters": [{"id": "M-1", "bus": "b", "unit_id": 1, "account": "A-1"}],
    })
    async with Gateway(settings, clock=Clock(), base_dir=tmp_path, run_buses=False) as gw:
        for seconds in (0, 1):
            await gw.service.record_reading(Reading("M-1", NOW + dt.timedelta(seconds=seconds), 10_000))
        assert not gw.service.writer.takes_unchanged(Reading("M-1", NOW + dt.timedelta(seconds=2), 10_000))


async def test_two_gateways_on_one_database_lose_no_payment(database: dict[str, Any], tmp_path: Path) -> None:
    """Each writer keeps the accounts it wrote in memory; a row changed by another instance meanwhile is caught
    by its version (the UPDATE is guarded), and the job is done again from the stored row."""
    settings = site(database)
    async with Gateway(settings, clock=Clock(), base_dir=tmp_path) as one, \
            Gateway(settings, clock=Clock(), base_dir=tmp_path) as two:
        for n in range(6):
            gateway_ = one if n % 2 == 0 else two
            await gateway_.service.record_payment(source="billing", payment_id=f"P-{n}", account_id="A-1",
                                                  amount_fen=100 + n)
        async with one.uow(readonly=True) as uow:
            balance = (await uow.execute(sa.select(t.accounts.c.balance_fen))).scalar_one()
            assert await verify_ledger(uow) == []
    assert balance == 100 + sum(100 + n for n in range(6))


async def test_a_command_transition_writes_its_state_event_and_audit(database: dict[str, Any], tmp_path: Path) -> None:
    """A transition moves the command only from the expected
    state, and writes the command's state event as ``command_payload`` of the stored row, an alarm when it
    failed, and an audit row."""
    from gateway.service import commands as cmds

    settings = one_meter(database)
    clock = Clock()
    async with Gateway(settings, clock=clock, base_dir=tmp_path, run_buses=False) as gw:
        record = await gw.service.request_command(meter_id="M-1", action="open", origin="operator",
                                                  operator="op", reason="test", actor="op")
        later = NOW + dt.timedelta(seconds=5)
        async with gw.uow() as uow:
            assert not await uow.commands.transition(record.id, "sending", "sent", later)  # not in that state
            assert await uow.commands.transition(record.id, "queued", "sending", later, attempt=True)
            assert await uow.commands.transition(record.id, "sending", "failed", later, error="x" * 600)
            await uow.commit()
        async with gw.uow(readonly=True) as uow:
            stored = await uow.commands.get(record.id)
            events = (await uow.execute(sa.select(t.outbox.c.topic, t.outbox.c.payload)
                                        .order_by(t.outbox.c.id))).all()
            audits = (await uow.execute(sa.select(t.audit_log.c.action, t.audit_log.c.detail)
                                        .where(t.audit_log.c.target == record.id)
                                        .order_by(t.audit_log.c.id))).all()
    assert stored is not None and (stored.state, stored.attempts, stored.last_error) == ("failed", 1, "x" * 500)
    state_events = [payload for topic, payload in events if topic == f"commands/{record.id}"]
    expected = json.loads(bulk.dumps_json(cmds.command_payload(stored)))
    assert [e["state"] for e in state_events] == ["queued", "sending", "failed"]
    assert state_events[-1] == expected
    assert [payload for topic, payload in events  # (the alarm keeper's own AlarmRaised may follow)
            if topic == "alarms" and not payload["type"].startswith("Alarm")] == [{
        "type": "CommandFailed", "command_id": record.id, "meter_id": "M-1", "action": "open",
        "fault": "disconnect_failed", "error": "x" * 500, "at": expected["at"]}]
    assert [(a.action, a.detail) for a in audits] == [
        ("command.sending", {"from": "queued", "error": None}), ("command.failed", {"from": "sending", "error": "x" * 600})]


async def test_a_failing_batch_among_pipelined_ones_sinks_only_its_bad_job(database: dict[str, Any], tmp_path: Path,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    """Small batches (on SQLite the next one is prepared while one commits, on top of its changes). One job
    fails in the database (an audit row without an actor): its batch is retried job by job, a batch prepared on
    top of it is done again, and every other payment is credited exactly once. A payment repeated while its first
    copy is still being committed is recognised without a failure."""
    from gateway.service.jobs import AccountJob, PaymentJob

    async with Gateway(site(database), clock=Clock(), base_dir=tmp_path) as gw:
        writer = gw.service.writer
        writer.max_batch = 8
        bad = AccountJob("A-1", lambda account, now: "applied", audit=(None, "test.bad", None))  # type: ignore[arg-type]
        jobs = [PaymentJob("billing", f"P-{n}", "A-1", 100 + n) for n in range(40)]
        jobs[29:29] = [bad]
        jobs.insert(9, PaymentJob("billing", "P-2", "A-1", 102))  # P-2's batch is in flight as this one's prepared
        jobs += [PaymentJob("billing", "P-3", "A-1", 103)]  # a repeat of one of the first batch's payments
        with caplog.at_level("WARNING", logger="gateway.service.writer"):
            results = await asyncio.gather(*(writer.submit(job) for job in jobs), return_exceptions=True)
        async with gw.uow(readonly=True) as uow:
            balance = (await uow.execute(sa.select(t.accounts.c.balance_fen))).scalar_one()
            payments = (await uow.execute(sa.select(sa.func.count()).select_from(t.payments))).scalar_one()
            assert await verify_ledger(uow) == []
    failed = [job for job, result in zip(jobs, results, strict=True) if isinstance(result, BaseException)]
    assert failed == [bad]
    assert [results[9].created, results[-1].created] == [False, False]  # type: ignore[union-attr]
    assert (balance, payments) == (100 + sum(100 + n for n in range(40)), 40)
    assert len([r for r in caplog.records if "retrying its jobs one by one" in r.getMessage()]) == 1


async def test_a_late_reading_is_stored_unbilled_and_neither_the_latest_nor_the_relay(database: dict[str, Any],
                                                                                      tmp_path: Path) -> None:
    """A reading that arrives after a newer one (a retried hand-over, a slow bus) is stored as it was taken,
    bills nothing (its `billed` says so), does not move the meter's relay back, and the meter's latest reading
    stays the newest taken."""
    from drivers.base import RelayState

    settings = one_meter(database)
    closed, opened = RelayState.CLOSED, RelayState.OPEN
    async with Gateway(settings, clock=Clock(), base_dir=tmp_path, run_buses=False) as gw:
        for seconds, wh, relay in ((0, 10_000, closed), (120, 10_100, closed), (60, 10_050, opened)):  # the last late
            await gw.service.record_reading(Reading("M-1", NOW + dt.timedelta(seconds=seconds), wh, relay=relay))
        meter = await gw.service.views.meter("M-1")
        async with gw.uow(readonly=True) as uow:
            rows = (await uow.execute(sa.select(t.readings.c.energy_wh, t.readings.c.billed)
                                      .order_by(t.readings.c.id))).all()
            balance = (await uow.execute(sa.select(t.accounts.c.balance_fen))).scalar_one()
            assert await verify_ledger(uow) == []
    assert [tuple(r) for r in rows] == [(10_000, True), (10_100, True), (10_050, False)]
    assert meter["last_reading"]["energy_wh"] == 10_100 and meter["relay"] == "closed"
    assert balance == 1_000 - 10  # 100 Wh billed once
