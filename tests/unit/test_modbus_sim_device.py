"""A simulated meter as a Modbus unit (simulators/modbus/device.py), driven through pymodbus's datastore
(the SimCore a server uses) without sockets."""

from __future__ import annotations

import pytest
from pymodbus.constants import ExcCodes
from pymodbus.simulator.simcore import SimCore

from drivers.modbus.models import parse_model_text
from drivers.modbus.quantities import QUANTITIES
from drivers.modbus.registers import decode
from simulators.loadprofile import LoadProfile
from simulators.meter import ManualClock, SimulatedMeter
from simulators.modbus.device import MeterUnit, ModelLayout, quantity_value

GENERIC = parse_model_text("""
model: generic-like
protocol: modbus
registers:
  energy_import_total: {address: 0x0000, table: input, encoding: uint32, unit: Wh}                # energy
  energy_import_rate1: {address: 2, table: input, encoding: uint32, word_order: little, unit: Wh}  # rate 1
  voltage:             {address: 0x000A, table: input, encoding: uint16, scale: 0.1, unit: V}     # voltage
  power:               {address: 0x000C, table: input, encoding: int32, unit: W}                  # power
relay:
  command: {table: coil, address: 0x0000, function: 5, open: 0, close: 1}
  state:   {table: discrete, address: 0x0000, open: 0, closed: 1}
""")

HIKING_LIKE = parse_model_text("""
model: hiking-like
protocol: modbus
registers:
  energy_import_total: {address: 0x000A, table: holding, encoding: uint32, scale: 0.01, unit: kWh}   # import
relay:
  command: {table: holding, address: 0x001A, function: 16, open: 0, close: 1}
  state:   {table: holding, address: 0x001A, open: 0, closed: 1}
  trip_delay: 5
""")


def served(model, *, energy_wh=123_456_789.0, trip_delay_s=0.0):
    clock = ManualClock(1_795_363_200)
    meter = SimulatedMeter(
        LoadProfile.seeded(0, 0), clock=clock, energy_wh=energy_wh, trip_delay_s=trip_delay_s
    )
    unit = MeterUnit(5, meter, ModelLayout(model))
    return SimCore([unit.sim_device()]), meter, clock


async def test_registers_show_the_meter_live():
    core, meter, clock = served(GENERIC)
    meter.set_power_w(-1500)  # exporting: a negative int32
    words = await core.async_getValues(5, 4, 0, 4)
    assert decode(words[0:2], "uint32") == meter.energy_wh == 123_456_789
    assert decode(words[2:4], "uint32", "little") == meter.energy_wh_by_rate[0]
    assert decode(await core.async_getValues(5, 4, 12, 2), "int32") == -1500
    assert await core.async_getValues(5, 4, 10, 1) == [round(meter.voltage_v * 10)]
    assert await core.async_getValues(5, 4, 4, 1) == ExcCodes.ILLEGAL_ADDRESS  # a gap in the map
    meter.set_power_w(3600)
    clock.advance(10)
    words = await core.async_getValues(5, 4, 0, 2)
    assert decode(words, "uint32") == 123_456_799


async def test_reading_part_of_a_value_gets_fresh_registers():
    core, meter, clock = served(GENERIC)
    meter.set_power_w(3600)
    clock.advance(3600)
    low_word = await core.async_getValues(5, 4, 1, 1)
    assert low_word == [meter.energy_wh & 0xFFFF]


async def test_coil_write_drives_the_relay_and_discrete_input_reports_it():
    core, meter, _ = served(GENERIC)
    assert (await core.async_getValues(5, 2, 0, 1))[0] is True
    assert await core.async_setValues(5, 5, 0, [False]) is None
    assert not meter.relay_closed
    assert (await core.async_getValues(5, 2, 0, 1))[0] is False
    assert (await core.async_getValues(5, 1, 0, 1))[0] is False
    assert await core.async_setValues(5, 5, 0, [True]) is None
    assert meter.relay_closed


async def test_other_writes_are_refused():
    core, meter, _ = served(GENERIC)
    assert await core.async_setValues(5, 15, 0, [False]) == ExcCodes.ILLEGAL_FUNCTION  # the model says FC05
    assert await core.async_setValues(5, 5, 1, [True]) == ExcCodes.ILLEGAL_ADDRESS  # not the relay coil
    assert meter.relay_closed
    assert await core.async_getValues(5, 4, 0x20, 1) == ExcCodes.ILLEGAL_ADDRESS  # not in the model
    assert await core.async_getValues(5, 3, 0, 1) == ExcCodes.ILLEGAL_ADDRESS  # no holding registers


async def test_fc16_relay_register_reads_back_the_actual_state():
    core, meter, clock = served(HIKING_LIKE, trip_delay_s=5.0)
    assert (
        await core.async_setValues(5, 6, 0x1A, [0]) == ExcCodes.ILLEGAL_FUNCTION
    )  # FC06 refused, as reported
    assert await core.async_setValues(5, 16, 0x1A, [0]) is None
    assert not meter.relay_commanded_closed
    assert await core.async_getValues(5, 3, 0x1A, 1) == [1]  # still closed during the trip delay
    clock.advance(5)
    assert await core.async_getValues(5, 3, 0x1A, 1) == [0]
    assert await core.async_setValues(5, 16, 0x1A, [7]) == ExcCodes.ILLEGAL_VALUE
    assert await core.async_setValues(5, 16, 0x0A, [0, 0]) == ExcCodes.ILLEGAL_ADDRESS  # energy is read-only


async def test_scaled_energy_rounds_down():
    core, _, _ = served(HIKING_LIKE, energy_wh=1_234_569)
    words = await core.async_getValues(5, 3, 0x0A, 2)
    assert decode(words, "uint32") == 123_456  # 1234.56 kWh: the meter shows no energy not yet consumed


def test_every_quantity_has_a_simulated_value():
    meter = SimulatedMeter(LoadProfile(), clock=ManualClock())
    for name in QUANTITIES:
        assert isinstance(quantity_value(meter, name), int | float), name


def test_unit_ids_are_checked_by_pymodbus():
    with pytest.raises(TypeError):
        MeterUnit(300, SimulatedMeter(LoadProfile(), clock=ManualClock()), ModelLayout(GENERIC)).sim_device()
