"""Meters added, moved and removed while the scheduler runs, on a fake clock with fake drivers and a fake service
(no sockets, no database, no real time): an added meter is polled within its interval, even by a bus that had
none or was asleep until a far due time; a removed one is never read again; a moved one is read at its new place;
stale entries of the poll heap are skipped; a relay command of a meter that left its bus is never sent there."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import itertools
from collections.abc import AsyncIterator
from typing import Any

import pytest

from drivers.base import Reading
from gateway.domain.messages import CommandQueued
from gateway.domain.policy import SitePolicy
from gateway.domain.relay import Action, Command, State
from gateway.service.catalog import MeterSpec
from gateway.service.polling.health import MeterHealth
from gateway.service.polling.schedule import PollSchedule
from gateway.service.scheduler import BusSetup, Scheduler
from tests.fakes import FakeClock, FakeDriver


def target(spec: MeterSpec) -> str:
    """The fake driver's description of a meter: its id and place (what ``FakeDriver.calls`` records)."""
    return f"{spec.id}@{spec.bus_id}:{spec.unit_id}"


def spec(meter_id: str, bus_id: str = "b1", *, unit_id: int = 1, interval: float = 1.0) -> MeterSpec:
    return MeterSpec(meter_id, "A-1", bus_id, poll_interval_s=interval, unit_id=unit_id)


@dataclasses.dataclass
class FakeCatalog:
    meters: dict[str, MeterSpec]
    site: SitePolicy = dataclasses.field(default_factory=SitePolicy)
    stale_after_s: float = 300.0


class FakeCommands:
    """The commands table as the relay runner uses it: a state per command id. ``gate`` (when not None) holds
    every state read (the runner's last check before it sends) until it is set."""

    def __init__(self) -> None:
        self.states: dict[str, str] = {}
        self.gate: asyncio.Event | None = None
        self.reading = asyncio.Event()  # set while a state read waits at the gate

    async def active(self) -> list[Any]:
        return []

    async def recent_trips(self, since: dt.datetime) -> list[dt.datetime]:
        return []

    async def state(self, command_id: str) -> str | None:
        if self.gate is not None:
            self.reading.set()
            await self.gate.wait()
        return self.states.get(command_id)

    async def save(self, old: Command, new: Command, now: dt.datetime) -> bool:
        if self.states.get(old.id) != old.state.value:
            return False
        self.states[old.id] = new.state.value
        return True


class FakeMeters:
    async def update(self, meter_id: str, values: dict[str, object]) -> None:
        return None


class FakeUow:
    def __init__(self, commands: FakeCommands) -> None:
        self.commands, self.meters = commands, FakeMeters()

    async def __aenter__(self) -> FakeUow:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None

    async def commit(self) -> None:
        return None


class FakeService:
    """What the scheduler uses of the service: the catalog, readings, failures, the commands table."""

    def __init__(self, specs: list[MeterSpec]) -> None:
        self.catalog = FakeCatalog({s.id: s for s in specs})
        self.commands = FakeCommands()
        self.readings: list[Reading] = []

    def uow(self, *, readonly: bool = False) -> FakeUow:
        return FakeUow(self.commands)

    async def submit_reading(self, reading: Reading) -> list[Any]:
        self.readings.append(reading)
        return []

    async def record_failure(self, meter_id: str, error: str, *, offline_after: int = 3) -> None:
        return None

    async def evaluate_accounts(self) -> None:
        return None

    def provision(self, meter: MeterSpec) -> MeterSpec:
        """What the provisioning service does before it tells the scheduler: the catalog knows the meter."""
        self.catalog.meters[meter.id] = meter
        return meter


@dataclasses.dataclass
class Rig:
    clock: FakeClock
    service: FakeService
    scheduler: Scheduler
    drivers: dict[str, FakeDriver]

    def reads(self, meter_id: str, bus_id: str = "b1", *, what: str = "read") -> list[tuple[float, str]]:
        """(time, place) of each exchange of ``what`` with the meter on bus ``bus_id``."""
        return [(t, m) for t, w, m in self.drivers[bus_id].calls if w == what and m.split("@")[0] == meter_id]

    def command(self, meter_id: str, *, at: float = 0.0) -> Command:
        """A queued operator reconnect of the meter (sent whatever its health), stored and announced."""
        now = self.clock.now()
        command = Command(f"c-{meter_id}-{at}", meter_id, Action.CLOSE, "operator", State.QUEUED, now,
                          now + dt.timedelta(minutes=10), now)
        self.service.commands.states[command.id] = "queued"
        self.scheduler.route(CommandQueued(command))
        return command


@contextlib.asynccontextmanager
async def rig(buses: dict[str, list[MeterSpec]]) -> AsyncIterator[Rig]:
    clock = FakeClock()
    service = FakeService([s for specs in buses.values() for s in specs])
    drivers = {bus_id: FakeDriver(clock) for bus_id in buses}
    setups = [BusSetup(bus_id, drivers[bus_id], {s.id: target(s) for s in specs}, make_target=target)
              for bus_id, specs in buses.items()]
    scheduler = Scheduler(service, setups, clock=clock, breaker={"backoff_base_s": 0.0})
    async with scheduler:
        yield Rig(clock, service, scheduler, drivers)


