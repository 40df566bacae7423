"""The simulator's slave logic (no I/O): addressing rules, relay model, 1CH checks, registers, faults.

The driver talks to it through an in-memory transport, so these also check driver and simulator agree.
"""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from drivers.base import RelayAction, RelayState
from drivers.dlt645 import DI, Dlt645Driver, Dlt645Meter, ErrorBits, Frame, RemoteCommand, decode_frame
from drivers.dlt645.address import address_to_wire, wildcard_address
from drivers.dlt645.messages import (
    RemoteControlRequest,
    broadcast_time_request,
    read_request,
    remote_control_request,
)
from drivers.dlt645.refusals import PROTECT_STATE
from drivers.errors import CommandRefused, ExceptionReply, FrameError, MeterTimeout
from drivers.transports import ByteTransport
from simulators.dlt645 import Fault, RelayKind, SimulatedBus, SimulatedDlt645Meter, make_meters
from simulators.faults import Fault as SharedFault
from simulators.faults import FaultKind, FaultPlan
from simulators.meter import ManualClock


class Clock(ManualClock):
    """The simulator's manual clock (UNIX seconds) that the driver can also read as a UTC datetime."""

    def __init__(self) -> None:
        super().__init__(dt.datetime(2026, 6, 1, 4, 0, tzinfo=dt.UTC).timestamp())  # 12:00 in Shanghai

    def __call__(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.now(), dt.UTC)

    def tick(self, **delta: float) -> None:
        self.advance(dt.timedelta(**delta).total_seconds())


class BusTransport(ByteTransport):
    """In-memory line between a driver and a SimulatedBus, honouring SILENCE/BAD_CHECKSUM faults."""

    description = "in-memory bus"

    def __init__(self, bus: SimulatedBus) -> None:
        super().__init__()
        self.bus = bus
        self.pending = bytearray()

    @property
    def is_open(self) -> bool:
        return True

    async def open(self) -> None:
        pass

    async def write(self, data: bytes) -> None:
        reply = self.bus.handle(decode_frame(data))
        if reply is None:
            return
        raw = reply.frame.encode()
        fault = reply.meter.take_fault()
        if fault is not None and fault.kind is Fault.SILENCE:
            return
        if fault is not None and fault.kind is Fault.BAD_CHECKSUM:
            raw = raw[:-2] + bytes([raw[-2] ^ 0xFF]) + raw[-1:]
        self.pending += raw

    def discard_input(self) -> int:
        n = len(self.pending)
        self.pending.clear()
        return n

    async def read(self, *, timeout: float) -> bytes:
        if not self.pending:
            await asyncio.sleep(timeout)
            raise MeterTimeout("silent")
        data = bytes(self.pending)
        self.pending.clear()
        return data


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make(
    clock: Clock, count: int = 3, **options: object
) -> tuple[SimulatedBus, Dlt645Driver, list[Dlt645Meter]]:
    bus = SimulatedBus(make_meters(count, seed=7, clock=clock, **options))
    driver = Dlt645Driver(BusTransport(bus), timeout=0.01, retries=0, clock=clock)
    meters = [Dlt645Meter(f"m{i}", m.address) for i, m in enumerate(bus.meters)]
    return bus, driver, meters


async def test_each_meter_answers_its_own_address(clock: Clock) -> None:
    bus, driver, meters = make(clock)
    readings = [await driver.read(m) for m in meters]
    for sim, reading in zip(bus.meters, readings, strict=True):
        assert 0 <= sim.energy_wh - reading.energy_wh < 10  # the register truncates to 0.01 kWh
        assert reading.energy_wh_by_rate is not None and len(reading.energy_wh_by_rate) == 4
        assert reading.relay is RelayState.CLOSED and reading.meter_balance_fen == sim.balance_fen
        assert reading.voltage_v == pytest.approx(sim.voltage_v, abs=0.1)
    with pytest.raises(MeterTimeout):
        await driver.read(Dlt645Meter("ghost", "999"))


