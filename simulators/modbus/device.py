"""One simulated meter as one Modbus unit, for any meter model file.

A ``ModelLayout`` turns the model's registers into slots (an address range of one table and how to fill it from
the meter), computed once per model. A ``MeterUnit`` answers reads by filling the slots a request touches from
the meter at that moment (the tamper register from its tamper flags), and turns a write of the relay command
into ``meter.set_relay``; anything else written is refused like a read-only register. Addresses the model does
not map answer exception 2, as on a real meter.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

from drivers.modbus.models import MeterModel
from drivers.modbus.quantities import QUANTITIES, from_canonical, unit_factor
from drivers.modbus.registers import TABLES, Encoding, Table, encode, value_range
from simulators.meter import SimulatedMeter

__all__ = [
    "ILLEGAL_ADDRESS",
    "ILLEGAL_FUNCTION",
    "ILLEGAL_VALUE",
    "MeterUnit",
    "ModelLayout",
    "quantity_value",
]

ILLEGAL_FUNCTION, ILLEGAL_ADDRESS, ILLEGAL_VALUE = 1, 2, 3

_WRITE_TABLE: dict[int, Table] = {5: "coil", 15: "coil", 6: "holding", 16: "holding"}


def _phase(value: Callable[[SimulatedMeter], float]) -> Callable[[SimulatedMeter], float]:
    return lambda m: value(m) / 3  # a balanced three-phase load


def _rate(rate: int) -> Callable[[SimulatedMeter], int]:
    return lambda m: m.energy_wh_rate(rate)


_VALUES: dict[str, Callable[[SimulatedMeter], int | float]] = {
    "energy_import_total": lambda m: m.energy_wh,
    **{f"energy_import_rate{n}": _rate(n) for n in range(1, 5)},
    "energy_export_total": lambda m: 0,
    "power": lambda m: m.power_w,
    **{f"power_l{n}": _phase(lambda m: m.power_w) for n in range(1, 4)},
    "voltage": lambda m: m.voltage_v,
    **{f"voltage_l{n}": (lambda m: m.voltage_v) for n in range(1, 4)},
    "current": lambda m: m.current_a,
    **{f"current_l{n}": _phase(lambda m: m.current_a) for n in range(1, 4)},
    "frequency": lambda m: m.frequency_hz,
    "power_factor": lambda m: 1.0,
    "balance": lambda m: m.balance_fen,
}


def quantity_value(meter: SimulatedMeter, quantity: str) -> int | float:
    """The meter's current value of ``quantity`` in canonical units (Wh, W, V, A, Hz, 1, fen)."""
    return _VALUES[quantity](meter)


def _encoder(encoding: Encoding, word_order: str) -> Callable[[int | float], list[int]]:
    """``registers.encode`` for one register, without its checks (the converter keeps values in range)."""
    if encoding in ("uint16", "bool"):
        return lambda raw: [int(raw) & 0xFFFF]
    if encoding == "int16":
        return lambda raw: [int(raw) & 0xFFFF]
    if encoding in ("uint32", "int32"):
        if word_order == "big":
            return lambda raw: [(int(raw) >> 16) & 0xFFFF, int(raw) & 0xFFFF]
        return lambda raw: [int(raw) & 0xFFFF, (int(raw) >> 16) & 0xFFFF]
    return lambda raw: encode(raw, encoding, word_order)  # type: ignore[arg-type]


def _raw_converter(quantity: str, scale: Decimal, unit: str, encoding: Encoding) -> Callable[[int | float], int | float]:
    """``from_canonical`` for one register, precomputed: the common cases avoid Decimal (a server's hot path)."""
    factor = scale * unit_factor(quantity, unit)
    energy = QUANTITIES[quantity] == "energy"
    if encoding == "float32":
        as_float = float(factor)
        return lambda value: value / as_float
    low, high = (int(x) for x in value_range(encoding))
    if factor == factor.to_integral_value():  # Wh, 0.01 kWh (= 10 Wh), W, fen ...: integer arithmetic is exact
        step = int(factor)

        def integral(value: float) -> int:
            if energy:
                raw = math.floor(value) // step
                return raw % (high + 1) if low == 0 else max(low, min(high, raw))
            raw = math.floor(value / step + 0.5) if step != 1 else math.floor(value + 0.5)
            return max(low, min(high, raw))

        return integral
    if not energy:  # 0.1 V, 0.01 A...: round half up in floats (Decimal only matters for energy)
        as_float = float(factor)

        def scaled(value: float) -> int:
            return max(low, min(high, math.floor(value / as_float + 0.5)))

        return scaled
    return lambda value: from_canonical(quantity, value, scale=scale, unit=unit, encoding=encoding)


@dataclass(frozen=True, slots=True)
class _Slot:
    """Registers (or one bit) of a table, and how to fill them from a meter."""

    table: Table
    address: int
    length: int
    fill: Callable[[SimulatedMeter], list[int]]
    writable: bool = False


# (slot, offset in the reply, offset in the slot, how many)
_Piece = tuple[_Slot, int, int, int]


