"""Reading timeliness (抄表成功率) per bus and site-local day, counted by the bus's poller: which meters were read
that day, which were never without a successful reading for longer than allowed, and the polls that succeeded or
failed. Readings that change nothing are not stored, so the readings table cannot give these figures.

``DayTally`` is one bus's bookkeeping, pure and with the time passed in: O(1) per poll (a dict lookup and a few
array cells), a few tens of bytes per meter. ``TimelinessFlusher`` hands each bus's row of the day to a
``ReadingDaysStore`` every minute, at the day's end and at shutdown.

The rules (docs/polling.md): a meter's gap without a successful poll is counted from the latest of the day's
start (the site's midnight), its joining the bus and the gateway's start; it is late once a gap (or the gap still
open) grew longer than ``allowed(interval)``: one failed poll, retried after the bus's backoff, is tolerated,
two are not; it stays late that day. Polls are
written as increments; the other figures are merged with the stored row (``ReadingDaysStore.add``).
"""

from __future__ import annotations

import abc
import asyncio
import datetime as dt
import logging
from array import array
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from gateway.service.clock import Clock

__all__ = ["DayRow", "DayTally", "ReadingDaysStore", "TimelinessFlusher", "day_of"]

log = logging.getLogger(__name__)

FACTOR = 2.0  # a meter is late after this many poll intervals without a successful reading (plus the grace)
FLUSH_EVERY_S = 60.0
_READ, _LATE, _LEFT = 1, 2, 4  # a meter's flags


def day_of(wall: dt.datetime, zone: ZoneInfo) -> tuple[str, dt.datetime]:
    """The site-local day ``wall`` falls in (YYYY-MM-DD) and the day's end (the next local midnight, in UTC)."""
    day = wall.astimezone(zone).date()
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(0), tzinfo=zone).astimezone(dt.UTC)
    return day.isoformat(), end


@dataclass(frozen=True, slots=True)
class DayRow:
    """One bus's figures of one day: ``meters`` on the bus that day, ``read`` at least once, ``on_time`` never
    late; ``polls_ok`` and ``polls_failed`` are the polls since the row was last written (increments)."""

    bus_id: str
    day: str
    meters: int
    read: int
    on_time: int
    polls_ok: int
    polls_failed: int
    final: bool = False  # the day has ended (these figures no longer change)


class ReadingDaysStore(abc.ABC):
    """The port: where the rows go (``gateway.adapters.reading_days_rows``)."""

    @abc.abstractmethod
    async def add(self, rows: Sequence[DayRow], at: dt.datetime) -> None:
        """Merge ``rows`` into the stored ones, in one transaction: polls added; ``meters`` and ``read`` the
        larger of stored and given; late meters (``meters - on_time``) the larger of stored and given.

        Within one run of a bus every figure only grows (a late meter stays late), so writing again is harmless.
        After a restart in the middle of a day the new run knows nothing of the morning's meters: the merge keeps
        the morning's figures unless the afternoon's are larger, so ``read`` and ``meters`` are lower bounds and
        ``on_time`` an upper bound, exact when the same meters stay on the bus and a meter late before the
        restart is late after it too (docs/polling.md, "A restart in the middle of a day")."""


class _Day:
    """The polls of one day of one bus already written (and once it ended, all of them, and its figures)."""

    __slots__ = ("day", "ok", "failed", "ok_sent", "failed_sent", "final")

    def __init__(self, day: str) -> None:
        self.day, self.ok, self.failed, self.ok_sent, self.failed_sent = day, 0, 0, 0, 0
        self.final: DayRow | None = None  # the day's last figures, once it ended


