"""Fakes of the service's ports for unit tests: a clock that moves only when the test says so, a meter driver
whose meters answer, fail or take time as the test says (on that clock), stored rows for the read models, and a
storage kept in memory whose commits can be held back."""

from __future__ import annotations

import asyncio
import datetime as dt
import heapq
import itertools
from types import SimpleNamespace

from drivers.base import MeterDriver, Reading, RelayAction, RelayState
from drivers.errors import ConnectError, ExceptionReply, MeterTimeout
from gateway.service.clock import Clock
from gateway.domain.account import PrepaidAccount
from gateway.service import ports
from gateway.service.commands import CommandRecord
from gateway.service.ports import BatchChanges, MeterState, NoticeRecord, PaymentKey, StaleWrite
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
        self.notice_records: list[NoticeRecord] = []

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

    async def command(self, command_id: str) -> CommandRecord | None:
        return next((c for c in self.command_records if c.id == command_id), None)

    async def notice(self, notice_id: int) -> NoticeRecord | None:
        return next((n for n in self.notice_records if n.id == notice_id), None)

    async def ping(self) -> None:
        return None


class FakeStorage(ports.Storage):
    """Storage in memory: accounts (version, state dict), meters, payments, the ledger, the outbox and the rate
    limiter; ``commits`` keeps every batch written. ``hold`` (an event, set by default) holds each batch's commit
    until it is set; ``entered`` is set while a commit waits on it. Only what the writer uses is implemented."""

    def __init__(self, *, exclusive: bool = True) -> None:
        self.exclusive = exclusive
        self.accounts: dict[str, tuple[int, dict[str, object]]] = {}
        self.meters: dict[str, MeterState] = {}
        self.payments: dict[PaymentKey, dict[str, object]] = {}
        self.ledger: list[dict[str, object]] = []
        self.outbox: list[dict[str, object]] = []
        self.limiter: dict[str, object] | None = {"recent": []}
        self.commits: list[BatchChanges] = []
        self.hold = asyncio.Event()
        self.hold.set()
        self.busy_neighbour = False  # (rows read under lock, through a unit of work, are not touched)
        self.entered = asyncio.Event()

    def add(self, account: PrepaidAccount) -> None:
        self.accounts[account.id] = (0, account.state_dict())
        for meter_id in account.cursors:
            self.meters[meter_id] = MeterState("online", "closed", 0)

    def account_row(self, account: PrepaidAccount, now: dt.datetime) -> dict[str, object]:
        return {"balance_fen": account.balance_fen, "state": account.state_dict()}

    def __call__(self, *, readonly: bool = False, background: bool = False) -> FakeUnitOfWork:
        return FakeUnitOfWork(self)

    async def commit_batch(self, changes: BatchChanges, *, background: bool = False) -> None:
        self.entered.set()
        await self.hold.wait()
        self.entered.clear()
        if self.busy_neighbour:  # another instance changes every account between the read and the write
            self.accounts = {i: (v + 1, s) for i, (v, s) in self.accounts.items()}
        self.write(changes)

    def write(self, changes: BatchChanges) -> None:
        if any(self.accounts[account_id][0] != version for account_id, version, _ in changes.accounts):
            raise StaleWrite("fake: an account changed")
        for account_id, version, row in changes.accounts:
            self.accounts[account_id] = (version + 1, row["state"])  # type: ignore[assignment]
        self.payments.update({(p["source"], p["payment_id"]): p for p in changes.payments})  # type: ignore[misc]
        self.ledger += changes.ledger
        self.outbox += changes.outbox
        if changes.limiter is not None:
            self.limiter = changes.limiter[1]
        self.commits.append(changes)


class _FakeRepository:
    def __init__(self, storage: FakeStorage) -> None:
        self.storage = storage


class _FakeAccounts(_FakeRepository, ports.AccountRepository):
    async def ids(self) -> set[str]:
        return set(self.storage.accounts)

    async def states(self, ids: list[str]) -> dict[str, tuple[int, object]]:
        return {i: self.storage.accounts[i] for i in ids if i in self.storage.accounts}

    async def versions(self, ids: list[str]) -> dict[str, int]:
        return {i: self.storage.accounts[i][0] for i in ids if i in self.storage.accounts}

    async def lock(self, ids: list[str]) -> None:
        return None

    async def add(self, accounts: list[PrepaidAccount], now: dt.datetime) -> None:
        for account in accounts:
            self.storage.add(account)

    async def deferral_ended(self, now: dt.datetime) -> list[str]:
        return []


class _FakeMeters(_FakeRepository, ports.MeterRepository):
    async def states(self, ids: list[str]) -> dict[str, MeterState]:
        return {i: MeterState(m.health, m.relay, m.failures) for i in ids if (m := self.storage.meters.get(i))}

    async def failed(self, meter_id: str, error: str, *, offline_after: int) -> tuple[str, str]:
        raise NotImplementedError

    async def update(self, meter_id: str, values: dict[str, object]) -> None:
        raise NotImplementedError


class _FakePayments(_FakeRepository, ports.PaymentRepository):
    async def get(self, keys: set[PaymentKey]) -> dict[PaymentKey, dict[str, object]]:
        return {k: dict(self.storage.payments[k]) for k in keys if k in self.storage.payments}


class FakeUnitOfWork(ports.UnitOfWork):
    def __init__(self, storage: FakeStorage) -> None:
        self.storage = storage
        self.accounts = _FakeAccounts(storage)
        self.meters = _FakeMeters(storage)
        self.payments = _FakePayments(storage)

    async def __aenter__(self) -> FakeUnitOfWork:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None

    async def commit(self) -> None:
        return None

    async def limiter(self) -> dict[str, object] | None:
        return self.storage.limiter

    async def ensure_limiter(self) -> None:
        return None

    async def add_outbox(self, topic: str, payload: dict[str, object], now: dt.datetime) -> None:
        self.storage.outbox.append({"topic": topic, "payload": payload, "created_at": now})

    async def audit(self, actor: str, action: str, target: str | None, detail: dict[str, object] | None,
                    now: dt.datetime) -> None:
        return None

    async def api_keys(self) -> list[tuple[str, str, str, list[str] | None]]:
        return []

    async def put_api_key(self, name: str, sha256: str, role: str, sources: list[str] | None,
                          now: dt.datetime) -> None:
        raise NotImplementedError

    async def write_batch(self, changes: BatchChanges) -> None:
        self.storage.write(changes)  # (committed at once: the fake has no transactions)

