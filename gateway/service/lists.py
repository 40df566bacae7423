"""Lists for operations (docs/api.md, "Lists and the audit log"): accounts, meters, relay commands and notices by
their filters, and the audit log, each a page at a time behind a keyset cursor.

``Lists`` shapes the rows (keyed as the API's response schemas); the ``ListStore`` port reads them, and its SQL
lives in ``gateway.adapters.list_store``. A page is read with one row more than asked for: the cursor of the next
page is given only when there is one. Every filter is applied in the query, none after it, so a page is never
short while more rows match.
"""

from __future__ import annotations

import abc
import dataclasses
import datetime as dt
from collections.abc import Mapping
from typing import Any

from drivers.base import Reading
from gateway.domain.money import format_fen
from gateway.domain.relay import supply_state
from gateway.service.commands import CommandRecord
from gateway.service.ports import NoticeRecord
from gateway.service.views import command_shape, notice_shape

__all__ = ["SUPPLY_STATES", "AccountFilter", "AuditFilter", "CommandFilter", "ListStore", "Lists", "MeterFilter",
           "NoticeFilter"]

Row = Any  # a stored row: its columns as attributes

# the account's supply as ``GET /v1/accounts/{id}`` shows it (``gateway.domain.relay.supply_state``)
SUPPLY_STATES = ("connected", "disconnected", "disconnecting", "reconnecting", "armed", "disconnect_failed",
                 "reconnect_failed")


@dataclasses.dataclass(frozen=True, kw_only=True)
class AccountFilter:
    state: str | None = None  # one of SUPPLY_STATES: computed from the supply and the active meters' relays
    supply: str | None = None  # the stored supply the engine wants: connected | disconnected
    status: str | None = None  # open | closed
    balance_min_fen: int | None = None  # inclusive
    balance_max_fen: int | None = None  # inclusive
    credit_class: str | None = None
    protected: bool | None = None  # by configuration or by an admin
    meter_id: str | None = None  # the account the meter belongs to (active or retired)
    after: str | None = None  # page: accounts whose id sorts after this
    limit: int = 100


@dataclasses.dataclass(frozen=True, kw_only=True)
class MeterFilter:
    bus: str | None = None
    health: str | None = None
    relay: str | None = None
    relay_fault: str | None = None
    model: str | None = None
    account_id: str | None = None
    status: str | None = None  # active | retired
    after: str | None = None
    limit: int = 100


@dataclasses.dataclass(frozen=True, kw_only=True)
class CommandFilter:
    meter_id: str | None = None
    state: str | None = None
    origin: str | None = None
    since: dt.datetime | None = None  # created at or after
    until: dt.datetime | None = None  # created before
    before: dt.datetime | None = None  # page: created before this time...
    before_id: str | None = None  # ...or at it with a smaller id (alone: the time of that command)
    limit: int = 100


@dataclasses.dataclass(frozen=True, kw_only=True)
class NoticeFilter:
    state: str | None = None
    account_id: str | None = None
    kind: str | None = None
    since: dt.datetime | None = None  # created at or after
    until: dt.datetime | None = None  # created before
    before_id: int | None = None
    limit: int = 100


@dataclasses.dataclass(frozen=True, kw_only=True)
class AuditFilter:
    actor: str | None = None
    account_id: str | None = None
    meter_id: str | None = None
    action: str | None = None  # exact, or a prefix when it ends with "." ("command.")
    since: dt.datetime | None = None  # at or after
    until: dt.datetime | None = None  # before
    before_id: int | None = None  # page: the entries after this one (newest first)
    limit: int = 100


