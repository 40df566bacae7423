"""Modbus meters: register maps as data (config/meters/*.yaml), pure decoding, and TCP / RTU drivers.

registers.py    encodings, function codes, the read planner (pure)
quantities.py   quantity names, units, conversion to Wh / W / V / A / fen (pure)
models.py       the meter model file format and its loader
values.py       replies -> canonical values -> Reading (pure)
exceptions.py   pymodbus / serial / timeout errors -> drivers.errors
(drivers.priority_lock: the bus lock that lets relay commands, ``urgent()``, go ahead of polls)
driver.py       ModbusTcpDriver, ModbusRtuDriver (pymodbus clients)
"""

from drivers.modbus.driver import ModbusMeter, ModbusRtuDriver, ModbusTcpDriver
from drivers.modbus.exceptions import map_modbus_exceptions
from drivers.modbus.models import MeterModel, ModelFileError, load_model, load_models
from drivers.priority_lock import PriorityLock, urgent

__all__ = [
    "MeterModel",
    "ModbusMeter",
    "ModbusRtuDriver",
    "ModbusTcpDriver",
    "ModelFileError",
    "PriorityLock",
    "load_model",
    "load_models",
    "map_modbus_exceptions",
    "urgent",
]