def test_addressing_rules(clock: Clock) -> None:
    bus = SimulatedBus(make_meters(2, clock=clock))
    one = bus.meters[0]
    # wildcard read: answered with the real address when exactly one meter matches
    request = read_request(address_to_wire(wildcard_address("01")), DI.ENERGY_FORWARD_TOTAL)
    reply = bus.handle(request)
    assert reply is not None and reply.meter is one and reply.frame.address == one.wire_address
    # a wildcard matching both meters would collide: silence
    assert bus.handle(read_request(address_to_wire("AAAAAAAAAA00"), DI.ENERGY_FORWARD_TOTAL)) is None
    # all-AA read-address needs a single meter on the bus
    assert bus.handle(Frame(b"\xaa" * 6, 0x13)) is None
    single = SimulatedBus([one])
    reply = single.handle(Frame(b"\xaa" * 6, 0x13))
    assert reply is not None and reply.frame.data == one.wire_address
    # wildcards are refused (silence) for 1CH; replies from other slaves are ignored
    trip = remote_control_request(address_to_wire(wildcard_address("01")), RemoteControlRequest(2))
    assert bus.handle(trip) is None
    assert bus.handle(request.reply(b"")) is None
    assert bus.handle(read_request(address_to_wire("123"), DI.ENERGY_FORWARD_TOTAL)) is None


async def test_trip_delay_bit6_then_bit4(clock: Clock) -> None:
    bus, driver, (meter, *_) = make(clock, trip_delay_s=600)
    before = bus.meters[0].energy_wh
    await driver.set_relay(meter, RelayAction.OPEN)
    word = await driver.read_status_word_3(meter)
    assert word & 0x40 and not word & 0x10 and word & 0x80  # commanded, not yet open, pre-trip alarm
    assert await driver.read_relay(meter) is RelayState.CLOSED
    clock.tick(seconds=601)
    word = await driver.read_status_word_3(meter)
    assert word & 0x50 == 0x50 and not word & 0x80
    assert await driver.read_relay(meter) is RelayState.OPEN
    stopped = bus.meters[0].energy_wh
    assert stopped > before
    clock.tick(hours=1)
    assert bus.meters[0].energy_wh == stopped  # no energy while open
    assert (await driver.read(meter)).power_w == 0


async def test_close_allowed_vs_direct_close(clock: Clock) -> None:
    bus, driver, (meter, *_) = make(clock)
    sim = bus.meters[0]
    await driver.trip(meter)
    assert sim.relay_open
    await driver.close_allowed(meter)
    assert sim.relay_open and not sim.commanded_trip  # waits for the customer
    sim.press_button()
    assert not sim.relay_open
    await driver.trip(meter)
    await driver.direct_close(meter)
    assert not sim.relay_open and await driver.read_relay(meter) is RelayState.CLOSED


async def test_close_allowed_on_external_relay_closes(clock: Clock) -> None:
    bus, driver, (meter, *_) = make(clock, relay_kind=RelayKind.EXTERNAL)
    await driver.trip(meter)
    await driver.close_allowed(meter)
    assert not bus.meters[0].relay_open


async def test_protect_refuses_trip(clock: Clock) -> None:
    bus, driver, (meter, *_) = make(clock)
    await driver.protect(meter)
    assert (await driver.read(meter)).extra["protected"] is True
    with pytest.raises(CommandRefused) as info:
        await driver.set_relay(meter, RelayAction.OPEN)
    # ERR bit 0 "other error"; the driver reads status word 3 (bit 12) and names the reason
    assert info.value.code == ErrorBits.OTHER and info.value.reason == PROTECT_STATE
    await driver.protect_release(meter)
    await driver.trip(meter)
    assert bus.meters[0].relay_open


async def test_protect_release_returns_to_trip(clock: Clock) -> None:
    bus, driver, (meter, *_) = make(clock)
    await driver.trip(meter)
    await driver.protect(meter)
    assert not bus.meters[0].relay_open
    await driver.protect_release(meter)
    assert bus.meters[0].relay_open


async def test_alarm_sets_bit7(clock: Clock) -> None:
    _, driver, (meter, *_) = make(clock)
    await driver.alarm(meter)
    assert (await driver.read(meter)).extra["pre_trip_alarm"] is True
    await driver.alarm_release(meter)
    assert (await driver.read(meter)).extra["pre_trip_alarm"] is False


