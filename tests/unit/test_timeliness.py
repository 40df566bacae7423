"""Reading timeliness per bus and site-local day (``DayTally``, ``TimelinessFlusher``) on a fake clock: a day with
gaps, a meter that joins mid-day and one that leaves, midnight in the site's zone (not UTC's), a restart in the
middle of a day, a write that fails, and the poller's hooks (a bus polled on a fake driver)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import sys
from collections.abc import Sequence
from zoneinfo import ZoneInfo

from gateway.service.polling.timeliness import DayRow, DayTally, ReadingDaysStore, TimelinessFlusher, day_of
from tests.fakes import FakeClock, FakeDriver
from tests.unit.test_polling import FakeService, bus, running

SHANGHAI = ZoneInfo("Asia/Shanghai")
MORNING = dt.datetime(2026, 11, 23, 1, tzinfo=dt.UTC)  # 09:00 in Shanghai (its day ends at 16:00 UTC)


def tally(meters: dict[str, float], *, at: dt.datetime = MORNING, zone: ZoneInfo = SHANGHAI,
          grace_s: float = 1.0) -> DayTally:
    day = DayTally("b1", zone, grace_s=grace_s)
    day.begin(meters.items(), 0.0, at)
    return day


def polled(day: DayTally, meter_id: str, *times: float) -> None:
    for at in times:
        day.ok(meter_id, at)


class MemoryStore(ReadingDaysStore):
    """Rows merged as the SQL store merges them (tested against it in tests/integration/test_reading_days.py);
    ``fail`` makes the next writes raise."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], dict[str, int]] = {}
        self.writes: list[list[DayRow]] = []
        self.fail = False

    async def add(self, rows: Sequence[DayRow], at: dt.datetime) -> None:
        if self.fail:
            raise OSError("database away")
        self.writes.append(list(rows))
        for r in rows:
            old = self.rows.get((r.bus_id, r.day))
            if old is None:
                self.rows[(r.bus_id, r.day)] = {"meters": r.meters, "read": r.read, "on_time": r.on_time,
                                                "polls_ok": r.polls_ok, "polls_failed": r.polls_failed}
                continue
            meters = max(old["meters"], r.meters)
            late = max(old["meters"] - old["on_time"], r.meters - r.on_time)
            old.update(meters=meters, read=max(old["read"], r.read), on_time=meters - late,
                       polls_ok=old["polls_ok"] + r.polls_ok, polls_failed=old["polls_failed"] + r.polls_failed)


def test_a_day_with_gaps() -> None:
    day = tally({"A": 60, "B": 60, "C": 60})  # late after 2 x 60 s + 1 s without a reading
    polled(day, "A", 10, 70)
    polled(day, "B", 20, 80)
    row = day.figures(110)
    assert (row.day, row.meters, row.read, row.on_time, row.polls_ok) == ("2026-11-23", 3, 2, 3, 4)  # C: not yet
    polled(day, "A", 300)  # a gap of 230 s: three polls missed
    polled(day, "B", 200, 260)  # a gap of 120 s: one poll missed, within the tolerance
    day.failed(140)
    day.failed(150)
    row = day.figures(300)
    assert (row.meters, row.read, row.on_time, row.polls_ok, row.polls_failed) == (3, 2, 1, 7, 2)
    assert day.meter("A", 300) == {"read": True, "longest_gap_s": 230.0, "allowed_gap_s": 121.0, "on_time": False}
    assert day.meter("B", 300)["on_time"] is True  # type: ignore[index]
    assert day.meter("C", 300) == {"read": False, "longest_gap_s": 300.0, "allowed_gap_s": 121.0,
                                   "on_time": False}  # a gap still open counts
    polled(day, "A", 360, 420)
    polled(day, "B", 320, 380)
    assert day.figures(421).on_time == 1  # a late meter stays late all day, however well it answers later


def test_one_failed_poll_retried_after_the_buss_backoff_is_tolerated() -> None:
    day = DayTally("b1", SHANGHAI, retry_s=10.0, grace_s=1.0)  # the bus retries a failed meter after 10 s
    day.begin([("A", 2.0), ("B", 60.0)], 0.0, MORNING)
    assert (day.allowed(2.0), day.allowed(60.0)) == (13.0, 121.0)  # 2 s + 10 s + 1 s; 2 x 60 s + 1 s
    polled(day, "A", 1, 3, 15, 17)  # one failure at 5 s, its retry at 15 s
    assert day.figures(17).on_time == 2
    polled(day, "B", 30)
    polled(day, "A", 40)  # two failures (retried after 10 s, then 20 s)
    assert day.figures(40).on_time == 1


