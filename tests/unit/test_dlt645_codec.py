"""Golden frames of reference/protocols.md §1.12 and the codec's edge cases (no I/O)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from drivers.dlt645.address import (
    ALL_WILDCARD,
    BROADCAST,
    address_from_wire,
    address_matches,
    address_to_wire,
    normalize_address,
    wildcard_address,
)
from drivers.dlt645.bcd import CURRENT, ENERGY, MONEY, POWER, VOLTAGE, bcd_decode, bcd_encode, decode_datetime
from drivers.dlt645.codec import Frame, FrameReader, decode_frame, encode_frame, extract_frames
from drivers.dlt645.constants import DI, ErrorBits, Function, RemoteCommand, describe_error
from drivers.dlt645.errors import AddressError, BcdError, ChecksumError, Dlt645CodecError
from drivers.dlt645.messages import (
    RemoteControlRequest,
    broadcast_time_request,
    parse_broadcast_time,
    parse_read_reply,
    parse_read_request,
    parse_remote_control_request,
    read_address_request,
    read_request,
    remote_control_request,
)
from drivers.errors import FrameError

ADDR = address_to_wire("123456789012")


def h(text: str) -> bytes:
    return bytes.fromhex(text)


# --- Example 1: forward active total energy -------------------------------------------------------------


def test_read_energy_request_golden() -> None:
    frame = read_request(ADDR, DI.ENERGY_FORWARD_TOTAL)
    assert frame.encode(preamble=4) == h("FE FE FE FE 68 12 90 78 56 34 12 68 11 04 33 33 34 33 68 16")


def test_read_energy_reply_golden() -> None:
    raw = h("68 12 90 78 56 34 12 68 91 08 33 33 34 33 9A 78 56 34 88 16")
    frame = decode_frame(raw)
    assert frame.is_reply and not frame.is_abnormal and frame.function == Function.READ
    assert frame.address == ADDR and frame.address_text == "123456789012"
    value = parse_read_reply(frame, DI.ENERGY_FORWARD_TOTAL)
    assert value == h("67 45 23 01")
    assert ENERGY.decode(value) == Decimal("12345.67")
    assert ENERGY.decode_scaled(value) * 10 == 12_345_670  # Wh
    # and the simulator side builds the same bytes
    request = read_request(ADDR, DI.ENERGY_FORWARD_TOTAL)
    assert request.reply(request.data + ENERGY.encode("12345.67")).encode() == raw


def test_error_reply_golden() -> None:
    raw = h("68 12 90 78 56 34 12 68 D1 01 35 8D 16")
    frame = decode_frame(raw)
    assert frame.is_abnormal and frame.error_code == ErrorBits.NO_DATA
    assert describe_error(frame.error_code) == "no requested data"
    assert read_request(ADDR, DI.ENERGY_FORWARD_TOTAL).error_reply(ErrorBits.NO_DATA).encode() == raw


# --- Example 2: status word 3 ---------------------------------------------------------------------------


def test_status_word_3_golden() -> None:
    request = read_request(ADDR, DI.STATUS_WORD_3)
    assert request.encode(preamble=4) == h("FE FE FE FE 68 12 90 78 56 34 12 68 11 04 36 38 33 37 73 16")
    reply = decode_frame(h("68 12 90 78 56 34 12 68 91 06 36 38 33 37 83 33 AB 16"))
    word = int.from_bytes(parse_read_reply(reply, DI.STATUS_WORD_3), "little")
    assert word == 0x0050


# --- Example 3: remote control 1CH ----------------------------------------------------------------------

TRIP_PREFIX = "FE FE FE FE 68 12 90 78 56 34 12 68 1C 10 35 89 67 45 AB 89 67 45"


@pytest.mark.parametrize(
    ("command", "tail"),
    [
        (RemoteCommand.TRIP, "4D 33 8C 8C 56 64 45 59 EC 16"),
        (RemoteCommand.CLOSE_ALLOWED, "4E 33 8C 8C 56 64 45 59 ED 16"),
        (RemoteCommand.DIRECT_CLOSE, "4F 33 8C 8C 56 64 45 59 EE 16"),
        (RemoteCommand.PROTECT, "6D 33 8C 8C 56 64 45 59 0C 16"),
    ],
)
def test_remote_control_golden(command: RemoteCommand, tail: str) -> None:
    request = RemoteControlRequest(
        password_level=0x02,
        password="123456",
        operator_code="12345678",
        command=command,
        valid_until=dt.datetime(2026, 12, 31, 23, 59, 59),
    )
    frame = remote_control_request(ADDR, request)
    assert frame.data == h("02 56 34 12 78 56 34 12") + bytes([command, 0]) + h("59 59 23 31 12 26")
    assert frame.encode(preamble=4) == h(f"{TRIP_PREFIX} {tail}")
    assert parse_remote_control_request(decode_frame(frame.encode(preamble=4))) == request


def test_remote_control_replies_golden() -> None:
    ok = decode_frame(h("68 12 90 78 56 34 12 68 9C 00 22 16"))
    assert ok.is_reply and not ok.is_abnormal and ok.function == Function.REMOTE_CONTROL
    refused = decode_frame(h("68 12 90 78 56 34 12 68 DC 01 37 9A 16"))
    assert refused.error_code == ErrorBits.PASSWORD
    assert describe_error(refused.error_code) == "wrong password / not authorised"


def test_request_repr_hides_password() -> None:
    text = repr(RemoteControlRequest(password_level=2, password="987654"))
    assert "987654" not in text and "hidden" in text


# --- other frames ---------------------------------------------------------------------------------------


def test_read_address_golden() -> None:
    assert read_address_request().encode(preamble=4) == h("FE FE FE FE 68 AA AA AA AA AA AA 68 13 00 DF 16")
    reply = decode_frame(h("68 12 90 78 56 34 12 68 93 06 45 C3 AB 89 67 45 07 16"))
    assert reply.function == Function.READ_ADDRESS and reply.data == ADDR


def test_broadcast_time_golden() -> None:
    frame = broadcast_time_request(dt.datetime(2026, 1, 2, 3, 4, 5))
    assert frame.encode(preamble=4) == h("FE FE FE FE 68 99 99 99 99 99 99 68 08 06 38 37 36 35 34 59 DB 16")
    assert frame.address == BROADCAST


@pytest.mark.parametrize(
    ("raw", "moment"),
    [
        ("68 99 99 99 99 99 99 68 08 06 84 55 43 38 39 4A 4B 16", dt.datetime(2017, 6, 5, 10, 22, 51)),  # V5
        ("68 11 11 11 11 11 11 68 08 06 58 73 43 38 39 4A 0D 16", dt.datetime(2017, 6, 5, 10, 40, 25)),  # V6
    ],
)
def test_real_time_sync_vectors(raw: str, moment: dt.datetime) -> None:
    assert parse_broadcast_time(decode_frame(h(raw))) == moment


@pytest.mark.parametrize(
    ("raw", "fmt", "di", "value"),
    [
        ("68 12 90 78 56 34 12 68 91 06 33 34 34 35 34 55 76 16", VOLTAGE, DI.VOLTAGE_A, Decimal("220.1")),
        (
            "68 12 90 78 56 34 12 68 91 07 33 34 35 35 67 45 B3 4E 16",
            CURRENT,
            DI.CURRENT_A,
            Decimal("-1.234"),
        ),
        ("68 12 90 78 56 34 12 68 91 07 33 33 36 35 33 83 35 DA 16", POWER, DI.POWER_TOTAL, Decimal("2.5")),
        ("68 12 90 78 56 34 12 68 91 08 33 35 C3 33 53 83 33 33 B9 16", MONEY, DI.BALANCE, Decimal("50.20")),
    ],
)
def test_value_replies_golden(raw: str, fmt, di: int, value: Decimal) -> None:  # type: ignore[no-untyped-def]
    frame = decode_frame(h(raw))
    payload = parse_read_reply(frame, di)
    assert fmt.decode(payload) == value
    assert frame.encode() == h(raw)
    assert read_request(ADDR, di).reply(frame.data).encode() == h(raw)
    assert fmt.encode(value) == payload


def test_real_meter_vectors() -> None:
    v1 = decode_frame(h("FE FE FE FE 68 08 02 02 41 22 00 68 11 04 35 37 33 37 2A 16"))
    assert parse_read_request(v1) == DI.METER_NUMBER and v1.address_text == "002241020208"
    v2 = decode_frame(h("68 08 02 02 41 22 00 68 91 0A 35 37 33 37 3B 35 35 74 55 33 51 16"))
    assert address_from_wire(parse_read_reply(v2, DI.METER_NUMBER)) == "002241020208"
    v3 = decode_frame(h("68 08 02 02 41 22 00 68 93 06 3B 35 35 74 55 33 79 16"))
    assert v3.data == v3.address


# --- BCD ------------------------------------------------------------------------------------------------


def test_bcd_rules() -> None:
    assert bcd_encode(1234567, 4) == h("67 45 23 01")
    assert bcd_encode(-1234, 3, signed=True) == h("34 12 80")
    assert bcd_decode(h("34 12 80"), signed=True) == -1234
    assert bcd_decode(h("34 12 80")) == 801234  # unsigned reads D7 as a digit
    with pytest.raises(BcdError):
        bcd_decode(h("3A"))
    with pytest.raises(BcdError):
        bcd_decode(b"")
    with pytest.raises(ValueError):
        bcd_encode(800000, 3, signed=True)  # D7 is the sign: at most 79 99 99
    with pytest.raises(ValueError):
        bcd_encode(-1, 2)
    with pytest.raises(ValueError):
        ENERGY.encode("1.234")  # no silent rounding
    assert issubclass(BcdError, FrameError)


def test_datetime_rejects_impossible_dates() -> None:
    with pytest.raises(BcdError):
        decode_datetime(h("00 00 00 31 02 26"))
    with pytest.raises(BcdError):
        decode_datetime(h("00 00"))


# --- addresses ------------------------------------------------------------------------------------------


def test_addresses() -> None:
    assert address_to_wire("123456789012") == h("12 90 78 56 34 12")
    assert address_to_wire("1") == h("01 00 00 00 00 00")
    assert normalize_address("9012") == "000000009012"
    assert wildcard_address("9012") == "AAAAAAAA9012"
    assert address_to_wire("AAAAAAAA9012") == h("12 90 AA AA AA AA")
    assert address_to_wire("aaaaaaaaaaaa") == ALL_WILDCARD
    for bad in ("", "1234567890123", "12345678901A", "12AA56789012", "ABCDEF"):
        with pytest.raises(AddressError):
            address_to_wire(bad)


def test_address_matching() -> None:
    own = address_to_wire("123456789012")
    assert address_matches(own, own)
    assert address_matches(own, address_to_wire("AAAAAAAA9012"))
    assert address_matches(own, ALL_WILDCARD)
    assert not address_matches(own, address_to_wire("AAAAAAAA9013"))
    assert not address_matches(own, address_to_wire("AAAAAAAA9012"), allow_wildcard=False)
    assert not address_matches(own, BROADCAST)
    assert not address_matches(own, h("AA 90 78 56 34 12"))  # AA only in the high bytes


# --- decoding errors and the stream reader --------------------------------------------------------------


def test_decode_frame_errors() -> None:
    good = h("68 12 90 78 56 34 12 68 9C 00 22 16")
    with pytest.raises(ChecksumError):
        decode_frame(good[:-2] + b"\x23\x16")
    for bad in (good[:-1], good + b"\x00", b"\x16" + good[1:], good[:-1] + b"\x17", b""):
        with pytest.raises(Dlt645CodecError):
            decode_frame(bad)
    assert decode_frame(b"\xfe" * 9 + good) == decode_frame(good)


def test_encode_frame_limits() -> None:
    with pytest.raises(ValueError):
        encode_frame(b"\x00" * 5, 0x11)
    with pytest.raises(ValueError):
        encode_frame(ADDR, 0x11, b"\x00" * 201)


def test_reader_resyncs_on_noise() -> None:
    f1 = read_request(ADDR, DI.ENERGY_FORWARD_TOTAL).reply(h("00 00 01 00 67 45 23 01"))
    f2 = Frame(ADDR, 0x9C)
    corrupt = bytearray(f1.encode())
    corrupt[-2] ^= 0xFF
    stream = (
        b"\x00\x68\x16junk" + b"\xfe" * 7 + f1.encode() + bytes(corrupt) + b"\x68\x68" + f2.encode(preamble=2)
    )
    reader = FrameReader()
    got: list[Frame] = []
    for i in range(0, len(stream), 3):  # split across arbitrary chunk boundaries
        got += reader.feed(stream[i : i + 3])
    assert got == [f1, f2]
    assert reader.pending == 0 and reader.discarded > 0


def test_reader_drops_stalled_false_start() -> None:
    # 68 .. .. .. .. .. .. 68 .. C8: a false start claiming 200 data bytes, followed by a real frame.
    false_start = h("68 01 02 03 04 05 06 68 11 C8")
    good = Frame(ADDR, 0x9C)
    buf = bytearray(false_start + good.encode())
    frames, dropped = extract_frames(buf)
    assert frames == [good] and dropped == len(false_start) and not buf


def test_reader_keeps_incomplete_frame() -> None:
    raw = Frame(ADDR, 0x91, h("00 00 01 00 67 45 23 01")).encode()
    reader = FrameReader()
    assert reader.feed(raw[:-1]) == []
    assert reader.pending == len(raw) - 1
    assert reader.feed(raw[-1:]) == [decode_frame(raw)]


def test_frame_describe_has_no_data() -> None:
    frame = remote_control_request(ADDR, RemoteControlRequest(password_level=2, password="654321"))
    text = frame.describe()
    assert "REMOTE_CONTROL request" in text and "21" not in text.split("addr=")[0]
    assert "ERR=04H" in frame.error_reply(ErrorBits.PASSWORD).describe()
