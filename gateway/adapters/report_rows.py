"""The reports' storage (``gateway.service.reports.ReportStore``) on SQLAlchemy Core: SQLite or PostgreSQL.

Every query is keyset-paged (``after`` the last row's sort key, ``limit`` rows) and served by an index:
accounts by ``ix_accounts_balance`` / their key, an account's ledger by ``ix_ledger_account``, commands by
``ix_commands_created`` and ``ix_commands_meter_state``, payments by ``ix_payments_received``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa

from gateway.adapters import tables as t
from gateway.adapters.sql import SqlStorage
from gateway.service.reports import ReportStore, Row

__all__ = ["SqlReportStore"]

_a, _l, _c, _p, _r = t.accounts.c, t.ledger.c, t.commands.c, t.payments.c, t.reading_days.c


def _after(columns: tuple[Any, ...], key: tuple[Any, ...]) -> sa.ColumnElement[bool]:
    """(c1, c2, ...) > key, spelt out (row values compare the same on both databases, but binds lose types)."""
    first, *rest = columns
    if not rest:
        return first > key[0]  # type: ignore[no-any-return]
    return sa.or_(first > key[0], sa.and_(first == key[0], _after(tuple(rest), key[1:])))


class SqlReportStore(ReportStore):
    def __init__(self, storage: SqlStorage) -> None:
        self.storage = storage

    async def _all(self, query: sa.Select[Any]) -> list[Row]:
        async with self.storage.reading() as conn:
            return list((await conn.execute(query)).all())

    async def _one(self, query: sa.Select[Any]) -> Row:
        async with self.storage.reading() as conn:
            return (await conn.execute(query)).one()

    # --- arrears ------------------------------------------------------------------------------------------
    async def arrears(self, below_fen: int, *, after: str | None, limit: int) -> list[Row]:
        k, e, p = t.ledger.alias("k"), t.ledger.alias("e"), t.ledger.alias("p")
        # each look-up walks the account's index range from one end and stops at its first match
        last_ok = (sa.select(k.c.id)  # the last entry at or above the threshold
                   .where(k.c.account_id == _a.id, k.c.balance_after_fen >= below_fen)
                   .order_by(k.c.id.desc()).limit(1).correlate(t.accounts).scalar_subquery())
        below_since = (sa.select(e.c.created_at)  # the entry after it (ids grow with time)
                       .where(e.c.account_id == _a.id, e.c.id > sa.func.coalesce(last_ok, 0))
                       .order_by(e.c.id).limit(1).scalar_subquery())
        last_payment = (sa.select(p.c.id).where(p.c.account_id == _a.id, p.c.kind == "payment")
                        .order_by(p.c.id.desc()).limit(1).scalar_subquery())
        query = (sa.select(_a.id, _a.balance_fen, _a.supply, _a.credit_class, _a.protected,
                           below_since.label("below_since"), last_payment.label("payment_entry"))
                 .where(_a.status == "open", _a.balance_fen < below_fen))
        if after is not None:
            query = query.where(_a.id > after)
        page = query.order_by(_a.id).limit(limit).subquery()
        rows = await self._all(
            sa.select(page.c.id, page.c.balance_fen, page.c.supply, page.c.credit_class, page.c.protected,
                      sa.type_coerce(page.c.below_since, t.UtcDateTime).label("below_since"),
                      _l.created_at.label("last_payment_at"), _l.amount_fen.label("last_payment_fen"))
            .select_from(page.outerjoin(t.ledger, _l.id == page.c.payment_entry))
            .order_by(page.c.id))
        return rows

    async def arrears_totals(self, below_fen: int) -> Row:
        return await self._one(sa.select(sa.func.count().label("accounts"),
                                         sa.func.sum(_a.balance_fen).label("balance_fen"))
                               .where(_a.status == "open", _a.balance_fen < below_fen))

    # --- disconnections -----------------------------------------------------------------------------------
    def _disconnects(self, since: dt.datetime, until: dt.datetime, created_after: dt.datetime
                     ) -> list[sa.ColumnElement[bool]]:
        return [_c.created_at >= created_after, _c.created_at < until, _c.action == "open",
                _c.state == "confirmed", _c.updated_at >= since, _c.updated_at < until]

    async def disconnections(self, since: dt.datetime, until: dt.datetime, *, created_after: dt.datetime,
                             after: tuple[dt.datetime, str] | None, limit: int) -> list[Row]:
        close = t.commands.alias("close")
        reconnected = (sa.select(sa.func.min(close.c.updated_at))
                       .where(close.c.meter_id == _c.meter_id, close.c.state == "confirmed",
                              close.c.action == "close", close.c.updated_at > _c.updated_at).scalar_subquery())
        query = (sa.select(_c.id, _c.meter_id, t.meters.c.account_id, _c.origin, _c.reason, _c.operator,
                           _c.updated_at.label("disconnected_at"),
                           sa.type_coerce(reconnected, t.UtcDateTime).label("reconnected_at"))
                 .select_from(t.commands.outerjoin(t.meters, t.meters.c.id == _c.meter_id))
                 .where(*self._disconnects(since, until, created_after)))
        if after is not None:
            query = query.where(_after((_c.updated_at, _c.id), after))
        return await self._all(query.order_by(_c.updated_at, _c.id).limit(limit))

    async def disconnection_count(self, since: dt.datetime, until: dt.datetime, *, created_after: dt.datetime
                                  ) -> int:
        row = await self._one(sa.select(sa.func.count()).where(*self._disconnects(since, until, created_after)))
        return int(row[0])

    # --- payments -----------------------------------------------------------------------------------------
    async def payment_groups(self, start: dt.datetime, end: dt.datetime) -> list[Row]:
        channel = sa.func.coalesce(_p.channel, "")
        reversed_ = _p.reversed_at.is_not(None)
        return await self._all(
            sa.select(_p.source, channel.label("channel"), sa.func.count().label("count"),
                      sa.func.sum(_p.amount_fen).label("total_fen"),
                      sa.func.sum(sa.case((reversed_, 1), else_=0)).label("reversed_count"),
                      sa.func.sum(sa.case((reversed_, _p.amount_fen), else_=0)).label("reversed_fen"))
            .where(_p.received_at >= start, _p.received_at < end)
            .group_by(_p.source, channel).order_by(_p.source, channel))

    # --- reading timeliness -------------------------------------------------------------------------------
    def _days(self, first: str, last: str, bus: str | None) -> list[sa.ColumnElement[bool]]:
        where = [_r.day >= first, _r.day <= last]
        return where if bus is None else [*where, _r.bus_id == bus]

    async def reading_days(self, first: str, last: str, *, bus: str | None, after: tuple[str, str] | None,
                           limit: int) -> list[Row]:
        query = sa.select(t.reading_days).where(*self._days(first, last, bus))
        if after is not None:
            query = query.where(_after((_r.day, _r.bus_id), after))
        return await self._all(query.order_by(_r.day, _r.bus_id).limit(limit))

    async def reading_totals(self, first: str, last: str, *, bus: str | None) -> Row:
        return await self._one(sa.select(*(sa.func.sum(c).label(c.name) for c in (
            _r.meters, _r.read, _r.on_time, _r.polls_ok, _r.polls_failed))).where(*self._days(first, last, bus)))

    # --- consumption --------------------------------------------------------------------------------------
    def _charges(self, account_id: str | None, period: str | None, since: dt.datetime | None,
                 until: dt.datetime | None) -> list[sa.ColumnElement[bool]]:
        where = [_l.kind == "charge"]
        for column, value in ((_l.account_id, account_id), (_l.period, period)):
            if value is not None:
                where.append(column == value)
        if since is not None:
            where.append(_l.created_at >= since)
        if until is not None:
            where.append(_l.created_at < until)
        return where

    async def consumption(self, *, account_id: str | None, period: str | None, since: dt.datetime | None,
                          until: dt.datetime | None, after: tuple[str, str] | None, limit: int) -> list[Row]:
        """Grouped a window of accounts at a time (the next ``limit`` account ids: an index range of the ledger),
        so that a page never groups the whole ledger; windows without charges are passed over."""
        where = self._charges(account_id, period, since, until)
        period_ = sa.func.coalesce(_l.period, "")
        grouped = (sa.select(_l.account_id, period_.label("period"),
                             sa.func.sum(_l.energy_wh).label("energy_wh"),
                             (-sa.func.sum(_l.amount_fen)).label("charges_fen"), sa.func.count().label("entries"),
                             sa.type_coerce(sa.func.min(_l.created_at), t.UtcDateTime).label("first_at"),
                             sa.type_coerce(sa.func.max(_l.created_at), t.UtcDateTime).label("last_at"))
                   .where(*where).group_by(_l.account_id, period_).order_by(_l.account_id, period_))
        rows: list[Row] = []
        low = None if after is None else after[0]  # accounts from here on (inclusive while resuming a cursor)
        async with self.storage.reading() as conn:
            while len(rows) < limit:
                ids = sa.select(_a.id).order_by(_a.id).offset(limit - 1).limit(1)
                if low is not None:
                    ids = ids.where(_a.id >= low if after is not None else _a.id > low)
                upper = None if account_id is not None else (await conn.execute(ids)).scalar_one_or_none()
                query = grouped
                if low is not None:
                    query = query.where(_l.account_id >= low if after is not None else _l.account_id > low)
                if upper is not None:
                    query = query.where(_l.account_id <= upper)
                if after is not None:
                    query = query.having(_after((_l.account_id, period_), after))
                rows += (await conn.execute(query.limit(limit - len(rows)))).all()
                if upper is None:
                    break
                low, after = upper, None
        return rows

    async def consumption_totals(self, *, account_id: str | None, period: str | None, since: dt.datetime | None,
                                 until: dt.datetime | None) -> Row:
        return await self._one(sa.select(sa.func.sum(_l.energy_wh).label("energy_wh"),
                                         (-sa.func.sum(_l.amount_fen)).label("charges_fen"),
                                         sa.func.count(sa.distinct(_l.account_id)).label("accounts"))
                               .where(*self._charges(account_id, period, since, until)))
