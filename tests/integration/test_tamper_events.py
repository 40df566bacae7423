"""A simulated meter's cover opened and closed while a real gateway polls it (real sockets; a real SQLite file
on both write paths, a throwaway PostgreSQL database): the MeterTamper event in the outbox on the topic
``alarms`` with its flags, ``"flags": []`` when it closes, and no new event while the flags stay as they are.
The meter uses no energy, so its unchanged readings are not stored (``gateway.service.freshness``): the change
of flags alone must go through a transaction. And across a restart: a tamper alarm still open is cleared by the
first reading without flags."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from drivers.modbus import load_model
from gateway.adapters import tables as t
from gateway.bootstrap import Gateway
from gateway.settings import Settings
from simulators.dlt645 import Dlt645Simulator
from simulators.faults import Fault, FaultKind, FaultPlan
from simulators.meter import SimulatedMeter
from simulators.modbus import DEFAULT_MODEL_PATH, ModbusFleet
from tests.support import async_wait_until, free_port

INTERVAL = 0.2


@dataclass
class Site:
    gateway: Gateway
    faults: FaultPlan
    meter: SimulatedMeter  # M-1's simulated meter
    requests: Callable[[], int]  # requests the simulator received so far

    async def events(self) -> list[dict[str, Any]]:
        async with self.gateway.uow(readonly=True) as uow:
            rows = await uow.execute(sa.select(t.outbox.c.payload).where(t.outbox.c.topic == "alarms")
                                     .order_by(t.outbox.c.id))
            return [row.payload for row in rows if row.payload.get("type") == "MeterTamper"]

    async def stored(self) -> int:
        async with self.gateway.uow(readonly=True) as uow:
            query = sa.select(sa.func.count()).select_from(t.readings).where(t.readings.c.meter_id == "M-1")
            return int((await uow.execute(query)).scalar_one())

    async def polls(self, n: int) -> None:
        """Wait until the simulator has received ``n`` more polls' worth of requests."""
        start = self.requests()
        await async_wait_until(lambda: self.requests() - start >= n * 8, timeout=10, what=f"{n} more polls")


def _settings(tmp_path: Path, bus: dict[str, Any], meter: dict[str, Any], storage: str) -> Settings:
    """``storage``: a SQLite file on the portable write path (``sqlite``) or the pipeline (``pipeline``), or a
    PostgreSQL URL."""
    database = ({"url": f"sqlite:///{tmp_path / 'gw.db'}", "sqlite_pipeline": storage == "pipeline"}
                if storage in ("sqlite", "pipeline") else {"url": storage})
    return Settings.model_validate({
        "database": database,
        "tariffs": {"flat": {"kind": "flat", "price": "1.0000"}},
        "accounts": [{"id": "A-1", "tariff": "flat", "opening_balance": "100.00"}],
        "buses": [{"id": "bus", **bus}],
        "meters": [{"id": "M-1", "bus": "bus", "account": "A-1", "poll_interval_s": INTERVAL, **meter}],
    })


@asynccontextmanager
async def _modbus(tmp_path: Path, storage: str) -> AsyncIterator[Site]:
    port = free_port()
    async with ModbusFleet(load_model(DEFAULT_MODEL_PATH), meters=1, port=port) as fleet:
        settings = _settings(tmp_path, {"protocol": "modbus-tcp", "host": "127.0.0.1", "port": port},
                             {"unit_id": 1}, storage)
        async with Gateway(settings, base_dir=tmp_path) as gateway:
            # a Modbus poll is 2 requests: 8 requests are 4 polls
            yield Site(gateway, fleet.faults, fleet.units[1].meter, lambda: fleet.requests)


@asynccontextmanager
async def _dlt645(tmp_path: Path, storage: str) -> AsyncIterator[Site]:
    port = free_port()
    async with Dlt645Simulator(meters=1, tcp=f"127.0.0.1:{port}") as sim:
        settings = _settings(tmp_path, {"protocol": "dlt645-tcp", "host": "127.0.0.1", "port": port,
                                        "timeout_s": 0.5}, {"address": sim.meters[0].address}, storage)
        async with Gateway(settings, base_dir=tmp_path) as gateway:
            # a DL/T 645 poll is 8 requests (energy block, voltage, current, power, balance, overdraft, words 3, 7)
            yield Site(gateway, sim.faults, sim.meters[0].meter, lambda: sim.bus.requests_seen)


