"""The lists' storage (``gateway.service.lists.ListStore``) on SQLAlchemy Core: SQLite or PostgreSQL.

Every filter is a condition of the query, and every page a keyset (``id > after``, ``id < before_id``, or
``(time, id) < (before, before_id)`` for commands and the audit log, newest first by time), so a page costs the
same at the end of a long list as at its start. The indexes: accounts by id and balance (``ix_accounts_balance``),
meters by account, commands by meter and by time, the audit log by target, actor and time (migration 0007).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.adapters import tables as t
from gateway.adapters.outbound_rows import notice_record
from gateway.adapters.sql import SqlStorage, command_record
from gateway.service.commands import CommandRecord
from gateway.service.lists import AccountFilter, AuditFilter, CommandFilter, ListStore, MeterFilter, NoticeFilter, Row
from gateway.service.ports import NoticeRecord

__all__ = ["SqlListStore", "account_state", "protected"]

_a, _m, _c, _log = t.accounts.c, t.meters.c, t.commands.c, t.audit_log.c
WIDE = 2000  # a balance range (an actor) with at least this many rows is read in the list's order


def protected() -> sa.ColumnElement[bool]:
    """Under protection (保电): by configuration (the column) or by an admin (``operator_protected`` in the state
    document, present only when true)."""
    state = t.accounts.c.state
    # the text's LIKE first: most documents don't name the key, and it costs less than reading the JSON
    named = sa.cast(state, sa.Text).like('%"operator_protected"%')
    by_admin = sa.and_(named, sa.func.coalesce(state["operator_protected"].as_boolean(), sa.false()))
    return sa.or_(_a.protected, by_admin)


def account_state(state: str) -> sa.ColumnElement[bool]:
    """The accounts whose supply, as ``GET /v1/accounts/{id}`` shows it (``gateway.domain.relay.supply_state``
    over the active meters), is ``state``: the same rules, as EXISTS over the account's meters."""
    meter = t.meters.alias("m")

    def some(*where: sa.ColumnElement[bool]) -> sa.Exists:
        return sa.exists().where(meter.c.account_id == _a.id, meter.c.status == "active", *where)

    off = _a.supply == "disconnected"
    failed_off, failed_on = some(meter.c.relay_fault == "disconnect_failed"), some(
        meter.c.relay_fault == "reconnect_failed")
    any_open, any_armed = some(meter.c.relay == "open"), some(meter.c.relay == "armed")
    all_open = sa.and_(some(), ~some(meter.c.relay != "open"))
    rules = {
        "disconnect_failed": sa.and_(off, failed_off),
        "disconnected": sa.and_(off, ~failed_off, all_open),
        "disconnecting": sa.and_(off, ~failed_off, ~all_open),
        "reconnect_failed": sa.and_(~off, failed_on),
        "reconnecting": sa.and_(~off, ~failed_on, any_open),
        "armed": sa.and_(~off, ~failed_on, ~any_open, any_armed),
        "connected": sa.and_(~off, ~failed_on, ~any_open, ~any_armed),
    }
    return rules[state]


def _balance(which: AccountFilter) -> Callable[[sa.ColumnElement[int]], sa.ColumnElement[bool]] | None:
    """The balance range as a condition on a column (or an expression no index answers: ``balance_fen + 0``)."""
    low, high = which.balance_min_fen, which.balance_max_fen
    if low is None and high is None:
        return None

    def within(column: sa.ColumnElement[int]) -> sa.ColumnElement[bool]:
        return sa.and_(sa.true() if low is None else column >= low, sa.true() if high is None else column <= high)

    return within


async def _wide(conn: AsyncConnection, table: sa.Table, where: sa.ColumnElement[bool]) -> bool:
    """Whether at least WIDE rows of ``table`` meet ``where`` (counted through the index that answers it, up to
    WIDE)."""
    probe = sa.select(sa.literal(1)).select_from(table).where(where).limit(WIDE).subquery()
    return (await conn.execute(sa.select(sa.func.count()).select_from(probe))).scalar_one() >= WIDE


def _older(time: sa.ColumnElement[Any], key: sa.ColumnElement[Any], at: Any, before: Any
           ) -> tuple[sa.ColumnElement[bool], sa.ColumnElement[bool]]:
    """``(time, key) < (at, before)``, written so that an index on ``time`` answers it as a range."""
    return time <= at, sa.or_(time < at, key < before)


