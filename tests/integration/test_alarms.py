"""The alarm keeper through a real gateway on a real database (SQLite, the SQLite pipeline, PostgreSQL): events
written to the outbox raise alarms once, count repeats, resolve when their cause ends, each change with an audit
row and an event; two keepers (two instances) apply every event once; the pruning keeps what the keeper has not
looked at; the stale watch raises and resolves meter_stale."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from gateway.adapters import tables as t
from gateway.bootstrap import Gateway
from gateway.service.alarm_stale import StaleWatch
from gateway.service.alarms import AlarmKeeper
from gateway.settings import Settings
from tests.support import SetClock, async_wait_until

T0 = dt.datetime(2026, 12, 3, 2, 0, tzinfo=dt.UTC)


def site(tmp_path: Path, database: dict[str, Any] | None = None) -> Settings:
    return Settings.model_validate({
        "database": database or {"url": f"sqlite:///{tmp_path / 'gw.db'}"},
        "policy": {"stale_after": "10m"},
        "engine": {"reading_history_s": 0},
        "tariffs": {"flat": {"kind": "flat", "price": "0.5600"}},
        "accounts": [{"id": "A-1", "tariff": "flat", "opening_balance": "10.00"},
                     {"id": "A-2", "tariff": "flat", "opening_balance": "10.00"}],
        "buses": [{"id": "b", "protocol": "modbus-tcp", "host": "127.0.0.1", "port": 1}],
        "meters": [{"id": "M-1", "bus": "b", "unit_id": 1, "account": "A-1"},
                   {"id": "M-2", "bus": "b", "unit_id": 2, "account": "A-2"}],
    })


async def write(gw: Gateway, *events: tuple[str, dict[str, Any]], at: dt.datetime = T0) -> None:
    async with gw.uow() as uow:
        for topic, payload in events:
            await uow.add_outbox(topic, payload, at)
        await uow.commit()


async def settle(*keepers: AlarmKeeper, rounds: int = 100) -> None:
    """Until every keeper has looked at every event."""
    for _ in range(rounds):
        if not any([await k.step() for k in keepers]):
            return
    raise AssertionError("the keepers never caught up")


async def rows(gw: Gateway, table: sa.Table, *where: Any) -> list[Any]:
    async with gw.uow(readonly=True) as uow:
        return list(await uow.execute(sa.select(table).where(*where).order_by(table.c.id)))


async def alarm_events(gw: Gateway) -> list[dict[str, Any]]:
    found = await rows(gw, t.outbox, t.outbox.c.topic == "alarms")
    return [r.payload for r in found if r.payload["type"].startswith("Alarm")]


def offline(meter: str, health: str = "offline") -> tuple[str, dict[str, Any]]:
    return f"meters/{meter}/state", {"type": "MeterHealth", "meter_id": meter, "health": health, "error": "timeout"}


async def test_raised_once_counted_and_resolved_when_the_cause_ends(tmp_path: Path, database: dict[str, Any]) -> None:
    clock = SetClock(T0)
    async with Gateway(site(tmp_path, database), run_buses=False, base_dir=tmp_path, clock=clock) as gw:
        gw.alarms.idle_s = 3600  # the running loop sleeps; the test drives the keeper
        await write(gw, offline("M-1"), ("accounts/A-1/balance", {"type": "PaymentReceived", "account_id": "A-1"}),
                    ("alarms", {"type": "MeterTamper", "meter_id": "M-2", "account_id": "A-2",
                                "flags": ["cover_open"], "at": T0.isoformat()}),
                    ("alarms", {"type": "CommandFailed", "command_id": "c-1", "meter_id": "M-1", "action": "open",
                                "fault": "disconnect_failed", "error": "not confirmed"}))
        await settle(gw.alarms)
        clock.now = T0 + dt.timedelta(minutes=5)
        await write(gw, offline("M-1", "online"), offline("M-1"),  # back, and gone again: a new alarm
                    ("alarms", {"type": "CommandFailed", "command_id": "c-2", "meter_id": "M-1", "action": "open",
                                "fault": "disconnect_failed", "error": "refused"}),
                    at=clock.now)
        await settle(gw.alarms)
        alarms = await rows(gw, t.alarms)
        assert [(a.kind, a.subject, a.state, a.times, a.severity) for a in alarms] == [
            ("meter_offline", "M-1", "resolved", 1, "major"),
            ("tamper", "M-2", "open", 1, "critical"),
            ("command_failed", "M-1", "open", 2, "major"),  # raised again while unresolved: counted
            ("meter_offline", "M-1", "open", 1, "major")]
        first, tamper, failed, _ = alarms
        assert (first.resolved_by, first.resolved_at, first.account_id) == ("gateway", clock.now, "A-1")
        assert failed.last_seen_at == clock.now and failed.raised_at == T0
        assert failed.detail == {"command_id": "c-2", "action": "open", "fault": "disconnect_failed",
                                 "error": "refused"}
        assert tamper.detail == {"flags": ["cover_open"]} and tamper.account_id == "A-2"
        events = await alarm_events(gw)
        assert [(e["type"], e["kind"], e["times"]) for e in events] == [
            ("AlarmRaised", "meter_offline", 1), ("AlarmRaised", "tamper", 1), ("AlarmRaised", "command_failed", 1),
            ("AlarmResolved", "meter_offline", 1), ("AlarmRaised", "meter_offline", 1),
            ("AlarmRaised", "command_failed", 2)]
        audits = await rows(gw, t.audit_log, t.audit_log.c.action.like("alarm.%"))
        assert [(a.actor, a.action, a.target) for a in audits] == [
            ("gateway", "alarm.raised", "M-1"), ("gateway", "alarm.raised", "M-2"), ("gateway", "alarm.raised", "M-1"),
            ("gateway", "alarm.resolved", "M-1"), ("gateway", "alarm.raised", "M-1"),
            ("gateway", "alarm.raised", "M-1")]
        # the causes end: tamper cleared, a later command confirmed, the meter answers
        await write(gw, ("alarms", {"type": "MeterTamper", "meter_id": "M-2", "account_id": "A-2", "flags": []}),
                    ("commands/c-3", {"type": "CommandState", "id": "c-3", "meter_id": "M-1", "action": "open",
                                      "state": "confirmed"}),
                    offline("M-1", "online"), at=clock.now)
        await settle(gw.alarms)
        assert [a.state for a in await rows(gw, t.alarms)] == ["resolved"] * 4
        assert await settle(gw.alarms) is None and len(await alarm_events(gw)) == 9  # nothing applied twice


async def test_every_kind_from_its_event(tmp_path: Path) -> None:
    async with Gateway(site(tmp_path), run_buses=False, base_dir=tmp_path) as gw:
        gw.alarms.idle_s = 3600
        await write(gw, ("alarms", {"type": "ReadingQuarantined", "account_id": "A-1", "meter_id": "M-1",
                                    "energy_wh": 5, "previous_wh": 900, "reason": "backwards", "kind": "backwards"}),
                    ("alarms", {"type": "DisconnectDeferred", "account_id": "A-1", "reason": "protected",
                                "balance_fen": -500}),
                    ("alarms", {"type": "NoticeFailed", "notice_id": 3, "account_id": "A-1", "kind": "exhausted",
                                "contact": "Li Lei", "channel": "sms", "attempts": 6, "error": "503"}),
                    ("alarms", {"type": "AccountUnreadable", "account_id": "A-2", "error": "hold_until"}),
                    ("alarms", {"type": "OutboxOverflow", "left_out": 12}),
                    ("meters/M-2/events", {"type": "MeterStale", "meter_id": "M-2", "account_id": "A-2"}))
        await settle(gw.alarms)
        found = {a.kind: a for a in await rows(gw, t.alarms)}
        assert {k: (a.subject, a.severity, a.account_id) for k, a in found.items()} == {
            "reading_quarantined": ("M-1", "major", "A-1"), "disconnect_refused": ("A-1", "minor", "A-1"),
            "notice_failed": ("A-1/Li Lei/sms", "minor", "A-1"), "account_unreadable": ("A-2", "critical", "A-2"),
            "outbox_overflow": ("outbox", "major", None), "meter_stale": ("M-2", "minor", "A-2")}
        await write(gw, ("accounts/A-1/events", {"type": "QuarantineResolved", "account_id": "A-1", "meter_id": "M-1",
                                                 "action": "accepted", "energy_wh": 5, "billed_wh": 0}),
                    ("accounts/A-1/events", {"type": "DisconnectRequired", "account_id": "A-1", "balance_fen": -500}),
                    ("accounts/A-1/notices", {"type": "NoticeState", "notice_id": 4, "account_id": "A-1",
                                              "contact": "Li Lei", "channel": "sms", "state": "delivered"}),
                    ("meters/M-2/events", {"type": "MeterFresh", "meter_id": "M-2"}))
        await settle(gw.alarms)
        left = {a.kind for a in await rows(gw, t.alarms, t.alarms.c.state != "resolved")}
        assert left == {"account_unreadable", "outbox_overflow"}  # resolved by an operator only


async def test_two_keepers_apply_every_event_once(tmp_path: Path, database: dict[str, Any]) -> None:
    async with Gateway(site(tmp_path, database), run_buses=False, base_dir=tmp_path) as gw:
        gw.alarms.idle_s = 3600
        other = AlarmKeeper(gw.uow, lambda m: {"M-1": "A-1", "M-2": "A-2"}.get(m), gw.service.clock,
                            holes=not gw.uow.exclusive, batch=3)
        gw.alarms.batch = 2
        for n in range(6):
            await write(gw, offline("M-1"), offline("M-2"),
                        ("alarms", {"type": "CommandFailed", "command_id": f"c-{n}", "meter_id": "M-1",
                                    "action": "close", "error": "x"}),
                        offline("M-1", "online"))
        await asyncio.gather(settle(gw.alarms), settle(other), settle(other, gw.alarms))
        alarms = await rows(gw, t.alarms)
        assert sorted((a.kind, a.subject, a.state, a.times) for a in alarms) == sorted(
            [("meter_offline", "M-1", "resolved", 1)] * 6 + [("meter_offline", "M-2", "open", 6),
                                                             ("command_failed", "M-1", "open", 6)])
        raised = [e for e in await alarm_events(gw) if e["type"] == "AlarmRaised"]
        assert len(raised) == 18


async def test_pruning_keeps_what_the_keeper_has_not_looked_at(tmp_path: Path) -> None:
    clock = SetClock(T0)
    async with Gateway(site(tmp_path), run_buses=False, base_dir=tmp_path, clock=clock) as gw:
        gw.alarms.idle_s = 3600
        await write(gw, offline("M-1"))
        await settle(gw.alarms)  # an alarm raised: the cursor is stored with it
        async with gw.uow(readonly=True) as uow:
            done = (await uow.alarms.cursor(lock=False) or {})["done"]
        assert 0 < done <= gw.alarms.cursor.done  # (its own event after it: looked at, not stored yet)
        await write(gw, offline("M-2"), ("alarms", {"type": "Test"}))  # not looked at yet
        async with gw.uow() as uow:
            pruned = await uow.outbox.prune(T0 + dt.timedelta(days=2), unpublished_too=True)
            await uow.commit()
        left = [r.id for r in await rows(gw, t.outbox)]
        assert pruned > 0 and left and min(left) == done + 1  # everything the keeper looked at went
        await settle(gw.alarms)
        assert {a.subject for a in await rows(gw, t.alarms)} == {"M-1", "M-2"}
        async with gw.uow() as uow:
            await uow.outbox.prune(T0 + dt.timedelta(days=2), unpublished_too=True)
            await uow.commit()
        # the newest event stays: SQLite would hand its id out again, and a keeper past it would miss the next
        [newest] = await rows(gw, t.outbox)
        await write(gw, offline("M-2", "online"))
        await settle(gw.alarms)
        assert [r.id for r in await rows(gw, t.outbox)][-1] > newest.id
        assert [a.state for a in await rows(gw, t.alarms, t.alarms.c.subject == "M-2")] == ["resolved"]


async def test_stale_watch_raises_and_resolves_meter_stale(tmp_path: Path) -> None:
    clock = SetClock(T0)
    async with Gateway(site(tmp_path), run_buses=False, base_dir=tmp_path, clock=clock) as gw:
        gw.alarms.idle_s = 3600
        answers: dict[str, dt.datetime | None] = {"M-1": T0, "M-2": None}
        watch = StaleWatch(gw.uow, lambda: answers.items(), lambda: 600.0, clock, {"M-1": "A-1", "M-2": "A-2"}.get)
        assert await watch.once() == ([], [])
        clock.now = T0 + dt.timedelta(minutes=10, seconds=1)
        assert await watch.once() == (["M-1", "M-2"], [])
        assert await watch.once() == ([], [])  # told once, even before the keeper raised it
        await settle(gw.alarms)
        assert {(a.kind, a.subject, a.account_id) for a in await rows(gw, t.alarms)} == {
            ("meter_stale", "M-1", "A-1"), ("meter_stale", "M-2", "A-2")}
        answers["M-1"] = clock.now
        assert await watch.once() == ([], ["M-1"])
        await settle(gw.alarms)
        assert {(a.subject, a.state) for a in await rows(gw, t.alarms)} == {("M-1", "resolved"), ("M-2", "open")}
        # a watch started afresh (another instance took the bus) finds the alarm and ends it
        later = StaleWatch(gw.uow, lambda: [("M-2", clock.now)], lambda: 600.0, clock, lambda m: None)
        assert await later.once() == ([], ["M-2"])
        await settle(gw.alarms)
        assert {a.state for a in await rows(gw, t.alarms)} == {"resolved"}


async def test_the_running_gateway_watches_the_meters_it_polls(tmp_path: Path) -> None:
    """bootstrap wires the stale watch to the bus scheduler: a meter that never answered (its bus leads
    nowhere) is stale once the limit has passed since the start."""
    clock = SetClock(T0)
    async with Gateway(site(tmp_path), base_dir=tmp_path, clock=clock) as gw:
        gw.alarms.idle_s = 3600
        assert gw.stale is not None and gw.stale.every_s == 30
        assert await gw.stale.once() == ([], [])
        clock.now = T0 + dt.timedelta(minutes=11)
        stale, fresh = await gw.stale.once()
        assert sorted(stale) == ["M-1", "M-2"] and fresh == []
        await settle(gw.alarms)
        assert {(a.kind, a.subject, a.account_id) for a in await rows(gw, t.alarms, t.alarms.c.kind == "meter_stale")
                } == {("meter_stale", "M-1", "A-1"), ("meter_stale", "M-2", "A-2")}


async def test_two_gateways_on_one_postgresql_database_raise_each_alarm_once(pg_cluster: Any, tmp_path: Path) -> None:
    """Two instances (two engines, their keepers running on their own) on one PostgreSQL database: every event is
    applied once (the cursor's row lock and its holes), whatever instance looks first."""
    settings = site(tmp_path, {"url": str(pg_cluster.create_database())})
    async with Gateway(settings, run_buses=False, base_dir=tmp_path) as one, \
            Gateway(settings, run_buses=False, base_dir=tmp_path) as two:
        one.alarms.idle_s = two.alarms.idle_s = 0.01
        one.alarms.batch, two.alarms.batch = 3, 5

        async def burst(gw: Gateway, meter: str) -> None:
            for n in range(10):
                await write(gw, offline(meter), ("alarms", {"type": "CommandFailed", "command_id": f"{meter}-{n}",
                                                            "meter_id": meter, "action": "open", "error": "x"}),
                            offline(meter, "online"))

        await asyncio.gather(burst(one, "M-1"), burst(two, "M-2"))

        async def settled() -> bool:
            found = await rows(one, t.alarms)
            return sum(a.times for a in found if a.kind == "command_failed") == 20 and \
                sum(1 for a in found if a.kind == "meter_offline" and a.state == "resolved") == 20

        await async_wait_until(settled, timeout=20, what="both keepers to apply every event")
        found = await rows(one, t.alarms)
        assert sorted((a.kind, a.subject, a.state, a.times) for a in found) == sorted(
            [("meter_offline", "M-1", "resolved", 1)] * 10 + [("meter_offline", "M-2", "resolved", 1)] * 10
            + [("command_failed", "M-1", "open", 10), ("command_failed", "M-2", "open", 10)])
        assert len([e for e in await alarm_events(one) if e["type"] == "AlarmRaised"]) == 40


async def test_a_keeper_reading_one_event_at_a_time_passes_over_the_balance_events(tmp_path: Path,
                                                                                   database: dict[str, Any]) -> None:
    async with Gateway(site(tmp_path, database), run_buses=False, base_dir=tmp_path, clock=SetClock(T0)) as gw:
        gw.alarms.idle_s = 3600  # the running loop sleeps; the test drives the keeper
        balance = ("accounts/A-1/balance", {"type": "PaymentReceived", "account_id": "A-1"})
        tamper = ("alarms", {"type": "MeterTamper", "meter_id": "M-1", "account_id": "A-1", "flags": ["cover_open"]})
        await write(gw, offline("M-1"), *[balance] * 300, offline("M-2"), *[balance] * 300, tamper, *[balance] * 10)
        keeper = AlarmKeeper(gw.uow, lambda meter_id: None, gw.service.clock, holes=not gw.uow.exclusive, batch=1)
        await settle(keeper, rounds=1000)  # (where ids are listed, as on PostgreSQL: one a look)
        assert [(a.kind, a.subject) for a in await rows(gw, t.alarms)] == [
            ("meter_offline", "M-1"), ("meter_offline", "M-2"), ("tamper", "M-1")]
        async with gw.uow(readonly=True) as uow:
            newest = (await uow.execute(sa.select(sa.func.max(t.outbox.c.id)))).scalar()
        assert keeper.cursor is not None and keeper.cursor.high == newest  # (its own three AlarmRaised too)
