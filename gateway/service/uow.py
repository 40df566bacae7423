"""The unit of work: one database transaction, with the repositories that work inside it.

``async with uow:`` opens a transaction; ``await uow.commit()`` makes it durable; leaving the block without a
commit rolls back. Events recorded by domain objects are written to the outbox in the same transaction by the
repository, so publishing never runs ahead of (or without) the commit.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from drivers.priority_lock import PriorityLock
from gateway.adapters import bulk
from gateway.adapters import tables as t

__all__ = ["UnitOfWork", "UnitOfWorkFactory"]


class UnitOfWork:
    def __init__(self, engine: AsyncEngine, write_lock: PriorityLock | None, *, urgent: bool = True) -> None:
        # write_lock is None for read-only work (and on PostgreSQL, where row locks do the job).
        self._engine = engine
        self._write_lock = write_lock
        self._urgent = urgent
        self._conn: AsyncConnection | None = None
        self._locked = False
        self._just_committed = False  # nothing done since the last commit

    @property
    def conn(self) -> AsyncConnection:
        if self._conn is None:
            raise RuntimeError("unit of work used outside `async with`")
        self._just_committed = False
        return self._conn

    async def __aenter__(self) -> UnitOfWork:
        # SQLite has one writer at a time: serialise our own writers instead of spinning on SQLITE_BUSY.
        if self._write_lock is not None:
            await self._write_lock.acquire(urgent=self._urgent)
            self._locked = True
        try:
            self._conn = await self._engine.connect()
            await self._conn.begin()
        except BaseException:
            self._release()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._just_committed:
            self._release()  # nothing written since the commit: let the next writer in before the cleanup
        try:
            if self._conn is not None:
                if self._conn.in_transaction():
                    await self._conn.rollback()
                await self._conn.close()
        finally:
            self._conn = None
            self._release()

    def _release(self) -> None:
        if self._locked and self._write_lock is not None:
            self._write_lock.release()
            self._locked = False

    async def commit(self) -> None:
        await self.conn.commit()
        await self.conn.begin()
        self._just_committed = True

    async def execute(self, statement: Any, params: Any = None) -> sa.CursorResult[Any]:
        return await self.conn.execute(statement, params)

    async def run(self, statements: list[bulk.Statement]) -> None:
        """Execute statements prepared by ``gateway.adapters.bulk`` in this transaction."""
        await bulk.run_statements(self.conn, statements)

    async def select_in(self, table: sa.Table, columns: tuple[str, ...], key: str, values: list[Any], *,
                        for_update: bool = False) -> list[Any]:
        """Plain-typed columns of the rows whose ``key`` is in ``values`` (see ``gateway.adapters.bulk``)."""
        return await bulk.select_in(self.conn, table, columns, key, values, for_update=for_update)

    async def add_outbox(self, topic: str, payload: dict[str, Any], now: dt.datetime) -> None:
        await self.conn.execute(sa.insert(t.outbox).values(topic=topic, payload=payload, created_at=now))

    async def audit(self, actor: str, action: str, target: str | None, detail: dict[str, Any] | None,
                    now: dt.datetime) -> None:
        await self.conn.execute(
            sa.insert(t.audit_log).values(at=now, actor=actor, action=action, target=target, detail=detail)
        )


class UnitOfWorkFactory:
    """Makes units of work on one engine; on SQLite it also owns the in-process write lock."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        # SQLite has one writer: short transactions (command transitions, health) go before the writer's batches
        self._write_lock = PriorityLock() if engine.dialect.name == "sqlite" else None
        self._own: AsyncConnection | None = None  # SQLite: the connection of commit_statements, kept open

    async def commit_statements(self, statements: list[bulk.Statement], *, background: bool = False) -> bool:
        """SQLite: write prepared statements and commit, under the write lock, in one hand-over to the database
        thread (``bulk.commit_statements``) on a connection kept for this; False (nothing done) where that is not
        available: the caller then uses a unit of work."""
        if self._write_lock is None:
            return False
        await self._write_lock.acquire(urgent=not background)
        try:
            if self._own is None:
                self._own = await self.engine.connect()
            done = await bulk.commit_statements(self._own, statements)
        finally:
            self._write_lock.release()
        return done is not bulk.NOT_RUN

    async def aclose(self) -> None:
        """Return the connection kept by ``commit_statements`` (the writer does, when it stops)."""
        if self._own is not None:
            own, self._own = self._own, None
            await own.close()

    def __call__(self, *, readonly: bool = False, background: bool = False) -> UnitOfWork:
        """A unit of work; ``readonly`` ones skip the write lock (WAL lets readers run beside the writer);
        ``background`` ones (the writer's batches) yield the write lock to short transactions."""
        return UnitOfWork(self.engine, None if readonly else self._write_lock, urgent=not background)
