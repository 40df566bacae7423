"""The simulators as a test bench drives them: real processes, real sockets, the project's own drivers.

One ``meter-gateway simulate dlt645`` process (every new option: --faults --speed --protect --close-allowed
--trip-delay --control) and one ``meter-gateway simulate modbus --control`` process serve the whole module; each
test uses its own meters. The control interface is driven with ``simulators.control_client.SimulatorControl``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import http.client
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from drivers.base import RelayAction, RelayState
from drivers.dlt645 import Dlt645Driver, Dlt645Meter, ErrorBits, RemoteCommand
from drivers.errors import CommandRefused, MeterTimeout
from drivers.modbus import ModbusMeter, ModbusTcpDriver, load_models
from drivers.transports import TcpTransport
from simulators.control import ControlServer
from simulators.control_client import AsyncSimulatorControl, ControlError, SimulatorControl
from simulators.dlt645 import serve_dlt645
from simulators.faults import FaultPlan
from simulators.modbus import ModbusFleet
from simulators.modbus.handle import modbus_handles
from tests.conftest import REPO_ROOT
from tests.support import async_wait_until, free_port, wait_for_port

MODELS = load_models(REPO_ROOT / "config" / "meters")
GENERIC = MODELS["generic-prepaid"]
RELAY_OPEN, COMMAND_TRIP, PROTECTED = 1 << 4, 1 << 6, 1 << 12  # status word 3 (protocols.md §1.8)
TRIP_DELAY_S = 1.0
# --speed 10 runs the meters' clocks ten times faster: give commands a validity the test cannot outrun
VALIDITY = dt.timedelta(hours=6)


@dataclass
class Running:
    """A simulator process: its protocol port and its control client."""

    port: int
    control: SimulatorControl
    base_url: str


@contextlib.contextmanager
def cli(log: Path, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "simulate", *args], cwd=REPO_ROOT,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def dlt645(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """Seven meters: 0 normal, 1 mute, 2 no-answer, 3 protected, 4-6 for runtime faults; close-allowed relays."""
    port, control = free_port(), free_port()
    log = tmp_path_factory.mktemp("dlt645") / "simulator.log"
    with cli(log, "dlt645", "--tcp", f"127.0.0.1:{port}", "--meters", "7", "--faults", "mute@1; no-answer@2",
             "--speed", "10", "--protect", "3", "--close-allowed", "--trip-delay", str(TRIP_DELAY_S),
             "--control", f"127.0.0.1:{control}") as proc:
        try:
            wait_for_port(port)
            wait_for_port(control)
        except BaseException:
            proc.terminate()
            print(log.read_text())
            raise
        yield Running(port, SimulatorControl(f"http://127.0.0.1:{control}"), f"http://127.0.0.1:{control}")
    assert "close-allowed waits for the button" in log.read_text()


@pytest.fixture(scope="module")
def modbus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    port, control = free_port(), free_port()
    log = tmp_path_factory.mktemp("modbus") / "simulator.log"
    with cli(log, "modbus", "--port", str(port), "--meters", "4", "--faults", "mute@1; no-answer@2",
             "--control", f"127.0.0.1:{control}"):
        wait_for_port(port)
        wait_for_port(control)
        yield Running(port, SimulatorControl(f"http://127.0.0.1:{control}"), f"http://127.0.0.1:{control}")


def dlt645_driver(sim: Running, **options: object) -> Dlt645Driver:
    """The driver as ``gateway.bootstrap.build_bus`` builds it for a ``dlt645-tcp`` bus."""
    return Dlt645Driver(TcpTransport("127.0.0.1", sim.port), timeout=0.4, retries=0, command_validity=VALIDITY,
                        **options)  # type: ignore[arg-type]


def meter(index: int) -> Dlt645Meter:
    return Dlt645Meter(f"m{index}", f"{index + 1:012d}")


def writes(sim: Running, index: int, since: int = 0) -> list[tuple[str, bool, str | None, str]]:
    return [(e["asked"], e["executed"], e["reason"], e["reply"]) for e in sim.control.relay_log(since, meter=index)]


# --- DL/T 645 -------------------------------------------------------------------------------------------------


async def test_dlt645_cli_options_show_in_the_control_interface(dlt645: Running) -> None:
    meters = dlt645.control.meters()
    assert [m["id"] for m in meters] == [f"{i:012d}" for i in range(1, 8)]
    assert [m["index"] for m in meters] == list(range(7))
    assert meters[1]["mute"] and meters[1]["faults"] == ["mute"] and meters[2]["silent"]
    assert [m["protect"] for m in meters] == [False, False, False, True, False, False, False]
    assert all(m["close_allowed"] and m["trip_delay_s"] == TRIP_DELAY_S for m in meters)
    assert all(m["relay"] == "closed" and m["protocol"] == "dlt645" for m in meters)
    assert dlt645.control.meter("000000000004")["index"] == 3  # by address or by index
    assert dlt645.control.meter(3)["status_word_3"] == "0x1200"  # bit 12 保电, bits 8-9 money-type prepaid
    assert dlt645.control.info()["protocol"] == "dlt645"


async def test_trip_delay_bit6_then_bit4_and_close_allowed_waits_for_the_button(dlt645: Running) -> None:
    m0, control = meter(0), dlt645.control
    async with dlt645_driver(dlt645, close_command=RemoteCommand.CLOSE_ALLOWED) as driver:
        await driver.set_relay(m0, RelayAction.OPEN)
        word = await driver.read_status_word_3(m0)
        assert word & COMMAND_TRIP and not word & RELAY_OPEN  # commanded at once, contact still closed
        assert control.meter(0)["relay"] == "closed" and control.meter(0)["relay_commanded"] == "open"

        async def opened() -> bool:
            return bool(await driver.read_status_word_3(m0) & RELAY_OPEN)

        await async_wait_until(opened, timeout=5, what="bit 4 after the trip delay")
        assert control.meter(0)["relay"] == "open"

        await driver.set_relay(m0, RelayAction.CLOSE)  # close_command allowed: 1BH, answered normally
        word = await driver.read_status_word_3(m0)
        assert not word & COMMAND_TRIP and word & RELAY_OPEN  # commanded closed, contact open: armed
        assert await driver.read_relay(m0) is not RelayState.CLOSED  # (the driver may call it armed)
        assert control.meter(0)["awaiting_button"]
        pressed = control.press_button(0)
        assert pressed["button_closed"] and pressed["relay"] == "closed" and not pressed["awaiting_button"]
        assert await driver.read_relay(m0) is RelayState.CLOSED
        assert not control.press_button("000000000001")["button_closed"]  # nothing armed any more
    assert writes(dlt645, 0) == [("trip", True, None, "sent"), ("close-allowed", True, None, "sent")]


async def test_protect_refuses_trips_with_error_bit_0_and_status_bit_12(dlt645: Running) -> None:
    m3 = meter(3)
    async with dlt645_driver(dlt645) as driver:
        assert await driver.read_status_word_3(m3) & PROTECTED
        with pytest.raises(CommandRefused) as info:
            await driver.set_relay(m3, RelayAction.OPEN)
        assert info.value.code is not None and info.value.code & ErrorBits.OTHER
        assert dlt645.control.meter(3)["relay"] == "closed"
        await driver.protect_release(m3)  # 3BH switches it off ...
        assert not await driver.read_status_word_3(m3) & PROTECTED
        assert dlt645.control.meter(3)["protect"] is False
        await driver.protect(m3)  # ... 3AH on again
        assert dlt645.control.meter(3)["protect"] is True
        dlt645.control.protect(3, on=False)  # and so does the control interface
        await driver.set_relay(m3, RelayAction.OPEN)
        assert await driver.read_status_word_3(m3) & COMMAND_TRIP
        dlt645.control.protect(3)
        assert await driver.read_status_word_3(m3) & PROTECTED
    assert writes(dlt645, 3) == [("trip", False, "protect", "sent"), ("protect-release", True, None, "sent"),
                                 ("protect", True, None, "sent"), ("trip", True, None, "sent")]


async def test_mute_executes_the_trip_but_its_reply_is_lost(dlt645: Running) -> None:
    m1 = meter(1)
    since = dlt645.control.info()["relay_writes"]
    async with dlt645_driver(dlt645) as driver:
        with pytest.raises(MeterTimeout):
            await driver.set_relay(m1, RelayAction.OPEN)
        assert dlt645.control.meter(1)["relay_commanded"] == "open"
        await async_wait_until(lambda: dlt645.control.meter(1)["relay"] == "open", timeout=5, what="contact open")
        dlt645.control.mute(1, on=False)
        assert await driver.read_relay(m1) is RelayState.OPEN
        dlt645.control.mute(1)
    assert writes(dlt645, 1, since) == [("trip", True, None, "lost")]


async def test_no_answer_executes_nothing(dlt645: Running) -> None:
    m2 = meter(2)
    async with dlt645_driver(dlt645) as driver:
        with pytest.raises(MeterTimeout):
            await driver.set_relay(m2, RelayAction.OPEN)
        snapshot = dlt645.control.meter(2)
        assert snapshot["relay"] == "closed" and snapshot["relay_commanded"] == "closed"
        dlt645.control.revive(2)
        assert await driver.read_status_word_3(m2) & (COMMAND_TRIP | RELAY_OPEN) == 0
        dlt645.control.silence(2)
        with pytest.raises(MeterTimeout):
            await driver.read_relay(m2)
    assert writes(dlt645, 2) == [("trip", False, "no-answer", "none")]


async def test_relay_stuck_and_runtime_changes(dlt645: Running) -> None:
    m4, control = meter(4), dlt645.control
    control.stick(4)
    control.set_trip_delay(4, 0)
    control.set_power(4, 1500)
    async with dlt645_driver(dlt645) as driver:
        await driver.set_relay(m4, RelayAction.OPEN)  # acknowledged ...
        assert await driver.read_status_word_3(m4) & (COMMAND_TRIP | RELAY_OPEN) == 0  # ... nothing moved
        assert control.meter(4)["stuck"] and control.meter(4)["relay"] == "closed"
        control.stick(4, on=False)
        control.set_energy(4, 1_234_560)
        reading = await driver.read(m4)
        assert 1_234_560 <= reading.energy_wh < 1_234_560 + 100 and reading.power_w == pytest.approx(1500, abs=1)
        await driver.set_relay(m4, RelayAction.OPEN)
        assert await driver.read_relay(m4) is RelayState.OPEN  # trip delay 0: opens at once
        await driver.set_relay(m4, RelayAction.CLOSE)  # 1CH direct close closes at once, even close-allowed
        assert await driver.read_relay(m4) is RelayState.CLOSED
        control.fault(4, "slow", seconds=0.2)
        start = time.monotonic()
        assert await driver.read_relay(m4) is RelayState.CLOSED
        assert time.monotonic() - start >= 0.2
        assert control.meter(4)["slow_s"] == 0.2
        control.clear_faults(4)
        assert control.meter(4)["faults"] == []
    assert writes(dlt645, 4) == [("trip", False, "stuck", "sent"), ("trip", True, None, "sent"),
                                 ("close", True, None, "sent")]


async def test_dlt645_relay_log_order_and_since(dlt645: Running) -> None:
    m5, control = meter(5), dlt645.control
    since = control.info()["relay_writes"]
    async with dlt645_driver(dlt645, password="999999") as wrong, dlt645_driver(dlt645) as driver:
        with pytest.raises(CommandRefused):
            await wrong.set_relay(m5, RelayAction.OPEN)
        await driver.alarm(m5)
        await driver.alarm_release(m5)
    entries = control.relay_log(since, meter=5)
    assert [(e["asked"], e["reason"]) for e in entries] == [("trip", "password"), ("alarm", None),
                                                            ("alarm-release", None)]
    assert [e["index"] for e in entries] == sorted(e["index"] for e in entries) and entries[0]["index"] > since
    assert entries[0]["id"] == "000000000006" and entries[0]["protocol"] == "dlt645"
    assert entries[0]["detail"]["n1"] == "1AH" and entries[0]["time"].endswith("+00:00")
    assert dt.datetime.fromisoformat(entries[0]["time"]) <= dt.datetime.now(dt.UTC)
    assert control.relay_log(entries[-1]["index"]) == []


async def test_the_control_interface_answers_errors_and_keeps_running(dlt645: Running) -> None:
    control = dlt645.control
    cases = [
        (lambda: control.meter(99), 404), (lambda: control.meter("999999999999"), 404),
        (lambda: control.fault(6, "sometimes"), 400), (lambda: control.fault(6, "slow"), 400),
        (lambda: control.set_energy(6, -1), 400), (lambda: control.request("DELETE", "/meters"), 405),
        (lambda: control.request("GET", "/nowhere"), 404), (lambda: control.request("GET", "/relay-log?since=x"), 400),
    ]
    for call, status in cases:
        with pytest.raises(ControlError) as info:
            call()
        assert info.value.status == status, info.value
    # bad JSON, a non-object body and a broken request line over one raw connection each
    host, port = dlt645.base_url.removeprefix("http://").split(":")
    for body in (b"{bad", b"[1, 2]"):
        conn = http.client.HTTPConnection(host, int(port), timeout=5)
        conn.request("POST", "/meters/6/energy", body=body)
        answer = conn.getresponse()
        assert answer.status == 400 and "error" in json.loads(answer.read())
        conn.close()
    raw_cases = [
        (b"NONSENSE\r\n\r\n", b"400"),
        (b"GET / HTTP/1.1\r\nX: " + b"x" * 20_000 + b"\r\n\r\n", b"431"),
        (b"POST /meters/6/energy HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n", b"413"),
        (b"POST /meters/6/energy HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", b"411"),
    ]
    for request, status in raw_cases:
        with socket.create_connection((host, int(port)), timeout=5) as raw:
            raw.sendall(request)
            assert raw.recv(1000).startswith(b"HTTP/1.1 " + status)
    # keep-alive: several requests on one connection
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    for _ in range(3):
        conn.request("GET", "/meters/6")
        assert json.loads(conn.getresponse().read())["index"] == 6
    conn.close()
    assert len(control.meters()) == 7


async def test_external_relays_close_on_1bh_in_process() -> None:
    """Without --close-allowed, 1BH (a driver configured close_command: allowed) closes at once; the async client
    drives a simulator on the test's own event loop."""
    port, control_port = free_port(), free_port()
    started = asyncio.Event()
    task = asyncio.create_task(serve_dlt645(meters=2, serial=None, tcp=f"127.0.0.1:{port}", baud=2400, pace=False,
                                            seed=1, control=f"127.0.0.1:{control_port}", started=started))
    try:
        await asyncio.wait_for(started.wait(), 10)
        control = AsyncSimulatorControl(f"http://127.0.0.1:{control_port}")
        sim = Running(port, control.sync, "")
        async with dlt645_driver(sim, close_command=RemoteCommand.CLOSE_ALLOWED) as driver:
            await driver.set_relay(meter(1), RelayAction.OPEN)
            assert (await control.meter(1))["relay"] == "open"
            await driver.set_relay(meter(1), RelayAction.CLOSE)
            snapshot = await control.meter(1)
            assert snapshot["relay"] == "closed" and not snapshot["close_allowed"] and not snapshot["awaiting_button"]
        assert [e["asked"] for e in await control.relay_log()] == ["trip", "close-allowed"]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_the_dlt645_cli_refuses_bad_options() -> None:
    async def run(*args: str) -> tuple[int | None, bytes]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.cli", "simulate", "dlt645", "--tcp", "127.0.0.1:1", "--meters", "2", *args,
            cwd=REPO_ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
        return proc.returncode, out

    results = await asyncio.gather(run("--faults", "sometimes@1"), run("--protect", "2"), run("--control", "nowhere"))
    assert [code for code, _ in results] == [2, 2, 2]
    assert b"fault rule 'sometimes@1'" in results[0][1] and b"--protect" in results[1][1]
    assert b"--control" in results[2][1]


