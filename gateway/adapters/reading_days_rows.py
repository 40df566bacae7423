"""The rows of reading timeliness per bus and day (``reading_days``), merged into the stored ones with one upsert
on SQLite or PostgreSQL (``gateway.service.polling.timeliness.ReadingDaysStore``: the merge rule)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from gateway.adapters import tables as t
from gateway.service import ports
from gateway.service.polling.timeliness import DayRow, ReadingDaysStore

__all__ = ["SqlReadingDays", "upsert"]


def upsert(dialect: str) -> Any:
    """The statement: stored polls + the rows' increments; the larger ``meters`` and ``read``; the larger number
    of late meters (``on_time`` = meters - late)."""
    insert = (sqlite_insert if dialect == "sqlite" else postgresql_insert)(t.reading_days)
    greatest = sa.func.max if dialect == "sqlite" else sa.func.greatest  # (SQLite's max of two is a scalar)
    old, new = t.reading_days.c, insert.excluded
    meters = greatest(old.meters, new.meters)
    late = greatest(old.meters - old.on_time, new.meters - new.on_time)
    return insert.on_conflict_do_update(index_elements=[old.bus_id, old.day], set_={
        "meters": meters,
        "read": greatest(old.read, new["read"]),
        "on_time": meters - late,
        "polls_ok": old.polls_ok + new.polls_ok,
        "polls_failed": old.polls_failed + new.polls_failed,
        "updated_at": new.updated_at,
    })


class SqlReadingDays(ReadingDaysStore):
    """Writes through the gateway's storage (its write lock on SQLite), in a background unit of work."""

    def __init__(self, storage: ports.Storage, dialect: str) -> None:
        self.storage = storage
        self.statement = upsert(dialect)

    async def add(self, rows: Sequence[DayRow], at: dt.datetime) -> None:
        values = [{"bus_id": r.bus_id, "day": r.day, "meters": r.meters, "read": r.read, "on_time": r.on_time,
                   "polls_ok": r.polls_ok, "polls_failed": r.polls_failed, "updated_at": at} for r in rows]
        async with self.storage(background=True) as uow:
            await uow.execute(self.statement, values)  # type: ignore[attr-defined]
            await uow.commit()
