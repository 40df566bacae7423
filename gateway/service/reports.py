"""The daily reports (docs/reports.md): arrears, disconnections, payment reconciliation, reading timeliness and
consumption per billing period.

Each report is read in pages: ``Reports.<report>(..., limit=, cursor=)`` returns one ``Page`` (rows as dicts keyed
as the API's columns, the cursor of the next page, and the report's totals); ``Reports.rows`` walks a report page
by page (the CSV answer streams it), so no report holds more than one page in memory. Cursors are opaque strings
that name their report and the last row's sort key. The SQL is behind the ``ReportStore`` port
(``gateway.adapters.report_rows``).
"""

from __future__ import annotations

import abc
import base64
import binascii
import datetime as dt
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.domain.money import format_fen
from gateway.service.catalog import Catalog

__all__ = ["MAX_DAYS", "Page", "ReportRefused", "ReportStore", "Reports"]

MAX_DAYS = 366  # the longest range a report takes
CHUNK = 5_000  # rows read at a time when a report is walked whole (CSV)

Row = Any  # a stored row: its columns as attributes
Key = tuple[Any, ...]


class ReportRefused(Exception):
    """A report's parameters are well formed but refused: an empty or reversed range, one longer than
    ``MAX_DAYS``, a day that is not in the calendar, a cursor that is not this report's."""


@dataclass(slots=True)
class Page:
    rows: list[dict[str, Any]]
    next_cursor: str | None = None
    totals: dict[str, Any] = field(default_factory=dict)


class ReportStore(abc.ABC):
    """The port the reports read storage through. Each method returns at most ``limit`` rows after ``after`` (the
    sort key of the last row of the previous page), in the order of that key."""

    @abc.abstractmethod
    async def arrears(self, below_fen: int, *, after: str | None, limit: int) -> list[Row]:
        """Open accounts with ``balance_fen < below_fen`` by id: id, balance_fen, supply, credit_class, protected,
        below_since (the first ledger entry after the last one at or above the threshold), last_payment_at,
        last_payment_fen."""

    @abc.abstractmethod
    async def arrears_totals(self, below_fen: int) -> Row:
        """accounts, balance_fen (their sum)."""

    @abc.abstractmethod
    async def disconnections(self, since: dt.datetime, until: dt.datetime, *, created_after: dt.datetime,
                             after: tuple[dt.datetime, str] | None, limit: int) -> list[Row]:
        """Confirmed ``open`` commands confirmed (``updated_at``) in [since, until), created after
        ``created_after``, by (updated_at, id): id, meter_id, account_id, origin, reason, operator, disconnected_at,
        reconnected_at (the meter's next confirmed ``close``, or None)."""

    @abc.abstractmethod
    async def disconnection_count(self, since: dt.datetime, until: dt.datetime, *, created_after: dt.datetime
                                  ) -> int: ...

    @abc.abstractmethod
    async def payment_groups(self, start: dt.datetime, end: dt.datetime) -> list[Row]:
        """Payments received in [start, end) by source and channel (ordered so, a missing channel as ""): source,
        channel, count, total_fen, reversed_count, reversed_fen."""

    @abc.abstractmethod
    async def reading_days(self, first: str, last: str, *, bus: str | None, after: tuple[str, str] | None,
                           limit: int) -> list[Row]:
        """Rows of ``reading_days`` with first <= day <= last by (day, bus_id)."""

    @abc.abstractmethod
    async def reading_totals(self, first: str, last: str, *, bus: str | None) -> Row:
        """Sums of meters, read, on_time, polls_ok, polls_failed over the same rows."""

    @abc.abstractmethod
    async def consumption(self, *, account_id: str | None, period: str | None, since: dt.datetime | None,
                          until: dt.datetime | None, after: tuple[str, str] | None, limit: int) -> list[Row]:
        """The ledger's charges grouped by (account_id, period), in that order: account_id, period, energy_wh,
        charges_fen (positive: what was charged), entries, first_at, last_at."""

    @abc.abstractmethod
    async def consumption_totals(self, *, account_id: str | None, period: str | None, since: dt.datetime | None,
                                 until: dt.datetime | None) -> Row:
        """energy_wh, charges_fen, accounts over the same charges."""