# --- Modbus ---------------------------------------------------------------------------------------------------


def unit(index: int) -> ModbusMeter:
    return ModbusMeter(f"u{index}", index + 1, GENERIC)


async def test_modbus_control_names_meters_by_port_and_unit(modbus: Running) -> None:
    meters = modbus.control.meters()
    assert [m["id"] for m in meters] == [f"{modbus.port}/{u}" for u in range(1, 5)]
    assert meters[1]["mute"] and meters[2]["silent"] and meters[0]["protect"] is None
    modbus.control.set_energy(f"{modbus.port}/1", 4_242_000)
    modbus.control.set_power(0, -250)
    async with ModbusTcpDriver("127.0.0.1", modbus.port, timeout=0.3) as driver:
        reading = await driver.read(unit(0))
        assert 4_242_000 <= reading.energy_wh < 4_242_100 and reading.power_w == -250
    for call in (lambda: modbus.control.protect(0), lambda: modbus.control.press_button(0)):
        with pytest.raises(ControlError) as info:
            call()
        assert info.value.status == 400


async def test_modbus_mute_no_answer_stuck_and_the_relay_log(modbus: Running) -> None:
    control = modbus.control
    since = control.info()["relay_writes"]
    control.stick(3)
    async with ModbusTcpDriver("127.0.0.1", modbus.port, timeout=0.3) as driver:
        await driver.set_relay(unit(0), RelayAction.OPEN)
        with pytest.raises(MeterTimeout):
            await driver.set_relay(unit(1), RelayAction.OPEN)  # mute: executed, the echo is lost
        with pytest.raises(MeterTimeout):
            await driver.set_relay(unit(2), RelayAction.OPEN)  # no-answer: not heard
        await driver.set_relay(unit(3), RelayAction.OPEN)  # stuck: echoed, nothing moves
        assert await driver.read_relay(unit(0)) is RelayState.OPEN
        assert await driver.read_relay(unit(3)) is RelayState.CLOSED
        await driver.set_relay(unit(0), RelayAction.CLOSE)
    relays = [m["relay"] for m in control.meters()]
    assert relays == ["closed", "open", "closed", "closed"]
    log = control.relay_log(since)
    assert [(e["meter"], e["asked"], e["executed"], e["reason"], e["reply"]) for e in log] == [
        (0, "trip", True, None, "sent"),
        (1, "trip", True, None, "lost"),
        (2, "trip", False, "no-answer", "none"),
        (3, "trip", False, "stuck", "sent"),
        (0, "close", True, None, "sent"),
    ]
    assert log[0]["id"] == f"{modbus.port}/1" and log[0]["detail"] == {"function": 5, "address": 0, "value": 0}
    assert [e["index"] for e in control.relay_log(since=log[2]["index"])] == [log[3]["index"], log[4]["index"]]
    assert [e["asked"] for e in control.relay_log(since, meter=f"{modbus.port}/1")] == ["trip", "close"]


