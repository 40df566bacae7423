"""The operations dashboard's read model: the overview page (accounts by supply state, those about to trip, the
deferred disconnects, meters offline or stale, relay commands and notices that need a look, alarms, today's
reading timeliness), the sortable and searchable account and meter tables, and consumption per hour or day.

``Dashboard`` shapes the rows (money as yuan strings, times as aware UTC datetimes) and reuses the lists, the
alarm desk and the reports for what they already answer; the ``DashboardStore`` port reads the rest, and its SQL
lives in ``gateway.adapters.dashboard_rows``. Consumption is computed from the stored cumulative readings at the
bounds of each bucket (site-local hours or days, ``buckets``), never by summing what was billed.
"""

from __future__ import annotations

import abc
import asyncio
import dataclasses
import datetime as dt
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NamedTuple

from gateway.domain.money import format_fen
from gateway.domain.relay import supply_state
from gateway.domain.timeutil import from_iso
from gateway.service.alarm_desk import AlarmDesk
from gateway.service.catalog import Catalog
from gateway.service.commands import ACTIVE_STATES
from gateway.service.lists import SUPPLY_STATES, CommandFilter, Lists, MeterFilter, NoticeFilter
from gateway.service.reports import Reports

__all__ = ["ACCOUNT_SORTS", "HEALTHS", "METER_SORTS", "SPANS", "Dashboard", "DashboardStore", "TableQuery",
           "TableRows", "buckets", "used"]

Row = Any  # a stored row: its columns as attributes

ACCOUNT_SORTS = ("id", "balance", "updated")
METER_SORTS = ("id", "health", "last_reading", "account")
HEALTHS = ("online", "degraded", "offline", "unknown")  # the meters table's health (stale is an alarm: meter_stale)
SPANS = {"day": 24, "week": 7, "month": 30}  # buckets of a span: hours for a day, site-local days otherwise


@dataclasses.dataclass(frozen=True, kw_only=True)
class TableQuery:
    """A page of the account or meter table. ``state``: for accounts one of ``SUPPLY_STATES`` (open accounts, as
    ``state_counts`` counts them) or ``"closed"``; for meters one of ``HEALTHS``."""

    search: str | None = None  # accounts: part of the id (any case) or a meter's exact id; meters: part of either id
    state: str | None = None
    sort: str = "id"  # ACCOUNT_SORTS or METER_SORTS; ties by id
    descending: bool = False
    offset: int = 0
    limit: int = 50
    include_retired: bool = False  # meters only


class TableRows(NamedTuple):
    rows: list[Row]
    total: int  # every row the query matches
    meters: dict[str, list[Row]]  # accounts: per account, its active meters (id, relay, relay_fault, health,
    #                               last_success_at) by id; meters: empty


class DashboardStore(abc.ABC):
    """The port the dashboard reads storage through."""

    concurrent = False  # whether independent reads may run at once (and gain by it)

    @abc.abstractmethod
    async def state_counts(self) -> dict[str, int]:
        """Open accounts per supply state (``supply_state`` over the active meters), every one of
        ``SUPPLY_STATES`` present, and ``closed``: the closed accounts."""

    @abc.abstractmethod
    async def about_to_trip(self, limit: int) -> list[Row]:
        """Open accounts the engine keeps connected whose balance is at or below the final warning level: id,
        balance_fen, warning2_fen, deferred_reason, deferred_until, final_warning_at (the state document's ISO
        string, or None); the next deferred disconnects first (no deferral last), then the lowest balance, id."""

    @abc.abstractmethod
    async def deferred(self, limit: int) -> tuple[list[Row], int]:
        """Open accounts whose automatic disconnect is deferred, by id: id, balance_fen, deferred_reason,
        deferred_until, deferred_detail (or None); and how many there are."""

    @abc.abstractmethod
    async def account_table(self, q: TableQuery) -> TableRows:
        """Accounts: id, balance_fen, supply, status, protected (either way), deferred_reason, updated_at."""

    @abc.abstractmethod
    async def meter_table(self, q: TableQuery) -> TableRows:
        """Meters: id, account_id, bus_id, model, status, relay, relay_fault, health, last_success_at,
        consecutive_failures, last_error."""

    @abc.abstractmethod
    async def energy_at(self, meter_ids: Sequence[str], instants: Sequence[dt.datetime]
                        ) -> dict[str, list[int | None]]:
        """Per meter, per instant: the energy of its newest stored reading taken at or before it (None: none)."""

    @abc.abstractmethod
    async def first_energy(self, meter_id: str, since: dt.datetime) -> int | None:
        """The energy of the meter's oldest stored reading taken at or after ``since`` (None: none)."""


