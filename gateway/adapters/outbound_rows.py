"""The storage of what goes out, on SQLAlchemy Core (``gateway.service.ports``): the outbox (events for MQTT, its
sequence numbers, the publishing instance's lease, pruning) and the notices to customers and staff."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from gateway.adapters import tables as t
from gateway.adapters.alarm_rows import keeper_done
from gateway.adapters.repositories import Repository, chunks
from gateway.domain.timeutil import from_iso, to_iso
from gateway.service import ports
from gateway.service.ports import OutboxEvent

__all__ = ["READINGS_CURSOR", "RELAY_LEASE", "Notices", "Outbox", "notice_record"]

READINGS_CURSOR = "(readings)"  # the event_sequences row of the last reading published (not a topic)
RELAY_LEASE = "outbox_relay"  # the site_state row of the instance that publishes (its lease)


class Outbox(Repository, ports.OutboxRepository):
    async def pending(self, after_id: int, limit: int, holes: Sequence[int] = ()) -> list[OutboxEvent]:
        return await self._unmarked(t.outbox.c.published_at, after_id, limit, holes)

    async def _unmarked(self, mark: sa.Column[Any], after_id: int, limit: int,
                        holes: Sequence[int]) -> list[OutboxEvent]:
        """The events without ``mark`` above ``after_id`` (up to ``limit``) and among ``holes``, in id order."""
        c = t.outbox.c
        columns = (c.id, c.topic, c.payload, c.created_at)
        rows = list(await self.uow.execute(sa.select(*columns).where(c.id > after_id, mark.is_(None))
                                           .order_by(c.id).limit(limit)))
        ordered = sorted(holes)
        for start, size in chunks(len(ordered), 1):
            rows += await self.uow.execute(sa.select(*columns).where(c.id.in_(ordered[start:start + size]),
                                                                     mark.is_(None)))
        return sorted((OutboxEvent(row.id, row.topic, row.payload, row.created_at) for row in rows),
                      key=lambda event: event.id)

    async def waiting(self) -> int:
        c = t.outbox.c
        return int((await self.uow.execute(sa.select(sa.func.count()).select_from(t.outbox)
                                           .where(c.published_at.is_(None)))).scalar_one())

    async def sequences(self, topics: set[str]) -> dict[str, int]:
        c = t.event_sequences.c
        ordered = sorted(topics)
        out: dict[str, int] = {}
        for start, size in chunks(len(ordered), 1):
            rows = await self.uow.execute(sa.select(c.topic, c.seq).where(c.topic.in_(ordered[start:start + size])))
            out.update((row.topic, row.seq) for row in rows)
        return out

    async def readings(self, after_id: int, limit: int, holes: Sequence[int] = ()) -> list[OutboxEvent]:
        c = t.readings.c
        rows = list(await self.uow.execute(sa.select(t.readings).where(c.id > after_id).order_by(c.id)
                                           .limit(limit)))
        ordered = sorted(holes)  # (a reading has no published mark: a hole found is published, then not asked)
        for start, size in chunks(len(ordered), 1):
            rows += await self.uow.execute(sa.select(t.readings).where(c.id.in_(ordered[start:start + size])))
        return sorted((self._reading(row) for row in rows), key=lambda reading: reading.id)

    @staticmethod
    def _reading(row: Any) -> OutboxEvent:
        return OutboxEvent(row.id, f"meters/{row.meter_id}/reading", {
            "type": "Reading", "reading_id": row.id, "meter_id": row.meter_id, "at": row.taken_at,
            "energy_wh": row.energy_wh, "power_w": row.power_w, "voltage_v": row.voltage_v,
            "current_a": row.current_a, "relay": row.relay, "billed": row.billed}, row.taken_at)

    async def meter_snapshot(self) -> tuple[int, int, dict[str, dict[str, Any]]]:
        events_to = (await self.uow.execute(sa.select(sa.func.max(t.outbox.c.id)))).scalar()
        readings_to = (await self.uow.execute(sa.select(sa.func.max(t.readings.c.id)))).scalar()
        m, newest = t.meters.c, t.readings.alias("newest")
        latest = (sa.select(newest.c.id).where(newest.c.meter_id == m.id)  # per meter, on ix_readings_meter_taken
                  .order_by(newest.c.taken_at.desc(), newest.c.id.desc()).limit(1)
                  .correlate(t.meters).scalar_subquery())
        readings = {row.meter_id: self._reading(row) for row in await self.uow.execute(
            sa.select(t.readings).where(t.readings.c.id.in_(sa.select(latest).select_from(t.meters))))}
        meters = {row.id: {"health": row.health, "error": row.last_error, "relay": row.relay,
                           "relay_fault": row.relay_fault, "reading": readings.get(row.id)}
                  for row in await self.uow.execute(sa.select(m.id, m.health, m.last_error, m.relay,
                                                              m.relay_fault))}
        return int(events_to or 0), int(readings_to or 0), meters

    async def readings_published(self) -> int:
        c = t.event_sequences.c
        cursor = (await self.uow.execute(sa.select(c.seq).where(c.topic == READINGS_CURSOR))).scalar()
        if cursor is None:  # never published: from now on, not the whole history
            cursor = (await self.uow.execute(sa.select(sa.func.max(t.readings.c.id)))).scalar()
        return int(cursor or 0)

    async def published(self, ids: list[int], at: dt.datetime, sequences: dict[str, int], *,
                        readings_to: int | None = None) -> None:
        if readings_to is not None:
            sequences = {**sequences, READINGS_CURSOR: readings_to}
        c = t.outbox.c
        for start, size in chunks(len(ids), 1):
            await self.uow.execute(sa.update(t.outbox).where(c.id.in_(ids[start:start + size])).values(published_at=at))
        if sequences:  # one upsert (SQLite and PostgreSQL spell it alike)
            upsert = self.uow.upsert(t.event_sequences)
            await self.uow.execute(upsert.on_conflict_do_update(index_elements=["topic"],
                                                                set_={"seq": upsert.excluded.seq}),
                                   [{"topic": k, "seq": v} for k, v in sorted(sequences.items())])

    async def prune(self, before: dt.datetime, *, keep_unnoticed: bool = False, unpublished_too: bool = False,
                    limit: int = 10_000) -> int:
        c = t.outbox.c
        if unpublished_too:  # no MQTT: by age alone
            old = sa.select(c.id).where(c.created_at < before)
        else:
            old = sa.select(c.id).where(c.published_at.is_not(None), c.published_at < before)
        if keep_unnoticed:  # notices on: an event also waits for the notice planner
            old = old.where(c.noticed_at.is_not(None))
        done = await keeper_done(self.uow)
        if done is not None:  # and for the alarm keeper (``gateway.service.alarms``)
            old = old.where(c.id <= done)
        # never the newest event: SQLite would give its id again (an id is the largest one there + 1), and the
        # relay and the alarm keeper, past it, would miss the events that take the ids again
        newest = t.outbox.alias("newest")
        old = old.where(c.id < sa.select(sa.func.max(newest.c.id)).scalar_subquery())
        # at most ``limit`` rows per statement: a first prune of a large backlog does not hold the database
        result = await self.uow.execute(sa.delete(t.outbox).where(c.id.in_(old.order_by(c.id).limit(limit)
                                                                           .scalar_subquery())))
        return int(result.rowcount or 0)

    async def lease(self, holder: str, now: dt.datetime, until: dt.datetime) -> bool:
        await self.uow.execute(self.uow.insert_new(t.site_state).values(name=RELAY_LEASE, state={}))
        state = (await self.uow.lock(t.site_state, "name", [RELAY_LEASE], "state")).get(RELAY_LEASE) or {}
        held_until = from_iso(state.get("until"))
        if state.get("holder") not in (None, holder) and held_until is not None and held_until > now:
            return False
        await self.uow.execute(sa.update(t.site_state).where(t.site_state.c.name == RELAY_LEASE).values(
            state={"holder": holder, "until": to_iso(until)}))
        return True

    async def unnoticed(self, after_id: int, limit: int, holes: Sequence[int] = ()) -> list[OutboxEvent]:
        return await self._unmarked(t.outbox.c.noticed_at, after_id, limit, holes)

    async def noticed(self, ids: list[int], at: dt.datetime) -> None:
        c = t.outbox.c
        for start, size in chunks(len(ids), 1):
            await self.uow.execute(sa.update(t.outbox).where(c.id.in_(ids[start:start + size])).values(noticed_at=at))


class Notices(Repository, ports.NoticeRepository):
    async def add(self, rows: list[dict[str, Any]]) -> int:
        stored = 0
        for row in rows:
            result = await self.uow.execute(self.uow.insert_new(t.notices).values(**row))
            stored += int(result.rowcount or 0)
        return stored

    async def due(self, now: dt.datetime, limit: int) -> list[ports.NoticeRecord]:
        c = t.notices.c
        rows = await self.uow.execute(sa.select(t.notices).where(
            c.state == "pending", sa.or_(c.next_attempt_at.is_(None), c.next_attempt_at <= now))
            .order_by(c.id).limit(limit))
        return [notice_record(row) for row in rows]

    async def claim(self, notice: ports.NoticeRecord, now: dt.datetime, lease_until: dt.datetime) -> bool:
        c = t.notices.c
        result = await self.uow.execute(sa.update(t.notices).where(
            c.id == notice.id, c.state == "pending", c.attempts == notice.attempts).values(
            attempts=notice.attempts + 1, next_attempt_at=lease_until, updated_at=now))
        return bool(result.rowcount)

    async def finish(self, notice_id: int, values: dict[str, Any]) -> None:
        await self.uow.execute(sa.update(t.notices).where(t.notices.c.id == notice_id).values(**values))

    async def get(self, notice_id: int) -> ports.NoticeRecord | None:
        row = (await self.uow.execute(sa.select(t.notices).where(t.notices.c.id == notice_id))).first()
        return notice_record(row) if row is not None else None


def notice_record(row: Any) -> ports.NoticeRecord:
    return ports.NoticeRecord(**{name: getattr(row, name) for name in ports.NoticeRecord.__dataclass_fields__})
