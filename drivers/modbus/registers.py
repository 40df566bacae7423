"""Pure Modbus register semantics: encodings, function codes and the read planner. No I/O.

Registers are 16-bit words. Bytes inside a word are always big-endian (Modbus says so); 32-bit values span two
words whose order is the model's ``word_order``: ``big`` = high word first (ABCD), ``little`` = low word first
(CDAB). Coils and discrete inputs hold one bit each and use the ``bool`` encoding.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar, get_args

__all__ = [
    "BIT_TABLES",
    "ENCODINGS",
    "EXCEPTION_MEANINGS",
    "EXCEPTION_NAMES",
    "Encoding",
    "MAX_READ",
    "ReadPlan",
    "ReadRequest",
    "TABLES",
    "Table",
    "WordOrder",
    "decode",
    "encode",
    "exception_name",
    "exception_reason",
    "length",
    "plan_reads",
    "read_function_code",
    "value_range",
]

Table = Literal["coil", "discrete", "holding", "input"]
Encoding = Literal["bool", "uint16", "int16", "uint32", "int32", "float32"]
WordOrder = Literal["big", "little"]

TABLES: tuple[Table, ...] = get_args(Table)
ENCODINGS: tuple[Encoding, ...] = get_args(Encoding)
BIT_TABLES: frozenset[Table] = frozenset({"coil", "discrete"})
# Order of the planned requests: measurement registers first, then status bits.
_PLAN_ORDER: tuple[Table, ...] = ("input", "holding", "discrete", "coil")

# encoding -> (number of 16-bit words, struct format of the big-endian bytes)
_FORMATS: dict[Encoding, tuple[int, str]] = {
    "bool": (1, ">H"),
    "uint16": (1, ">H"),
    "int16": (1, ">h"),
    "uint32": (2, ">I"),
    "int32": (2, ">i"),
    "float32": (2, ">f"),
}

_READ_FUNCTION: dict[Table, int] = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}

# Largest quantity one read request may ask for (Modbus application protocol V1.1b3, 6.1-6.4).
MAX_READ: dict[Table, int] = {"coil": 2000, "discrete": 2000, "holding": 125, "input": 125}

EXCEPTION_NAMES: dict[int, str] = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}


# What each exception means when a meter sends it (Modbus application protocol V1.1b3, 7): the part of a reason
# after the name.
EXCEPTION_MEANINGS: dict[int, str] = {
    1: "function not supported by this meter",
    2: "register not on this meter",
    3: "value not accepted by this meter",
    4: "the meter failed while doing it",
    5: "accepted, still being processed: the command may yet take effect",
    6: "the meter is busy, try again later",
    8: "the meter's memory check failed",
    10: "the gateway has no path to this unit id",
    11: "no answer from the unit behind the gateway",
}


def exception_name(code: int) -> str:
    """Words for a Modbus exception code."""
    return EXCEPTION_NAMES.get(code, f"exception code {code}")


def exception_reason(code: int) -> str:
    """The named reason of a Modbus exception code: ``"exception 2: illegal data address (register not on this
    meter)"``; codes 10 and up also in hex (``"exception 11 (0x0B): ..."``), as the specification writes them."""
    number = f"exception {code}" if code < 10 else f"exception {code} (0x{code:02X})"
    name = EXCEPTION_NAMES.get(code)
    if name is None:
        return f"{number}: unknown exception code"
    return f"{number}: {name} ({EXCEPTION_MEANINGS[code]})"


def length(encoding: Encoding) -> int:
    """Number of 16-bit registers (or bits, for ``bool``) one value occupies."""
    return _FORMATS[encoding][0]


def read_function_code(table: Table) -> int:
    """The Modbus function code that reads ``table`` (1, 2, 3 or 4)."""
    return _READ_FUNCTION[table]


def value_range(encoding: Encoding) -> tuple[float, float]:
    """Smallest and largest raw value the encoding can hold."""
    return {
        "bool": (0, 1),
        "uint16": (0, 0xFFFF),
        "int16": (-0x8000, 0x7FFF),
        "uint32": (0, 0xFFFF_FFFF),
        "int32": (-0x8000_0000, 0x7FFF_FFFF),
        "float32": (-3.4028234663852886e38, 3.4028234663852886e38),
    }[encoding]


