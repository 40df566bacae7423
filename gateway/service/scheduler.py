"""The bus scheduler: one runner per bus, one transaction at a time, relay commands ahead of polls.

Each ``BusRunner`` runs three loops over its bus:

- **polls**: meters are polled in order of their due time, staggered over their interval. A reading is handed to
  the group-commit writer without waiting for its commit (at most ``max_pending`` readings of a bus are in the
  writer at once, so a slow database slows the polls instead of piling readings up). A poll that comes due
  while the meter's previous poll (or its reading) has not finished is skipped and counted, never queued up.
- **relay commands**: run beside the polls. Every command step (send, read back) runs inside the driver's
  ``urgent()`` block when the driver has one (the Modbus drivers do): the driver's bus lock then serves it
  before any poll that is waiting, between two requests of a multi-request read. So a command waits at most for
  the transaction in flight. Without ``urgent()`` a command waits for the poll in flight.
- **health**: failed polls are written to the meters table (``Service.record_failure``) off the poll path.

A meter that fails backs off (a circuit breaker): after the k-th failure in a row it is tried again after
``min(base * 2 ** (k - 1), cap)`` with ``base = max(poll interval, backoff_base_s)`` (10 s by default: a meter
polled every second must not cost its bus a timeout every second once it is dead), so a dead meter costs its bus
at most one timeout per backoff period. On top of that, retries of failing meters share a **failure budget**:
they may take at most ``failure_budget`` (5 %) of the bus's time over the last minute; a retry that would go over
it is deferred (without counting as a failure). However many meters die, the others keep at least 95 % of the
bus once each dead meter has been seen failing once. A bus that fails as a whole (the
endpoint refuses connections, or several meters in a row stop answering) is marked down: polls that come due
fail without touching the bus and one probe is made per bus backoff period (0.5 s doubling up to
``bus_backoff_cap_s``); the first answer brings it back. Nothing needs a restart.

Counters for metrics and the health of every meter (online / degraded / offline, stale) are in
``BusRunner.stats()``, ``BusRunner.meter_health()`` and ``Scheduler.stats()``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import heapq
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import sqlalchemy as sa

from drivers.base import MeterDriver, Reading, RelayAction, RelayState
from drivers.errors import CommandRefused, ConnectError, DriverError, TransportError
from gateway.adapters import bulk
from gateway.adapters import tables as t
from gateway.service import commands as cmds
from gateway.service.commands import CommandRecord
from gateway.service.handlers import Service
from gateway.service.writer import ReadingJob, Writer

__all__ = ["BusRunner", "BusStats", "MeterHealth", "Scheduler", "cancel_and_wait"]

log = logging.getLogger(__name__)

WANTED = {"open": RelayState.OPEN, "close": RelayState.CLOSED}
_WINDOW_S = 10  # seconds over which rates, the largest lag and overload are reported
_BUS_DOWN_AFTER = 5  # distinct meters failing in a row (no answer in between) that mean the bus is down
_BUDGET_WINDOW_S = 60  # the failure budget is a share of the bus's time over this window


@dataclass(slots=True)
class _Active:
    record: CommandRecord
    # "send", "confirm", "recheck" (left in `sending`, e.g. by a previous run) or "verify" (found `queued` at a
    # start: read the relay back before sending)
    phase: str
    next_at: float = 0.0


@dataclass(slots=True)
class BusStats:
    """Counters of one bus since it started."""

    polls: int = 0  # successful polls
    failures: int = 0  # failed polls (with or without a transaction on the bus)
    skipped: int = 0  # polls not made because the previous one had not finished in time (overrun)
    commands: int = 0  # relay commands written to the bus
    record_errors: int = 0  # readings the writer could not record
    deferred_retries: int = 0  # retries of failing meters put off to keep within the failure budget


@dataclass(slots=True)
class MeterHealth:
    """Communication health of one meter, as its bus runner sees it."""

    meter_id: str
    interval: float
    due: float = 0.0
    failures: int = 0  # in a row
    state: str = "unknown"  # online / degraded / offline
    last_success: float | None = None  # monotonic
    last_success_at: dt.datetime | None = None
    last_error: str | None = None
    pending: bool = False  # a reading of it is in the writer
    polls: int = 0
    tries: int = 0  # polls that used the bus (successful or not)
    busy_s: float = 0.0  # time the bus spent on its polls
    last_failure_s: float = 0.0  # how long its last failed poll took (what its next retry may cost)

    def as_dict(self, now: float, stale_after_s: float, started: float) -> dict[str, Any]:
        since = self.last_success if self.last_success is not None else started
        return {
            "meter_id": self.meter_id,
            "state": self.state,
            "stale": now - since > stale_after_s,
            "consecutive_failures": self.failures,
            "last_success_at": self.last_success_at.isoformat() if self.last_success_at else None,
            "last_error": self.last_error,
            "next_poll_in_s": round(max(0.0, self.due - now), 3),
            "polls": self.polls,
            "tries": self.tries,
            "busy_s": round(self.busy_s, 4),
        }


class BusRunner:
    """Runs one bus: its driver, the meters on it (``targets``: meter id -> the driver's meter description).

    Args:
        bus_id: the bus's id (names tasks, logs and stats).
        driver: the bus's driver.
        targets: meter id -> the driver's own description of that meter.
        service: the gateway's use cases (readings, failures, relay commands).
        gap_s: silence kept between two transactions (on top of the protocol's own gap).
        backoff_cap_s: the longest a failing meter waits between two tries.
        sweep_s: how often active commands are picked up from the database (other instances, restarts).
        backoff_base_s: the first backoff of a failing meter; never shorter than its poll interval.
        bus_backoff_cap_s: the longest a bus that is down waits between two probes.
        offline_after: failures in a row after which a meter is offline (degraded before that).
        max_pending: readings of this bus that may wait in the writer at once.
        failure_budget: the share of the bus's time (over the last minute) that retries of failing meters may
            take; a retry beyond it is deferred.
    """

    def __init__(self, bus_id: str, driver: MeterDriver[Any], targets: dict[str, Any], service: Service, *,
                 gap_s: float = 0.0, backoff_cap_s: float = 300.0, sweep_s: float = 2.0,
                 backoff_base_s: float = 10.0, bus_backoff_cap_s: float = 30.0, offline_after: int = 3,
                 max_pending: int = 64, failure_budget: float = 0.05) -> None:
        self.bus_id = bus_id
        self.driver = driver
        self.targets = targets
        self.service = service
        self._writer: Writer | None = getattr(service, "writer", None)
        self.gap_s = gap_s
        self.backoff_cap_s = backoff_cap_s
        self.sweep_s = sweep_s
        self.backoff_base_s = backoff_base_s
        self.bus_backoff_cap_s = bus_backoff_cap_s
        self.offline_after = offline_after
        self.max_pending = max_pending
        self.failure_budget = failure_budget
        self.counters = BusStats()  # `stats()` reports these with the gauges
        self._active: dict[str, _Active] = {}
        self._wake = asyncio.Event()
        self._meters: dict[str, MeterHealth] = {}
        self._heap: list[tuple[float, str]] = []
        self._next_sweep = 0.0
        self.swept_by_scheduler = False  # set by a Scheduler, which sweeps the commands of all its buses at once
        self._started = time.monotonic()
        # when the driver keeps the gap itself (between any two transactions, commands included), let it
        self._runner_gap = gap_s
        if gap_s and hasattr(driver, "frame_gap"):
            driver.frame_gap = max(driver.frame_gap, gap_s)
            self._runner_gap = 0.0
        urgent = getattr(driver, "urgent", None)
        self._urgent: Callable[[], contextlib.AbstractContextManager[Any]] = (
            urgent if callable(urgent) else contextlib.nullcontext)
        # backpressure towards the writer
        self._pending = 0
        self._in_writer: set[asyncio.Future[list[CommandRecord]]] = set()
        self._room = asyncio.Event()
        self._room.set()
        # bus health
        self._bus_down = False
        self._bus_failures = 0
        self._bus_retry_at = 0.0
        self._bus_error = ""
        self._failing: set[str] = set()  # meters that failed since the bus last answered
        # failures waiting to be written to the meters table (one entry per meter: the latest)
        self._health_queue: dict[str, MeterHealth] = {}
        self._health_ready = asyncio.Event()
        # windowed figures: per-second buckets of polls; lag
        self._buckets: collections.deque[tuple[int, int]] = collections.deque(maxlen=_WINDOW_S + 1)
        self._lag_ewma = 0.0
        self._lag_max: collections.deque[tuple[int, float]] = collections.deque(maxlen=_WINDOW_S + 1)
        self._failed_time: collections.deque[tuple[int, float]] = collections.deque()  # (second, seconds)
        self._failed_total = 0.0  # sum of _failed_time
        self._last_skip = -1e9
        self._overload_logged = False
        self._record_errors_logged = 0
        self._stopping = False
        self._setup()  # again when it runs: health and stats are there from the start

    # --- public -------------------------------------------------------------------------------------------
    def wake(self, record: CommandRecord) -> None:
        """A new command for one of this bus's meters (called after its commit)."""
        self._active.setdefault(record.id, _Active(record, "send"))
        self._wake.set()

    def stats(self) -> dict[str, Any]:
        """Counters and gauges of this bus, for metrics and the health endpoint."""
        now = time.monotonic()
        second = int(now)
        window = [(s, n) for s, n in self._buckets if second - _WINDOW_S <= s < second]
        rate = sum(n for _, n in window) / _WINDOW_S if now - self._started >= _WINDOW_S else (
            sum(n for _, n in self._buckets) / max(now - self._started, 1e-3))
        states = collections.Counter(m.state for m in self._meters.values())
        stale_after = self.service.catalog.stale_after_s
        stale = sum(1 for m in self._meters.values()
                    if now - (m.last_success if m.last_success is not None else self._started) > stale_after)
        c = self.counters
        return {
            "bus": self.bus_id,
            "state": "down" if self._bus_down else "up",
            "last_bus_error": self._bus_error or None,
            "meters": len(self._meters),
            "demand_polls_per_s": round(sum(1 / m.interval for m in self._meters.values()), 3),
            "polls_per_s": round(rate, 3),
            "polls": c.polls,
            "failures": c.failures,
            "skipped": c.skipped,
            "commands": c.commands,
            "record_errors": c.record_errors,
            "deferred_retries": c.deferred_retries,
            "failing_share": round(self._failing_share(now), 4),
            "overloaded": now - self._last_skip < _WINDOW_S,
            "lag_s": round(self._lag_ewma, 4),
            "max_lag_s": round(max((lag for s, lag in self._lag_max if s >= second - _WINDOW_S), default=0.0), 4),
            "pending_readings": self._pending,
            "active_commands": len(self._active),
            "online": states.get("online", 0),
            "degraded": states.get("degraded", 0),
            "offline": states.get("offline", 0),
            "unknown": states.get("unknown", 0),
            "stale": stale,
        }

    def meter_health(self, meter_id: str | None = None) -> dict[str, Any]:
        """Health of one meter (or of every meter of the bus, by id)."""
        now, stale_after = time.monotonic(), self.service.catalog.stale_after_s
        if meter_id is not None:
            return self._meters[meter_id].as_dict(now, stale_after, self._started)
        return {m.meter_id: m.as_dict(now, stale_after, self._started) for m in self._meters.values()}

    async def run(self) -> None:
        """Run the bus until cancelled."""
        self._setup()  # stagger from now
        self._stopping = False
        tasks = [
            asyncio.create_task(self._poll_loop(), name=f"gateway[{self.bus_id}].poll"),
            asyncio.create_task(self._command_loop(), name=f"gateway[{self.bus_id}].commands"),
            asyncio.create_task(self._health_loop(), name=f"gateway[{self.bus_id}].health"),
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            self._stopping = True
            await cancel_and_wait(tasks)
            for future in list(self._in_writer):  # the writer still commits what it has; stop waiting for it
                future.cancel()

    def _setup(self) -> None:
        self._started = start = time.monotonic()
        catalog = self.service.catalog
        n = max(len(self.targets), 1)
        self._meters.clear()
        self._heap.clear()
        for i, meter_id in enumerate(self.targets):
            interval = catalog.meters[meter_id].poll_interval_s
            due = start + interval * i / n  # stagger over the interval
            self._meters[meter_id] = MeterHealth(meter_id, interval, due=due)
            self._heap.append((due, meter_id))
        heapq.heapify(self._heap)

    # --- polls --------------------------------------------------------------------------------------------
    async def _poll_loop(self) -> None:
        if not self._heap:
            return
        while not self._stopping:
            due, meter_id = self._heap[0]
            now = time.monotonic()
            if due > now:
                # at least 1 ms: event loops with a millisecond clock (uvloop) would wake up early and spin
                await asyncio.sleep(max(due - now, 0.001))
                continue
            heapq.heappop(self._heap)
            meter = self._meters[meter_id]
            try:
                await self._poll_due(meter, now)
            except Exception:  # a bug or a storage failure must not stop the bus
                log.exception("bus %s: poll of %s failed", self.bus_id, meter_id)
                self._schedule(meter, time.monotonic() + meter.interval)

    async def _poll_due(self, meter: MeterHealth, now: float) -> None:
        if meter.pending:  # its previous reading is still being recorded: skip this poll, don't queue it
            self.counters.skipped += 1
            self._skip(now)
            self._next_slot(meter, now, count=False)
            return
        if self._bus_down and now < self._bus_retry_at:
            self._failed(meter, f"bus {self.bus_id} down: {self._bus_error}")
            self._next_slot(meter, now, count=False)
            return
        if meter.failures and not self._bus_down and not self._within_budget(meter, now):
            self.counters.deferred_retries += 1
            self._schedule(meter, now + self._backoff(meter))
            return
        if self._pending >= self.max_pending:
            await self._room.wait()  # the writer is behind: wait for it instead of piling readings up
            now = time.monotonic()
        self._note_lag(now - meter.due, now)
        meter.tries += 1
        try:
            reading = await self.driver.read(self.targets[meter.meter_id])
        except DriverError as exc:
            end = time.monotonic()
            meter.busy_s += end - now
            meter.last_failure_s = end - now
            self._spend(end - now, end)
            self._bus_failed(meter, exc, end)
            self._failed(meter, str(exc))
            if isinstance(exc, ConnectError) or self._bus_down:
                self._next_slot(meter, end, count=False)  # the bus's backoff, not the meter's
            else:
                self._schedule(meter, end + self._backoff(meter))
        else:
            end = time.monotonic()
            meter.busy_s += end - now
            self._succeeded(meter, reading, end)
            self._next_slot(meter, end, count=True)
        if self._runner_gap:
            await asyncio.sleep(self._runner_gap)

    def _spend(self, seconds: float, now: float) -> None:
        second = int(now)
        if self._failed_time and self._failed_time[-1][0] == second:
            self._failed_time[-1] = (second, self._failed_time[-1][1] + seconds)
        else:
            self._failed_time.append((second, seconds))
        self._failed_total += seconds

    def _failing_share(self, now: float) -> float:
        """Share of the bus's time that failed polls took over the budget window."""
        horizon = int(now) - _BUDGET_WINDOW_S
        while self._failed_time and self._failed_time[0][0] <= horizon:
            self._failed_total -= self._failed_time.popleft()[1]
        return max(self._failed_total, 0.0) / _BUDGET_WINDOW_S

    def _within_budget(self, meter: MeterHealth, now: float) -> bool:
        return self._failing_share(now) + meter.last_failure_s / _BUDGET_WINDOW_S <= self.failure_budget

    def _backoff(self, meter: MeterHealth) -> float:
        base = max(meter.interval, self.backoff_base_s)
        return min(base * 2 ** min(meter.failures - 1, 30), max(self.backoff_cap_s, meter.interval))

    def _next_slot(self, meter: MeterHealth, now: float, *, count: bool) -> None:
        due = meter.due + meter.interval
        if due < now:  # fell behind: skip the missed slots instead of queueing them up
            missed = int((now - due) // meter.interval) + 1
            if count:
                self.counters.skipped += missed
                self._skip(now)
            due += missed * meter.interval
        self._schedule(meter, due)

    def _schedule(self, meter: MeterHealth, due: float) -> None:
        meter.due = due
        heapq.heappush(self._heap, (due, meter.meter_id))

    def _skip(self, now: float) -> None:
        if now - self._last_skip >= _WINDOW_S and not self._overload_logged:
            log.warning("bus %s is overloaded: polls are due faster than the bus answers; skipping, not queueing",
                        self.bus_id)
            self._overload_logged = True
        self._last_skip = now

    def _note_lag(self, lag: float, now: float) -> None:
        lag = max(lag, 0.0)
        self._lag_ewma += 0.05 * (lag - self._lag_ewma)
        second = int(now)
        if self._lag_max and self._lag_max[-1][0] == second:
            if lag > self._lag_max[-1][1]:
                self._lag_max[-1] = (second, lag)
        else:
            self._lag_max.append((second, lag))
        if self._overload_logged and now - self._last_skip >= _WINDOW_S:
            log.info("bus %s keeps up again", self.bus_id)
            self._overload_logged = False

    def _succeeded(self, meter: MeterHealth, reading: Reading, now: float) -> None:
        # A reading that changes nothing (the meter answered last time too, none of its readings is in the
        # writer) is taken in memory by the writer; any other goes through a transaction.
        absorbed = (not meter.failures and not meter.pending and self._writer is not None
                    and self._writer.absorb(reading))
        self.counters.polls += 1
        meter.polls += 1
        second = int(now)
        if self._buckets and self._buckets[-1][0] == second:
            self._buckets[-1] = (second, self._buckets[-1][1] + 1)
        else:
            self._buckets.append((second, 1))
        meter.failures, meter.state, meter.last_error = 0, "online", None
        meter.last_success, meter.last_success_at = now, reading.taken_at
        self._health_queue.pop(meter.meter_id, None)
        self._failing.clear()
        if self._bus_down:
            log.info("bus %s is back", self.bus_id)
        self._bus_down, self._bus_failures, self._bus_error = False, 0, ""
        if not absorbed:
            self._hand_over(meter, reading)

    def _failed(self, meter: MeterHealth, error: str) -> None:
        self.counters.failures += 1
        meter.failures += 1
        meter.last_error = error
        meter.state = "offline" if meter.failures >= self.offline_after else "degraded"
        self._health_queue[meter.meter_id] = meter
        self._health_ready.set()

    def _bus_failed(self, meter: MeterHealth, exc: DriverError, now: float) -> None:
        if not isinstance(exc, TransportError):
            self._failing.clear()  # the meter answered (an error): the bus works
            return
        self._failing.add(meter.meter_id)
        whole_bus = isinstance(exc, ConnectError) or (
            len(self.targets) > 1 and len(self._failing) >= min(_BUS_DOWN_AFTER, len(self.targets)))
        if not whole_bus:
            return
        if not self._bus_down:
            log.warning("bus %s is down: %s", self.bus_id, exc)
        self._bus_down = True
        self._bus_failures += 1
        self._bus_error = str(exc)
        self._bus_retry_at = now + min(0.5 * 2 ** min(self._bus_failures - 1, 30), self.bus_backoff_cap_s)

    # --- handing readings to the writer -------------------------------------------------------------------
    def _hand_over(self, meter: MeterHealth, reading: Reading) -> None:
        meter.pending = True
        self._pending += 1
        if self._pending >= self.max_pending:
            self._room.clear()
        writer = self._writer
        if writer is not None:  # queued at once, a future of its commit: no task per reading
            future: asyncio.Future[list[CommandRecord]] = asyncio.ensure_future(writer.submit(ReadingJob(reading)))
        else:
            future = asyncio.ensure_future(self.service.record_reading(reading))
        self._in_writer.add(future)
        future.add_done_callback(partial(self._recorded, meter))

    def _recorded(self, meter: MeterHealth, task: asyncio.Future[list[CommandRecord]]) -> None:
        self._in_writer.discard(task)
        meter.pending = False
        self._pending -= 1
        if self._pending < self.max_pending:
            self._room.set()
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:  # a storage failure must not stop the bus; say so, but not 1000 times a second
            self.counters.record_errors += 1
            if self._record_errors_logged < 10:
                self._record_errors_logged += 1
                log.error("bus %s: could not record a reading of %s: %r", self.bus_id, meter.meter_id, exc)
            return
        for record in task.result():  # normally routed by the Scheduler already; harmless if so
            if record.meter_id in self.targets:
                self.wake(record)

    async def _health_loop(self) -> None:
        """Write failed polls to the meters table, off the poll path (the latest failure of each meter)."""
        while not self._stopping:
            await self._health_ready.wait()
            self._health_ready.clear()
            while self._health_queue:
                meter_id, meter = next(iter(self._health_queue.items()))
                del self._health_queue[meter_id]
                if meter.failures == 0:
                    continue  # it answered again meanwhile
                try:
                    # the runner decides the health; record_failure writes it (and the outbox event)
                    await self.service.record_failure(meter_id, meter.last_error or "failed",
                                                      offline_after=1 if meter.state == "offline" else 1 << 30)
                except Exception:
                    log.exception("bus %s: could not record the failure of %s", self.bus_id, meter_id)

    # --- commands -----------------------------------------------------------------------------------------
    async def _command_loop(self) -> None:
        if self.swept_by_scheduler:
            self._next_sweep = math.inf  # the Scheduler offers the active commands of every bus at once
        else:
            try:
                await self._sweep_commands(recover=True)
            except Exception:
                log.exception("bus %s: could not load active commands", self.bus_id)
        while not self._stopping:
            self._wake.clear()
            now = time.monotonic()
            try:
                if now >= self._next_sweep:
                    await self._sweep_commands()
            except Exception:
                log.exception("bus %s: could not load active commands", self.bus_id)
            job = self._due_command(now)
            if job is not None:
                try:
                    with self._urgent():
                        await self._command_step(job)
                except Exception:  # e.g. the database is unavailable: retry the step later, keep the bus alive
                    log.exception("command %s step failed", job.record.id)
                    job.next_at = time.monotonic() + 1.0
                if self._runner_gap:
                    await asyncio.sleep(self._runner_gap)
                continue
            wait = self._next_sweep - now
            if self._active:
                wait = min(wait, min(a.next_at for a in self._active.values()) - now)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=None if wait == math.inf else max(wait, 0.001))

    def _due_command(self, now: float) -> _Active | None:
        due = [a for a in self._active.values() if a.next_at <= now]
        return min(due, key=lambda a: a.next_at) if due else None

    async def _sweep_commands(self, *, recover: bool = False) -> None:
        """Pick up active commands from the database: after a restart, or made by another instance."""
        self._next_sweep = time.monotonic() + self.sweep_s
        if not self.targets:
            return
        async with self.service.uow(readonly=True) as uow:
            rows = (await uow.execute(sa.select(t.commands).where(
                t.commands.c.meter_id.in_(list(self.targets)), t.commands.c.state.in_(cmds.ACTIVE_STATES)))).all()
        self.offer(rows, recover=recover)

    def offer(self, rows: list[Any], *, recover: bool = False) -> None:
        """Active command rows of this bus's meters, from a sweep of the commands table.

        ``recover``: the first sweep after a start, which also takes commands left in `sending` (re-checked by
        reading the relay first); later sweeps leave `sending` to whoever is sending it.
        """
        for row in rows:
            if row.id in self._active:
                continue
            phase = {"queued": "send", "sending": "recheck", "sent": "confirm"}[row.state]
            if recover and row.state == "queued":
                phase = "verify"  # a previous run may have sent it without its `sending` record: read first
            if row.state == "sending" and not recover:
                continue  # being sent by this runner right now, or by another instance
            for other in [a for a in self._active.values() if a.record.meter_id == row.meter_id
                          and a.phase in ("send", "verify") and a.record.created_at < row.created_at]:
                self._active.pop(other.record.id)  # a newer command supersedes a queued one
            self._active[row.id] = _Active(CommandRecord.from_row(row), phase)
            self._wake.set()

    async def _command_step(self, job: _Active) -> None:
        record = job.record
        now = self.service.clock()
        target = self.targets[record.meter_id]
        wanted = WANTED[record.action]
        current_state = {"send": "queued", "verify": "queued", "confirm": "sent", "recheck": "sending"}[job.phase]
        if now >= record.expires_at:
            final = "expired" if job.phase in ("send", "verify") else "failed"
            error = "expired before it was sent" if final == "expired" else "relay not confirmed before expiry"
            await self._transition(record, current_state, final, error=error)
            self._active.pop(record.id, None)
            return
        if job.phase == "send":
            # `sending` is committed while the frame goes out, not before: the wire does not wait for the
            # database. A run killed in between leaves the command `queued`, and a restart reads the relay back
            # before sending anything it finds active (see ``offer``), so nothing is repeated blindly.
            if not await self._still_queued(record):
                self._active.pop(record.id, None)  # superseded or cancelled meanwhile: never sent
                return
            marked = asyncio.ensure_future(self._transition(record, "queued", "sending", attempt=True))
            self.counters.commands += 1
            failure: DriverError | None = None
            try:
                await self.driver.set_relay(target, RelayAction(record.action), valid_until=record.expires_at)
            except DriverError as exc:
                failure = exc
            except BaseException:
                await asyncio.shield(marked)
                raise
            if not await marked:
                # Superseded or cancelled while the frame was on its way: the newer command (if any) follows.
                log.warning("command %s was %s while it was being sent to %s", record.id,
                            "superseded or cancelled", record.meter_id)
                self._active.pop(record.id, None)
                return
            if isinstance(failure, CommandRefused):
                await self._transition(record, "sending", "failed", error=f"meter refused: {failure.reason}")
                self._active.pop(record.id, None)
                return
            if isinstance(failure, ConnectError):  # the link could not be opened: nothing reached the meter
                await self._transition(record, "sending", "queued", error=str(failure))
                attempts = record.attempts + 1
                job.record = replace(record, attempts=attempts)
                job.next_at = time.monotonic() + min(0.5 * 2 ** (attempts - 1), 30.0)
                return
            if failure is not None:
                # The frame may have reached the meter (a lost or garbled answer): never repeat it blindly,
                # read the relay back first. The command stays `sending`; at expiry it fails, not expires.
                await self._transition(record, "sending", "sending", error=f"{failure}; reading the relay back")
                job.record = replace(record, attempts=record.attempts + 1)
                job.phase = "recheck"
                job.next_at = time.monotonic() + self.service.catalog.confirm_interval_s
                return
            if not await self._transition(record, "sending", "sent"):
                self._active.pop(record.id, None)
                return
            job.phase, job.next_at = "confirm", time.monotonic()
            return
        if job.phase == "verify":
            if not await self._transition(record, "queued", "sending", error="after a restart: reading the relay "
                                          "back before sending"):
                self._active.pop(record.id, None)
                return
            job.phase, current_state = "recheck", "sending"
        # confirm / recheck: read the relay back
        try:
            state = await self.driver.read_relay(target)
        except DriverError as exc:
            log.info("relay read-back of %s failed: %s", record.meter_id, exc)
            job.next_at = time.monotonic() + self.service.catalog.confirm_interval_s
            return
        await self._note_relay(record.meter_id, state)
        if state is wanted:
            await self._transition(record, current_state, "confirmed")
            self._active.pop(record.id, None)
        elif job.phase == "recheck":
            # Left in `sending` (by a previous run, or after an unanswered send) and not in the wanted state:
            # now it is safe to send it again.
            if await self._transition(record, "sending", "queued", error="relay read back: not yet switched"):
                job.phase, job.next_at = "send", time.monotonic()
            else:
                self._active.pop(record.id, None)
        else:
            job.next_at = time.monotonic() + self.service.catalog.confirm_interval_s

    async def _still_queued(self, record: CommandRecord) -> bool:
        """A read (no write lock): is the command still `queued`, not superseded or cancelled?"""
        async with self.service.uow(readonly=True) as uow:
            state = await bulk.scalar(uow.conn, sa.select(t.commands.c.state).where(t.commands.c.id == record.id))
        return state == "queued"

    async def _transition(self, record: CommandRecord, expected: str, new: str, *, error: str | None = None,
                          attempt: bool = False) -> bool:
        async with self.service.uow() as uow:
            ok = await cmds.transition(uow, record.id, expected, new, self.service.clock(), error=error,
                                       attempt=attempt)
            await uow.commit()
        return ok

    async def _note_relay(self, meter_id: str, state: RelayState) -> None:
        async with self.service.uow() as uow:
            await uow.run(bulk.update_statements(uow.conn.dialect.name, t.meters, "id",
                                                 [{"id": meter_id, "relay": state.value}]))
            await uow.commit()
        if self._writer is not None:
            self._writer.forget_meter(meter_id)


async def cancel_and_wait(tasks: list[asyncio.Task[Any]]) -> None:
    """Cancel tasks and wait until they are done, cancelling again if one swallowed it.

    Python 3.11's ``asyncio.wait_for`` (pymodbus awaits every answer with it) can lose a cancellation that
    arrives just as the answer does; a single ``cancel()`` would then leave a poll loop running forever.
    """
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.5)
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s ended with %r", task.get_name(), task.exception())


@dataclass(slots=True)
class Scheduler:
    """All bus runners of this instance, plus the periodic re-evaluation of deferred disconnects.

    ``max_pending_total`` bounds the readings of all buses waiting in the writer at once (split evenly over the
    buses, at least 2 each): the writer commits what is waiting in one transaction, which holds SQLite's write
    lock while its statements run; smaller batches let a relay command's creation in sooner. Measured in
    docs/benchmarks.md (before the writer prepared its statements outside the lock): 1,280 readings in flight
    put p99 command latency at 0.6 s, 128 at about 0.1 s.
    """

    service: Service
    runners: list[BusRunner] = field(default_factory=list)
    evaluate_every_s: float = 5.0
    max_pending_total: int = 128
    _by_meter: dict[str, BusRunner] = field(default_factory=dict)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        for runner in self.runners:
            for meter_id in runner.targets:
                self._by_meter[meter_id] = runner
            runner.swept_by_scheduler = True
            runner.max_pending = min(runner.max_pending, max(2, self.max_pending_total // len(self.runners)))
        self.service.on_command = self.route

    def route(self, record: CommandRecord) -> None:
        runner = self._by_meter.get(record.meter_id)
        if runner is not None:
            runner.wake(record)

    def stats(self) -> dict[str, Any]:
        """Per-bus counters and gauges (``BusRunner.stats``) and their totals."""
        buses = {runner.bus_id: runner.stats() for runner in self.runners}
        totals: dict[str, Any] = {}
        for key in ("meters", "demand_polls_per_s", "polls_per_s", "polls", "failures", "skipped", "commands",
                    "record_errors", "pending_readings", "online", "degraded", "offline", "unknown", "stale"):
            totals[key] = round(sum(b[key] for b in buses.values()), 3)
        totals["max_lag_s"] = max((b["max_lag_s"] for b in buses.values()), default=0.0)
        totals["buses_down"] = sum(1 for b in buses.values() if b["state"] == "down")
        totals["buses_overloaded"] = sum(1 for b in buses.values() if b["overloaded"])
        return {"buses": buses, "totals": totals}

    def meter_health(self, meter_id: str) -> dict[str, Any] | None:
        """Communication health of one meter (None if no bus of this instance has it)."""
        runner = self._by_meter.get(meter_id)
        return None if runner is None else runner.meter_health(meter_id)

    async def __aenter__(self) -> Scheduler:
        for runner in self.runners:
            self._tasks.append(asyncio.create_task(runner.run(), name=f"gateway[{runner.bus_id}].bus"))
        self._tasks.append(asyncio.create_task(self._evaluate_loop(), name="gateway.evaluate"))
        if self.runners:
            self._tasks.append(asyncio.create_task(self._sweep_loop(), name="gateway.commands.sweep"))
        return self

    async def _sweep_loop(self) -> None:
        """Pick up active commands for every bus in one query: after a restart, or made by another instance.

        (One query per bus and period cost a 2,000-meter gateway a tenth of a core.)
        """
        recover = True
        period = min(runner.sweep_s for runner in self.runners)
        while True:
            try:
                async with self.service.uow(readonly=True) as uow:
                    rows = (await uow.execute(sa.select(t.commands).where(
                        t.commands.c.state.in_(cmds.ACTIVE_STATES)))).all()
            except Exception:
                log.exception("could not load active commands")
            else:
                by_runner: dict[int, list[Any]] = {}
                for row in rows:
                    runner = self._by_meter.get(row.meter_id)
                    if runner is not None:  # other meters belong to other instances
                        by_runner.setdefault(id(runner), []).append(row)
                for runner in self.runners:
                    runner.offer(by_runner.get(id(runner), []), recover=recover)
                recover = False
            await asyncio.sleep(period)

    async def __aexit__(self, *exc_info: object) -> None:
        await cancel_and_wait(self._tasks)
        self._tasks.clear()
        for runner in self.runners:
            with contextlib.suppress(Exception):
                await runner.driver.aclose()

    async def _evaluate_loop(self) -> None:
        while True:
            await asyncio.sleep(self.evaluate_every_s)
            try:
                await self.service.evaluate_accounts()
            except Exception:
                log.exception("periodic evaluation failed")