@pytest.mark.parametrize(("protocol", "storage"), [("modbus", "sqlite"), ("modbus", "pipeline"),
                                                   ("modbus", "postgresql"), ("dlt645", "sqlite")])
async def test_cover_opened_and_closed_makes_one_event_each(tmp_path: Path, protocol: str, storage: str,
                                                            request: pytest.FixtureRequest) -> None:
    if storage == "postgresql":
        storage = str(request.getfixturevalue("pg_cluster").create_database())
    serve = _modbus if protocol == "modbus" else _dlt645
    async with serve(tmp_path, storage) as site:
        site.meter.set_power_w(0)  # no energy used: unchanged readings are not stored
        await async_wait_until(site.stored, timeout=10, what="a first reading stored")
        await site.polls(3)
        assert await site.events() == []  # no flags at start: nothing raised, nothing to clear
        quiet = await site.stored()
        await site.polls(3)
        assert await site.stored() == quiet  # the meter's readings change nothing and are not stored

        site.faults.add(Fault(FaultKind.COVER_OPEN), meters=[0])
        await async_wait_until(site.events, timeout=10, what="MeterTamper raised")
        (raised,) = await site.events()
        assert {k: raised[k] for k in ("type", "meter_id", "account_id", "flags")} == {
            "type": "MeterTamper", "meter_id": "M-1", "account_id": "A-1", "flags": ["cover_open"]}
        at = dt.datetime.fromisoformat(raised["at"].replace("Z", "+00:00"))
        assert at.tzinfo is not None and abs(dt.datetime.now(dt.UTC) - at) < dt.timedelta(seconds=30)
        assert await site.stored() == quiet + 1  # the reading that changed the flags was stored with its event

        await site.polls(4)
        assert len(await site.events()) == 1  # flags unchanged: no new event
        assert await site.stored() == quiet + 1

        site.meter.set_tamper("terminal_cover_open")  # the meter's own flag, beside the plan's
        await async_wait_until(lambda: _count(site, 2), timeout=10, what="second MeterTamper")
        site.faults.remove([0], FaultKind.COVER_OPEN)
        site.meter.set_tamper("terminal_cover_open", False)
        await async_wait_until(lambda: _cleared(site), timeout=10, what="MeterTamper cleared")
        events = await site.events()
        assert events[1]["flags"] == ["cover_open", "terminal_cover_open"]
        assert events[-1]["flags"] == [] and events[-1]["meter_id"] == "M-1"
        count = len(events)
        await site.polls(4)
        assert len(await site.events()) == count  # cleared and quiet again


async def _count(site: Site, n: int) -> bool:
    return len(await site.events()) >= n


async def _cleared(site: Site) -> bool:
    events = await site.events()
    return bool(events) and events[-1]["flags"] == []


async def _tamper_alarms(gateway: Gateway) -> list[tuple[str, str]]:
    async with gateway.uow(readonly=True) as uow:
        rows = await uow.execute(sa.select(t.alarms.c.subject, t.alarms.c.state).where(t.alarms.c.kind == "tamper")
                                 .order_by(t.alarms.c.id))
        return [(row.subject, row.state) for row in rows]


async def test_a_cover_closed_while_the_gateway_was_stopped_clears_its_alarm_at_the_next_start(
        tmp_path: Path) -> None:
    """The flags the gateway saw are kept in memory; at a start, a meter with a tamper alarm still open is
    cleared by its first reading without flags (else the alarm would stay open for good)."""
    port = free_port()
    plan = FaultPlan.parse("cover-open@0")
    settings = _settings(tmp_path, {"protocol": "modbus-tcp", "host": "127.0.0.1", "port": port}, {"unit_id": 1},
                         "sqlite")
    async with ModbusFleet(load_model(DEFAULT_MODEL_PATH), meters=1, port=port, faults=plan):
        async with Gateway(settings, base_dir=tmp_path) as gateway:
            await async_wait_until(lambda: _has(gateway, ("M-1", "open")), timeout=10, what="tamper alarm raised")
        plan.clear()  # the cover is shut while the gateway is stopped
        async with Gateway(settings, base_dir=tmp_path) as gateway:
            await async_wait_until(lambda: _has(gateway, ("M-1", "resolved")), timeout=10,
                                   what="tamper alarm resolved")
            assert await _tamper_alarms(gateway) == [("M-1", "resolved")]


async def _has(gateway: Gateway, alarm: tuple[str, str]) -> bool:
    return alarm in await _tamper_alarms(gateway)