def buckets(span: str, now: dt.datetime, tz: dt.tzinfo) -> list[tuple[dt.datetime, dt.datetime]]:
    """The UTC bounds of a span's buckets, oldest first, the last one ending ``now``: ``day``, 24 hours from
    the start of the site-local hour 23 hours ago; ``week`` and ``month``, 7 and 30 site-local days from local
    midnight to local midnight (23 or 25 hours where the zone changes its clocks), today's the last."""
    if span not in SPANS:
        raise ValueError(f"span must be one of {', '.join(SPANS)}: {span!r}")
    local = now.astimezone(tz)
    if span == "day":
        hour = local.replace(minute=0, second=0, microsecond=0).astimezone(dt.UTC)
        starts = [hour - dt.timedelta(hours=n) for n in range(SPANS[span] - 1, -1, -1)]
    else:
        today = local.date()
        starts = [dt.datetime.combine(today - dt.timedelta(days=n), dt.time(), tz).astimezone(dt.UTC)
                  for n in range(SPANS[span] - 1, -1, -1)]
    ends = [*starts[1:], now.astimezone(dt.UTC)]
    return list(zip(starts, ends, strict=True))


def used(energy: Sequence[int | None]) -> list[int]:
    """The energy used between consecutive bounds (len - 1 values) from one meter's cumulative energy at each bound.
    A bucket without a value at its start counts 0 (``Dashboard.consumption`` gives the bucket of the meter's first
    reading that reading's energy as its start); a decrease (a reset or a replaced meter) counts 0 too, never a
    negative amount."""
    return [0 if start is None or end is None else max(end - start, 0)
            for start, end in zip(energy, energy[1:], strict=False)]


def _more(found: list[Any], limit: int) -> dict[str, Any]:
    return {"rows": found[:limit], "more": len(found) > limit}