async def test_password_and_level_checked(clock: Clock) -> None:
    bus, driver, (meter, *_) = make(clock, passwords={0x02: "123456"})
    with pytest.raises(CommandRefused) as info:
        await driver.trip(meter)
    assert info.value.code == ErrorBits.PASSWORD
    good = Dlt645Meter(meter.id, meter.address, password="123456")
    await driver.trip(good)
    with pytest.raises(CommandRefused):
        await driver.trip(Dlt645Meter(meter.id, meter.address, password="123456", password_level=4))
    assert [r.command for r in bus.meters[0].commands] == [RemoteCommand.TRIP]
    assert bus.meters[0].refusals == [(RemoteCommand.TRIP, ErrorBits.PASSWORD)] * 2


async def test_expired_by_meter_clock_is_refused(clock: Clock) -> None:
    bus, driver, (meter, *_) = make(clock)
    bus.meters[0].clock_offset = dt.timedelta(hours=1)  # the meter's clock runs an hour ahead
    with pytest.raises(CommandRefused) as info:
        await driver.trip(meter, valid_until=clock() + dt.timedelta(minutes=5))
    assert info.value.code == ErrorBits.OTHER and not bus.meters[0].relay_open


async def test_broadcast_time_sets_every_clock(clock: Clock) -> None:
    bus, driver, _ = make(clock)
    await driver.broadcast_time(clock() + dt.timedelta(minutes=10))
    for sim in bus.meters:
        assert sim.local_now() == dt.datetime(2026, 6, 1, 12, 10)
    assert bus.handle(broadcast_time_request(dt.datetime(2026, 1, 1))) is None


