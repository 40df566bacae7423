"""Fakes of the service's ports for unit tests: a clock that moves only when the test says so, a meter driver
whose meters answer, fail or take time as the test says (on that clock), and stored rows for the read models."""

from __future__ import annotations

import asyncio
import datetime as dt
import heapq
import itertools
from types import SimpleNamespace

from drivers.base import MeterDriver, Reading, RelayAction, RelayState
from drivers.errors import ConnectError, ExceptionReply, MeterTimeout
from gateway.service.clock import Clock
from gateway.service.commands import CommandRecord
from gateway.service.views import AccountRows, MeterRows, ReadStore

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


class FakeReadStore(ReadStore):
    """Stored rows in lists, as the read models see them (rows are namespaces with the table's columns)."""

    def __init__(self) -> None:
        self.accounts: dict[str, SimpleNamespace] = {}
        self.meters: dict[str, SimpleNamespace] = {}
        self.reading_rows: list[SimpleNamespace] = []
        self.ledger_rows: list[SimpleNamespace] = []
        self.command_records: list[CommandRecord] = []

    async def account(self, account_id: str) -> AccountRows:
        meters = sorted((m for m in self.meters.values() if m.account_id == account_id), key=lambda m: m.id)
        return AccountRows(self.accounts.get(account_id), meters)

    async def meter(self, meter_id: str, account_id: str) -> MeterRows:
        mine = [r for r in self.reading_rows if r.meter_id == meter_id]
        account = self.accounts.get(account_id)
        return MeterRows(self.meters.get(meter_id), max(mine, key=lambda r: r.id, default=None),
                         None if account is None else account.state)

    @staticmethod
    def _page(rows: list[SimpleNamespace], limit: int, before_id: int | None) -> list[SimpleNamespace]:
        rows = sorted((r for r in rows if before_id is None or r.id < before_id), key=lambda r: -r.id)
        return rows[:limit]

    async def ledger(self, account_id: str, *, limit: int, before_id: int | None) -> list[SimpleNamespace]:
        return self._page([r for r in self.ledger_rows if r.account_id == account_id], limit, before_id)

    async def readings(self, meter_id: str, *, limit: int, before_id: int | None) -> list[SimpleNamespace]:
        return self._page([r for r in self.reading_rows if r.meter_id == meter_id], limit, before_id)

    async def commands(self, *, meter_id: str | None, state: str | None, before: dt.datetime | None,
                       limit: int) -> list[CommandRecord]:
        rows = [c for c in self.command_records if (meter_id is None or c.meter_id == meter_id)
                and (state is None or c.state == state) and (before is None or c.created_at < before)]
        rows.sort(key=lambda c: c.id)
        rows.sort(key=lambda c: c.created_at, reverse=True)
        return rows[:limit]

    async def command(self, command_id: str) -> CommandRecord | None:
        return next((c for c in self.command_records if c.id == command_id), None)

    async def ping(self) -> None:
        return None