class Reports:
    """The reports over one database; ``clock`` gives now (days in arrears, open disconnections' durations)."""

    def __init__(self, store: ReportStore, catalog: Catalog, clock: Callable[[], dt.datetime]) -> None:
        self.store = store
        self.catalog = catalog
        self.clock = clock

    @property
    def tz(self) -> Any:
        return self.catalog.site.tz

    # --- arrears ------------------------------------------------------------------------------------------
    async def arrears(self, below_fen: int, *, limit: int, cursor: str | None = None, totals: bool = True
                      ) -> Page:
        """Open accounts whose balance is below ``below_fen``, by id."""
        after = _decode(cursor, "arrears", (str,))
        now = self.clock()
        rows = await self.store.arrears(below_fen, after=after[0] if after else None, limit=limit)
        # the columns in the port's order, unpacked (a large report: attribute access per cell costs)
        data = [{"account_id": id_, "balance": format_fen(balance), "supply": supply,
                 "credit_class": credit_class or None, "protected": bool(protected), "below_since": since,
                 "days_in_arrears": None if since is None else max((now - since).days, 0),
                 "last_payment_at": paid_at, "last_payment": None if paid is None else format_fen(paid)}
                for id_, balance, supply, credit_class, protected, since, paid_at, paid in rows]
        page = Page(data, _next("arrears", rows, limit, lambda r: (r.id,)))
        if totals:
            sums = await self.store.arrears_totals(below_fen)
            page.totals = {"accounts": sums.accounts, "balance": format_fen(int(sums.balance_fen or 0)),
                           "below": format_fen(below_fen), "as_of": now}
        return page

    # --- disconnections -----------------------------------------------------------------------------------
    async def disconnections(self, since: dt.datetime, until: dt.datetime | None, *, limit: int,
                             cursor: str | None = None, totals: bool = True) -> Page:
        """Confirmed disconnects in [since, until), each with its reconnection and how long the supply was off."""
        now = self.clock()
        until = until or now
        _check_range(since, until)
        after = _decode(cursor, "disconnections", (str, str))
        key = None if after is None else (_time(after[0]), after[1])
        # a command is confirmed before it expires: look only at commands created within the longest expiry
        created_after = since - dt.timedelta(seconds=self.catalog.command_expiry_s) - dt.timedelta(days=1)
        rows = await self.store.disconnections(since, until, created_after=created_after, after=key, limit=limit)
        data = []
        for r in rows:
            end = r.reconnected_at or now
            data.append({"command_id": r.id, "meter_id": r.meter_id, "account_id": r.account_id,
                         "origin": r.origin, "reason": r.reason, "operator": r.operator,
                         "disconnected_at": r.disconnected_at, "reconnected_at": r.reconnected_at,
                         "duration_s": max(int((end - r.disconnected_at).total_seconds()), 0),
                         "still_off": r.reconnected_at is None})
        page = Page(data, _next("disconnections", rows, limit, lambda r: (r.disconnected_at.isoformat(), r.id)))
        if totals:
            count = await self.store.disconnection_count(since, until, created_after=created_after)
            page.totals = {"disconnections": count, "since": since, "until": until, "as_of": now}
        return page

    # --- payments -----------------------------------------------------------------------------------------
    async def payments(self, first: str, last: str, *, limit: int, cursor: str | None = None,
                       totals: bool = True) -> Page:
        """Payments received per site-local day (``first`` to ``last``, inclusive), source and channel."""
        start_day, end_day = _days(first, last)
        after = _decode(cursor, "payments", (str, str, str))
        day = start_day if after is None else max(start_day, _day(after[0]))  # (a cursor is a client's string)
        data: list[dict[str, Any]] = []
        keys: list[Key] = []
        while day <= end_day and len(data) < limit:
            start, end = self._bounds(day)
            for g in await self.store.payment_groups(start, end):
                key = (day.isoformat(), g.source, g.channel)
                if after is not None and key <= after:
                    continue
                if len(data) == limit:
                    break
                data.append({"day": day.isoformat(), "source": g.source, "channel": g.channel or None,
                             **_payment_sums(g.count, g.total_fen, g.reversed_count, g.reversed_fen)})
                keys.append(key)
            day += dt.timedelta(days=1)
        next_cursor = _encode("payments", keys[-1]) if len(data) == limit else None
        page = Page(data, next_cursor)
        if totals:
            sums = {"count": 0, "total_fen": 0, "reversed_count": 0, "reversed_fen": 0}
            for g in await self.store.payment_groups(self._bounds(start_day)[0], self._bounds(end_day)[1]):
                for name in sums:
                    sums[name] += getattr(g, name) or 0
            page.totals = {**_payment_sums(**sums), "since": start_day.isoformat(), "until": end_day.isoformat(),
                           "time_zone": str(self.tz)}
        return page

    def _bounds(self, day: dt.date) -> tuple[dt.datetime, dt.datetime]:
        """A site-local day as UTC [start, end) (23 or 25 hours where the zone changes its clocks)."""
        start = dt.datetime.combine(day, dt.time(), self.tz).astimezone(dt.UTC)
        end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), self.tz).astimezone(dt.UTC)
        return start, end

    # --- reading timeliness -------------------------------------------------------------------------------
    async def timeliness(self, first: str, last: str, *, bus: str | None = None, limit: int,
                         cursor: str | None = None, totals: bool = True) -> Page:
        """Per bus and site-local day: meters, the share read (抄表成功率), the share read on time, polls."""
        start_day, end_day = _days(first, last)
        after = _decode(cursor, "reading-timeliness", (str, str))
        rows = await self.store.reading_days(start_day.isoformat(), end_day.isoformat(), bus=bus,
                                             after=None if after is None else (after[0], after[1]), limit=limit)
        data = [{"day": r.day, "bus": r.bus_id, **_timeliness(r)} for r in rows]
        page = Page(data, _next("reading-timeliness", rows, limit, lambda r: (r.day, r.bus_id)))
        if totals:
            sums = await self.store.reading_totals(start_day.isoformat(), end_day.isoformat(), bus=bus)
            page.totals = {**_timeliness(sums), "since": start_day.isoformat(), "until": end_day.isoformat(),
                           "time_zone": str(self.tz)}
        return page

    # --- consumption --------------------------------------------------------------------------------------
    async def consumption(self, *, account_id: str | None = None, period: str | None = None,
                          since: dt.datetime | None = None, until: dt.datetime | None = None, limit: int,
                          cursor: str | None = None, totals: bool = True) -> Page:
        """Energy and charges per account and billing period, from the ledger's charges (those made in
        [since, until) when given)."""
        if since is not None or until is not None:  # a range: the other end by default, at most MAX_DAYS
            until = until or self.clock()
            since = since or until - dt.timedelta(days=MAX_DAYS)
            _check_range(since, until)
        after = _decode(cursor, "consumption", (str, str))
        query = dict(account_id=account_id, period=period, since=since, until=until)
        rows = await self.store.consumption(**query, after=None if after is None else (after[0], after[1]),
                                            limit=limit)
        data = [{"account_id": r.account_id, "period": r.period, "energy_wh": int(r.energy_wh or 0),
                 "charges": format_fen(int(r.charges_fen or 0)), "entries": r.entries,
                 "first_charge_at": r.first_at, "last_charge_at": r.last_at} for r in rows]
        page = Page(data, _next("consumption", rows, limit, lambda r: (r.account_id, r.period)))
        if totals:
            sums = await self.store.consumption_totals(**query)
            page.totals = {"accounts": sums.accounts, "energy_wh": int(sums.energy_wh or 0),
                           "charges": format_fen(int(sums.charges_fen or 0))}
        return page

    # --- whole reports ------------------------------------------------------------------------------------
    @staticmethod
    async def rows(report: Callable[..., Awaitable[Page]], /, *, cursor: str | None = None, **params: Any
                   ) -> AsyncIterator[dict[str, Any]]:
        """Every row of ``report`` (one of the methods above, called with ``params``) from ``cursor`` on, read
        ``CHUNK`` rows at a time, without the totals."""
        while True:
            page = await report(**params, limit=CHUNK, cursor=cursor, totals=False)
            for row in page.rows:
                yield row
            cursor = page.next_cursor
            if cursor is None:
                return


