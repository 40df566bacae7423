"""Why a meter refused, in words: the one shape of ``CommandRefused`` / ``ExceptionReply``, the DL/T 645 ERR bits
(from wire bytes), the status-word explanations, and the Modbus exception codes (pure, no I/O)."""

from __future__ import annotations

import pytest

from drivers.dlt645.codec import decode_frame
from drivers.dlt645.constants import (
    ERROR_REASONS,
    NO_REASON_GIVEN,
    ErrorBits,
    Function,
    RemoteCommand,
    StatusWord3,
    describe_error,
    error_reasons,
)
from drivers.dlt645.refusals import PROTECT_STATE, explain_refusal, status_word_may_explain
from drivers.errors import CommandRefused, DriverError, ExceptionReply, join_reasons
from drivers.modbus.registers import EXCEPTION_MEANINGS, EXCEPTION_NAMES, exception_name, exception_reason

# --- the shape --------------------------------------------------------------------------------------------------


def test_command_refused_carries_code_reasons_and_one_line() -> None:
    refused = CommandRefused("meter refused TRIP", reasons=("a", "b"), code=0x05, meter_id="m1")
    assert (refused.code, refused.reasons, refused.reason) == (0x05, ("a", "b"), "a; b")
    assert refused.meter_id == "m1" and str(refused) == "[m1] meter refused TRIP"
    assert isinstance(refused, DriverError)


def test_command_refused_keeps_the_older_reason_only_form() -> None:
    refused = CommandRefused("expired", reason="expired before sending")  # what the drivers raise when unsent
    assert (refused.code, refused.reasons, refused.reason) == (None, ("expired before sending",), "expired before sending")
    both = CommandRefused("x", reasons=["a", "b"], reason="a and b")
    assert (both.reasons, both.reason) == (("a", "b"), "a and b")  # an explicit line is kept as given


def test_a_refusal_must_say_why() -> None:
    with pytest.raises(TypeError):
        CommandRefused("x")
    with pytest.raises(TypeError):
        CommandRefused("x", reason="", reasons=())


def test_exception_reply_has_the_same_shape() -> None:
    reply = ExceptionReply("read", code=2, reasons=("exception 2: illegal data address",), meter_id="m")
    assert (reply.code, reply.reasons, reply.reason) == (2, ("exception 2: illegal data address",),
                                                          "exception 2: illegal data address")
    bare = ExceptionReply("exception 2", code=2)  # raisers that give no reasons still work
    assert (bare.code, bare.reasons, bare.reason) == (2, (), "")


def test_join_reasons() -> None:
    assert join_reasons(()) == ""
    assert join_reasons(["x"]) == "x"
    assert join_reasons(("x", "y", "z")) == "x; y; z"


# --- DL/T 645 ERR byte, from the wire -----------------------------------------------------------------------------

# Abnormal 1CH replies of meter 123456789012 (DCH, L=01, ERR+33H, CS, 16H) and the reasons of their ERR byte.
ERR_FRAMES = [
    ("68 12 90 78 56 34 12 68 DC 01 33 96 16", 0x00, ("no reason given",)),
    ("68 12 90 78 56 34 12 68 DC 01 34 97 16", 0x01, ("other error",)),
    ("68 12 90 78 56 34 12 68 DC 01 35 98 16", 0x02, ("no requested data",)),
    ("68 12 90 78 56 34 12 68 DC 01 37 9A 16", 0x04, ("wrong password / not authorised",)),
    ("68 12 90 78 56 34 12 68 DC 01 3B 9E 16", 0x08, ("baud rate cannot be changed",)),
    ("68 12 90 78 56 34 12 68 DC 01 43 A6 16", 0x10, ("too many year zones",)),
    ("68 12 90 78 56 34 12 68 DC 01 53 B6 16", 0x20, ("too many day periods",)),
    ("68 12 90 78 56 34 12 68 DC 01 73 D6 16", 0x40, ("too many tariffs",)),
    ("68 12 90 78 56 34 12 68 DC 01 B3 16 16", 0x80, ("reserved (0x80)",)),
    ("68 12 90 78 56 34 12 68 DC 01 38 9B 16", 0x05, ("other error", "wrong password / not authorised")),
    ("68 12 90 78 56 34 12 68 DC 01 74 D7 16", 0x41, ("other error", "too many tariffs")),
    (
        "68 12 90 78 56 34 12 68 DC 01 32 95 16",
        0xFF,
        (
            "other error",
            "no requested data",
            "wrong password / not authorised",
            "baud rate cannot be changed",
            "too many year zones",
            "too many day periods",
            "too many tariffs",
            "reserved (0x80)",
        ),
    ),
]


@pytest.mark.parametrize(("wire", "err", "reasons"), ERR_FRAMES, ids=[f"ERR{e:02X}" for _, e, _ in ERR_FRAMES])
def test_err_byte_from_the_wire_to_named_reasons(wire: str, err: int, reasons: tuple[str, ...]) -> None:
    frame = decode_frame(bytes.fromhex(wire))
    assert frame.is_abnormal and frame.function == Function.REMOTE_CONTROL
    assert frame.error_code == err
    assert error_reasons(err) == reasons
    assert describe_error(err) == "; ".join(reasons)