class ModelLayout:
    """The register layout of a model, computed once and shared by every unit of that model."""

    def __init__(self, model: MeterModel) -> None:
        self.model = model
        slots: list[_Slot] = [self._quantity_slot(name) for name in model.registers]
        if model.relay is not None:
            command, state = model.relay.command, model.relay.state
            slots.append(
                _Slot(
                    command.table,
                    command.address,
                    1,
                    writable=True,
                    fill=lambda m: [command.close if m.relay_commanded_closed else command.open],
                )
            )
            # after the command: where both share one register, it shows the actual state
            slots.append(
                _Slot(
                    state.table,
                    state.address,
                    1,
                    fill=lambda m: [state.closed if m.relay_closed else state.open],
                )
            )
        if model.tamper is not None:
            tamper = model.tamper
            slots.append(_Slot(tamper.table, tamper.address, 1, fill=lambda m: [tamper.encode(m.tamper_flags)]))
        self.slots: dict[Table, list[_Slot]] = {t: [s for s in slots if s.table == t] for t in TABLES}
        # every mapped address -> (slot, offset in the slot); a later slot at the same address wins
        self._cells: dict[Table, dict[int, tuple[_Slot, int]]] = {t: {} for t in TABLES}
        for slot in slots:
            for offset in range(slot.length):
                self._cells[slot.table][slot.address + offset] = (slot, offset)
        self._plans: dict[tuple[Table, int, int], tuple[_Piece, ...] | None] = {}

    def _quantity_slot(self, name: str) -> _Slot:
        spec = self.model.registers[name]
        value = _VALUES[name]
        convert = _raw_converter(name, spec.scale, spec.unit, spec.encoding)
        pack = _encoder(spec.encoding, spec.word_order)

        def fill(meter: SimulatedMeter) -> list[int]:
            return pack(convert(value(meter)))

        return _Slot(spec.table, spec.address, spec.length, fill)

    def plan(self, table: Table, address: int, count: int) -> tuple[_Piece, ...] | None:
        """How to answer a read: the slots it covers, or None when an address in the range is not mapped."""
        key = (table, address, count)
        try:
            return self._plans[key]
        except KeyError:
            pass
        cells = self._cells[table]
        pieces: list[_Piece] = []
        for position in range(count):
            cell = cells.get(address + position)
            if cell is None:
                pieces = []
                break
            slot, offset = cell
            if pieces and pieces[-1][0] is slot and pieces[-1][2] + pieces[-1][3] == offset:
                last = pieces[-1]
                pieces[-1] = (slot, last[1], last[2], last[3] + 1)
            else:
                pieces.append((slot, position, offset, 1))
        result = tuple(pieces) if pieces else None
        if len(self._plans) < 4096:  # a master sends few distinct requests; a fuzzer must not grow this
            self._plans[key] = result
        return result

    def command_slot(self) -> tuple[Table, int] | None:
        relay = self.model.relay
        return None if relay is None else (relay.command.table, relay.command.address)


class MeterUnit:
    """One Modbus unit id serving one simulated meter.

    Args:
        unit_id: the Modbus unit id, 1..247.
        meter: the simulated meter.
        layout: its model's register layout.
        index: the meter's index in its fleet (fault plans name meters by it).
        name: the meter's identity for people and the control interface (a fleet uses ``PORT/UNIT``).
    """

    def __init__(
        self, unit_id: int, meter: SimulatedMeter, layout: ModelLayout, *, index: int = 0, name: str | None = None
    ) -> None:
        if not 1 <= unit_id <= 247:
            raise ValueError(f"unit id {unit_id} is not within 1..247")
        self.unit_id = unit_id
        self.meter = meter
        self.layout = layout
        self.index = index
        self.name = name if name is not None else str(unit_id)

    def relay_asked(self, function_code: int, address: int, values: list[int]) -> str | None:
        """What a write asks of the relay: ``trip``, ``close`` or ``invalid``; None when it is not a relay write
        (another table or address than the model's relay command)."""
        relay = self.layout.model.relay
        if relay is None or (_WRITE_TABLE.get(function_code), address) != (relay.command.table, relay.command.address):
            return None
        if len(values) != 1:
            return "invalid"
        return {relay.command.open: "trip", relay.command.close: "close"}.get(values[0], "invalid")

    def read(self, table: Table, address: int, count: int) -> list[int] | int:
        """Values of ``count`` registers (bits: 0/1 each) from ``address``, or a Modbus exception code."""
        plan = self.layout.plan(table, address, count)
        if plan is None:
            return ILLEGAL_ADDRESS
        meter = self.meter
        meter.freeze()
        try:
            if len(plan) == 1 and plan[0][3] == count and plan[0][2] == 0 and plan[0][0].length == count:
                return plan[0][0].fill(meter)
            values = [0] * count
            for slot, at, offset, n in plan:
                values[at : at + n] = slot.fill(meter)[offset : offset + n]
            return values
        finally:
            meter.thaw()

    def write(self, function_code: int, address: int, values: list[int], *, stuck: bool = False) -> int | None:
        """Apply a write (FC05/06/15/16; values are 0/1 for coils); returns a Modbus exception code or None.

        ``stuck``: a relay command is acknowledged but the contact does not move (a fault).
        """
        table = _WRITE_TABLE.get(function_code)
        if table is None:
            return ILLEGAL_FUNCTION
        relay = self.layout.model.relay
        if relay is None or (table, address, len(values)) != (relay.command.table, relay.command.address, 1):
            return ILLEGAL_ADDRESS
        if function_code != relay.command.write_function:
            return ILLEGAL_FUNCTION  # e.g. the Hiking DDS238-2 refuses FC06 and needs FC16
        if values[0] == relay.command.close:
            closed = True
        elif values[0] == relay.command.open:
            closed = False
        else:
            return ILLEGAL_VALUE
        if not stuck:
            self.meter.set_relay(closed)
        return None
