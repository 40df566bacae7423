"""The dashboard's storage (``gateway.service.dashboard.DashboardStore``) on SQLAlchemy Core: SQLite or
PostgreSQL.

The overview reads the few rows it shows through partial indexes (migration 0008): the supply-state counts look
only at the accounts that may be other than ``connected`` (disconnected ones, and those with a meter whose relay is
not simply closed), with ``supply_state``'s rules as one CASE over their active meters' flags; every other open
account is counted as connected. The table filters reuse the lists' conditions (``account_state``,
``protected``). A table page is read as the ids of the page first, then their columns. The energy at
given instants is one indexed lookup (``ix_readings_meter_taken``) per meter and instant, many to a statement.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from gateway.adapters import tables as t
from gateway.adapters.list_store import account_state, protected
from gateway.adapters.sql import SqlStorage
from gateway.service.dashboard import DashboardStore, Row, TableQuery, TableRows
from gateway.service.lists import SUPPLY_STATES

__all__ = ["SqlDashboardStore"]

_a, _m, _r = t.accounts.c, t.meters.c, t.readings.c
LOOKUPS = 400  # (meter, instant) lookups per statement (SQLite allows 500 terms of a UNION ALL)


def _is(column: sa.ColumnElement[Any], value: str) -> sa.ColumnElement[bool]:
    """``column = 'value'`` with the value written out, as the partial indexes' conditions are (SQLite matches
    a query to a partial index only so; PostgreSQL's generic plans too)."""
    return column == sa.literal_column(f"'{value}'")


def _flag(condition: sa.ColumnElement[bool]) -> sa.ColumnElement[int]:
    return sa.case((condition, 1), else_=0)


def _unusual() -> sa.ColumnElement[bool]:
    """Active meters whose relay is not simply closed (``ix_meters_unusual``)."""
    return sa.and_(_is(_m.status, "active"), sa.or_(_m.relay != sa.literal_column("'closed'"),
                                                    _m.relay_fault != sa.literal_column("''")))


def _candidates() -> sa.CTE:
    """The accounts whose supply state may be other than ``connected`` (every other open account is): those the
    engine wants disconnected (``off``: 1) and those with an active meter whose relay is not simply closed, each
    once; from two partial indexes, without reading the accounts' rows."""
    rows = sa.union_all(sa.select(_a.id.label("id"), sa.literal_column("1").label("off"))
                        .where(_is(_a.supply, "disconnected")),
                        sa.select(_m.account_id.label("id"), sa.literal_column("0").label("off")).where(_unusual())
                        ).subquery("rows")
    return sa.select(rows.c.id, sa.func.max(rows.c.off).label("off")).group_by(rows.c.id).cte("candidates")


def _supply_state(among: sa.CTE) -> tuple[sa.ColumnElement[str], sa.Subquery]:
    """The supply state (``supply_state`` over the active meters) of the accounts ``among`` (id, off: whether the
    engine wants the supply disconnected), and the per-account meter flags it needs, to be outer-joined on
    ``account_id``."""
    flags = (sa.select(_m.account_id,
                       sa.func.max(_flag(_m.relay_fault == "disconnect_failed")).label("failed_off"),
                       sa.func.max(_flag(_m.relay_fault == "reconnect_failed")).label("failed_on"),
                       sa.func.max(_flag(_m.relay == "open")).label("any_open"),
                       sa.func.max(_flag(_m.relay == "armed")).label("any_armed"),
                       sa.func.min(_flag(_m.relay == "open")).label("all_open"))
             .where(_m.status == "active", _m.account_id.in_(sa.select(among.c.id)))
             .group_by(_m.account_id).subquery("flags"))
    off, f = among.c.off == 1, flags.c
    state = sa.case(
        (sa.and_(off, f.failed_off == 1), "disconnect_failed"),
        (sa.and_(off, f.all_open == 1), "disconnected"),  # (no meters: all_open is NULL, as supply_state says)
        (off, "disconnecting"),
        (f.failed_on == 1, "reconnect_failed"),
        (f.any_open == 1, "reconnecting"),
        (f.any_armed == 1, "armed"),
        else_="connected")
    return state, flags


