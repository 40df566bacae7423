"""Serve a ``SimulatedBus`` over a serial path (e.g. one end of a pty pair) and/or TCP.

``pace`` emulates the line a pty does not: the request's and the reply's line time (11 bits per byte at the
baud rate) plus a reply delay Td drawn from ``td`` (default 20-50 ms). Faults are applied per meter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import termios
from collections.abc import Callable, Iterable
from typing import Any, Self, cast

import serial
import serial_asyncio_fast

from drivers.dlt645.codec import Frame, FrameReader
from simulators.dlt645.bus import SimulatedBus
from simulators.dlt645.model import Fault, RelayKind, SimulatedDlt645Meter
from simulators.faults import FaultPlan
from simulators.loadprofile import LoadProfile, unit_random
from simulators.meter import Clock, SimClock, SimulatedMeter
from simulators.relaylog import RelayLog

__all__ = ["Dlt645Simulator", "make_meters"]

log = logging.getLogger(__name__)

BITS_PER_BYTE = 11  # start + 8 data + even parity + stop


def make_meters(
    count: int,
    *,
    first_address: int = 1,
    seed: int = 0,
    clock: Clock | None = None,
    speed: float = 1.0,
    trip_delay_s: float = 0.0,
    **options: Any,
) -> list[SimulatedDlt645Meter]:
    """``count`` meters with consecutive addresses on one simulated clock, seeded loads, energies and balances.

    ``options`` go to ``SimulatedDlt645Meter`` (passwords, relay_kind, supports_block, ...).
    """
    clock = clock if clock is not None else SimClock(speed=speed)
    meters = []
    for index in range(count):
        meter = SimulatedMeter(
            LoadProfile.seeded(seed, index),
            clock=clock,
            energy_wh=100_000 + 9_900_000 * unit_random(seed, index, 4),  # 100 - 10 000 kWh
            trip_delay_s=trip_delay_s,
        )
        meter.balance_fen = int(20_000 * unit_random(seed, index, 5))
        meters.append(SimulatedDlt645Meter(f"{first_address + index:012d}", meter, **options))
    return meters


class _LineProtocol(asyncio.Protocol):
    """One connection to the bus: frames in, the simulator's replies out, one at a time."""

    def __init__(self, simulator: Dlt645Simulator) -> None:
        self.simulator = simulator
        self.reader = FrameReader()
        self.transport: asyncio.Transport | None = None
        self.queue: asyncio.Queue[tuple[Frame, int]] = asyncio.Queue()
        self.worker: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport, so cast rather than assert
        self.transport = cast(asyncio.Transport, transport)
        self.worker = asyncio.get_running_loop().create_task(self._work(), name="dlt645-sim.line")
        self.simulator._lines.add(self)

    def data_received(self, data: bytes) -> None:
        for frame in self.reader.feed(data):
            self.queue.put_nowait((frame, len(frame.encode()) + 4))  # masters send 4 FE in front

    def connection_lost(self, exc: Exception | None) -> None:
        self.simulator._lines.discard(self)
        if self.worker is not None:
            self.worker.cancel()

    async def _work(self) -> None:
        while True:
            frame, request_len = await self.queue.get()
            async with self.simulator._bus_lock:  # one line: one transaction at a time across endpoints
                await self.simulator._answer(self, frame, request_len)

    def send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)


