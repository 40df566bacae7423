"""Pure: replies to a model's read plan -> canonical quantity values -> ``drivers.base.Reading``."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal

from drivers.base import Reading, RelayState
from drivers.modbus.models import RELAY_STATE, TAMPER, MeterModel, RegisterSpec, RelayStateSpec
from drivers.modbus.quantities import QUANTITIES, RATE_QUANTITIES, to_canonical, unit_factor
from drivers.modbus.registers import decode

__all__ = [
    "decode_values",
    "reading_from_replies",
    "reading_from_values",
    "relay_state",
    "relay_state_from_replies",
    "tamper_from_replies",
]

# Quantities with their own Reading field; the rest go to Reading.extra under their own name.
_FIELDS = frozenset({"energy_import_total", *RATE_QUANTITIES, "power", "voltage", "current", "balance"})


def decode_values(model: MeterModel, replies: Sequence[Sequence[int]]) -> dict[str, int | float]:
    """Canonical value of every quantity of ``model`` from the replies to ``model.read_plan.requests``."""
    values: dict[str, int | float] = {}
    for name, index, offset, convert in _compiled(model):
        reply = replies[index]
        values[name] = convert(reply, offset)
    return values


# Per model: (quantity, request index, offset, words -> canonical value). Keyed by id() and checked by identity:
# a test may build two models with the same id and different registers.
_COMPILED: dict[int, tuple[MeterModel, list[tuple[str, int, int, Callable[[Sequence[int], int], int | float]]]]] = {}


def _compiled(model: MeterModel) -> list[tuple[str, int, int, Callable[[Sequence[int], int], int | float]]]:
    entry = _COMPILED.get(id(model))
    if entry is not None and entry[0] is model:
        return entry[1]
    plan = model.read_plan
    compiled = []
    for name, spec in model.registers.items():
        index, offset = plan.slots[name]
        compiled.append((name, index, offset, _converter(name, spec)))
    if len(_COMPILED) > 1000:
        _COMPILED.clear()
    _COMPILED[id(model)] = (model, compiled)
    return compiled


def _converter(name: str, spec: RegisterSpec) -> Callable[[Sequence[int], int], int | float]:
    """words -> canonical value; exact fast paths where plain int/float arithmetic gives the Decimal result."""
    encoding, word_order = spec.encoding, spec.word_order
    factor = spec.scale * unit_factor(name, spec.unit)
    integer_kind = QUANTITIES[name] in ("energy", "power", "money")
    raw_of = _raw_reader(encoding, word_order)
    if raw_of is not None:  # an integer encoding
        if factor == factor.to_integral_value():
            step = int(factor)
            if integer_kind:
                return lambda words, at: raw_of(words, at) * step  # exact
            return lambda words, at: float(raw_of(words, at) * step)  # exact below 2 ** 53
        inverse = Decimal(1) / factor
        if not integer_kind and inverse == inverse.to_integral_value():
            divisor = int(inverse)  # 0.1 V = 1/10: a correctly rounded division gives float(exact)
            return lambda words, at: raw_of(words, at) / divisor
    elif factor == 1 and not integer_kind:  # float32 in the canonical unit: repr round-trips
        return lambda words, at: _checked(decode(words[at : at + 2], "float32", word_order), name)
    length = spec.length
    scale, unit = spec.scale, spec.unit

    def exact(words: Sequence[int], at: int) -> int | float:
        raw = decode(words[at : at + length], encoding, word_order)
        return to_canonical(name, raw, scale=scale, unit=unit)

    return exact


def _checked(value: int | float, name: str) -> int | float:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{name}: register holds {value}")
    return value


def _raw_reader(encoding: str, word_order: str) -> Callable[[Sequence[int], int], int] | None:
    """Raw integer from the words at an offset, for integer encodings (None for float32)."""
    if encoding == "uint16":
        return lambda words, at: words[at]
    if encoding == "int16":
        return lambda words, at: words[at] - 0x10000 if words[at] & 0x8000 else words[at]
    if encoding in ("uint32", "int32"):
        hi, lo = (0, 1) if word_order == "big" else (1, 0)
        if encoding == "uint32":
            return lambda words, at: (words[at + hi] << 16) | words[at + lo]

        def int32(words: Sequence[int], at: int) -> int:
            value = (words[at + hi] << 16) | words[at + lo]
            return value - 0x1_0000_0000 if value & 0x8000_0000 else value

        return int32
    return None


def reading_from_replies(
    model: MeterModel, meter_id: str, replies: Sequence[Sequence[int]], *, taken_at: dt.datetime
) -> Reading:
    """``reading_from_values(decode_values(...), relay=relay_state_from_replies(...), tamper=tamper_from_replies(...))``
    in one pass, with the
    work per model done once (the poll of every meter runs this)."""
    builder = _BUILDERS.get(id(model))
    if builder is None or builder.model is not model:
        builder = _Builder(model)
        if len(_BUILDERS) > 1000:
            _BUILDERS.clear()
        _BUILDERS[id(model)] = builder
    return builder.build(meter_id, replies, taken_at)


_Part = tuple[int, int, Callable[[Sequence[int], int], int | float]]  # request index, offset, converter


class _Builder:
    """The Reading of one model from its replies: which converter feeds which field."""

    def __init__(self, model: MeterModel) -> None:
        self.model = model
        parts = {name: (index, offset, convert) for name, index, offset, convert in _compiled(model)}
        self.energy = parts.get("energy_import_total")
        self.rates = [parts[name] for name in RATE_QUANTITIES if name in parts]
        self.power = parts.get("power")
        self.voltage = parts.get("voltage", parts.get("voltage_l1"))
        self.current = parts.get("current", parts.get("current_l1"))
        self.balance = parts.get("balance")
        self.extra = [(name, part) for name, part in parts.items() if name not in _FIELDS]
        self.relay: tuple[int, int, int, int] | None = None
        if model.relay is not None:
            index, offset = model.read_plan.slots[RELAY_STATE]
            self.relay = (index, offset, model.relay.state.closed, model.relay.state.open)
        self.tamper: tuple[int, int, tuple[tuple[int, str], ...]] | None = None
        if model.tamper is not None:
            index, offset = model.read_plan.slots[TAMPER]
            self.tamper = (index, offset, model.tamper.masks)

    def build(self, meter_id: str, replies: Sequence[Sequence[int]], taken_at: dt.datetime) -> Reading:
        if self.energy is None:
            raise ValueError(f"model {self.model.model} has no energy register")
        index, offset, convert = self.energy
        energy = int(convert(replies[index], offset))
        rates = tuple([int(c(replies[i], o)) for i, o, c in self.rates]) or None
        power = voltage = current = balance = None
        if (part := self.power) is not None:
            power = int(part[2](replies[part[0]], part[1]))
        if (part := self.voltage) is not None:
            voltage = float(part[2](replies[part[0]], part[1]))
        if (part := self.current) is not None:
            current = float(part[2](replies[part[0]], part[1]))
        if (part := self.balance) is not None:
            balance = int(part[2](replies[part[0]], part[1]))
        extra = {name: c(replies[i], o) for name, (i, o, c) in self.extra}
        if self.tamper is not None:
            index, offset, masks = self.tamper
            word = replies[index][offset]
            extra["tamper"] = tuple([name for mask, name in masks if word & mask])
        relay = None
        if self.relay is not None:
            index, offset, closed, opened = self.relay
            raw = int(replies[index][offset])
            relay = RelayState.CLOSED if raw == closed else RelayState.OPEN if raw == opened else RelayState.UNKNOWN
        return Reading(meter_id, taken_at, energy, rates, power, voltage, current, relay, balance, extra)


_BUILDERS: dict[int, _Builder] = {}


def relay_state(spec: RelayStateSpec, raw: int) -> RelayState:
    """The contact state a state register's raw value means (UNKNOWN for any other value)."""
    if raw == spec.closed:
        return RelayState.CLOSED
    if raw == spec.open:
        return RelayState.OPEN
    return RelayState.UNKNOWN