def _order(keys: Sequence[sa.ColumnElement[Any]], descending: bool) -> list[sa.ColumnElement[Any]]:
    """The keys one way, NULLs as the smallest value on both databases."""
    return [key.desc().nulls_last() if descending else key.asc().nulls_first() for key in keys]


def _account_where(q: TableQuery) -> list[sa.ColumnElement[bool]]:
    where: list[sa.ColumnElement[bool]] = []
    if q.search:
        owner = sa.select(_m.account_id).where(_m.id == q.search)
        where.append(sa.or_(_a.id.icontains(q.search, autoescape=True), _a.id.in_(owner)))
    if q.state == "closed":
        where.append(_is(_a.status, "closed"))  # ix_accounts_closed
    elif q.state is not None:
        where += [_a.status == "open", account_state(q.state)]
    return where


def _meter_where(q: TableQuery) -> list[sa.ColumnElement[bool]]:
    where: list[sa.ColumnElement[bool]] = []
    if not q.include_retired:
        where.append(_m.status == "active")
    if q.search:
        where.append(sa.or_(_m.id.icontains(q.search, autoescape=True),
                            _m.account_id.icontains(q.search, autoescape=True)))
    if q.state is not None:
        where.append(_m.health == q.state)
    return where


class SqlDashboardStore(DashboardStore):
    def __init__(self, storage: SqlStorage) -> None:
        self.storage = storage
        # PostgreSQL answers on several connections at once; SQLite's reads (aiosqlite: a thread a connection,
        # one interpreter lock) gain nothing measurable by it (docs/benchmarks.md, "Dashboard overview")
        self.concurrent = storage.engine.dialect.name != "sqlite"

    async def _all(self, query: sa.Executable) -> list[Row]:
        async with self.storage.reading() as conn:
            return list((await conn.execute(query)).all())

    async def state_counts(self) -> dict[str, int]:
        among = _candidates()
        state, flags = _supply_state(among)
        closed = sa.select(_a.id).where(_is(_a.status, "closed"))  # (ix_accounts_closed)
        each = (sa.select(state.label("state"))
                .select_from(among.outerjoin(flags, flags.c.account_id == among.c.id))
                .where(among.c.id.not_in(closed)).subquery())
        totals = sa.select(sa.select(sa.func.count()).select_from(t.accounts).scalar_subquery().label("all"),
                           sa.select(sa.func.count()).select_from(t.accounts).where(_is(_a.status, "closed"))
                           .scalar_subquery().label("closed"))
        async with self.storage.reading() as conn:
            found = {row.state: int(row.n) for row in await conn.execute(
                sa.select(each.c.state, sa.func.count().label("n")).group_by(each.c.state))}
            every, closed = (await conn.execute(totals)).one()
        counts = {name: found.get(name, 0) for name in SUPPLY_STATES}
        counts["connected"] += int(every) - int(closed) - sum(found.values())  # the open accounts not looked at
        return {**counts, "closed": int(closed)}

    async def about_to_trip(self, limit: int) -> list[Row]:
        order = (_a.deferred_until.asc().nulls_last(), _a.balance_fen, _a.id)
        low = (_a.balance_fen <= _a.warning2_fen, _is(_a.supply, "connected"), _is(_a.status, "open"))  # ix_accounts_low
        page = sa.select(_a.id).where(*low).order_by(*order).limit(limit).subquery("page")
        final = t.accounts.c.state["final_warning_at"].as_string().label("final_warning_at")
        delivered = t.accounts.c.state["final_warning_delivered_at"].as_string().label("final_warning_delivered_at")
        return await self._all(sa.select(_a.id, _a.balance_fen, _a.warning2_fen, _a.deferred_reason, _a.deferred_until,
                                         final, delivered).join_from(t.accounts, page, page.c.id == _a.id).order_by(*order))

    async def deferred(self, limit: int) -> tuple[list[Row], int]:
        where = (_a.deferred_reason != sa.literal_column("''"), _a.status == "open")  # ix_accounts_deferred
        page = sa.select(_a.id).where(*where).order_by(_a.id).limit(limit).subquery("page")
        detail = t.accounts.c.state["deferred_detail"].as_string().label("deferred_detail")
        query = (sa.select(_a.id, _a.balance_fen, _a.deferred_reason, _a.deferred_until, detail)
                 .join_from(t.accounts, page, page.c.id == _a.id).order_by(_a.id))
        async with self.storage.reading() as conn:
            rows = list((await conn.execute(query)).all())
            total = (await conn.execute(sa.select(sa.func.count()).select_from(t.accounts).where(*where))).scalar_one()
        return rows, int(total)

    async def account_table(self, q: TableQuery) -> TableRows:
        where = _account_where(q)
        keys = {"id": [_a.id], "balance": [_a.balance_fen, _a.id], "updated": [_a.updated_at, _a.id]}[q.sort]
        order = _order(keys, q.descending)
        page = sa.select(_a.id).where(*where).order_by(*order).limit(q.limit).offset(q.offset).subquery("page")
        query = (sa.select(_a.id, _a.balance_fen, _a.supply, _a.status, protected().label("protected"),
                           _a.deferred_reason, _a.updated_at)
                 .join_from(t.accounts, page, page.c.id == _a.id).order_by(*order))
        async with self.storage.reading() as conn:
            rows = list((await conn.execute(query)).all())
            total = (await conn.execute(sa.select(sa.func.count()).select_from(t.accounts).where(*where))).scalar_one()
            meters: dict[str, list[Row]] = {}
            if rows:
                found = await conn.execute(
                    sa.select(_m.account_id, _m.id, _m.relay, _m.relay_fault, _m.health, _m.last_success_at)
                    .where(_m.account_id.in_([r.id for r in rows]), _m.status == "active")
                    .order_by(_m.account_id, _m.id))
                for meter in found:
                    meters.setdefault(meter.account_id, []).append(meter)
        return TableRows(rows, int(total), meters)

    async def meter_table(self, q: TableQuery) -> TableRows:
        where = _meter_where(q)
        keys = {"id": [_m.id], "health": [_m.health, _m.id], "last_reading": [_m.last_success_at, _m.id],
                "account": [_m.account_id, _m.id]}[q.sort]
        order = _order(keys, q.descending)
        page = sa.select(_m.id).where(*where).order_by(*order).limit(q.limit).offset(q.offset).subquery("page")
        query = (sa.select(_m.id, _m.account_id, _m.bus_id, _m.model, _m.status, _m.relay, _m.relay_fault, _m.health,
                           _m.last_success_at, _m.consecutive_failures, _m.last_error)
                 .join_from(t.meters, page, page.c.id == _m.id).order_by(*order))
        async with self.storage.reading() as conn:
            rows = list((await conn.execute(query)).all())
            total = (await conn.execute(sa.select(sa.func.count()).select_from(t.meters).where(*where))).scalar_one()
        return TableRows(rows, int(total), {})

    async def energy_at(self, meter_ids: Sequence[str], instants: Sequence[dt.datetime]
                        ) -> dict[str, list[int | None]]:
        pairs = [(meter_id, at) for meter_id in meter_ids for at in instants]
        values: list[int | None] = [None] * len(pairs)
        async with self.storage.reading() as conn:
            for first in range(0, len(pairs), LOOKUPS):
                terms = []
                for n, (meter_id, at) in enumerate(pairs[first:first + LOOKUPS], first):
                    newest = (sa.select(_r.energy_wh).where(_r.meter_id == meter_id, _r.taken_at <= at)
                              .order_by(_r.taken_at.desc()).limit(1).scalar_subquery())
                    terms.append(sa.select(sa.literal_column(str(n)).label("n"), newest.label("energy_wh")))
                query = terms[0] if len(terms) == 1 else sa.union_all(*terms)
                for n, energy in (await conn.execute(query)).all():
                    values[int(n)] = None if energy is None else int(energy)
        width = len(instants)
        return {meter_id: values[i * width:(i + 1) * width] for i, meter_id in enumerate(meter_ids)}

    async def first_energy(self, meter_id: str, since: dt.datetime) -> int | None:
        query = (sa.select(_r.energy_wh).where(_r.meter_id == meter_id, _r.taken_at >= since)
                 .order_by(_r.taken_at).limit(1))
        async with self.storage.reading() as conn:
            energy = (await conn.execute(query)).scalar_one_or_none()
        return None if energy is None else int(energy)
