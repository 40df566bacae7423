"""Tamper flags, pure parts: DL/T 645 status word 7 bits, the Modbus model's tamper register, the simulators'
side of both, the fault plan's tamper kinds, and when a change of flags makes an event."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.dlt645 import DI, StatusWord7, decode_frame
from drivers.dlt645.messages import parse_read_reply
from drivers.dlt645.status import tamper_flags
from drivers.modbus import load_model
from drivers.modbus.models import TAMPER, ModelFileError, parse_model_text
from drivers.modbus.values import reading_from_replies, reading_from_values, tamper_from_replies
from gateway.service.tamper import TamperFlags, tamper_change, tamper_event
from simulators.dlt645 import make_meters
from simulators.dlt645.bus import read_register
from simulators.faults import FaultKind, FaultPlan
from simulators.loadprofile import LoadProfile
from simulators.meter import ManualClock, SimulatedMeter
from simulators.modbus import DEFAULT_MODEL_PATH
from simulators.modbus.device import MeterUnit, ModelLayout

NOW = dt.datetime(2026, 12, 3, 8, 0, tzinfo=dt.UTC)


# --- DL/T 645 status word 7 ---------------------------------------------------------------------------------
def test_status_word_7_bits_9_and_10_are_the_covers() -> None:
    assert int(StatusWord7.COVER_OPEN) == 0x0200 and int(StatusWord7.TERMINAL_COVER_OPEN) == 0x0400
    assert tamper_flags(0) == ()
    assert tamper_flags(1 << 9) == ("cover_open",)
    assert tamper_flags(1 << 10) == ("terminal_cover_open",)
    assert tamper_flags((1 << 9) | (1 << 10)) == ("cover_open", "terminal_cover_open")


def test_the_other_bits_of_status_word_7_are_not_tamper_flags() -> None:
    # b0..b8: phase sequence, imbalance, auxiliary supply, power failure, demand, power factor; b11..b15 reserved
    assert tamper_flags(0xFFFF & ~((1 << 9) | (1 << 10))) == ()


@given(st.integers(0, 0xFFFF))
def test_tamper_flags_are_the_sorted_names_of_the_set_bits(word: int) -> None:
    expected = sorted(name for name, bit in (("cover_open", 9), ("terminal_cover_open", 10)) if word >> bit & 1)
    assert tamper_flags(word) == tuple(expected)


def test_a_status_word_7_reply_off_the_wire() -> None:
    """Meter 000000000001 answers DI 04000507 with the word 0x0200 (cover open): data = DI 07 05 00 04 + word
    low byte first 00 02, each byte +33H."""
    head = bytes.fromhex("68 010000000000 68 91 06 3A383337 3335".replace(" ", ""))
    raw = head + bytes([sum(head) & 0xFF, 0x16])
    value = parse_read_reply(decode_frame(raw), DI.STATUS_WORD_7)
    assert value == b"\x00\x02" and tamper_flags(int.from_bytes(value, "little")) == ("cover_open",)


def test_the_simulated_meter_serves_its_flags_and_the_plans_in_status_word_7() -> None:
    (meter,) = make_meters(1, seed=1)
    assert read_register(meter, DI.STATUS_WORD_7) == b"\x00\x00"
    meter.meter.set_tamper("cover_open")
    assert read_register(meter, DI.STATUS_WORD_7) == (1 << 9).to_bytes(2, "little")
    both = read_register(meter, DI.STATUS_WORD_7, tamper=frozenset({"terminal_cover_open"}))
    assert both == ((1 << 9) | (1 << 10)).to_bytes(2, "little")
    meter.meter.set_tamper("cover_open", False)
    assert read_register(meter, DI.STATUS_WORD_7) == b"\x00\x00"
    meter.missing_registers.add(DI.STATUS_WORD_7)
    assert read_register(meter, DI.STATUS_WORD_7) is None


# --- the Modbus tamper register -------------------------------------------------------------------------------
BASE = """
model: t
protocol: modbus
registers:
  energy_import_total: {address: 0, table: input, encoding: uint32, unit: Wh}
