"""Units, scales and Reading construction (drivers/modbus/quantities.py, values.py), on register fixtures."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.base import RelayState
from drivers.modbus.models import parse_model_text
from drivers.modbus.quantities import from_canonical, to_canonical
from drivers.modbus.values import decode_values, reading_from_values, relay_state, relay_state_from_replies

NOW = dt.datetime(2026, 11, 23, 8, 0, tzinfo=dt.UTC)

HIKING_LIKE = parse_model_text("""
model: hiking-like
protocol: modbus
registers:
  energy_import_total: {address: 0x000A, table: holding, encoding: uint32, scale: 0.01, unit: kWh}   # import
  voltage:             {address: 0x000C, table: holding, encoding: uint16, scale: 0.1, unit: V}      # voltage
  current:             {address: 0x000D, table: holding, encoding: uint16, scale: 0.01, unit: A}     # current
  power:               {address: 0x000E, table: holding, encoding: int16, unit: W}                   # power
  frequency:           {address: 0x0011, table: holding, encoding: uint16, scale: 0.01, unit: Hz}    # freq.
relay:
  command: {table: holding, address: 0x001A, function: 16, open: 0, close: 1}
  state:   {table: holding, address: 0x001A, open: 0, closed: 1}
""")


@pytest.mark.parametrize(
    ("quantity", "raw", "scale", "unit", "expected"),
    [
        ("energy_import_total", 123456, "0.01", "kWh", 1_234_560),  # 1234.56 kWh in 0.01 kWh steps
        ("energy_import_total", 123456, "10", "Wh", 1_234_560),  # the same, written as Wh x 10
        ("energy_import_total", 1234.567, "1", "kWh", 1_234_567),  # float kWh
        ("energy_import_total", 15, "0.1", "Wh", 2),  # 1.5 Wh rounds half up
        ("power", -1.5, "1", "kW", -1500),
        ("voltage", 2305, "0.1", "V", 230.5),
        ("current", 1234, "1", "mA", 1.234),
        ("balance", 5000, "0.01", "yuan", 5000),  # 50.00 yuan = 5000 fen
        ("power_factor", 980, "0.1", "%", 0.98),
    ],
)
def test_to_canonical(quantity, raw, scale, unit, expected):
    assert to_canonical(quantity, raw, scale=Decimal(scale), unit=unit) == expected


def test_to_canonical_refuses_nan():
    with pytest.raises(ValueError, match="nan"):
        to_canonical("power", float("nan"), scale=Decimal(1), unit="W")


def test_from_canonical_floors_energy_and_wraps_counters():
    assert (
        from_canonical("energy_import_total", 1_234_569, scale=Decimal("0.01"), unit="kWh", encoding="uint32")
        == 123456
    )
    assert (
        from_canonical("energy_import_total", 2**32 + 5, scale=Decimal(1), unit="Wh", encoding="uint32") == 5
    )
    assert from_canonical("power", 40_000, scale=Decimal(1), unit="W", encoding="int16") == 32767  # saturates


@given(st.integers(0, 2**32 - 1), st.sampled_from(["0.01", "0.1", "1", "10"]))
def test_integer_energy_round_trip(raw, scale):
    wh = to_canonical("energy_import_total", raw, scale=Decimal(scale), unit="kWh")
    assert (
        from_canonical("energy_import_total", wh, scale=Decimal(scale), unit="kWh", encoding="uint32") == raw
    )


def test_decode_values_from_register_fixtures():
    # one reply per planned request: holding 0x0A..0x0E, 0x11, 0x1A
    assert [(r.address, r.count) for r in HIKING_LIKE.read_plan.requests] == [(0x0A, 5), (0x11, 1), (0x1A, 1)]
    replies = [[0x0001, 0xE240, 2305, 245, 0xFFF6], [5002], [1]]
    values = decode_values(HIKING_LIKE, replies)
    assert values == {
        "energy_import_total": 1_234_560,  # 0x0001E240 = 123456 x 0.01 kWh
        "voltage": 230.5,
        "current": 2.45,
        "power": -10,
        "frequency": 50.02,
    }
    assert relay_state_from_replies(HIKING_LIKE, replies) is RelayState.CLOSED


def test_relay_state_values():
    assert HIKING_LIKE.relay is not None
    spec = HIKING_LIKE.relay.state
    assert [relay_state(spec, raw) for raw in (0, 1, 7)] == [
        RelayState.OPEN,
        RelayState.CLOSED,
        RelayState.UNKNOWN,
    ]


def test_reading_fields_and_extras():
    values = {
        "energy_import_total": 1000,
        "energy_import_rate1": 100,
        "energy_import_rate2": 900,
        "power": 50,
        "voltage_l1": 231.0,
        "current_l1": 1.5,
        "frequency": 50.0,
        "balance": 1234,
    }
    reading = reading_from_values("m1", values, taken_at=NOW, relay=RelayState.OPEN)
    assert reading.meter_id == "m1" and reading.taken_at == NOW
    assert reading.energy_wh == 1000
    assert reading.energy_wh_by_rate == (100, 900)
    assert (reading.power_w, reading.voltage_v, reading.current_a) == (50, 231.0, 1.5)  # phase 1 as fallback
    assert reading.meter_balance_fen == 1234
    assert reading.relay is RelayState.OPEN
    assert reading.extra == {"voltage_l1": 231.0, "current_l1": 1.5, "frequency": 50.0}


def test_reading_without_rates():
    reading = reading_from_values("m1", {"energy_import_total": 5}, taken_at=NOW)
    assert reading.energy_wh_by_rate is None and reading.power_w is None and reading.relay is None


@given(
    quantity=st.sampled_from(["energy_import_total", "power", "voltage", "current", "balance", "power_factor",
                              "frequency"]),
    encoding=st.sampled_from(["uint16", "int16", "uint32", "int32", "float32"]),
    word_order=st.sampled_from(["big", "little"]),
    scale=st.sampled_from(["1", "10", "0.1", "0.01", "0.001", "2", "0.5", "0.25", "100"]),
    words=st.tuples(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF)),
)
def test_fast_decoding_equals_the_exact_conversion(quantity, encoding, word_order, scale, words):
    """decode_values takes shortcuts (int and float arithmetic); they must give what Decimal gives."""
    from drivers.modbus.models import RegisterSpec
    from drivers.modbus.quantities import QUANTITIES, units_of
    from drivers.modbus.registers import decode, length
    from drivers.modbus.values import _converter

    for unit in units_of(QUANTITIES[quantity]):
        spec = RegisterSpec(address=0, table="input", encoding=encoding, word_order=word_order,
                            scale=Decimal(scale), unit=unit)
        regs = list(words[: length(encoding)])
        raw = decode(regs, encoding, word_order)
        try:
            expected = to_canonical(quantity, raw, scale=Decimal(scale), unit=unit)
        except ValueError:
            with pytest.raises(ValueError):
                _converter(quantity, spec)(regs, 0)
            continue
        got = _converter(quantity, spec)(regs, 0)
        assert got == expected and type(got) is type(expected), (unit, raw, got, expected)

