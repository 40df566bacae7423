"""Tamper flags through the real drivers against the simulators: DL/T 645 status word 7 over TCP and a socat pty,
the Modbus tamper register over Modbus TCP. Flags are raised and cleared through the fault plan (what
``--faults`` and the control interface change) and through the simulated meter itself."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from drivers.base import RelayState
from drivers.dlt645 import DI, Dlt645Driver, Dlt645Meter
from drivers.dlt645.driver import TAMPER_SILENT_LIMIT
from drivers.errors import MeterTimeout
from drivers.modbus import ModbusMeter, ModbusTcpDriver, load_model
from drivers.transports import SerialTransport, TcpTransport
from simulators.dlt645 import Dlt645Simulator, make_meters
from simulators.control_client import SimulatorControl
from simulators.faults import Fault, FaultKind, FaultPlan
from simulators.modbus import DEFAULT_MODEL_PATH, ModbusFleet
from tests.conftest import REPO_ROOT
from tests.integration.test_simulator_control import cli
from tests.support import free_port, wait_for_port

GENERIC = load_model(DEFAULT_MODEL_PATH)
SDM120 = load_model(REPO_ROOT / "config" / "meters" / "eastron-sdm120.yaml")


def _meters(sim: Dlt645Simulator) -> list[Dlt645Meter]:
    return [Dlt645Meter(f"m{i}", m.address) for i, m in enumerate(sim.meters)]


async def test_dlt645_status_word_7_raises_and_clears_the_flags_in_the_same_poll() -> None:
    plan = FaultPlan()
    async with (
        Dlt645Simulator(meters=2, tcp="127.0.0.1:0", faults=plan) as sim,
        Dlt645Driver(TcpTransport("127.0.0.1", sim.tcp_port or 0), timeout=0.5) as driver,
    ):
        m0, m1 = _meters(sim)
        assert (await driver.read(m0)).extra["tamper"] == ()
        plan.add(Fault(FaultKind.COVER_OPEN), meters=[0])
        reading = await driver.read(m0)
        assert reading.extra["tamper"] == ("cover_open",) and reading.relay is RelayState.CLOSED
        assert (await driver.read(m1)).extra["tamper"] == ()  # the neighbour's cover is shut
        sim.meters[0].meter.set_tamper("terminal_cover_open")  # the meter's own flag, beside the plan's
        assert (await driver.read(m0)).extra["tamper"] == ("cover_open", "terminal_cover_open")
        plan.remove([0], FaultKind.COVER_OPEN)
        sim.meters[0].meter.set_tamper("terminal_cover_open", False)
        assert (await driver.read(m0)).extra["tamper"] == ()


async def test_dlt645_a_meter_without_status_word_7_reads_without_tamper_information() -> None:
    sims = make_meters(1, seed=2)
    sims[0].missing_registers.add(DI.STATUS_WORD_7)  # answered "no requested data" (ERR 02H)
    async with Dlt645Simulator(meters=sims, tcp="127.0.0.1:0") as sim:
        async with Dlt645Driver(TcpTransport("127.0.0.1", sim.tcp_port or 0), timeout=0.5) as driver:
            (meter,) = _meters(sim)
            before = sim.bus.requests_seen
            first = await driver.read(meter)
            asked = sim.bus.requests_seen - before
            assert "tamper" not in first.extra and first.energy_wh > 0 and first.relay is RelayState.CLOSED
            before = sim.bus.requests_seen
            second = await driver.read(meter)
            assert "tamper" not in second.extra
            assert sim.bus.requests_seen - before == asked - 1  # "no requested data" is not asked again


async def test_dlt645_an_error_reply_to_status_word_7_is_no_information_not_a_failed_poll() -> None:
    sims = make_meters(1, seed=3)
    sims[0].extra_registers[DI.STATUS_WORD_7] = b"\x00"  # a reply of the wrong size
    async with (
        Dlt645Simulator(meters=sims, tcp="127.0.0.1:0") as sim,
        Dlt645Driver(TcpTransport("127.0.0.1", sim.tcp_port or 0), timeout=0.5) as driver,
    ):
        (meter,) = _meters(sim)
        assert "tamper" not in (await driver.read(meter)).extra
        del sims[0].extra_registers[DI.STATUS_WORD_7]
        assert (await driver.read(meter)).extra["tamper"] == ()


async def test_dlt645_a_meter_that_ignores_status_word_7_costs_a_timeout_a_few_times_then_none() -> None:
    """Some firmware stays silent on a DI it lacks: the poll still succeeds, and after TAMPER_SILENT_LIMIT
    polls in a row the word is not asked for any more."""
    sims = make_meters(1, seed=4)
    async with (
        Dlt645Simulator(meters=sims, tcp="127.0.0.1:0") as sim,
        Dlt645Driver(TcpTransport("127.0.0.1", sim.tcp_port or 0), timeout=0.2, retries=2) as driver,
    ):
        (meter,) = _meters(sim)
        silent = _SilentOn(sim, DI.STATUS_WORD_7)
        for _ in range(TAMPER_SILENT_LIMIT):
            reading = await driver.read(meter)
            assert "tamper" not in reading.extra and reading.energy_wh > 0
        assert silent.asked == TAMPER_SILENT_LIMIT  # one attempt per poll, no retries
        await driver.read(meter)
        assert silent.asked == TAMPER_SILENT_LIMIT  # not asked any more
        silent.undo()
        with pytest.raises(MeterTimeout):  # a meter silent on energy still fails the poll
            sim.bus.faults.add(Fault(FaultKind.NO_ANSWER), meters=[0])
            await driver.read(meter)


class _SilentOn:
    """Make the simulated bus ignore reads of one DI (as some firmware does), counting them."""

    def __init__(self, sim: Dlt645Simulator, di: int) -> None:
        from drivers.dlt645.messages import parse_read_request

        self.bus, self.asked = sim.bus, 0
        self._handle = handle = self.bus.handle

        def silent(frame):  # type: ignore[no-untyped-def]
            try:
                if frame.function == 0x11 and not frame.is_reply and parse_read_request(frame) == di:
                    self.asked += 1
                    return None
            except Exception:  # noqa: BLE001 - not a read of that DI
                pass
            return handle(frame)

        self.bus.handle = silent  # type: ignore[method-assign]

    def undo(self) -> None:
        self.bus.handle = self._handle  # type: ignore[method-assign]


@pytest.mark.tool("socat")
async def test_dlt645_status_word_7_over_a_pty(pty_pair: tuple[str, str]) -> None:
    gateway_end, simulator_end = pty_pair
    plan = FaultPlan.parse("terminal-cover-open@1")  # the --faults text form
    async with Dlt645Simulator(meters=2, serial=simulator_end, baud=9600, faults=plan) as sim:
        async with Dlt645Driver(SerialTransport(gateway_end, baudrate=9600, parity="N"), timeout=0.5) as driver:
            m0, m1 = _meters(sim)
            assert (await driver.read(m0)).extra["tamper"] == ()
            assert (await driver.read(m1)).extra["tamper"] == ("terminal_cover_open",)


async def test_modbus_tamper_register_read_in_the_same_request() -> None:
    async with (
        ModbusFleet(GENERIC, meters=2, port=free_port()) as fleet,
        ModbusTcpDriver("127.0.0.1", fleet.port) as driver,
    ):
        m1, m2 = ModbusMeter("m1", 1, GENERIC), ModbusMeter("m2", 2, GENERIC)
        before = fleet.requests
        assert (await driver.read(m1)).extra["tamper"] == ()
        assert fleet.requests - before == len(GENERIC.read_plan.requests) == 2  # input block + relay bit
        fleet.faults.add(Fault(FaultKind.COVER_OPEN), meters=[fleet.index_of(1)])
        fleet.faults.add(Fault(FaultKind.TERMINAL_COVER_OPEN), meters=[fleet.index_of(1)])
        assert (await driver.read(m1)).extra["tamper"] == ("cover_open", "terminal_cover_open")
        assert (await driver.read(m2)).extra["tamper"] == ()
        fleet.faults.remove([fleet.index_of(1)], FaultKind.COVER_OPEN)
        assert (await driver.read(m1)).extra["tamper"] == ("terminal_cover_open",)
        fleet.faults.clear()
        assert (await driver.read(m1)).extra["tamper"] == ()


async def test_modbus_a_model_without_a_tamper_register_has_no_tamper_information() -> None:
    async with (
        ModbusFleet(SDM120, meters=1, port=free_port()) as fleet,
        ModbusTcpDriver("127.0.0.1", fleet.port) as driver,
    ):
        fleet.faults.add(Fault(FaultKind.COVER_OPEN), meters=[0])  # nowhere to show it
        assert "tamper" not in (await driver.read(ModbusMeter("m1", 1, SDM120))).extra


@pytest.mark.parametrize("protocol", ["dlt645", "modbus"])
async def test_the_simulator_process_raises_flags_from_faults_and_its_control_interface(
        tmp_path: Path, protocol: str) -> None:
    """``meter-gateway simulate ... --faults 'cover-open@1'``, then the control interface opens and shuts covers."""
    port, control_port = free_port(), free_port()
    where = ["--tcp", f"127.0.0.1:{port}"] if protocol == "dlt645" else ["--port", str(port)]
    with cli(tmp_path / "simulator.log", protocol, *where, "--meters", "2", "--faults", "cover-open@1",
             "--control", f"127.0.0.1:{control_port}"):
        await asyncio.to_thread(wait_for_port, port)
        await asyncio.to_thread(wait_for_port, control_port)
        control = SimulatorControl(f"http://127.0.0.1:{control_port}")
        if protocol == "dlt645":
            driver: Dlt645Driver | ModbusTcpDriver = Dlt645Driver(TcpTransport("127.0.0.1", port), timeout=0.5)
            m0, m1 = Dlt645Meter("m0", "000000000001"), Dlt645Meter("m1", "000000000002")
        else:
            driver = ModbusTcpDriver("127.0.0.1", port)
            m0, m1 = ModbusMeter("m0", 1, GENERIC), ModbusMeter("m1", 2, GENERIC)  # type: ignore[assignment]
        async with driver:
            assert (await driver.read(m0)).extra["tamper"] == ()  # type: ignore[arg-type]
            assert (await driver.read(m1)).extra["tamper"] == ("cover_open",)  # type: ignore[arg-type]
            state = await asyncio.to_thread(control.open_cover, 0, terminal=True)
            assert state["tamper"] == ["terminal_cover_open"] and state["faults"] == ["terminal-cover-open"]
            assert (await driver.read(m0)).extra["tamper"] == ("terminal_cover_open",)  # type: ignore[arg-type]
            await asyncio.to_thread(control.open_cover, 1, False)
            await asyncio.to_thread(control.open_cover, 0, False, terminal=True)
            assert (await driver.read(m0)).extra["tamper"] == ()  # type: ignore[arg-type]
            assert (await driver.read(m1)).extra["tamper"] == ()  # type: ignore[arg-type]
            assert (await asyncio.to_thread(control.meter, 1))["tamper"] == []
