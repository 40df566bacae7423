"""The one place where pymodbus (and pyserial, asyncio) failures become ``drivers.errors``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar

import serial
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.pdu import ModbusPDU

from drivers.errors import ConnectError, DriverError, ExceptionReply, FrameError, MeterTimeout
from drivers.modbus.registers import exception_name

__all__ = ["check_reply", "map_modbus_exceptions"]

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
    except ConnectionException as exc:
        raise ConnectError(f"{what}: connection failed: {exc.string}", meter_id=meter_id) from exc
    except ModbusIOException as exc:
        # pymodbus says "No response received" after (retries + 1) timeouts; any other I/O error is a
        # reply it could not match to the request (wrong device id or transaction id).
        if "No response" in exc.string:
            raise MeterTimeout(f"{what}: no answer", meter_id=meter_id) from exc
        raise FrameError(f"{what}: unusable answer: {exc.string}", meter_id=meter_id) from exc
    except ModbusException as exc:
        raise FrameError(f"{what}: {exc.string}", meter_id=meter_id) from exc
    except TimeoutError as exc:  # asyncio.TimeoutError is TimeoutError since Python 3.11
        raise MeterTimeout(f"{what}: no answer in time", meter_id=meter_id) from exc
    except (serial.SerialException, OSError) as exc:
        raise ConnectError(f"{what}: {exc}", meter_id=meter_id) from exc


def check_reply(reply: P | None, *, meter_id: str | None = None, what: str = "request") -> P:
    """Return a normal reply; raise ``ExceptionReply`` (with the code) for a Modbus exception reply."""
    if reply is None:
        raise MeterTimeout(f"{what}: no answer", meter_id=meter_id)
    if reply.isError():
        code = int(getattr(reply, "exception_code", 0))
        raise ExceptionReply(
            f"{what}: Modbus exception {code} ({exception_name(code)})", code=code, meter_id=meter_id
        )
    return reply