def test_the_err_table_names_every_bit_once_in_bit_order() -> None:
    assert [int(bit) for bit, _ in ERROR_REASONS] == [1 << i for i in range(8)]
    assert len({text for _, text in ERROR_REASONS} | {NO_REASON_GIVEN}) == 9


@pytest.mark.parametrize("err", range(256))
def test_every_err_byte_gives_one_reason_per_set_bit(err: int) -> None:
    reasons = error_reasons(err)
    if err:
        assert len(reasons) == err.bit_count()
        assert reasons == tuple(text for bit, text in ERROR_REASONS if err & bit)
    else:
        assert reasons == (NO_REASON_GIVEN,)


# --- DL/T 645: what status word 3 explains ------------------------------------------------------------------------

TRIP, CLOSE = RemoteCommand.TRIP, RemoteCommand.DIRECT_CLOSE
PROTECTED = int(StatusWord3.PROTECTED)  # bit 12, 保电
OPEN_AND_COMMANDED = int(StatusWord3.RELAY_OPEN | StatusWord3.RELAY_COMMAND_TRIP)  # bits 4 and 6


@pytest.mark.parametrize(
    ("command", "err", "word", "reasons"),
    [
        (TRIP, 0x01, PROTECTED, (PROTECT_STATE,)),
        (TRIP, 0x01, PROTECTED | OPEN_AND_COMMANDED, (PROTECT_STATE,)),
        (TRIP, 0x01, 0xFFFF, (PROTECT_STATE,)),
        (TRIP, 0x05, PROTECTED, (PROTECT_STATE, "wrong password / not authorised")),
        (TRIP, 0x81, PROTECTED, (PROTECT_STATE, "reserved (0x80)")),
        (TRIP, 0x01, 0x0000, ("other error",)),
        (TRIP, 0x01, OPEN_AND_COMMANDED, ("other error",)),  # already open explains nothing (see refusals.py)
        (TRIP, 0x01, 0xFFFF & ~PROTECTED, ("other error",)),
        (TRIP, 0x01, None, ("other error",)),  # the status read failed
        (TRIP, 0x04, PROTECTED, ("wrong password / not authorised",)),  # no bit 0: nothing to explain
        (TRIP, 0x00, PROTECTED, ("no reason given",)),
        (CLOSE, 0x01, PROTECTED, ("other error",)),  # 保电 refuses trips only
        (RemoteCommand.CLOSE_ALLOWED, 0x01, PROTECTED, ("other error",)),
        (RemoteCommand.PROTECT_RELEASE, 0x01, PROTECTED, ("other error",)),
        (RemoteCommand.ALARM, 0x01, PROTECTED, ("other error",)),
        (0x1A, 0x01, PROTECTED, (PROTECT_STATE,)),  # a plain int N1 works too
    ],
)
def test_explain_refusal(command: int, err: int, word: int | None, reasons: tuple[str, ...]) -> None:
    assert explain_refusal(command, err, word) == reasons


def test_explain_refusal_without_a_status_word_is_the_err_bits() -> None:
    for err in range(256):
        assert explain_refusal(TRIP, err) == error_reasons(err)


@pytest.mark.parametrize(
    ("command", "err", "read"),
    [
        (TRIP, 0x01, True),
        (TRIP, 0x05, True),
        (TRIP, ErrorBits.OTHER | ErrorBits.RESERVED, True),
        (TRIP, 0x04, False),
        (TRIP, 0x00, False),
        (CLOSE, 0x01, False),
        (RemoteCommand.CLOSE_ALLOWED, 0x01, False),
        (RemoteCommand.PROTECT, 0x01, False),
        (RemoteCommand.PROTECT_RELEASE, 0x01, False),
        (RemoteCommand.ALARM, 0x01, False),
        (RemoteCommand.ALARM_RELEASE, 0x01, False),
    ],
)
def test_when_the_driver_reads_status_word_3(command: int, err: int, read: bool) -> None:
    assert status_word_may_explain(command, err) is read


# --- Modbus exception codes ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (1, "exception 1: illegal function (function not supported by this meter)"),
        (2, "exception 2: illegal data address (register not on this meter)"),
        (3, "exception 3: illegal data value (value not accepted by this meter)"),
        (4, "exception 4: server device failure (the meter failed while doing it)"),
        (5, "exception 5: acknowledge (accepted, still being processed: the command may yet take effect)"),
        (6, "exception 6: server device busy (the meter is busy, try again later)"),
        (8, "exception 8: memory parity error (the meter's memory check failed)"),
        (10, "exception 10 (0x0A): gateway path unavailable (the gateway has no path to this unit id)"),
        (11, ("exception 11 (0x0B): gateway target device failed to respond (no answer from the unit behind "
              "the gateway)")),
        (0, "exception 0: unknown exception code"),
        (7, "exception 7: unknown exception code"),
        (9, "exception 9: unknown exception code"),
        (12, "exception 12 (0x0C): unknown exception code"),
        (255, "exception 255 (0xFF): unknown exception code"),
    ],
)
def test_modbus_exception_reasons(code: int, reason: str) -> None:
    assert exception_reason(code) == reason


def test_every_named_modbus_code_has_a_meaning() -> None:
    assert set(EXCEPTION_MEANINGS) == set(EXCEPTION_NAMES) == {1, 2, 3, 4, 5, 6, 8, 10, 11}
    for code, name in EXCEPTION_NAMES.items():
        assert exception_name(code) == name and name in exception_reason(code)