def test_a_meter_that_joins_mid_day_is_counted_from_its_joining_and_one_that_leaves_keeps_its_day() -> None:
    day = tally({"A": 60})
    polled(day, "A", 30, 90, 150)
    day.join("N", 60, 3000)  # the hours before it was on the bus are not held against it
    polled(day, "N", 3050, 3110)
    polled(day, "A", 3010, 3070, 3130)  # (A was late: 150 -> 3010)
    row = day.figures(3111)
    assert (row.meters, row.read, row.on_time) == (2, 2, 1)
    day.leave("N", 3120)  # gone: its gap stops at its leaving, it still counts for the day
    assert (day.figures(9000).meters, day.figures(9000).read) == (2, 2)
    assert day.meter("N", 9000)["on_time"] is True  # type: ignore[index]
    day.join("N", 30, 9000)  # back (with a shorter interval): counted from now again
    assert day.meter("N", 9000) == {"read": True, "longest_gap_s": 60.0, "allowed_gap_s": 61.0, "on_time": True}
    assert day.figures(9062).on_time == 0  # N unread since it came back, for longer than 2 x 30 s + 1 s
    day.join("A", 60, 9062)  # joining again while on the bus changes nothing but the interval
    assert day.figures(9062).meters == 2


def test_midnight_is_the_sites_midnight() -> None:
    before = dt.datetime(2026, 11, 23, 15, 59, tzinfo=dt.UTC)  # 23:59 in Shanghai, but mid-day in UTC
    day = tally({"A": 20, "B": 20}, at=before)
    assert day.day_end == 60.0
    polled(day, "A", 10, 30, 50)
    polled(day, "B", 10)
    day.failed(55)
    day.leave("B", 20)  # left before midnight: not on the bus the next day
    polled(day, "A", 70)  # the first poll after midnight closes the day
    ended, today = day.rows(70)
    assert ended == DayRow("b1", "2026-11-23", 2, 2, 2, 4, 1, final=True)
    assert today == DayRow("b1", "2026-11-24", 1, 1, 1, 1, 0)
    assert day.meter("A", 70)["longest_gap_s"] == 10.0  # type: ignore[index]  # counted from midnight
    assert day.meter("B", 70) is None
    assert day.figures(70 + 41.5).on_time == 0  # A unread since 70 s: late 41 s later (2 x 20 s + 1 s)
    # the same wall time is mid-afternoon in New York: no new day there
    other = tally({"A": 20}, at=before, zone=ZoneInfo("America/New_York"))
    polled(other, "A", 70)
    assert [row.day for row in other.rows(70)] == ["2026-11-23"]


def test_meters_joining_and_leaving_after_midnight_belong_to_the_new_day() -> None:
    day = tally({"A": 20, "B": 20, "C": 20}, at=dt.datetime(2026, 11, 23, 15, 59, tzinfo=dt.UTC))  # 23:59 there
    day.leave("A", 30)  # left before midnight: gone the next day, and its cell with it
    day.leave("C", 65)  # midnight passed at 60 s, nothing polled since: the day ends first
    day.join("N", 20, 70)
    polled(day, "B", 75)
    ended, today = day.rows(75)
    assert (ended.day, ended.meters, ended.final) == ("2026-11-23", 3, True)
    assert (today.day, today.meters, today.read) == ("2026-11-24", 3, 1)  # B, C (left at 65 s) and N
    assert day.meter("A", 75) is None and day.meter("C", 75)["longest_gap_s"] == 5.0  # type: ignore[index]
    assert day.meter("N", 75)["longest_gap_s"] == 5.0  # type: ignore[index]  # counted from its joining


def test_a_day_of_the_site_can_be_23_or_25_hours_long() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    assert day_of(dt.datetime(2026, 3, 29, 1, tzinfo=dt.UTC), berlin) == (
        "2026-03-29", dt.datetime(2026, 3, 29, 22, tzinfo=dt.UTC))  # clocks go forward: 23 hours
    day = tally({"A": 60}, at=dt.datetime(2026, 10, 24, 22, tzinfo=dt.UTC), zone=berlin)  # 25 October 00:00
    assert day.day_end == 25 * 3600  # clocks go back: 25 hours
    polled(day, "A", 25 * 3600 + 1)
    assert [(row.day, row.final) for row in day.rows(25 * 3600 + 1)] == [("2026-10-25", True),
                                                                          ("2026-10-26", False)]


def test_days_without_any_poll_end_too() -> None:
    day = tally({"A": 60})
    polled(day, "A", 5)
    day.sync(15 * 3600 + 10, MORNING + dt.timedelta(hours=15, seconds=10))  # 16:00:10 UTC: midnight there
    rows = day.rows(15 * 3600 + 10)
    assert [(r.day, r.final, r.on_time, r.polls_ok) for r in rows] == [
        ("2026-11-23", True, 0, 1), ("2026-11-24", False, 1, 0)]  # A unread for hours: late; the new day's fine
    day.written(rows)
    assert [r.day for r in day.rows(15 * 3600 + 20)] == ["2026-11-24"]  # an ended day is written once