def _equal(query: sa.Select[tuple[object, ...]], pairs: tuple[tuple[sa.ColumnElement[object], object], ...]
           ) -> sa.Select[tuple[object, ...]]:
    for column, value in pairs:
        if value is not None:
            query = query.where(column == value)
    return query


def _within(query: sa.Select[tuple[object, ...]], column: sa.ColumnElement[dt.datetime], since: dt.datetime | None,
            until: dt.datetime | None) -> sa.Select[tuple[object, ...]]:
    """Rows whose ``column`` is at or after ``since`` and before ``until`` (each when given)."""
    if since is not None:
        query = query.where(column >= since)
    if until is not None:
        query = query.where(column < until)
    return query


def _action(action: str) -> sa.ColumnElement[bool]:
    """One action, or every action under a prefix ending in ``.`` (``command.``: a range on the column, which
    needs no escaping of LIKE's wildcards; ``/`` is the character after ``.``)."""
    if action.endswith("."):
        return sa.and_(_log.action >= action, _log.action < action[:-1] + "/")
    return _log.action == action


class SqlListStore(ListStore):
    def __init__(self, storage: SqlStorage) -> None:
        self.storage = storage

    async def accounts(self, which: AccountFilter, limit: int) -> tuple[list[Row], dict[str, list[Row]]]:
        tariff = sa.func.coalesce(t.accounts.c.state[("tariff_switch", "name")].as_string(), _a.tariff)
        query = sa.select(_a.id, _a.balance_fen, _a.supply, _a.status, tariff.label("tariff"), _a.credit_class,
                          protected().label("protected"), _a.deferred_reason, _a.updated_at)
        query = _equal(query, ((_a.supply, which.supply), (_a.status, which.status),
                               (_a.credit_class, which.credit_class)))
        if which.state is not None:
            query = query.where(account_state(which.state))
        balance = _balance(which)
        if which.protected is not None:
            query = query.where(protected() if which.protected else ~protected())
        if which.meter_id is not None:
            query = query.where(_a.id.in_(sa.select(_m.account_id).where(_m.id == which.meter_id)))
        if which.after is not None:
            query = query.where(_a.id > which.after)
        async with self.storage.reading() as conn:
            if balance is not None:
                # A narrow range: the balance index finds its few rows, then they are sorted by id. A wide one:
                # walking the accounts by id finds a page soonest, and the planner (SQLite's at least) can't
                # tell the two apart; a look at up to WIDE rows of the range through the index tells.
                wide = await _wide(conn, t.accounts, balance(_a.balance_fen))
                query = query.where(balance(_a.balance_fen + 0 if wide else _a.balance_fen))
            rows = list((await conn.execute(query.order_by(_a.id).limit(limit))).all())
            meters: dict[str, list[Row]] = {}
            if rows:
                found = await conn.execute(sa.select(_m.account_id, _m.id, _m.relay, _m.relay_fault)
                                           .where(_m.account_id.in_([r.id for r in rows]), _m.status == "active")
                                           .order_by(_m.account_id, _m.id))
                for meter in found:
                    meters.setdefault(meter.account_id, []).append(meter)
        return rows, meters

    async def meters(self, which: MeterFilter, limit: int) -> list[Row]:
        r = t.readings.c
        newest = (sa.select(sa.func.max(r.taken_at)).where(r.meter_id == _m.id).scalar_subquery()
                  .label("newest_taken_at"))
        query = sa.select(_m.id, _m.account_id, _m.status, _m.bus_id, _m.unit_id, _m.address, _m.model, _m.relay,
                          _m.relay_fault, _m.health, _m.consecutive_failures, _m.last_success_at,
                          sa.type_coerce(newest, t.UtcDateTime()).label("newest_taken_at"))
        query = _equal(query, ((_m.bus_id, which.bus), (_m.health, which.health), (_m.relay, which.relay),
                               (_m.relay_fault, which.relay_fault), (_m.model, which.model),
                               (_m.account_id, which.account_id), (_m.status, which.status)))
        if which.after is not None:
            query = query.where(_m.id > which.after)
        async with self.storage.reading() as conn:
            return list((await conn.execute(query.order_by(_m.id).limit(limit))).all())

    async def commands(self, which: CommandFilter, limit: int) -> list[CommandRecord]:
        query = _equal(sa.select(t.commands), ((_c.meter_id, which.meter_id), (_c.state, which.state),
                                               (_c.origin, which.origin)))
        query = _within(query, _c.created_at, which.since, which.until)
        if which.before_id is not None:  # a stable cursor: (time, id); alone, the time is that command's
            at = which.before if which.before is not None else (
                sa.select(_c.created_at).where(_c.id == which.before_id).scalar_subquery())
            query = query.where(*_older(_c.created_at, _c.id, at, which.before_id))
        elif which.before is not None:  # the time alone (the older cursor): commands of that very time are skipped
            query = query.where(_c.created_at < which.before)
        async with self.storage.reading() as conn:
            rows = (await conn.execute(query.order_by(_c.created_at.desc(), _c.id.desc()).limit(limit))).all()
        return [command_record(row) for row in rows]

    async def notices(self, which: NoticeFilter, limit: int) -> list[NoticeRecord]:
        c = t.notices.c
        query = _equal(sa.select(t.notices), ((c.state, which.state), (c.account_id, which.account_id),
                                              (c.kind, which.kind)))
        query = _within(query, c.created_at, which.since, which.until)
        if which.before_id is not None:
            query = query.where(c.id < which.before_id)
        async with self.storage.reading() as conn:
            rows = (await conn.execute(query.order_by(c.id.desc()).limit(limit))).all()
        return [notice_record(row) for row in rows]

    async def audit(self, which: AuditFilter, limit: int) -> list[Row]:
        """Newest first: by time, then id. Each way a row may concern the account or meter is a query of its own
        that an index answers (the target's, the actor's or the time's); their pages are merged."""
        query = sa.select(t.audit_log)
        if which.action is not None:
            query = query.where(_action(which.action))
        query = _within(query, _log.at, which.since, which.until)
        if which.before_id is not None:  # the cursor's row, then the rows after it (at, id)
            at = sa.select(_log.at).where(_log.id == which.before_id).scalar_subquery()
            query = query.where(*_older(_log.at, _log.id, at, which.before_id))
        branches = [query]
        if which.account_id is not None:
            branches = [query.where(where) for where in _of_account(which.account_id)]
        if which.meter_id is not None:
            branches = [branch.where(where) for branch in branches for where in _of_meter(which.meter_id)]
        found: dict[int, Row] = {}
        async with self.storage.reading() as conn:
            if which.actor is not None:
                # A key with few rows: its index finds them, then they are sorted by time. A busy one (the
                # gateway's own): walking the time index finds a page soonest; up to WIDE of its rows tell.
                wide = await _wide(conn, t.audit_log, _log.actor == which.actor)
                actor = _log.actor.concat("") if wide else _log.actor  # (an expression no index answers)
                branches = [branch.where(actor == which.actor) for branch in branches]
            for branch in branches:
                for row in await conn.execute(branch.order_by(_log.at.desc(), _log.id.desc()).limit(limit)):
                    found[row.id] = row
        return sorted(found.values(), key=lambda row: (row.at, row.id), reverse=True)[:limit]


def _of_account(account_id: str) -> list[sa.ColumnElement[bool]]:
    """Audit rows about an account: its own (target: the account), its meters' (target: a meter it has or had)
    and their commands' (target: a command id)."""
    meters = sa.select(_m.id).where(_m.account_id == account_id)
    return [_log.target == account_id, _log.target.in_(meters),
            _log.target.in_(sa.select(_c.id).where(_c.meter_id.in_(meters)))]


def _of_meter(meter_id: str) -> list[sa.ColumnElement[bool]]:
    """Audit rows about a meter: its own (target: the meter), its commands' (target: a command id), and its
    account's rows that name it in their detail (an operator's disconnect or reconnect, a quarantined reading's
    decision: ``meter_id``; a swap (换表): ``old`` or ``new``)."""
    detail = t.audit_log.c.detail
    named = sa.or_(*(detail[key].as_string() == meter_id for key in ("meter_id", "old", "new")))
    account = sa.select(_m.account_id).where(_m.id == meter_id)
    return [_log.target == meter_id, _log.target.in_(sa.select(_c.id).where(_c.meter_id == meter_id)),
            sa.and_(_log.target.in_(account), named)]
