"""Group commit: everything that changes an account goes through one writer, in batches, one transaction (one
fsync) per batch.

Callers ``await`` their own job; the writer answers only after the batch's commit, so a 2xx on a payment still
means it is durable. Batching is natural: while one batch commits, new jobs queue up and form the next batch;
an idle gateway commits each job alone with no added delay. Payments and operator changes go ahead of readings.

A batch (``gateway.service.batch``) reads what its jobs need, applies them in memory and hands what to write
to the storage (``Storage.commit_batch``). A row changed meanwhile by another instance fails the write
(``StaleWrite``): the batch is done again from fresh rows. Any other database error fails the batch, which is
then retried job by job so that one bad job cannot sink the rest.

When this process is the database's only writer (``Storage.exclusive``: SQLite), batches are pipelined: the next
batch is read, applied and prepared while the previous one commits, building on its changes in memory (cached
accounts, meters, rate limiter, payments); if that batch fails, the next one is dropped and done again from the
database after the failed one's jobs were retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections import ChainMap
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from drivers.base import Reading
from gateway.service.account_cache import AccountCache
from gateway.service.batch import REFUSALS, Batch, Known
from gateway.service.catalog import Catalog
from gateway.service.commands import CommandRecord
from gateway.service.errors import GatewayStopping
from gateway.service.freshness import Freshness
from gateway.service.jobs import Exclusive, Job, ReadingJob
from gateway.service.ports import BatchChanges, PaymentKey, StaleWrite, Storage, UnitOfWork
from gateway.service.tamper import TamperFlags

__all__ = ["Writer"]

log = logging.getLogger(__name__)

Item = tuple[Job, asyncio.Future[Any]]
Results = list[tuple[asyncio.Future[Any], bool, Any]]
STALE_ATTEMPTS = 5  # a batch that finds rows changed by another instance is done again this often
PAUSE_AFTER_S = 0.002  # a batch being applied lets the event loop run at least this often (a CPU budget)


@dataclass(slots=True)
class _Prepared:
    batch: Batch
    changes: BatchChanges
    results: Results
    items: list[Item]


@dataclass(slots=True)
class _Flight:
    """A prepared batch whose write and commit are running (pipelined)."""

    task: asyncio.Future[None]
    prepared: _Prepared


class Writer:
    """The single writer of account changes; batches jobs into group commits.

    Args:
        storage: the storage port.
        catalog: the site's static catalog.
        clock: returns aware UTC now.
        on_commands: called with the relay commands a batch created, after its commit.
        max_batch: the most jobs one transaction takes.
        max_readings: the most readings one transaction takes (a batch holds SQLite's write lock while it
            commits, and a relay command's short transaction waits for at most that).
        stored_payments: reads a batch's stored payments at once when it can (``ReadStore.stored_payments``:
            SQLite's direct reads), so that a batch of payments to accounts in memory waits for no hand-over
            before it is written; used when this process is the only writer (``Storage.exclusive``).
    """

    def __init__(self, storage: Storage, catalog: Catalog, clock: Callable[[], dt.datetime], *,
                 on_commands: Callable[[list[CommandRecord]], None], max_batch: int = 512,
                 max_readings: int = 256,
                 stored_payments: Callable[[set[PaymentKey]], dict[PaymentKey, Any] | None] | None = None) -> None:
        self.storage, self.catalog, self.clock = storage, catalog, clock
        self.stored_payments = stored_payments if storage.exclusive else None
        self.on_commands = on_commands
        self.max_batch = max_batch
        self.max_readings = max_readings
        self._urgent: list[Item] = []  # payments and operator changes
        self._queue: list[Item] = []  # readings
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.items = 0
        self.cache = AccountCache()
        self.freshness = Freshness(catalog.reading_history_s)
        self.tamper = TamperFlags()  # the meters' tamper flags as committed (gateway.service.tamper)
        self._known = Known()
        self._flying = 0  # jobs of the batch in flight (pipelined)
        self.alarmed: set[str] = set()  # accounts whose unreadable state has had its alarm
        self._committed: list[Callable[[], None]] = []  # called after each commit: ``listen``
        self.outbox_full: Any = None  # the outbox relay, when events go out: while it is full, no events are added

    # --- the callers' side ---------------------------------------------------------------------------------
    def takes_unchanged(self, reading: Reading) -> bool:
        """Take a reading that changes nothing without storing it (``gateway.service.freshness``); False when it
        must be submitted. The caller makes sure no other reading of the meter is in flight and that the meter
        answered its previous poll."""
        spec = self.catalog.meters.get(reading.meter_id)
        hit = None if spec is None else self.cache.entries.get(spec.account_id)
        return self.freshness.takes(reading, None if hit is None else hit[1])

    def forget_meter(self, meter_id: str) -> None:
        """The meter's row was written outside the writer (a failed poll, a confirmed relay): read it again."""
        self._known.meters.pop(meter_id, None)
        self.freshness.forget(meter_id)

    def forget_account(self, account_id: str) -> None:
        """The account's row was written outside the writer (``Exclusive`` work): read it again."""
        self.cache.entries.pop(account_id, None)

    def listen(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener`` after each commit (the readers of the outbox: they wake up for its new events);
        returns what stops that."""
        self._committed.append(listener)
        return lambda: self._committed.remove(listener)

    def _wake_listeners(self) -> None:
        for listener in self._committed:
            listener()

    def alone(self, work: Callable[[], Awaitable[Any]]) -> Awaitable[Any]:
        """Run ``work`` while the writer stands still (``Exclusive``), ahead of waiting readings; returns its
        result. ``work`` tells the writer what it wrote (``forget_account``, ``forget_meter``)."""
        return self.submit(Exclusive(work))

    def submit(self, job: Job) -> Awaitable[Any]:
        """Queue a job; the returned future resolves to its result after the commit of its batch.

        The job is queued at once (before the caller awaits), so jobs keep the order they were submitted in.
        """
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        (self._queue if isinstance(job, ReadingJob) else self._urgent).append((job, future))
        self._ready.set()
        if self._task is None:
            self.start()
        return future

    @property
    def backlog(self) -> int:
        return len(self._queue) + len(self._urgent) + self._flying

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="gateway.writer")

    async def aclose(self) -> None:
        """Finish what is queued, then stop."""
        while self.backlog and self._task is not None and not self._task.done():
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for _, future in self._urgent + self._queue:
            _fail(future, GatewayStopping("the gateway is stopping"))
        self._urgent.clear()
        self._queue.clear()
        await self.storage.aclose()

    # --- the loop --------------------------------------------------------------------------------------------
    def _take(self) -> list[Item]:
        urgent = self._urgent
        if urgent and isinstance(urgent[0][0], Exclusive):
            batch, self._urgent = urgent[:1], urgent[1:]
            if not self._queue and not self._urgent:
                self._ready.clear()
            return batch
        end = next((i for i, (job, _) in enumerate(urgent[:self.max_batch]) if isinstance(job, Exclusive)),
                   min(len(urgent), self.max_batch))
        batch, self._urgent = urgent[:end], urgent[end:]
        room = min(self.max_batch - len(batch), self.max_readings)
        batch, self._queue = batch + self._queue[:room], self._queue[room:]
        if not self._queue and not self._urgent:
            self._ready.clear()
        return batch

    async def _run(self) -> None:
        pipelined = self.storage.exclusive
        flight: _Flight | None = None
        try:
            while True:
                if not self._queue and not self._urgent:
                    if flight is not None:
                        await self._land(flight)
                        flight = None
                        continue
                    await self._ready.wait()
                items = self._take()
                if not items:
                    continue
                if isinstance(items[0][0], Exclusive):
                    if flight is not None:
                        await self._land(flight)
                        flight = None
                    await self._alone(items[0])
                    continue
                if not pipelined:
                    await self._commit_or_retry(items)
                    continue
                prepared: _Prepared | None
                try:
                    prepared = await self._prepare(items, after=flight.prepared.batch if flight else None)
                except Exception:  # noqa: BLE001 - done again below, once the batch in flight has landed
                    prepared = None
                if flight is not None:
                    landed = await self._land(flight)
                    flight = None
                    if not landed:
                        prepared = None  # it was built on changes that were rolled back
                if prepared is None:
                    self._forget()
                    await self._commit_or_retry(items)
                else:
                    self._flying = len(items)
                    flight = _Flight(asyncio.ensure_future(self._write(prepared)), prepared)
        except asyncio.CancelledError:
            if flight is not None:  # stopping with a batch in flight: its callers must not hang
                flight.task.cancel()
                for _, future in flight.prepared.items:
                    _fail(future, GatewayStopping("the gateway is stopping"))
            raise

    async def _alone(self, item: Item) -> None:
        job, future = item
        assert isinstance(job, Exclusive)
        self._flying = 1
        try:
            result = await job.work()
        except asyncio.CancelledError:
            _fail(future, GatewayStopping("the gateway is stopping"))
            raise
        except Exception as exc:  # noqa: BLE001 - the work's own failure is its answer
            _fail(future, exc)
        else:
            if not future.done():
                future.set_result(result)
        finally:
            self._flying = 0
        self._wake_listeners()  # its transaction may have added events

    async def _land(self, flight: _Flight) -> bool:
        """Wait for the batch in flight; False if it failed (its jobs are then retried)."""
        try:
            await flight.task
            return True
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - handled like a failed batch
            await self._retry(flight.prepared.items, exc)
            return False
        finally:
            self._flying = 0

    async def _commit_or_retry(self, items: list[Item]) -> None:
        try:
            await self._commit(items)
        except asyncio.CancelledError:  # stopping in the middle of a batch: its callers must not hang
            for _, future in items:
                _fail(future, GatewayStopping("the gateway is stopping"))
            raise
        except Exception as exc:  # noqa: BLE001 - a database error: retried one by one
            await self._retry(items, exc)

    async def _retry(self, items: list[Item], exc: Exception) -> None:
        """A batch failed: retry its jobs one by one so that one bad job can't sink the rest."""
        self._forget()
        if len(items) == 1 and not isinstance(exc, StaleWrite):
            _fail(items[0][1], exc)
            return
        log.warning("a batch of %d failed (%s); retrying its jobs one by one", len(items), exc)
        for item in items:
            try:
                await self._commit([item])
            except asyncio.CancelledError:
                _fail(item[1], GatewayStopping("the gateway is stopping"))
                raise
            except Exception as one:  # noqa: BLE001 - the job's own failure is its answer
                self._forget()
                _fail(item[1], one)

    async def _commit(self, items: list[Item]) -> None:
        """Prepare and write a batch; one that finds rows changed by another instance is done again from fresh
        rows (``STALE_ATTEMPTS`` times), from the third time on under row locks (it then cannot find them
        changed: busy instances never starve a payment)."""
        for attempt in range(STALE_ATTEMPTS):
            try:
                if attempt >= 2 and not self.storage.exclusive:
                    await self._commit_locked(items)
                else:
                    await self._write(await self._prepare(items))
                return
            except StaleWrite:
                self._forget()
                if attempt == STALE_ATTEMPTS - 1:
                    raise

    async def _commit_locked(self, items: list[Item]) -> None:
        """Read, apply and write in one unit of work, the accounts locked from the moment they are read."""
        batch = Batch(self.catalog, self.clock(), self.cache, tamper_seen=self.tamper.seen)
        async with self.storage(background=all(isinstance(job, ReadingJob) for job, _ in items)) as uow:
            async def reader() -> UnitOfWork:
                return uow

            await batch.load(reader, [job for job, _ in items], lock=True)
            batch.alarm_unreadable(self.alarmed)
            results = await self._apply(batch, items)
            changes = self._changes(batch)
            await uow.write_batch(changes)
            await uow.commit()
        self._done(_Prepared(batch, changes, results, items))

    def _changes(self, batch: Batch) -> BatchChanges:
        changes = batch.changes(self.storage.account_row)
        if self.outbox_full is not None and self.outbox_full.full and changes.outbox:
            self.outbox_full.leave_out(len(changes.outbox))  # counted, reported when there is room again
            changes.outbox = []
        return changes

    async def _prepare(self, items: list[Item], *, after: Batch | None = None) -> _Prepared:
        """Read what the jobs need (in a read-only unit of work, opened only if something must be read), apply
        them and make what to write, with no lock held. ``after``: the batch in flight, whose changes this one
        builds on."""
        exclusive = self.storage.exclusive
        seen = self.tamper.seen if after is None or not after.tamper else ChainMap(after.tamper, self.tamper.seen)
        batch = Batch(self.catalog, self.clock(), self.cache, trust_cache=exclusive, tamper_seen=seen)
        async with contextlib.AsyncExitStack() as stack:
            opened: list[UnitOfWork] = []

            async def reader() -> UnitOfWork:
                if not opened:
                    opened.append(await stack.enter_async_context(self.storage(readonly=True)))
                return opened[0]

            await batch.load(reader, [job for job, _ in items], self._known if exclusive else None,
                             in_flight=after.payments if after is not None else None,
                             stored_payments=self.stored_payments)
        batch.alarm_unreadable(self.alarmed)
        results = await self._apply(batch, items, pause_after_s=PAUSE_AFTER_S)
        changes = self._changes(batch)
        if exclusive:
            batch.remember(self._known)  # what the next batch builds on (forgotten if this one fails)
        return _Prepared(batch, changes, results, items)

    async def _write(self, prepared: _Prepared) -> None:
        background = all(isinstance(job, ReadingJob) for job, _ in prepared.items)
        await self.storage.commit_batch(prepared.changes, background=background)
        self._done(prepared)

    def _forget(self) -> None:
        """After a failed transaction: in-memory accounts may hold changes that were rolled back."""
        self.cache.clear()
        self.freshness.forget()
        self._known = Known()

    def _done(self, prepared: _Prepared) -> None:
        """After the commit: answer the callers, hand over the relay commands."""
        batch = prepared.batch
        self.batches += 1
        self.items += len(prepared.items)
        self.alarmed.update(batch.alarms)
        self.freshness.stored(batch.stored)
        self.tamper.committed(batch.tamper)
        for future, ok, value in prepared.results:
            if not future.done():
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)
        if batch.commands:
            self.on_commands(batch.commands)
        self._wake_listeners()

    @staticmethod
    async def _apply(batch: Batch, items: list[Item], *, pause_after_s: float = 0.0) -> Results:
        """Apply the jobs in memory; with ``pause_after_s``, let the event loop run whenever that much time went
        by since it last ran (no lock is held meanwhile: a relay command must not wait for a whole batch's work,
        and a batch of payments, ~1 ms, should not wait for a turn of a busy loop)."""
        results: Results = []
        since = time.perf_counter()
        for job, future in items:
            if pause_after_s and time.perf_counter() - since >= pause_after_s:
                await asyncio.sleep(0)
                since = time.perf_counter()
            try:
                results.append((future, True, batch.run(job)))
            except REFUSALS as exc:
                results.append((future, False, exc))
        return results



def _fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
