"""The bus runner's poll scheduling with a fake driver and a fake service (no sockets, no database).

Staggering, the per-meter circuit breaker, skipping instead of queueing, backpressure from the writer, a whole
bus going down and coming back, health states and the stats a metrics endpoint can show.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from drivers.base import MeterDriver, Reading
from drivers.errors import ConnectError, ExceptionReply, MeterTimeout
from gateway.service.catalog import MeterSpec
from gateway.service.scheduler import BusRunner, Scheduler
from tests.support import async_wait_until


class FakeUow:
    async def __aenter__(self) -> FakeUow:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def execute(self, *args: Any) -> Any:
        class Rows:
            def all(self) -> list[Any]:
                return []

        return Rows()

    async def commit(self) -> None:
        return None


@dataclass
class FakeCatalog:
    """The part of the catalog a bus runner reads."""

    meters: dict[str, MeterSpec]
    stale_after_s: float = 300.0
    confirm_interval_s: float = 0.5


class FakeService:
    """What a BusRunner uses of the service: the catalog, readings, failures, a unit of work for commands."""

    def __init__(self, intervals: dict[str, float], *, stale_after_s: float = 300.0) -> None:
        self.catalog = FakeCatalog({m: MeterSpec(m, "A-1", "bus", poll_interval_s=i) for m, i in intervals.items()},
                                   stale_after_s=stale_after_s)
        self.readings: list[Reading] = []
        self.failures: list[tuple[str, str, int]] = []
        self.hold: asyncio.Event | None = None  # set: readings are recorded at once; clear: they wait
        self.on_command = lambda record: None

    def clock(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)

    def uow(self, *, readonly: bool = False) -> FakeUow:
        return FakeUow()

    async def record_reading(self, reading: Reading) -> list[Any]:
        if self.hold is not None:
            await self.hold.wait()
        self.readings.append(reading)
        return []

    async def record_failure(self, meter_id: str, error: str, *, offline_after: int = 3) -> None:
        self.failures.append((meter_id, error, offline_after))

    def polls_of(self, meter_id: str) -> int:
        return sum(1 for r in self.readings if r.meter_id == meter_id)


class FakeDriver(MeterDriver[str]):
    """Answers after ``latency``; ``dead`` meters time out after ``timeout``; ``down`` refuses connections."""

    def __init__(self, *, latency: float = 0.0, timeout: float = 0.05) -> None:
        self.latency, self.timeout = latency, timeout
        self.dead: set[str] = set()
        self.refusing: set[str] = set()  # answer with an exception reply
        self.down = False
        self.calls: list[tuple[float, str]] = []

    async def read(self, meter: str) -> Reading:
        self.calls.append((time.monotonic(), meter))
        if self.down:
            raise ConnectError("connection refused", meter_id=meter)
        if meter in self.dead:
            await asyncio.sleep(self.timeout)
            raise MeterTimeout("no answer", meter_id=meter)
        if self.latency:
            await asyncio.sleep(self.latency)
        if meter in self.refusing:
            raise ExceptionReply("exception 2", code=2, meter_id=meter)
        return Reading(meter, dt.datetime.now(dt.UTC), 1000)

    def calls_of(self, meter: str) -> list[float]:
        return [t for t, m in self.calls if m == meter]


@contextlib.asynccontextmanager
async def running(runner: BusRunner) -> AsyncIterator[BusRunner]:
    task = asyncio.create_task(runner.run())
    try:
        yield runner
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def bus(service: FakeService, driver: FakeDriver, **options: Any) -> BusRunner:
    options.setdefault("backoff_base_s", 0.0)  # back off from the poll interval: these tests run for seconds
    return BusRunner("b1", driver, {m: m for m in service.catalog.meters}, service, **options)  # type: ignore[arg-type]


async def test_polls_are_staggered_over_the_interval() -> None:
    service = FakeService({f"m{i}": 0.4 for i in range(4)})
    driver = FakeDriver()
    async with running(bus(service, driver)):
        await async_wait_until(lambda: len(driver.calls) >= 8, timeout=5, what="two rounds of polls")
    first = [driver.calls_of(f"m{i}")[0] for i in range(4)]
    gaps = [b - a for a, b in itertools.pairwise(first)]
    assert all(0.07 <= g <= 0.2 for g in gaps), gaps  # 0.1 s apart, not all at once
    second = driver.calls_of("m0")[1] - driver.calls_of("m0")[0]
    assert second == pytest.approx(0.4, abs=0.08)


async def test_a_dead_meter_backs_off_and_the_others_keep_their_rate() -> None:
    service = FakeService({f"m{i}": 0.1 for i in range(4)})
    driver = FakeDriver(timeout=0.05)
    driver.dead.add("m3")
    runner = bus(service, driver, backoff_cap_s=0.8)
    async with running(runner):
        start = time.monotonic()
        await async_wait_until(lambda: time.monotonic() - start > 2.0, timeout=5, what="two seconds")
        tries = driver.calls_of("m3")
        health = runner.meter_health("m3")
        stats = runner.stats()
    gaps = [b - a for a, b in itertools.pairwise(tries)]
    # after the k-th failure: 0.1 * 2 ** (k - 1) (capped at 0.8), plus the timeout itself
    for k, gap in enumerate(gaps, start=1):
        assert gap == pytest.approx(min(0.1 * 2 ** (k - 1), 0.8) + 0.05, abs=0.06), gaps
    assert len(tries) <= 6
    for healthy in ("m0", "m1", "m2"):
        assert service.polls_of(healthy) >= 17  # 2 s at 0.1 s, minus the few timeouts of m3
    assert health["state"] == "offline" and health["consecutive_failures"] == len(tries)
    assert stats["offline"] == 1 and stats["online"] == 3 and stats["state"] == "up"
    assert stats["failures"] == len(tries) and stats["skipped"] == 0


async def test_retries_of_failing_meters_stay_within_the_failure_budget() -> None:
    service = FakeService({f"m{i}": 0.05 for i in range(6)})
    driver = FakeDriver(timeout=0.1)
    dead = {"m1", "m2", "m3", "m4"}
    driver.dead.update(dead)
    runner = bus(service, driver, failure_budget=0.02)  # 1.2 s of failed polls per minute
    async with running(runner):
        start = time.monotonic()
        await async_wait_until(lambda: time.monotonic() - start > 2.0, timeout=5, what="two seconds")
        stats = runner.stats()
    failed_time = sum(0.1 for t, m in driver.calls if m in dead)
    assert failed_time <= 1.2 + 0.1 + 1e-9  # the first try of each dead meter, then the budget
    assert stats["deferred_retries"] > 0 and stats["failing_share"] <= 0.025
    for healthy in ("m0", "m5"):
        assert service.polls_of(healthy) >= 20  # 40 slots in 2 s, minus the time the budget allows


async def test_exception_replies_count_as_failures_but_not_against_the_bus() -> None:
    service = FakeService({f"m{i}": 0.05 for i in range(6)})
    driver = FakeDriver()
    driver.refusing.update({"m0", "m1", "m2", "m3", "m4"})
    runner = bus(service, driver)
    async with running(runner):
        await async_wait_until(lambda: runner.counters.failures >= 15, timeout=5, what="failures")
        assert runner.stats()["state"] == "up"  # the meters answer: the bus works
        assert runner.meter_health("m0")["state"] == "offline"
        await async_wait_until(lambda: service.polls_of("m5") >= 5, timeout=5, what="the healthy meter")


async def test_overload_skips_polls_instead_of_queueing_them_and_lag_stays_bounded() -> None:
    # 10 meters every 50 ms ask for 200 polls/s; the bus does about 50/s
    service = FakeService({f"m{i}": 0.05 for i in range(10)})
    driver = FakeDriver(latency=0.02)
    runner = bus(service, driver)
    async with running(runner):
        await async_wait_until(lambda: runner.counters.polls >= 60, timeout=10, what="polls")
        stats = runner.stats()
        lags = [stats["max_lag_s"]]
        await async_wait_until(lambda: runner.counters.polls >= 90, timeout=10, what="more polls")
        lags.append(runner.stats()["max_lag_s"])
    assert stats["overloaded"] and stats["skipped"] > stats["polls"]
    assert stats["demand_polls_per_s"] == pytest.approx(200)
    assert max(lags) < 0.5  # about 10 x 25 ms - 50 ms: a round of the bus, not a growing queue
    polls = [service.polls_of(f"m{i}") for i in range(10)]
    assert max(polls) - min(polls) <= 2  # round-robin: every meter gets its share


async def test_a_poll_is_skipped_while_the_previous_reading_is_being_recorded() -> None:
    service = FakeService({"m0": 0.05, "m1": 0.05})
    service.hold = asyncio.Event()  # the writer is stuck
    driver = FakeDriver()
    runner = bus(service, driver, max_pending=64)
    async with running(runner):
        await async_wait_until(lambda: runner.counters.skipped >= 10, timeout=5, what="skipped polls")
        assert len(driver.calls_of("m0")) == 1 and len(driver.calls_of("m1")) == 1  # nothing piled up
        assert runner.stats()["pending_readings"] == 2
        service.hold.set()
        await async_wait_until(lambda: service.polls_of("m0") >= 3, timeout=5, what="polls to resume")


async def test_the_bus_waits_for_the_writer_when_too_many_readings_are_pending() -> None:
    service = FakeService({f"m{i}": 0.02 for i in range(8)})
    service.hold = asyncio.Event()
    driver = FakeDriver()
    runner = bus(service, driver, max_pending=3)
    async with running(runner):
        await async_wait_until(lambda: runner.stats()["pending_readings"] == 3, timeout=5, what="3 pending")
        calls, since = len(driver.calls), time.monotonic()
        # a negative check: let a few poll intervals pass
        await async_wait_until(lambda: time.monotonic() - since > 0.2, timeout=5, what="10 intervals")
        assert len(driver.calls) == calls == 3  # no poll while the writer is behind
        service.hold.set()
        await async_wait_until(lambda: len(service.readings) >= 10, timeout=5, what="the bus to go on")
        assert runner.counters.skipped > 0  # the slots missed while waiting were counted, not made up


async def test_a_bus_that_goes_down_is_probed_and_comes_back_without_a_restart() -> None:
    service = FakeService({f"m{i}": 0.05 for i in range(5)})
    driver = FakeDriver()
    runner = bus(service, driver, bus_backoff_cap_s=0.5)
    async with running(runner):
        await async_wait_until(lambda: runner.counters.polls >= 10, timeout=5, what="first polls")
        driver.down = True
        await async_wait_until(lambda: runner.stats()["state"] == "down", timeout=5, what="the bus to go down")
        calls = len(driver.calls)
        await async_wait_until(lambda: runner.stats()["offline"] == 5, timeout=5, what="every meter offline")
        probes = len(driver.calls) - calls
        failures = runner.counters.failures
        assert probes < failures / 3  # most due polls failed without touching the bus
        assert runner.stats()["last_bus_error"]
        driver.down = False
        healed = time.monotonic()
        await async_wait_until(lambda: runner.stats()["online"] == 5, timeout=5, what="every meter back")
        assert time.monotonic() - healed < 1.5  # a bus probe (<= 0.5 s) plus one interval
        assert runner.stats()["state"] == "up"
    offline = {m for m, _, n in service.failures if n == 1}
    assert offline == {f"m{i}" for i in range(5)}  # the meters table was told, off the poll path


async def test_meters_that_stop_answering_together_mean_the_bus_is_down() -> None:
    service = FakeService({f"m{i}": 0.05 for i in range(8)})
    driver = FakeDriver(timeout=0.02)
    runner = bus(service, driver, bus_backoff_cap_s=0.3)
    async with running(runner):
        await async_wait_until(lambda: runner.counters.polls >= 8, timeout=5, what="first polls")
        driver.dead.update(service.catalog.meters)  # a cut cable: nobody answers
        await async_wait_until(lambda: runner.stats()["state"] == "down", timeout=5, what="the bus to go down")
        driver.dead.clear()
        await async_wait_until(lambda: runner.stats()["online"] == 8, timeout=5, what="every meter back")


async def test_the_first_backoff_is_never_shorter_than_the_minimum() -> None:
    service = FakeService({"m0": 0.05, "m1": 0.05})
    driver = FakeDriver(timeout=0.01)
    driver.dead.add("m1")
    runner = bus(service, driver, backoff_base_s=0.5)
    async with running(runner):
        await async_wait_until(lambda: len(driver.calls_of("m1")) >= 2, timeout=5, what="a second try")
    first, second = driver.calls_of("m1")[:2]
    assert second - first == pytest.approx(0.51, abs=0.05)


async def test_stale_meters_and_scheduler_totals() -> None:
    service = FakeService({"m0": 0.05, "m1": 0.05}, stale_after_s=0.3)
    driver = FakeDriver()
    driver.dead.add("m1")
    runner = bus(service, driver, backoff_cap_s=5)
    scheduler = Scheduler(service, [runner])  # type: ignore[arg-type]
    async with running(runner):
        await async_wait_until(lambda: runner.meter_health("m1")["stale"], timeout=5, what="m1 to be stale")
        assert not runner.meter_health("m0")["stale"]
        stats = scheduler.stats()
    assert stats["totals"]["stale"] == 1 and stats["totals"]["meters"] == 2
    assert set(stats["buses"]) == {"b1"} and stats["buses"]["b1"]["polls"] >= 1
    assert scheduler.meter_health("m0")["state"] == "online"  # type: ignore[index]
    assert scheduler.meter_health("nope") is None
