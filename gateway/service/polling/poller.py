"""The poll loop of one bus: meters in order of their due time (``PollSchedule``), one transaction at a time,
failing meters backed off within a failure budget and a bus that is down probed (``Breaker``), each meter's health
kept (``MeterHealth``) and counted (``BusStats``, ``Rates``).

A reading is handed to the group-commit writer without waiting for its commit; at most ``max_pending`` readings
of a bus are in the writer at once, so a slow database slows the polls instead of piling readings up. A reading
that changes nothing is not stored (``Writer.takes_unchanged``). Relay commands run beside the polls
(``gateway.service.relay_runner``) on the same driver, ahead of any waiting poll.
"""

from __future__ import annotations

import asyncio
import collections
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
from gateway.service.polling.stats import BusStats, Rates

__all__ = ["BusPoller"]

log = logging.getLogger(__name__)


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
    """

    def __init__(self, bus_id: str, driver: MeterDriver[Any], targets: dict[str, Any], service: Any, *,
                 clock: Clock, publish: Callable[[Message], None] = lambda message: None, gap_s: float = 0.0,
                 offline_after: int = 3, max_pending: int = 64, breaker: Breaker | None = None) -> None:
        self.bus_id, self.driver, self.targets, self.service = bus_id, driver, targets, service
        self.clock, self.publish, self.gap_s = clock, publish, gap_s
        self.offline_after, self.max_pending = offline_after, max_pending
        self.breaker = breaker or Breaker(bus_id, meters=len(targets))
        self.counters = BusStats()
        self.schedule = PollSchedule()
        self.meters: dict[str, MeterHealth] = {}
        self.rates = Rates(bus_id, clock.monotonic())
        self.failures = FailureWriter(bus_id, service.record_failure)
        self._writer = getattr(service, "writer", None)
        self._pending = 0
        self._in_writer: set[asyncio.Future[Any]] = set()
        self._room = asyncio.Event()
        self._room.set()
        self._record_errors_logged = 0
        self.setup()

    def setup(self) -> None:
        """Meters' health from scratch, first polls staggered from now."""
        catalog, now = self.service.catalog, self.clock.monotonic()
        self.rates = Rates(self.bus_id, now)
        self.meters = {m: MeterHealth(m, catalog.meters[m].poll_interval_s) for m in self.targets}
        self.schedule.stagger(list(self.meters.values()), now)

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
        if not self.schedule:
            await asyncio.Event().wait()  # no meters: nothing to do until cancelled
        while True:
            due, meter_id = self.schedule.next_due()
            now = self.clock.monotonic()
            if due > now:
                await self.clock.sleep(due - now)
                continue
            self.schedule.pop()
            meter = self.meters[meter_id]
            try:
                await self._poll(meter, now)
            except Exception:  # a bug or a storage failure must not stop the bus
                log.exception("bus %s: poll of %s failed", self.bus_id, meter_id)
                self.schedule.at(meter, self.clock.monotonic() + meter.interval)

    async def _poll(self, meter: MeterHealth, now: float) -> None:
        if meter.pending:  # its previous reading is still being recorded: skip this poll, don't queue it
            self.counters.skipped += 1
            self.rates.skip(now)
            self.schedule.next_slot(meter, now)
            return
        if self.breaker.waiting(now):
            self.failed(meter.meter_id, f"bus {self.bus_id} down: {self.breaker.error}")
            self.schedule.next_slot(meter, now)
            return
        if meter.failures and not self.breaker.down and not self.breaker.within_budget(meter.last_failure_s, now):
            self.counters.deferred_retries += 1
            self.schedule.at(meter, now + self.breaker.backoff(meter.interval, meter.failures))
            return
        if self._pending >= self.max_pending:
            await self._room.wait()  # the writer is behind: wait for it instead of piling readings up
            now = self.clock.monotonic()
        self.rates.lag(now - meter.due, now)
        meter.tries += 1
        try:
            reading = await self.driver.read(self.targets[meter.meter_id])
        except DriverError as exc:
            end = self.clock.monotonic()
            meter.busy_s += end - now
            meter.last_failure_s = end - now
            self.breaker.spend(end - now, end)
            self.breaker.failed(meter.meter_id, exc, end)
            self.failed(meter.meter_id, str(exc))
            if isinstance(exc, ConnectError) or self.breaker.down:
                self.schedule.next_slot(meter, end)  # the bus's backoff, not the meter's
            else:
                self.schedule.at(meter, end + self.breaker.backoff(meter.interval, meter.failures))
        else:
            end = self.clock.monotonic()
            meter.busy_s += end - now
            self._succeeded(meter, reading, end)
            missed = self.schedule.next_slot(meter, end)
            if missed:
                self.counters.skipped += missed
                self.rates.skip(end)
        if self.gap_s:
            await self.clock.sleep(self.gap_s)

    # --- health (also told by the relay runner about its own exchanges) -------------------------------------
    def failed(self, meter_id: str, error: str) -> None:
        """An exchange with the meter failed (a poll, or a relay read or send)."""
        meter = self.meters[meter_id]
        self.counters.failures += 1
        meter.failures += 1
        meter.last_error = error
        meter.last_failure_at = self.clock.now()
        meter.state = "offline" if meter.failures >= self.offline_after else "degraded"
        self.failures.failed(meter)

    def answered(self, meter_id: str) -> None:
        """The meter answered a relay read (no reading to record)."""
        self._back(self.meters[meter_id], self.clock.now())

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
        now = self.clock.monotonic()
        states = collections.Counter(m.state for m in self.meters.values())
        stale_after = self.service.catalog.stale_after_s
        stale = sum(1 for m in self.meters.values()
                    if now - (m.last_success if m.last_success is not None else self.rates.started) > stale_after)
        c = self.counters
        return {
            "bus": self.bus_id,
            "state": "down" if self.breaker.down else "up",
            "last_bus_error": self.breaker.error or None,
            "meters": len(self.meters),
            "demand_polls_per_s": round(sum(1 / m.interval for m in self.meters.values()), 3),
            "polls_per_s": round(self.rates.per_second(now), 3),
            "polls": c.polls, "failures": c.failures, "skipped": c.skipped, "commands": c.commands,
            "record_errors": c.record_errors, "deferred_retries": c.deferred_retries,
            "failing_share": round(self.breaker.failing_share(now), 4),
            "overloaded": self.rates.overloaded(now),
            "lag_s": round(self.rates.lag_ewma, 4),
            "max_lag_s": round(self.rates.max_lag(now), 4),
            "pending_readings": self._pending,
            "online": states.get("online", 0), "degraded": states.get("degraded", 0),
            "offline": states.get("offline", 0), "unknown": states.get("unknown", 0),
            "stale": stale,
        }

    def meter_health(self, meter_id: str | None = None) -> dict[str, Any]:
        """Health of one meter (or of every meter of the bus, by id)."""
        now, stale_after = self.clock.monotonic(), self.service.catalog.stale_after_s
        if meter_id is not None:
            return self.meters[meter_id].as_dict(now, stale_after, self.rates.started)
        return {m.meter_id: m.as_dict(now, stale_after, self.rates.started) for m in self.meters.values()}
