"""Loading and saving prepaid accounts, and turning what they recorded into rows (ledger entries, outbox).

An account row keeps the engine's whole state as one JSON document (``gateway.domain.state``) plus a few
columns for queries (balance, supply, deferral), all written in the same UPDATE.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from gateway.adapters import bulk
from gateway.adapters import tables as t
from gateway.adapters.bulk import RawJson
from gateway.domain import events as ev
from gateway.domain.account import PrepaidAccount
from gateway.domain.metering import MeterCursor
from gateway.domain.state import STATE_VERSION
from gateway.service.catalog import Catalog
from gateway.service.errors import AccountUnreadable, UnknownAccount, UnknownMeter
from gateway.service.uow import UnitOfWork

__all__ = ["LIMITER", "UnknownAccount", "UnknownMeter", "account_statements", "domain_account", "drain",
           "ensure_catalog_rows", "load_account", "load_accounts", "state_json"]

LIMITER = "rate_limiter"  # the site_state row of the automatic-disconnect rate limiter


async def ensure_catalog_rows(uow: UnitOfWork, catalog: Catalog, now: dt.datetime) -> None:
    """Create database rows for accounts and meters the settings name and the database does not have yet.

    A new account starts with its opening balance as the first ledger entry; existing ones are left alone.
    """
    existing = set((await uow.execute(sa.select(t.accounts.c.id))).scalars())
    new = [catalog.new_account(spec.id) for spec in catalog.accounts.values() if spec.id not in existing]
    if new:
        await uow.execute(sa.insert(t.accounts), [_row(a, now) | {"id": a.id} for a in new])
        await uow.execute(sa.insert(t.ledger), [dict(
            account_id=a.id, kind="opening", amount_fen=a.balance_fen, balance_after_fen=a.balance_fen,
            created_at=now, reference="settings") for a in new])
    known = {row.id: row.account_id for row in await uow.execute(sa.select(t.meters.c.id, t.meters.c.account_id))}
    new_meters = [dict(id=m.id, account_id=m.account_id) for m in catalog.meters.values() if m.id not in known]
    if new_meters:
        await uow.execute(sa.insert(t.meters), new_meters)
    for meter in catalog.meters.values():
        if meter.id in known and known[meter.id] != meter.account_id:
            await uow.execute(sa.update(t.meters).where(t.meters.c.id == meter.id).values(account_id=meter.account_id))
    # The rate limiter's row exists from the start: a batch that counts a trip updates it under a row lock, and
    # two instances never race to insert it.
    dialect = uow.conn.dialect.name
    insert = (sqlite_insert if dialect == "sqlite" else postgresql_insert)(t.site_state)
    await uow.execute(insert.values(name=LIMITER, state={"recent": []}).on_conflict_do_nothing())


async def load_account(uow: UnitOfWork, catalog: Catalog, account_id: str) -> PrepaidAccount:
    """Load one account for change (row-locked on PostgreSQL); ``AccountUnreadable`` if its state can't be read."""
    unreadable: dict[str, AccountUnreadable] = {}
    accounts = await load_accounts(uow, catalog, [account_id], unreadable=unreadable)
    if account_id in unreadable:
        raise unreadable[account_id]
    if account_id not in accounts:
        raise UnknownAccount(account_id)
    return accounts[account_id]


def domain_account(catalog: Catalog, account_id: str, state: Any,
                   unreadable: dict[str, AccountUnreadable] | None = None) -> PrepaidAccount | None:
    """The domain account of a stored state. A state that can't be converted (a value an older version let in,
    such as a time beyond year 9999 in UTC) raises ``AccountUnreadable``, or with ``unreadable`` is noted there
    and gives None: one such account never stops the others."""
    try:
        return catalog.account(account_id, state)
    except (ValueError, TypeError, KeyError, IndexError, OverflowError, AttributeError) as exc:
        error = AccountUnreadable(account_id, f"{type(exc).__name__}: {exc}"[:200])
        if unreadable is None:
            raise error from exc
        unreadable[account_id] = error
        return None


class AccountCache:
    """The writer's accounts as they were last committed, keyed by id with the row's version.

    A cached account is reused only while the row's version is unchanged (another instance sharing the
    database bumps it); after a failed transaction the cache must be cleared, as its objects may hold changes
    that were rolled back.
    """

    def __init__(self, size: int = 100_000) -> None:
        self.size = size
        self.entries: dict[str, tuple[int, PrepaidAccount]] = {}

    def clear(self) -> None:
        self.entries.clear()