class DayTally:
    """One bus's reading timeliness for the current site-local day.

    Times are the clock's monotonic seconds; the day's end is placed on that clock from wall time (``begin``,
    ``sync``: each flush places it again, so a step of the wall clock is followed within a minute).

    Args:
        bus_id: the bus.
        zone: the site's time zone (its days).
        factor: a meter is late after ``factor`` x its poll interval without a successful reading...
        retry_s: ...or its interval + this, if longer (the bus's first backoff after a failure)...
        grace_s: ...+ this (what one poll of the bus may take: its timeout, times its tries).
    """

    def __init__(self, bus_id: str, zone: ZoneInfo, *, factor: float = FACTOR, retry_s: float = 0.0,
                 grace_s: float = 0.0) -> None:
        self.bus_id, self.zone = bus_id, zone
        self.factor, self.retry_s, self.grace_s = factor, retry_s, grace_s
        self._index: dict[str, int] = {}  # meter id -> its cell in the arrays (in the order they came)
        self._last = array("d")  # the last successful poll (or when its count started)
        self._gap = array("d")  # its longest closed gap today
        self._allowed = array("d")
        self._flags = bytearray()
        self._today = _Day("")
        self.polls_ok = self.polls_failed = 0  # today's
        self._ended: list[_Day] = []  # ended days not written yet
        self._end_wall = dt.datetime.min.replace(tzinfo=dt.UTC)
        self.day_end = 0.0  # the day's end on the monotonic clock

    # --- the bus's meters -------------------------------------------------------------------------------------
    def begin(self, meters: Iterable[tuple[str, float]], now: float, wall: dt.datetime) -> None:
        """Start counting (the gateway's start): ``meters`` as (meter id, poll interval), gaps counted from now."""
        for cells in (self._last, self._gap, self._allowed):
            del cells[:]
        self._index.clear()
        self._flags.clear()
        self._ended.clear()
        day, self._end_wall = day_of(wall, self.zone)
        self._today = _Day(day)
        self.polls_ok = self.polls_failed = 0
        self.day_end = now + (self._end_wall - wall).total_seconds()
        for meter_id, interval in meters:
            self.join(meter_id, interval, now)

    def join(self, meter_id: str, interval: float, now: float) -> None:
        """A meter joins the bus (or its interval changes): its gap is counted from now if it was not on it."""
        if now >= self.day_end:
            self._roll(now)
        i = self._index.get(meter_id)
        if i is None:
            self._index[meter_id] = len(self._index)
            self._last.append(now)
            self._gap.append(0.0)
            self._allowed.append(self.allowed(interval))
            self._flags.append(0)
            return
        self._allowed[i] = self.allowed(interval)
        if self._flags[i] & _LEFT:  # back on the bus: the time it was away is not held against it
            self._flags[i] &= ~_LEFT
            self._last[i] = now

    def allowed(self, interval: float) -> float:
        """The longest a meter polled every ``interval`` may go without a successful reading and be on time."""
        return max(interval * self.factor, interval + self.retry_s) + self.grace_s

    def leave(self, meter_id: str, now: float) -> None:
        """A meter leaves the bus: it keeps its figures of the day, its open gap ends here."""
        if now >= self.day_end:
            self._roll(now)
        i = self._index.get(meter_id)
        if i is None or self._flags[i] & _LEFT:
            return
        self._close(i, now)
        self._flags[i] |= _LEFT

    # --- the hot path -------------------------------------------------------------------------------------
    def ok(self, meter_id: str, now: float) -> None:
        """A poll of ``meter_id`` returned a reading at ``now``."""
        if now >= self.day_end:
            self._roll(now)
        i = self._index.get(meter_id)
        if i is None:
            return
        last = self._last
        gap = now - last[i]
        if gap > self._gap[i]:
            self._gap[i] = gap
            if gap > self._allowed[i]:
                self._flags[i] |= _LATE
        last[i] = now
        self._flags[i] |= _READ
        self.polls_ok += 1

    def failed(self, now: float) -> None:
        """A poll of a meter of the bus failed (or could not be made: the bus is down)."""
        if now >= self.day_end:
            self._roll(now)
        self.polls_failed += 1

    # --- the day ------------------------------------------------------------------------------------------
    def _close(self, i: int, at: float) -> None:
        gap = at - self._last[i]
        if gap > self._gap[i]:
            self._gap[i] = gap
            if gap > self._allowed[i]:
                self._flags[i] |= _LATE

    def _roll(self, now: float) -> None:
        """The day ended (once per day that ended by ``now``): its figures are final; the meters still on the bus
        start the next day with nothing, counted from its midnight."""
        while now >= self.day_end:
            end = self.day_end
            today = self._today
            today.ok, today.failed, today.final = self.polls_ok, self.polls_failed, self.figures(end, final=True)
            self.polls_ok = self.polls_failed = 0
            self._ended.append(today)
            ids = list(self._index)
            keep = [i for i in range(len(ids)) if not self._flags[i] & _LEFT]
            self._index = {ids[i]: n for n, i in enumerate(keep)}
            self._allowed = array("d", (self._allowed[i] for i in keep))
            self._last = array("d", [end]) * len(keep)
            self._gap = array("d", [0.0]) * len(keep)
            self._flags = bytearray(len(keep))
            day, end_wall = day_of(self._end_wall, self.zone)
            self.day_end = end + (end_wall - self._end_wall).total_seconds()
            self._end_wall = end_wall
            self._today = _Day(day)

    def sync(self, now: float, wall: dt.datetime) -> None:
        """Place the day's end again from wall time (the flusher, every minute): a day that ended by the wall
        clock ends now."""
        day, end_wall = day_of(wall, self.zone)
        if wall >= self._end_wall:
            self.day_end = now
            self._roll(now)
            if self._today.day != day:  # the wall clock jumped days ahead: follow it
                self._today.day, self._end_wall = day, end_wall
        self.day_end = now + (self._end_wall - wall).total_seconds()

    def figures(self, now: float, *, final: bool = False) -> DayRow:
        """The day's figures so far (a gap still open counts up to ``now``); polls since the last write."""
        meters = len(self._index)
        read = late = 0
        last, allowed, flags = self._last, self._allowed, self._flags
        for i in range(meters):
            flag = flags[i]
            read += flag & _READ
            if flag & _LATE or (not flag & _LEFT and now - last[i] > allowed[i]):
                late += 1
        today = self._today
        return DayRow(self.bus_id, today.day, meters, read, meters - late, self.polls_ok - today.ok_sent,
                      self.polls_failed - today.failed_sent, final)

    def meter(self, meter_id: str, now: float) -> dict[str, float | bool] | None:
        """One meter's figures of the day (None if it was not on the bus today)."""
        i = self._index.get(meter_id)
        if i is None:
            return None
        open_gap = 0.0 if self._flags[i] & _LEFT else now - self._last[i]
        return {"read": bool(self._flags[i] & _READ), "longest_gap_s": round(max(self._gap[i], open_gap), 3),
                "allowed_gap_s": self._allowed[i],
                "on_time": not (self._flags[i] & _LATE or open_gap > self._allowed[i])}

    # --- writing ------------------------------------------------------------------------------------------
    def rows(self, now: float) -> list[DayRow]:
        """The rows to write: the ended days not written yet, and today's so far."""
        return [self._unsent(day) for day in self._ended] + [self.figures(now)]

    @staticmethod
    def _unsent(day: _Day) -> DayRow:
        row = day.final
        assert row is not None
        return DayRow(row.bus_id, row.day, row.meters, row.read, row.on_time, day.ok - day.ok_sent,
                      day.failed - day.failed_sent, True)

    def written(self, rows: Iterable[DayRow]) -> None:
        """``rows`` (from ``rows``) are stored: their polls are not written again; ended days are forgotten."""
        days = {day.day: day for day in self._ended} | {self._today.day: self._today}
        for row in rows:
            day = days.get(row.day)
            if day is not None and row.bus_id == self.bus_id:
                day.ok_sent += row.polls_ok
                day.failed_sent += row.polls_failed
        ended = {row.day for row in rows if row.final and row.bus_id == self.bus_id}  # written at their end
        self._ended = [day for day in self._ended if day.day not in ended]


