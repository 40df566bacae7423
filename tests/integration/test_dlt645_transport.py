"""Driver ↔ simulator over real TCP sockets and a socat pty pair (parity N: ptys refuse parity E)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time

import pytest

from drivers.base import RelayAction, RelayState
from drivers.dlt645 import DI, Dlt645Driver, Dlt645Meter
from drivers.errors import CommandRefused, ConnectError, ExceptionReply, FrameError, MeterTimeout
from drivers.transports import SerialTransport, TcpTransport, transport_from_url
from simulators.dlt645 import Dlt645Simulator, Fault, make_meters, serve_dlt645
from simulators.faults import FaultPlan
from tests.support import async_wait_until, free_port


def meters_of(sim: Dlt645Simulator) -> list[Dlt645Meter]:
    return [Dlt645Meter(f"m{i}", m.address) for i, m in enumerate(sim.meters)]


async def test_tcp_three_meters_read_and_trip() -> None:
    sims = make_meters(3, seed=1, trip_delay_s=0.3)
    async with Dlt645Simulator(meters=sims, tcp="127.0.0.1:0") as sim:
        assert sim.tcp_port
        async with Dlt645Driver(TcpTransport("127.0.0.1", sim.tcp_port), timeout=0.5) as driver:
            meters = meters_of(sim)
            readings = [await driver.read(m) for m in meters]
            assert [r.meter_id for r in readings] == ["m0", "m1", "m2"]
            for s, r in zip(sim.meters, readings, strict=True):
                assert abs(s.energy_wh - r.energy_wh) < 20 and r.relay is RelayState.CLOSED
            await driver.set_relay(meters[1], RelayAction.OPEN)
            assert sim.meters[1].commanded_trip and not sim.meters[1].relay_open  # bit 6 first
            await async_wait_until(lambda: _is_open(driver, meters[1]), timeout=5, what="bit 4 set")
            assert await driver.read_relay(meters[0]) is RelayState.CLOSED
            await driver.set_relay(meters[1], RelayAction.CLOSE)
            assert await driver.read_relay(meters[1]) is RelayState.CLOSED


async def _is_open(driver: Dlt645Driver, meter: Dlt645Meter) -> bool:
    return await driver.read_relay(meter) is RelayState.OPEN


async def test_tcp_refusals_and_faults() -> None:
    async with (
        Dlt645Simulator(meters=2, tcp="127.0.0.1:0") as sim,
        Dlt645Driver(TcpTransport("127.0.0.1", sim.tcp_port or 0), timeout=0.2, retries=1) as driver,
    ):
        m0, m1 = meters_of(sim)
        await driver.protect(m0)
        with pytest.raises(CommandRefused) as info:
            await driver.set_relay(m0, RelayAction.OPEN)
        # ERR 01 "other error" on the wire; status word 3 (bit 12) says why
        assert (info.value.code, info.value.reasons) == (0x01, ("meter in protect state (保电)",))
        assert info.value.reason == "meter in protect state (保电)"
        sim.meters[1].passwords = {2: "111111"}
        with pytest.raises(CommandRefused) as info:
            await driver.set_relay(m1, RelayAction.OPEN)
        assert info.value.reason == "wrong password / not authorised"
        assert (info.value.code, info.value.reasons) == (0x04, ("wrong password / not authorised",))

        sim.meters[0].inject(Fault.SILENCE)
        with pytest.raises(MeterTimeout):
            await driver.read_data(m0, DI.VOLTAGE_A)
        assert await driver.read_data(m1, DI.VOLTAGE_A)  # the other meter on the bus is unaffected
        sim.meters[0].inject(Fault.GARBAGE)
        with pytest.raises(FrameError):
            await driver.read_data(m0, DI.VOLTAGE_A)
        sim.meters[0].inject(Fault.BAD_CHECKSUM, count=1)  # the retry succeeds
        assert await driver.read_data(m0, DI.VOLTAGE_A)
        sim.meters[0].inject(Fault.SLOW, count=1, delay=0.3)  # late reply, discarded by the retry
        assert await driver.read_data(m0, DI.VOLTAGE_A)
        sim.meters[0].clear_fault()


async def test_tcp_reconnects_after_the_converter_restarts() -> None:
    sim = Dlt645Simulator(meters=1, tcp="127.0.0.1:0")
    await sim.start()
    port = sim.tcp_port or 0
    driver = Dlt645Driver(TcpTransport("127.0.0.1", port, connect_timeout=1), timeout=0.3, retries=0)
    (meter,) = meters_of(sim)
    try:
        assert await driver.read_data(meter, DI.VOLTAGE_A)
        await sim.stop()
        with pytest.raises((ConnectError, MeterTimeout)):
            await driver.read_data(meter, DI.VOLTAGE_A)
        with pytest.raises(ConnectError):
            await driver.read_data(meter, DI.VOLTAGE_A)
        sim2 = Dlt645Simulator(meters=1, tcp=f"127.0.0.1:{port}")
        async with sim2:
            assert await driver.read_data(meter, DI.VOLTAGE_A)
    finally:
        await driver.aclose()


async def test_broadcast_time_over_tcp() -> None:
    async with (
        Dlt645Simulator(meters=3, tcp="127.0.0.1:0") as sim,
        Dlt645Driver(TcpTransport("127.0.0.1", sim.tcp_port or 0)) as driver,
    ):
        target = dt.datetime.now(dt.UTC) + dt.timedelta(days=2)
        await driver.broadcast_time(target)
        expected = target.astimezone(driver.meter_timezone).replace(tzinfo=None)
        await async_wait_until(
            lambda: all(abs(m.local_now() - expected) < dt.timedelta(seconds=5) for m in sim.meters),
            timeout=5,
            what="meter clocks set",
        )


async def test_socket_url_through_the_serial_transport() -> None:
    async with Dlt645Simulator(meters=1, tcp="127.0.0.1:0") as sim:
        transport = transport_from_url(f"socket://127.0.0.1:{sim.tcp_port}")
        assert isinstance(transport, SerialTransport)
        async with Dlt645Driver(transport) as driver:
            assert (await driver.read(meters_of(sim)[0])).energy_wh > 0
    assert isinstance(transport_from_url("tcp://10.0.0.5:4001"), TcpTransport)


@pytest.mark.tool("socat")
async def test_pty_pair(pty_pair: tuple[str, str]) -> None:
    gateway_end, simulator_end = pty_pair
    async with Dlt645Simulator(meters=3, serial=simulator_end, baud=9600) as sim:
        transport = SerialTransport(gateway_end, baudrate=9600, parity="N")
        async with Dlt645Driver(transport, timeout=0.5) as driver:
            meters = meters_of(sim)
            for meter in meters:
                reading = await driver.read(meter)
                assert reading.relay is RelayState.CLOSED and reading.energy_wh > 0
            await driver.set_relay(meters[2], RelayAction.OPEN)
            assert await driver.read_relay(meters[2]) is RelayState.OPEN
            assert await driver.read_relay(meters[0]) is RelayState.CLOSED


@pytest.mark.tool("socat")
async def test_pty_parity_e_is_a_connect_error(pty_pair: tuple[str, str]) -> None:
    with pytest.raises(ConnectError):
        await SerialTransport(pty_pair[0], parity="E").open()


async def test_missing_port_is_a_connect_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConnectError):
        await Dlt645Driver(SerialTransport(str(tmp_path / "nope")), retries=0).read_data(
            Dlt645Meter("m", "1"), DI.VOLTAGE_A
        )


@pytest.mark.tool("socat")
async def test_pace_emulates_the_line(pty_pair: tuple[str, str]) -> None:
    gateway_end, simulator_end = pty_pair
    async with (
        Dlt645Simulator(meters=1, serial=simulator_end, baud=2400, pace=True, td=(0.05, 0.05)) as sim,
        Dlt645Driver(SerialTransport(gateway_end, parity="N"), timeout=1.0) as driver,
    ):
        meter = meters_of(sim)[0]
        start = time.monotonic()
        await driver.read_data(meter, DI.ENERGY_FORWARD_TOTAL)
        elapsed = time.monotonic() - start
    # 16 request + 4 FE + 20 reply bytes at 11 bits / 2400 bd = 183 ms, plus Td 50 ms
    assert 0.2 <= elapsed < 0.9


async def test_concurrent_reads_take_turns_on_the_bus() -> None:
    async with (
        Dlt645Simulator(meters=4, tcp="127.0.0.1:0") as sim,
        Dlt645Driver(TcpTransport("127.0.0.1", sim.tcp_port or 0)) as driver,
    ):
        readings = await asyncio.gather(*(driver.read(m) for m in meters_of(sim)))
        assert len({r.meter_id for r in readings}) == 4


async def test_serve_dlt645_runs_until_cancelled() -> None:
    port = free_port()
    task = asyncio.create_task(
        serve_dlt645(
            meters=2, serial=None, tcp=f"127.0.0.1:{port}", baud=2400, pace=False, seed=5, first_address=7
        ),
        name="test.serve_dlt645",
    )
    try:
        async with Dlt645Driver(TcpTransport("127.0.0.1", port), timeout=0.5) as driver:
            await async_wait_until(
                lambda: _answers(driver, Dlt645Meter("m", "8")), timeout=5, what="simulator up"
            )
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    with pytest.raises(ValueError):
        await serve_dlt645(meters=1, serial=None, tcp=None, baud=2400, pace=False, seed=0)


async def _answers(driver: Dlt645Driver, meter: Dlt645Meter) -> bool:
    try:
        return (await driver.read(meter)).energy_wh > 0
    except ConnectError:
        return False


async def test_shared_fault_plan_on_the_wire() -> None:
    plan = FaultPlan.parse("exception:4@0; no-answer@1; bad-crc@2")
    async with (
        Dlt645Simulator(meters=4, tcp="127.0.0.1:0", faults=plan) as sim,
        Dlt645Driver(TcpTransport("127.0.0.1", sim.tcp_port or 0), timeout=0.2, retries=0) as driver,
    ):
        m0, m1, m2, m3 = meters_of(sim)
        with pytest.raises(ExceptionReply) as info:
            await driver.read_data(m0, DI.VOLTAGE_A)
        assert info.value.code == 4
        with pytest.raises(MeterTimeout):
            await driver.read_data(m1, DI.VOLTAGE_A)
        with pytest.raises(FrameError):
            await driver.read_data(m2, DI.VOLTAGE_A)
        assert await driver.read_data(m3, DI.VOLTAGE_A)
        sim.faults.clear()
        assert await driver.read_data(m1, DI.VOLTAGE_A)
