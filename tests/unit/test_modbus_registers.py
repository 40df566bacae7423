"""Pure register codec and read planner (drivers/modbus/registers.py)."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.modbus.registers import (
    ReadRequest,
    decode,
    encode,
    exception_name,
    length,
    plan_reads,
    read_function_code,
)

# (encoding, word order, value, registers): the registers are what a meter puts on the wire, word by word.
FIXTURES = [
    ("uint16", "big", 0x1234, [0x1234]),
    ("int16", "big", -2, [0xFFFE]),
    ("int16", "big", -32768, [0x8000]),
    ("uint32", "big", 0x12345678, [0x1234, 0x5678]),
    ("uint32", "little", 0x12345678, [0x5678, 0x1234]),
    ("int32", "big", -1, [0xFFFF, 0xFFFF]),
    ("int32", "big", -65536, [0xFFFF, 0x0000]),
    ("int32", "little", -65536, [0x0000, 0xFFFF]),
    ("float32", "big", 230.5, [0x4366, 0x8000]),  # protocols.md §3.4: SDM120 reply 43 66 80 00
    ("float32", "little", 230.5, [0x8000, 0x4366]),
    ("float32", "big", -1.5, [0xBFC0, 0x0000]),
    ("bool", "big", 1, [1]),
]


@pytest.mark.parametrize(("encoding", "word_order", "value", "registers"), FIXTURES)
def test_decode_fixture(encoding, word_order, value, registers):
    assert decode(registers, encoding, word_order) == value


@pytest.mark.parametrize(("encoding", "word_order", "value", "registers"), FIXTURES)
def test_encode_fixture(encoding, word_order, value, registers):
    assert encode(value, encoding, word_order) == registers


def test_decode_matches_the_bytes_of_a_real_reply():
    """SDM120 FC04 reply `01 04 04 43 66 80 00 ...`: data bytes 43 66 80 00 are 230.5 V."""
    data = bytes.fromhex("43668000")
    words = [int.from_bytes(data[i : i + 2], "big") for i in (0, 2)]
    assert decode(words, "float32") == 230.5
    assert struct.pack(">HH", *encode(230.5, "float32")) == data


@pytest.mark.parametrize(
    ("encoding", "value"),
    [
        ("uint16", 65536),
        ("uint16", -1),
        ("int16", 32768),
        ("uint32", 2**32),
        ("int32", -(2**31) - 1),
        ("uint16", 1.5),
        ("bool", 2),
        ("float32", 1e39),
    ],
)
def test_encode_refuses_values_that_do_not_fit(encoding, value):
    with pytest.raises(ValueError):
        encode(value, encoding)


def test_decode_refuses_wrong_register_count_and_non_words():
    with pytest.raises(ValueError, match="2 register"):
        decode([1], "uint32")
    with pytest.raises(ValueError, match="16-bit"):
        decode([0x10000], "uint16")


def test_lengths_and_function_codes():
    assert [length(e) for e in ("bool", "uint16", "int16", "uint32", "int32", "float32")] == [
        1,
        1,
        1,
        2,
        2,
        2,
    ]
    assert [read_function_code(t) for t in ("coil", "discrete", "holding", "input")] == [1, 2, 3, 4]
    assert exception_name(2) == "illegal data address"
    assert exception_name(99) == "exception code 99"


word_orders = st.sampled_from(["big", "little"])


@given(st.integers(0, 2**16 - 1), word_orders)
def test_uint16_round_trip(value, order):
    assert decode(encode(value, "uint16", order), "uint16", order) == value


@given(st.integers(-(2**15), 2**15 - 1), word_orders)
def test_int16_round_trip(value, order):
    assert decode(encode(value, "int16", order), "int16", order) == value


@given(st.integers(0, 2**32 - 1), word_orders)
def test_uint32_round_trip(value, order):
    registers = encode(value, "uint32", order)
    assert all(0 <= r <= 0xFFFF for r in registers)
    assert decode(registers, "uint32", order) == value


@given(st.integers(-(2**31), 2**31 - 1), word_orders)
def test_int32_round_trip(value, order):
    assert decode(encode(value, "int32", order), "int32", order) == value


@given(st.floats(width=32, allow_nan=False), word_orders)
def test_float32_round_trip(value, order):
    assert decode(encode(value, "float32", order), "float32", order) == value


@given(st.integers(0, 2**32 - 1))
def test_word_orders_are_each_others_reverse(value):
    assert encode(value, "uint32", "little") == encode(value, "uint32", "big")[::-1]


def test_float32_nan_survives():
    assert math.isnan(decode(encode(math.nan, "float32"), "float32"))


# -- planner -------------------------------------------------------------------------------------------------


def test_adjacent_registers_of_one_table_merge():
    plan = plan_reads({"a": ("input", 0, 2), "b": ("input", 2, 2), "c": ("input", 4, 1)})
    assert plan.requests == (ReadRequest("input", 0, 5),)
    assert plan.slots == {"a": (0, 0), "b": (0, 2), "c": (0, 4)}


def test_gaps_and_tables_are_not_merged():
    plan = plan_reads(
        {"a": ("input", 0, 2), "gap": ("input", 3, 1), "h": ("holding", 2, 1), "bit": ("discrete", 0, 1)}
    )
    assert plan.requests == (
        ReadRequest("input", 0, 2),
        ReadRequest("input", 3, 1),
        ReadRequest("holding", 2, 1),
        ReadRequest("discrete", 0, 1),
    )


def test_merging_respects_the_request_limit():
    items = {f"q{i}": ("holding", 2 * i, 2) for i in range(5)}  # ten adjacent registers
    plan = plan_reads(items, max_registers=4)
    assert [(r.address, r.count) for r in plan.requests] == [(0, 4), (4, 4), (8, 2)]
    assert plan.slots["q2"] == (1, 0)


def test_the_same_register_twice_is_read_once():
    plan = plan_reads({"command": ("holding", 0x1A, 1), "state": ("holding", 0x1A, 1)})
    assert plan.requests == (ReadRequest("holding", 0x1A, 1),)
    assert plan.take("state", [[7]], 1) == [7]


def test_an_item_larger_than_the_limit_is_refused():
    with pytest.raises(ValueError, match="limit 1"):
        plan_reads({"energy": ("input", 0, 2)}, max_registers=1)


@given(
    st.dictionaries(
        st.integers(0, 30),
        st.tuples(st.sampled_from(["input", "holding"]), st.integers(0, 60), st.integers(1, 2)),
        max_size=12,
    ),
    st.integers(2, 10),
)
def test_plan_covers_every_item_within_limits(items, limit):
    plan = plan_reads(items, max_registers=limit)
    for key, (table, address, count) in items.items():
        index, offset = plan.slots[key]
        request = plan.requests[index]
        assert request.table == table
        assert request.address + offset == address
        assert offset + count <= request.count
    assert all(r.count <= limit for r in plan.requests)
    # no two requests of a table could have been one: they are apart or together too long
    for a, b in zip(plan.requests, plan.requests[1:], strict=False):
        if a.table == b.table:
            assert b.address > a.end or max(a.end, b.end) - a.address > limit
