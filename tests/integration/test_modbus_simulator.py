"""The fleet simulator as programs see it: serve_modbus (the CLI's entry point) and an independent master."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys

import pytest

from drivers.base import RelayState
from drivers.errors import ConnectError, ExceptionReply, MeterTimeout
from drivers.modbus import ModbusMeter, ModbusTcpDriver, load_model
from simulators.faults import NO_FAULT, parse_faults
from simulators.modbus import DEFAULT_MODEL_PATH, MAX_UNITS, ModbusFleet, ModbusSerialFleet, serve_modbus
from tests.conftest import REPO_ROOT
from tests.support import async_wait_until, free_port, require_tool

GENERIC = load_model(DEFAULT_MODEL_PATH)


def two_free_ports() -> int:
    """A port P such that P and P + 1 are both free now."""
    for _ in range(50):
        port = free_port()
        with contextlib.suppress(OSError), socket.socket() as s:
            s.bind(("127.0.0.1", port + 1))
            return port
    pytest.fail("no two consecutive free ports")


async def readable(driver: ModbusTcpDriver, meter: ModbusMeter) -> bool:
    try:
        await driver.read(meter)
    except (ConnectError, MeterTimeout, ExceptionReply):
        return False
    return True


async def test_serve_modbus_runs_until_cancelled_and_spreads_units_over_ports():
    port = two_free_ports()
    meters = MAX_UNITS + 3  # 247 unit ids on the first port, 3 on the next
    task = asyncio.create_task(
        serve_modbus(model_path=None, meters=meters, host="127.0.0.1", port=port, seed=1, speed=60.0),
        name="test.serve_modbus",
    )
    try:
        async with ModbusTcpDriver("127.0.0.1", port + 1, timeout=0.5) as second:
            last = ModbusMeter("last", 3, GENERIC)
            await async_wait_until(lambda: readable(second, last), timeout=10, what="the second port")
            async with ModbusTcpDriver("127.0.0.1", port, timeout=0.5) as first:
                reading = await first.read(ModbusMeter("first", MAX_UNITS, GENERIC))
                assert reading.relay is RelayState.CLOSED
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    async with ModbusTcpDriver("127.0.0.1", port, timeout=0.5) as driver:
        with pytest.raises(ConnectError):
            await driver.read(ModbusMeter("gone", 1, GENERIC))


async def test_fleet_refuses_more_unit_ids_than_modbus_has():
    with pytest.raises(ValueError, match=r"1\.\.247"):
        ModbusFleet(GENERIC, meters=MAX_UNITS + 1, port=free_port())


async def test_a_busy_port_is_an_os_error():
    async with ModbusFleet(GENERIC, meters=1, port=free_port()) as fleet:
        with pytest.raises(OSError, match="cannot serve"):
            await ModbusFleet(GENERIC, meters=1, port=fleet.port).start()


async def test_mbpoll_reads_and_switches_a_simulated_meter():
    """An independent master (Debian's mbpoll) sees the documented generic-prepaid map."""
    mbpoll = require_tool("mbpoll")
    async with ModbusFleet(GENERIC, meters=2, port=free_port()) as fleet:
        sim = fleet.meters[2]
        sim.set_power_w(-1234)

        async def run(*args: str) -> str:
            proc = await asyncio.create_subprocess_exec(
                mbpoll,
                "-m",
                "tcp",
                "-p",
                str(fleet.port),
                "-a",
                "2",
                "-0",
                "-1",
                "-o",
                "2",
                *args,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            out, _ = await asyncio.wait_for(proc.communicate(), 20)
            assert proc.returncode == 0, out.decode()
            return out.decode()

        energy_before = sim.energy_wh
        out = await run("-t", "3:int", "-B", "-r", "0", "-c", "1", "127.0.0.1")
        energy = int(out.split("[0]:")[1].split()[0])
        assert energy_before <= energy <= sim.energy_wh
        out = await run("-t", "3:int", "-B", "-r", "12", "-c", "1", "127.0.0.1")
        assert "[12]: \t-1234" in out
        await run("-t", "0", "-r", "0", "127.0.0.1", "0")  # FC05 coil 0 := 0, open the relay
        assert not sim.relay_closed
        out = await run("-t", "1", "-r", "0", "-c", "1", "127.0.0.1")
        assert "[0]: \t0" in out


async def test_mbpoll_reads_and_switches_a_simulated_meter_over_rtu_on_a_pty(pty_pair):
    """The same, over RTU: mbpoll on one end of a socat pty pair, the simulator on the other."""
    mbpoll = require_tool("mbpoll")
    master_end, simulator_end = pty_pair
    async with ModbusSerialFleet(GENERIC, meters=3, port=simulator_end, baudrate=19200, pace=True) as fleet:
        sim = fleet.meters[3]
        sim.set_power_w(4321)

        async def run(*args: str) -> str:
            proc = await asyncio.create_subprocess_exec(
                mbpoll, "-m", "rtu", "-b", "19200", "-P", "none", "-a", "3", "-0", "-1", "-o", "2", *args,
                master_end, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
            out, _ = await asyncio.wait_for(proc.communicate(), 20)
            assert proc.returncode == 0, out.decode()
            return out.decode()

        out = await run("-t", "3:int", "-B", "-r", "12", "-c", "1")
        assert "[12]: \t4321" in out
        before = sim.energy_wh
        out = await run("-t", "3:int", "-B", "-r", "0", "-c", "1")
        assert before <= int(out.split("[0]:")[1].split()[0]) <= sim.energy_wh
        proc = await asyncio.create_subprocess_exec(
            mbpoll, "-m", "rtu", "-b", "19200", "-P", "none", "-a", "3", "-0", "-1", "-o", "2", "-t", "0", "-r",
            "0", master_end, "0", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out_bytes, _ = await asyncio.wait_for(proc.communicate(), 20)
        assert proc.returncode == 0, out_bytes.decode()
        assert not sim.relay_closed and fleet.meters[1].relay_closed
        out = await run("-t", "1", "-r", "0", "-c", "1")
        assert "[0]: \t0" in out


async def test_the_cli_serves_more_than_247_meters_with_faults(tmp_path):
    port = two_free_ports()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "simulate", "modbus", "--meters", "300", "--per-port", "150",
        "--port", str(port), "--faults", "no-answer@151; exception:6@0", cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        async with ModbusTcpDriver("127.0.0.1", port + 1, timeout=0.3) as second:
            last = ModbusMeter("last", 150, GENERIC)  # meter 299: the last unit id of the second port
            await async_wait_until(lambda: readable(second, last), timeout=20, what="the second port")
            with pytest.raises(MeterTimeout):  # meter 151 = unit 2 of the second port
                await second.read(ModbusMeter("dead", 2, GENERIC))
        async with ModbusTcpDriver("127.0.0.1", port, timeout=0.3) as first:
            with pytest.raises(ExceptionReply) as info:  # meter 0 = unit 1 of the first port
                await first.read(ModbusMeter("busy", 1, GENERIC))
            assert info.value.code == 6
            assert (await first.read(ModbusMeter("ok", 150, GENERIC))).energy_wh > 0
    finally:
        proc.terminate()
        out, _ = await asyncio.wait_for(proc.communicate(), 20)
    assert b"serving 300 simulated meters" in out


async def test_the_cli_refuses_a_bad_fault_rule():
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "simulate", "modbus", "--faults", "sometimes@1", cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2 and b"fault rule 'sometimes@1'" in out


def test_the_server_applies_no_answer_before_and_mute_after_executing():
    """``ModbusServer.respond`` without sockets: what each fault does to a relay write, and the relay log."""
    fleet = ModbusFleet(GENERIC, meters=3, port=free_port(), faults=parse_faults("no-answer@0; mute@1"))
    server = fleet._new_server()
    trip = bytes.fromhex("0500000000")  # FC05 coil 0 := OFF, the generic model's trip
    assert server.respond(1, trip)[0] is None and fleet.meters[1].relay_closed  # not heard
    answer, fault = server.respond(2, trip)
    assert answer is None and fault.mute and not fleet.meters[2].relay_closed  # executed, answer dropped
    assert server.respond(3, trip)[0] == trip and not fleet.meters[3].relay_closed
    assert server.respond(0, bytes.fromhex("050000FF00")) == (None, NO_FAULT)  # broadcast close
    assert fleet.meters[2].relay_closed and fleet.meters[3].relay_closed
    assert server.respond(3, bytes.fromhex("0600000001"))[0] == bytes.fromhex("8602")  # a register: not the relay
    assert server.respond(3, bytes.fromhex("0F000000010101"))[0] == bytes.fromhex("8F01")  # FC15: the model wants FC05
    log = [(e.id, e.asked, e.executed, e.reason, e.reply) for e in fleet.relay_log.since()]
    port = fleet.port
    assert log == [
        (f"{port}/1", "trip", False, "no-answer", "none"), (f"{port}/2", "trip", True, None, "lost"),
        (f"{port}/3", "trip", True, None, "sent"), (f"{port}/1", "close", False, "no-answer", "none"),
        (f"{port}/2", "close", True, None, "lost"), (f"{port}/3", "close", True, None, "lost"),
        (f"{port}/3", "close", False, "bad-function", "sent"),
    ]
