"""A lean asyncio Modbus TCP client (MBAP framing) for the gateway's Modbus TCP driver.

Why it exists: the Modbus TCP driver spends most of its CPU per transaction inside pymodbus's client (its
transaction manager, one PDU object per request and per reply, log strings formatted on every frame), about
twice what the socket work itself needs. A gateway polling thousands of meters does little else, so for plain
Modbus TCP endpoints the driver can use this client instead. pymodbus stays in use for RTU framing, on a serial
port and over TCP (``socket://``), where its framer and serial handling earn their keep.

The client speaks the subset of pymodbus's client API the driver uses (``connect``, ``connected``, ``close``,
``read_*``, ``write_*`` with ``count=`` and ``device_id=``), and its replies look like pymodbus's where the
driver reads them (``isError()``, ``registers``, ``bits``, ``address``, ``count``, ``exception_code``). It
raises ``drivers.errors`` itself:

    MeterTimeout    no answer within ``timeout``, in each of ``retries + 1`` attempts (a retry is a new
                    transaction id)
    ConnectError    not connected, or the connection was lost or closed while waiting
    FrameError      an answer that cannot be used: protocol id not 0, length field outside 2..254 (the stream
                    is out of step: the buffer is dropped and the connection closed, so the next transaction
                    reconnects), or a unit id, function code, byte count or PDU length that does not fit the
                    request
    ValueError      arguments outside what Modbus allows (nothing is sent)

A Modbus exception answer is a reply, not an error: ``isError()`` is True and ``exception_code`` says why.

One transaction at a time is the caller's rule (the driver holds the bus lock), but replies are matched to
requests by transaction id, so a late answer to a request that already timed out is dropped rather than taken
for the answer to the next one, and concurrent requests each get their own answer.

Hot path: precompiled ``struct.Struct``s, no logging or string formatting unless something fails, one future
per attempt, and no timer per attempt: one timer per client, armed for the earliest deadline, fires at most
once per ``timeout`` while answers come in time (scheduling and cancelling a timer per attempt costs more CPU than
the rest of the client's work on a transaction).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Awaitable, Sequence
from functools import partial
from typing import Self

from drivers.errors import ConnectError, FrameError, MeterTimeout

__all__ = ["MbapClient", "Reply"]

# The MBAP header is transaction id, protocol id (0), length (of unit id + PDU), unit id; the reader needs the
# first three to find where a frame ends.
_HEAD = struct.Struct(">HHH")
_TID = struct.Struct(">H")
# A whole request of FC01-06: header, function code, address, count (reads) or value (FC05/FC06).
_REQUEST = struct.Struct(">HHHBBHH")
# The fixed part of an FC15/FC16 request: header, function code, address, count, byte count.
_MULTI = struct.Struct(">HHHBBHHB")
_ECHO = struct.Struct(">HH")  # address and value / count in the echo of a write
_REGISTERS: tuple[struct.Struct, ...] = tuple(struct.Struct(f">{n}H") for n in range(126))
# Bits of each byte value, least significant first (as Modbus packs coils).
_BYTE_BITS: tuple[tuple[bool, ...], ...] = tuple(tuple(bool(b >> i & 1) for i in range(8)) for b in range(256))

MAX_READ_REGISTERS = 125
MAX_READ_BITS = 2000
MAX_WRITE_REGISTERS = 123
MAX_WRITE_BITS = 1968
_COIL_ON = 0xFF00
_MIN_LENGTH, _MAX_LENGTH = 2, 254  # MBAP length field: unit id + function code .. unit id + 253-byte PDU


class Reply:
    """One answer, shaped like the pymodbus reply attributes the driver reads.

    Attributes:
        function_code: the request's function code, or it | 0x80 for an exception reply.
        dev_id: the unit id that answered.
        transaction_id: the MBAP transaction id of the answered attempt.
        address: the echoed address (writes); the request's address (reads, exception replies).
        count: registers / bits read as requested (reads), the echoed count (FC15/16), 1 (FC05/06).
        registers: FC03/04 values; FC06 the echoed value in ``registers[0]``; else empty.
        bits: FC01/02 bits, least significant bit of each byte first, padded to a multiple of 8 (as pymodbus
            does; take ``bits[:count]``); FC05 the echoed state in ``bits[0]``; else empty.
        exception_code: the Modbus exception code of an exception reply, else 0.
    """

    __slots__ = ("address", "bits", "count", "dev_id", "exception_code", "function_code", "registers",
                 "transaction_id")

    def __init__(
        self,
        function_code: int,
        dev_id: int,
        transaction_id: int,
        address: int,
        count: int,
        registers: list[int],
        bits: list[bool],
        exception_code: int = 0,
    ) -> None:
        self.function_code = function_code
        self.dev_id = dev_id
        self.transaction_id = transaction_id
        self.address = address
        self.count = count
        self.registers = registers
        self.bits = bits
        self.exception_code = exception_code

    def isError(self) -> bool:
        """True for a Modbus exception reply (pymodbus's name for it, which the driver calls)."""
        return self.function_code > 0x80

    def __repr__(self) -> str:
        if self.function_code > 0x80:
            return (f"Reply(function_code={self.function_code:#04x}, dev_id={self.dev_id}, "
                    f"exception_code={self.exception_code})")
        return (f"Reply(function_code={self.function_code}, dev_id={self.dev_id}, address={self.address}, "
                f"count={self.count}, registers={self.registers}, bits={self.bits})")


class _Connection(asyncio.Protocol):
    """One TCP connection of a client: cuts the byte stream into MBAP frames and hands them over by transaction id.

    A connection the client has let go of (closed, replaced) hands nothing over.
    """

    __slots__ = ("buffer", "client", "transport")

    def __init__(self, client: MbapClient) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError, AttributeError, ValueError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        client = self.client
        if client._conn is not self:
            return
        buffer = self.buffer + data if self.buffer else data
        size = len(buffer)
        pos = 0
        pending = client._pending
        while size - pos >= 6:
            tid, protocol, length = _HEAD.unpack_from(buffer, pos)
            if protocol or not _MIN_LENGTH <= length <= _MAX_LENGTH:
                client._out_of_step(self, protocol, length)
                return
            end = pos + 6 + length
            if end > size:
                break
            waiting = pending.pop(tid, None)
            if waiting is not None and not waiting[0].done():
                waiting[0].set_result(buffer if pos == 0 and end == size else buffer[pos:end])
            # else: an answer nobody waits for any more (its attempt timed out): dropped
            pos = end
        self.buffer = buffer[pos:] if pos else buffer

    def eof_received(self) -> bool | None:
        return None  # close the transport: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.buffer = b""
        client = self.client
        if client._conn is self:
            client._conn = None
            client._transport = None
            how = f"connection lost: {exc}" if exc is not None else "connection closed by the peer"
            client._fail_pending(ConnectError, how)


class MbapClient:
    """Modbus TCP client of one endpoint; every unit id behind it shares the connection.

    Args:
        host: endpoint host name or address.
        port: TCP port.
        timeout: seconds to wait for the connection, and for the answer of each attempt.
        retries: times a request is resent (with a new transaction id) after an attempt got no answer.
        name: how errors name the endpoint (default ``modbus-tcp://host:port``).
    """

    __slots__ = ("_conn", "_generation", "_loop", "_pending", "_tid", "_timer", "_timer_due", "_transport", "host",
                 "name", "port", "retries", "timeout")

    def __init__(self, host: str, port: int = 502, *, timeout: float = 1.0, retries: int = 0, name: str = "") -> None:
        if not timeout > 0:
            raise ValueError("timeout must be positive")
        if retries < 0:
            raise ValueError("retries must not be negative")
        if not 0 < port <= 0xFFFF:
            raise ValueError(f"port {port} is not within 1..65535")
        self.host = host
        self.port = port
        self.timeout = timeout
        self.retries = retries
        self.name = name or f"modbus-tcp://{host}:{port}"
        self._conn: _Connection | None = None
        self._transport: asyncio.Transport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # transaction id -> (future of the answer frame, None on timeout; deadline in loop time)
        self._pending: dict[int, tuple[asyncio.Future[bytes | None], float]] = {}
        self._timer: asyncio.TimerHandle | None = None  # fires at the earliest deadline (or before it)
        self._timer_due = 0.0
        self._tid = 0
        self._generation = 0  # bumped by close(): a connect still in progress then gives up

    def __repr__(self) -> str:
        return f"MbapClient({self.name!r}, connected={self.connected})"

    # --- connection -----------------------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        """True while the connection is open."""
        return self._conn is not None

    async def connect(self) -> bool:
        """Open the connection (if it is not open); False when refused or not made within ``timeout``."""
        if self._conn is not None:
            return True
        loop = asyncio.get_running_loop()
        generation = self._generation
        try:
            async with asyncio.timeout(self.timeout):
                transport, conn = await loop.create_connection(partial(_Connection, self), self.host, self.port)
        except (OSError, TimeoutError):
            return False
        if generation != self._generation or self._conn is not None or conn.transport is None:
            # closed meanwhile, another connect won, or the connection is already gone
            transport.close()
            return self._conn is not None
        self._loop = loop
        self._conn = conn
        self._transport = transport  # type: ignore[assignment]
        return True

    def close(self) -> None:
        """Close the connection (again: nothing happens); a request waiting for its answer gets ``ConnectError``."""
        self._generation += 1
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        conn, self._conn, self._transport = self._conn, None, None
        if conn is not None:
            conn.buffer = b""
            if conn.transport is not None:
                conn.transport.close()
        self._fail_pending(ConnectError, "connection closed")

    async def __aenter__(self) -> Self:
        if not await self.connect():
            raise ConnectError(f"{self.name}: cannot connect")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    def _fail_pending(self, error: type[ConnectError | FrameError], how: str) -> None:
        pending = self._pending
        if not pending:
            return
        futures = [future for future, _ in pending.values()]
        pending.clear()
        for future in futures:
            if not future.done():
                future.set_exception(error(f"{self.name}: {how}"))

    def _out_of_step(self, conn: _Connection, protocol: int, length: int) -> None:
        """A bad MBAP header: frames can no longer be found in the stream; drop it and close the connection."""
        conn.buffer = b""
        if self._conn is conn:
            self._conn = None
            self._transport = None
        if conn.transport is not None:
            conn.transport.close()
        self._fail_pending(
            FrameError, f"bad MBAP header (protocol id {protocol}, length {length}): connection closed"
        )

    # --- requests -------------------------------------------------------------------------------------------
    def read_coils(self, address: int, *, count: int = 1, device_id: int = 1) -> Awaitable[Reply]:
        """FC01: ``count`` (1..2000) coils from ``address`` (``reply.bits``)."""
        return self._read(1, address, count, device_id, MAX_READ_BITS)

    def read_discrete_inputs(self, address: int, *, count: int = 1, device_id: int = 1) -> Awaitable[Reply]:
        """FC02: ``count`` (1..2000) discrete inputs from ``address`` (``reply.bits``)."""
        return self._read(2, address, count, device_id, MAX_READ_BITS)

    def read_holding_registers(self, address: int, *, count: int = 1, device_id: int = 1) -> Awaitable[Reply]:
        """FC03: ``count`` (1..125) holding registers from ``address`` (``reply.registers``)."""
        return self._read(3, address, count, device_id, MAX_READ_REGISTERS)

    def read_input_registers(self, address: int, *, count: int = 1, device_id: int = 1) -> Awaitable[Reply]:
        """FC04: ``count`` (1..125) input registers from ``address`` (``reply.registers``)."""
        return self._read(4, address, count, device_id, MAX_READ_REGISTERS)

    def write_coil(self, address: int, value: bool, *, device_id: int = 1) -> Awaitable[Reply]:
        """FC05: one coil on (0xFF00) or off (0x0000); the echoed state is ``reply.bits[0]``."""
        tid = (self._tid + 1) & 0xFFFF
        try:
            frame = _REQUEST.pack(tid, 0, 6, device_id, 5, address, _COIL_ON if value else 0)
        except struct.error:
            raise _bad_arguments(address, 1, device_id, 1) from None
        self._tid = tid
        return self._exchange(frame, tid, device_id, 5, address, 1)

    def write_register(self, address: int, value: int, *, device_id: int = 1) -> Awaitable[Reply]:
        """FC06: one holding register (value 0..65535); the echoed value is ``reply.registers[0]``."""
        tid = (self._tid + 1) & 0xFFFF
        try:
            frame = _REQUEST.pack(tid, 0, 6, device_id, 6, address, value)
        except struct.error:
            raise _bad_arguments(address, 1, device_id, 1, value) from None
        self._tid = tid
        return self._exchange(frame, tid, device_id, 6, address, 1)

    def write_coils(self, address: int, values: Sequence[bool], *, device_id: int = 1) -> Awaitable[Reply]:
        """FC15: 1..1968 coils from ``address``; the echoed address and count are ``reply.address/count``."""
        count = len(values)
        if not 1 <= count <= MAX_WRITE_BITS:
            raise _bad_arguments(address, count, device_id, MAX_WRITE_BITS)
        packed = bytearray((count + 7) >> 3)
        for i, value in enumerate(values):
            if value:
                packed[i >> 3] |= 1 << (i & 7)
        tid = (self._tid + 1) & 0xFFFF
        try:
            frame = _MULTI.pack(tid, 0, 7 + len(packed), device_id, 15, address, count, len(packed)) + packed
        except struct.error:
            raise _bad_arguments(address, count, device_id, MAX_WRITE_BITS) from None
        self._tid = tid
        return self._exchange(bytes(frame), tid, device_id, 15, address, count)

    def write_registers(self, address: int, values: Sequence[int], *, device_id: int = 1) -> Awaitable[Reply]:
        """FC16: 1..123 holding registers (0..65535 each) from ``address``; the echo is ``reply.address/count``."""
        count = len(values)
        if not 1 <= count <= MAX_WRITE_REGISTERS:
            raise _bad_arguments(address, count, device_id, MAX_WRITE_REGISTERS)
        tid = (self._tid + 1) & 0xFFFF
        try:
            frame = _MULTI.pack(tid, 0, 7 + 2 * count, device_id, 16, address, count, 2 * count)
            frame += _REGISTERS[count].pack(*values)
        except struct.error:
            raise _bad_arguments(address, count, device_id, MAX_WRITE_REGISTERS, values) from None
        self._tid = tid
        return self._exchange(frame, tid, device_id, 16, address, count)

    def _read(self, function: int, address: int, count: int, device_id: int, limit: int) -> Awaitable[Reply]:
        if not 1 <= count <= limit:
            raise _bad_arguments(address, count, device_id, limit)
        tid = (self._tid + 1) & 0xFFFF
        try:  # struct checks the address (0..65535) and the unit id (0..255)
            frame = _REQUEST.pack(tid, 0, 6, device_id, function, address, count)
        except struct.error:
            raise _bad_arguments(address, count, device_id, limit) from None
        self._tid = tid
        return self._exchange(frame, tid, device_id, function, address, count)

    async def _exchange(self, frame: bytes, tid: int, unit: int, function: int, address: int, count: int) -> Reply:
        """Send ``frame`` and wait for the answer with its transaction id, resending after a timeout; decode it."""
        transport = self._transport
        if transport is None:
            raise ConnectError(f"{self.name}: not connected")
        loop: asyncio.AbstractEventLoop = self._loop  # type: ignore[assignment]  # set with the transport
        pending = self._pending
        attempts_left = self.retries
        while True:
            future = loop.create_future()
            due = loop.time() + self.timeout
            pending[tid] = (future, due)
            transport.write(frame)
            if self._timer is None or due < self._timer_due:
                self._arm(loop, due)
            try:
                answer = await future
            finally:
                pending.pop(tid, None)
            if answer is not None:
                break
            conn = self._conn
            if conn is not None and conn.buffer:  # part of a frame came and the rest never will: out of step
                received = len(conn.buffer)
                self.close()
                raise FrameError(f"{self.name} unit {unit} FC{function:02d} {address:#06x}+{count}: an incomplete "
                                 f"answer ({received} bytes) and no more in time: connection closed")
            if not attempts_left:
                raise MeterTimeout(
                    f"{self.name} unit {unit} FC{function:02d} {address:#06x}+{count}: no answer "
                    f"({self.retries + 1} attempt(s) of {self.timeout:g} s)"
                )
            attempts_left -= 1
            transport = self._transport
            if transport is None:
                raise ConnectError(f"{self.name}: connection lost")
            tid = self._tid = (self._tid + 1) & 0xFFFF
            frame = _TID.pack(tid) + frame[2:]
        return self._decode(answer, tid, unit, function, address, count)

    # One timer for every attempt: armed for the earliest deadline and left alone when the answer comes in time.
    # A timer per attempt (call_later, then cancel) would cost more CPU than the rest of a transaction's Python.
    def _arm(self, loop: asyncio.AbstractEventLoop, due: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_due = due
        self._timer = loop.call_at(due, self._expire, loop)

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        """Timer: attempts past their deadline get None (no answer); re-armed for the next deadline."""
        self._timer = None
        pending = self._pending
        if not pending:
            return
        now = loop.time()
        later = float("inf")
        for tid, (future, due) in list(pending.items()):
            if due <= now:
                del pending[tid]
                if not future.done():
                    future.set_result(None)
            elif due < later:
                later = due
        if later != float("inf"):
            # not before 1 ms from now: a timer that fires early (millisecond clocks) must not spin
            self._arm(loop, max(later, now + 0.001))

    def _decode(self, adu: bytes, tid: int, unit: int, function: int, address: int, count: int) -> Reply:
        """The reply in ``adu`` (a whole frame with this transaction id, header checked) to the request."""
        size = len(adu)  # 7 + PDU length, and at least 8
        if adu[6] != unit:
            raise self._unusable(unit, function, f"answer from unit {adu[6]}")
        answered = adu[7]
        if answered != function:
            if answered == function | 0x80:
                if size != 9:
                    raise self._unusable(unit, function, f"exception reply of {size - 7} bytes")
                return Reply(answered, unit, tid, address, count, [], [], adu[8])
            raise self._unusable(unit, function, f"answer with function code {answered}")
        if function == 3 or function == 4:
            if size != 9 + 2 * count or adu[8] != 2 * count:
                raise self._byte_count(adu, unit, function, 2 * count)
            return Reply(function, unit, tid, address, count, list(_REGISTERS[count].unpack_from(adu, 9)), [])
        if function <= 2:
            nbytes = (count + 7) >> 3
            if size != 9 + nbytes or adu[8] != nbytes:
                raise self._byte_count(adu, unit, function, nbytes)
            bits: list[bool] = []
            extend = bits.extend
            for byte in adu[9:]:
                extend(_BYTE_BITS[byte])
            return Reply(function, unit, tid, address, count, [], bits)
        # a write's echo: address and value (FC05/06) or count (FC15/16)
        if size != 12:
            raise self._unusable(unit, function, f"echo of {size - 7} bytes (5 expected)")
        echoed_address, value = _ECHO.unpack_from(adu, 8)
        if function == 6:
            return Reply(6, unit, tid, echoed_address, 1, [value], [])
        if function == 5:
            if value != _COIL_ON and value != 0:
                raise self._unusable(unit, function, f"coil echo with value {value:#06x}")
            return Reply(5, unit, tid, echoed_address, 1, [], [value == _COIL_ON])
        return Reply(function, unit, tid, echoed_address, value, [], [])

    def _byte_count(self, adu: bytes, unit: int, function: int, expected: int) -> FrameError:
        if len(adu) < 9:
            return self._unusable(unit, function, "truncated answer: no byte count")
        return self._unusable(
            unit, function, f"byte count {adu[8]} with {len(adu) - 9} data bytes ({expected} expected)"
        )

    def _unusable(self, unit: int, function: int, what: str) -> FrameError:
        return FrameError(f"{self.name} unit {unit} FC{function:02d}: unusable answer: {what}")


def _bad_arguments(address: object, count: int, device_id: object, limit: int, values: object = None) -> ValueError:
    what = f"address {address!r} (0..65535), count {count} (1..{limit}), device_id {device_id!r} (0..255)"
    if values is not None:
        what += f", values {values!r} (0..65535)"
    return ValueError(f"{what}: out of range")