async def load_accounts(uow: UnitOfWork | Callable[[], Awaitable[UnitOfWork]], catalog: Catalog,
                        account_ids: list[str], *,
                        cache: AccountCache | None = None, versions: dict[str, int] | None = None,
                        trust_cache: bool = False,
                        unreadable: dict[str, AccountUnreadable] | None = None) -> dict[str, PrepaidAccount]:
    """Load accounts for change, row-locked on PostgreSQL (in id order, so that writers never deadlock).

    With a ``cache``, ``versions`` (when given) receives each account's version as read, for ``account_statements``.
    ``trust_cache``: take cached accounts without reading their versions (SQLite, where this process's writer is
    the only one; the version-guarded UPDATE still catches a row changed behind its back). ``uow`` may be a
    function that opens one: it is called only if the database must be read. ``unreadable`` receives the
    accounts whose stored state can't be read (they are left out of the result); without it they raise
    ``AccountUnreadable``.
    """
    ids = sorted(set(account_ids) & set(catalog.accounts))
    if not ids:
        return {}
    c = t.accounts.c
    if cache is None:
        uow = await _opened(uow)
        rows = await uow.execute(sa.select(c.id, c.state).where(c.id.in_(ids)).order_by(c.id).with_for_update())
        loaded = {row.id: domain_account(catalog, row.id, row.state, unreadable) for row in rows}
        return {account_id: account for account_id, account in loaded.items() if account is not None}
    if versions is None:
        versions = {}
    out: dict[str, PrepaidAccount] = {}
    missing = []
    if trust_cache:
        for account_id in ids:
            hit = cache.entries.get(account_id)
            if hit is not None:
                versions[account_id] = hit[0]  # the cache holds the version its last write left
                out[account_id] = hit[1]
            else:
                missing.append(account_id)
    else:
        uow = await _opened(uow)
        versions.update({row.id: row.version for row in await uow.select_in(t.accounts, ("id", "version"), "id",
                                                                            ids, for_update=True)})
        for account_id, version in versions.items():
            hit = cache.entries.get(account_id)
            if hit is not None and hit[0] == version:
                out[account_id] = hit[1]
            else:
                missing.append(account_id)
    if missing:
        uow = await _opened(uow)
        for row in await uow.execute(sa.select(c.id, c.version, c.state).where(c.id.in_(missing))):
            account = domain_account(catalog, row.id, row.state, unreadable)
            if account is not None:
                versions[row.id] = row.version
                out[row.id] = account
    if len(cache.entries) > cache.size:
        cache.clear()
    for account_id, account in out.items():
        # The writer saves every account it loads, which bumps the version by one; if the transaction fails
        # the writer clears the cache.
        cache.entries[account_id] = (versions[account_id] + 1, account)
    return out


async def _opened(uow: UnitOfWork | Callable[[], Awaitable[UnitOfWork]]) -> UnitOfWork:
    return uow if isinstance(uow, UnitOfWork) else await uow()


def account_statements(dialect: str, accounts: list[PrepaidAccount], now: dt.datetime,
                       versions: dict[str, int] | None = None) -> list[bulk.Statement]:
    """The UPDATE of the accounts' rows (state, balance, supply, deferral), prepared.

    With ``versions`` (as ``load_accounts`` read them), an account changed meanwhile by another writer raises
    ``StaleWrite`` instead of being overwritten.
    """
    rows = []
    for account in accounts:
        row = _row(account, now)
        row["id"] = account.id
        if versions is not None:
            row["version"] = versions[account.id]
        rows.append(row)
    return bulk.update_statements(dialect, t.accounts, "id", rows, increment="version")


def _row(account: PrepaidAccount, now: dt.datetime) -> dict[str, Any]:
    return dict(balance_fen=account.balance_fen, supply=account.supply.value, deferred_reason=account.deferred_reason,
                deferred_until=account.deferred_until, state=state_json(account), updated_at=now)