async def test_the_flusher_writes_every_minute_at_midnight_and_once_more_at_the_stop() -> None:
    clock = FakeClock(dt.datetime(2026, 11, 23, 15, 58, 30, tzinfo=dt.UTC))  # 23:58:30 in Shanghai
    day = DayTally("b1", SHANGHAI, grace_s=1.0)
    day.begin([("A", 30.0)], clock.monotonic(), clock.now())
    store = MemoryStore()
    flusher = TimelinessFlusher(lambda: [day], store, clock)
    task = asyncio.create_task(flusher.run())
    day.ok("A", 10)
    await clock.advance(60)
    assert [(r.day, r.polls_ok) for r in store.writes[0]] == [("2026-11-23", 1)]
    day.ok("A", 70)  # (just before midnight, at 90 s)
    day.failed(80)
    await clock.advance(30.5)  # the write after midnight is not a minute later
    assert [(r.day, r.final, r.polls_ok, r.polls_failed) for r in store.writes[1]] == [
        ("2026-11-23", True, 1, 1), ("2026-11-24", False, 0, 0)]
    day.ok("A", 100)
    store.fail = True
    await clock.advance(60)  # a write fails: its polls wait for the next one
    assert flusher.errors == 1 and len(store.writes) == 2
    store.fail = False
    day.ok("A", 160)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert await flusher.flush() == 1  # the stop
    assert store.rows[("b1", "2026-11-23")] == {"meters": 1, "read": 1, "on_time": 1, "polls_ok": 2,
                                                "polls_failed": 1}
    assert store.rows[("b1", "2026-11-24")] == {"meters": 1, "read": 1, "on_time": 1, "polls_ok": 2,
                                                "polls_failed": 0}


async def test_a_restart_mid_day_adds_to_the_morning() -> None:
    store = MemoryStore()
    morning = tally({"A": 60, "B": 60, "C": 60})
    polled(morning, "A", *range(10, 400, 60))  # 7 polls, on time
    polled(morning, "B", 20, 80, 400)  # late once
    clock = FakeClock(MORNING)
    clock.seconds = 401.0
    flusher = TimelinessFlusher(lambda: [morning], store, clock)
    await flusher.flush()  # the stop (C never read: late too)
    assert store.rows[("b1", "2026-11-23")] == {"meters": 3, "read": 2, "on_time": 1, "polls_ok": 10,
                                                "polls_failed": 0}
    afternoon = tally({"A": 60, "B": 60, "C": 60}, at=MORNING + dt.timedelta(hours=1))  # a new run, from scratch
    polled(afternoon, "A", 30)
    clock = FakeClock(MORNING + dt.timedelta(hours=1))
    clock.seconds = 31.0
    await TimelinessFlusher(lambda: [afternoon], store, clock).flush()
    assert store.rows[("b1", "2026-11-23")] == {"meters": 3, "read": 2, "on_time": 1, "polls_ok": 11,
                                                "polls_failed": 0}  # the morning's read and late meters kept


def test_bytes_per_meter() -> None:
    """Memory of 100,000 meters on one bus (the gateway's figure, with its ids made elsewhere)."""
    ids = [f"M-{i:06d}" for i in range(100_000)]
    day = DayTally("b1", SHANGHAI)
    day.begin(((m, 60.0) for m in ids), 0.0, MORNING)
    held = (sys.getsizeof(day._index) + sum(
        sys.getsizeof(cells) for cells in (day._last, day._gap, day._allowed, day._flags)))
    per_meter = held / len(ids)
    print(f"reading timeliness: {per_meter:.0f} bytes per meter")
    assert per_meter < 80


async def test_the_poller_counts_its_polls() -> None:
    clock = FakeClock(MORNING)
    service = FakeService({"A": 1.0, "B": 1.0})
    driver = FakeDriver(clock)
    poller = bus(service, driver, clock)
    poller.timeliness = DayTally("b1", SHANGHAI, grace_s=0.05)
    async with running(poller):
        await clock.advance(3.5)
        driver.dead.add("B")
        await clock.advance(5)
        poller.remove("A")
        poller.add("C", "C", 1.0)
        await clock.advance(2)
    row = poller.timeliness.figures(clock.monotonic())
    assert (row.meters, row.read, row.on_time) == (3, 3, 2)  # B stopped answering: late
    assert row.polls_ok == poller.counters.polls == len(service.readings) > 0
    assert row.polls_failed == poller.counters.failures > 0
