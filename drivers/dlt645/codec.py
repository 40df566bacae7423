"""The DL/T 645-2007 frame codec: pure functions over bytes (reference/protocols.md §1.2, §1.4, §1.10).

::

    [FE..FE] 68 A0..A5 68 C L DATA(+33H each) CS 16        CS = sum(68 .. last DATA byte) mod 256

``Frame.data`` always holds the *plain* data (33H already subtracted). Decoding errors are
``Dlt645CodecError`` subclasses, which are ``drivers.errors.FrameError``; nothing else escapes
``decode_frame`` or ``FrameReader.feed`` whatever the input.
"""

from __future__ import annotations

from dataclasses import dataclass

from drivers.dlt645.address import address_from_wire
from drivers.dlt645.constants import Function, describe_error
from drivers.dlt645.errors import ChecksumError, Dlt645CodecError

__all__ = [
    "MAX_DATA_LEN",
    "MIN_FRAME_LEN",
    "PREAMBLE",
    "Frame",
    "FrameReader",
    "checksum",
    "decode_frame",
    "encode_frame",
    "extract_frames",
]

START = 0x68
END = 0x16
WAKE = 0xFE
PREAMBLE = bytes([WAKE] * 4)
MIN_FRAME_LEN = 12
MAX_DATA_LEN = 200  # the standard's read limit; writes are at most 50

DIRECTION_REPLY = 0x80
ABNORMAL = 0x40
FOLLOW_UP = 0x20
FUNCTION_MASK = 0x1F


def checksum(data: bytes | bytearray | memoryview) -> int:
    return sum(data) & 0xFF


