"""One simulated meter served as one Modbus unit, for any meter model file.

The model's registers become pymodbus ``SimData`` blocks; a ``SimDevice`` action callback refills the
registers a request touches from the meter just before pymodbus answers, and turns a write of the relay
command into ``meter.set_relay``. Anything else written is refused like a read-only register.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pymodbus.constants import ExcCodes
from pymodbus.simulator import DataType, SimData, SimDevice

from drivers.modbus.models import MeterModel
from drivers.modbus.quantities import from_canonical
from drivers.modbus.registers import BIT_TABLES, TABLES, Table, encode
from simulators.meter import SimulatedMeter

__all__ = ["MeterUnit", "ModelLayout", "quantity_value"]

_FC_TABLE: dict[int, Table] = {
    1: "coil",
    5: "coil",
    15: "coil",
    2: "discrete",
    3: "holding",
    6: "holding",
    16: "holding",
    4: "input",
}


def _phase(value: Callable[[SimulatedMeter], float]) -> Callable[[SimulatedMeter], float]:
    return lambda m: value(m) / 3  # a balanced three-phase load


def _rate(index: int) -> Callable[[SimulatedMeter], int]:
    return lambda m: m.energy_wh_by_rate[index]


_VALUES: dict[str, Callable[[SimulatedMeter], int | float]] = {
    "energy_import_total": lambda m: m.energy_wh,
    **{f"energy_import_rate{n}": _rate(n - 1) for n in range(1, 5)},
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


@dataclass(frozen=True, slots=True)
class _Slot:
    """Registers (or one bit) of a table, and how to fill them from a meter."""

    table: Table
    address: int
    length: int
    fill: Callable[[SimulatedMeter], list[int]]
    writable: bool = False


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
        self.slots: dict[Table, list[_Slot]] = {t: [s for s in slots if s.table == t] for t in TABLES}

    def _quantity_slot(self, name: str) -> _Slot:
        spec = self.model.registers[name]

        def fill(meter: SimulatedMeter) -> list[int]:
            raw = from_canonical(
                name, quantity_value(meter, name), scale=spec.scale, unit=spec.unit, encoding=spec.encoding
            )
            return encode(raw, spec.encoding, spec.word_order)

        return _Slot(spec.table, spec.address, spec.length, fill)

    def sim_data(
        self, meter: SimulatedMeter
    ) -> tuple[list[SimData], list[SimData], list[SimData], list[SimData]]:
        """pymodbus blocks (coils, discrete inputs, holding, input) with the meter's values now."""
        blocks: list[list[SimData]] = []
        for table in ("coil", "discrete", "holding", "input"):
            data: dict[int, SimData] = {}
            writable = {slot.address for slot in self.slots[table] if slot.writable}
            for slot in self.slots[table]:  # a later slot at the same address wins, as in _refresh
                if table in BIT_TABLES:
                    data[slot.address] = SimData(
                        slot.address, values=[bool(slot.fill(meter)[0])], datatype=DataType.BITS
                    )
                else:
                    data[slot.address] = SimData(
                        slot.address,
                        values=slot.fill(meter),
                        datatype=DataType.REGISTERS,
                        readonly=slot.address not in writable,
                    )
            if not data:  # pymodbus needs a block per table: an unused one lies out of the way
                data[0] = (
                    SimData(0xFFF0, values=[False], datatype=DataType.BITS)
                    if table in BIT_TABLES
                    else SimData(0, datatype=DataType.INVALID)
                )
            blocks.append(list(data.values()))
        return blocks[0], blocks[1], blocks[2], blocks[3]


class MeterUnit:
    """One Modbus unit id serving one simulated meter."""

    def __init__(self, unit_id: int, meter: SimulatedMeter, layout: ModelLayout) -> None:
        self.unit_id = unit_id
        self.meter = meter
        self.layout = layout

    def sim_device(self) -> SimDevice:
        """A fresh pymodbus device for a server start (pymodbus keeps its own copy of the registers)."""
        return SimDevice(id=self.unit_id, simdata=self.layout.sim_data(self.meter), action=self.action)

    async def action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        """pymodbus calls this before it answers; ``registers`` is the whole table, modified in place."""
        table = _FC_TABLE.get(function_code)
        if table is None:
            return ExcCodes.ILLEGAL_FUNCTION
        if set_values is not None:
            return self._write(function_code, table, address, [int(v) for v in set_values])
        self._refresh(table, start_address, address, count, registers)
        return None

    def _refresh(self, table: Table, start: int, address: int, count: int, registers: list[int]) -> None:
        if table in BIT_TABLES:  # addresses are bits; registers hold 16 bits each, bit 0 first
            low, high = (address // 16) * 16, (address // 16 + count) * 16
            for slot in self.layout.slots[table]:
                if low <= slot.address < high:
                    index, bit = slot.address // 16 - start, slot.address % 16
                    value = slot.fill(self.meter)[0]
                    registers[index] = (registers[index] & ~(1 << bit)) | (int(bool(value)) << bit)
            return
        for slot in self.layout.slots[table]:
            if slot.address < address + count and address < slot.address + slot.length:
                offset = slot.address - start
                registers[offset : offset + slot.length] = slot.fill(self.meter)

    def _write(self, function_code: int, table: Table, address: int, values: list[int]) -> ExcCodes | None:
        relay = self.layout.model.relay
        if relay is None or (table, address, len(values)) != (relay.command.table, relay.command.address, 1):
            return ExcCodes.ILLEGAL_ADDRESS
        if function_code != relay.command.write_function:
            return ExcCodes.ILLEGAL_FUNCTION  # e.g. the Hiking DDS238-2 refuses FC06 and needs FC16
        if values[0] == relay.command.close:
            self.meter.set_relay(True)
        elif values[0] == relay.command.open:
            self.meter.set_relay(False)
        else:
            return ExcCodes.ILLEGAL_VALUE
        return None
