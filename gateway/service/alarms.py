"""Alarms as records (docs/alarms.md): the keeper that raises and resolves them from the outbox's events (what an
operator does with them: ``gateway.service.alarm_desk``).

The **keeper** (``AlarmKeeper.run``) reads the outbox's events after its cursor, asks ``gateway.domain.alarms``
what each raises and resolves, and applies that to the ``alarms`` table: one unresolved alarm per (kind,
subject), raised again -> ``times`` + 1 and ``last_seen_at``; resolved by "gateway" when an event ends its cause.
Every change writes an audit row and an event on the topic ``alarms`` (``AlarmRaised``, ``AlarmAcknowledged``,
``AlarmResolved``, which the keeper itself passes over), in the transaction that moves the cursor: an event is
applied once, whatever crashes. Instances sharing a database take turns on the cursor's row (locked in that
transaction), and the unique index of unresolved alarms keeps a second one from being made.

Most events change no alarm: a batch of them is looked at in a read-only transaction first, and the cursor kept
in memory (stored with the next change, or every ``persist_every`` events / ``persist_s``; the outbox pruning
keeps the events above the stored cursor).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
from collections.abc import Callable
from typing import Any

from gateway.domain.alarms import AlarmChanges, AlarmKey, Raise, Unresolved, alarm_changes
from gateway.service.alarm_port import AlarmRecord
from gateway.service.clock import wait_event
from gateway.service.outbox_cursor import Cursor
from gateway.service.ports import OutboxEvent, Storage, UnitOfWork

__all__ = ["UNRESOLVED", "AlarmKeeper", "alarm_event", "close_alarm"]

log = logging.getLogger(__name__)

GATEWAY = "gateway"  # who resolves an alarm whose cause ended
UNRESOLVED = ("open", "acknowledged")


class AlarmKeeper:
    """Raises and resolves alarms from the outbox's events until cancelled.

    Args:
        storage: the storage port.
        account_of: the account of a meter (None if unknown), for alarms about a meter.
        clock: aware UTC now.
        holes: look again for ids skipped by transactions in flight (PostgreSQL; SQLite commits in id order).
        batch: events read per transaction.
        idle_s: how often an idle keeper looks for new events.
        settle_s: how long a woken keeper waits for more commits before it looks (its reads would otherwise
            compete with every batch of a busy writer for the database).
        hole_wait_s: how long a skipped id is looked for.
        persist_every, persist_s: store a cursor that changed no alarm after that many events or seconds.
    """

    def __init__(self, storage: Storage, account_of: Callable[[str], str | None], clock: Callable[[], dt.datetime],
                 *, holes: bool, batch: int = 256, idle_s: float = 1.0, settle_s: float = 0.2,
                 hole_wait_s: float = 60.0,
                 persist_every: int = 5_000, persist_s: float = 300.0) -> None:
        self.storage, self.account_of, self.clock = storage, account_of, clock
        self.holes, self.batch, self.idle_s, self.settle_s = holes, batch, idle_s, settle_s
        self._more = False  # the last look stopped at ``batch``: there may be more now
        self.hole_wait = dt.timedelta(seconds=hole_wait_s)
        self.persist_every, self.persist = persist_every, dt.timedelta(seconds=persist_s)
        self.cursor: Cursor | None = None  # in memory: may be ahead of the stored one by events that changed nothing
        self._stored_high, self._stored_at = 0, clock()
        self._wake = asyncio.Event()
        self.raised = self.resolved = 0

    def wake(self) -> None:
        """New events were committed."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            try:
                done = await self.step()
            except Exception:  # a database hiccup: logged, tried again (the loop must not die)
                log.exception("alarms: the keeper failed; trying again")
                done = 0
                await asyncio.sleep(self.idle_s)
            if done and self._more:
                continue
            self._wake.clear()
            await wait_event(self._wake, self.idle_s)
            await asyncio.sleep(self.settle_s)  # commits come in bursts: one look after a burst, not one per commit

    async def step(self) -> int:
        """Look at the next events; apply what they change. Returns how many ids it looked at (where ids commit
        in order, only the newest counts: 1); 0 when there was nothing new."""
        async with self.storage(readonly=True) as uow:
            if self.cursor is None:
                self.cursor = Cursor.load(await uow.alarms.cursor(lock=False))
                self._stored_high = self.cursor.high
            cursor = self.cursor
            ids, events = await self._events(uow, cursor)
            plans = [(event, alarm_changes(event.topic, event.payload)) for event in events]
            changing = any(changes.raises for _, changes in plans) or await _any_match(uow, plans)
        now = self.clock()
        if not ids:
            cursor.take([], now, holes=self.holes, hole_wait=self.hole_wait)
            return 0
        if not changing:
            cursor.take(ids, now, holes=self.holes, hole_wait=self.hole_wait)
            if cursor.high - self._stored_high >= self.persist_every or now - self._stored_at >= self.persist:
                await self._write(now)
            return len(ids)
        return await self._write(now)

    async def _write(self, now: dt.datetime) -> int:
        """Under the cursor's lock: read from where the stored (or this keeper's, if ahead) cursor is, apply the
        events, store the cursor, commit."""
        assert self.cursor is not None
        async with self.storage(background=True) as uow:
            stored = Cursor.load(await uow.alarms.cursor(lock=True))
            cursor = stored if stored.high >= self.cursor.high else self.cursor.copy()
            ids, events = await self._events(uow, cursor)
            plans = [(event, alarm_changes(event.topic, event.payload)) for event in events]
            pairs = {(r.kind, r.subject) for _, changes in plans for r in changes.raises}
            batch = _Batch(await uow.alarms.unresolved_many(pairs) if pairs else {},
                           await _unresolved_keys(uow, plans))
            for event, changes in plans:
                await self._apply(uow, event, changes, now, batch)
            await uow.alarms.add_events(batch.outbox)  # (one statement each: a bus gone quiet raises hundreds)
            await uow.alarms.add_audits(batch.audits)
            cursor.take(ids, now, holes=self.holes, hole_wait=self.hole_wait)
            await uow.alarms.put_cursor(cursor.state())
            await uow.commit()
        self.cursor, self._stored_high, self._stored_at = cursor, cursor.high, now
        return len(ids)

    async def _events(self, uow: UnitOfWork, cursor: Cursor) -> tuple[list[int], list[OutboxEvent]]:
        """The ids looked at next (where ids commit in order: only the highest) and the events among them that
        may concern alarms."""
        if self.holes:
            ids, events = await uow.alarms.events(cursor.high, cursor.missing(), self.batch)
            self._more = len(ids) >= self.batch
            return ids, events
        high, events = await uow.alarms.events_after(cursor.high, self.batch)
        self._more = len(events) >= self.batch
        return [high] if high > cursor.high else [], events

    async def _apply(self, uow: UnitOfWork, event: OutboxEvent, changes: AlarmChanges, now: dt.datetime,
                     batch: _Batch) -> None:
        for resolution in changes.resolves:
            if not batch.keys.ends(resolution):
                continue  # (most resolutions end nothing: a meter answering that was never offline)
            for alarm in await uow.alarms.matching(resolution.kinds, subject=resolution.subject,
                                                   meter_id=resolution.meter_id, account_id=resolution.account_id):
                await close_alarm(uow, alarm, GATEWAY, resolution.reason, now, batch, event_id=event.id)
                batch.unresolved.pop((alarm.kind, alarm.subject), None)
                batch.keys.discard(_key(alarm))
                self.resolved += 1
        for raised in changes.raises:
            await self._raise(uow, event, raised, now, batch)

    async def _raise(self, uow: UnitOfWork, event: OutboxEvent, raised: Raise, now: dt.datetime,
                     batch: _Batch) -> None:
        seen, key = event.created_at, (raised.kind, raised.subject)
        existing = batch.unresolved.get(key)
        if existing is not None:
            alarm = dataclasses.replace(existing, times=existing.times + 1, last_seen_at=seen, updated_at=now,
                                        detail=raised.detail, event_id=event.id)
            await uow.alarms.change(alarm.id, UNRESOLVED, dict(times=alarm.times, last_seen_at=seen, updated_at=now,
                                                               detail=raised.detail, event_id=event.id))
        else:
            account = raised.account_id or (self.account_of(raised.meter_id) if raised.meter_id else None)
            row = dict(kind=raised.kind, subject=raised.subject, meter_id=raised.meter_id, account_id=account,
                       severity=raised.severity, state="open", detail=raised.detail, raised_at=seen,
                       last_seen_at=seen, times=1, updated_at=now, event_id=event.id)
            alarm_id = await uow.alarms.add(row)
            if alarm_id is None:  # (cannot happen while instances take turns on the cursor: logged, not raised)
                log.error("alarms: %s about %s is there already", raised.kind, raised.subject)
                return
            alarm = AlarmRecord(id=alarm_id, **row, acknowledged_at=None, acknowledged_by=None, ack_reason=None,
                                resolved_at=None, resolved_by=None, resolve_reason=None)
        batch.unresolved[key] = alarm
        batch.keys.add(_key(alarm))
        self.raised += 1
        batch.event(alarm_event("AlarmRaised", alarm, alarm.state, now, detail=raised.detail, raised_at=alarm.raised_at,
                           event_id=event.id), now)
        batch.audit(GATEWAY, "alarm.raised", raised.subject,
                    {"alarm_id": alarm.id, "kind": raised.kind, "times": alarm.times, "event_id": event.id}, now)