class TimelinessFlusher:
    """Writes every bus's rows every ``every_s`` seconds, just after each day's end, and once more at the stop.

    Args:
        tallies: the buses' tallies now (a callable: buses come and go).
        store: where the rows go.
        clock: time.
        every_s: how often the rows of the day so far are written.
    """

    def __init__(self, tallies: Callable[[], Iterable[DayTally]], store: ReadingDaysStore, clock: Clock, *,
                 every_s: float = FLUSH_EVERY_S) -> None:
        self.tallies, self.store, self.clock, self.every_s = tallies, store, clock, every_s
        self.errors = 0
        self._lock = asyncio.Lock()

    async def run(self) -> None:
        while True:
            now = self.clock.monotonic()
            ends = [tally.day_end for tally in self.tallies()]
            wait = min([self.every_s, *(end - now + 0.001 for end in ends)])
            await self.clock.sleep(max(wait, 0.001))
            try:
                await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception:  # the database is away: the rows wait for the next try, nothing is lost
                self.errors += 1
                log.exception("could not write the reading timeliness of the day")

    async def flush(self) -> int:
        """Write every bus's rows now; returns how many. A write once begun ends, and is taken note of, even if
        the caller is cancelled (the gateway stopping): its polls are never written twice."""
        return await asyncio.shield(self._flush())

    async def _flush(self) -> int:
        async with self._lock:
            now, wall = self.clock.monotonic(), self.clock.now()
            written: list[tuple[DayTally, list[DayRow]]] = []
            for tally in self.tallies():
                tally.sync(now, wall)
                written.append((tally, tally.rows(now)))
            rows = [row for _, found in written for row in found]
            if rows:
                await self.store.add(rows, wall)
            for tally, found in written:
                tally.written(found)
            return len(rows)
