"""The Modbus drivers against the fleet simulator over real sockets (TCP, RTU over TCP, a serial pty)."""

from __future__ import annotations

import asyncio

import pytest

from drivers.base import RelayAction, RelayState
from drivers.errors import CommandRefused, ConnectError, ExceptionReply, MeterTimeout, UnsupportedOperation
from drivers.modbus import ModbusMeter, ModbusRtuDriver, ModbusTcpDriver, load_model
from drivers.modbus.models import parse_model
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
        assert info.value.reason == "Modbus exception 1 (illegal function)"
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
