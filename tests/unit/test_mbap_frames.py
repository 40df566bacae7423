"""MbapClient's framing, without sockets: requests on the wire, and answers fed to it in every shape.

``loop.create_connection`` is replaced by a fake that hands the client's protocol a ``FakeTransport``: the test
reads each request frame the client wrote and feeds answer bytes (whole, split, several at once, spoilt) back.
Requests are cross-checked against pymodbus's own encoding of the same PDUs.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable

import pytest
from pymodbus.pdu.bit_message import WriteMultipleCoilsRequest
from pymodbus.pdu.register_message import WriteMultipleRegistersRequest

from drivers.errors import ConnectError, FrameError, MeterTimeout
from drivers.modbus.mbap import MbapClient, Reply

HEADER = struct.Struct(">HHHB")


def adu(tid: int, unit: int, pdu: bytes, *, protocol: int = 0, length: int | None = None) -> bytes:
    """One MBAP frame (the length field is right unless given)."""
    return HEADER.pack(tid, protocol, len(pdu) + 1 if length is None else length, unit) + pdu


def registers_pdu(function: int, values: list[int]) -> bytes:
    return struct.pack(f">BB{len(values)}H", function, 2 * len(values), *values)


class FakeTransport(asyncio.Transport):
    """Records what the client writes; ``close`` reports the loss to the protocol as a real transport does."""

    def __init__(self, protocol: asyncio.Protocol) -> None:
        super().__init__()
        self.protocol = protocol
        self.written: list[bytes] = []
        self.closed = False
        self.wrote = asyncio.Event()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))
        self.wrote.set()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default


class Wire:
    """The far end of every connection the client opens."""

    def __init__(self) -> None:
        self.transports: list[FakeTransport] = []
        self.refuse = False

    @property
    def transport(self) -> FakeTransport:
        return self.transports[-1]

    def feed(self, data: bytes) -> None:
        self.transport.protocol.data_received(data)

    async def request(self) -> bytes:
        """The next frame the client sends (waits for it, at most 5 s)."""
        transport = self.transport
        async with asyncio.timeout(5):
            while not transport.written:
                transport.wrote.clear()
                await transport.wrote.wait()
        return transport.written.pop(0)



async def lost(transport: FakeTransport) -> None:
    """Wait (at most 5 s) until the loss of the connection has reached its protocol."""
    async with asyncio.timeout(5):
        while transport.protocol.transport is not None:  # type: ignore[attr-defined]
            await asyncio.sleep(0)


def waiting(client: MbapClient) -> list[asyncio.Future]:
    """The futures of the attempts still waiting for their answer."""
    return [future for future, _ in client._pending.values() if not future.done()]


async def settle(client: MbapClient, task: asyncio.Task) -> None:
    """Close the client and collect the request it fails."""
    client.close()
    with pytest.raises(ConnectError):
        await task


@pytest.fixture
async def wire(monkeypatch: pytest.MonkeyPatch) -> Wire:
    loop = asyncio.get_running_loop()
    far = Wire()

    async def create_connection(factory: Callable[[], asyncio.Protocol], host: str, port: int, **_: object):
        if far.refuse:
            raise ConnectionRefusedError(111, "Connection refused")
        protocol = factory()
        transport = FakeTransport(protocol)
        protocol.connection_made(transport)
        far.transports.append(transport)
        return transport, protocol

    monkeypatch.setattr(loop, "create_connection", create_connection)
    return far


async def connected(timeout: float = 1.0, retries: int = 0) -> MbapClient:
    client = MbapClient("meter.example", 502, timeout=timeout, retries=retries)
    assert await client.connect()
    return client


def tid_of(frame: bytes) -> int:
    return int.from_bytes(frame[:2], "big")


# --- requests on the wire -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "args", "kwargs", "pdu"),
    [
        ("read_coils", (0x0010,), {"count": 10}, bytes.fromhex("01 0010 000a")),
        ("read_discrete_inputs", (0,), {"count": 2000}, bytes.fromhex("02 0000 07d0")),
        ("read_holding_registers", (0xFFFF,), {"count": 1}, bytes.fromhex("03 ffff 0001")),
        ("read_input_registers", (0,), {"count": 125}, bytes.fromhex("04 0000 007d")),
        ("write_coil", (7, True), {}, bytes.fromhex("05 0007 ff00")),
        ("write_coil", (7, False), {}, bytes.fromhex("05 0007 0000")),
        ("write_register", (0x1A, 0xBEEF), {}, bytes.fromhex("06 001a beef")),
        ("write_coils", (19, [True, False, True, True, False, False, True, True, True, False]), {},
         bytes.fromhex("0f 0013 000a 02 cd 01")),
        ("write_registers", (1, [0x000A, 0x0102]), {}, bytes.fromhex("10 0001 0002 04 000a 0102")),
    ],
)
async def test_request_frames(wire: Wire, method: str, args: tuple, kwargs: dict, pdu: bytes) -> None:
    client = await connected()
    task = asyncio.create_task(getattr(client, method)(*args, device_id=17, **kwargs))
    frame = await wire.request()
    assert frame == adu(tid_of(frame), 17, pdu)
    await settle(client, task)


async def test_multiple_writes_encode_as_pymodbus_does(wire: Wire) -> None:
    client = await connected()
    bits = [bool(i % 3) for i in range(1968)]
    registers = [(i * 7919) & 0xFFFF for i in range(123)]
    coils = asyncio.create_task(client.write_coils(100, bits, device_id=3))
    frame = await wire.request()
    assert frame[7:] == bytes([15]) + WriteMultipleCoilsRequest(address=100, bits=bits).encode()
    wire.feed(adu(tid_of(frame), 3, bytes.fromhex("0f 0064 07b0")))
    assert (await coils).count == 1968
    regs = asyncio.create_task(client.write_registers(200, registers, device_id=3))
    frame = await wire.request()
    assert frame[7:] == bytes([16]) + WriteMultipleRegistersRequest(address=200, registers=registers).encode()
    assert HEADER.unpack_from(frame)[2] == len(frame) - 6 == 1 + 1 + 5 + 246
    await settle(client, regs)


async def test_transaction_ids_increase_and_wrap(wire: Wire) -> None:
    client = await connected()
    client._tid = 0xFFFE  # as after 65534 transactions
    seen = []
    for _ in range(3):
        task = asyncio.create_task(client.read_holding_registers(0, count=1))
        frame = await wire.request()
        seen.append(tid_of(frame))
        wire.feed(adu(tid_of(frame), 1, registers_pdu(3, [42])))
        assert (await task).registers == [42]
    assert seen == [0xFFFF, 0x0000, 0x0001]
    client.close()


# --- answers --------------------------------------------------------------------------------------------------


async def test_registers_reply(wire: Wire) -> None:
    client = await connected()
    task = asyncio.create_task(client.read_input_registers(0x20, count=3, device_id=5))
    frame = await wire.request()
    wire.feed(adu(tid_of(frame), 5, registers_pdu(4, [1, 0xFFFF, 0x1234])))
    reply = await task
    assert isinstance(reply, Reply) and not reply.isError()
    assert (reply.function_code, reply.dev_id, reply.address, reply.count) == (4, 5, 0x20, 3)
    assert reply.registers == [1, 0xFFFF, 0x1234] and reply.bits == [] and reply.exception_code == 0
    assert reply.transaction_id == tid_of(frame)
    client.close()


async def test_bits_are_unpacked_lsb_first_and_padded_to_whole_bytes(wire: Wire) -> None:
    client = await connected()
    task = asyncio.create_task(client.read_coils(0, count=10, device_id=1))
    frame = await wire.request()
    wire.feed(adu(tid_of(frame), 1, bytes([1, 2, 0b1100_1101, 0b0000_0010])))
    reply = await task
    assert reply.bits == [True, False, True, True, False, False, True, True] + [False, True] + [False] * 6
    assert reply.bits[:10] == [True, False, True, True, False, False, True, True, False, True]
    assert reply.registers == [] and reply.count == 10
    client.close()


@pytest.mark.parametrize(
    ("call", "echo", "registers", "bits", "count"),
    [
        (lambda c: c.write_coil(9, True), bytes.fromhex("05 0009 ff00"), [], [True], 1),
        (lambda c: c.write_coil(9, False), bytes.fromhex("05 0009 0000"), [], [False], 1),
        (lambda c: c.write_register(9, 513), bytes.fromhex("06 0009 0201"), [513], [], 1),
        (lambda c: c.write_coils(9, [True] * 12), bytes.fromhex("0f 0009 000c"), [], [], 12),
        (lambda c: c.write_registers(9, [1, 2]), bytes.fromhex("10 0009 0002"), [], [], 2),
    ],
)
async def test_write_echoes(wire: Wire, call, echo: bytes, registers: list[int], bits: list[bool], count: int):
    client = await connected()
    task = asyncio.create_task(call(client))
    frame = await wire.request()
    wire.feed(adu(tid_of(frame), 1, echo))
    reply = await task
    assert (reply.function_code, reply.address, reply.count) == (echo[0], 9, count)
    assert reply.registers == registers and reply.bits == bits and not reply.isError()
    client.close()


async def test_exception_reply_is_a_reply(wire: Wire) -> None:
    client = await connected()
    task = asyncio.create_task(client.read_holding_registers(200, count=2, device_id=4))
    frame = await wire.request()
    wire.feed(adu(tid_of(frame), 4, bytes([0x83, 0x02])))
    reply = await task
    assert reply.isError() and reply.function_code == 0x83 and reply.exception_code == 2
    assert reply.dev_id == 4 and reply.registers == [] and reply.bits == []
    client.close()


async def test_a_frame_split_over_many_chunks(wire: Wire) -> None:
    client = await connected()
    task = asyncio.create_task(client.read_input_registers(0, count=14))
    frame = await wire.request()
    answer = adu(tid_of(frame), 1, registers_pdu(4, list(range(100, 114))))
    for i in range(len(answer)):  # one byte at a time, the header too
        assert len(waiting(client)) == 1  # not answered before the last byte
        wire.feed(answer[i : i + 1])
    assert waiting(client) == []
    assert (await task).registers == list(range(100, 114))
    client.close()


async def test_two_frames_in_one_chunk(wire: Wire) -> None:
    """A stale answer and the awaited one arrive together; then the next answer and half of another."""
    client = await connected(timeout=0.05)
    with pytest.raises(MeterTimeout):
        await client.read_holding_registers(1, count=1)
    stale = tid_of(await wire.request())
    task = asyncio.create_task(client.read_holding_registers(2, count=1))
    frame = await wire.request()
    wire.feed(adu(stale, 1, registers_pdu(3, [111])) + adu(tid_of(frame), 1, registers_pdu(3, [222])))
    assert (await task).registers == [222]

    task = asyncio.create_task(client.read_holding_registers(3, count=1))
    frame = await wire.request()
    current = adu(tid_of(frame), 1, registers_pdu(3, [333]))
    later = adu((tid_of(frame) + 1) & 0xFFFF, 1, registers_pdu(3, [444]))
    wire.feed(current + later[:5])
    assert (await task).registers == [333]
    task = asyncio.create_task(client.read_holding_registers(4, count=1))
    frame = await wire.request()
    assert tid_of(frame) == tid_of(later)
    wire.feed(later[5:])
    assert (await task).registers == [444]
    client.close()


async def test_a_late_answer_to_a_timed_out_request_is_dropped(wire: Wire) -> None:
    client = await connected(timeout=0.05)
    with pytest.raises(MeterTimeout, match="no answer"):
        await client.read_input_registers(0, count=1)
    late = tid_of(await wire.request())
    task = asyncio.create_task(client.read_input_registers(0, count=1))
    frame = await wire.request()
    wire.feed(adu(late, 1, registers_pdu(4, [666])))  # the old answer arrives while the new request waits
    assert len(waiting(client)) == 1  # still waiting for its own
    wire.feed(adu(tid_of(frame), 1, registers_pdu(4, [7])))
    assert (await task).registers == [7]
    assert client.connected
    client.close()


async def test_retries_resend_with_a_new_transaction_id(wire: Wire) -> None:
    client = await connected(timeout=0.05, retries=2)
    task = asyncio.create_task(client.read_input_registers(0, count=1))
    first = await wire.request()
    second = await wire.request()  # after the first attempt timed out
    assert tid_of(second) == tid_of(first) + 1 and second[2:] == first[2:]
    wire.feed(adu(tid_of(first), 1, registers_pdu(4, [1])))  # the first attempt's answer, too late: dropped
    wire.feed(adu(tid_of(second), 1, registers_pdu(4, [2])))
    assert (await task).registers == [2]
    assert wire.transport.written == []  # no third attempt
    client.close()


async def test_no_answer_after_every_attempt_is_a_meter_timeout(wire: Wire) -> None:
    client = await connected(timeout=0.05, retries=1)
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(MeterTimeout, match="no answer") as info:
        await client.read_input_registers(0, count=1, device_id=9)
    assert loop.time() - start >= 0.1 - 0.002  # two attempts of 50 ms (a millisecond clock may round)
    assert len(wire.transport.written) == 2
    assert "unit 9" in str(info.value)
    assert client.connected  # a timeout alone does not drop the connection
    client.close()


async def test_concurrent_requests_each_get_their_own_answer(wire: Wire) -> None:
    client = await connected()
    first = asyncio.create_task(client.read_holding_registers(0, count=1, device_id=1))
    second = asyncio.create_task(client.read_holding_registers(0, count=1, device_id=2))
    a, b = await wire.request(), await wire.request()
    wire.feed(adu(tid_of(b), 2, registers_pdu(3, [2])) + adu(tid_of(a), 1, registers_pdu(3, [1])))
    assert (await first).registers == [1] and (await second).registers == [2]
    client.close()


# --- unusable answers -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spoil", "what"),
    [
        (lambda tid: adu(tid, 1, registers_pdu(3, [1]), protocol=1), "protocol id"),
        (lambda tid: adu(tid, 1, registers_pdu(3, [1]), length=0), "length 0"),
        (lambda tid: adu(tid, 1, registers_pdu(3, [1]), length=1), "length 1"),
        (lambda tid: adu(tid, 1, registers_pdu(3, [1]), length=255), "length 255"),
        (lambda tid: b"\x00\x01HTTP/1.1 400 Bad Request\r\n", "protocol id"),
    ],
)
async def test_a_bad_header_drops_the_stream_and_the_connection(wire: Wire, spoil, what: str) -> None:
    client = await connected()
    task = asyncio.create_task(client.read_holding_registers(0, count=1))
    frame = await wire.request()
    wire.feed(spoil(tid_of(frame)))
    with pytest.raises(FrameError, match=what):
        await task
    assert not client.connected and wire.transport.closed
    with pytest.raises(ConnectError):
        await client.read_holding_registers(0, count=1)
    old = wire.transport
    assert await client.connect()  # the next transaction reconnects
    assert len(wire.transports) == 2
    await lost(old)  # the old connection's end does not touch the new one
    assert client.connected
    task = asyncio.create_task(client.read_holding_registers(0, count=1))
    frame = await wire.request()
    wire.feed(adu(tid_of(frame), 1, registers_pdu(3, [5])))
    assert (await task).registers == [5]
    client.close()


@pytest.mark.parametrize(
    ("answer", "what"),
    [
        (lambda tid: adu(tid, 2, registers_pdu(3, [1, 2])), "from unit 2"),
        (lambda tid: adu(tid, 1, registers_pdu(4, [1, 2])), "function code 4"),
        (lambda tid: adu(tid, 1, bytes([0x84, 2])), "function code 132"),
        (lambda tid: adu(tid, 1, registers_pdu(3, [1])), "byte count 2"),
        (lambda tid: adu(tid, 1, registers_pdu(3, [1, 2, 3])), "byte count 6"),
        (lambda tid: adu(tid, 1, bytes([3, 4, 0, 1])), "byte count 4 with 2 data bytes"),
        (lambda tid: adu(tid, 1, bytes([3, 4, 0, 1, 0, 2, 0])), "byte count 4 with 5 data bytes"),
        (lambda tid: adu(tid, 1, bytes([3])), "truncated"),
        (lambda tid: adu(tid, 1, bytes([0x83])), "exception reply of 1 bytes"),
        (lambda tid: adu(tid, 1, bytes([0x83, 2, 0])), "exception reply of 3 bytes"),
    ],
)
async def test_an_answer_that_does_not_fit_the_request_is_a_frame_error(wire: Wire, answer, what: str) -> None:
    client = await connected()
    task = asyncio.create_task(client.read_holding_registers(0, count=2, device_id=1))
    frame = await wire.request()
    wire.feed(answer(tid_of(frame)))
    with pytest.raises(FrameError, match=what):
        await task
    assert client.connected  # the stream is still in step: the connection stays
    task = asyncio.create_task(client.read_holding_registers(0, count=2, device_id=1))
    frame = await wire.request()
    wire.feed(adu(tid_of(frame), 1, registers_pdu(3, [8, 9])))
    assert (await task).registers == [8, 9]
    client.close()


@pytest.mark.parametrize(
    ("call", "answer", "what"),
    [
        (lambda c: c.read_coils(0, count=9), bytes([1, 1, 0xFF]), "byte count 1"),
        (lambda c: c.read_discrete_inputs(0, count=8), bytes([2, 2, 0xFF, 0]), "byte count 2"),
        (lambda c: c.write_coil(0, True), bytes.fromhex("05 0000 1234"), "coil echo"),
        (lambda c: c.write_register(0, 1), bytes.fromhex("06 0000"), "echo of 3 bytes"),
        (lambda c: c.write_registers(0, [1]), bytes.fromhex("10 0000 0001 00"), "echo of 6 bytes"),
    ],
)
async def test_bad_bit_replies_and_echoes(wire: Wire, call, answer: bytes, what: str) -> None:
    client = await connected()
    task = asyncio.create_task(call(client))
    frame = await wire.request()
    wire.feed(adu(tid_of(frame), 1, answer))
    with pytest.raises(FrameError, match=what):
        await task
    client.close()


# --- connection -----------------------------------------------------------------------------------------------


async def test_refused_connect_is_false(wire: Wire) -> None:
    wire.refuse = True
    client = MbapClient("meter.example", timeout=0.5)
    assert not await client.connect()
    assert not client.connected
    with pytest.raises(ConnectError, match="not connected"):
        await client.read_coils(0)
    wire.refuse = False
    assert await client.connect() and client.connected
    assert await client.connect() and len(wire.transports) == 1  # connected already: nothing new
    client.close()


async def test_connect_is_bounded_by_the_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    loop = asyncio.get_running_loop()

    async def never(*_: object, **__: object) -> None:
        await asyncio.Event().wait()

    monkeypatch.setattr(loop, "create_connection", never)
    client = MbapClient("meter.example", timeout=0.05)
    start = loop.time()
    assert not await client.connect()
    assert loop.time() - start < 1.0


async def test_close_fails_the_waiting_request_and_is_idempotent(wire: Wire) -> None:
    client = await connected()
    task = asyncio.create_task(client.read_input_registers(0, count=1))
    await wire.request()
    client.close()
    with pytest.raises(ConnectError, match="closed"):
        await task
    assert not client.connected and wire.transport.closed
    client.close()
    client.close()
    await lost(wire.transport)


async def test_connection_lost_fails_the_waiting_request(wire: Wire) -> None:
    client = await connected()
    task = asyncio.create_task(client.read_input_registers(0, count=1))
    await wire.request()
    wire.transport.protocol.connection_lost(ConnectionResetError(104, "Connection reset by peer"))
    with pytest.raises(ConnectError, match="lost"):
        await task
    assert not client.connected


async def test_cancelled_request_leaves_nothing_pending(wire: Wire) -> None:
    client = await connected()
    task = asyncio.create_task(client.read_input_registers(0, count=1))
    frame = await wire.request()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert client._pending == {}
    wire.feed(adu(tid_of(frame), 1, registers_pdu(4, [1])))  # its answer: dropped
    task = asyncio.create_task(client.read_input_registers(0, count=1))
    frame = await wire.request()
    wire.feed(adu(tid_of(frame), 1, registers_pdu(4, [2])))
    assert (await task).registers == [2]
    client.close()


# --- arguments ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.read_coils(0, count=0),
        lambda c: c.read_coils(0, count=2001),
        lambda c: c.read_discrete_inputs(0, count=2001),
        lambda c: c.read_holding_registers(0, count=126),
        lambda c: c.read_input_registers(0, count=0),
        lambda c: c.read_input_registers(-1),
        lambda c: c.read_input_registers(0x10000),
        lambda c: c.read_input_registers(0, device_id=256),
        lambda c: c.read_input_registers(0, device_id=-1),
        lambda c: c.read_input_registers(1.5),
        lambda c: c.write_coil(0x10000, True),
        lambda c: c.write_register(0, 0x10000),
        lambda c: c.write_register(0, -1),
        lambda c: c.write_register(0, 1, device_id=300),
        lambda c: c.write_coils(0, []),
        lambda c: c.write_coils(0, [True] * 1969),
        lambda c: c.write_registers(0, []),
        lambda c: c.write_registers(0, [0] * 124),
        lambda c: c.write_registers(0, [1, 0x10000]),
        lambda c: c.write_registers(65536, [1]),
    ],
)
async def test_arguments_out_of_range_are_value_errors(wire: Wire, call) -> None:
    client = await connected()
    with pytest.raises(ValueError, match="out of range"):
        await call(client)
    assert wire.transport.written == []  # nothing was sent
    client.close()


def test_constructor_arguments() -> None:
    with pytest.raises(ValueError):
        MbapClient("h", timeout=0)
    with pytest.raises(ValueError):
        MbapClient("h", retries=-1)
    with pytest.raises(ValueError):
        MbapClient("h", 0)
    client = MbapClient("h", 1502, timeout=0.5, retries=2)
    assert (client.host, client.port, client.timeout, client.retries) == ("h", 1502, 0.5, 2)
    assert client.name == "modbus-tcp://h:1502" and not client.connected
    assert MbapClient("h", name="bus A").name == "bus A"
