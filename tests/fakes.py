"""Fakes of the service's ports for unit tests: a clock that moves only when the test says so, and a meter
driver whose meters answer, fail or take time as the test says (on that clock)."""

from __future__ import annotations

import asyncio
import datetime as dt
import heapq
import itertools

from drivers.base import MeterDriver, Reading, RelayAction, RelayState
from drivers.errors import ConnectError, ExceptionReply, MeterTimeout
from gateway.service.clock import Clock

T0 = dt.datetime(2026, 11, 23, 8, tzinfo=dt.UTC)


class FakeClock(Clock):
    """Time that stands still until ``advance``: sleepers wake in order of their deadline, and the event loop
    runs everything that became ready in between (no real time passes, nothing depends on the machine)."""

    def __init__(self, start: dt.datetime = T0) -> None:
        self.start, self.seconds = start, 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def now(self) -> dt.datetime:
        return self.start + dt.timedelta(seconds=self.seconds)

    def monotonic(self) -> float:
        return self.seconds

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.seconds + seconds, next(self._order), future))
        await future

    async def wait(self, event: asyncio.Event, timeout: float | None) -> bool:
        if event.is_set():
            return True
        waiter = asyncio.ensure_future(event.wait())
        tasks: set[asyncio.Future[object]] = {waiter}  # type: ignore[arg-type]
        if timeout is not None:
            tasks.add(asyncio.ensure_future(self.sleep(timeout)))
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
        return event.is_set()

    async def settle(self) -> None:
        """Let every task that can run, run (a few hundred turns of the loop; no time passes)."""
        for _ in range(200):
            await asyncio.sleep(0)

    async def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, waking each sleeper at its own deadline, in order."""
        target = self.seconds + seconds
        await self.settle()
        while self._sleepers and self._sleepers[0][0] <= target:
            deadline, _, future = heapq.heappop(self._sleepers)
            self.seconds = max(self.seconds, deadline)
            if not future.done():
                future.set_result(None)
            await self.settle()
        self.seconds = target
        await self.settle()


class FakeDriver(MeterDriver[str]):
    """Meters (named by their id) that answer after ``latency`` seconds of ``clock``; ``dead`` ones time out after
    ``timeout``; ``refusing`` ones answer with an exception reply; ``down`` refuses connections. Relay commands
    switch ``relays`` (unless ``stuck``); every call is kept in ``calls`` as (seconds, what, meter)."""

    def __init__(self, clock: FakeClock, *, latency: float = 0.0, timeout: float = 0.05) -> None:
        self.clock, self.latency, self.timeout = clock, latency, timeout
        self.dead: set[str] = set()
        self.refusing: set[str] = set()
        self.stuck: set[str] = set()
        self.arm: set[str] = set()  # close allowed: a close arms the relay (the customer presses the button)
        self.down = False
        self.energy: dict[str, int] = {}
        self.relays: dict[str, RelayState] = {}
        self.calls: list[tuple[float, str, str]] = []

    async def _exchange(self, what: str, meter: str) -> None:
        self.calls.append((self.clock.seconds, what, meter))
        if self.down:
            raise ConnectError("connection refused", meter_id=meter)
        if meter in self.dead:
            await self.clock.sleep(self.timeout)
            raise MeterTimeout("no answer", meter_id=meter)
        if self.latency:
            await self.clock.sleep(self.latency)
        if meter in self.refusing:
            raise ExceptionReply("exception 2", code=2, meter_id=meter)

    async def read(self, meter: str) -> Reading:
        await self._exchange("read", meter)
        return Reading(meter, self.clock.now(), self.energy.get(meter, 1000),
                       relay=self.relays.setdefault(meter, RelayState.CLOSED))

    async def set_relay(self, meter: str, action: RelayAction, *, valid_until: dt.datetime | None = None) -> None:
        await self._exchange("set_relay", meter)
        if meter in self.stuck:
            return
        if action is RelayAction.OPEN:
            self.relays[meter] = RelayState.OPEN
        else:
            self.relays[meter] = RelayState.ARMED if meter in self.arm else RelayState.CLOSED

    async def read_relay(self, meter: str) -> RelayState:
        await self._exchange("read_relay", meter)
        return self.relays.setdefault(meter, RelayState.CLOSED)

    def calls_of(self, meter: str, what: str = "read") -> list[float]:
        return [t for t, w, m in self.calls if m == meter and w == what]
