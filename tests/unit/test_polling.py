"""A bus's polling on a fake clock with a fake driver and a fake service (no sockets, no database, no real time):
staggering, the per-meter circuit breaker and the failure budget, skipping instead of queueing, backpressure
from the writer, a whole bus going down and coming back, health states and the stats a metrics endpoint shows."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from drivers.base import Reading
from gateway.domain.messages import Message, MeterAnswered
from gateway.domain.policy import SitePolicy
from gateway.service.catalog import MeterSpec
from gateway.service.polling.breaker import Breaker
from gateway.service.polling.poller import BusPoller
from gateway.service.scheduler import BusSetup, Scheduler
from tests.fakes import FakeClock, FakeDriver


@dataclass
class FakeCatalog:
    """The part of the catalog a bus reads."""

    meters: dict[str, MeterSpec]
    stale_after_s: float = 300.0
    site: Any = None


class FakeService:
    """What a bus uses of the service: the catalog, readings, failures."""

    def __init__(self, intervals: dict[str, float], *, stale_after_s: float = 300.0) -> None:
        self.catalog = FakeCatalog({m: MeterSpec(m, "A-1", "bus", poll_interval_s=i) for m, i in intervals.items()},
                                   stale_after_s=stale_after_s)
        self.readings: list[Reading] = []
        self.failures: list[tuple[str, str, int]] = []
        self.hold: asyncio.Event | None = None  # set: readings are recorded at once; clear: they wait

    async def submit_reading(self, reading: Reading) -> list[Any]:
        if self.hold is not None:
            await self.hold.wait()
        self.readings.append(reading)
        return []

    async def record_failure(self, meter_id: str, error: str, *, offline_after: int = 3) -> None:
        self.failures.append((meter_id, error, offline_after))

    def polls_of(self, meter_id: str) -> int:
        return sum(1 for r in self.readings if r.meter_id == meter_id)


@contextlib.asynccontextmanager
async def running(poller: BusPoller) -> AsyncIterator[BusPoller]:
    task = asyncio.create_task(poller.run())
    try:
        yield poller
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def bus(service: FakeService, driver: FakeDriver, clock: FakeClock, *, max_pending: int = 64,
        messages: list[Message] | None = None, **breaker: Any) -> BusPoller:
    breaker.setdefault("backoff_base_s", 0.0)  # back off from the poll interval
    return BusPoller("b1", driver, {m: m for m in service.catalog.meters}, service, clock=clock,
                     publish=(messages.append if messages is not None else lambda m: None), max_pending=max_pending,
                     breaker=Breaker("b1", meters=len(service.catalog.meters), **breaker))


async def test_polls_are_staggered_over_the_interval() -> None:
    clock = FakeClock()
    service = FakeService({f"m{i}": 0.4 for i in range(4)})
    driver = FakeDriver(clock)
    async with running(bus(service, driver, clock)):
        await clock.advance(0.5)
    assert [driver.calls_of(f"m{i}")[0] for i in range(4)] == pytest.approx([0.0, 0.1, 0.2, 0.3])
    assert driver.calls_of("m0") == pytest.approx([0.0, 0.4])


async def test_a_dead_meter_backs_off_and_the_others_keep_their_rate() -> None:
    clock = FakeClock()
    service = FakeService({f"m{i}": 0.1 for i in range(4)})
    driver = FakeDriver(clock, timeout=0.05)
    driver.dead.add("m3")
    poller = bus(service, driver, clock, backoff_cap_s=0.8)
    async with running(poller):
        await clock.advance(4.0)
        tries = driver.calls_of("m3")
        health = poller.meter_health("m3")
        stats = poller.stats()
    gaps = [b - a for a, b in itertools.pairwise(tries)]
    # after the k-th failure: 0.1 * 2 ** (k - 1) (capped at 0.8), plus the timeout itself
    assert gaps == pytest.approx([min(0.1 * 2 ** (k - 1), 0.8) + 0.05 for k in range(1, len(gaps) + 1)], abs=0.011)
    for healthy in ("m0", "m1", "m2"):
        assert service.polls_of(healthy) >= 36  # 4 s at 0.1 s, minus the few timeouts of m3
    assert health["state"] == "offline" and health["consecutive_failures"] == len(tries)
    assert stats["offline"] == 1 and stats["online"] == 3 and stats["state"] == "up"
    assert stats["failures"] == len(tries) and stats["skipped"] == 0


async def test_retries_of_failing_meters_stay_within_the_failure_budget() -> None:
    clock = FakeClock()
    service = FakeService({f"m{i}": 0.05 for i in range(6)})
    driver = FakeDriver(clock, timeout=0.1)
    dead = {"m1", "m2", "m3", "m4"}
    driver.dead.update(dead)
    poller = bus(service, driver, clock, failure_budget=0.02)  # 1.2 s of failed polls per minute
    async with running(poller):
        await clock.advance(10.0)
        stats = poller.stats()
    failed_time = sum(0.1 for _, _, m in driver.calls if m in dead)
    assert failed_time <= 1.2 + 0.1 + 1e-9  # the first try of each dead meter, then the budget
    assert stats["deferred_retries"] > 0 and stats["failing_share"] <= 0.025
    for healthy in ("m0", "m5"):
        assert service.polls_of(healthy) >= 150  # 200 slots in 10 s, minus the time the budget allows


async def test_exception_replies_count_as_failures_but_not_against_the_bus() -> None:
    clock = FakeClock()
    service = FakeService({f"m{i}": 0.05 for i in range(6)})
    driver = FakeDriver(clock)
    driver.refusing.update({"m0", "m1", "m2", "m3", "m4"})
    poller = bus(service, driver, clock)
    async with running(poller):
        await clock.advance(2.0)
        assert poller.counters.failures >= 15
        assert poller.stats()["state"] == "up"  # the meters answer: the bus works
        assert poller.meter_health("m0")["state"] == "offline"
        assert service.polls_of("m5") >= 30


async def test_overload_skips_polls_instead_of_queueing_them_and_lag_stays_bounded() -> None:
    # 10 meters every 50 ms ask for 200 polls/s; the bus does 50/s
    clock = FakeClock()
    service = FakeService({f"m{i}": 0.05 for i in range(10)})
    driver = FakeDriver(clock, latency=0.02)
    poller = bus(service, driver, clock)
    async with running(poller):
        await clock.advance(3.0)
        stats = poller.stats()
        lags = [stats["max_lag_s"]]
        await clock.advance(3.0)
        lags.append(poller.stats()["max_lag_s"])
    assert stats["overloaded"] and stats["skipped"] > stats["polls"]
    assert stats["demand_polls_per_s"] == pytest.approx(200)
    assert max(lags) < 0.25  # about 10 x 20 ms - 50 ms: a round of the bus, not a growing queue
    polls = [service.polls_of(f"m{i}") for i in range(10)]
    assert max(polls) - min(polls) <= 1  # round-robin: every meter gets its share


async def test_a_poll_is_skipped_while_the_previous_reading_is_being_recorded() -> None:
    clock = FakeClock()
    service = FakeService({"m0": 0.05, "m1": 0.05})
    service.hold = asyncio.Event()  # the writer is stuck
    driver = FakeDriver(clock)
    poller = bus(service, driver, clock)
    async with running(poller):
        await clock.advance(1.0)
        assert poller.counters.skipped >= 30
        assert len(driver.calls_of("m0")) == 1 and len(driver.calls_of("m1")) == 1  # nothing piled up
        assert poller.stats()["pending_readings"] == 2
        service.hold.set()
        await clock.advance(0.2)
        assert service.polls_of("m0") >= 3


class BuggyDriver(FakeDriver):
    """A driver with a bug for one meter: its read raises something that is no meter's failure."""

    async def read(self, meter: str) -> Reading:
        if meter == "m1":
            self.calls.append((self.clock.seconds, "read", meter))
            raise ZeroDivisionError("a bug")
        return await super().read(meter)


