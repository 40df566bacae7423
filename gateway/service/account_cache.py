"""The writer's accounts in memory, and what accounts recorded as rows.

- ``AccountCache``: accounts as the writer last committed them, reused while their row's version is unchanged.
- ``load_accounts``: accounts for change, from the cache or from the ``AccountRepository``.
- ``drain``: the ledger entries and events an account recorded, as ledger rows and outbox messages.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Any

from gateway.domain import events as ev
from gateway.domain.account import PrepaidAccount
from gateway.service.catalog import Catalog
from gateway.service.errors import AccountUnreadable, UnknownAccount
from gateway.service.ports import UnitOfWork

__all__ = ["AccountCache", "domain_account", "drain", "event_payload", "event_topic", "load_account",
           "load_accounts"]


async def load_account(uow: UnitOfWork, catalog: Catalog, account_id: str) -> PrepaidAccount:
    """Load one account (to look at it: its write, if any, goes through the writer); ``AccountUnreadable`` if its
    state can't be read."""
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
    """Load accounts for change; ``versions`` (when given) receives each one's version as read: the write
    checks that the row still has it (``BatchChanges.accounts``).

    With a ``cache``, a cached account is reused when its row's version is the one the cache holds;
    ``trust_cache``: without reading the versions (this process is the database's only writer). ``uow`` may be a
    function that opens one: it is called only if the database must be read. ``unreadable`` receives the
    accounts whose stored state can't be read (they are left out of the result); without it they raise
    ``AccountUnreadable``.
    """
    ids = sorted(set(account_ids) & set(catalog.accounts))
    if versions is None:
        versions = {}
    if not ids:
        return {}
    out: dict[str, PrepaidAccount] = {}
    missing = ids
    if cache is not None:
        missing = []
        if trust_cache:
            known = {account_id: hit[0] for account_id in ids if (hit := cache.entries.get(account_id)) is not None}
        else:
            known = await (await _opened(uow)).accounts.versions(ids)
        for account_id in ids:
            hit = cache.entries.get(account_id)
            if hit is not None and known.get(account_id) == hit[0]:
                versions[account_id] = hit[0]
                out[account_id] = hit[1]
            else:
                missing.append(account_id)
    if missing:
        for account_id, (version, state) in (await (await _opened(uow)).accounts.states(missing)).items():
            account = domain_account(catalog, account_id, state, unreadable)
            if account is not None:
                versions[account_id] = version
                out[account_id] = account
    if cache is not None:
        if len(cache.entries) > cache.size:
            cache.clear()
        for account_id, account in out.items():
            # What the writer's commit will leave (it bumps the version of the accounts it changes; one it
            # doesn't change is put back as read, and after a failed transaction the cache is cleared).
            cache.entries[account_id] = (versions[account_id] + 1, account)
    return out


async def _opened(uow: UnitOfWork | Callable[[], Awaitable[UnitOfWork]]) -> UnitOfWork:
    return uow if isinstance(uow, UnitOfWork) else await uow()


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