async def test_block_unsupported_falls_back(clock: Clock) -> None:
    bus, driver, (meter, *_) = make(clock, supports_block=False)
    reading = await driver.read(meter)
    sim = bus.meters[0]
    assert reading.energy_wh_by_rate == tuple(v // 10 * 10 for v in sim.energy_wh_by_rate)


async def test_registers(clock: Clock) -> None:
    bus, driver, (meter, *_) = make(clock)
    sim = bus.meters[0]
    sim.balance_fen, sim.overdraft_fen = 5020, 105
    reading = await driver.read(meter)
    assert reading.meter_balance_fen == 5020 and reading.extra["overdraft_fen"] == 105
    with pytest.raises(ExceptionReply) as info:
        await driver.read_data(meter, 0x0ABCDEF0)
    assert info.value.code == ErrorBits.NO_DATA
    sim.extra_registers[0x02800002] = bytes.fromhex("0050")
    assert await driver.read_data(meter, 0x02800002) == bytes.fromhex("0050")
    assert await driver.read_data(meter, DI.COMM_ADDRESS) == sim.wire_address


async def test_energy_accrues_to_the_current_rate(clock: Clock) -> None:
    bus, _, _ = make(clock, count=1)
    sim = bus.meters[0]
    before = sim.energy_wh_by_rate
    clock.tick(hours=1)  # 12:00-13:00 local is rate 3 (平, flat)
    after = sim.energy_wh_by_rate
    assert after[2] > before[2] and after[:2] == before[:2] and after[3] == before[3]


async def test_faults_count_down(clock: Clock) -> None:
    bus, driver, (meter, *_) = make(clock)
    sim = bus.meters[0]
    sim.inject(Fault.SILENCE, count=1)
    with pytest.raises(MeterTimeout):
        await driver.read_data(meter, DI.VOLTAGE_A)
    assert await driver.read_data(meter, DI.VOLTAGE_A)
    sim.inject("bad_checksum")
    for _ in range(2):
        with pytest.raises(FrameError):  # bytes arrived, but no valid frame
            await driver.read_data(meter, DI.VOLTAGE_A)
    sim.clear_fault()
    assert await driver.read_data(meter, DI.VOLTAGE_A)


def test_duplicate_addresses_rejected(clock: Clock) -> None:
    with pytest.raises(ValueError):
        SimulatedBus(make_meters(1, clock=clock) + make_meters(2, clock=clock))


async def test_shared_fault_plan_relay_stuck_and_counter_reset(clock: Clock) -> None:
    plan = FaultPlan().add(SharedFault(FaultKind.RELAY_STUCK), meters=[0])
    plan.add(SharedFault(FaultKind.COUNTER_RESET), meters=[1])
    bus = SimulatedBus(make_meters(2, clock=clock), faults=plan)
    driver = Dlt645Driver(BusTransport(bus), timeout=0.01, retries=0, clock=clock)
    stuck, reset = (Dlt645Meter(f"m{i}", m.address) for i, m in enumerate(bus.meters))
    await driver.set_relay(stuck, RelayAction.OPEN)  # acknowledged ...
    assert await driver.read_relay(stuck) is RelayState.CLOSED  # ... but the contact did not move
    assert (await driver.read(reset)).energy_wh == 0


def trip_frame(sim: SimulatedDlt645Meter, command: int = RemoteCommand.TRIP) -> Frame:
    return remote_control_request(sim.wire_address, RemoteControlRequest(2, command=command))


def test_no_answer_hears_nothing_mute_executes_and_exception_refuses(clock: Clock) -> None:
    plan = FaultPlan.parse("no-answer@0; mute@1; exception:4@2")
    bus = SimulatedBus(make_meters(4, clock=clock), faults=plan)
    deaf, mute, refusing, ok = bus.meters
    assert bus.handle(trip_frame(deaf)) is None and not deaf.commanded_trip and not deaf.relay_open
    reply = bus.handle(trip_frame(mute))
    assert reply is not None and reply.fault.mute and mute.relay_open  # executed; the server drops the answer
    reply = bus.handle(trip_frame(refusing))
    assert reply is not None and reply.frame.is_abnormal and reply.frame.error_code == 4
    assert not refusing.commanded_trip
    bus.handle(broadcast_time_request(dt.datetime(2030, 1, 1)))  # a broadcast does not reach a deaf meter
    assert ok.local_now().year == 2030 and deaf.local_now().year == 2026
    log = [(e.meter, e.asked, e.executed, e.reason, e.reply) for e in bus.relay_log.since()]
    assert log == [(0, "trip", False, "no-answer", "none"), (1, "trip", True, None, "lost"),
                   (2, "trip", False, "exception", "sent")]


def test_relay_log_names_every_refusal(clock: Clock) -> None:
    bus = SimulatedBus(make_meters(1, clock=clock, passwords={2: "123456"}))
    sim = bus.meters[0]
    bus.handle(trip_frame(sim))  # password 000000: refused
    sim.passwords = {2: "000000"}
    sim.set_protect(True)
    bus.handle(trip_frame(sim))
    sim.set_protect(False)
    expired = RemoteControlRequest(2, command=RemoteCommand.TRIP, valid_until=dt.datetime(2020, 1, 1))
    bus.handle(remote_control_request(sim.wire_address, expired))
    bus.handle(trip_frame(sim, 0x77))
    bus.handle(trip_frame(sim, RemoteCommand.CLOSE_ALLOWED))
    entries = bus.relay_log.since()
    assert [(e.asked, e.reason) for e in entries] == [
        ("trip", "password"), ("trip", "protect"), ("trip", "expired"), ("invalid", "unknown-command"),
        ("close-allowed", None)]
    assert [e.index for e in entries] == [1, 2, 3, 4, 5] and bus.relay_log.since(4) == entries[4:]
    assert entries[0].id == sim.address and entries[0].detail["n1"] == "1AH"


def test_protect_from_the_bench_and_the_button(clock: Clock) -> None:
    bus = SimulatedBus(make_meters(1, clock=clock))
    sim = bus.meters[0]
    sim.set_protect(True)
    assert sim.protected and sim.status_word_3 & 0x1000
    reply = bus.handle(trip_frame(sim))
    assert reply is not None and reply.frame.error_code == ErrorBits.OTHER and not sim.relay_open
    sim.set_protect(False)
    assert not sim.status_word_3 & 0x1000
    assert not sim.awaiting_button and not sim.press_button()  # closed: nothing to press
    bus.handle(trip_frame(sim))
    assert sim.relay_open and not sim.press_button()  # tripped: the button does not close it
    bus.handle(trip_frame(sim, RemoteCommand.CLOSE_ALLOWED))
    assert sim.awaiting_button and sim.relay_open
    assert sim.press_button() and not sim.relay_open and not sim.awaiting_button


def test_export_power_does_not_run_the_import_counter_backwards(clock: Clock) -> None:
    sim = make_meters(1, clock=clock)[0]
    sim.meter.set_power_w(-250)
    before = sim.energy_wh
    clock.tick(hours=1)
    assert sim.power_w == -250 and sim.energy_wh == before
