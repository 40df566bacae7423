"""The dashboard's pure parts: the bounds of consumption buckets in the site's time zone (local hours and days,
23- and 25-hour days where the clocks change) and the energy used between bounds."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from gateway.service.dashboard import buckets, used

UTC = dt.UTC


def test_a_day_is_24_local_hours_ending_now() -> None:
    now = dt.datetime(2026, 11, 23, 4, 37, 12, tzinfo=UTC)  # 12:37 in Shanghai
    found = buckets("day", now, ZoneInfo("Asia/Shanghai"))
    assert len(found) == 24
    assert found[0][0] == dt.datetime(2026, 11, 22, 5, tzinfo=UTC)  # 13:00 local yesterday
    assert found[-1] == (dt.datetime(2026, 11, 23, 4, tzinfo=UTC), now)
    assert all(a[1] == b[0] for a, b in zip(found, found[1:], strict=False))


def test_hours_follow_a_zone_half_an_hour_off_utc() -> None:
    now = dt.datetime(2026, 11, 23, 4, 10, tzinfo=UTC)  # 09:40 in Kolkata (+05:30)
    found = buckets("day", now, ZoneInfo("Asia/Kolkata"))
    assert found[-1][0] == dt.datetime(2026, 11, 23, 3, 30, tzinfo=UTC)  # 09:00 local
    assert {s.astimezone(ZoneInfo("Asia/Kolkata")).minute for s, _ in found} == {0}


@pytest.mark.parametrize("now, hours", [
    (dt.datetime(2026, 3, 30, 8, tzinfo=UTC), {dt.date(2026, 3, 29): 23}),  # spring forward
    (dt.datetime(2026, 10, 26, 8, tzinfo=UTC), {dt.date(2026, 10, 25): 25}),  # fall back
])
def test_days_are_local_midnight_to_local_midnight(now: dt.datetime, hours: dict[dt.date, int]) -> None:
    berlin = ZoneInfo("Europe/Berlin")
    for span, n in (("week", 7), ("month", 30)):
        found = buckets(span, now, berlin)
        assert len(found) == n and found[-1][1] == now
        assert found[-1][0].astimezone(berlin) == dt.datetime(now.year, now.month, now.day, tzinfo=berlin)
        for start, end in found[:-1]:
            local = start.astimezone(berlin)
            assert (local.hour, local.minute) == (0, 0) and start.tzinfo is UTC
            assert end - start == dt.timedelta(hours=hours.get(local.date(), 24))


def test_a_span_is_day_week_or_month() -> None:
    with pytest.raises(ValueError):
        buckets("year", dt.datetime(2026, 1, 1, tzinfo=UTC), ZoneInfo("Asia/Shanghai"))


def test_energy_used_between_bounds() -> None:
    assert used([100, 150, 150, 400]) == [50, 0, 250]
    assert used([None, None, 100, 130]) == [0, 0, 30]  # before the first reading: nothing counted
    assert used([500, 20, 70]) == [0, 50]  # a reset: never negative
    assert used([None]) == [] and used([]) == []
