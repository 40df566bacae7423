"""The storage of the alarms on SQLAlchemy Core (``gateway.service.alarm_port``): the alarms table, the alarm
keeper's cursor (a ``site_state`` row) and its reading of the outbox."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from gateway.adapters import tables as t
from gateway.adapters.repositories import Repository, chunks
from gateway.domain.alarms import AlarmKey
from gateway.service.alarm_port import ALARM_CURSOR, AlarmRecord, AlarmRepository
from gateway.service.ports import OutboxEvent

__all__ = ["Alarms", "alarm_record", "keeper_done"]

_UNRESOLVED = ("open", "acknowledged")
_WANTED = t.outbox.c.topic.not_like("%/balance")  # payments and charges: the bulk of the outbox, never an alarm


class Alarms(Repository, AlarmRepository):
    async def cursor(self, *, lock: bool) -> dict[str, Any] | None:
        if lock:
            await self.uow.execute(self.uow.insert_new(t.site_state).values(name=ALARM_CURSOR, state={}))
            return (await self.uow.lock(t.site_state, "name", [ALARM_CURSOR], "state")).get(ALARM_CURSOR)
        return await keeper_state(self.uow)

    async def put_cursor(self, state: dict[str, Any]) -> None:
        await self.uow.execute(self.uow.insert_new(t.site_state).values(name=ALARM_CURSOR, state={}))
        await self.uow.execute(sa.update(t.site_state).where(t.site_state.c.name == ALARM_CURSOR).values(state=state))

    async def events(self, after: int, holes: list[int], limit: int) -> tuple[list[int], list[OutboxEvent]]:
        c = t.outbox.c
        ids = [row[0] for row in await self.uow.execute(
            sa.select(c.id).where(c.id > after).order_by(c.id).limit(limit))]
        found: list[Any] = []
        if ids:
            found += await self.uow.execute(sa.select(c.id, c.topic, c.payload, c.created_at).where(
                c.id > after, c.id <= ids[-1], _WANTED))
        ordered = sorted(holes)
        for start, size in chunks(len(ordered), 1):
            rows = list(await self.uow.execute(sa.select(c.id, c.topic, c.payload, c.created_at).where(
                c.id.in_(ordered[start:start + size]))))
            ids += [row.id for row in rows]
            found += [row for row in rows if not row.topic.endswith("/balance")]
        events = sorted((OutboxEvent(row.id, row.topic, row.payload, row.created_at) for row in found),
                        key=lambda e: e.id)
        return ids, events

    async def events_after(self, after: int, limit: int) -> tuple[int, list[OutboxEvent]]:
        c = t.outbox.c
        newest = int((await self.uow.execute(sa.select(sa.func.max(c.id)))).scalar() or 0)
        if newest <= after:
            return after, []
        rows = list(await self.uow.execute(sa.select(c.id, c.topic, c.payload, c.created_at).where(
            c.id > after, c.id <= newest, _WANTED).order_by(c.id).limit(limit)))
        high = rows[-1].id if len(rows) == limit else newest
        return high, [OutboxEvent(row.id, row.topic, row.payload, row.created_at) for row in rows]

    async def add_events(self, rows: list[dict[str, Any]]) -> None:
        await self.uow.insert(t.outbox, rows)

    async def add_audits(self, rows: list[dict[str, Any]]) -> None:
        await self.uow.insert(t.audit_log, rows)

    async def unresolved_keys(self, kinds: set[str]) -> set[AlarmKey]:
        a = t.alarms.c
        rows = await self.uow.execute(sa.select(a.kind, a.subject, a.meter_id, a.account_id).where(
            a.kind.in_(sorted(kinds)), a.state.in_(_UNRESOLVED)))
        return {(row.kind, row.subject, row.meter_id, row.account_id) for row in rows}

    async def unresolved_many(self, pairs: set[tuple[str, str]]) -> dict[tuple[str, str], AlarmRecord]:
        a = t.alarms.c
        kinds, subjects = sorted({k for k, _ in pairs}), sorted({s for _, s in pairs})
        found: dict[tuple[str, str], AlarmRecord] = {}
        for start, size in chunks(len(subjects), 1):
            rows = await self.uow.execute(sa.select(t.alarms).where(
                a.kind.in_(kinds), a.subject.in_(subjects[start:start + size]), a.state.in_(_UNRESOLVED))
                .order_by(a.id).with_for_update())
            found.update(((row.kind, row.subject), alarm_record(row)) for row in rows
                         if (row.kind, row.subject) in pairs)
        return found

    async def matching(self, kinds: tuple[str, ...], *, subject: str | None, meter_id: str | None,
                       account_id: str | None) -> list[AlarmRecord]:
        a = t.alarms.c
        query = sa.select(t.alarms).where(a.kind.in_(kinds), a.state.in_(_UNRESOLVED))
        for column, value in ((a.subject, subject), (a.meter_id, meter_id), (a.account_id, account_id)):
            if value is not None:
                query = query.where(column == value)
        return [alarm_record(row) for row in await self.uow.execute(query.order_by(a.id).with_for_update())]

    async def add(self, row: dict[str, Any]) -> int | None:
        # (ON CONFLICT DO NOTHING: the unique index of the unresolved ones keeps a second from being made)
        result = await self.uow.execute(self.uow.insert_new(t.alarms).values(**row).returning(t.alarms.c.id))
        new = result.scalar()
        return int(new) if new is not None else None

    async def change(self, alarm_id: int, states: tuple[str, ...], values: dict[str, Any]) -> bool:
        a = t.alarms.c
        result = await self.uow.execute(sa.update(t.alarms).where(a.id == alarm_id, a.state.in_(states))
                                        .values(**values))
        return bool(result.rowcount)

    async def get(self, alarm_id: int, *, lock: bool = False) -> AlarmRecord | None:
        query = sa.select(t.alarms).where(t.alarms.c.id == alarm_id)
        row = (await self.uow.execute(query.with_for_update() if lock else query)).first()
        return alarm_record(row) if row is not None else None

    async def page(self, *, states: tuple[str, ...] | None, kind: str | None, severity: str | None,
                   meter_id: str | None, account_id: str | None, before_id: int | None,
                   limit: int) -> list[AlarmRecord]:
        a = t.alarms.c
        query = sa.select(t.alarms)
        if states is not None:
            query = query.where(a.state.in_(states))
        for column, value in ((a.kind, kind), (a.severity, severity), (a.meter_id, meter_id),
                              (a.account_id, account_id)):
            if value is not None:
                query = query.where(column == value)
        if before_id is not None:
            query = query.where(a.id < before_id)
        return [alarm_record(row) for row in await self.uow.execute(query.order_by(a.id.desc()).limit(limit))]

    async def subjects(self, kind: str) -> set[str]:
        a = t.alarms.c
        rows = await self.uow.execute(sa.select(a.subject).where(a.kind == kind, a.state.in_(_UNRESOLVED)))
        return {row[0] for row in rows}


async def keeper_state(uow: Any) -> dict[str, Any] | None:
    """The alarm keeper's stored cursor, or None."""
    row = (await uow.execute(sa.select(t.site_state.c.state).where(t.site_state.c.name == ALARM_CURSOR))).first()
    return None if row is None else row.state  # type: ignore[no-any-return]


async def keeper_done(uow: Any) -> int | None:
    """The id up to which the alarm keeper has looked at every outbox event (None: it never stored a cursor)."""
    state = await keeper_state(uow)
    return None if state is None else int(state.get("done", 0))


def alarm_record(row: Any) -> AlarmRecord:
    return AlarmRecord(**{name: getattr(row, name) for name in AlarmRecord.__dataclass_fields__})
