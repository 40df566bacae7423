"""The outbox's readers on PostgreSQL when ids commit out of order (instances sharing one database): an event
whose transaction took its id first but commits after a higher id was read is still published by the outbox
relay (to a real mosquitto) and still planned by the notice planner, on the next pass, not skipped until a
restart (the readers' ``Cursor`` keeps the skipped id as a hole); a stored reading likewise is still published."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from gateway.adapters import tables as t
from gateway.bootstrap import Gateway
from gateway.settings import Settings
from tests.mosquitto import Broker, Listener, mosquitto_broker
from tests.receiver import Receiver, receiver
from tests.support import SetClock, async_wait_until

pytestmark = pytest.mark.tool("postgres")

T0 = dt.datetime(2026, 12, 3, 2, 0, tzinfo=dt.UTC)


def site(url: str, **more: Any) -> Settings:
    contacts = [{"name": "Li Lei", "channel": "sms", "to": "+8613800000000"}] if "notices" in more else []
    return Settings.model_validate({
        "database": {"url": url},
        "engine": {"reading_history_s": 0, "evaluate_every_s": 86_400},
        "tariffs": {"flat": {"kind": "flat", "price": "1.0000"}},
        "accounts": [{"id": "A-1", "tariff": "flat", "opening_balance": "10.00", "contacts": contacts}],
        "meters": [],
        **more,
    })


@pytest.fixture
def pg_url(pg_cluster: Any) -> str:
    return str(pg_cluster.create_database())


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Broker]:
    with mosquitto_broker(tmp_path) as running:
        yield running


@pytest.fixture
def sms() -> Iterator[Receiver]:
    with receiver() as running:
        yield running


async def add_event(uow: Any, topic: str, payload: dict[str, Any]) -> int:
    """Write an outbox event in ``uow``'s transaction (not committed); its id, taken now."""
    result = await uow.execute(sa.insert(t.outbox).values(topic=topic, payload=payload, created_at=T0)
                               .returning(t.outbox.c.id))
    return int(result.scalar_one())


@pytest.mark.tool("mosquitto")
async def test_the_relay_publishes_an_event_committed_after_a_higher_id(pg_url: str, broker: Broker,
                                                                        tmp_path: Path) -> None:
    settings = site(pg_url, mqtt={"host": "127.0.0.1", "port": broker.port, "prefix": "gw-test"})
    async with Gateway(settings, run_buses=False, base_dir=tmp_path) as gw, \
            Listener(broker.port, "gw-test/tests/#") as sub:
        assert gw.relay is not None and gw.relay.holes  # PostgreSQL: ids may commit out of order
        async with gw.uow() as held:  # a transaction in flight: it takes its id first, commits last
            first = await add_event(held, "tests/holes", {"type": "Test", "n": "first"})
            async with gw.uow() as other:
                second = await add_event(other, "tests/holes", {"type": "Test", "n": "second"})
                await other.commit()
            assert first < second
            relay = gw.relay  # (published, then taken by its cursor once marked: wait for both)
            await async_wait_until(lambda: [p["n"] for p in sub.on("gw-test/tests/holes")] == ["second"]
                                   and relay.cursor.high >= second, timeout=15,
                                   what="the relay to publish the higher id")
            assert first in relay.cursor.holes
            await held.commit()
        await async_wait_until(lambda: len(sub.on("gw-test/tests/holes")) == 2 and first not in relay.cursor.holes,
                               timeout=15, what="the relay to publish the event committed late")
        published = sub.on("gw-test/tests/holes")
        assert [(p["n"], p["event_id"]) for p in published] == [("second", second), ("first", first)]
        async with gw.uow(readonly=True) as uow:  # marked, so never published again
            marked = (await uow.execute(sa.select(t.outbox.c.published_at).where(
                t.outbox.c.id.in_([first, second])))).scalars().all()
        assert len(marked) == 2 and all(at is not None for at in marked)


async def add_reading(uow: Any, meter_id: str, energy_wh: int) -> int:
    """Store a reading in ``uow``'s transaction (not committed); its id, taken now."""
    result = await uow.execute(sa.insert(t.readings).values(meter_id=meter_id, taken_at=T0, energy_wh=energy_wh,
                                                            billed=False).returning(t.readings.c.id))
    return int(result.scalar_one())