def decode(words: Sequence[int], encoding: Encoding, word_order: WordOrder = "big") -> int | float:
    """Raw value of one quantity from its registers (for ``bool``: one bit given as 0/1 or a bool)."""
    count, fmt = _FORMATS[encoding]
    if len(words) != count:
        raise ValueError(f"{encoding} takes {count} register(s), got {len(words)}")
    if encoding == "bool":
        return int(bool(words[0]))
    for word in words:
        if not 0 <= word <= 0xFFFF:
            raise ValueError(f"register value {word} is not a 16-bit word")
    ordered = list(words) if word_order == "big" else list(reversed(words))
    value: int | float = struct.unpack(fmt, b"".join(w.to_bytes(2, "big") for w in ordered))[0]
    return value


def encode(value: int | float, encoding: Encoding, word_order: WordOrder = "big") -> list[int]:
    """Registers holding ``value``; integer encodings need an int in range, float32 a finite-or-not float."""
    count, fmt = _FORMATS[encoding]
    if encoding == "bool":
        if value not in (0, 1):
            raise ValueError(f"bool takes 0 or 1, got {value!r}")
        return [int(value)]
    if encoding != "float32":
        if isinstance(value, float):
            if not value.is_integer():
                raise ValueError(f"{encoding} needs an integer, got {value!r}")
            value = int(value)
        low, high = value_range(encoding)
        if not low <= value <= high:
            raise ValueError(f"{value} does not fit {encoding}")
    elif math.isfinite(value) and abs(value) > value_range("float32")[1]:
        raise ValueError(f"{value} does not fit float32")
    raw = struct.pack(fmt, value)
    words = [int.from_bytes(raw[i : i + 2], "big") for i in range(0, 2 * count, 2)]
    return words if word_order == "big" else list(reversed(words))


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """One read transaction: ``count`` registers (or bits) of ``table`` from ``address``."""

    table: Table
    address: int
    count: int

    @property
    def function_code(self) -> int:
        return read_function_code(self.table)

    @property
    def end(self) -> int:
        return self.address + self.count


K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True, slots=True)
class ReadPlan(Generic[K]):
    """Read requests and, per item, where its registers are: ``(request index, offset in the reply)``."""

    requests: tuple[ReadRequest, ...]
    slots: Mapping[K, tuple[int, int]]

    def take(self, key: K, replies: Sequence[Sequence[int]], count: int) -> Sequence[int]:
        """The ``count`` registers of ``key`` out of the replies to ``requests`` (same order)."""
        index, offset = self.slots[key]
        return replies[index][offset : offset + count]


def plan_reads(
    items: Mapping[K, tuple[Table, int, int]], *, max_registers: int = 125, max_bits: int = 2000
) -> ReadPlan[K]:
    """Merge items ``key -> (table, address, count)`` into as few read requests as the limits allow.

    Only adjacent or overlapping items of the same table are merged: a gap may be an address the meter
    refuses (exception 2), so it is never read across. Greedy left-to-right merging is optimal here.
    """
    by_table: dict[Table, list[tuple[int, int, K]]] = {}
    for key, (table, address, count) in items.items():
        limit = min(max_bits if table in BIT_TABLES else max_registers, MAX_READ[table])
        if count < 1 or count > limit:
            raise ValueError(f"{key!r}: {count} items cannot be read in one request (limit {limit})")
        by_table.setdefault(table, []).append((address, count, key))
    requests: list[ReadRequest] = []
    slots: dict[K, tuple[int, int]] = {}
    for table in _PLAN_ORDER:
        limit = min(max_bits if table in BIT_TABLES else max_registers, MAX_READ[table])
        start = end = -1
        members: list[tuple[int, K]] = []
        for address, count, key in sorted(by_table.get(table, []), key=lambda item: (item[0], item[1])):
            if members and address <= end and max(end, address + count) - start <= limit:
                end = max(end, address + count)
            else:
                if members:
                    _close(requests, slots, table, start, end, members)
                start, end, members = address, address + count, []
            members.append((address, key))
        if members:
            _close(requests, slots, table, start, end, members)
    return ReadPlan(requests=tuple(requests), slots=slots)


def _close(
    requests: list[ReadRequest],
    slots: dict[K, tuple[int, int]],
    table: Table,
    start: int,
    end: int,
    members: Iterable[tuple[int, K]],
) -> None:
    index = len(requests)
    requests.append(ReadRequest(table, start, end - start))
    for address, key in members:
        slots[key] = (index, address - start)