class _Batch:
    """What a keeper's transaction has found and writes: the unresolved alarms of the batch's raises (as they
    change), the keys of the unresolved alarms its resolutions may end (as they change), and the events and audit
    rows, written at its end."""

    def __init__(self, unresolved: dict[tuple[str, str], AlarmRecord], keys: Unresolved | None = None) -> None:
        self.unresolved = unresolved
        self.keys = keys if keys is not None else Unresolved()
        self.outbox: list[dict[str, Any]] = []
        self.audits: list[dict[str, Any]] = []

    def event(self, payload: dict[str, Any], now: dt.datetime) -> None:
        self.outbox.append(dict(topic="alarms", payload=payload, created_at=now))

    def audit(self, actor: str, action: str, target: str, detail: dict[str, Any], now: dt.datetime) -> None:
        self.audits.append(dict(at=now, actor=actor, action=action, target=target, detail=detail))


async def _any_match(uow: UnitOfWork, plans: list[tuple[OutboxEvent, AlarmChanges]]) -> bool:
    """Whether a resolution of the batch ends an alarm stored now (one query, matched in memory)."""
    keys = await _unresolved_keys(uow, plans)
    return any(keys.ends(r) for _, changes in plans for r in changes.resolves)


async def _unresolved_keys(uow: UnitOfWork, plans: list[tuple[OutboxEvent, AlarmChanges]]) -> Unresolved:
    """The unresolved alarms of the kinds the batch's resolutions end (none: no query)."""
    kinds = {kind for _, changes in plans for r in changes.resolves for kind in r.kinds}
    return Unresolved(await uow.alarms.unresolved_keys(kinds) if kinds else ())


