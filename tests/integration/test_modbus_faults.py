"""Every fault the simulator injects, seen through the real Modbus driver over real sockets."""

from __future__ import annotations

import time

import pytest

from drivers.base import RelayAction, RelayState
from drivers.errors import ExceptionReply, FrameError, MeterTimeout, ProtocolError
from drivers.modbus import ModbusMeter, ModbusRtuDriver, ModbusTcpDriver, load_model
from simulators.faults import Fault, FaultKind
from simulators.modbus import DEFAULT_MODEL_PATH, ModbusFleet
from tests.support import free_port

GENERIC = load_model(DEFAULT_MODEL_PATH)
M1, M2 = ModbusMeter("m1", 1, GENERIC), ModbusMeter("m2", 2, GENERIC)


async def test_no_answer_times_out_and_the_neighbours_still_answer() -> None:
    async with (
        ModbusFleet(GENERIC, meters=2, port=free_port()) as fleet,
        ModbusTcpDriver("127.0.0.1", fleet.port, timeout=0.2) as driver,
    ):
        fleet.faults.add(Fault(FaultKind.NO_ANSWER), meters=[fleet.index_of(1)])
        for _ in range(5):  # more failures in a row than pymodbus tolerates before it drops the connection
            with pytest.raises(MeterTimeout):
                await driver.read(M1)
            assert (await driver.read(M2)).energy_wh > 0
        fleet.faults.clear()
        assert (await driver.read(M1)).energy_wh > 0


async def test_a_slow_answer_arrives_late_or_times_out() -> None:
    async with ModbusFleet(GENERIC, meters=1, port=free_port()) as fleet:
        fleet.faults.add(Fault(FaultKind.SLOW, delay_s=0.3), meters=[0])
        async with ModbusTcpDriver("127.0.0.1", fleet.port, timeout=1.0) as patient:
            start = time.monotonic()
            await patient.read_relay(M1)
            assert time.monotonic() - start >= 0.3
        async with ModbusTcpDriver("127.0.0.1", fleet.port, timeout=0.1) as hasty:
            with pytest.raises(MeterTimeout):
                await hasty.read_relay(M1)


async def test_exception_replies_carry_the_injected_code() -> None:
    async with (
        ModbusFleet(GENERIC, meters=1, port=free_port()) as fleet,
        ModbusTcpDriver("127.0.0.1", fleet.port) as driver,
    ):
        fleet.faults.add(Fault(FaultKind.EXCEPTION, code=6), meters=[0])
        with pytest.raises(ExceptionReply) as info:
            await driver.read(M1)
        assert info.value.code == 6


@pytest.mark.parametrize("framer", ["socket", "rtu"])
@pytest.mark.parametrize("kind", [FaultKind.GARBAGE, FaultKind.BAD_CRC])
async def test_garbage_and_bad_frames_are_driver_errors_and_the_bus_recovers(framer: str, kind: FaultKind) -> None:
    async with ModbusFleet(GENERIC, meters=2, port=free_port(), framer=framer, seed=3) as fleet:  # type: ignore[arg-type]
        driver = (ModbusTcpDriver("127.0.0.1", fleet.port, timeout=0.2) if framer == "socket"
                  else ModbusRtuDriver(f"socket://127.0.0.1:{fleet.port}", timeout=0.2))
        async with driver:
            fleet.faults.add(Fault(kind), meters=[fleet.index_of(1)])
            for _ in range(3):
                with pytest.raises((ProtocolError, MeterTimeout)):  # what a spoilt frame looks like depends on it
                    await driver.read(M1)
            fleet.faults.clear()
            for meter in (M2, M1):  # nothing left over on the line: each answer is that meter's, read now
                simulated = fleet.meters[meter.unit_id]
                before = simulated.energy_wh  # (its energy runs on: one Wh may pass during the read)
                assert before <= (await driver.read(meter)).energy_wh <= simulated.energy_wh


async def test_a_stuck_relay_acknowledges_the_command_but_stays_closed() -> None:
    async with (
        ModbusFleet(GENERIC, meters=1, port=free_port()) as fleet,
        ModbusTcpDriver("127.0.0.1", fleet.port) as driver,
    ):
        fleet.faults.add(Fault(FaultKind.RELAY_STUCK), meters=[0])
        await driver.set_relay(M1, RelayAction.OPEN)  # accepted...
        assert await driver.read_relay(M1) is RelayState.CLOSED  # ...but the contact did not move
        assert fleet.meters[1].relay_closed


async def test_counter_reset_drops_the_energy_once() -> None:
    async with (
        ModbusFleet(GENERIC, meters=1, port=free_port()) as fleet,
        ModbusTcpDriver("127.0.0.1", fleet.port) as driver,
    ):
        before = await driver.read(M1)
        assert before.energy_wh >= 1_000_000
        fleet.faults.add(Fault(FaultKind.COUNTER_RESET), meters=[0])
        after = await driver.read(M1)
        assert after.energy_wh < 1_000
        again = await driver.read(M1)
        assert after.energy_wh <= again.energy_wh < 1_000  # once: it counts up from zero afterwards


async def test_an_echo_that_does_not_match_is_a_frame_error() -> None:
    """A relay write whose echo names another coil must not count as accepted."""
    async with (
        ModbusFleet(GENERIC, meters=1, port=free_port()) as fleet,
        ModbusTcpDriver("127.0.0.1", fleet.port) as driver,
    ):
        original = fleet._server.respond  # type: ignore[union-attr]

        def wrong_echo(unit_id: int, pdu: bytes):  # type: ignore[no-untyped-def]
            answer, fault = original(unit_id, pdu)
            if answer is not None and answer[0] == 5:
                answer = answer[:2] + bytes([answer[2] ^ 1]) + answer[3:]
            return answer, fault

        fleet._server.respond = wrong_echo  # type: ignore[union-attr, method-assign]
        with pytest.raises(FrameError, match="echo"):
            await driver.set_relay(M1, RelayAction.OPEN)