"""


def _model(tamper: str):  # type: ignore[no-untyped-def]
    return parse_model_text(BASE + tamper, path="t.yaml")


def test_a_tamper_register_decodes_its_bits_sorted_by_name() -> None:
    model = _model("tamper: {table: input, address: 2, flags: {terminal_cover_open: 3, cover_open: 0, magnet: 7}}")
    spec = model.tamper
    assert spec is not None
    assert spec.decode(0) == ()
    assert spec.decode(0b1000_1001) == ("cover_open", "magnet", "terminal_cover_open")
    assert spec.decode(0xFFFF & ~0b1000_1001) == ()  # bits no flag names mean nothing
    assert spec.encode({"magnet", "cover_open", "unknown"}) == 0b1000_0001
    # adjacent to the energy register: read in the same request
    assert [(r.table, r.address, r.count) for r in model.read_plan.requests] == [("input", 0, 3)]
    assert model.read_plan.slots[TAMPER] == (0, 2)


@pytest.mark.parametrize(("tamper", "message"), [
    ("tamper: {table: input, address: 2, flags: {}}", "name at least one flag"),
    ("tamper: {table: input, address: 2, flags: {a: 1, b: 1}}", "two flags share a bit"),
    ("tamper: {table: input, address: 2, flags: {a: 16}}", "tamper.flags.a"),
    ("tamper: {table: input, address: 2, flags: {Cover: 1}}", "tamper.flags.Cover"),
    ("tamper: {table: coil, address: 2, flags: {a: 0}}", "tamper.table"),
    ("tamper: {table: input, address: 1, flags: {a: 0}}", "overlap"),
    ("tamper: {table: input, address: 2, flags: {a: 0}, scale: 1}", "tamper.scale"),
])
def test_a_bad_tamper_register_names_the_file_and_the_key(tamper: str, message: str) -> None:
    with pytest.raises(ModelFileError) as info:
        _model(tamper)
    assert str(info.value).startswith("t.yaml: ") and message in str(info.value)


def test_the_generic_model_reads_its_tamper_register_with_the_measurements() -> None:
    model = load_model(DEFAULT_MODEL_PATH)
    assert model.tamper is not None and model.tamper.flags == {"cover_open": 0, "terminal_cover_open": 1}
    assert len(model.read_plan.requests) == 2  # the input block (with the tamper word) and the relay bit
    replies = [[0] * r.count for r in model.read_plan.requests]
    index, offset = model.read_plan.slots[TAMPER]
    replies[index][offset] = 0b10
    reading = reading_from_replies(model, "m", replies, taken_at=NOW)
    assert reading.extra["tamper"] == ("terminal_cover_open",)
    assert tamper_from_replies(model, replies) == ("terminal_cover_open",)
    replies[index][offset] = 0
    assert reading_from_replies(model, "m", replies, taken_at=NOW).extra["tamper"] == ()


def test_without_a_tamper_register_a_reading_has_no_tamper_key() -> None:
    model = _model("")
    replies = [[0] * r.count for r in model.read_plan.requests]
    assert "tamper" not in reading_from_replies(model, "m", replies, taken_at=NOW).extra
    assert tamper_from_replies(model, replies) is None
    assert "tamper" not in reading_from_values("m", {"energy_import_total": 1}, taken_at=NOW).extra


def test_the_simulated_unit_serves_the_tamper_register() -> None:
    model = load_model(DEFAULT_MODEL_PATH)
    meter = SimulatedMeter(LoadProfile.seeded(0, 0), clock=ManualClock())
    unit = MeterUnit(1, meter, ModelLayout(model))
    assert unit.read("input", 0x000E, 1) == [0]
    meter.set_tamper("cover_open")
    assert unit.read("input", 0x000E, 1) == [1]
    meter.tamper_injected = frozenset({"terminal_cover_open"})  # what the server sets from the fault plan
    assert unit.read("input", 0x000E, 1) == [3]


# --- the fault plan -------------------------------------------------------------------------------------------
def test_the_fault_plan_raises_tamper_flags_from_its_text_form() -> None:
    plan = FaultPlan.parse("cover-open@0,2; terminal-cover-open@2")
    assert plan.tamper(0) == {"cover_open"}
    assert plan.tamper(1) == frozenset()
    assert plan.tamper(2) == {"cover_open", "terminal_cover_open"}
    assert plan.reply(0).silent is False  # a tamper flag is no reply fault
    plan.remove([2], FaultKind.COVER_OPEN)
    assert plan.tamper(2) == {"terminal_cover_open"}
    plan.clear()
    assert plan.tamper(0) == frozenset()
    with pytest.raises(ValueError, match="takes no argument"):
        FaultPlan.parse("cover-open:1@0")


# --- when flags make an event ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("known", "flags", "event"), [
    (None, (), False),  # first reading after a start without flags: nothing raised, nothing to clear
    (None, ("cover_open",), True),  # first reading after a start with flags: raised
    ((), ("cover_open",), True),
    (("cover_open",), ("cover_open",), False),  # unchanged
    (("cover_open",), ("cover_open", "terminal_cover_open"), True),
    (("cover_open",), (), True),  # cleared
    ((), (), False),
])
def test_a_change_of_flags_is_an_event(known, flags, event) -> None:  # type: ignore[no-untyped-def]
    assert tamper_change(known, flags) is event


def test_a_seeded_meter_clears_on_its_next_reading_without_flags() -> None:
    seen = TamperFlags()
    seen.seed({"M-1": None, "M-2": ("cover_open",)})
    assert tamper_change(seen.seen["M-1"], ())  # an alarm open from before the start: cleared
    assert tamper_change(seen.seen["M-2"], ())
    assert not tamper_change(seen.seen["M-2"], ("cover_open",))
    seen.committed({"M-1": ()})
    assert seen.seen["M-1"] == ()


def test_the_event_payload() -> None:
    assert tamper_event("M-1", "A-1", ("cover_open",), NOW) == {
        "type": "MeterTamper", "meter_id": "M-1", "account_id": "A-1", "flags": ["cover_open"], "at": NOW}
