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

Refusals have one shape. ``CommandRefused`` (and ``ExceptionReply``, for reads) carry:

    code      the raw code the meter sent: the DL/T 645 ERR byte, or the Modbus exception code.
              ``CommandRefused.code`` is None when the driver refused the command itself (it expired unsent).
    reasons   a tuple of short named reasons, in the protocol's order: one per set ERR bit
              (``drivers.dlt645.constants.error_reasons``; "meter in protect state (保电)" when status word 3
              explains an "other error" trip refusal), or one per Modbus exception code
              (``drivers.modbus.registers.exception_reason``, e.g.
              "exception 2: illegal data address (register not on this meter)").
    reason    one readable line: the reasons joined with "; ". This is what operators read
              (the gateway writes ``f"meter refused: {error.reason}"``).

``str(error)`` is the longer technical message (what was sent, the raw code, the status word read).
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "REASON_SEPARATOR",
    "CommandRefused",
    "ConnectError",
    "DriverError",
    "ExceptionReply",
    "FrameError",
    "MeterTimeout",
    "ProtocolError",
    "TransportError",
    "UnsupportedOperation",
    "join_reasons",
]

REASON_SEPARATOR = "; "


def join_reasons(reasons: Iterable[str]) -> str:
    """The one-line form of named reasons: ``"other error; wrong password / not authorised"``."""
    return REASON_SEPARATOR.join(reasons)


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
    """The meter answered with a protocol error code (Modbus exception code, DL/T 645 ERR byte).

    ``code`` is the raw code; ``reasons`` its named reasons (empty when the raiser gave none) and ``reason``
    them on one line (then empty too).
    """

    def __init__(
        self, message: str, *, code: int, reasons: Iterable[str] = (), meter_id: str | None = None
    ) -> None:
        super().__init__(message, meter_id=meter_id)
        self.code = code
        self.reasons: tuple[str, ...] = tuple(reasons)
        self.reason = join_reasons(self.reasons)


class CommandRefused(DriverError):
    """The meter refused a relay command, and said why.

    Args:
        message: the technical message (``str(error)``).
        reasons: the named reasons, in the protocol's order (see the module docstring).
        reason: the readable line; by default the reasons joined. Given alone (the older form), it is also the
            only reason.
        code: the raw code (ERR byte, Modbus exception code); None when the driver refused the command itself.
        meter_id: the meter.

    At least one of ``reasons`` and ``reason`` is required: a refusal always says why.
    """

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        reasons: Iterable[str] = (),
        code: int | None = None,
        meter_id: str | None = None,
    ) -> None:
        super().__init__(message, meter_id=meter_id)
        named = tuple(reasons)
        if not named:
            if not reason:
                raise TypeError("CommandRefused needs reasons= or reason=")
            named = (reason,)
        self.reasons: tuple[str, ...] = named
        self.reason: str = reason if reason else join_reasons(named)
        self.code = code


class UnsupportedOperation(DriverError):
    """The meter (model) cannot do what was asked, e.g. switch a relay it does not have."""
