"""The queries of the operations figures on SQLAlchemy Core: the live event stream's reads of the outbox
(``gateway.service.event_stream.EventSource``) and what ``/metrics`` counts in the database
(``gateway.service.metrics.MetricRows``). Each is cheap at 100,000 accounts: an index range, a primary-key range
or (``fleet``, at most twice a minute) one pass over the accounts and commands (docs/metrics.md)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from gateway.adapters import tables as t
from gateway.adapters.sql import SqlStorage
from gateway.service.event_stream import EventSource
from gateway.service.metrics import MetricRows, StoredFigures
from gateway.service.ports import OutboxEvent

__all__ = ["SqlEventSource", "SqlMetricRows"]

OPEN_ALARMS = ("open", "acknowledged")
NOTICE_BACKLOG = ("pending", "failed")


class SqlEventSource(EventSource):
    def __init__(self, storage: SqlStorage) -> None:
        self.storage = storage

    async def after(self, after_id: int, limit: int) -> list[OutboxEvent]:
        c = t.outbox.c
        async with self.storage.reading() as conn:
            rows = await conn.execute(sa.select(c.id, c.topic, c.payload, c.created_at).where(c.id > after_id)
                                      .order_by(c.id).limit(limit))
            return [OutboxEvent(row.id, row.topic, row.payload, row.created_at) for row in rows]

    async def bounds(self) -> tuple[int, int]:
        c = t.outbox.c
        async with self.storage.reading() as conn:
            row = (await conn.execute(sa.select(sa.func.min(c.id), sa.func.max(c.id)))).one()
        return int(row[0] or 0), int(row[1] or 0)


class SqlMetricRows(MetricRows):
    def __init__(self, storage: SqlStorage) -> None:
        self.storage = storage

    async def fleet(self) -> tuple[dict[tuple[str, str], tuple[int, int]], dict[tuple[str, str], int]]:
        a, cmd = t.accounts.c, t.commands.c
        async with self.storage.reading() as conn:  # one pass over each table
            accounts = {(row.status, row.supply): (int(row.n), int(row.balance or 0)) for row in await conn.execute(
                sa.select(a.status, a.supply, sa.func.count().label("n"), sa.func.sum(a.balance_fen).label("balance"))
                .group_by(a.status, a.supply))}
            commands = {(row.state, row.action): int(row.n) for row in await conn.execute(
                sa.select(cmd.state, cmd.action, sa.func.count().label("n")).group_by(cmd.state, cmd.action))}
        return accounts, commands

    async def figures(self, *, ledger_after: int | None, outbox: bool) -> StoredFigures:
        a, n, al, le = t.accounts.c, t.notices.c, t.alarms.c, t.ledger.c
        async with self.storage.reading() as conn:
            # the balance index covers the sum: no pass over the accounts' rows
            count, balance = (await conn.execute(sa.select(sa.func.count(), sa.func.sum(a.balance_fen))
                                                 .select_from(t.accounts))).one()
            notices = {row.state: int(row.n) for row in await conn.execute(
                sa.select(n.state, sa.func.count().label("n")).where(n.state.in_(NOTICE_BACKLOG)).group_by(n.state))}
            alarms = {(row.kind, row.severity, row.state): int(row.n) for row in await conn.execute(
                sa.select(al.kind, al.severity, al.state, sa.func.count().label("n"))
                .where(al.state.in_(OPEN_ALARMS)).group_by(al.kind, al.severity, al.state))}
            newest_entry = int((await conn.execute(sa.select(sa.func.max(le.id)))).scalar() or 0)
            ledger: dict[str, tuple[int, int]] = {}
            if ledger_after is not None and newest_entry > ledger_after:  # a primary-key range: the new entries
                ledger = {row.kind: (int(row.n), int(row.fen or 0)) for row in await conn.execute(
                    sa.select(le.kind, sa.func.count().label("n"), sa.func.sum(sa.func.abs(le.amount_fen)).label("fen"))
                    .where(le.id > ledger_after, le.id <= newest_entry).group_by(le.kind))}
            unpublished = await self._unpublished(conn) if outbox else None
        return StoredFigures(accounts_total=int(count), balance_total=int(balance or 0), notices=notices,
                             alarms=alarms, ledger=ledger, ledger_to=newest_entry, unpublished=unpublished)

    async def newest_ledger_entry(self) -> int:
        async with self.storage.reading() as conn:
            return int((await conn.execute(sa.select(sa.func.max(t.ledger.c.id)))).scalar() or 0)

    @staticmethod
    async def _unpublished(conn: Any) -> int:
        """Events after the newest published one (the relay publishes in id order): a primary-key range as long
        as the backlog, not a pass over the outbox."""
        c = t.outbox.c
        newest_published = (await conn.execute(sa.select(c.id).where(c.published_at.is_not(None))
                                               .order_by(c.id.desc()).limit(1))).scalar()
        return int((await conn.execute(sa.select(sa.func.count()).select_from(t.outbox)
                                       .where(c.id > (newest_published or 0)))).scalar_one())
