"""One tree of driver errors. Library exceptions are mapped to these at the driver edge.

    DriverError                      anything a meter driver raises
    ├── TransportError               the bus itself failed
    │   ├── MeterTimeout             no (complete) answer in time
    │   └── ConnectError             the port or endpoint could not be opened / was lost
    ├── ProtocolError                an answer arrived but could not be used
    │   ├── FrameError               bad framing, checksum or CRC, garbage
    │   └── ExceptionReply           the meter answered with an error (Modbus exception, DL/T 645 abnormal reply)
    ├── CommandRefused               the meter refused a relay command (it said why)
    └── UnsupportedOperation         the meter model cannot do this (e.g. no relay)
"""

from __future__ import annotations

__all__ = [
    "CommandRefused",
    "ConnectError",
    "DriverError",
    "ExceptionReply",
    "FrameError",
    "MeterTimeout",
    "ProtocolError",
    "TransportError",
    "UnsupportedOperation",
]


class DriverError(Exception):
    """Base of every error a meter driver raises."""

    def __init__(self, message: str, *, meter_id: str | None = None) -> None:
        super().__init__(message)
        self.meter_id = meter_id

    def __str__(self) -> str:
        base = super().__str__()
        return f"[{self.meter_id}] {base}" if self.meter_id else base


class TransportError(DriverError):
    """The bus failed: timeout, refused or lost connection."""


class MeterTimeout(TransportError):
    """The meter did not answer (completely) within the timeout."""


class ConnectError(TransportError):
    """The serial port or TCP endpoint could not be opened, or was lost."""


class ProtocolError(DriverError):
    """An answer arrived but was not usable."""


class FrameError(ProtocolError):
    """Framing, checksum/CRC or length error; garbage on the line."""


class ExceptionReply(ProtocolError):
    """The meter answered with a protocol error code (Modbus exception code, DL/T 645 ERR byte)."""

    def __init__(self, message: str, *, code: int, meter_id: str | None = None) -> None:
        super().__init__(message, meter_id=meter_id)
        self.code = code


class CommandRefused(DriverError):
    """The meter refused a relay command; ``reason`` is the meter's own reason in words."""

    def __init__(self, message: str, *, reason: str, code: int | None = None, meter_id: str | None = None) -> None:
        super().__init__(message, meter_id=meter_id)
        self.reason = reason
        self.code = code


class UnsupportedOperation(DriverError):
    """The meter (model) cannot do what was asked, e.g. switch a relay it does not have."""
