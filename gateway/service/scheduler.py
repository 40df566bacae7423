"""The bus scheduler: one runner per bus, one transaction at a time, relay commands ahead of polls.

A runner loops: due command work first (send, read back, confirm), then the next due poll, otherwise it sleeps
until something is due or a new command wakes it. So a command waits at most for the transaction in flight.
Polls are staggered over each meter's interval; a meter that fails backs off exponentially (capped); a poll
that falls behind is skipped and counted, never queued up.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from drivers.base import MeterDriver, RelayAction, RelayState
from drivers.errors import CommandRefused, DriverError
from gateway.adapters import tables as t
from gateway.service import commands as cmds
from gateway.service.commands import CommandRecord
from gateway.service.handlers import Service

__all__ = ["BusRunner", "Scheduler"]

log = logging.getLogger(__name__)

WANTED = {"open": RelayState.OPEN, "close": RelayState.CLOSED}


@dataclass(slots=True)
class _Active:
    record: CommandRecord
    phase: str  # "send", "confirm" or "recheck" (was left in `sending` by a previous run)
    next_at: float = 0.0


@dataclass(slots=True)
class BusStats:
    polls: int = 0
    failures: int = 0
    skipped: int = 0
    commands: int = 0


@dataclass(slots=True)
class _MeterPoll:
    interval: float
    failures: int = 0
    due: float = 0.0


class BusRunner:
    """Runs one bus: its driver, the meters on it (``targets``: meter id → the driver's meter description)."""

    def __init__(self, bus_id: str, driver: MeterDriver[Any], targets: dict[str, Any], service: Service, *,
                 gap_s: float = 0.0, backoff_cap_s: float = 300.0, sweep_s: float = 2.0) -> None:
        self.bus_id = bus_id
        self.driver = driver
        self.targets = targets
        self.service = service
        self.gap_s = gap_s
        self.backoff_cap_s = backoff_cap_s
        self.sweep_s = sweep_s
        self.stats = BusStats()
        self._active: dict[str, _Active] = {}
        self._wake = asyncio.Event()
        self._polls: dict[str, _MeterPoll] = {}
        self._heap: list[tuple[float, str]] = []
        self._next_sweep = 0.0

    def wake(self, record: CommandRecord) -> None:
        """A new command for one of this bus's meters (called after its commit)."""
        self._active[record.id] = _Active(record, "send")
        self._wake.set()

    async def run(self) -> None:
        start = time.monotonic()
        catalog = self.service.catalog
        n = max(len(self.targets), 1)
        for i, meter_id in enumerate(self.targets):
            interval = catalog.meters[meter_id].poll_interval_s
            due = start + interval * i / n  # stagger over the interval
            self._polls[meter_id] = _MeterPoll(interval, due=due)
            heapq.heappush(self._heap, (due, meter_id))
        await self._sweep_commands(recover=True)
        while True:
            now = time.monotonic()
            if now >= self._next_sweep:
                await self._sweep_commands()
            job = self._due_command(now)
            if job is not None:
                try:
                    await self._command_step(job)
                except Exception:  # e.g. the database is unavailable: retry the step later, keep the bus alive
                    log.exception("command %s step failed", job.record.id)
                    job.next_at = time.monotonic() + 1.0
                await self._gap()
                continue
            if self._heap and self._heap[0][0] <= now:
                _, meter_id = heapq.heappop(self._heap)
                try:
                    await self._poll(meter_id)
                except Exception:
                    log.exception("poll of %s failed", meter_id)
                    self._schedule(meter_id, time.monotonic() + self._polls[meter_id].interval)
                await self._gap()
                continue
            wait = self._next_sweep - now
            if self._heap:
                wait = min(wait, self._heap[0][0] - now)
            if self._active:
                wait = min(wait, min(a.next_at for a in self._active.values()) - now)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=max(wait, 0.001))

    async def _gap(self) -> None:
        if self.gap_s:
            await asyncio.sleep(self.gap_s)

    def _due_command(self, now: float) -> _Active | None:
        due = [a for a in self._active.values() if a.next_at <= now]
        return min(due, key=lambda a: a.next_at) if due else None

    # --- polls --------------------------------------------------------------------------------------------
    async def _poll(self, meter_id: str) -> None:
        state = self._polls[meter_id]
        try:
            reading = await self.driver.read(self.targets[meter_id])
        except DriverError as exc:
            self.stats.failures += 1
            state.failures += 1
            await self.service.record_failure(meter_id, str(exc))
            backoff = min(state.interval * 2 ** (state.failures - 1), max(self.backoff_cap_s, state.interval))
            self._schedule(meter_id, time.monotonic() + backoff)
            return
        self.stats.polls += 1
        state.failures = 0
        try:
            created = await self.service.record_reading(reading)
        except Exception:  # a storage failure must not stop the bus
            log.exception("could not record a reading of %s", meter_id)
            created = []
        for record in created:
            if record.meter_id in self.targets:
                self._active[record.id] = _Active(record, "send")
        now = time.monotonic()
        due = state.due + state.interval
        if due < now:  # fell behind: skip the missed slots instead of queueing them up
            missed = int((now - due) // state.interval) + 1
            self.stats.skipped += missed
            due += missed * state.interval
        self._schedule(meter_id, due)

    def _schedule(self, meter_id: str, due: float) -> None:
        self._polls[meter_id].due = due
        heapq.heappush(self._heap, (due, meter_id))

    # --- commands -----------------------------------------------------------------------------------------
    async def _sweep_commands(self, *, recover: bool = False) -> None:
        """Pick up active commands from the database: after a restart, or made by another instance."""
        self._next_sweep = time.monotonic() + self.sweep_s
        if not self.targets:
            return
        async with self.service.uow(readonly=True) as uow:
            rows = (await uow.execute(sa.select(t.commands).where(
                t.commands.c.meter_id.in_(list(self.targets)), t.commands.c.state.in_(cmds.ACTIVE_STATES)))).all()
        for row in rows:
            if row.id in self._active:
                continue
            phase = {"queued": "send", "sending": "recheck", "sent": "confirm"}[row.state]
            if row.state == "sending" and not recover:
                continue  # being sent by this runner right now, or by another instance
            self._active[row.id] = _Active(CommandRecord.from_row(row), phase)

    async def _command_step(self, job: _Active) -> None:
        record = job.record
        now = self.service.clock()
        target = self.targets[record.meter_id]
        wanted = WANTED[record.action]
        current_state = {"send": "queued", "confirm": "sent", "recheck": "sending"}[job.phase]
        if now >= record.expires_at:
            final = "expired" if job.phase == "send" else "failed"
            error = "expired before it was sent" if final == "expired" else "relay not confirmed before expiry"
            await self._transition(record, current_state, final, error=error)
            self._active.pop(record.id, None)
            return
        if job.phase == "send":
            if not await self._transition(record, "queued", "sending", attempt=True):
                self._active.pop(record.id, None)  # superseded or cancelled meanwhile
                return
            self.stats.commands += 1
            try:
                await self.driver.set_relay(target, RelayAction(record.action), valid_until=record.expires_at)
            except CommandRefused as exc:
                await self._transition(record, "sending", "failed", error=f"meter refused: {exc.reason}")
                self._active.pop(record.id, None)
                return
            except DriverError as exc:
                await self._transition(record, "sending", "queued", error=str(exc))
                attempts = record.attempts + 1
                job.record = _replace_attempts(record, attempts)
                job.next_at = time.monotonic() + min(0.5 * 2 ** (attempts - 1), 30.0)
                return
            if not await self._transition(record, "sending", "sent"):
                self._active.pop(record.id, None)
                return
            job.phase, job.next_at = "confirm", time.monotonic()
            return
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
            # Left in `sending` by a previous run and not in the wanted state: send it (again), never blindly.
            if await self._transition(record, "sending", "queued", error="re-queued after restart"):
                job.phase, job.next_at = "send", time.monotonic()
            else:
                self._active.pop(record.id, None)
        else:
            job.next_at = time.monotonic() + self.service.catalog.confirm_interval_s

    async def _transition(self, record: CommandRecord, expected: str, new: str, *, error: str | None = None,
                          attempt: bool = False) -> bool:
        async with self.service.uow() as uow:
            ok = await cmds.transition(uow, record.id, expected, new, self.service.clock(), error=error,
                                       attempt=attempt)
            await uow.commit()
        return ok

    async def _note_relay(self, meter_id: str, state: RelayState) -> None:
        async with self.service.uow() as uow:
            await uow.execute(sa.update(t.meters).where(t.meters.c.id == meter_id).values(relay=state.value))
            await uow.commit()


def _replace_attempts(record: CommandRecord, attempts: int) -> CommandRecord:
    from dataclasses import replace

    return replace(record, attempts=attempts)


@dataclass(slots=True)
class Scheduler:
    """All bus runners of this instance, plus the periodic re-evaluation of deferred disconnects."""

    service: Service
    runners: list[BusRunner] = field(default_factory=list)
    evaluate_every_s: float = 5.0
    _by_meter: dict[str, BusRunner] = field(default_factory=dict)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        for runner in self.runners:
            for meter_id in runner.targets:
                self._by_meter[meter_id] = runner
        self.service.on_command = self.route

    def route(self, record: CommandRecord) -> None:
        runner = self._by_meter.get(record.meter_id)
        if runner is not None:
            runner.wake(record)

    async def __aenter__(self) -> Scheduler:
        for runner in self.runners:
            self._tasks.append(asyncio.create_task(runner.run(), name=f"gateway[{runner.bus_id}].bus"))
        self._tasks.append(asyncio.create_task(self._evaluate_loop(), name="gateway.evaluate"))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
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
