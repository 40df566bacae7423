"""The buses of this instance: a poller (``gateway.service.polling``) and a relay runner
(``gateway.service.relay_runner``) for each, one transaction at a time per bus, relay commands ahead of polls.

The scheduler's reactions are handlers of the message bus (registered by ``bootstrap``): a queued command wakes
its bus (``route``), a meter that answers again wakes the commands waiting for it (``meter_answered``). At a
start it picks up the commands left active by the previous run (``recover``: read back before anything else);
nothing else reads the commands table in a loop. It also re-evaluates, every ``evaluate_every_s``, the accounts
whose deferred disconnect may go ahead now (a friendly window or a notice period ended).

The fleet changes while it runs (``add_meter``, ``move_meter``, ``remove_meter``: handlers called after the
change is committed): a meter is placed on the bus its ``MeterSpec`` names when that bus is one of this
instance's, and taken off the bus it was on; its active relay commands follow it (``RelayRunner.forget``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from drivers.base import MeterDriver, Reading
from gateway.domain.messages import CommandQueued, MeterAnswered
from gateway.domain.relay import Command, Limits
from gateway.service.catalog import MeterSpec
from gateway.service.clock import Clock, SystemClock
from gateway.service.polling.breaker import Breaker
from gateway.service.polling.poller import BusPoller
from gateway.service.polling.timeliness import DayTally, ReadingDaysStore, TimelinessFlusher
from gateway.service.relay_runner import RelayRunner

__all__ = ["BusSetup", "Scheduler", "cancel_and_wait"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BusSetup:
    """One bus as the scheduler runs it: its driver and the driver's description of each meter on it at the
    start (``targets``); ``make_target`` describes, for the driver, a meter added or moved to the bus later."""

    bus_id: str
    driver: MeterDriver[Any]
    targets: dict[str, Any]
    gap_s: float = 0.0
    close_allowed: bool = False  # DL/T 645 1BH: a reconnect ends armed
    breaker: dict[str, Any] | None = None  # this bus's Breaker keywords (backoff), over the scheduler's
    make_target: Callable[[MeterSpec], Any] | None = None  # a meter's spec -> the driver's description of it
    poll_time_s: float = 0.0  # the longest a poll may take (timeout x tries): the grace of its reading timeliness


@dataclass(slots=True)
class Bus:
    poller: BusPoller
    runner: RelayRunner
    make_target: Callable[[MeterSpec], Any] | None = None


class Scheduler:
    """All buses of this instance, and the periodic re-evaluation of deferred disconnects.

    ``max_pending_total`` bounds the readings of all buses waiting in the writer at once (split evenly over the
    buses, at least 2 each): the writer commits what is waiting in one transaction, which holds SQLite's write
    lock while its statements run; smaller batches let a relay command's creation in sooner.

    Args:
        service: the gateway's use cases.
        buses: the buses to run.
        clock: time (a fake one in tests).
        publish: where the buses' messages go (the message bus).
        limits: how hard relay commands try.
        evaluate_every_s: how often deferred disconnects are re-checked.
        max_pending_total: readings of all buses that may wait in the writer at once.
        breaker: keyword arguments of each bus's ``Breaker`` (backoff, failure budget).
        reading_days: where each bus's reading timeliness of the day is written (None: not counted).
    """

    def __init__(self, service: Any, buses: list[BusSetup], *, clock: Clock | None = None,
                 publish: Any = lambda message: None, limits: Limits | None = None, evaluate_every_s: float = 5.0,
                 max_pending_total: int = 128, offline_after: int = 3, breaker: dict[str, Any] | None = None,
                 reading_days: ReadingDaysStore | None = None) -> None:
        self.service, self.clock = service, clock or SystemClock()
        self.evaluate_every_s = evaluate_every_s
        site = service.catalog.site
        self.trips = site.limiter()  # the automatic trips on the wire (not the decisions' limiter, in the writer)
        limits = limits or Limits()
        self.buses: list[Bus] = []
        self._by_id: dict[str, Bus] = {}
        self._by_meter: dict[str, Bus] = {}
        per_bus = max(2, max_pending_total // max(len(buses), 1))
        for setup in buses:  # (each poller gets a copy of its targets: they change as meters come and go)
            bus_breaker = Breaker(setup.bus_id, meters=len(setup.targets), **(breaker or {}) | (setup.breaker or {}))
            poller = BusPoller(setup.bus_id, setup.driver, dict(setup.targets), service, clock=self.clock,
                               publish=publish, gap_s=setup.gap_s, offline_after=offline_after,
                               max_pending=per_bus, breaker=bus_breaker,
                               timeliness=None if reading_days is None else DayTally(
                                   setup.bus_id, site.tz, retry_s=bus_breaker.backoff_base_s,
                                   grace_s=setup.poll_time_s + setup.gap_s))
            runner = RelayRunner(poller, service, clock=self.clock, limits=limits, trips=self.trips,
                                 close_allowed=setup.close_allowed, publish=publish, rehome=self._rehome)
            bus = Bus(poller, runner, setup.make_target)
            self.buses.append(bus)
            self._by_id[setup.bus_id] = bus
            self._by_meter.update(dict.fromkeys(setup.targets, bus))
        self._tasks: list[asyncio.Task[Any]] = []
        self.timeliness = None if reading_days is None or not buses else TimelinessFlusher(
            lambda: [bus.poller.timeliness for bus in self.buses if bus.poller.timeliness is not None],
            reading_days, self.clock)

    # --- message-bus handlers -------------------------------------------------------------------------------
    def route(self, message: CommandQueued) -> None:
        """A queued command wakes the relay runner of its meter's bus (meters of other instances are not ours)."""
        bus = self._by_meter.get(message.command.meter_id)
        if bus is not None:
            bus.runner.offer(message.command)

    def meter_answered(self, message: MeterAnswered) -> None:
        bus = self._by_meter.get(message.meter_id)
        if bus is not None:
            bus.runner.meter_answered(message.meter_id)

    # --- the fleet changing while it runs (handlers called after the change is committed) ------------------
    def add_meter(self, spec: MeterSpec) -> None:
        """Poll the meter ``spec`` describes on its bus (its first poll within one interval), if the bus is one of
        this instance's. A meter this instance already polls is moved (``move_meter``)."""
        self.move_meter(spec)

    def move_meter(self, spec: MeterSpec) -> None:
        """Poll the meter at the place ``spec`` gives it: taken off the bus it was on (if another), placed on
        ``spec.bus_id`` if that bus is one of this instance's. On the same bus it keeps its health; its active
        commands follow it to another bus of this instance (or are dropped if its new bus is not ours)."""
        new = self._by_id.get(spec.bus_id)
        old = self._by_meter.get(spec.id)
        target = None
        if new is not None:
            if new.make_target is None:
                raise ValueError(f"bus {spec.bus_id} cannot take meter {spec.id} while it runs (no make_target)")
            target = new.make_target(spec)  # (first: a spec the driver refuses changes nothing)
        if old is not None and old is not new:
            old.poller.remove(spec.id)
            del self._by_meter[spec.id]
        if new is not None:
            new.poller.add(spec.id, target, spec.poll_interval_s)
            self._by_meter[spec.id] = new
        if old is not None and old is not new:
            old.runner.forget(spec.id)  # after the new bus has it: its commands go there (``_rehome``)

    def remove_meter(self, meter_id: str) -> None:
        """Stop polling the meter (a poll of it on the wire finishes; its answer is dropped) and drop its health
        and its relay commands (cancelled in the database before: none of them goes on the wire any more)."""
        bus = self._by_meter.pop(meter_id, None)
        if bus is not None:
            bus.poller.remove(meter_id)
            bus.runner.forget(meter_id)

    async def read_now(self, spec: MeterSpec) -> Reading:
        """Read the meter ``spec`` describes at once, ahead of the polls waiting for its bus (a final or initial
        reading the provisioning needs; the meter need not be polled here yet). Driver errors propagate."""
        bus = self._by_id.get(spec.bus_id)
        if bus is None or bus.make_target is None:
            raise LookupError(f"bus {spec.bus_id} is not polled by this instance")
        driver = bus.poller.driver
        urgent = getattr(driver, "urgent", None)
        with urgent() if callable(urgent) else contextlib.nullcontext():
            return await driver.read(bus.make_target(spec))

    def _rehome(self, command: Command, recovered: bool) -> None:
        """An active command of a meter that left a bus: to the meter's bus now (none: it is dropped)."""
        bus = self._by_meter.get(command.meter_id)
        if bus is not None:
            bus.runner.offer(command, recovered=recovered)

    # --- figures ------------------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Per-bus counters and gauges and their totals."""
        buses = {}
        for bus in self.buses:
            figures = bus.poller.stats()
            figures["active_commands"] = len(bus.runner.active)
            buses[bus.poller.bus_id] = figures
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
        bus = self._by_meter.get(meter_id)
        return None if bus is None else bus.poller.meter_health(meter_id)

    # --- lifetime -----------------------------------------------------------------------------------------
    async def __aenter__(self) -> Scheduler:
        await self.recover()
        for bus in self.buses:
            name = bus.poller.bus_id
            self._tasks.append(asyncio.create_task(bus.poller.run(), name=f"gateway[{name}].poll"))
            self._tasks.append(asyncio.create_task(bus.runner.run(), name=f"gateway[{name}].commands"))
        self._tasks.append(asyncio.create_task(self._evaluate_loop(), name="gateway.evaluate"))
        if self.timeliness is not None:
            self._tasks.append(asyncio.create_task(self.timeliness.run(), name="gateway.timeliness"))
        return self

    async def recover(self) -> None:
        """The commands left active by the previous run, and the automatic trips of the last window."""
        if not self.buses:
            return
        now = self.clock.now()
        async with self.service.uow(readonly=True) as uow:
            records = await uow.commands.active()
            self.trips.recent = sorted(await uow.commands.recent_trips(now - self.trips.window))
        for record in records:
            bus = self._by_meter.get(record.meter_id)
            if bus is not None:  # other meters belong to other instances
                bus.runner.offer(record.model(), recovered=True)

    async def __aexit__(self, *exc_info: object) -> None:
        await cancel_and_wait(self._tasks)
        self._tasks.clear()
        if self.timeliness is not None:  # the day so far, polls to the last
            try:
                await self.timeliness.flush()
            except Exception:
                log.exception("could not write the reading timeliness at the stop")
        for bus in self.buses:
            with contextlib.suppress(Exception):
                await bus.poller.driver.aclose()

    async def _evaluate_loop(self) -> None:
        while True:
            await self.clock.sleep(self.evaluate_every_s)
            try:
                await self.service.evaluate_accounts()
            except Exception:
                log.exception("periodic evaluation failed")


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

