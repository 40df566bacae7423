"""Meters added, moved and removed while the scheduler runs, against the Modbus simulator over a real TCP socket
and a real SQLite database: an added meter's readings arrive within one poll interval, a meter moved to another
unit id is read there and no longer at the old one, a removed meter's unit is not read any more. What was read is
told by the simulator itself (its request trace), not by the gateway."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import sqlalchemy as sa

from drivers.modbus import ModbusMeter, ModbusTcpDriver, load_model
from gateway.adapters import tables as t
from gateway.bootstrap import Gateway
from gateway.service.catalog import MeterSpec
from gateway.service.scheduler import BusSetup, Scheduler
from gateway.settings import Settings
from simulators.modbus import DEFAULT_MODEL_PATH, ModbusFleet
from tests.support import async_wait_until, free_port

GENERIC = load_model(DEFAULT_MODEL_PATH)
INTERVAL = 0.2


def settings(tmp_path: Path, port: int) -> Settings:
    """Three meters on one bus (units 1..3); the scheduler starts with M-1 and M-2 only: M-3 is the one the
    provisioning adds later (it is in the catalog and the meters table, as provisioning leaves it)."""
    return Settings.model_validate({
        "database": {"url": f"sqlite:///{tmp_path / 'gw.db'}"},
        "tariffs": {"flat": {"kind": "flat", "price": "1.0000"}},
        "accounts": [{"id": f"A-{i}", "tariff": "flat", "opening_balance": "1000.00"} for i in (1, 2, 3)],
        "buses": [{"id": "bus", "protocol": "modbus-tcp", "host": "127.0.0.1", "port": port}],
        "meters": [{"id": f"M-{i}", "bus": "bus", "unit_id": i, "account": f"A-{i}", "poll_interval_s": INTERVAL}
                   for i in (1, 2, 3)],
    })


def target(spec: MeterSpec) -> ModbusMeter:
    return ModbusMeter(spec.id, spec.unit_id, GENERIC)


async def readings(gw: Gateway, meter_id: str) -> int:
    async with gw.uow(readonly=True) as uow:
        query = sa.select(sa.func.count()).select_from(t.readings).where(t.readings.c.meter_id == meter_id)
        return int((await uow.execute(query)).scalar_one())


async def test_a_meter_added_moved_and_removed_while_the_bus_runs(tmp_path: Path) -> None:
    trace: list[tuple[float, int]] = []  # (when, unit id) of every request the simulator received

    def after(since: float, unit: int) -> list[float]:
        return [at for at, u in trace if u == unit and at >= since]

    fleet = ModbusFleet(GENERIC, meters=5, port=free_port())
    fleet.trace = lambda unit, pdu: trace.append((time.monotonic(), unit))
    async with fleet, Gateway(settings(tmp_path, fleet.port), base_dir=tmp_path, run_buses=False) as gw:
        driver = ModbusTcpDriver("127.0.0.1", fleet.port, timeout=0.5)
        specs = gw.catalog.meters
        setup = BusSetup("bus", driver, {m: target(specs[m]) for m in ("M-1", "M-2")}, make_target=target)
        async with Scheduler(gw.service, [setup], publish=gw.messages.publish,
                             limits=gw.catalog.relay_limits) as scheduler:
            await async_wait_until(lambda: len(after(0, 1)) >= 3, timeout=10, what="M-1 polled")
            assert after(0, 3) == [] and await readings(gw, "M-3") == 0

            added = time.monotonic()
            scheduler.add_meter(specs["M-3"])
            await async_wait_until(lambda: readings(gw, "M-3"), timeout=5, what="a reading of M-3 stored")
            assert after(added, 3)[0] - added < INTERVAL, "first poll within one interval"
            assert scheduler.meter_health("M-3")["state"] == "online"  # type: ignore[index]

            moved = time.monotonic()
            specs["M-3"] = dataclasses.replace(specs["M-3"], unit_id=4)  # as provisioning does, then tells us
            scheduler.move_meter(specs["M-3"])
            await async_wait_until(lambda: len(after(moved, 4)) >= 3, timeout=5, what="M-3 read at unit 4")
            first_at_4 = after(moved, 4)[0]
            assert first_at_4 - moved < INTERVAL + 0.1
            assert len(after(moved, 3)) <= 1  # a poll already on the wire may finish...
            assert after(first_at_4, 3) == []  # ...and that is all: one transaction at a time on the bus

            removed = time.monotonic()
            scheduler.remove_meter("M-3")
            await async_wait_until(lambda: len(after(removed, 1)) >= 6, timeout=5, what="M-1 polled on")
            stats = scheduler.stats()
    assert len(after(removed, 4)) <= 1  # at most the poll on the wire when it was removed
    assert after(after(removed, 1)[0], 4) == []  # nothing after the next transaction
    assert scheduler.meter_health("M-3") is None
    assert stats["totals"]["meters"] == 2 and stats["totals"]["online"] == 2
