"""Relay commands against the Modbus fleet simulator with faults: confirmation by the relay-state register,
a stuck relay, a meter that answers with an exception."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

from drivers.modbus import load_model
from gateway.adapters import tables as t
from gateway.bootstrap import Gateway, default_models_dir
from gateway.service.commands import CommandRecord, new_command
from gateway.service.operator import cancel_command
from gateway.settings import Settings
from simulators.faults import Fault, FaultKind, FaultPlan
from simulators.meter import SimulatedMeter
from simulators.modbus import ModbusFleet
from tests.integration.command_bench import CommandBench
from tests.support import free_port


def site(tmp_path: Path, port: int, *, command_expiry_s: float) -> Settings:
    """One meter (M-1, unit 1) on one Modbus TCP bus, its account with credit to spare."""
    return Settings.model_validate({
        "database": {"url": f"sqlite:///{tmp_path / 'gw.db'}"},
        "engine": {"command_expiry_s": command_expiry_s, "confirm_interval_s": 0.2},
        "tariffs": {"flat": {"kind": "flat", "price": "0.5000"}},
        "accounts": [{"id": "A-1", "tariff": "flat", "opening_balance": "100.00"}],
        "buses": [{"id": "b", "protocol": "modbus-tcp", "host": "127.0.0.1", "port": port, "timeout_s": 0.5}],
        "meters": [{"id": "M-1", "bus": "b", "unit_id": 1, "account": "A-1", "poll_interval_s": 1}],
    })


async def queued_without_waking_the_bus(gateway: Gateway, reason: str) -> CommandRecord:
    """An "open" for M-1 stored as `queued` without being handed to its bus runner."""
    now = gateway.service.clock()
    async with gateway.uow() as uow:
        record = new_command(meter_id="M-1", action="open", origin="operator", now=now,
                             expires_at=now + dt.timedelta(seconds=30), reason=reason)
        await uow.commands.add(record)
        await uow.commit()
    return record


@dataclass
class Bench(CommandBench):
    faults: FaultPlan
    meter: SimulatedMeter


@pytest.fixture
async def bench(tmp_path: Path) -> AsyncIterator[Bench]:
    port = free_port()
    settings = site(tmp_path, port, command_expiry_s=3)
    faults = FaultPlan()
    model = load_model(default_models_dir() / "generic-prepaid.yaml")
    async with ModbusFleet(model, meters=1, port=port, faults=faults) as fleet:
        async with Gateway(settings, base_dir=tmp_path) as gateway:
            yield Bench(gateway, faults, fleet.meters[1])


async def test_disconnect_and_reconnect_confirmed_by_read_back(bench: Bench) -> None:
    record = await bench.settled((await bench.command("open")).id)
    assert (record.state, record.attempts) == ("confirmed", 1) and not bench.meter.relay_closed
    record = await bench.settled((await bench.command("close")).id)
    assert record.state == "confirmed" and bench.meter.relay_closed


async def test_stuck_relay_fails_with_an_alarm(bench: Bench) -> None:
    bench.faults.add(Fault(FaultKind.RELAY_STUCK), meters=[0])
    record = await bench.settled((await bench.command("open")).id)
    assert record.state == "failed" and "not confirmed" in (record.last_error or "")
    assert bench.meter.relay_closed
    assert any(a.get("type") == "CommandFailed" and a.get("command_id") == record.id for a in await bench.alarms())


async def test_an_exception_reply_fails_fast_with_the_meters_reason(tmp_path: Path) -> None:
    """The meter answers its polls but refuses the relay write (here: the gateway's model names a relay coil the
    meter does not have, and the meter answers exception 2)."""
    models = tmp_path / "models"
    models.mkdir()
    text = (default_models_dir() / "generic-prepaid.yaml").read_text()
    (models / "generic-prepaid.yaml").write_text(text.replace("command: {table: coil, address: 0x0000",
                                                              "command: {table: coil, address: 0x0007"))
    port = free_port()
    settings = site(tmp_path, port, command_expiry_s=10).model_copy(update={"models_dir": str(models)})
    model = load_model(default_models_dir() / "generic-prepaid.yaml")
    async with ModbusFleet(model, meters=1, port=port) as fleet:
        async with Gateway(settings, base_dir=tmp_path) as gateway:
            bench = CommandBench(gateway)
            record = await bench.settled((await bench.command("open")).id, timeout=8)
            assert (record.state, record.attempts) == ("failed", 1)
            assert "meter refused" in (record.last_error or "") and "2" in (record.last_error or "")
            assert fleet.meters[1].relay_closed


@pytest.mark.parametrize("relay_already_open", [True, False])
async def test_a_command_found_queued_at_a_start_is_read_back_before_it_is_sent(tmp_path: Path,
                                                                               relay_already_open: bool) -> None:
    """A run may have sent a command without committing its `sending` (that commit runs beside the send): the
    next start reads the relay first and sends only if the meter is not yet in the wanted state."""
    port = free_port()
    settings = site(tmp_path, port, command_expiry_s=30)
    async with Gateway(settings, base_dir=tmp_path, run_buses=False) as gateway:  # the previous run
        left = await queued_without_waking_the_bus(gateway, "left queued")
    writes: list[tuple[int, int, int, object]] = []
    model = load_model(default_models_dir() / "generic-prepaid.yaml")
    async with ModbusFleet(model, meters=1, port=port,
                           on_write=lambda *write: writes.append(write)) as fleet:  # type: ignore[arg-type]
        if relay_already_open:
            fleet.meters[1].set_relay(False)  # the previous run's frame did reach the meter
        async with Gateway(settings, base_dir=tmp_path) as gateway:
            bench = CommandBench(gateway)
            record = await bench.settled(left.id)
            assert record.state == "confirmed" and not fleet.meters[1].relay_closed
            assert len(writes) == (0 if relay_already_open else 1)
            async with gateway.uow(readonly=True) as uow:
                trail = [row.detail for row in await uow.execute(
                    sa.select(t.audit_log.c.detail).where(t.audit_log.c.target == left.id).order_by(t.audit_log.c.id))]
            assert "reading the relay back" in (trail[0] or {}).get("error", "")


async def test_a_command_cancelled_after_its_bus_picked_it_up_is_not_sent(tmp_path: Path) -> None:
    """The frame goes out while `sending` commits, so the runner first checks that a command it holds is still
    `queued` (not cancelled or superseded since it was offered)."""
    port = free_port()
    settings = site(tmp_path, port, command_expiry_s=30)
    writes: list[tuple[object, ...]] = []
    model = load_model(default_models_dir() / "generic-prepaid.yaml")
    async with ModbusFleet(model, meters=1, port=port, on_write=lambda *write: writes.append(write)) as fleet:
        async with Gateway(settings, base_dir=tmp_path) as gateway:
            record = await queued_without_waking_the_bus(gateway, "test")  # the runner is handed it below
            await cancel_command(gateway.service, record.id, actor="tester")
            assert gateway.scheduler is not None
            runner = gateway.scheduler.buses[0].runner
            command = record.model()  # what the runner held when the cancel came
            runner.active[record.id] = command
            await runner._send(command, gateway.service.clock())
            assert record.id not in runner.active
            assert writes == [] and fleet.meters[1].relay_closed
            assert (await CommandBench(gateway).record(record.id)).state == "cancelled"
