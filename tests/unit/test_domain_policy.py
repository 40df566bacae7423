"""Site policy from data, the holiday calendar format, friendly windows and the rate limiter."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from gateway.domain.calendar import FriendlyWindow, HolidayCalendar, friendly_window_at, parse_holidays
from gateway.domain.policy import RateLimiter, SitePolicy
from gateway.domain.policy_config import site_policy_from_dict

SHANGHAI = ZoneInfo("Asia/Shanghai")
EXAMPLE = Path(__file__).resolve().parents[1] / "scenarios" / "holidays.example.txt"


def local(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, tzinfo=SHANGHAI).astimezone(dt.UTC)


def test_the_example_holiday_file_parses() -> None:
    calendar = parse_holidays(EXAMPLE.read_text(encoding="utf-8"), source=EXAMPLE.name)
    assert calendar.holidays[dt.date(2026, 10, 3)] == "国庆节"
    assert calendar.is_holiday(dt.date(2026, 2, 15)) and calendar.is_holiday(dt.date(2026, 2, 23))
    assert calendar.workdays[dt.date(2026, 10, 10)] == "国庆调休上班"
    assert not calendar.is_weekend(dt.date(2026, 10, 10))  # a Saturday that is a working day
    assert calendar.is_weekend(dt.date(2026, 10, 11)) and calendar.is_weekday(dt.date(2026, 10, 10))
    assert not calendar.is_weekday(dt.date(2026, 10, 1))


@pytest.mark.parametrize(("text", "message"), [
    ("2026-13-01 bad month", "holidays:1: month must be in 1..12"),
    ("# ok\n\n01/10/2026", "holidays:3: expected"),
    ("2026-10-07..2026-10-01 backwards", "holidays:1: the range must go forwards"),
    ("2026-01-01..2027-06-01 too long", "span at most a year"),
    ("2026-10-10 workday\n2026-10-10 holiday", "holidays:2: 2026-10-10 is listed both"),
])
def test_bad_holiday_lines_name_the_line(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_holidays(text)


def test_holiday_names_and_workday_marker() -> None:
    calendar = parse_holidays("2026-05-01..2026-05-02\n2026-04-26 WORKDAY  make-up day\n2026-04-25 workday")
    assert calendar.holidays == {dt.date(2026, 5, 1): "holiday", dt.date(2026, 5, 2): "holiday"}
    assert calendar.workdays == {dt.date(2026, 4, 26): "make-up day", dt.date(2026, 4, 25): "workday"}


def test_night_window_belongs_to_the_day_it_starts() -> None:
    friday_nights = FriendlyWindow("friday night", frozenset({"fri"}), 20 * 60, 8 * 60)
    cal = HolidayCalendar()
    assert friendly_window_at(local(2026, 11, 27, 23, 0), [friday_nights], cal, SHANGHAI) == (
        "friday night", local(2026, 11, 28, 8, 0))
    assert friendly_window_at(local(2026, 11, 28, 7, 59), [friday_nights], cal, SHANGHAI) is not None
    assert friendly_window_at(local(2026, 11, 28, 8, 0), [friday_nights], cal, SHANGHAI) is None
    assert friendly_window_at(local(2026, 11, 27, 7, 0), [friday_nights], cal, SHANGHAI) is None  # Thursday's night
    lunch = FriendlyWindow("lunch", frozenset({"weekday"}), 12 * 60, 13 * 60)
    assert friendly_window_at(local(2026, 11, 27, 12, 30), [lunch], cal, SHANGHAI) == ("lunch", local(2026, 11, 27, 13))
    assert friendly_window_at(local(2026, 11, 28, 12, 30), [lunch], cal, SHANGHAI) is None


def test_windows_that_cover_all_time_have_no_end() -> None:
    always = [FriendlyWindow("night", frozenset({"all"}), 20 * 60, 8 * 60),
              FriendlyWindow("day", frozenset({"all"}), 8 * 60, 20 * 60)]
    assert friendly_window_at(local(2026, 11, 27, 23), always, HolidayCalendar(), SHANGHAI) == ("night", None)


def test_site_policy_from_data() -> None:
    policy = site_policy_from_dict({
        "timezone": "Europe/Paris", "notice_period": "12h", "stale_after": 600, "max_auto_disconnects_per_minute": 3,
        "friendly_windows": [{"name": "night", "hours": "20:00-08:00"}, {"name": "weekend", "days": "weekend"}],
        "holidays": ["2026-07-14 fête nationale"],
        "credit_classes": {"AAA": "300.00", "X": "1"},
        "emergency_credit": {"amount": "20.00", "period": "yearly"},
    }, holidays_text="2026-12-25 Noël")
    assert policy.tz == ZoneInfo("Europe/Paris")
    assert policy.notice_period == dt.timedelta(hours=12) and policy.stale_after == dt.timedelta(minutes=10)
    assert policy.max_auto_disconnects_per_minute == 3
    assert [w.name for w in policy.friendly_windows] == ["night", "weekend"]
    assert policy.holidays.is_holiday(dt.date(2026, 7, 14)) and policy.holidays.is_holiday(dt.date(2026, 12, 25))
    assert policy.overdraft_for("AAA") == 30_000 and policy.overdraft_for("X") == 100
    assert policy.overdraft_for("B") == 2_000 and policy.overdraft_for("") == 0  # defaults kept
    with pytest.raises(ValueError, match="unknown credit class"):
        policy.overdraft_for("Z")
    assert (policy.emergency_credit_fen, policy.emergency_credit_period) == (2_000, "yearly")
    defaults = site_policy_from_dict(None)
    assert defaults == SitePolicy()
    assert defaults.notice_period == dt.timedelta(hours=24) and defaults.tz == SHANGHAI


@pytest.mark.parametrize(("data", "message"), [
    ({"tz": "UTC"}, "site: unknown key(s): tz"),
    ({"timezone": "Mars/Olympus"}, "site.timezone: unknown time zone"),
    ({"notice_period": "a day"}, "site.notice_period: not a duration"),
    ({"notice_period": "-1h"}, "not a duration"),
    ({"max_auto_disconnects_per_minute": -1}, "non-negative integer"),
    ({"friendly_windows": [{"hours": "20:00-08:00"}]}, "friendly_windows[0].name: required"),
    ({"friendly_windows": [{"name": "x", "days": ["someday"]}]}, "unknown day name(s) someday"),
    ({"friendly_windows": [{"name": "x"}]}, "would cover all time"),
    ({"friendly_windows": [{"name": "x", "hours": "25:00-08:00"}]}, "not a time of day"),
    ({"friendly_windows": [{"name": "x", "hours": "08:00-08:00"}]}, "empty window"),
    ({"friendly_windows": {"name": "x"}}, "must be a list"),
    ({"holidays": ["2026-02-30"]}, "site.holidays:1"),
    ({"credit_classes": {"AAA": 100.5}}, "site.credit_classes.AAA"),
    ({"emergency_credit": {"amount": "0"}}, "site.emergency_credit.amount"),
    ({"emergency_credit": {"period": "daily"}}, "monthly or yearly"),
])
def test_bad_policy_data_is_refused_with_the_key_path(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        site_policy_from_dict(data)


def test_rate_limiter_is_a_sliding_window_with_state() -> None:
    t0 = dt.datetime(2026, 11, 23, tzinfo=dt.UTC)
    limiter = RateLimiter(limit=2)
    assert limiter.allows(t0)
    limiter.record(t0)
    limiter.record(t0 + dt.timedelta(seconds=10))
    assert not limiter.allows(t0 + dt.timedelta(seconds=30))
    assert limiter.free_at(t0 + dt.timedelta(seconds=30)) == t0 + dt.timedelta(seconds=60)
    again = SitePolicy(max_auto_disconnects_per_minute=2).limiter(limiter.state_dict())
    assert again.recent == limiter.recent
    assert again.allows(t0 + dt.timedelta(seconds=60))  # the first one left the window
    assert RateLimiter(limit=None).allows(t0)
    never = RateLimiter(limit=0)
    assert not never.allows(t0) and never.free_at(t0) is None