def _key(alarm: AlarmRecord) -> AlarmKey:
    return alarm.kind, alarm.subject, alarm.meter_id, alarm.account_id


async def close_alarm(uow: UnitOfWork, alarm: AlarmRecord, actor: str, reason: str, now: dt.datetime,
                 batch: _Batch | None = None, *, event_id: int | None = None) -> None:
    """Resolve ``alarm`` (unresolved, locked) with its audit row and event (written now, or with ``batch``)."""
    await uow.alarms.change(alarm.id, UNRESOLVED, dict(state="resolved", resolved_at=now, resolved_by=actor,
                                                        resolve_reason=reason[:500], updated_at=now))
    writes = batch or _Batch({})
    writes.event(alarm_event("AlarmResolved", alarm, "resolved", now, by=actor, reason=reason, event_id=event_id), now)
    writes.audit(actor, "alarm.resolved", alarm.subject,
                 {"alarm_id": alarm.id, "kind": alarm.kind, "reason": reason[:500], "event_id": event_id}, now)
    if batch is None:
        await uow.alarms.add_events(writes.outbox)
        await uow.alarms.add_audits(writes.audits)


def alarm_event(kind: str, alarm: AlarmRecord, state: str, now: dt.datetime, **extra: Any) -> dict[str, Any]:
    return {"type": kind, "alarm_id": alarm.id, "kind": alarm.kind, "severity": alarm.severity, "state": state,
            "subject": alarm.subject, "meter_id": alarm.meter_id, "account_id": alarm.account_id,
            "times": alarm.times, **{k: v for k, v in extra.items() if v is not None}, "at": now}
