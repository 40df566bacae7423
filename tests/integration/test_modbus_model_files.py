"""Loading model files from disk: errors name the file; ids are unique across files; shipped files follow the
house format."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest

from drivers.modbus import ModelFileError, load_model, load_models
from tests.conftest import REPO_ROOT

METERS = REPO_ROOT / "config" / "meters"

MINIMAL = """\
model: {id}
covers: [{alias}]
protocol: modbus
registers:
  energy_import_total: {{address: 0x0000, table: input, encoding: uint32, unit: Wh}}   # energy
"""


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def test_shipped_directory_loads_with_aliases():
    models = load_models(METERS)
    assert models["generic"] is models["generic-prepaid"]
    assert models["sdm120"].model == "eastron-sdm120"
    hiking = models["hiking-dds238-2-zn-sr"]
    assert hiking.relay is not None
    assert (
        hiking.relay.command.table,
        hiking.relay.command.address,
        hiking.relay.command.write_function,
    ) == ("holding", 0x001A, 16)


def test_generic_prepaid_is_the_documented_map():
    model = load_model(METERS / "generic-prepaid.yaml")
    layout = {name: (s.table, s.address, s.encoding, s.unit) for name, s in model.registers.items()}
    assert layout == {
        "energy_import_total": ("input", 0x0000, "uint32", "Wh"),
        "energy_import_rate1": ("input", 0x0002, "uint32", "Wh"),
        "energy_import_rate2": ("input", 0x0004, "uint32", "Wh"),
        "energy_import_rate3": ("input", 0x0006, "uint32", "Wh"),
        "energy_import_rate4": ("input", 0x0008, "uint32", "Wh"),
        "voltage": ("input", 0x000A, "uint16", "V"),
        "current": ("input", 0x000B, "uint16", "A"),
        "power": ("input", 0x000C, "int32", "W"),
    }
    assert model.relay is not None
    assert (model.relay.command.table, model.relay.command.address, model.relay.command.write_function) == (
        "coil",
        0,
        5,
    )
    assert (model.relay.state.table, model.relay.state.address, model.relay.state.closed) == (
        "discrete",
        0,
        1,
    )


@pytest.mark.parametrize("path", sorted(METERS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_register_line_names_its_quantity_in_a_comment(path: Path):
    lines = path.read_text(encoding="utf-8").splitlines()
    register_lines = [line for line in lines if re.match(r"\s+\w+:\s*\{.*\baddress:", line)]
    assert all(re.search(r"\}\s+#\s*\S", line) for line in register_lines), path


def test_file_errors_name_the_file(tmp_path):
    path = write(tmp_path, "bad.yaml", MINIMAL.format(id="bad", alias="b") + "colour: red\n")
    with pytest.raises(ModelFileError, match=r"bad\.yaml: colour: Extra inputs are not permitted"):
        load_model(path)
    with pytest.raises(ModelFileError, match=r"missing\.yaml: cannot read"):
        load_model(tmp_path / "missing.yaml")
    with pytest.raises(ModelFileError, match=r"bad\.yaml"):
        load_models(tmp_path)


def test_duplicate_ids_across_files_name_both_files(tmp_path):
    write(tmp_path, "a-one.yaml", MINIMAL.format(id="one", alias="first"))
    write(tmp_path, "b-two.yaml", MINIMAL.format(id="one", alias="second"))
    with pytest.raises(ModelFileError) as info:
        load_models(tmp_path)
    assert str(info.value).startswith(str(tmp_path / "b-two.yaml"))
    assert "'one' is already defined in" in str(info.value) and "a-one.yaml" in str(info.value)


def test_an_alias_may_not_repeat_another_files_id(tmp_path):
    write(tmp_path, "a-one.yaml", MINIMAL.format(id="one", alias="first"))
    write(tmp_path, "b-two.yaml", MINIMAL.format(id="two", alias="one"))
    with pytest.raises(ModelFileError, match=r"b-two\.yaml: model id or alias 'one' is already defined"):
        load_models(tmp_path)


def test_underscore_files_and_other_protocols_are_skipped(tmp_path):
    write(tmp_path, "one.yaml", MINIMAL.format(id="one", alias="first"))
    write(tmp_path, "_defaults.yaml", "anything: goes\n")
    write(tmp_path, "dlt645-meter.yaml", "model: dlt\nprotocol: dlt645\ndata: {}\n")
    assert set(load_models(tmp_path)) == {"one", "first"}


@pytest.mark.parametrize("path", sorted((REPO_ROOT / "config" / "meters").glob("*.yaml")), ids=lambda p: p.stem)
def test_the_one_pass_reading_equals_the_step_by_step_one(path):
    import random

    from drivers.modbus.models import load_model
    from drivers.modbus.values import (
        decode_values,
        reading_from_replies,
        reading_from_values,
        relay_state_from_replies,
        tamper_from_replies,
    )

    now = dt.datetime(2026, 11, 23, 8, 0, tzinfo=dt.UTC)

    model = load_model(path)
    if "energy_import_total" not in model.registers:
        pytest.skip("no energy register: not read")
    rng = random.Random(path.stem)
    for _ in range(50):
        replies = [[rng.randrange(0x10000) if r.table in ("input", "holding") else rng.randrange(2)
                    for _ in range(r.count)] for r in model.read_plan.requests]
        try:
            expected = reading_from_values("m", decode_values(model, replies), taken_at=now,
                                           relay=relay_state_from_replies(model, replies),
                                           tamper=tamper_from_replies(model, replies))
        except ValueError:
            with pytest.raises(ValueError):
                reading_from_replies(model, "m", replies, taken_at=now)
            continue
        assert reading_from_replies(model, "m", replies, taken_at=now) == expected
