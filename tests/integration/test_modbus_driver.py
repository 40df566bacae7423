"""The Modbus drivers against the fleet simulator over real sockets (TCP, RTU over TCP, a serial pty), and
against pymodbus's own server for every Modbus exception code."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from drivers.base import RelayAction, RelayState
from drivers.errors import CommandRefused, ConnectError, ExceptionReply, MeterTimeout, UnsupportedOperation
from drivers.modbus import ModbusMeter, ModbusRtuDriver, ModbusTcpDriver, load_model
from drivers.modbus.models import parse_model
from drivers.modbus.registers import EXCEPTION_NAMES
from simulators.meter import ManualClock
from simulators.modbus import ModbusFleet, ModbusSerialFleet
from tests.conftest import REPO_ROOT
from tests.support import async_wait_until, free_port

METERS = REPO_ROOT / "config" / "meters"
GENERIC = load_model(METERS / "generic-prepaid.yaml")
HIKING = load_model(METERS / "hiking-dds238-2-zn-sr.yaml")
START = 1_795_363_200.0  # 2026-11-23 00:00 UTC+8


async def test_driver_reads_energy_that_grows():
    async with (
        ModbusFleet(GENERIC, meters=3, port=free_port(), speed=3600, seed=5) as fleet,
        ModbusTcpDriver("127.0.0.1", fleet.port, timeout=1.0) as driver,
    ):
        sim = fleet.meters[2]
        sim.set_power_w(3600)  # 3.6 Wh per real millisecond at speed 3600
        meter = ModbusMeter("m2", 2, GENERIC)
        first = await driver.read(meter)
        assert first.meter_id == "m2"
        assert first.energy_wh >= 1_000_000  # simulated meters start with 1 000 - 50 000 kWh
        assert first.energy_wh <= sim.energy_wh
        assert first.energy_wh_by_rate is not None and len(first.energy_wh_by_rate) == 4
        # rates are floored one by one, and registers are filled one after the other while energy grows
        assert abs(sum(first.energy_wh_by_rate) - first.energy_wh) <= 100
        assert first.relay is RelayState.CLOSED
        assert first.power_w == 3600
        assert first.voltage_v == pytest.approx(230, abs=3)
        assert first.current_a == pytest.approx(3600 / first.voltage_v, abs=0.02)

        async def grown() -> bool:
            return (await driver.read(meter)).energy_wh > first.energy_wh + 100

        await async_wait_until(grown, timeout=10, what="energy to grow")
        other = await driver.read(ModbusMeter("m3", 3, GENERIC))
        assert other.energy_wh != first.energy_wh  # each unit id is its own meter


async def test_open_relay_stops_energy_and_is_read_back():
    clock = ManualClock(START)
    async with (
        ModbusFleet(GENERIC, meters=2, port=free_port(), clock=clock) as fleet,
        ModbusTcpDriver("127.0.0.1", fleet.port) as driver,
    ):
        sim = fleet.meters[1]
        sim.set_power_w(1000)
        meter = ModbusMeter("m1", 1, GENERIC)

        await driver.set_relay(meter, RelayAction.OPEN)
        assert not sim.relay_closed and not sim.relay_commanded_closed
        assert await driver.read_relay(meter) is RelayState.OPEN
        before = await driver.read(meter)
        assert before.relay is RelayState.OPEN and before.power_w == 0
        clock.advance(3600)
        assert (await driver.read(meter)).energy_wh == before.energy_wh == sim.energy_wh

        await driver.set_relay(meter, RelayAction.CLOSE)
        assert await driver.read_relay(meter) is RelayState.CLOSED
        clock.advance(3600)
        assert (await driver.read(meter)).energy_wh == before.energy_wh + 1000
        assert fleet.meters[2].relay_closed  # the other meter was never touched


async def test_stopped_endpoint_fails_and_restarted_one_is_read_by_the_same_driver():
    fleet = ModbusFleet(GENERIC, meters=1, port=free_port())
    meter = ModbusMeter("m1", 1, GENERIC)
    async with ModbusTcpDriver("127.0.0.1", fleet.port, timeout=0.3) as driver:
        with pytest.raises(ConnectError):
            await driver.read(meter)  # nothing listens yet
        await fleet.start()
        try:
            first = await driver.read(meter)
            await fleet.stop()
            with pytest.raises((ConnectError, MeterTimeout)):
                await driver.read(meter)  # the request may go out before the close is seen
            with pytest.raises(ConnectError):
                await driver.read(meter)
            await fleet.start()
            again = await driver.read(meter)
            assert again.energy_wh >= first.energy_wh
        finally:
            await fleet.stop()


async def test_exception_replies_carry_the_code():
    async with (
        ModbusFleet(GENERIC, meters=1, port=free_port()) as fleet,
        ModbusTcpDriver("127.0.0.1", fleet.port) as driver,
    ):
        with pytest.raises(ExceptionReply) as info:
            # the simulator answers an unknown unit as a Modbus TCP gateway does: 0x0B, target failed to respond
            await driver.read(ModbusMeter("ghost", 9, GENERIC))
        assert info.value.code == 0x0B and info.value.meter_id == "ghost"
        assert (await driver.read(ModbusMeter("m1", 1, GENERIC))).energy_wh > 0  # the bus goes on


async def test_refused_relay_write_raises_command_refused():
    fc06 = parse_model(
        {
            **HIKING.model_dump(mode="json"),
            "relay": {
                **HIKING.model_dump(mode="json")["relay"],
                "command": {"table": "holding", "address": 0x1A, "function": 6, "open": 0, "close": 1},
            },
        }
    )
    async with (
        ModbusFleet(HIKING, meters=1, port=free_port()) as fleet,
        ModbusTcpDriver("127.0.0.1", fleet.port) as driver,
    ):
        with pytest.raises(CommandRefused) as info:
            await driver.set_relay(ModbusMeter("h1", 1, fc06), RelayAction.OPEN)  # the meter wants FC16
        assert info.value.code == 1
        assert info.value.reasons == ("exception 1: illegal function (function not supported by this meter)",)
        assert info.value.reason == info.value.reasons[0]
        assert str(info.value).count("[h1]") == 1
        assert fleet.meters[1].relay_closed
        await driver.set_relay(ModbusMeter("h1", 1, HIKING), RelayAction.OPEN)
        assert not fleet.meters[1].relay_closed


async def test_meter_without_relay_switches_through_its_breaker():
    sdm120 = load_model(METERS / "eastron-sdm120.yaml")
    module = load_model(METERS / "generic-relay-module.yaml")
    async with (
        ModbusFleet(module, meters=2, port=free_port()) as fleet,
        ModbusTcpDriver("127.0.0.1", fleet.port) as driver,
    ):
        alone = ModbusMeter("s1", 1, sdm120)
        with pytest.raises(UnsupportedOperation):
            await driver.set_relay(alone, RelayAction.OPEN)
        meter = ModbusMeter("s1", 1, sdm120, breaker=ModbusMeter("s1-breaker", 2, module))
        await driver.set_relay(meter, RelayAction.OPEN)
        assert await driver.read_relay(meter) is RelayState.OPEN
        assert not fleet.meters[2].relay_closed and fleet.meters[1].relay_closed


async def test_concurrent_callers_share_one_bus():
    async with (
        ModbusFleet(GENERIC, meters=5, port=free_port()) as fleet,
        ModbusTcpDriver("127.0.0.1", fleet.port) as driver,
    ):
        meters = [ModbusMeter(f"m{u}", u, GENERIC) for u in range(1, 6)]
        readings = await asyncio.gather(*(driver.read(m) for m in meters * 4))
        assert [r.meter_id for r in readings] == [m.id for m in meters * 4]


async def test_rtu_over_tcp_socket_url():
    clock = ManualClock(START)
    port = free_port()
    fleet = ModbusFleet(GENERIC, meters=3, port=port, framer="rtu", clock=clock)
    async with fleet, ModbusRtuDriver(f"socket://127.0.0.1:{port}", timeout=0.5) as driver:
        meter = ModbusMeter("r3", 3, GENERIC)
        reading = await driver.read(meter)
        assert reading.energy_wh == fleet.meters[3].energy_wh
        await driver.set_relay(meter, RelayAction.OPEN)
        assert await driver.read_relay(meter) is RelayState.OPEN
        assert not fleet.meters[3].relay_closed
        await fleet.stop()
        with pytest.raises((ConnectError, MeterTimeout)):
            await driver.read(meter)
        await fleet.start()
        assert (await driver.read(meter)).relay is RelayState.OPEN


async def test_rtu_server_listening_on_socket_url():
    port = free_port()
    async with (
        ModbusSerialFleet(GENERIC, meters=2, port=f"socket://127.0.0.1:{port}") as fleet,
        ModbusRtuDriver(f"socket://127.0.0.1:{port}") as driver,
    ):
        await async_wait_until(
            lambda: _can_read(driver, ModbusMeter("r2", 2, GENERIC)),
            timeout=5,
            what="the RTU-over-TCP listener",
        )
        assert (await driver.read(ModbusMeter("r2", 2, GENERIC))).energy_wh <= fleet.meters[2].energy_wh


async def test_rtu_on_a_serial_pty(pty_pair):
    gateway_end, simulator_end = pty_pair
    async with (
        ModbusSerialFleet(GENERIC, meters=2, port=simulator_end, baudrate=9600) as fleet,
        ModbusRtuDriver(gateway_end, baudrate=9600, timeout=1.0) as driver,
    ):
        meter = ModbusMeter("p2", 2, GENERIC)
        assert (await driver.read(meter)).energy_wh <= fleet.meters[2].energy_wh
        await driver.set_relay(meter, RelayAction.OPEN)
        assert await driver.read_relay(meter) is RelayState.OPEN
        assert fleet.meters[1].relay_closed and not fleet.meters[2].relay_closed


async def test_a_missing_serial_port_is_a_connect_error(tmp_path):
    async with ModbusRtuDriver(str(tmp_path / "ttyNONE"), timeout=0.3) as driver:
        with pytest.raises(ConnectError):
            await driver.read(ModbusMeter("x", 1, GENERIC))


async def _can_read(driver: ModbusRtuDriver, meter: ModbusMeter) -> bool:
    try:
        await driver.read(meter)
    except (ConnectError, MeterTimeout):
        return False
    return True


async def test_an_urgent_command_goes_between_the_requests_of_a_read():
    """A relay command waits for the transaction in flight only, not for the rest of a multi-request read."""
    from simulators.faults import Fault, FaultKind

    fleet = ModbusFleet(GENERIC, meters=2, port=free_port())
    wire: list[tuple[int, int]] = []
    fleet.trace = lambda unit, pdu: wire.append((unit, pdu[0]))
    fleet.faults.add(Fault(FaultKind.SLOW, delay_s=0.1), meters=[fleet.index_of(2)])  # unit 2 answers slowly
    async with fleet, ModbusTcpDriver("127.0.0.1", fleet.port) as driver:
        slow, other = ModbusMeter("m2", 2, GENERIC), ModbusMeter("m1", 1, GENERIC)
        poll = asyncio.create_task(driver.read(slow))  # FC04 then FC02
        queued = asyncio.create_task(driver.read(other))  # a poll waiting for the bus
        await async_wait_until(lambda: wire == [(2, 4)], timeout=5, what="the first request of the poll")
        with driver.urgent():
            await driver.set_relay(other, RelayAction.OPEN)
        await asyncio.gather(poll, queued)
    assert wire[:2] == [(2, 4), (1, 5)]  # the command right after the transaction in flight
    assert sorted(wire[2:]) == [(1, 2), (1, 4), (2, 2)]  # then the polls
    assert not fleet.meters[1].relay_closed


# --- every exception code from pymodbus's own server ---------------------------------------------------------

# code -> the named reason every driver gives for it (drivers.modbus.registers.exception_reason)
EXCEPTION_REASONS = {
    1: "exception 1: illegal function (function not supported by this meter)",
    2: "exception 2: illegal data address (register not on this meter)",
    3: "exception 3: illegal data value (value not accepted by this meter)",
    4: "exception 4: server device failure (the meter failed while doing it)",
    5: "exception 5: acknowledge (accepted, still being processed: the command may yet take effect)",
    6: "exception 6: server device busy (the meter is busy, try again later)",
    8: "exception 8: memory parity error (the meter's memory check failed)",
    10: "exception 10 (0x0A): gateway path unavailable (the gateway has no path to this unit id)",
    11: "exception 11 (0x0B): gateway target device failed to respond (no answer from the unit behind the gateway)",
}


def test_the_expected_reasons_cover_every_exception_code() -> None:
    assert set(EXCEPTION_REASONS) == set(EXCEPTION_NAMES) == {int(c) for c in ExcCodes} - {7}  # 7: NAK, obsolete


AnyDriver = ModbusTcpDriver | ModbusRtuDriver


class RefusingServer:
    """pymodbus's TCP server (an independent Modbus implementation) with a generic-prepaid-shaped unit 1 that
    answers reads (``read_code``) and writes (``write_code``) with an exception code while it is set."""

    def __init__(self) -> None:
        self.read_code: ExcCodes | None = None
        self.write_code: ExcCodes | None = None
        self.writes = 0  # writes that got through

    async def action(
        self, function_code: int, start: int, address: int, count: int, registers: list[int], values: object
    ) -> ExcCodes | None:
        if values is None:
            return self.read_code
        if self.write_code is None:
            self.writes += 1
        return self.write_code

    def device(self) -> SimDevice:
        return SimDevice(
            1,
            action=self.action,
            simdata=(
                [SimData(0, values=[True] * 16, datatype=DataType.BITS)],  # coil 0: relay command
                [SimData(0, values=[True] * 16, datatype=DataType.BITS)],  # discrete 0: relay state
                [SimData(0, values=[0] * 16, datatype=DataType.REGISTERS)],
                [SimData(0, values=[0, 1000] + [0] * 14, datatype=DataType.REGISTERS)],  # input 0..15
            ),
        )


@pytest.fixture(params=["tcp", "rtu-over-tcp"])
async def refusing(request: pytest.FixtureRequest) -> AsyncIterator[tuple[RefusingServer, AnyDriver]]:
    """A ``RefusingServer`` on a real socket, and the driver for it: the TCP driver (the project's MBAP client) or
    the RTU driver (pymodbus's client, RTU framing over TCP)."""
    refusing = RefusingServer()
    port = free_port()
    framer = FramerType.SOCKET if request.param == "tcp" else FramerType.RTU
    server = ModbusTcpServer([refusing.device()], address=("127.0.0.1", port), framer=framer)
    await server.serve_forever(background=True)
    driver: AnyDriver = (
        ModbusTcpDriver("127.0.0.1", port, timeout=1.0)
        if request.param == "tcp"
        else ModbusRtuDriver(f"socket://127.0.0.1:{port}", timeout=1.0)
    )
    try:
        yield refusing, driver
    finally:
        await driver.aclose()
        await server.shutdown()


@pytest.mark.parametrize("code", sorted(EXCEPTION_REASONS))
async def test_every_exception_code_is_named_on_reads_and_relay_writes(
    refusing: tuple[RefusingServer, AnyDriver], code: int
) -> None:
    server, driver = refusing
    meter = ModbusMeter("x1", 1, GENERIC)
    assert (await driver.read(meter)).energy_wh == 1000  # the server works: exceptions only when told

    server.read_code = ExcCodes(code)
    with pytest.raises(ExceptionReply) as read:
        await driver.read(meter)
    assert (read.value.code, read.value.reasons) == (code, (EXCEPTION_REASONS[code],))
    assert read.value.reason == EXCEPTION_REASONS[code] and read.value.meter_id == "x1"
    assert f"Modbus {EXCEPTION_REASONS[code]}" in str(read.value)
    server.read_code = None

    server.write_code = ExcCodes(code)
    with pytest.raises(CommandRefused) as write:
        await driver.set_relay(meter, RelayAction.OPEN)
    refused = write.value
    assert (refused.code, refused.reasons) == (code, (EXCEPTION_REASONS[code],))
    assert refused.reason == EXCEPTION_REASONS[code]
    assert refused.meter_id == "x1" and str(refused).startswith("[x1] ") and str(refused).count("[x1]") == 1
    assert isinstance(refused.__cause__, ExceptionReply) and refused.__cause__.code == code
    assert server.writes == 0

    server.write_code = None  # the bus goes on after each refusal
    await driver.set_relay(meter, RelayAction.OPEN)
    assert server.writes == 1
