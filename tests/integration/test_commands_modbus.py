"""Relay commands against the Modbus fleet simulator with faults: confirmation by the relay-state register,
a stuck relay, a meter that answers with an exception."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from drivers.modbus import load_model
from gateway.bootstrap import Gateway, default_models_dir
from gateway.settings import Settings
from simulators.faults import Fault, FaultKind, FaultPlan
from simulators.meter import SimulatedMeter
from simulators.modbus import ModbusFleet
from tests.integration.command_bench import CommandBench
from tests.support import free_port


@dataclass
class Bench(CommandBench):
    faults: FaultPlan
    meter: SimulatedMeter


@pytest.fixture
async def bench(tmp_path: Path) -> AsyncIterator[Bench]:
    port = free_port()
    settings = Settings.model_validate({
        "database": {"url": f"sqlite:///{tmp_path / 'gw.db'}"},
        "engine": {"command_expiry_s": 3, "confirm_interval_s": 0.2},
        "tariffs": {"flat": {"kind": "flat", "price": "0.5000"}},
        "accounts": [{"id": "A-1", "tariff": "flat", "opening_balance": "100.00"}],
        "buses": [{"id": "b", "protocol": "modbus-tcp", "host": "127.0.0.1", "port": port, "timeout_s": 0.5}],
        "meters": [{"id": "M-1", "bus": "b", "unit_id": 1, "account": "A-1", "poll_interval_s": 1}],
    })
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


async def test_an_exception_reply_fails_fast_with_the_meters_reason(bench: Bench) -> None:
    bench.faults.add(Fault(FaultKind.EXCEPTION, code=4), meters=[0])
    record = await bench.settled((await bench.command("open")).id, timeout=3)
    assert (record.state, record.attempts) == ("failed", 1)
    assert "meter refused" in (record.last_error or "")
    assert bench.meter.relay_closed