async def test_a_poll_that_hits_a_bug_is_tried_again_after_a_pause_not_in_a_spin() -> None:
    clock = FakeClock()
    service = FakeService({"m0": 0.05, "m1": 0.05})
    driver = BuggyDriver(clock)
    async with running(bus(service, driver, clock)):
        await clock.advance(5.0)
    # at most once a second (it was every poll interval, and a tiny interval made the bus spin without yielding)
    assert 4 <= len(driver.calls_of("m1")) <= 6
    assert service.polls_of("m0") >= 90  # the other meter is polled on


async def test_the_bus_waits_for_the_writer_when_too_many_readings_are_pending() -> None:
    clock = FakeClock()
    service = FakeService({f"m{i}": 0.02 for i in range(8)})
    service.hold = asyncio.Event()
    driver = FakeDriver(clock)
    poller = bus(service, driver, clock, max_pending=3)
    async with running(poller):
        await clock.advance(0.1)
        assert poller.stats()["pending_readings"] == 3
        await clock.advance(1.0)
        assert len(driver.calls) == 3  # no poll while the writer is behind
        service.hold.set()
        await clock.advance(0.5)
        assert len(service.readings) >= 10
        assert poller.counters.skipped > 0  # the slots missed while waiting were counted, not made up


async def test_a_bus_that_goes_down_is_probed_and_comes_back_without_a_restart() -> None:
    clock = FakeClock()
    service = FakeService({f"m{i}": 0.05 for i in range(5)})
    driver = FakeDriver(clock)
    poller = bus(service, driver, clock, bus_backoff_cap_s=0.5)
    async with running(poller):
        await clock.advance(0.3)
        assert poller.counters.polls >= 10
        driver.down = True
        await clock.advance(0.1)
        assert poller.stats()["state"] == "down"
        calls = len(driver.calls)
        await clock.advance(2.0)
        assert poller.stats()["offline"] == 5
        probes = len(driver.calls) - calls
        assert probes < poller.counters.failures / 3  # most due polls failed without touching the bus
        assert poller.stats()["last_bus_error"]
        driver.down = False
        await clock.advance(0.55)  # a bus probe (<= 0.5 s) plus one interval
        assert poller.stats()["online"] == 5 and poller.stats()["state"] == "up"
    offline = {m for m, _, n in service.failures if n == 1}
    assert offline == {f"m{i}" for i in range(5)}  # the meters table was told, off the poll path


