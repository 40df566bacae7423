"""Modbus meter simulators: any meter model file served by pymodbus, fleets of seeded meters.

device.py   one simulated meter as one Modbus unit (live registers, relay command)
fleet.py    ModbusFleet (TCP or RTU over TCP), ModbusSerialFleet (serial / pty), serve_modbus
"""

from simulators.modbus.device import MeterUnit, ModelLayout, quantity_value
from simulators.modbus.fleet import (
    DEFAULT_MODEL_PATH,
    MAX_UNITS,
    ModbusFleet,
    ModbusSerialFleet,
    serve_modbus,
)

__all__ = [
    "DEFAULT_MODEL_PATH",
    "MAX_UNITS",
    "MeterUnit",
    "ModbusFleet",
    "ModbusSerialFleet",
    "ModelLayout",
    "quantity_value",
    "serve_modbus",
]
