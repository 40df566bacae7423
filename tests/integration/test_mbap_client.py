"""MbapClient over real sockets: against pymodbus's own server (an independent implementation), against the
project's simulator with injected faults, and side by side with pymodbus's client."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from drivers.errors import ConnectError, FrameError, MeterTimeout
from drivers.modbus import load_model
from drivers.modbus.mbap import MbapClient
from simulators.faults import Fault, FaultKind
from simulators.meter import ManualClock
from simulators.modbus import DEFAULT_MODEL_PATH, ModbusFleet
from tests.support import async_wait_until, free_port

GENERIC = load_model(DEFAULT_MODEL_PATH)
START = 1_795_363_200.0

COILS = [i % 5 == 1 for i in range(64)]
DISCRETE = [i % 3 == 0 for i in range(64)]
HOLDING = [1000 + i for i in range(100)]
INPUT = [(i * 7919) & 0xFFFF for i in range(100)]


@pytest.fixture
async def pymodbus_server() -> AsyncIterator[tuple[ModbusTcpServer, int]]:
    """pymodbus's TCP server, unit 1: 64 coils, 64 discrete inputs, 100 holding and 100 input registers from 0."""
    port = free_port()
    device = SimDevice(
        1,
        simdata=(
            [SimData(0, values=list(COILS), datatype=DataType.BITS)],
            [SimData(0, values=list(DISCRETE), datatype=DataType.BITS)],
            [SimData(0, values=list(HOLDING), datatype=DataType.REGISTERS)],
            [SimData(0, values=list(INPUT), datatype=DataType.REGISTERS)],
        ),
    )
    server = ModbusTcpServer([device], address=("127.0.0.1", port))
    await server.serve_forever(background=True)
    try:
        yield server, port
    finally:
        await server.shutdown()


@pytest.fixture
async def fleet() -> AsyncIterator[ModbusFleet]:
    """The project's simulator: 3 generic meters (unit ids 1-3) that stand still in time."""
    async with ModbusFleet(GENERIC, meters=3, port=free_port(), clock=ManualClock(START)) as running:
        yield running


async def client_of(port: int, *, timeout: float = 1.0, retries: int = 0) -> MbapClient:
    client = MbapClient("127.0.0.1", port, timeout=timeout, retries=retries)
    assert await client.connect()
    return client


# --- against pymodbus's server --------------------------------------------------------------------------------


async def test_reads_every_table_of_a_pymodbus_server(pymodbus_server) -> None:
    _, port = pymodbus_server
    client = await client_of(port)
    try:
        reply = await client.read_holding_registers(0, count=10, device_id=1)
        assert not reply.isError() and reply.registers == HOLDING[:10]
        assert (reply.function_code, reply.dev_id) == (3, 1)
        reply = await client.read_input_registers(0, count=100, device_id=1)
        assert reply.registers == INPUT
        reply = await client.read_input_registers(99, count=1, device_id=1)
        assert reply.registers == INPUT[99:]
        reply = await client.read_coils(0, count=64, device_id=1)
        assert reply.bits == COILS
        reply = await client.read_discrete_inputs(3, count=13, device_id=1)
        assert len(reply.bits) == 16 and reply.bits[:13] == DISCRETE[3:16]
    finally:
        client.close()


async def test_writes_land_in_the_pymodbus_datastore(pymodbus_server) -> None:
    server, port = pymodbus_server
    client = await client_of(port)
    try:
        reply = await client.write_coil(2, True, device_id=1)  # FC05
        assert (reply.function_code, reply.address, reply.bits) == (5, 2, [True])
        reply = await client.write_coil(1, False, device_id=1)
        assert (reply.address, reply.bits) == (1, [False])
        reply = await client.write_coils(10, [True, False, True, True, False, True, True, True, True], device_id=1)
        assert (reply.function_code, reply.address, reply.count) == (15, 10, 9)
        coils = await server.async_getValues(1, 1, 0, 24)
        assert coils[1:3] == [False, True]
        assert coils[10:19] == [True, False, True, True, False, True, True, True, True]
        assert coils[19:24] == COILS[19:24]

        reply = await client.write_register(5, 0xBEEF, device_id=1)  # FC06
        assert (reply.function_code, reply.address, reply.registers) == (6, 5, [0xBEEF])
        reply = await client.write_registers(20, [0, 1, 0xFFFF], device_id=1)  # FC16
        assert (reply.function_code, reply.address, reply.count) == (16, 20, 3)
        holding = await server.async_getValues(1, 3, 0, 25)
        assert holding[5] == 0xBEEF and holding[20:23] == [0, 1, 0xFFFF]
        assert holding[:5] == HOLDING[:5] and holding[23:] == HOLDING[23:25]

        assert (await client.read_holding_registers(4, count=3, device_id=1)).registers == [1004, 0xBEEF, 1006]
        assert (await client.read_coils(0, count=3, device_id=1)).bits[:3] == [False, False, True]
    finally:
        client.close()


