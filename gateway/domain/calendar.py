"""Friendly-credit windows (nights, weekends, public holidays) and the holiday calendar file.

Holiday calendar file format (UTF-8 text, one entry per line; ``#`` starts a comment; blank lines ignored):

    2026-01-01                 元旦                 a public holiday (the rest of the line is its name)
    2026-02-15..2026-02-23     春节                 an inclusive range of holidays
    2026-02-14  workday        春节调休上班          a weekend day that is an official working day (调休)

A friendly window covers local times ``hours`` ("HH:MM-HH:MM", may wrap midnight; absent: the whole day) on the
days it names; for a window that wraps midnight the day is the one it starts on (Friday 20:00 - Saturday 08:00
belongs to Friday). Day names: ``all``, ``mon`` … ``sun``, ``weekday`` (Mon-Fri and listed workdays, holidays
excluded), ``weekend`` (Sat/Sun unless listed as a workday), ``holiday`` (in the calendar).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

__all__ = ["DAY_NAMES", "FriendlyWindow", "HolidayCalendar", "friendly_window_at", "parse_holidays"]

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
DAY_NAMES = frozenset({*WEEKDAYS, "all", "weekday", "weekend", "holiday"})
_LINE = re.compile(r"^(\d{4}-\d{2}-\d{2})(?:\.\.(\d{4}-\d{2}-\d{2}))?(?:\s+(.*))?$")
_MAX_RANGE_DAYS = 366


@dataclass(frozen=True, slots=True)
class HolidayCalendar:
    """Public holidays and make-up working days (调休), by local date, with their names."""

    holidays: Mapping[dt.date, str] = field(default_factory=dict)
    workdays: Mapping[dt.date, str] = field(default_factory=dict)

    def is_holiday(self, day: dt.date) -> bool:
        return day in self.holidays

    def is_weekend(self, day: dt.date) -> bool:
        return day.weekday() >= 5 and day not in self.workdays

    def is_weekday(self, day: dt.date) -> bool:
        return not self.is_holiday(day) and (day.weekday() < 5 or day in self.workdays)

    def merged(self, other: HolidayCalendar) -> HolidayCalendar:
        return HolidayCalendar({**self.holidays, **other.holidays}, {**self.workdays, **other.workdays})


def parse_holidays(text: str, *, source: str = "holidays") -> HolidayCalendar:
    """Parse the holiday calendar format above; errors name ``source`` and the line number."""
    holidays: dict[dt.date, str] = {}
    workdays: dict[dt.date, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = _LINE.match(line)
        if not match:
            raise ValueError(f"{source}:{number}: expected \"YYYY-MM-DD[..YYYY-MM-DD] [workday] [name]\", "
                             f"got {raw.strip()!r}")
        try:
            first = dt.date.fromisoformat(match.group(1))
            last = dt.date.fromisoformat(match.group(2)) if match.group(2) else first
        except ValueError as exc:
            raise ValueError(f"{source}:{number}: {exc}") from None
        if last < first or (last - first).days >= _MAX_RANGE_DAYS:
            raise ValueError(f"{source}:{number}: the range must go forwards and span at most a year")
        rest = (match.group(3) or "").strip()
        is_workday = rest.split(" ", 1)[0].lower() == "workday"
        name = rest.split(None, 1)[1].strip() if is_workday and " " in rest else ("" if is_workday else rest)
        target, other = (workdays, holidays) if is_workday else (holidays, workdays)
        day = first
        while day <= last:
            if day in other:
                raise ValueError(f"{source}:{number}: {day} is listed both as a holiday and as a workday")
            target[day] = name or ("workday" if is_workday else "holiday")
            day += dt.timedelta(days=1)
    return HolidayCalendar(holidays, workdays)


@dataclass(frozen=True, slots=True)
class FriendlyWindow:
    """A time when no automatic disconnect happens (customers can't easily pay then)."""

    name: str
    days: frozenset[str] = frozenset({"all"})
    start_minute: int | None = None  # None: the whole day
    end_minute: int | None = None

    def day_matches(self, day: dt.date, calendar: HolidayCalendar) -> bool:
        for name in self.days:
            if (name == "all" or (name in WEEKDAYS and WEEKDAYS.index(name) == day.weekday())
                    or (name == "weekend" and calendar.is_weekend(day))
                    or (name == "weekday" and calendar.is_weekday(day))
                    or (name == "holiday" and calendar.is_holiday(day))):
                return True
        return False

    def occurrence(self, local: dt.datetime, calendar: HolidayCalendar) -> dt.datetime | None:
        """The local end of the occurrence covering ``local`` (naive local wall time), or None."""
        day, minute = local.date(), local.hour * 60 + local.minute
        if self.start_minute is None or self.end_minute is None:
            return _wall(day + dt.timedelta(days=1), 0) if self.day_matches(day, calendar) else None
        start, end = self.start_minute, self.end_minute
        if start < end:
            covers = start <= minute < end and self.day_matches(day, calendar)
            return _wall(day, end) if covers else None
        if minute >= start and self.day_matches(day, calendar):  # wraps midnight: started today
            return _wall(day + dt.timedelta(days=1), end)
        yesterday = day - dt.timedelta(days=1)
        if minute < end and self.day_matches(yesterday, calendar):  # started yesterday
            return _wall(day, end)
        return None


def _wall(day: dt.date, minute: int) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(0)) + dt.timedelta(minutes=minute)


def friendly_window_at(when: dt.datetime, windows: Iterable[FriendlyWindow], calendar: HolidayCalendar,
                       tz: ZoneInfo) -> tuple[str, dt.datetime | None] | None:
    """``(name, until)`` of the friendly window covering ``when`` (aware), or None.

    ``until`` (aware UTC) is when no window covers the time any more: windows that follow each other without a
    gap (Friday night, the weekend, a holiday Monday) are chained. None if they never end within 60 steps.
    """
    windows = tuple(windows)
    found = _covering(when.astimezone(tz).replace(tzinfo=None), windows, calendar)
    if found is None:
        return None
    name, end = found
    for _ in range(60):
        nxt = _covering(end, windows, calendar)
        if nxt is None:
            return name, end.replace(tzinfo=tz).astimezone(dt.UTC)
        end = nxt[1]
    return name, None


def _covering(local: dt.datetime, windows: tuple[FriendlyWindow, ...],
              calendar: HolidayCalendar) -> tuple[str, dt.datetime] | None:
    best: tuple[str, dt.datetime] | None = None
    for window in windows:
        end = window.occurrence(local, calendar)
        if end is not None and (best is None or end > best[1]):
            best = (window.name if best is None else best[0], end)
    return best