async def test_meters_that_stop_answering_together_mean_the_bus_is_down() -> None:
    clock = FakeClock()
    service = FakeService({f"m{i}": 0.05 for i in range(8)})
    driver = FakeDriver(clock, timeout=0.02)
    poller = bus(service, driver, clock, bus_backoff_cap_s=0.3)
    async with running(poller):
        await clock.advance(0.1)
        driver.dead.update(service.catalog.meters)  # a cut cable: nobody answers
        await clock.advance(0.5)
        assert poller.stats()["state"] == "down"
        driver.dead.clear()
        await clock.advance(1.0)
        assert poller.stats()["online"] == 8


async def test_the_first_backoff_is_never_shorter_than_the_minimum() -> None:
    clock = FakeClock()
    service = FakeService({"m0": 0.05, "m1": 0.05})
    driver = FakeDriver(clock, timeout=0.01)
    driver.dead.add("m1")
    async with running(bus(service, driver, clock, backoff_base_s=0.5)):
        await clock.advance(1.0)
    first, second = driver.calls_of("m1")[:2]
    assert second - first == pytest.approx(0.51)


async def test_a_meter_answering_again_is_announced() -> None:
    """The relay runner waits for this to send a trip that waited for the meter (a message, not a poll)."""
    clock = FakeClock()
    service = FakeService({"m0": 0.1})
    driver = FakeDriver(clock)
    messages: list[Message] = []
    async with running(bus(service, driver, clock, messages=messages)):
        await clock.advance(0.05)
        assert messages == [MeterAnswered("m0")]  # its first answer
        driver.dead.add("m0")
        await clock.advance(0.5)
        assert messages == [MeterAnswered("m0")]
        driver.dead.clear()
        await clock.advance(2.0)
        assert messages == [MeterAnswered("m0"), MeterAnswered("m0")]


async def test_stale_meters_and_scheduler_totals() -> None:
    clock = FakeClock()
    service = FakeService({"m0": 0.05, "m1": 0.05}, stale_after_s=0.3)
    service.catalog.site = SitePolicy()
    driver = FakeDriver(clock)
    driver.dead.add("m1")
    scheduler = Scheduler(service, [BusSetup("b1", driver, {"m0": "m0", "m1": "m1"})], clock=clock,
                          breaker={"backoff_cap_s": 5})
    poller = scheduler.buses[0].poller
    async with running(poller):
        await clock.advance(0.5)
        assert poller.meter_health("m1")["stale"] and not poller.meter_health("m0")["stale"]
        stats = scheduler.stats()
    assert stats["totals"]["stale"] == 1 and stats["totals"]["meters"] == 2
    assert set(stats["buses"]) == {"b1"} and stats["buses"]["b1"]["polls"] >= 1
    assert scheduler.meter_health("m0")["state"] == "online"  # type: ignore[index]
    assert scheduler.meter_health("nope") is None