@pytest.mark.tool("mosquitto")
async def test_the_relay_publishes_a_reading_committed_after_a_higher_id(pg_url: str, broker: Broker,
                                                                         tmp_path: Path) -> None:
    settings = site(pg_url, mqtt={"host": "127.0.0.1", "port": broker.port, "prefix": "gw-test"},
                    buses=[{"id": "b", "protocol": "modbus-tcp", "host": "127.0.0.1", "port": 1}],
                    meters=[{"id": "M-1", "bus": "b", "unit_id": 1, "account": "A-1"}])  # (buses not run)
    async with Gateway(settings, run_buses=False, base_dir=tmp_path) as gw, \
            Listener(broker.port, "gw-test/meters/M-1/reading") as sub:
        relay, topic = gw.relay, "gw-test/meters/M-1/reading"
        assert relay is not None and relay.holes  # PostgreSQL: ids may commit out of order
        # the relay's start point first (the newest reading stored then): a reading stored before it is history
        await async_wait_until(lambda: relay.readings_after is not None, timeout=15,
                               what="the relay to read where readings go on from")
        async with gw.uow() as held:  # a transaction in flight: it takes its id first, commits last
            first = await add_reading(held, "M-1", 1_000)
            async with gw.uow() as other:
                second = await add_reading(other, "M-1", 1_010)
                await other.commit()
            assert first < second
            # (published, then taken by the relay's cursor once stored: wait for both)
            await async_wait_until(lambda: [p["reading_id"] for p in sub.on(topic)] == [second]
                                   and relay.readings_after == second, timeout=15,
                                   what="the relay to publish the higher reading")
            cursor = relay.readings_cursor
            assert cursor is not None and first in cursor.holes
            await held.commit()
        await async_wait_until(lambda: len(sub.on(topic)) == 2 and first not in cursor.holes, timeout=15,
                               what="the relay to publish the reading committed late")
        published = sub.on(topic)
        assert [(p["reading_id"], p["energy_wh"], p["seq"]) for p in published] == [(second, 1_010, 1),
                                                                                   (first, 1_000, 2)]
        assert relay.readings_after == second
        async with gw.uow(readonly=True) as uow:  # what a restart goes on from: the highest published, not N
            assert await uow.outbox.readings_published() == second


async def test_the_planner_plans_for_an_event_committed_after_a_higher_id(pg_url: str, sms: Receiver,
                                                                          tmp_path: Path) -> None:
    settings = site(pg_url, notices={"channels": {"sms": {"kind": "webhook", "url": f"{sms.url}/send",
                                                          "secret": "s3cret-hmac-key-0123456789"}}})
    low = {"type": "CreditLow", "level": 1, "account_id": "A-1", "balance_fen": 700}
    async with Gateway(settings, run_buses=False, base_dir=tmp_path, clock=SetClock(T0)) as gw:
        assert gw.notices is not None and gw.notices.holes

        async def planned() -> dict[int, list[str]]:
            async with gw.uow(readonly=True) as uow:
                rows = (await uow.execute(sa.select(t.notices.c.event_id, t.notices.c.kind))).all()
            out: dict[int, list[str]] = {}
            for row in rows:
                out.setdefault(row.event_id, []).append(row.kind)
            return out

        async with gw.uow() as held:  # a transaction in flight: it takes its id first, commits last
            first = await add_event(held, "accounts/A-1/balance", low)
            async with gw.uow() as other:
                second = await add_event(other, "accounts/A-1/balance", low)
                await other.commit()
            assert first < second
            notices = gw.notices  # (planned, then taken by its cursor once committed: wait for both)

            async def planned_second() -> bool:
                return await _has(planned, second) and notices.cursor.high >= second

            await async_wait_until(planned_second, timeout=15, what="the planner to plan for the higher id")
            assert first in notices.cursor.holes
            assert first not in await planned()
            await held.commit()
        await async_wait_until(lambda: _has(planned, first), timeout=15,
                               what="the planner to plan for the event committed late")
        found = await planned()
        assert found[first] == found[second] == ["low_balance_1"]
        async with gw.uow(readonly=True) as uow:
            noticed = (await uow.execute(sa.select(t.outbox.c.noticed_at).where(
                t.outbox.c.id == first))).scalar_one()
        assert noticed is not None


async def _has(planned: Any, event_id: int) -> bool:
    return event_id in await planned()