def _payment_sums(count: int, total_fen: int, reversed_count: int, reversed_fen: int) -> dict[str, Any]:
    total_fen, reversed_fen = int(total_fen or 0), int(reversed_fen or 0)
    return {"count": int(count or 0), "total": format_fen(total_fen), "reversed_count": int(reversed_count or 0),
            "reversed_total": format_fen(reversed_fen), "net": format_fen(total_fen - reversed_fen)}


def _timeliness(r: Row) -> dict[str, Any]:
    meters, read, on_time = int(r.meters or 0), int(r.read or 0), int(r.on_time or 0)
    return {"meters": meters, "read": read, "read_share": _share(read, meters), "on_time": on_time,
            "on_time_share": _share(on_time, meters), "polls_ok": int(r.polls_ok or 0),
            "polls_failed": int(r.polls_failed or 0)}


def _share(part: int, whole: int) -> float | None:
    return None if whole <= 0 else round(part / whole, 4)


def _check_range(since: dt.datetime, until: dt.datetime) -> None:
    if until <= since:
        raise ReportRefused(f"the range is empty: until ({until.isoformat()}) is not after since "
                            f"({since.isoformat()})")
    if until - since > dt.timedelta(days=MAX_DAYS):
        raise ReportRefused(f"the range is longer than {MAX_DAYS} days; ask for several")