class ListStore(abc.ABC):
    """The port the lists read storage through. Each method returns up to ``limit`` rows in the list's order
    (the caller asks for one more than it shows)."""

    @abc.abstractmethod
    async def accounts(self, which: AccountFilter, limit: int) -> tuple[list[Row], dict[str, list[Row]]]:
        """Accounts by id (columns: id, balance_fen, supply, status, tariff (in force), credit_class, protected
        (either way), deferred_reason, updated_at) and, per account, its active meters (id, relay, relay_fault)."""

    @abc.abstractmethod
    async def meters(self, which: MeterFilter, limit: int) -> list[Row]:
        """Meters by id, with ``newest_taken_at``: the time of the newest stored reading."""

    @abc.abstractmethod
    async def commands(self, which: CommandFilter, limit: int) -> list[CommandRecord]:
        """Relay commands, newest first (ties: the larger id first)."""

    @abc.abstractmethod
    async def notices(self, which: NoticeFilter, limit: int) -> list[NoticeRecord]:
        """Notices, newest (highest id) first."""

    @abc.abstractmethod
    async def audit(self, which: AuditFilter, limit: int) -> list[Row]:
        """Audit rows (id, at, actor, action, target, detail), newest first (ties: the larger id first); after
        ``before_id``: the rows after that one in this order."""


def _more(rows: list[Any], limit: int) -> tuple[list[Any], Any | None]:
    """The page and its last row when more rows follow (else None)."""
    return (rows[:limit], rows[limit - 1]) if len(rows) > limit else (rows, None)


def _later(*times: dt.datetime | None) -> dt.datetime | None:
    known = [t for t in times if t is not None]
    return max(known) if known else None


class Lists:
    def __init__(self, store: ListStore, unstored: Mapping[str, Reading]) -> None:
        self.store = store
        self.unstored = unstored  # per meter, the newest reading that changed nothing and was not stored

    async def accounts(self, which: AccountFilter) -> dict[str, Any]:
        """A page of accounts by id: balance, supply (stored and confirmed), configuration, meters."""
        rows, meters = await self.store.accounts(which, which.limit + 1)
        page, last = _more(rows, which.limit)
        data = []
        for row in page:
            own = meters.get(row.id, [])
            data.append({"id": row.id, "balance": format_fen(row.balance_fen),
                         "state": supply_state(row.supply, [(m.relay, m.relay_fault) for m in own]),
                         "supply": row.supply, "status": row.status, "tariff": row.tariff or None,
                         "credit_class": row.credit_class or None, "protected": bool(row.protected),
                         "meters": [m.id for m in own], "disconnect_deferred_because": row.deferred_reason or None,
                         "updated_at": row.updated_at})
        return {"data": data, "next_after": None if last is None else last.id}

    async def meters(self, which: MeterFilter) -> dict[str, Any]:
        """A page of meters by id: place, model, relay and communication health."""
        rows = await self.store.meters(which, which.limit + 1)
        page, last = _more(rows, which.limit)
        data = []
        for row in page:
            unstored = self.unstored.get(row.id)
            data.append({"id": row.id, "account_id": row.account_id, "status": row.status, "bus": row.bus_id,
                         "unit_id": row.unit_id, "address": row.address, "model": row.model, "relay": row.relay,
                         "relay_fault": row.relay_fault, "health": row.health,
                         "consecutive_failures": row.consecutive_failures,
                         "last_success_at": _later(row.last_success_at, row.newest_taken_at,
                                                   unstored.taken_at if unstored is not None else None)})
        return {"data": data, "next_after": None if last is None else last.id}

    async def commands(self, which: CommandFilter) -> dict[str, Any]:
        """A page of relay commands, newest first."""
        records, last = _more(await self.store.commands(which, which.limit + 1), which.limit)
        return {"data": [command_shape(r) for r in records],
                "next_before": None if last is None else last.created_at.isoformat(),
                "next_before_id": None if last is None else last.id}

    async def notices(self, which: NoticeFilter) -> dict[str, Any]:
        """A page of notices, newest first (``state="failed"``: the dead letters)."""
        records, last = _more(await self.store.notices(which, which.limit + 1), which.limit)
        return {"data": [notice_shape(r) for r in records], "next_before_id": None if last is None else last.id}

    async def audit(self, which: AuditFilter) -> dict[str, Any]:
        """A page of the audit log, newest first."""
        rows, last = _more(await self.store.audit(which, which.limit + 1), which.limit)
        data = [{"id": r.id, "at": r.at, "actor": r.actor, "action": r.action, "target": r.target,
                 "detail": r.detail} for r in rows]
        return {"data": data, "next_before_id": None if last is None else last.id}