async def test_an_illegal_address_is_an_exception_reply(pymodbus_server) -> None:
    _, port = pymodbus_server
    client = await client_of(port)
    try:
        reply = await client.read_holding_registers(200, count=2, device_id=1)
        assert reply.isError() and reply.function_code == 0x83 and reply.exception_code == 2
        reply = await client.write_register(500, 1, device_id=1)
        assert reply.isError() and reply.function_code == 0x86 and reply.exception_code == 2
        assert (await client.read_input_registers(0, count=2, device_id=1)).registers == INPUT[:2]  # goes on
    finally:
        client.close()


async def test_the_same_values_as_pymodbus_client(pymodbus_server, fleet: ModbusFleet) -> None:
    """Both clients read the same registers from both servers: identical replies, exception replies included."""
    requests = [
        ("read_input_registers", 0, 14),
        ("read_input_registers", 10, 4),
        ("read_holding_registers", 0, 10),
        ("read_discrete_inputs", 0, 1),
        ("read_coils", 0, 12),
        ("read_input_registers", 0x4000, 2),  # an exception reply from one server or both
    ]
    _, pymodbus_port = pymodbus_server
    for port, units in ((pymodbus_port, [1]), (fleet.port, [1, 2, 3])):
        ours = await client_of(port)
        theirs = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=1.0, retries=0, reconnect_delay=0)
        assert await theirs.connect()
        try:
            for unit in units:
                for method, address, count in requests:
                    a = await getattr(ours, method)(address, count=count, device_id=unit)
                    b = await getattr(theirs, method)(address, count=count, device_id=unit)
                    what = f"port {port} unit {unit} {method}({address}, {count})"
                    assert a.isError() == b.isError(), what
                    assert a.function_code == b.function_code and a.dev_id == b.dev_id, what
                    assert a.exception_code == b.exception_code, what
                    assert a.registers == list(b.registers) and a.bits == list(b.bits), what
        finally:
            ours.close()
            theirs.close()


# --- against the project's simulator, with faults -------------------------------------------------------------


async def test_no_answer_is_a_meter_timeout_and_the_bus_goes_on(fleet: ModbusFleet) -> None:
    client = await client_of(fleet.port, timeout=0.2, retries=1)
    try:
        expected = (await client.read_input_registers(0, count=14, device_id=1)).registers
        fleet.faults.add(Fault(FaultKind.NO_ANSWER), meters=[fleet.index_of(1)])
        loop = asyncio.get_running_loop()
        for _ in range(3):
            start = loop.time()
            with pytest.raises(MeterTimeout, match="no answer"):
                await client.read_input_registers(0, count=14, device_id=1)
            assert loop.time() - start >= 0.4 - 0.002  # two attempts of 0.2 s
            assert (await client.read_input_registers(0, count=14, device_id=2)).dev_id == 2
        fleet.faults.clear()
        assert (await client.read_input_registers(0, count=14, device_id=1)).registers == expected
        assert client.connected
    finally:
        client.close()


async def test_a_slow_answer_after_the_timeout_does_not_poison_the_next_request(fleet: ModbusFleet) -> None:
    """Unit 1 answers 1.3 s late (timeout 1 s); its answer arrives while unit 2's request (0.6 s) waits."""
    client = await client_of(fleet.port, timeout=1.0)
    try:
        unit1 = (await client.read_input_registers(0, count=14, device_id=1)).registers
        unit2 = (await client.read_input_registers(0, count=14, device_id=2)).registers
        assert unit1 != unit2
        fleet.faults.add(Fault(FaultKind.SLOW, delay_s=1.3), meters=[fleet.index_of(1)])
        fleet.faults.add(Fault(FaultKind.SLOW, delay_s=0.6), meters=[fleet.index_of(2)])
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(MeterTimeout):
            await client.read_input_registers(0, count=14, device_id=1)
        reply = await client.read_input_registers(0, count=14, device_id=2)
        assert loop.time() - start >= 1.3  # unit 1's late answer came first, on the same connection
        assert reply.dev_id == 2 and reply.registers == unit2
        fleet.faults.clear()
        assert (await client.read_input_registers(0, count=14, device_id=1)).registers == unit1
        assert (await client.read_input_registers(0, count=14, device_id=3)).dev_id == 3
    finally:
        client.close()


