"""Modbus meter simulators: any meter model file, fleets of seeded meters, fault injection.

device.py   one simulated meter as one Modbus unit (live registers, relay command)
server.py   a small Modbus server (TCP, RTU over TCP, RTU on a serial port / pty) that can misbehave on purpose
pdu.py      PDU helpers: CRC-16, packing answers, parsing writes
fleet.py    ModbusFleet (TCP or RTU over TCP), ModbusSerialFleet (serial / pty), build_fleets
serve.py    serve_modbus (the CLI command), with the control interface (simulators.control)
"""

from simulators.modbus.device import MeterUnit, ModelLayout, quantity_value
from simulators.modbus.fleet import (
    DEFAULT_MODEL_PATH,
    MAX_UNITS,
    ModbusFleet,
    ModbusSerialFleet,
    build_fleets,
)
from simulators.modbus.serve import serve_modbus
from simulators.modbus.server import ModbusServer

__all__ = [
    "DEFAULT_MODEL_PATH",
    "MAX_UNITS",
    "MeterUnit",
    "ModbusFleet",
    "ModbusSerialFleet",
    "ModbusServer",
    "ModelLayout",
    "build_fleets",
    "quantity_value",
    "serve_modbus",
]