class Dlt645Simulator:
    """Simulated DL/T 645 meters on one bus, served while the context is entered.

    Args:
        meters: how many meters (addresses ``first_address`` … consecutive), or a list of ready meters.
        serial: a serial device path to serve on (e.g. the simulator end of a pty pair).
        tcp: ``"host:port"`` to listen on (port 0 picks a free one; see ``tcp_port``).
        baud: line rate used by ``pace`` (and to open ``serial``).
        parity: ``None`` tries E (8E1) and falls back to N on a pty, which refuses parity E.
        pace: emulate line time and Td.
        td: the reply delay range in seconds when pacing.
        seed: seeds the loads, starting energies and Td draws.
        speed: simulated seconds per real second (when ``meters`` is a count).
        preamble: FE bytes in front of replies (meters send 0-4).
        faults: the shared fleet fault plan (``simulators.faults``; meters named by index 0..); per-meter faults
            can also be set on each meter with ``inject``.
        trip_delay_s: real seconds between a trip and the contact opening (when ``meters`` is a count).
        relay_kind: how 1BH close-allowed behaves (when ``meters`` is a count): ``INTERNAL`` waits for the button.
        protect: indices of the meters that start in 保电.
        relay_log: where every 1CH command is recorded (default: a new log, ``relay_log``).
        sleep: how replies are delayed (tests inject one).
    """

    def __init__(
        self,
        *,
        meters: int | list[SimulatedDlt645Meter] = 1,
        serial: str | None = None,
        tcp: str | None = None,
        baud: int = 2400,
        parity: str | None = None,
        pace: bool = False,
        td: tuple[float, float] = (0.020, 0.050),
        seed: int = 0,
        speed: float = 1.0,
        first_address: int = 1,
        preamble: int = 0,
        faults: FaultPlan | None = None,
        trip_delay_s: float = 0.0,
        relay_kind: RelayKind = RelayKind.INTERNAL,
        protect: Iterable[int] = (),
        relay_log: RelayLog | None = None,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ) -> None:
        if isinstance(meters, int):
            meters = make_meters(meters, first_address=first_address, seed=seed, speed=speed,
                                 trip_delay_s=trip_delay_s, relay_kind=relay_kind)
        self.bus = SimulatedBus(meters, faults=faults, relay_log=relay_log)
        for index in protect:
            if not 0 <= index < len(meters):
                raise ValueError(f"protect: no meter {index} (meters are 0..{len(meters) - 1})")
            meters[index].set_protect(True)
        self.serial_path = serial
        self.tcp = tcp
        self.baud = baud
        self.parity = parity
        self.pace = pace
        self.td = td
        self.preamble = preamble
        self._rng = random.Random(seed)
        self._sleep = sleep
        self._bus_lock = asyncio.Lock()
        self._lines: set[_LineProtocol] = set()
        self._server: asyncio.Server | None = None
        self._serial_transport: asyncio.BaseTransport | None = None
        self.tcp_port: int | None = None
        self.replies_sent = 0

    @property
    def meters(self) -> list[SimulatedDlt645Meter]:
        return self.bus.meters

    @property
    def faults(self) -> FaultPlan:
        return self.bus.faults

    @property
    def relay_log(self) -> RelayLog:
        return self.bus.relay_log

    def meter(self, address: str) -> SimulatedDlt645Meter:
        return self.bus.meter(address)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.tcp is not None:
            host, _, port = self.tcp.rpartition(":")
            self._server = await loop.create_server(
                lambda: _LineProtocol(self), host or "127.0.0.1", int(port)
            )
            self.tcp_port = self._server.sockets[0].getsockname()[1]
        if self.serial_path is not None:
            self._serial_transport = await self._open_serial(self.serial_path)
        log.info(
            "dlt645 simulator: %d meters, serial=%s tcp=%s", len(self.meters), self.serial_path, self.tcp_port
        )

    async def _open_serial(self, path: str) -> asyncio.BaseTransport:
        loop = asyncio.get_running_loop()
        for parity in [self.parity] if self.parity else ["E", "N"]:
            try:
                transport, _ = await serial_asyncio_fast.create_serial_connection(
                    loop, lambda: _LineProtocol(self), path, baudrate=self.baud, parity=parity
                )
                return transport
            except (termios.error, serial.SerialException, OSError) as exc:
                if self.parity or parity == "N":
                    raise
                log.info("dlt645 simulator: %s refuses parity E (%s), using N (a pty?)", path, exc)
        raise AssertionError("unreachable")

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        if self._serial_transport is not None:
            self._serial_transport.close()
            self._serial_transport = None
        for line in list(self._lines):
            if line.transport is not None:
                line.transport.close()
            if line.worker is not None:
                line.worker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await line.worker
        self._lines.clear()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _answer(self, line: _LineProtocol, frame: Frame, request_len: int) -> None:
        reply = self.bus.handle(frame)  # executes the request (unless the meter does not hear it)
        if reply is None:
            return
        shared = reply.fault
        raw = reply.frame.encode(preamble=self.preamble)
        own = reply.meter.take_fault()
        kind = own.kind if own is not None else None
        if shared.silent or shared.mute or kind is Fault.SILENCE:
            return
        delay = shared.delay_s + (own.delay if kind is Fault.SLOW and own is not None else 0.0)
        if self.pace:
            delay += self._rng.uniform(*self.td) + (request_len + len(raw)) * BITS_PER_BYTE / self.baud
        if shared.garbage or kind is Fault.GARBAGE:
            raw = bytes(self._rng.choice([0x68, 0x16, 0x00, 0x33, 0xFE]) for _ in range(len(raw)))
        elif shared.bad_crc or kind is Fault.BAD_CHECKSUM:
            raw = raw[:-2] + bytes([raw[-2] ^ 0xFF]) + raw[-1:]
        if delay:
            await self._sleep(delay)
        line.send(raw)
        self.replies_sent += 1
