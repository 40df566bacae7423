"""The one place where pymodbus (and pyserial, asyncio) failures become ``drivers.errors``.

A Modbus exception reply (from pymodbus on RTU, or the project's MBAP client on TCP: both give ``isError()`` and
``exception_code``) becomes ``ExceptionReply`` with ``code`` and one named reason
(``drivers.modbus.registers.exception_reason``); the driver turns it into ``CommandRefused`` for relay writes.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar

import serial
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.pdu import ModbusPDU

from drivers.errors import ConnectError, DriverError, ExceptionReply, FrameError, MeterTimeout
from drivers.modbus.registers import exception_reason

__all__ = ["check_reply", "map_exception", "map_modbus_exceptions"]

P = TypeVar("P", bound=ModbusPDU)


@contextmanager
def map_modbus_exceptions(*, meter_id: str | None = None, what: str = "request") -> Iterator[None]:
    """Turn library exceptions raised in the block into the most specific ``DriverError`` (``from`` it).

    ``DriverError`` passes through unchanged (e.g. an ``ExceptionReply`` from ``check_reply``).
    """
    try:
        yield
    except DriverError:
        raise
    except Exception as exc:
        mapped = map_exception(exc, meter_id=meter_id, what=what)
        if mapped is None:
            raise
        raise mapped from exc


def map_exception(exc: BaseException, *, meter_id: str | None = None, what: str = "request") -> DriverError | None:
    """The ``DriverError`` a library exception means (None for one that is not a bus or protocol failure)."""
    if isinstance(exc, DriverError):
        return exc
    if isinstance(exc, ConnectionException):
        return ConnectError(f"{what}: connection failed: {exc.string}", meter_id=meter_id)
    if isinstance(exc, ModbusIOException):
        # pymodbus says "No response received" after (retries + 1) timeouts; any other I/O error is a
        # reply it could not match to the request (wrong device id or transaction id).
        if "No response" in exc.string:
            return MeterTimeout(f"{what}: no answer", meter_id=meter_id)
        return FrameError(f"{what}: unusable answer: {exc.string}", meter_id=meter_id)
    if isinstance(exc, ModbusException):
        return FrameError(f"{what}: {exc.string}", meter_id=meter_id)
    if isinstance(exc, TimeoutError):  # asyncio.TimeoutError is TimeoutError since Python 3.11
        return MeterTimeout(f"{what}: no answer in time", meter_id=meter_id)
    if isinstance(exc, serial.SerialException | OSError):
        return ConnectError(f"{what}: {exc}", meter_id=meter_id)
    if isinstance(exc, struct.error):  # a reply too short to decode
        return FrameError(f"{what}: malformed answer: {exc}", meter_id=meter_id)
    return None


def check_reply(reply: P | None, *, meter_id: str | None = None, what: str = "request") -> P:
    """Return a normal reply; raise ``ExceptionReply`` (code and named reason) for a Modbus exception reply."""
    if reply is None:
        raise MeterTimeout(f"{what}: no answer", meter_id=meter_id)
    if reply.isError():
        code = int(getattr(reply, "exception_code", 0))
        reason = exception_reason(code)
        raise ExceptionReply(f"{what}: Modbus {reason}", code=code, reasons=(reason,), meter_id=meter_id)
    return reply