async def test_an_added_meter_is_polled_within_its_interval_and_a_removed_one_never_again() -> None:
    async with rig({"b1": [spec("m0"), spec("m1", unit_id=2)]}) as r:
        await r.clock.advance(2.5)
        r.scheduler.add_meter(r.service.provision(spec("m2", unit_id=3)))
        r.scheduler.add_meter(r.service.provision(spec("m3", unit_id=4)))
        poller = r.scheduler.buses[0].poller
        assert poller.breaker.meters == 4
        await r.clock.advance(0.95)
        first = {m: [t for t, _ in r.reads(m)] for m in ("m2", "m3")}
        assert all(2.5 <= t[0] < 3.5 for t in first.values()), first
        assert first["m2"][0] != first["m3"][0]  # meters added together are spread over the interval
        removed_at = r.clock.seconds
        r.scheduler.remove_meter("m1")
        assert poller.breaker.meters == 3 and r.scheduler.meter_health("m1") is None
        await r.clock.advance(5.0)
        stats = r.scheduler.stats()
    assert [t for t, _ in r.reads("m1") if t > removed_at] == []
    assert len(r.reads("m2")) >= 5 and len(r.reads("m0")) >= 8
    for meter_id in ("m0", "m2", "m3"):  # one poll per interval, none doubled by a change
        gaps = [b - a for a, b in itertools.pairwise(t for t, _ in r.reads(meter_id))]
        assert gaps == pytest.approx([1.0] * len(gaps))
    assert stats["totals"]["meters"] == 3 and stats["buses"]["b1"]["demand_polls_per_s"] == pytest.approx(3.0)


async def test_a_bus_with_no_meters_or_asleep_until_a_far_poll_wakes_for_an_added_meter() -> None:
    async with rig({"empty": [], "slow": [spec("s0", "slow", interval=1000.0)]}) as r:
        await r.clock.advance(30.0)
        assert r.drivers["empty"].calls == [] and len(r.reads("s0", "slow")) == 1  # at 0, next at 1000
        r.scheduler.add_meter(r.service.provision(spec("e0", "empty", interval=2.0)))
        r.scheduler.add_meter(r.service.provision(spec("s1", "slow", unit_id=2, interval=2.0)))
        await r.clock.advance(2.0)
        assert r.reads("e0", "empty") and r.reads("s1", "slow")
        assert r.reads("e0", "empty")[0][0] < 32.0 and r.reads("s1", "slow")[0][0] < 32.0
        assert len(r.reads("s0", "slow")) == 1  # the far poll keeps its time
        assert r.scheduler.meter_health("e0")["state"] == "online"  # type: ignore[index]


async def test_a_meter_added_before_the_start_is_polled() -> None:
    clock = FakeClock()
    service = FakeService([])
    driver = FakeDriver(clock)
    scheduler = Scheduler(service, [BusSetup("b1", driver, {}, make_target=target)], clock=clock)
    scheduler.add_meter(service.provision(spec("m0", interval=5.0)))
    scheduler.add_meter(spec("other", "not-ours"))  # a bus of another instance: not ours
    async with scheduler:
        await clock.advance(0.1)
        assert driver.calls_of("m0@b1:1") == [0.0]
    assert scheduler.meter_health("other") is None and "other" not in {m for _, _, m in driver.calls}


async def test_a_meter_is_read_now_on_request_whether_polled_here_yet_or_not() -> None:
    """What provisioning asks for a final or initial reading nobody gave."""
    async with rig({"b1": [spec("m0")]}) as r:
        reading = await r.scheduler.read_now(spec("new", unit_id=9))
        assert reading.meter_id == "new@b1:9" and r.drivers["b1"].calls[-1] == (0.0, "read", "new@b1:9")
        with pytest.raises(LookupError):
            await r.scheduler.read_now(spec("x", "not-ours"))


async def test_a_moved_meter_is_read_at_its_new_place_and_keeps_its_health_on_the_same_bus() -> None:
    async with rig({"b1": [spec("m0"), spec("m1", unit_id=2)], "b2": [spec("x0", "b2")]}) as r:
        await r.clock.advance(2.5)
        polls = r.scheduler.meter_health("m0")["polls"]  # type: ignore[index]
        moved_at = r.clock.seconds
        r.scheduler.move_meter(r.service.provision(spec("m0", unit_id=7)))  # re-addressed on its bus
        await r.clock.advance(3.0)
        assert {p for t, p in r.reads("m0") if t > moved_at} == {"m0@b1:7"}
        assert r.scheduler.meter_health("m0")["polls"] >= polls + 3  # type: ignore[index]
        moved_at = r.clock.seconds
        r.scheduler.move_meter(r.service.provision(spec("m0", "b2", unit_id=3)))  # to another bus of ours
        await r.clock.advance(3.0)
        assert [t for t, _ in r.reads("m0") if t > moved_at] == []
        assert {p for _, p in r.reads("m0", "b2")} == {"m0@b2:3"} and len(r.reads("m0", "b2")) >= 3
        assert r.scheduler.meter_health("m0")["polls"] == len(r.reads("m0", "b2"))  # type: ignore[index]
        assert r.scheduler.stats()["buses"]["b1"]["meters"] == 1
        r.scheduler.move_meter(r.service.provision(spec("m1", "elsewhere")))  # to another instance's bus
        gone_at = r.clock.seconds
        await r.clock.advance(3.0)
    assert [t for t, _ in r.reads("m1") if t > gone_at] == [] and r.scheduler.meter_health("m1") is None