def _offset(data: bytes, delta: int) -> bytes:
    return bytes((b + delta) & 0xFF for b in data)


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame. ``address`` is the 6 wire bytes (low first); ``data`` is plain (without the +33H)."""

    address: bytes
    control: int
    data: bytes = b""

    @property
    def function(self) -> int:
        return self.control & FUNCTION_MASK

    @property
    def is_reply(self) -> bool:
        return bool(self.control & DIRECTION_REPLY)

    @property
    def is_abnormal(self) -> bool:
        return self.is_reply and bool(self.control & ABNORMAL)

    @property
    def has_follow_up(self) -> bool:
        return bool(self.control & FOLLOW_UP)

    @property
    def error_code(self) -> int | None:
        """The ERR byte of an abnormal reply, else ``None``."""
        if not self.is_abnormal:
            return None
        return self.data[0] if self.data else 0

    @property
    def address_text(self) -> str:
        return address_from_wire(self.address)

    def reply(self, data: bytes = b"", *, address: bytes | None = None, follow_up: bool = False) -> Frame:
        """The normal reply to this request (C | 80H), from ``address`` (default: the request's address)."""
        control = self.function | DIRECTION_REPLY | (FOLLOW_UP if follow_up else 0)
        return Frame(address or self.address, control, data)

    def error_reply(self, err: int, *, address: bytes | None = None) -> Frame:
        """The abnormal reply to this request (C | C0H) carrying one ERR byte."""
        return Frame(address or self.address, self.function | DIRECTION_REPLY | ABNORMAL, bytes([err & 0xFF]))

    def encode(self, *, preamble: int = 0) -> bytes:
        return encode_frame(self.address, self.control, self.data, preamble=preamble)

    def describe(self) -> str:
        """A short text for logs; never includes the data bytes (1CH data carries a password)."""
        try:
            name = Function(self.function).name
        except ValueError:
            name = f"{self.function:02X}H"
        kind = "reply" if self.is_reply else "request"
        text = f"{name} {kind} C={self.control:02X}H L={len(self.data)} addr={self.address_text}"
        if self.is_abnormal:
            text += f" ERR={self.error_code:02X}H ({describe_error(self.error_code or 0)})"
        return text


def encode_frame(address: bytes, control: int, data: bytes = b"", *, preamble: int = 0) -> bytes:
    """Build the wire bytes. ``preamble`` FE bytes go first (masters send 4); they are not in the checksum."""
    if len(address) != 6:
        raise ValueError(f"an address is 6 wire bytes, got {len(address)}")
    if not 0 <= control <= 0xFF:
        raise ValueError(f"control code {control} is not a byte")
    if len(data) > MAX_DATA_LEN:
        raise ValueError(f"data of {len(data)} bytes exceeds L <= {MAX_DATA_LEN}")
    if preamble < 0:
        raise ValueError("preamble must be >= 0")
    body = bytes([START]) + bytes(address) + bytes([START, control, len(data)]) + _offset(data, 0x33)
    return bytes([WAKE] * preamble) + body + bytes([checksum(body), END])


def decode_frame(raw: bytes) -> Frame:
    """Decode exactly one frame (any number of leading FE allowed, nothing after the 16H)."""
    i = 0
    while i < len(raw) and raw[i] == WAKE:
        i += 1
    body = raw[i:]
    if len(body) < MIN_FRAME_LEN:
        raise Dlt645CodecError(f"frame too short ({len(body)} bytes after the preamble)")
    if body[0] != START or body[7] != START:
        raise Dlt645CodecError("frame does not start with 68H A0..A5 68H")
    length = body[9]
    if length > MAX_DATA_LEN:
        raise Dlt645CodecError(f"L={length} exceeds {MAX_DATA_LEN}")
    if len(body) != MIN_FRAME_LEN + length:
        raise Dlt645CodecError(f"L={length} but {len(body) - MIN_FRAME_LEN} data bytes present")
    if body[-1] != END:
        raise Dlt645CodecError(f"frame ends with {body[-1]:02X}H, not 16H")
    if body[-2] != checksum(body[:-2]):
        raise ChecksumError(f"checksum {body[-2]:02X}H, expected {checksum(body[:-2]):02X}H")
    return Frame(bytes(body[1:7]), body[8], _offset(bytes(body[10:-2]), -0x33))


def _complete_frame_at(buf: bytearray, start: int) -> int | None:
    """Length of a valid complete frame starting at ``buf[start]`` (a 68H), else ``None``."""
    if len(buf) - start < MIN_FRAME_LEN or buf[start + 7] != START or buf[start + 9] > MAX_DATA_LEN:
        return None
    n = MIN_FRAME_LEN + buf[start + 9]
    if len(buf) - start < n:
        return None
    if buf[start + n - 1] != END or buf[start + n - 2] != checksum(buf[start : start + n - 2]):
        return None
    return n


def extract_frames(buf: bytearray) -> tuple[list[Frame], int]:
    """Pop every complete valid frame from ``buf``, resynchronising on noise (§1.10).

    Returns the frames and the number of bytes discarded (FE preambles not counted). An incomplete frame is left
    in ``buf`` unless a complete valid frame follows it, which proves the incomplete one was a false start.
    """
    frames: list[Frame] = []
    dropped = 0
    while True:
        i = buf.find(START)
        if i < 0:
            dropped += sum(1 for b in buf if b != WAKE)
            buf.clear()
            return frames, dropped
        if i:
            dropped += sum(1 for b in buf[:i] if b != WAKE)
            del buf[:i]
        if len(buf) >= 10 and (buf[7] != START or buf[9] > MAX_DATA_LEN):
            del buf[0]
            dropped += 1
            continue
        n = _complete_frame_at(buf, 0)
        if n is not None:
            frames.append(decode_frame(bytes(buf[:n])))
            del buf[:n]
            continue
        if len(buf) >= 10 and len(buf) >= MIN_FRAME_LEN + buf[9]:
            del buf[0]  # complete length but bad CS or end byte: noise
            dropped += 1
            continue
        if _later_frame_exists(buf):
            del buf[0]  # a stalled false start in front of a real frame
            dropped += 1
            continue
        return frames, dropped


def _later_frame_exists(buf: bytearray) -> bool:
    j = buf.find(START, 1)
    while j >= 0:
        if _complete_frame_at(buf, j) is not None:
            return True
        j = buf.find(START, j + 1)
    return False


class FrameReader:
    """Streaming decoder: ``feed`` bytes as they arrive, get back the complete valid frames.

    ``discarded`` counts noise bytes thrown away (FE preambles excluded); ``pending`` is what waits for more data.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self.discarded = 0

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        frames, dropped = extract_frames(self._buf)
        self.discarded += dropped
        return frames

    @property
    def pending(self) -> int:
        return len(self._buf)

    def clear(self) -> None:
        self._buf.clear()
        self.discarded = 0
