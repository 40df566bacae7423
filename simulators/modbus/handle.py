"""A Modbus unit as the control interface sees it (``simulators.handles``): named ``PORT/UNIT`` or ``rtu/UNIT``."""

from __future__ import annotations

from collections.abc import Iterable

from simulators.handles import MeterHandle
from simulators.modbus.device import MeterUnit
from simulators.modbus.fleet import ModbusFleet, ModbusSerialFleet

__all__ = ["ModbusHandle", "modbus_handles"]


class ModbusHandle(MeterHandle):
    """A Modbus unit (``simulators.modbus.device.MeterUnit``).

    Args:
        unit: the unit (its ``index``, ``name`` ``PORT/UNIT`` and ``meter``).
    """

    protocol = "modbus"

    def __init__(self, unit: MeterUnit) -> None:
        super().__init__(unit.index, unit.name, unit.meter)


def modbus_handles(fleets: Iterable[ModbusFleet | ModbusSerialFleet]) -> list[MeterHandle]:
    """Every unit of these fleets, in fleet-index order.

    Args:
        fleets: ``ModbusFleet`` / ``ModbusSerialFleet`` objects.
    """
    units = [unit for fleet in fleets for unit in fleet.units.values()]
    return [ModbusHandle(unit) for unit in sorted(units, key=lambda u: u.index)]