async def test_injected_exception_codes_and_an_unknown_unit(fleet: ModbusFleet) -> None:
    client = await client_of(fleet.port)
    try:
        fleet.faults.add(Fault(FaultKind.EXCEPTION, code=6), meters=[fleet.index_of(2)])
        reply = await client.read_input_registers(0, count=14, device_id=2)
        assert reply.isError() and reply.exception_code == 6 and reply.function_code == 0x84
        reply = await client.write_coil(0, False, device_id=2)
        assert reply.isError() and reply.exception_code == 6 and reply.function_code == 0x85
        reply = await client.read_input_registers(0, count=14, device_id=9)  # no such meter behind the gateway
        assert reply.isError() and reply.exception_code == 0x0B
        assert not (await client.read_input_registers(0, count=14, device_id=1)).isError()
    finally:
        client.close()


async def read_until_it_works(client: MbapClient, unit: int, attempts: int = 4) -> list[int]:
    """Read as the driver does (reconnect when the connection was dropped) until a good answer comes."""
    for _ in range(attempts):
        if not client.connected:
            assert await client.connect()
        try:
            return (await client.read_input_registers(0, count=14, device_id=unit)).registers
        except (FrameError, MeterTimeout, ConnectError):
            continue
    pytest.fail(f"no good answer in {attempts} attempts")


@pytest.mark.parametrize("kind", [FaultKind.GARBAGE, FaultKind.BAD_CRC])
async def test_garbage_and_bad_frames_are_errors_and_the_client_recovers(fleet: ModbusFleet, kind: FaultKind):
    client = await client_of(fleet.port, timeout=0.2)
    try:
        expected = (await client.read_input_registers(0, count=14, device_id=1)).registers
        fleet.faults.add(Fault(kind), meters=[fleet.index_of(1)])
        for _ in range(3):
            if not client.connected:
                assert await client.connect()
            with pytest.raises((FrameError, MeterTimeout)):
                await client.read_input_registers(0, count=14, device_id=1)
        fleet.faults.clear()
        assert await read_until_it_works(client, 1) == expected
        assert (await client.read_input_registers(0, count=14, device_id=1)).registers == expected
    finally:
        client.close()


async def test_a_spoilt_frame_is_a_frame_error_and_the_next_transaction_reconnects(fleet: ModbusFleet) -> None:
    """TCP has no CRC: the simulator's bad-crc answer has a length field one byte too long. The client waits for
    the byte until the timeout: an incomplete answer is a FrameError and the connection is dropped (the next
    answer would otherwise complete that frame and leave the stream out of step); the next transaction works
    on a new connection."""
    client = await client_of(fleet.port, timeout=0.2)
    try:
        expected = (await client.read_input_registers(0, count=14, device_id=2)).registers
        fleet.faults.add(Fault(FaultKind.BAD_CRC), meters=[fleet.index_of(1)])
        with pytest.raises(FrameError, match="incomplete"):
            await client.read_input_registers(0, count=14, device_id=1)
        fleet.faults.clear()
        assert not client.connected
        assert await client.connect()
        assert (await client.read_input_registers(0, count=14, device_id=2)).registers == expected
    finally:
        client.close()


# --- connections ----------------------------------------------------------------------------------------------


async def test_a_refused_connection_is_false() -> None:
    client = MbapClient("127.0.0.1", free_port(), timeout=1.0)
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert await client.connect() is False
    assert loop.time() - start < 1.0 and not client.connected
    with pytest.raises(ConnectError):
        await client.read_input_registers(0, count=1)
    client.close()


async def test_a_stopped_and_restarted_server_is_read_again_after_connect(fleet: ModbusFleet) -> None:
    client = await client_of(fleet.port, timeout=0.5)
    try:
        first = (await client.read_input_registers(0, count=14, device_id=1)).registers
        await fleet.stop()
        await async_wait_until(lambda: not client.connected, timeout=5, what="the client to see the close")
        with pytest.raises(ConnectError):
            await client.read_input_registers(0, count=14, device_id=1)
        assert await client.connect() is False  # nothing listens
        await fleet.start()
        assert await client.connect() is True
        assert (await client.read_input_registers(0, count=14, device_id=1)).registers == first
    finally:
        client.close()


async def test_nagle_is_off(fleet: ModbusFleet) -> None:
    client = await client_of(fleet.port)
    try:
        sock = client._transport.get_extra_info("socket")  # type: ignore[union-attr]
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        client.close()


async def test_close_while_waiting_is_a_connect_error(fleet: ModbusFleet) -> None:
    fleet.faults.add(Fault(FaultKind.NO_ANSWER), meters=[fleet.index_of(1)])
    client = await client_of(fleet.port, timeout=5.0)
    seen = fleet.requests
    task = asyncio.create_task(client.read_input_registers(0, count=14, device_id=1))
    await async_wait_until(lambda: fleet.requests > seen, timeout=5, what="the request to reach the meter")
    client.close()
    with pytest.raises(ConnectError):
        await task
    client.close()  # again: nothing happens
    assert not client.connected
