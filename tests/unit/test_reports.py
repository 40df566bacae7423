"""The reports' rules without a database (a fake ReportStore): site-local days as UTC ranges, including a day with
a clock change; payment pages that split a day and resume inside it; cursors and ranges refused."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from gateway.domain.policy import SitePolicy
from gateway.service.catalog import Catalog
from gateway.service.reports import MAX_DAYS, ReportRefused, Reports, ReportStore

NOW = dt.datetime(2026, 11, 23, 8, 0, tzinfo=dt.UTC)


class FakeStore(ReportStore):
    """Payments by UTC time (source, channel, amount); every other report empty."""

    def __init__(self, payments: list[tuple[dt.datetime, str, str, int]]) -> None:
        self.payments = payments
        self.asked: list[tuple[dt.datetime, dt.datetime]] = []

    async def payment_groups(self, start: dt.datetime, end: dt.datetime) -> list[Any]:
        self.asked.append((start, end))
        groups: dict[tuple[str, str], list[int]] = {}
        for at, source, channel, fen in self.payments:
            if start <= at < end:
                sums = groups.setdefault((source, channel), [0, 0])
                sums[0] += 1
                sums[1] += fen
        return [SimpleNamespace(source=s, channel=c, count=n, total_fen=f, reversed_count=0, reversed_fen=0)
                for (s, c), (n, f) in sorted(groups.items())]

    async def arrears(self, below_fen: int, *, after: str | None, limit: int) -> list[Any]:
        return []

    async def arrears_totals(self, below_fen: int) -> Any:
        return SimpleNamespace(accounts=0, balance_fen=None)

    async def disconnections(self, since: dt.datetime, until: dt.datetime, *, created_after: dt.datetime,
                             after: tuple[dt.datetime, str] | None, limit: int) -> list[Any]:
        return []

    async def disconnection_count(self, since: dt.datetime, until: dt.datetime, *, created_after: dt.datetime
                                  ) -> int:
        return 0

    async def reading_days(self, first: str, last: str, *, bus: str | None, after: tuple[str, str] | None,
                           limit: int) -> list[Any]:
        return []

    async def reading_totals(self, first: str, last: str, *, bus: str | None) -> Any:
        return SimpleNamespace(meters=None, read=None, on_time=None, polls_ok=None, polls_failed=None)

    async def consumption(self, **_: Any) -> list[Any]:
        return []

    async def consumption_totals(self, **_: Any) -> Any:
        return SimpleNamespace(accounts=0, energy_wh=None, charges_fen=None)


def reports(store: FakeStore, zone: str = "Asia/Shanghai") -> Reports:
    return Reports(store, Catalog(site=SitePolicy(tz=ZoneInfo(zone))), lambda: NOW)


def utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=dt.UTC)


async def test_a_site_local_day_is_its_utc_range_with_23_or_25_hours_on_a_clock_change() -> None:
    store = FakeStore([])
    await reports(store).payments("2026-11-24", "2026-11-24", limit=10, totals=False)
    assert store.asked == [(utc(2026, 11, 23, 16), utc(2026, 11, 24, 16))]
    store = FakeStore([])
    await reports(store, "Europe/Berlin").payments("2026-10-25", "2026-10-25", limit=10, totals=False)
    [(start, end)] = store.asked
    assert (start, end - start) == (utc(2026, 10, 24, 22), dt.timedelta(hours=25))


async def test_payment_pages_split_a_day_and_resume_inside_it() -> None:
    day1, day2 = utc(2026, 11, 22, 2), utc(2026, 11, 23, 2)
    store = FakeStore([(day1, "billing", "alipay", 100), (day1, "billing", "wechat", 200),
                       (day1, "counter", "", 300), (day2, "billing", "alipay", 400)])
    whole = await reports(store).payments("2026-11-22", "2026-11-23", limit=100)
    assert [(r["day"], r["source"], r["channel"], r["total"]) for r in whole.rows] == [
        ("2026-11-22", "billing", "alipay", "1.00"), ("2026-11-22", "billing", "wechat", "2.00"),
        ("2026-11-22", "counter", None, "3.00"), ("2026-11-23", "billing", "alipay", "4.00")]
    assert whole.next_cursor is None and whole.totals["total"] == "10.00"
    pages, cursor = [], None
    while True:
        page = await reports(store).payments("2026-11-22", "2026-11-23", limit=2, cursor=cursor)
        pages.append(page.rows)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert [len(p) for p in pages] == [2, 2, 0]
    assert [r for p in pages for r in p] == whole.rows
    everything = [r async for r in Reports.rows(reports(store).payments, first="2026-11-22", last="2026-11-23")]
    assert everything == whole.rows


@pytest.mark.parametrize("first, last, words", [
    ("2026-11-23", "2026-11-22", "empty"), ("2026-02-29", "2026-03-01", "calendar"),
    ("2025-11-22", "2026-11-23", f"{MAX_DAYS} days")])
async def test_day_ranges_refused(first: str, last: str, words: str) -> None:
    with pytest.raises(ReportRefused, match=words):
        await reports(FakeStore([])).payments(first, last, limit=10)


async def test_a_range_of_exactly_366_days_is_taken() -> None:
    await reports(FakeStore([])).payments("2027-01-01", "2028-01-01", limit=10)  # 2027-01-01 .. 2028-01-01: 366
    await reports(FakeStore([])).disconnections(NOW - dt.timedelta(days=MAX_DAYS), NOW, limit=10)
    with pytest.raises(ReportRefused):
        await reports(FakeStore([])).disconnections(NOW - dt.timedelta(days=MAX_DAYS, seconds=1), NOW, limit=10)


@pytest.mark.parametrize("cursor", ["x", "e30", "WyJhcnJlYXJzIiwxXQ", "WyJwYXltZW50cyIsIjIwMjYtMTEtMjIiXQ"])
async def test_cursors_of_other_reports_or_shapes_are_refused(cursor: str) -> None:
    with pytest.raises(ReportRefused, match="cursor"):
        await reports(FakeStore([])).arrears(0, limit=10, cursor=cursor)
    with pytest.raises(ReportRefused, match="cursor"):
        await reports(FakeStore([])).payments("2026-11-22", "2026-11-23", limit=10, cursor=cursor)


async def test_a_cursor_is_held_to_its_report_s_range() -> None:
    import base64
    import json

    def cursor(*key: str) -> str:
        return base64.urlsafe_b64encode(json.dumps(list(key)).encode()).decode().rstrip("=")

    store = FakeStore([(utc(2026, 11, 20, 2), "billing", "alipay", 100), (utc(2026, 11, 22, 2), "billing", "a", 1)])
    page = await reports(store).payments("2026-11-22", "2026-11-22", limit=10,
                                         cursor=cursor("payments", "2026-11-01", "", ""))
    assert [r["day"] for r in page.rows] == ["2026-11-22"]  # nothing from before the range
    with pytest.raises(ReportRefused, match="cursor"):  # a time that converts to no UTC time
        await reports(store).disconnections(NOW - dt.timedelta(days=1), NOW, limit=10,
                                            cursor=cursor("disconnections", "0001-01-01T00:00:00+14:00", "c"))
