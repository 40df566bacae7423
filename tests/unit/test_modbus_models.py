"""Meter model file validation (drivers/modbus/models.py), on YAML text: every error names the file."""

from __future__ import annotations

from decimal import Decimal

import pytest

from drivers.modbus.models import RELAY_STATE, ModelFileError, parse_model_text

GOOD = """
model: test-meter
covers: [tm1]
products:
  - {brand: Test, description: a meter}
protocol: modbus
defaults: {unit_id: 3, baudrate: 2400, parity: E, stopbits: 1, max_registers_per_request: 10}
registers:
  energy_import_total: {address: 0, table: input, encoding: uint32, word_order: little, scale: .01, unit: kWh}
  energy_import_rate1: {address: 0x0002, table: input, encoding: uint32, unit: Wh}   # rate 1
  power:               {address: 0x0010, table: holding, encoding: float32, unit: kW}  # power
relay:
  command: {table: holding, address: 0x001A, function: 16, open: 0, close: 1}   # command
  state:   {table: holding, address: 0x001A, open: 0, closed: 1}               # state
  trip_delay: 0.5
"""


def test_a_good_file_parses():
    model = parse_model_text(GOOD, path="test-meter.yaml")
    assert model.model == "test-meter"
    assert model.covers == ("tm1",)
    assert model.defaults.unit_id == 3 and model.defaults.parity == "E"
    energy = model.registers["energy_import_total"]
    assert (energy.address, energy.word_order, energy.scale, energy.unit) == (
        0,
        "little",
        Decimal("0.01"),
        "kWh",
    )
    assert model.relay is not None
    assert model.relay.command.write_function == 16
    assert model.relay.trip_delay == 0.5
    assert model.rates == 1
    assert [(r.table, r.address, r.count) for r in model.read_plan.requests] == [
        ("input", 0, 4),
        ("holding", 0x10, 2),
        ("holding", 0x1A, 1),
    ]
    assert RELAY_STATE in model.read_plan.slots


def test_function_defaults_from_the_table():
    model = parse_model_text(
        "model: m\nprotocol: modbus\nrelay:\n"
        "  command: {table: coil, address: 0, open: 0, close: 1}\n"
        "  state: {table: discrete, address: 0, open: 0, closed: 1}\n"
    )
    assert model.relay is not None and model.relay.command.write_function == 5


def test_models_hash_by_id():
    assert hash(parse_model_text(GOOD)) == hash(parse_model_text(GOOD))


def _error(text: str) -> str:
    with pytest.raises(ModelFileError) as info:
        parse_model_text(text, path="config/meters/bad-meter.yaml")
    message = str(info.value)
    assert message.startswith("config/meters/bad-meter.yaml: "), message
    assert info.value.path == "config/meters/bad-meter.yaml"
    return message


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("protocol: modbus", "protocol: modbus\nvendor: x"), "vendor: Extra inputs are not permitted"),
        (("trip_delay: 0.5", "trip_delay: 0.5\n  delay: 1"), "relay.delay: Extra inputs are not permitted"),
        (
            ("word_order: little,", "word_order: little, signed: true,"),
            "registers.energy_import_total.signed: Extra inputs are not permitted",
        ),
        (("encoding: float32", "encoding: float64"), "registers.power.encoding: Input should be"),
        (("word_order: little", "word_order: middle"), "registers.energy_import_total.word_order"),
        (
            ("table: holding, encoding: float32", "table: coil, encoding: float32"),
            "does not fit table 'coil'",
        ),
        (
            ("address: 0x0010, table: holding", "address: 0x0003, table: input"),
            "registers.energy_import_rate1 and registers.power overlap",
        ),
        (("address: 0x0002", "address: 0x0001"), "overlap in the input table at 0x0001"),
        (
            ("address: 0x001A, function", "address: 0x0011, function"),
            "registers.power and relay.command overlap",
        ),
        (("power:  ", "powr:  "), "registers.powr: unknown quantity"),
        (("unit: kW}", "unit: kWh}"), "registers.power.unit: unit 'kWh' is not a power unit"),
        (("scale: .01", "scale: 0"), "scale must be a finite non-zero number"),
        (("energy_import_rate1:", "energy_import_rate2:"), "rate registers must be energy_import_rate1"),
        (("function: 16", "function: 5"), "relay.command: function 5 cannot write a holding"),
        (("closed: 1", "closed: 0"), "relay.state: 'open' and 'closed' must differ"),
        (("model: test-meter", "model: Test Meter"), "model: String should match pattern"),
        (("covers: [tm1]", "covers: [test-meter]"), "covers: repeats a name or the model id"),
        (("protocol: modbus", "protocol: dlt645"), "protocol: Input should be 'modbus'"),
        (("unit_id: 3", "unit_id: 300"), "defaults.unit_id"),
        (
            ("max_registers_per_request: 10", "max_registers_per_request: 1"),
            "uint32 needs 2 registers per request",
        ),
        (("address: 0x0010", 'address: "16"'), "registers.power.address: Input should be a valid integer"),
        (("covers: [tm1]", "covers: [tm1]\ncovers: [tm2]"), "duplicate key 'covers'"),
        (("protocol: modbus", "protocol: [modbus"), "invalid YAML"),
    ],
)
def test_bad_files_name_the_file_and_the_key(change, expected):
    old, new = change
    assert old in GOOD
    assert expected in _error(GOOD.replace(old, new, 1))


def test_a_file_that_is_not_a_mapping():
    assert "must be a mapping" in _error("- model: x\n")
