"""Dlt645Driver against an in-memory scripted transport (no sockets): reads, fallbacks, retries, 1CH, 08H."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable

import pytest

from drivers.base import RelayAction, RelayState
from drivers.dlt645 import (
    DI,
    PROTECT_STATE,
    Dlt645Driver,
    Dlt645Meter,
    ErrorBits,
    Frame,
    RemoteCommand,
    StatusWord3,
    decode_frame,
)
from drivers.dlt645.bcd import CURRENT, ENERGY, MONEY, POWER, VOLTAGE
from drivers.dlt645.messages import parse_read_request, parse_remote_control_request
from drivers.errors import CommandRefused, ExceptionReply, FrameError, MeterTimeout
from drivers.transports import ByteTransport

METER = Dlt645Meter("m1", "123456789012")
NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)

Responder = Callable[[Frame], list[bytes]]


class ScriptedTransport(ByteTransport):
    """Answers each written frame with the byte chunks a responder returns; records every request."""

    description = "scripted"

    def __init__(self, responder: Responder, *, delay: float = 0.0) -> None:
        super().__init__()
        self.responder = responder
        self.delay = delay
        self.requests: list[bytes] = []
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.opened = False
        self.in_flight = 0
        self.max_in_flight = 0

    @property
    def is_open(self) -> bool:
        return self.opened

    async def open(self) -> None:
        self.opened = True

    async def write(self, data: bytes) -> None:
        self.requests.append(data)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        chunks = self.responder(decode_frame(data))
        if self.delay:
            await asyncio.sleep(self.delay)
        self.in_flight -= 1
        for chunk in chunks:
            self.queue.put_nowait(chunk)

    def discard_input(self) -> int:
        n = 0
        while not self.queue.empty():
            n += len(self.queue.get_nowait())
        return n

    async def read(self, *, timeout: float) -> bytes:
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            raise MeterTimeout("scripted: nothing") from None

    async def aclose(self) -> None:
        self.opened = False


VALUES: dict[int, bytes] = {
    DI.ENERGY_FORWARD_BLOCK: ENERGY.encode("12345.67")
    + b"".join(ENERGY.encode(v) for v in ("1", "2.5", "3", "4")),
    DI.ENERGY_FORWARD_TOTAL: ENERGY.encode("12345.67"),
    DI.VOLTAGE_A: VOLTAGE.encode("220.1"),
    DI.CURRENT_A: CURRENT.encode("-1.234"),
    DI.POWER_TOTAL: POWER.encode("2.5005"),
    DI.STATUS_WORD_3: (0x0050).to_bytes(2, "little"),
    DI.BALANCE: MONEY.encode("50.20"),
    DI.OVERDRAFT: MONEY.encode("1.05"),
}


def meter_responder(values: dict[int, bytes]) -> Responder:
    def respond(request: Frame) -> list[bytes]:
        if request.function == 0x11:
            di = parse_read_request(request)
            if di in values:
                return [request.reply(request.data[:4] + values[di]).encode(preamble=2)]
            return [request.error_reply(ErrorBits.NO_DATA).encode()]
        if request.function == 0x1C:
            return [request.reply().encode()]
        return []

    return respond


def make_driver(transport: ByteTransport, **options: object) -> Dlt645Driver:
    options.setdefault("timeout", 0.1)
    options.setdefault("retries", 1)
    return Dlt645Driver(transport, clock=lambda: NOW, **options)  # type: ignore[arg-type]


async def test_read_with_energy_block() -> None:
    transport = ScriptedTransport(meter_responder(VALUES))
    reading = await make_driver(transport).read(METER)
    assert reading.meter_id == "m1" and reading.taken_at == NOW
    assert reading.energy_wh == 12_345_670
    assert reading.energy_wh_by_rate == (1000, 2500, 3000, 4000)
    assert reading.voltage_v == pytest.approx(220.1)
    assert reading.current_a == pytest.approx(-1.234)
    assert reading.power_w == 2501  # 2.5005 kW = 2500.5 W, rounded half up
    assert reading.relay is RelayState.OPEN
    assert reading.meter_balance_fen == 5020
    assert reading.extra["overdraft_fen"] == 105
    assert reading.extra["relay_commanded"] == "open" and reading.extra["protected"] is False


async def test_read_falls_back_to_single_dis_and_remembers() -> None:
    values = dict(VALUES)
    del values[DI.ENERGY_FORWARD_BLOCK]
    values[0x00010100] = ENERGY.encode("7")
    values[0x00010200] = ENERGY.encode("8")
    del values[DI.BALANCE]
    transport = ScriptedTransport(meter_responder(values))
    driver = make_driver(transport)
    reading = await driver.read(METER)
    assert reading.energy_wh == 12_345_670 and reading.energy_wh_by_rate == (7000, 8000)
    assert reading.meter_balance_fen is None
    first = len(transport.requests)
    await driver.read(METER)
    asked = [parse_read_request(decode_frame(r)) for r in transport.requests[first:]]
    assert DI.ENERGY_FORWARD_BLOCK not in asked and DI.BALANCE not in asked
    assert asked[0] == DI.ENERGY_FORWARD_TOTAL


async def test_read_without_energy_is_an_exception_reply() -> None:
    driver = make_driver(ScriptedTransport(meter_responder({})))
    with pytest.raises(ExceptionReply) as info:
        await driver.read(METER)
    assert info.value.code == ErrorBits.NO_DATA and info.value.meter_id == "m1"


async def test_quantities_limit_the_transactions() -> None:
    transport = ScriptedTransport(meter_responder(VALUES))
    reading = await make_driver(transport, quantities={"status"}).read(METER)
    assert len(transport.requests) == 2 and reading.voltage_v is None and reading.relay is RelayState.OPEN


async def test_timeout_after_retries() -> None:
    transport = ScriptedTransport(lambda request: [])
    with pytest.raises(MeterTimeout) as info:
        await make_driver(transport, retries=2).read_data(METER, DI.VOLTAGE_A)
    assert len(transport.requests) == 3 and info.value.meter_id == "m1"


async def test_garbage_is_a_frame_error() -> None:
    transport = ScriptedTransport(lambda request: [b"\x12\x34garbage\x68\x00"])
    with pytest.raises(FrameError):
        await make_driver(transport).read_data(METER, DI.VOLTAGE_A)


async def test_bad_checksum_then_good_reply_on_retry() -> None:
    good = meter_responder(VALUES)
    calls = 0

    def respond(request: Frame) -> list[bytes]:
        nonlocal calls
        calls += 1
        raw = bytearray(good(request)[0])
        if calls == 1:
            raw[-2] ^= 0x01
        return [bytes(raw)]

    value = await make_driver(ScriptedTransport(respond)).read_data(METER, DI.VOLTAGE_A)
    assert VOLTAGE.decode(value) == VOLTAGE.decode(VALUES[DI.VOLTAGE_A]) and calls == 2


async def test_echo_and_foreign_replies_are_skipped() -> None:
    good = meter_responder(VALUES)

    def respond(request: Frame) -> list[bytes]:
        other = Frame(bytes.fromhex("010000000000"), request.function | 0x80, request.data + b"\x99\x99")
        echo = request.encode(preamble=4)
        reply = good(request)[0]
        return [echo, other.encode(), reply[:5], reply[5:]]  # also split across reads

    value = await make_driver(ScriptedTransport(respond)).read_data(METER, DI.VOLTAGE_A)
    assert value == VALUES[DI.VOLTAGE_A]


async def test_one_transaction_at_a_time() -> None:
    transport = ScriptedTransport(meter_responder(VALUES), delay=0.01)
    driver = make_driver(transport)
    other = Dlt645Meter("m2", "000000000002")
    await asyncio.gather(*(driver.read_data(m, DI.VOLTAGE_A) for m in (METER, other, METER, other)))
    assert transport.max_in_flight == 1 and len(transport.requests) == 4


async def test_read_relay_uses_bit_4_not_bit_6() -> None:
    values = dict(VALUES)
    values[DI.STATUS_WORD_3] = (0x0040).to_bytes(2, "little")  # commanded trip, contact still closed
    assert (
        await make_driver(ScriptedTransport(meter_responder(values))).read_relay(METER) is RelayState.CLOSED
    )
    values[DI.STATUS_WORD_3] = (0x0050).to_bytes(2, "little")  # tripped: commanded and open
    assert await make_driver(ScriptedTransport(meter_responder(values))).read_relay(METER) is RelayState.OPEN
    values[DI.STATUS_WORD_3] = (0x0010).to_bytes(2, "little")  # open with a close commanded: close allowed (1BH)
    assert await make_driver(ScriptedTransport(meter_responder(values))).read_relay(METER) is RelayState.ARMED


async def test_trip_frame_is_the_golden_frame(caplog: pytest.LogCaptureFixture) -> None:
    transport = ScriptedTransport(meter_responder(VALUES))
    driver = make_driver(transport, password="123456", operator_code="12345678")
    caplog.set_level(logging.DEBUG)
    # 2026-12-31 23:59:59 in Asia/Shanghai is 15:59:59 UTC
    await driver.set_relay(
        METER, RelayAction.OPEN, valid_until=dt.datetime(2026, 12, 31, 15, 59, 59, tzinfo=dt.UTC)
    )
    assert transport.requests == [
        bytes.fromhex(
            "FE FE FE FE 68 12 90 78 56 34 12 68 1C 10 35 89 67 45 AB 89 67 45 4D 33 8C 8C 56 64 45 59 EC 16"
        )
    ]
    logged = caplog.text.upper().replace(METER.address, "")
    assert "123456" not in logged and "358967" not in logged.replace(" ", "")


async def test_close_uses_configured_command_and_meter_overrides() -> None:
    transport = ScriptedTransport(meter_responder(VALUES))
    driver = make_driver(transport, close_command=RemoteCommand.CLOSE_ALLOWED)
    await driver.set_relay(METER, RelayAction.CLOSE)
    special = Dlt645Meter(
        "m3",
        "3",
        password="654321",
        password_level=4,
        operator_code="00000042",
        close_command=RemoteCommand.DIRECT_CLOSE,
    )
    await driver.set_relay(special, RelayAction.CLOSE, valid_until=dt.datetime(2026, 6, 1, 12, 30))
    first, second = (parse_remote_control_request(decode_frame(r)) for r in transport.requests)
    assert first.command == RemoteCommand.CLOSE_ALLOWED and first.password_level == 2
    assert first.password == "000000" and first.valid_until == dt.datetime(
        2026, 6, 1, 20, 5
    )  # now + 5 min, +8 h
    assert second.command == RemoteCommand.DIRECT_CLOSE and second.password == "654321"
    assert second.password_level == 4 and second.operator_code == "00000042"
    assert second.valid_until == dt.datetime(2026, 6, 1, 20, 30)  # naive valid_until is UTC


@pytest.mark.parametrize(
    ("method", "command"),
    [
        ("trip", RemoteCommand.TRIP),
        ("close_allowed", RemoteCommand.CLOSE_ALLOWED),
        ("direct_close", RemoteCommand.DIRECT_CLOSE),
        ("alarm", RemoteCommand.ALARM),
        ("alarm_release", RemoteCommand.ALARM_RELEASE),
        ("protect", RemoteCommand.PROTECT),
        ("protect_release", RemoteCommand.PROTECT_RELEASE),
    ],
)
async def test_explicit_remote_control_methods(method: str, command: RemoteCommand) -> None:
    transport = ScriptedTransport(meter_responder(VALUES))
    await getattr(make_driver(transport), method)(METER)
    assert parse_remote_control_request(decode_frame(transport.requests[0])).command == command


async def test_refusal_names_the_error_bits() -> None:
    transport = ScriptedTransport(lambda r: [r.error_reply(ErrorBits.PASSWORD | ErrorBits.OTHER).encode()])
    with pytest.raises(CommandRefused) as info:
        await make_driver(transport).set_relay(METER, RelayAction.OPEN)
    assert info.value.code == 0x05 and info.value.meter_id == "m1"
    assert info.value.reasons == ("other error", "wrong password / not authorised")
    assert info.value.reason == "other error; wrong password / not authorised"


def refusing_meter(err: int, status_word_3: bytes | None) -> Responder:
    """A meter that refuses every 1CH with ``err`` and answers 04000503 with ``status_word_3`` (None: ERR 02)."""
    values = {} if status_word_3 is None else {DI.STATUS_WORD_3: status_word_3}
    reads = meter_responder(values)

    def respond(request: Frame) -> list[bytes]:
        if request.function == 0x1C:
            return [request.error_reply(err).encode()]
        return reads(request)

    return respond


def asked(transport: ScriptedTransport) -> list[str]:
    """The requests on the wire: "1C" or the DI read."""
    frames = [decode_frame(r) for r in transport.requests]
    return ["1C" if f.function == 0x1C else f"{parse_read_request(f):08X}" for f in frames]


def word(*bits: StatusWord3) -> bytes:
    value = 0
    for bit in bits:
        value |= bit
    return value.to_bytes(2, "little")


async def test_a_trip_refused_in_protect_state_is_named() -> None:
    transport = ScriptedTransport(refusing_meter(ErrorBits.OTHER, word(StatusWord3.PROTECTED)))
    with pytest.raises(CommandRefused) as info:
        await make_driver(transport).set_relay(METER, RelayAction.OPEN)
    refused = info.value
    assert (refused.code, refused.reasons) == (0x01, (PROTECT_STATE,))
    assert refused.reason == "meter in protect state (保电)" and refused.meter_id == "m1"
    assert str(refused) == (
        "[m1] meter refused TRIP: meter in protect state (保电) (ERR 01H: other error; status word 3 = 1000H)"
    )
    assert asked(transport) == ["1C", "04000503"]  # one read of status word 3, right after the refusal


@pytest.mark.parametrize(
    ("status", "reasons"),
    [
        # not in 保电: the meter's "other error" is all there is (e.g. a command the meter found expired)
        (word(), ("other error",)),
        # the relay already open (bits 4 and 6) explains nothing: meters accept a trip of an open relay
        (word(StatusWord3.RELAY_OPEN, StatusWord3.RELAY_COMMAND_TRIP), ("other error",)),
        (word(StatusWord3.PROTECTED, StatusWord3.RELAY_OPEN), (PROTECT_STATE,)),
        ((0xFFFF).to_bytes(2, "little"), (PROTECT_STATE,)),
    ],
)
async def test_only_protect_state_explains_an_other_error(status: bytes, reasons: tuple[str, ...]) -> None:
    transport = ScriptedTransport(refusing_meter(ErrorBits.OTHER, status))
    with pytest.raises(CommandRefused) as info:
        await make_driver(transport).trip(METER)
    assert info.value.reasons == reasons and info.value.code == 0x01
    assert asked(transport) == ["1C", "04000503"]


async def test_protect_state_replaces_only_the_other_error_bit() -> None:
    transport = ScriptedTransport(refusing_meter(ErrorBits.OTHER | ErrorBits.PASSWORD, word(StatusWord3.PROTECTED)))
    with pytest.raises(CommandRefused) as info:
        await make_driver(transport).trip(METER)
    assert info.value.code == 0x05
    assert info.value.reasons == (PROTECT_STATE, "wrong password / not authorised")
    assert info.value.reason == "meter in protect state (保电); wrong password / not authorised"


@pytest.mark.parametrize(
    ("command", "err"),
    [
        (RemoteCommand.TRIP, ErrorBits.PASSWORD),  # no "other error" to explain
        (RemoteCommand.TRIP, 0x00),  # no reason given
        (RemoteCommand.DIRECT_CLOSE, ErrorBits.OTHER),  # 保电 refuses trips only
        (RemoteCommand.CLOSE_ALLOWED, ErrorBits.OTHER),
        (RemoteCommand.PROTECT_RELEASE, ErrorBits.OTHER),
        (RemoteCommand.ALARM, ErrorBits.OTHER),
    ],
)
async def test_status_word_is_not_read_when_it_cannot_explain(command: RemoteCommand, err: int) -> None:
    transport = ScriptedTransport(refusing_meter(err, word(StatusWord3.PROTECTED)))
    with pytest.raises(CommandRefused) as info:
        await make_driver(transport).remote_control(METER, command)
    assert info.value.code == err and PROTECT_STATE not in info.value.reasons
    assert info.value.reason == ("no reason given" if err == 0 else info.value.reasons[0])
    assert asked(transport) == ["1C"]


def _status_read_times_out(request: Frame) -> list[bytes]:
    return [] if request.function == 0x11 else [request.error_reply(ErrorBits.OTHER).encode()]


def _status_read_is_garbage(request: Frame) -> list[bytes]:
    return [b"\x12\x34garbage"] if request.function == 0x11 else [request.error_reply(ErrorBits.OTHER).encode()]


def _status_read_crashes(request: Frame) -> list[bytes]:
    if request.function == 0x11:
        raise RuntimeError("adapter unplugged mid-read")
    return [request.error_reply(ErrorBits.OTHER).encode()]


@pytest.mark.parametrize(
    ("responder", "why"),
    [
        (_status_read_times_out, "scripted: nothing"),  # MeterTimeout (the scripted transport says so)
        (refusing_meter(ErrorBits.OTHER, None), "ERR 02H: no requested data"),  # ExceptionReply
        (refusing_meter(ErrorBits.OTHER, b"\x00\x10\x00"), "status word 3 of 3 bytes"),  # FrameError
        (_status_read_is_garbage, "garbled reply"),  # FrameError
        (_status_read_crashes, "RuntimeError: adapter unplugged mid-read"),  # not even a DriverError
    ],
    ids=["timeout", "exception-reply", "wrong-length", "garbage", "crash"],
)
async def test_a_failed_status_read_keeps_the_meters_reason(responder: Responder, why: str) -> None:
    transport = ScriptedTransport(responder)
    with pytest.raises(CommandRefused) as info:
        await make_driver(transport, retries=2).set_relay(METER, RelayAction.OPEN)
    refused = info.value
    assert (refused.code, refused.reasons, refused.reason) == (0x01, ("other error",), "other error")
    assert refused.meter_id == "m1" and str(refused).count("[m1]") == 1
    assert "status word 3 unreadable" in str(refused) and why in str(refused)
    assert asked(transport) == ["1C", "04000503"]  # once: no retry of the explanation, whatever the driver's retries


async def test_expired_command_is_not_sent() -> None:
    transport = ScriptedTransport(meter_responder(VALUES))
    with pytest.raises(CommandRefused) as info:
        await make_driver(transport).set_relay(
            METER, RelayAction.OPEN, valid_until=NOW - dt.timedelta(seconds=1)
        )
    assert info.value.reason == "expired before sending" and transport.requests == []


async def test_broadcast_time_golden() -> None:
    transport = ScriptedTransport(lambda r: [])
    await make_driver(transport).broadcast_time(dt.datetime(2026, 1, 1, 19, 4, 5, tzinfo=dt.UTC))
    assert transport.requests == [
        bytes.fromhex("FE FE FE FE 68 99 99 99 99 99 99 68 08 06 38 37 36 35 34 59 DB 16")
    ]


async def test_read_address() -> None:
    def respond(request: Frame) -> list[bytes]:
        return [request.reply(METER.wire_address, address=METER.wire_address).encode()]

    assert await make_driver(ScriptedTransport(respond)).read_address() == "123456789012"


def test_meter_validation_and_repr() -> None:
    meter = Dlt645Meter("m", "42", password="999999")
    assert meter.address == "000000000042" and "999999" not in repr(meter)
    for bad in (
        {"address": "AAAAAAAA0042"},
        {"address": "99999999999999"},
        {"address": "x"},
        {"password": "12345"},
        {"operator_code": "1"},
        {"close_command": RemoteCommand.TRIP},
    ):
        with pytest.raises(ValueError):
            Dlt645Meter(**{"id": "m", "address": "42", **bad})  # type: ignore[arg-type]
