"""The poll loop of one bus: meters in order of their due time (``PollSchedule``), one transaction at a time,
failing meters backed off within a failure budget and a bus that is down probed (``Breaker``), each meter's health
kept (``MeterHealth``) and counted (``BusStats``, ``Rates``).

A reading is handed to the group-commit writer without waiting for its commit; at most ``max_pending`` readings
of a bus are in the writer at once, so a slow database slows the polls instead of piling readings up. A reading
that changes nothing is not stored (``Writer.takes_unchanged``). Relay commands run beside the polls
(``gateway.service.relay_runner``) on the same driver, ahead of any waiting poll.

Meters join, move and leave while the bus runs (``add``, ``remove``): the loop sleeps until the next due time or
a change, whichever comes first, so a meter added to an idle bus is polled without waiting for anything else.
A poll whose meter left or changed place while it was on the wire is dropped (``_still``): its answer may come
from the meter now at the old place.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Callable
from functools import partial
from typing import Any

from drivers.base import MeterDriver, Reading
from drivers.errors import ConnectError, DriverError
from gateway.domain.messages import Message, MeterAnswered
from gateway.service.clock import Clock
from gateway.service.polling.breaker import Breaker
from gateway.service.polling.health import FailureWriter, MeterHealth
from gateway.service.polling.schedule import PollSchedule
from gateway.service.polling.stats import BusStats, Rates, bus_figures
from gateway.service.polling.timeliness import DayTally

__all__ = ["BusPoller"]

log = logging.getLogger(__name__)

AFTER_A_BUG_S = 1.0  # a poll that failed with a bug (not a meter's failure) is tried again no sooner than this


class BusPoller:
    """Polls the meters of one bus (``targets``: meter id -> the driver's description of it).

    Args:
        bus_id: the bus's id (names tasks, logs and stats).
        driver: the bus's driver.
        targets: meter id -> the driver's own description of that meter.
        service: the gateway's use cases (its catalog, ``record_reading``, ``record_failure``, ``writer``).
        clock: time (a fake one in tests).
        publish: where this poller's messages go (``MeterAnswered`` when a failing meter answers again).
        gap_s: silence kept between two transactions (on top of the protocol's own gap).
        offline_after: failures in a row after which a meter is offline (degraded before that).
        max_pending: readings of this bus that may wait in the writer at once.
        breaker: backoff, failure budget and bus state (default: ``Breaker`` with its defaults).
        timeliness: the bus's reading timeliness of the day, kept if given.
    """

    def __init__(self, bus_id: str, driver: MeterDriver[Any], targets: dict[str, Any], service: Any, *,
                 clock: Clock, publish: Callable[[Message], None] = lambda message: None, gap_s: float = 0.0,
                 offline_after: int = 3, max_pending: int = 64, breaker: Breaker | None = None,
                 timeliness: DayTally | None = None) -> None:
        self.bus_id, self.driver, self.targets, self.service = bus_id, driver, targets, service
        self.clock, self.publish, self.gap_s = clock, publish, gap_s
        self.offline_after, self.max_pending = offline_after, max_pending
        self.breaker = breaker or Breaker(bus_id, meters=len(targets))
        self.counters = BusStats()
        self.meters: dict[str, MeterHealth] = {}  # the meters on the bus now (the same dict for its lifetime)
        self.schedule = PollSchedule(self.meters)
        self._changed = asyncio.Event()  # a meter joined or moved: the loop looks at the schedule again
        self.rates = Rates(bus_id, clock.monotonic())
        self.failures = FailureWriter(bus_id, service.record_failure)
        self._writer = getattr(service, "writer", None)
        self._pending = 0
        self._in_writer: set[asyncio.Future[Any]] = set()
        self._room = asyncio.Event()
        self._room.set()
        self._record_errors_logged = 0
        self.timeliness = timeliness
        self.setup()

    def setup(self) -> None:
        """Meters' health from scratch, first polls staggered from now (a meter added before keeps its interval)."""
        catalog, now = self.service.catalog, self.clock.monotonic()
        self.rates = Rates(self.bus_id, now)
        intervals = {m: health.interval for m, health in self.meters.items()}
        self.meters.clear()
        self.meters.update({m: MeterHealth(m, intervals.get(m) or catalog.meters[m].poll_interval_s)
                            for m in self.targets})
        self.schedule.stagger(list(self.meters.values()), now)
        if self.timeliness is not None:
            self.timeliness.begin(((m.meter_id, m.interval) for m in self.meters.values()), now, self.clock.now())

    # --- meters joining, moving and leaving (while the bus runs, or before) ---------------------------------
    def add(self, meter_id: str, target: Any, interval: float) -> None:
        """Poll ``meter_id`` (``target``: the driver's description of it) every ``interval`` seconds, the first
        time within one interval. A meter the bus already has is updated: it keeps its health, and is placed
        again only if its place or interval changed."""
        meter = self.meters.get(meter_id)
        if meter is not None and self.targets.get(meter_id) == target and meter.interval == interval:
            return
        self.targets[meter_id] = target
        if meter is None:
            meter = self.meters[meter_id] = MeterHealth(meter_id, interval)
        meter.interval = interval
        self.breaker.resize(len(self.targets))
        self.schedule.join(meter, self.clock.monotonic())
        if self.timeliness is not None:
            self.timeliness.join(meter_id, interval, self.clock.monotonic())
        self._changed.set()

    def remove(self, meter_id: str) -> None:
        """Stop polling ``meter_id`` and drop its health (a poll of it on the wire finishes, its answer is
        dropped). Its heap entry stays, stale, until it comes to the top."""
        self.targets.pop(meter_id, None)
        if self.meters.pop(meter_id, None) is None:
            return
        self.failures.forget(meter_id)
        self.breaker.forget(meter_id)
        self.breaker.resize(len(self.targets))
        if self.timeliness is not None:
            self.timeliness.leave(meter_id, self.clock.monotonic())

    async def run(self) -> None:
        """Poll until cancelled; failures are written to the meters table beside it."""
        self.setup()
        writer = asyncio.create_task(self.failures.run(), name=f"gateway[{self.bus_id}].health")
        try:
            await self._loop()
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
            for future in list(self._in_writer):  # the writer still commits what it has; stop waiting for it
                future.cancel()

    async def _loop(self) -> None:
        while True:
            self._changed.clear()
            first = self.schedule.next_due()
            if first is None:  # no meters: wait for one to be added
                await self.clock.wait(self._changed, None)
                continue
            due, meter_id = first
            now = self.clock.monotonic()
            if due > now:  # asleep until it is due, or until a meter joins or moves
                await self.clock.wait(self._changed, due - now)
                continue
            self.schedule.pop()
            meter = self.meters[meter_id]
            try:
                await self._poll(meter, now)
            except Exception:  # a bug or a storage failure must not stop the bus, nor make it spin
                log.exception("bus %s: poll of %s failed", self.bus_id, meter_id)
                if self.meters.get(meter_id) is meter and meter.due == due:  # (else placed again, or gone)
                    self.schedule.at(meter, self.clock.monotonic() + max(meter.interval, AFTER_A_BUG_S))

    async def _poll(self, meter: MeterHealth, now: float) -> None:
        if meter.pending:  # its previous reading is still being recorded: skip this poll, don't queue it
            self.counters.skipped += 1
            self.rates.skip(now)
            self.schedule.next_slot(meter, now)
            return
        if self.breaker.waiting(now):
            if self.timeliness is not None:
                self.timeliness.failed(now)
            self._failed(meter, f"bus {self.bus_id} down: {self.breaker.error}")
            self.schedule.next_slot(meter, now)
            return
        if meter.failures and not self.breaker.down and not self.breaker.within_budget(meter.last_failure_s, now):
            self.counters.deferred_retries += 1
            self.schedule.at(meter, now + self.breaker.backoff(meter.interval, meter.failures))
            return
        if self._pending >= self.max_pending:
            due = meter.due
            await self._room.wait()  # the writer is behind: wait for it instead of piling readings up
            if not self._still(meter, due, self.targets.get(meter.meter_id)):
                return  # it left or moved meanwhile (a moved one is already placed again)
            now = self.clock.monotonic()
        self.rates.lag(now - meter.due, now)
        meter.tries += 1
        due, target = meter.due, self.targets[meter.meter_id]
        try:
            reading = await self.driver.read(target)
        except DriverError as exc:
            end = self.clock.monotonic()
            if self._still(meter, due, target):  # (else it left or moved meanwhile: the outcome is dropped)
                meter.busy_s += end - now
                meter.last_failure_s = end - now
                self.breaker.spend(end - now, end)
                self.breaker.failed(meter.meter_id, exc, end)
                if self.timeliness is not None:
                    self.timeliness.failed(end)
                self._failed(meter, str(exc))
                if isinstance(exc, ConnectError) or self.breaker.down:
                    self.schedule.next_slot(meter, end)  # the bus's backoff, not the meter's
                else:
                    self.schedule.at(meter, end + self.breaker.backoff(meter.interval, meter.failures))
        else:
            end = self.clock.monotonic()
            if self._still(meter, due, target):
                meter.busy_s += end - now
                self._succeeded(meter, reading, end)
                missed = self.schedule.next_slot(meter, end)
                if missed:
                    self.counters.skipped += missed
                    self.rates.skip(end)
        if self.gap_s:  # kept after every transaction, whatever became of its outcome
            await self.clock.sleep(self.gap_s)

    def _still(self, meter: MeterHealth, due: float, target: Any) -> bool:
        """Whether ``meter`` is still on the bus at the place and due time its poll started with (else the poll's
        outcome is dropped, and its next poll was placed by ``add``, or there is none)."""
        return (self.meters.get(meter.meter_id) is meter and meter.due == due
                and self.targets.get(meter.meter_id) is target)

    # --- health (also told by the relay runner about its own exchanges) -------------------------------------
    def failed(self, meter_id: str, error: str) -> None:
        """An exchange with the meter failed (a poll, or a relay read or send); a meter no longer on the bus is
        ignored."""
        meter = self.meters.get(meter_id)
        if meter is not None:
            self._failed(meter, error)

    def _failed(self, meter: MeterHealth, error: str) -> None:
        self.counters.failures += 1
        meter.failures += 1
        meter.last_error = error
        meter.last_failure_at = self.clock.now()
        meter.state = "offline" if meter.failures >= self.offline_after else "degraded"
        self.failures.failed(meter)

    def answered(self, meter_id: str) -> None:
        """The meter answered a relay read (no reading to record); a meter no longer on the bus is ignored."""
        meter = self.meters.get(meter_id)
        if meter is not None:
            self._back(meter, self.clock.now())

    def _back(self, meter: MeterHealth, at: dt.datetime) -> None:
        waited = meter.failures > 0 or meter.last_success_at is None  # a trip may be waiting for this answer
        meter.last_success_at = at
        meter.failures, meter.state, meter.last_error = 0, "online", None
        self.failures.answered(meter.meter_id)
        if waited:
            self.publish(MeterAnswered(meter.meter_id))

    def _succeeded(self, meter: MeterHealth, reading: Reading, now: float) -> None:
        # A reading that changes nothing (the meter answered last time too, none of its readings is in the
        # writer) is not stored (gateway.service.freshness); any other goes through a transaction.
        unchanged = (not meter.failures and not meter.pending and self._writer is not None
                     and self._writer.takes_unchanged(reading))
        self.counters.polls += 1
        meter.polls += 1
        self.rates.poll(now)
        meter.last_success = now
        if self.timeliness is not None:
            self.timeliness.ok(meter.meter_id, now)
        self.breaker.answered()
        self._back(meter, reading.taken_at)
        if not unchanged:
            self._hand_over(meter, reading)

    # --- handing readings to the writer ---------------------------------------------------------------------
    def _hand_over(self, meter: MeterHealth, reading: Reading) -> None:
        meter.pending = True
        self._pending += 1
        if self._pending >= self.max_pending:
            self._room.clear()
        future: asyncio.Future[Any] = asyncio.ensure_future(self.service.submit_reading(reading))
        self._in_writer.add(future)
        future.add_done_callback(partial(self._recorded, meter))

    def _recorded(self, meter: MeterHealth, future: asyncio.Future[Any]) -> None:
        self._in_writer.discard(future)
        meter.pending = False
        self._pending -= 1
        if self._pending < self.max_pending:
            self._room.set()
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None:  # a storage failure must not stop the bus; say so, but not 1000 times a second
            self.counters.record_errors += 1
            if self._record_errors_logged < 10:
                self._record_errors_logged += 1
                log.error("bus %s: could not record a reading of %s: %r", self.bus_id, meter.meter_id, exc)

    # --- figures ------------------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Counters and gauges of this bus's polling, for metrics and the health endpoint."""
        return bus_figures(self.bus_id, self.meters.values(), self.counters, self.rates, self.breaker,
                           pending=self._pending, stale_after_s=self.service.catalog.stale_after_s,
                           now=self.clock.monotonic())

    def meter_health(self, meter_id: str | None = None) -> dict[str, Any]:
        """Health of one meter (or of every meter of the bus, by id)."""
        now, stale_after = self.clock.monotonic(), self.service.catalog.stale_after_s
        if meter_id is not None:
            return self.meters[meter_id].as_dict(now, stale_after, self.rates.started)
        return {m.meter_id: m.as_dict(now, stale_after, self.rates.started) for m in self.meters.values()}
