"""Hypothesis properties of the DL/T 645 codec: round trips, and arbitrary bytes raise only codec errors."""

from __future__ import annotations

import datetime as dt

from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.dlt645.address import address_from_wire, address_to_wire
from drivers.dlt645.bcd import bcd_decode, bcd_encode, decode_datetime, encode_datetime
from drivers.dlt645.codec import MAX_DATA_LEN, Frame, FrameReader, decode_frame, encode_frame
from drivers.dlt645.errors import Dlt645CodecError
from drivers.dlt645.messages import RemoteControlRequest, parse_remote_control_request, remote_control_request

addresses = st.binary(min_size=6, max_size=6)
frames = st.builds(
    Frame,
    address=addresses,
    control=st.integers(0, 255),
    data=st.binary(max_size=MAX_DATA_LEN),
)


@given(frames, st.integers(0, 8))
def test_encode_decode_round_trip(frame: Frame, preamble: int) -> None:
    assert decode_frame(encode_frame(frame.address, frame.control, frame.data, preamble=preamble)) == frame


@given(
    st.lists(frames, max_size=5), st.lists(st.binary(max_size=30), min_size=6, max_size=6), st.integers(1, 17)
)
def test_reader_finds_frames_between_clean_gaps(frames_: list[Frame], gaps: list[bytes], chunk: int) -> None:
    """Frames separated by FE runs come out in order, whatever the chunking."""
    stream = b"".join(b"\xfe" * len(gap) + f.encode() for f, gap in zip(frames_, gaps, strict=False))
    reader = FrameReader()
    got: list[Frame] = []
    for i in range(0, len(stream), chunk):
        got += reader.feed(stream[i : i + chunk])
    assert got == frames_ and reader.pending == 0


@given(st.binary(max_size=40).map(lambda b: b.replace(b"\x68", b"")), frames)
def test_reader_finds_a_frame_after_noise(noise: bytes, frame: Frame) -> None:
    """Noise in front never hides a good frame (false starts in front: test_dlt645_codec)."""
    reader = FrameReader()
    got = reader.feed(noise + frame.encode())
    got += reader.feed(b"\xfe" * 250)  # flush any false start waiting for its length
    assert frame in got


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_codec_errors(raw: bytes) -> None:
    try:
        decode_frame(raw)
    except Dlt645CodecError:
        pass
    reader = FrameReader()
    for frame in reader.feed(raw):  # never raises
        assert decode_frame(frame.encode()) == frame


@given(st.binary(max_size=300).map(lambda b: b"\x68" + b[:6] + b"\x68" + b[7:]))
def test_frame_like_bytes_raise_only_codec_errors(raw: bytes) -> None:
    try:
        decode_frame(raw)
    except Dlt645CodecError:
        pass
    FrameReader().feed(raw)


@given(st.integers(1, 8), st.data())
def test_bcd_round_trip(nbytes: int, data: st.DataObject) -> None:
    unsigned = data.draw(st.integers(0, 10 ** (2 * nbytes) - 1))
    assert bcd_decode(bcd_encode(unsigned, nbytes)) == unsigned
    bound = 8 * 10 ** (2 * nbytes - 1)  # D7 of the last byte is the sign
    signed = data.draw(st.integers(-bound + 1, bound - 1))
    assert bcd_decode(bcd_encode(signed, nbytes, signed=True), signed=True) == signed


@given(st.binary(min_size=1, max_size=8), st.booleans())
def test_bcd_decode_raises_only_codec_errors(raw: bytes, signed: bool) -> None:
    try:
        value = bcd_decode(raw, signed=signed)
    except Dlt645CodecError:
        return
    negative_zero = signed and value == 0 and raw[-1] & 0x80
    if not negative_zero:
        assert bcd_encode(value, len(raw), signed=signed) == raw


@given(st.text(alphabet="0123456789", min_size=12, max_size=12))
def test_address_round_trip(text: str) -> None:
    assert address_from_wire(address_to_wire(text)) == text


@given(st.datetimes(min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2099, 12, 31, 23, 59, 59)))
def test_datetime_round_trip(moment: dt.datetime) -> None:
    assert decode_datetime(encode_datetime(moment)) == moment.replace(microsecond=0)


@given(st.binary(min_size=6, max_size=6))
def test_datetime_decode_raises_only_codec_errors(raw: bytes) -> None:
    try:
        decode_datetime(raw)
    except Dlt645CodecError:
        pass


@given(
    st.integers(0, 255),
    st.text(alphabet="0123456789", min_size=6, max_size=6),
    st.text(alphabet="0123456789", min_size=8, max_size=8),
    st.sampled_from([0x1A, 0x1B, 0x1C, 0x2A, 0x2B, 0x3A, 0x3B]),
    st.datetimes(min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2099, 12, 31)),
)
def test_remote_control_round_trip(
    level: int, password: str, operator: str, command: int, until: dt.datetime
) -> None:
    request = RemoteControlRequest(level, password, operator, command, until.replace(microsecond=0))
    frame = remote_control_request(b"\x01\x00\x00\x00\x00\x00", request)
    assert parse_remote_control_request(decode_frame(frame.encode(preamble=4))) == request
