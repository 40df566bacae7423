"""The storage port of the alarms (table ``alarms``) and the record the API shows. Adapters in
``gateway.adapters.alarm_rows``. (The keeper's cursor over the outbox, ``Cursor``, is in
``gateway.service.outbox_cursor``, shared with the other readers of the outbox; named here too.)"""

from __future__ import annotations

import abc
import datetime as dt
from dataclasses import dataclass
from typing import Any

from gateway.domain.alarms import AlarmKey
from gateway.service.outbox_cursor import Cursor
from gateway.service.ports import OutboxEvent

__all__ = ["ALARM_CURSOR", "AlarmRecord", "AlarmRepository", "Cursor"]

ALARM_CURSOR = "alarm_keeper"  # the site_state row of the keeper's cursor (the outbox pruning reads its "done")


@dataclass(frozen=True, slots=True)
class AlarmRecord:
    """A stored alarm."""

    id: int
    kind: str
    subject: str
    meter_id: str | None
    account_id: str | None
    severity: str
    state: str  # open | acknowledged | resolved
    detail: dict[str, Any] | None
    raised_at: dt.datetime
    last_seen_at: dt.datetime
    times: int
    updated_at: dt.datetime
    event_id: int | None
    acknowledged_at: dt.datetime | None
    acknowledged_by: str | None
    ack_reason: str | None
    resolved_at: dt.datetime | None
    resolved_by: str | None
    resolve_reason: str | None


class AlarmRepository(abc.ABC):
    # --- the keeper's cursor and the events it reads ------------------------------------------------------
    @abc.abstractmethod
    async def cursor(self, *, lock: bool) -> dict[str, Any] | None:
        """The keeper's stored cursor (None: never stored); with ``lock``, its row is created if missing and
        locked until the commit (instances sharing the database take turns)."""

    @abc.abstractmethod
    async def put_cursor(self, state: dict[str, Any]) -> None: ...

    @abc.abstractmethod
    async def events(self, after: int, holes: list[int], limit: int) -> tuple[list[int], list[OutboxEvent]]:
        """The ids of up to ``limit`` outbox events above ``after`` and of those in ``holes`` that are there now,
        and, in id order, the events among them that may concern alarms (balance events never do)."""

    @abc.abstractmethod
    async def events_after(self, after: int, limit: int) -> tuple[int, list[OutboxEvent]]:
        """Where ids are committed in order (SQLite): up to ``limit`` events above ``after`` that may concern
        alarms, in id order, and the id up to which every event was looked at (``after``: none new). The events
        that never concern alarms are passed over by the database, not read."""

    @abc.abstractmethod
    async def add_events(self, rows: list[dict[str, Any]]) -> None:
        """Write outbox events (``topic``, ``payload``, ``created_at``) in one statement."""

    @abc.abstractmethod
    async def add_audits(self, rows: list[dict[str, Any]]) -> None:
        """Write audit rows (``at``, ``actor``, ``action``, ``target``, ``detail``) in one statement."""

    @abc.abstractmethod
    async def unresolved_keys(self, kinds: set[str]) -> set[AlarmKey]:
        """(kind, subject, meter_id, account_id) of every unresolved alarm of one of ``kinds`` (not locked): what
        the keeper matches a batch's resolutions against before it asks ``matching`` for the alarms."""

    # --- alarms -------------------------------------------------------------------------------------------
    @abc.abstractmethod
    async def unresolved_many(self, pairs: set[tuple[str, str]]) -> dict[tuple[str, str], AlarmRecord]:
        """The unresolved alarms of these (kind, subject) pairs, by pair (locked until the commit)."""

    @abc.abstractmethod
    async def matching(self, kinds: tuple[str, ...], *, subject: str | None, meter_id: str | None,
                       account_id: str | None) -> list[AlarmRecord]:
        """Unresolved alarms of one of ``kinds`` matching each of the other arguments that is not None."""

    @abc.abstractmethod
    async def add(self, row: dict[str, Any]) -> int | None:
        """Store a new alarm (the table's columns but ``id``); its id, or None when an unresolved one of its
        kind and subject is there already."""

    @abc.abstractmethod
    async def change(self, alarm_id: int, states: tuple[str, ...], values: dict[str, Any]) -> bool:
        """Set ``values`` on the alarm if its state is one of ``states``; False if it is not (nothing changed)."""

    @abc.abstractmethod
    async def get(self, alarm_id: int, *, lock: bool = False) -> AlarmRecord | None: ...

    @abc.abstractmethod
    async def page(self, *, states: tuple[str, ...] | None, kind: str | None, severity: str | None,
                   meter_id: str | None, account_id: str | None, before_id: int | None,
                   limit: int) -> list[AlarmRecord]:
        """Alarms, newest (highest id) first."""

    @abc.abstractmethod
    async def subjects(self, kind: str) -> set[str]:
        """The subjects of the unresolved alarms of ``kind``."""