async def test_stale_heap_entries_are_skipped_and_do_not_pile_up() -> None:
    async with rig({"b1": [spec("m0")]}) as r:
        await r.clock.advance(0.5)  # m0 read at 0, next due at 1.0
        r.scheduler.remove_meter("m0")
        r.scheduler.add_meter(r.service.provision(spec("m0")))  # back at once: its entry at 1.0 is stale
        await r.clock.advance(3.2)
        assert [t for t, _ in r.reads("m0")] == pytest.approx([0.0, 0.5, 1.5, 2.5, 3.5])
        poller = r.scheduler.buses[0].poller
        for unit_id in range(2, 500):  # many changes between two polls: the heap stays small
            r.scheduler.move_meter(r.service.provision(spec("m0", unit_id=unit_id)))
            assert len(poller.schedule) <= 2 * len(poller.meters) + 65
        await r.clock.advance(1.0)
        assert r.reads("m0")[-1][1] == "m0@b1:499"


def test_the_schedule_skips_entries_of_meters_that_left_or_were_placed_again() -> None:
    meters = {m: MeterHealth(m, 10.0) for m in ("a", "b", "c")}
    schedule = PollSchedule(meters)
    schedule.stagger(list(meters.values()), 0.0)
    assert schedule.next_due() == (0.0, "a")
    del meters["a"]  # left
    schedule.at(meters["b"], 20.0)  # placed again later: its entry at 3.33 is stale
    assert schedule.next_due() == pytest.approx((20 / 3, "c"))
    assert schedule.pop() == "c"
    schedule.at(meters["c"], 30.0)
    assert schedule.next_due() == (20.0, "b")
    meters.clear()
    assert schedule.next_due() is None and len(schedule) == 0


async def test_a_removed_meters_commands_are_never_sent_queued_or_in_their_last_check() -> None:
    """The commands table still says `queued` (the runner's check read it before the service cancelled them):
    the runner itself must not send a command of a meter that left the bus."""
    async with rig({"b1": [spec("m0"), spec("m1", unit_id=2), spec("m2", unit_id=3)]}) as r:
        await r.clock.advance(1.5)
        r.service.commands.gate = gate = asyncio.Event()
        r.command("m0")  # its step starts: held in its last check before the wire
        await r.clock.settle()
        assert r.service.commands.reading.is_set()
        r.command("m1")  # waits in the runner's queue behind it
        runner = r.scheduler.buses[0].runner
        assert {c.meter_id for c in runner.active.values()} == {"m0", "m1"}
        r.scheduler.remove_meter("m0")
        r.scheduler.remove_meter("m1")
        assert runner.active == {}
        r.scheduler.route(CommandQueued(r.command("m1", at=1)))  # a late message for a removed meter: ignored
        gate.set()
        await r.clock.advance(1.0)
        r.command("m2")  # the runner still works for the meters that stayed
        await r.clock.advance(1.0)
    assert r.reads("m0", what="set_relay") == [] and r.reads("m1", what="set_relay") == []
    assert len(r.reads("m2", what="set_relay")) == 1 and runner.active.keys() <= {"c-m2-0.0"}


async def test_a_moved_meters_commands_follow_it_to_its_new_bus() -> None:
    async with rig({"b1": [spec("m0"), spec("m1", unit_id=2)], "b2": [spec("x0", "b2")]}) as r:
        await r.clock.advance(1.5)
        r.service.commands.gate = gate = asyncio.Event()
        r.command("m0")  # in its last check on b1
        await r.clock.settle()
        r.command("m1")  # queued on b1
        r.scheduler.move_meter(r.service.provision(spec("m0", "b2", unit_id=5)))
        r.scheduler.move_meter(r.service.provision(spec("m1", "b2", unit_id=6)))
        assert r.scheduler.buses[0].runner.active == {}
        gate.set()
        await r.clock.advance(3.0)
    assert r.reads("m0", what="set_relay") == [] and r.reads("m1", what="set_relay") == []
    assert [p for _, p in r.reads("m0", "b2", what="set_relay")] == ["m0@b2:5"]
    assert [p for _, p in r.reads("m1", "b2", what="set_relay")] == ["m1@b2:6"]
