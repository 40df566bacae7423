"""The read models' storage (``gateway.service.views.ReadStore``) on SQLAlchemy Core: SQLite or PostgreSQL."""

from __future__ import annotations


import sqlalchemy as sa

from gateway.adapters import tables as t
from gateway.adapters.outbound_rows import notice_record
from gateway.adapters.sql import SqlStorage, command_record
from gateway.service.commands import CommandRecord
from gateway.service.ports import NoticeRecord
from gateway.service.views import AccountRows, MeterRows, ReadStore, Row

__all__ = ["SqlReadStore"]


class SqlReadStore(ReadStore):
    def __init__(self, storage: SqlStorage) -> None:
        self.storage = storage

    async def account(self, account_id: str) -> AccountRows:
        m = t.meters.c
        async with self.storage.reading() as uow:
            row = (await uow.execute(sa.select(t.accounts).where(t.accounts.c.id == account_id))).one_or_none()
            meters = (await uow.execute(sa.select(m.id, m.relay, m.relay_fault)  # (a retired meter's relay is no
                                        .where(m.account_id == account_id, m.status == "active")  # longer its)
                                        .order_by(m.id))).all()
        return AccountRows(row, list(meters))

    async def meter(self, meter_id: str, account_id: str) -> MeterRows:
        r = t.readings.c
        async with self.storage.reading() as uow:
            row = (await uow.execute(sa.select(t.meters).where(t.meters.c.id == meter_id))).one_or_none()
            newest = (await uow.execute(sa.select(t.readings).where(r.meter_id == meter_id)  # the newest taken
                                        .order_by(r.taken_at.desc(), r.id.desc()).limit(1))).one_or_none()
            state = (await uow.execute(sa.select(t.accounts.c.state).where(t.accounts.c.id == account_id))
                     ).scalar_one_or_none()
        return MeterRows(row, newest, state)

    async def ledger(self, account_id: str, *, limit: int, before_id: int | None) -> list[Row]:
        return await self._page(t.ledger, t.ledger.c.account_id == account_id, limit, before_id)

    async def readings(self, meter_id: str, *, limit: int, before_id: int | None) -> list[Row]:
        return await self._page(t.readings, t.readings.c.meter_id == meter_id, limit, before_id)

    async def _page(self, table: sa.Table, which: sa.ColumnElement[bool], limit: int, before_id: int | None
                    ) -> list[Row]:
        """Rows of ``table`` (newest, highest id, first), before ``before_id`` when given."""
        query = sa.select(table).where(which)
        if before_id is not None:
            query = query.where(table.c.id < before_id)
        async with self.storage.reading() as conn:
            return list((await conn.execute(query.order_by(table.c.id.desc()).limit(limit))).all())

    async def command(self, command_id: str) -> CommandRecord | None:
        async with self.storage.reading() as uow:
            row = (await uow.execute(sa.select(t.commands).where(t.commands.c.id == command_id))).one_or_none()
        return None if row is None else command_record(row)

    async def notice(self, notice_id: int) -> NoticeRecord | None:
        async with self.storage.reading() as uow:
            row = (await uow.execute(sa.select(t.notices).where(t.notices.c.id == notice_id))).one_or_none()
        return None if row is None else notice_record(row)

    async def ping(self) -> None:
        async with self.storage.reading() as uow:
            await uow.execute(sa.text("SELECT 1"))