def test_routes_without_sockets() -> None:
    """``ControlServer.handle`` directly: names, fraction-selected faults switched off, every error an answer."""
    fleet = ModbusFleet(GENERIC, meters=3, port=5020, faults=FaultPlan.parse("no-answer@100%"))
    server = ControlServer(modbus_handles([fleet]), fleet.faults, fleet.relay_log, protocol="modbus")

    def post(path: str, body: object) -> tuple[int, dict[str, object]]:
        return server.handle("POST", path, json.dumps(body).encode())

    assert server.handle("GET", "/meters/5020%2F2", b"")[1]["index"] == 1  # type: ignore[index]
    assert server.handle("GET", "/meters/5020/2", b"")[1]["silent"] is True  # type: ignore[index]
    status, answer = post("/meters/1/fault", {"kind": "no-answer", "on": False})  # revive one of a fraction
    assert status == 200 and answer["silent"] is False and not fleet.faults.reply(1).silent
    assert fleet.faults.reply(0).silent and fleet.faults.reply(2).silent
    assert post("/meters/2/fault", {"kind": "all", "on": False})[1]["faults"] == []
    assert post("/meters/0/fault", {"kind": "exception", "code": 6})[1]["faults"] == ["no-answer", "exception:6"]
    assert post("/meters/0/power", {"watts": 100})[1]["power_w"] == 100
    assert post("/meters/0/power", {"watts": None})[0] == 200
    assert post("/meters/0/trip-delay", {"seconds": 2.5})[1]["trip_delay_s"] == 2.5
    errors = [
        (post("/meters/0/fault", {"kind": "mute", "probability": 2}), 400),
        (post("/meters/0/fault", {"kind": "mute", "on": "yes"}), 400),
        (post("/meters/0/energy", {"energy_wh": True}), 400),
        (post("/meters/0/energy", {}), 400),
        (post("/meters/0/protect", {"on": True}), 400),
        (post("/meters/0", {}), 405),
        (post("/meters/3/energy", {"energy_wh": 1}), 404),
        (server.handle("GET", "/relay-log?meter=7", b""), 404),
    ]
    for (status, answer), expected in errors:
        assert status == expected and isinstance(answer["error"], str), answer
