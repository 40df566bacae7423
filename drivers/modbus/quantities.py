"""Quantity names a meter model may map, their units, and the conversion to the gateway's canonical units.

Convention (docs/meter-models.md): a register's raw value times its ``scale`` is a value in its ``unit``;
the driver converts that once, here, to the canonical unit of the quantity's kind:

    energy   Wh (int)      units Wh, kWh, MWh
    power    W (int)       units W, kW
    voltage  V (float)     units V, kV
    current  A (float)     units A, mA
    frequency Hz (float)   unit Hz
    ratio    1 (float)     units 1, %
    money    fen (int)     units fen, yuan

Integer results round half up (energy registers are integers already; only sub-Wh scales round).
"""

from __future__ import annotations

import math
from decimal import ROUND_FLOOR, ROUND_HALF_UP, Decimal
from typing import Literal

from drivers.modbus.registers import Encoding, value_range

__all__ = [
    "CANONICAL_UNITS",
    "Kind",
    "QUANTITIES",
    "RATE_QUANTITIES",
    "from_canonical",
    "to_canonical",
    "unit_factor",
    "units_of",
]

Kind = Literal["energy", "power", "voltage", "current", "frequency", "ratio", "money"]

RATE_QUANTITIES: tuple[str, ...] = tuple(f"energy_import_rate{n}" for n in range(1, 5))

QUANTITIES: dict[str, Kind] = {
    "energy_import_total": "energy",
    **dict.fromkeys(RATE_QUANTITIES, "energy"),
    "energy_export_total": "energy",
    "power": "power",
    "power_l1": "power",
    "power_l2": "power",
    "power_l3": "power",
    "voltage": "voltage",
    "voltage_l1": "voltage",
    "voltage_l2": "voltage",
    "voltage_l3": "voltage",
    "current": "current",
    "current_l1": "current",
    "current_l2": "current",
    "current_l3": "current",
    "frequency": "frequency",
    "power_factor": "ratio",
    "balance": "money",
}

CANONICAL_UNITS: dict[Kind, str] = {
    "energy": "Wh",
    "power": "W",
    "voltage": "V",
    "current": "A",
    "frequency": "Hz",
    "ratio": "1",
    "money": "fen",
}

_UNITS: dict[Kind, dict[str, Decimal]] = {
    "energy": {"Wh": Decimal(1), "kWh": Decimal(1000), "MWh": Decimal(1_000_000)},
    "power": {"W": Decimal(1), "kW": Decimal(1000)},
    "voltage": {"V": Decimal(1), "kV": Decimal(1000)},
    "current": {"A": Decimal(1), "mA": Decimal("0.001")},
    "frequency": {"Hz": Decimal(1)},
    "ratio": {"1": Decimal(1), "%": Decimal("0.01")},
    "money": {"fen": Decimal(1), "yuan": Decimal(100)},
}

_INTEGER_KINDS: frozenset[Kind] = frozenset({"energy", "power", "money"})


def units_of(kind: Kind) -> tuple[str, ...]:
    """Units a register of this kind may declare."""
    return tuple(_UNITS[kind])


def unit_factor(quantity: str, unit: str) -> Decimal:
    """How many canonical units one ``unit`` is; KeyError names what is allowed."""
    kind = QUANTITIES[quantity]
    try:
        return _UNITS[kind][unit]
    except KeyError:
        raise KeyError(f"unit {unit!r} is not a {kind} unit (use one of {', '.join(_UNITS[kind])})") from None


def to_canonical(quantity: str, raw: int | float, *, scale: Decimal, unit: str) -> int | float:
    """Raw register value -> canonical value (int Wh / W / fen, float V / A / Hz / ratio)."""
    if isinstance(raw, float) and not math.isfinite(raw):
        raise ValueError(f"{quantity}: register holds {raw}")
    exact = Decimal(repr(raw)) * scale * unit_factor(quantity, unit)
    if QUANTITIES[quantity] in _INTEGER_KINDS:
        return int(exact.to_integral_value(rounding=ROUND_HALF_UP))
    return float(exact)


def from_canonical(
    quantity: str, value: int | float, *, scale: Decimal, unit: str, encoding: Encoding
) -> int | float:
    """Canonical value -> raw register value for ``encoding`` (used by simulators).

    Energy rounds down (a meter never shows energy not yet consumed) and wraps like a real counter;
    other integers round half up and saturate at the encoding's limits.
    """
    exact = Decimal(repr(value)) / (scale * unit_factor(quantity, unit))
    if encoding == "float32":
        return float(exact)
    low, high = value_range(encoding)
    if QUANTITIES[quantity] == "energy":
        raw = int(exact.to_integral_value(rounding=ROUND_FLOOR))
        if low == 0:
            return raw % (int(high) + 1)
    else:
        raw = int(exact.to_integral_value(rounding=ROUND_HALF_UP))
    return max(int(low), min(int(high), raw))