class Dashboard:
    def __init__(self, store: DashboardStore, lists: Lists, alarms: AlarmDesk, reports: Reports, catalog: Catalog,
                 clock: Callable[[], dt.datetime]) -> None:
        self.store, self.lists, self.alarms, self.reports = store, lists, alarms, reports
        self.catalog, self.clock = catalog, clock

    async def overview(self, *, limit: int = 20) -> dict[str, Any]:
        """Everything the overview page shows; each list up to ``limit`` rows and whether more follow."""
        now = self.clock()
        parts = self._parts(limit, now)
        if self.store.concurrent:
            done = await asyncio.gather(*(part() for part in parts.values()))
        else:
            done = [await part() for part in parts.values()]
        return {**dict(zip(parts, done, strict=True)), "as_of": now}

    def _parts(self, limit: int, now: dt.datetime) -> dict[str, Callable[[], Awaitable[Any]]]:
        """The overview's parts, each a read of its own (independent of the others)."""
        today = now.astimezone(self.catalog.site.tz).date().isoformat()
        return {
            "counts": self.store.state_counts,
            "about_to_trip": lambda: self._about_to_trip(limit),
            "deferred": lambda: self._deferred(limit),
            "offline": lambda: self._meters(MeterFilter(health="offline", status="active", limit=limit)),
            "stale": lambda: self._alarms(limit, kind="meter_stale"),
            "commands": lambda: self._commands(limit),
            "notices": lambda: self._notices(limit),
            "alarms": lambda: self._alarms(limit),
            "timeliness": lambda: self._timeliness(today),
        }

    async def _about_to_trip(self, limit: int) -> list[dict[str, Any]]:
        site = self.catalog.site
        found = []
        for r in await self.store.about_to_trip(limit):
            issued, delivered = from_iso(r.final_warning_at), from_iso(r.final_warning_delivered_at)
            # the notice period's end, as the guardrail counts it: from the delivery where the site waits for it
            start = delivered if site.notice_delivery else issued
            ends = start + site.notice_period if start is not None and site.notice_period else None
            if r.deferred_reason == "notice_period" and r.deferred_until is not None:
                ends = r.deferred_until
            found.append({"id": r.id, "balance": format_fen(r.balance_fen),
                          "final_warning_level": format_fen(r.warning2_fen),
                          "deferred_reason": r.deferred_reason or None, "deferred_until": r.deferred_until,
                          "final_warning_at": issued, "final_warning_delivered_at": delivered, "notice_ends": ends})
        return found

    async def _deferred(self, limit: int) -> dict[str, Any]:
        rows, total = await self.store.deferred(limit)
        return {"rows": [{"id": r.id, "balance": format_fen(r.balance_fen), "deferred_reason": r.deferred_reason,
                          "deferred_until": r.deferred_until, "deferred_detail": r.deferred_detail or None}
                         for r in rows], "total": total}

    async def _meters(self, which: MeterFilter) -> dict[str, Any]:
        page = await self.lists.meters(which)
        return {"rows": page["data"], "more": page["next_after"] is not None}

    async def _alarms(self, limit: int, *, kind: str | None = None) -> dict[str, Any]:
        page = await self.alarms.page(state="unresolved", kind=kind, limit=limit + 1)
        return _more(page["data"], limit)

    async def _commands(self, limit: int) -> dict[str, Any]:
        active: list[dict[str, Any]] = []
        for state in ACTIVE_STATES:  # (each state's newest first: merged, then cut)
            active += (await self.lists.commands(CommandFilter(state=state, limit=limit + 1)))["data"]
        active.sort(key=lambda c: (c["created_at"], c["id"]), reverse=True)
        failed = (await self.lists.commands(CommandFilter(state="failed", limit=limit + 1)))["data"]
        return {"active": _more(active, limit), "failed": _more(failed, limit)}

    async def _notices(self, limit: int) -> dict[str, Any]:
        return {state: _more((await self.lists.notices(NoticeFilter(state=state, limit=limit + 1)))["data"], limit)
                for state in ("failed", "pending")}

    async def _timeliness(self, today: str) -> dict[str, Any]:
        page = await self.reports.timeliness(today, today, limit=100)
        return {"day": today, "rows": page.rows, "more": page.next_cursor is not None, "totals": page.totals}

    async def accounts(self, q: TableQuery) -> dict[str, Any]:
        """A page of the account table: each account's supply state, balance and active meters."""
        _check(q, ACCOUNT_SORTS, (*SUPPLY_STATES, "closed"))
        found = await self.store.account_table(q)
        rows = []
        for r in found.rows:
            meters = found.meters.get(r.id, [])
            rows.append({"id": r.id, "balance": format_fen(r.balance_fen),
                         "state": supply_state(r.supply, [(m.relay, m.relay_fault) for m in meters]),
                         "supply": r.supply, "status": r.status, "protected": bool(r.protected),
                         "deferred_reason": r.deferred_reason or None, "updated_at": r.updated_at,
                         "meters": [{"id": m.id, "relay": m.relay, "relay_fault": m.relay_fault or None,
                                     "health": m.health, "last_success_at": m.last_success_at} for m in meters]})
        return {"rows": rows, "total": found.total, "query": q}

    async def meters(self, q: TableQuery) -> dict[str, Any]:
        """A page of the meter table: place, relay and communication health."""
        _check(q, METER_SORTS, HEALTHS)
        found = await self.store.meter_table(q)
        rows = [{"id": r.id, "account_id": r.account_id, "bus": r.bus_id, "model": r.model, "status": r.status,
                 "relay": r.relay, "relay_fault": r.relay_fault or None, "health": r.health,
                 "last_success_at": r.last_success_at, "consecutive_failures": r.consecutive_failures,
                 "last_error": r.last_error} for r in found.rows]
        return {"rows": rows, "total": found.total, "query": q}

    async def consumption(self, meter_ids: Sequence[str], span: str) -> list[dict[str, Any]]:
        """The energy the meters used per bucket of ``span`` (``buckets``), summed over them (``used``)."""
        bounds = buckets(span, self.clock(), self.catalog.site.tz)
        instants = [start for start, _ in bounds] + [bounds[-1][1]]
        energy = await self.store.energy_at(list(dict.fromkeys(meter_ids)), instants) if meter_ids else {}
        totals = [0] * len(bounds)
        for meter_id, values in energy.items():
            # the bucket of the meter's first reading counts from that reading (what the meter counted before it
            # was installed or read first is not consumption of the span)
            first = next((i for i in range(len(values) - 1) if values[i] is None and values[i + 1] is not None), None)
            if first is not None:
                values = [*values[:first], await self.store.first_energy(meter_id, instants[first]),
                          *values[first + 1:]]
            totals = [a + b for a, b in zip(totals, used(values), strict=True)]
        return [{"start": start, "end": end, "energy_wh": wh} for (start, end), wh in zip(bounds, totals, strict=True)]


def _check(q: TableQuery, sorts: tuple[str, ...], states: tuple[str, ...]) -> None:
    if q.sort not in sorts:
        raise ValueError(f"sort must be one of {', '.join(sorts)}: {q.sort!r}")
    if q.state is not None and q.state not in states:
        raise ValueError(f"state must be one of {', '.join(states)}: {q.state!r}")
    if q.offset < 0 or q.limit < 1:
        raise ValueError("offset must be 0 or more and limit 1 or more")