def state_json(account: PrepaidAccount) -> RawJson:
    """``account.state_dict()`` as JSON text, encoded by orjson from plain dicts (the writer's hot path: orjson
    takes several times longer over a dataclass than over a dict of its fields).

    Values that ``PrepaidAccount.from_state`` takes by default (no hold, no deferral, no emergency credit, a
    meter's default configuration, nothing quarantined...) are left out: the row stays small, and a smaller row
    is fewer pages for SQLite to write. It reads back to the same state."""
    a, b, e = account, account.billing, account.emergency
    document: dict[str, Any] = {"version": STATE_VERSION, "balance_fen": a.balance_fen, "supply": a.supply.value}
    if a.warned_level:
        document["warned_level"] = a.warned_level
    for name in _OPTIONAL:
        value = getattr(a, name)
        if value:  # False, "" and None are the defaults
            document[name] = value
    billing: dict[str, Any] = {"period_start": b.period_start, "energy_wh": b.energy_wh, "charged_fen": b.charged_fen}
    if b.rate_wh:
        billing["rate_wh"] = b.rate_wh
    document["billing"] = billing
    if e.outstanding_fen or e.granted_period is not None or e.granted_at is not None or e.repaid:
        document["emergency"] = {"outstanding_fen": e.outstanding_fen, "granted_period": e.granted_period,
                                 "granted_at": e.granted_at, "repaid": e.repaid_rows()}
    meters = document["meters"] = {}
    for meter_id, c in a.cursors.items():
        cursor: dict[str, Any] = {"energy_wh": c.energy_wh, "taken_at": c.taken_at, "seen_at": c.seen_at}
        if c.rates_wh is not None:
            cursor["rates_wh"] = c.rates_wh
        if c.pending is not None:
            cursor["pending"] = c.pending
        if c.max_power_w != _METER.max_power_w:
            cursor["max_power_w"] = c.max_power_w
        if c.margin != _METER.margin:
            cursor["margin"] = c.margin
        if c.resolution_wh != _METER.resolution_wh:
            cursor["resolution_wh"] = c.resolution_wh
        if c.rollover_wh is not None:
            cursor["rollover_wh"] = c.rollover_wh
        meters[meter_id] = cursor
    return RawJson(bulk.dumps_json(document))


_OPTIONAL = ("operator_protected", "hold_until", "manual_disconnect", "deferred_reason", "deferred_detail",
             "deferred_until", "final_warning_at")
_METER = MeterCursor("")  # a meter's default configuration, as MeterCursor.from_dict takes it


def drain(account: PrepaidAccount, now: dt.datetime) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Take the account's recorded ledger entries and events as rows (ledger, outbox) and clear them."""
    entries = []
    for entry in account.entries:
        source, payment_id = entry.payment or (None, None)
        entries.append(dict(account_id=account.id, kind=entry.kind.value, amount_fen=entry.amount_fen,
                            balance_after_fen=entry.balance_after_fen, created_at=now,
                            reference=entry.reference or None, payment_source=source, payment_id=payment_id,
                            meter_id=entry.meter_id, energy_wh=entry.energy_wh, reading_wh=entry.reading_wh,
                            period=entry.period, detail=entry.detail[:500] or None))
    outbox = [dict(topic=event_topic(e), payload=event_payload(e, now), created_at=now) for e in account.events]
    account.entries.clear()
    account.events.clear()
    return entries, outbox


_TOPICS: dict[type[ev.Event], str] = {
    **dict.fromkeys((ev.AccountCharged, ev.PaymentReceived, ev.PaymentReversed), "accounts/{}/balance"),
    **dict.fromkeys((ev.ReadingQuarantined, ev.DisconnectDeferred), "alarms"),
}


def event_topic(event: ev.Event) -> str:
    return _TOPICS.get(type(event), "accounts/{}/events").format(event.account_id)


_FIELDS: dict[type[ev.Event], tuple[str, ...]] = {}


def event_payload(event: ev.Event, now: dt.datetime) -> dict[str, Any]:
    """``ev.event_dict(event)`` with the time it was recorded (``at``); datetimes are left for the JSON column to
    write (as ISO 8601 UTC, like ``event_dict``)."""
    kind = type(event)
    names = _FIELDS.get(kind)
    if names is None:
        names = _FIELDS[kind] = tuple(f.name for f in dataclasses.fields(event))
    payload: dict[str, Any] = {"type": kind.__name__}
    for name in names:
        payload[name] = getattr(event, name)
    payload["at"] = now
    return payload
