"""Every Modbus model file in config/meters, served by the simulator and polled through the real driver.

A new model file is tested here without new test code.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from drivers.base import RelayAction, RelayState
from drivers.errors import UnsupportedOperation
from drivers.modbus import MeterModel, ModbusMeter, ModbusRtuDriver, ModbusTcpDriver, load_model
from drivers.modbus.driver import _ModbusDriver
from drivers.modbus.models import RegisterSpec
from drivers.modbus.quantities import QUANTITIES, unit_factor
from simulators.meter import ManualClock
from simulators.modbus import ModbusFleet, quantity_value
from tests.conftest import REPO_ROOT
from tests.support import free_port

START = 1_795_363_200.0  # 2026-11-23 00:00 UTC+8


def modbus_model_files() -> list[Path]:
    files = []
    for path in sorted((REPO_ROOT / "config" / "meters").glob("*.yaml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        if not path.name.startswith("_") and isinstance(data, dict) and data.get("protocol") == "modbus":
            files.append(path)
    return files


CASES = [(path, framer) for path in modbus_model_files() for framer in ("socket", "rtu")]


def tolerance(name: str, spec: RegisterSpec, value: float) -> float:
    """What the register's resolution (and float32 precision) allows between the meter and the reading."""
    step = float(spec.scale * unit_factor(name, spec.unit))
    rounding = 1.0 if QUANTITIES[name] in ("energy", "power", "money") else 0.0
    precision = abs(value) * 2**-22 if spec.encoding == "float32" else 0.0
    return step * 1.01 + rounding + precision


def driver_for(fleet: ModbusFleet) -> _ModbusDriver:
    if fleet.framer == "rtu":
        return ModbusRtuDriver(f"socket://{fleet.host}:{fleet.port}")
    return ModbusTcpDriver(fleet.host, fleet.port)


def test_there_are_model_files():
    ids = {load_model(path).model for path in modbus_model_files()}
    assert {
        "generic-prepaid",
        "eastron-sdm120",
        "eastron-sdm630",
        "chint-ddsu666",
        "hiking-dds238-2-zn-sr",
        "generic-relay-module",
    } <= ids


@pytest.mark.parametrize(
    ("path", "framer"),
    CASES,
    ids=[f"{p.stem}/{'modbus-tcp' if f == 'socket' else 'modbus-rtu-over-tcp'}" for p, f in CASES],
)
async def test_model_file_polls_through_the_driver(path: Path, framer: str):
    model = load_model(path)
    clock = ManualClock(START)
    fleet = ModbusFleet(model, meters=2, port=free_port(), seed=11, clock=clock, framer=framer)
    async with fleet, driver_for(fleet) as driver:
        sim = fleet.meters[2]
        meter = ModbusMeter(f"{model.model}-2", 2, model)
        await check_readings(driver, model, meter, sim, clock)
        await check_relay(driver, model, meter, sim, clock)


async def check_readings(driver, model: MeterModel, meter, sim, clock: ManualClock) -> None:
    if "energy_import_total" not in model.registers:
        with pytest.raises(UnsupportedOperation):
            await driver.read(meter)
        return
    sim.set_power_w(1234)
    first = await driver.read(meter)
    values = {
        "energy_import_total": first.energy_wh,
        "power": first.power_w,
        "voltage": first.voltage_v,
        "current": first.current_a,
        **first.extra,
    }
    for name, spec in model.registers.items():
        if name in values:
            expected = quantity_value(sim, name)
            assert values[name] == pytest.approx(expected, abs=tolerance(name, spec, expected)), name
    if model.rates:
        assert first.energy_wh_by_rate is not None and len(first.energy_wh_by_rate) == model.rates
    clock.advance(3600)
    second = await driver.read(meter)
    spec = model.registers["energy_import_total"]
    assert second.energy_wh - first.energy_wh == pytest.approx(
        1234, abs=2 * tolerance("energy_import_total", spec, second.energy_wh)
    )


async def check_relay(driver, model: MeterModel, meter, sim, clock: ManualClock) -> None:
    if model.relay is None:
        with pytest.raises(UnsupportedOperation):
            await driver.set_relay(meter, RelayAction.OPEN)
        return
    await driver.set_relay(meter, RelayAction.OPEN)
    clock.advance(model.relay.trip_delay)
    assert await driver.read_relay(meter) is RelayState.OPEN
    assert not sim.relay_closed
    if "energy_import_total" in model.registers:
        assert (await driver.read(meter)).relay is RelayState.OPEN
    await driver.set_relay(meter, RelayAction.CLOSE)
    assert await driver.read_relay(meter) is RelayState.CLOSED
    assert sim.relay_closed
