"""A simulated meter as a Modbus unit (simulators/modbus/device.py), read and written without sockets."""

from __future__ import annotations

import pytest

from drivers.modbus.models import parse_model_text
from drivers.modbus.quantities import QUANTITIES
from drivers.modbus.registers import decode
from simulators.loadprofile import LoadProfile
from simulators.meter import ManualClock, SimulatedMeter
from simulators.modbus.device import (
    ILLEGAL_ADDRESS,
    ILLEGAL_FUNCTION,
    ILLEGAL_VALUE,
    MeterUnit,
    ModelLayout,
    quantity_value,
)

FC_TABLE = {1: "coil", 2: "discrete", 3: "holding", 4: "input"}


class Core:
    """Reads and writes by function code, as the server calls the unit."""

    def __init__(self, unit: MeterUnit) -> None:
        self.unit = unit

    def get(self, fc, address, count):
        return self.unit.read(FC_TABLE[fc], address, count)

    def set(self, fc, address, values):
        return self.unit.write(fc, address, [int(v) for v in values])

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
    return Core(unit), meter, clock


async def test_registers_show_the_meter_live():
    core, meter, clock = served(GENERIC)
    meter.set_power_w(-1500)  # exporting: a negative int32
    words = core.get(4, 0, 4)
    assert decode(words[0:2], "uint32") == meter.energy_wh == 123_456_789
    assert decode(words[2:4], "uint32", "little") == meter.energy_wh_by_rate[0]
    assert decode(core.get(4, 12, 2), "int32") == -1500
    assert core.get(4, 10, 1) == [round(meter.voltage_v * 10)]
    assert core.get(4, 4, 1) == ILLEGAL_ADDRESS  # a gap in the map
    meter.set_power_w(3600)
    clock.advance(10)
    words = core.get(4, 0, 2)
    assert decode(words, "uint32") == 123_456_799


async def test_reading_part_of_a_value_gets_fresh_registers():
    core, meter, clock = served(GENERIC)
    meter.set_power_w(3600)
    clock.advance(3600)
    low_word = core.get(4, 1, 1)
    assert low_word == [meter.energy_wh & 0xFFFF]


async def test_coil_write_drives_the_relay_and_discrete_input_reports_it():
    core, meter, _ = served(GENERIC)
    assert core.get(2, 0, 1) == [1]
    assert core.set(5, 0, [False]) is None
    assert not meter.relay_closed
    assert core.get(2, 0, 1) == [0]
    assert core.get(1, 0, 1) == [0]
    assert core.set(5, 0, [True]) is None
    assert meter.relay_closed


async def test_other_writes_are_refused():
    core, meter, _ = served(GENERIC)
    assert core.set(15, 0, [False]) == ILLEGAL_FUNCTION  # the model says FC05
    assert core.set(5, 1, [True]) == ILLEGAL_ADDRESS  # not the relay coil
    assert meter.relay_closed
    assert core.get(4, 0x20, 1) == ILLEGAL_ADDRESS  # not in the model
    assert core.get(3, 0, 1) == ILLEGAL_ADDRESS  # no holding registers


async def test_fc16_relay_register_reads_back_the_actual_state():
    core, meter, clock = served(HIKING_LIKE, trip_delay_s=5.0)
    assert (
        core.set(6, 0x1A, [0]) == ILLEGAL_FUNCTION
    )  # FC06 refused, as reported
    assert core.set(16, 0x1A, [0]) is None
    assert not meter.relay_commanded_closed
    assert core.get(3, 0x1A, 1) == [1]  # still closed during the trip delay
    clock.advance(5)
    assert core.get(3, 0x1A, 1) == [0]
    assert core.set(16, 0x1A, [7]) == ILLEGAL_VALUE
    assert core.set(16, 0x0A, [0, 0]) == ILLEGAL_ADDRESS  # energy is read-only


async def test_scaled_energy_rounds_down():
    core, _, _ = served(HIKING_LIKE, energy_wh=1_234_569)
    words = core.get(3, 0x0A, 2)
    assert decode(words, "uint32") == 123_456  # 1234.56 kWh: the meter shows no energy not yet consumed


def test_every_quantity_has_a_simulated_value():
    meter = SimulatedMeter(LoadProfile(), clock=ManualClock())
    for name in QUANTITIES:
        assert isinstance(quantity_value(meter, name), int | float), name


def test_unit_ids_are_checked():
    with pytest.raises(ValueError, match="1..247"):
        MeterUnit(300, SimulatedMeter(LoadProfile(), clock=ManualClock()), ModelLayout(GENERIC))


def test_a_stuck_relay_acknowledges_and_does_not_move():
    core, meter, _ = served(GENERIC)
    assert core.unit.write(5, 0, [0], stuck=True) is None
    assert meter.relay_closed and core.get(2, 0, 1) == [1]


def test_reads_across_a_value_and_past_the_map():
    core, meter, _ = served(GENERIC)
    words = core.get(4, 0, 4)  # energy total and rate 1 in one request
    assert decode(words[0:2], "uint32") == meter.energy_wh
    assert core.get(4, 0, 14) == ILLEGAL_ADDRESS  # 4..9 are not mapped in this model
    assert core.get(4, 0x0B, 1) == ILLEGAL_ADDRESS
