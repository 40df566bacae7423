"""Request builders and reply parsers for the functions the gateway uses (pure, over ``Frame``).

Both the driver (master side) and the simulator (slave side) use these, so each layout lives in one place.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from drivers.dlt645.address import ALL_WILDCARD, BROADCAST
from drivers.dlt645.bcd import decode_datetime, encode_datetime
from drivers.dlt645.codec import Frame
from drivers.dlt645.constants import Function, RemoteCommand
from drivers.dlt645.errors import Dlt645CodecError

__all__ = [
    "RemoteControlRequest",
    "broadcast_time_request",
    "di_bytes",
    "encode_secret",
    "parse_broadcast_time",
    "parse_read_reply",
    "parse_read_request",
    "parse_remote_control_request",
    "read_address_request",
    "read_request",
    "remote_control_request",
]


def di_bytes(di: int) -> bytes:
    """DI3 DI2 DI1 DI0 → wire order DI0 first."""
    return di.to_bytes(4, "little")


def encode_secret(text: str, nbytes: int, what: str) -> bytes:
    """A password (3 bytes) or operator code (4 bytes) written as hex digits, sent low byte first.

    ``"123456"`` → ``56 34 12``. The low-first order is [UNVERIFIED] for every vendor (protocols.md §7 item 8).
    """
    if len(text) != 2 * nbytes:
        raise ValueError(f"{what} must be {2 * nbytes} digits")
    try:
        return bytes.fromhex(text)[::-1]
    except ValueError:
        raise ValueError(f"{what} must be hex digits") from None


def read_request(address: bytes, di: int) -> Frame:
    return Frame(address, Function.READ, di_bytes(di))


def parse_read_request(frame: Frame) -> int:
    """The DI of a read request (4-byte form; the optional N / time suffix is ignored)."""
    if len(frame.data) < 4:
        raise Dlt645CodecError(f"read request with {len(frame.data)} data bytes")
    return int.from_bytes(frame.data[:4], "little")


def parse_read_reply(reply: Frame, di: int) -> bytes:
    """The value bytes of a normal read reply, checking that it echoes the requested DI."""
    if len(reply.data) < 4:
        raise Dlt645CodecError(f"read reply with {len(reply.data)} data bytes")
    got = int.from_bytes(reply.data[:4], "little")
    if got != di:
        raise Dlt645CodecError(f"reply is for DI {got:08X}, asked {di:08X}")
    return reply.data[4:]


def read_address_request() -> Frame:
    return Frame(ALL_WILDCARD, Function.READ_ADDRESS)


def broadcast_time_request(local_time: dt.datetime) -> Frame:
    """08H to 99…99 with ``ss mm hh DD MM YY`` of the meters' local wall time."""
    return Frame(BROADCAST, Function.BROADCAST_TIME, encode_datetime(local_time))


def parse_broadcast_time(frame: Frame) -> dt.datetime:
    return decode_datetime(frame.data)


@dataclass(frozen=True, slots=True)
class RemoteControlRequest:
    """The plaintext 1CH data field. ``valid_until`` is naive, in the meter's local time."""

    password_level: int
    password: str = "000000"
    operator_code: str = "00000000"
    command: int = RemoteCommand.TRIP
    valid_until: dt.datetime = dt.datetime(2099, 12, 31, 23, 59, 59)

    def __repr__(self) -> str:  # the password never reaches a log line
        return (
            f"RemoteControlRequest(password_level={self.password_level:02X}H, password=<hidden>, "
            f"operator_code={self.operator_code!r}, command={self.command:02X}H, valid_until={self.valid_until})"
        )


def remote_control_request(address: bytes, request: RemoteControlRequest) -> Frame:
    """``PA P0 P1 P2 C0..C3 N1 N2 N3..N8`` (L = 10H), §1.9."""
    if not 0 <= request.password_level <= 0xFF:
        raise ValueError("password level is one byte")
    data = (
        bytes([request.password_level])
        + encode_secret(request.password, 3, "password")
        + encode_secret(request.operator_code, 4, "operator code")
        + bytes([request.command & 0xFF, 0x00])
        + encode_datetime(request.valid_until)
    )
    return Frame(address, Function.REMOTE_CONTROL, data)


def parse_remote_control_request(frame: Frame) -> RemoteControlRequest:
    data = frame.data
    if len(data) != 16:
        raise Dlt645CodecError(f"plaintext 1CH has 16 data bytes, got {len(data)}")
    return RemoteControlRequest(
        password_level=data[0],
        password=data[1:4][::-1].hex().upper(),
        operator_code=data[4:8][::-1].hex().upper(),
        command=data[8],
        valid_until=decode_datetime(data[10:16]),
    )