def _days(first: str, last: str) -> tuple[dt.date, dt.date]:
    start, end = _day(first), _day(last)
    if end < start:
        raise ReportRefused(f"the range is empty: until ({last}) is before since ({first})")
    if (end - start).days + 1 > MAX_DAYS:
        raise ReportRefused(f"the range is longer than {MAX_DAYS} days; ask for several")
    return start, end


def _day(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise ReportRefused(f"not a day of the calendar: {text!r}") from None


def _time(text: str) -> dt.datetime:
    try:
        value = dt.datetime.fromisoformat(text)
        if value.tzinfo is None:
            raise ValueError(text)
        return value.astimezone(dt.UTC)
    except (ValueError, OverflowError):  # not a time, or none that converts to UTC
        raise ReportRefused("the cursor is not one of this report's") from None


def _next(report: str, rows: list[Row], limit: int, key: Callable[[Row], Key]) -> str | None:
    return _encode(report, key(rows[-1])) if rows and len(rows) == limit else None


def _encode(report: str, key: Key) -> str:
    raw = json.dumps([report, *key], ensure_ascii=False, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(cursor: str | None, report: str, shape: tuple[type, ...]) -> Key | None:
    """The sort key a cursor of ``report`` carries; ``ReportRefused`` for anything else."""
    if cursor is None:
        return None
    try:
        value = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        value = None
    if (not isinstance(value, list) or len(value) != len(shape) + 1 or value[0] != report
            or not all(isinstance(v, t) for v, t in zip(value[1:], shape, strict=True))):
        raise ReportRefused(f"the cursor is not one of this report's ({report}): start again without it")
    return tuple(value[1:])