def relay_state_from_replies(model: MeterModel, replies: Sequence[Sequence[int]]) -> RelayState | None:
    """The relay state out of the replies to ``model.read_plan.requests``, if the model has a relay."""
    if model.relay is None:
        return None
    (raw,) = model.read_plan.take(RELAY_STATE, replies, 1)
    return relay_state(model.relay.state, int(raw))


def tamper_from_replies(model: MeterModel, replies: Sequence[Sequence[int]]) -> tuple[str, ...] | None:
    """The tamper flags out of the replies to ``model.read_plan.requests`` (sorted), if the model has them."""
    if model.tamper is None:
        return None
    (raw,) = model.read_plan.take(TAMPER, replies, 1)
    return model.tamper.decode(int(raw))


def reading_from_values(
    meter_id: str,
    values: Mapping[str, int | float],
    *,
    taken_at: dt.datetime,
    relay: RelayState | None = None,
    tamper: tuple[str, ...] | None = None,
) -> Reading:
    """Build the Reading; ``voltage``/``current`` fall back to phase 1 on three-phase models; ``tamper`` (when
    the model has the register) goes to ``extra["tamper"]``."""
    rates = tuple(int(values[name]) for name in RATE_QUANTITIES if name in values)
    voltage = values.get("voltage", values.get("voltage_l1"))
    current = values.get("current", values.get("current_l1"))
    power = values.get("power")
    balance = values.get("balance")
    return Reading(
        meter_id=meter_id,
        taken_at=taken_at,
        energy_wh=int(values["energy_import_total"]),
        energy_wh_by_rate=rates or None,
        power_w=None if power is None else int(power),
        voltage_v=None if voltage is None else float(voltage),
        current_a=None if current is None else float(current),
        relay=relay,
        meter_balance_fen=None if balance is None else int(balance),
        extra={name: value for name, value in values.items() if name not in _FIELDS}
        | ({} if tamper is None else {"tamper": tamper}),
    )
