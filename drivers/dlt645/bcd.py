"""Packed BCD as DL/T 645 sends it: least significant byte first, implied decimals, sign in D7 of the last byte.

Values are passed around as *scaled integers* (12345.67 kWh with 2 decimals is ``1234567``) so nothing is
rounded here; ``DataFormat`` adds the decimals and converts to ``Decimal`` when a caller wants one.
Decoding raises ``BcdError`` (a ``FrameError``); encoding a value that does not fit raises ``ValueError``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal

from drivers.dlt645.errors import BcdError

__all__ = [
    "CURRENT",
    "ENERGY",
    "MONEY",
    "POWER",
    "VOLTAGE",
    "DataFormat",
    "bcd_decode",
    "bcd_encode",
    "decode_datetime",
    "encode_datetime",
]


def bcd_encode(value: int, nbytes: int, *, signed: bool = False) -> bytes:
    """Pack ``value`` into ``nbytes`` of BCD, low byte first. Signed values put the sign in D7 of the last byte."""
    if nbytes < 1:
        raise ValueError("nbytes must be at least 1")
    if value < 0 and not signed:
        raise ValueError(f"negative value {value} for an unsigned BCD field")
    magnitude = abs(value)
    limit = 8 * 10 ** (2 * nbytes - 1) if signed else 10 ** (2 * nbytes)
    if magnitude >= limit:
        raise ValueError(f"{value} does not fit in {nbytes} BCD bytes{' (signed)' if signed else ''}")
    out = bytearray(bytes.fromhex(f"{magnitude:0{2 * nbytes}d}")[::-1])
    if value < 0:
        out[-1] |= 0x80
    return bytes(out)


def bcd_decode(data: bytes, *, signed: bool = False) -> int:
    """Unpack low-byte-first BCD. With ``signed``, D7 of the last byte is the sign and is masked off."""
    if not data:
        raise BcdError("empty BCD field")
    raw = bytearray(data)
    negative = False
    if signed:
        negative = bool(raw[-1] & 0x80)
        raw[-1] &= 0x7F
    value = 0
    for byte in reversed(raw):
        hi, lo = byte >> 4, byte & 0x0F
        if hi > 9 or lo > 9:
            raise BcdError(f"not BCD: {bytes(data).hex(' ')}")
        value = value * 100 + hi * 10 + lo
    return -value if negative else value


@dataclass(frozen=True, slots=True)
class DataFormat:
    """A DL/T 645 numeric format such as XXXXXX.XX: size in bytes, implied decimals, whether D7 is a sign."""

    nbytes: int
    decimals: int
    signed: bool = False

    def decode_scaled(self, data: bytes) -> int:
        """The value in units of the last digit (12345.67 → 1234567)."""
        if len(data) != self.nbytes:
            raise BcdError(f"expected {self.nbytes} BCD bytes, got {len(data)}")
        return bcd_decode(data, signed=self.signed)

    def decode(self, data: bytes) -> Decimal:
        return Decimal(self.decode_scaled(data)).scaleb(-self.decimals)

    def encode_scaled(self, value: int) -> bytes:
        return bcd_encode(value, self.nbytes, signed=self.signed)

    def encode(self, value: Decimal | int | str) -> bytes:
        """Encode a decimal value; more decimals than the format has is a ``ValueError`` (no silent rounding)."""
        scaled = Decimal(value).scaleb(self.decimals)
        if scaled != scaled.to_integral_value():
            raise ValueError(f"{value} has more than {self.decimals} decimals")
        return self.encode_scaled(int(scaled))


ENERGY = DataFormat(4, 2)  # XXXXXX.XX kWh
MONEY = DataFormat(4, 2)  # XXXXXX.XX yuan (00900200 balance, 00900201 overdraft)
VOLTAGE = DataFormat(2, 1)  # XXX.X V
CURRENT = DataFormat(3, 3, signed=True)  # XXX.XXX A
POWER = DataFormat(3, 4, signed=True)  # XX.XXXX kW


def encode_datetime(moment: dt.datetime) -> bytes:
    """``ss mm hh DD MM YY`` (YYMMDDhhmmss low byte first), as 08H and the 1CH validity end time use.

    ``moment`` is taken as the meter's local wall time; convert before calling.
    """
    if not 2000 <= moment.year <= 2099:
        raise ValueError(f"year {moment.year} cannot be sent as YY")
    parts = (moment.second, moment.minute, moment.hour, moment.day, moment.month, moment.year - 2000)
    return b"".join(bcd_encode(p, 1) for p in parts)


def decode_datetime(data: bytes) -> dt.datetime:
    """Inverse of ``encode_datetime``: a naive datetime in the meter's local time."""
    if len(data) != 6:
        raise BcdError(f"a date-time is 6 bytes, got {len(data)}")
    ss, mm, hh, day, month, yy = (bcd_decode(bytes([b])) for b in data)
    try:
        return dt.datetime(2000 + yy, month, day, hh, mm, ss)
    except ValueError as exc:
        raise BcdError(f"not a date-time: {data.hex(' ')} ({exc})") from None
