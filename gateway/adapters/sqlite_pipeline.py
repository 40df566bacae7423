"""An optional faster write of the writer's batches on SQLite (``database.sqlite_pipeline``).

The portable path (``gateway.adapters.sql``) runs each statement through SQLAlchemy and aiosqlite: every
statement, the commit and the connection's reset are each a hand-over to the database thread, and on a busy
event loop each hand-over waits for a turn of the loop while SQLite's write lock is held. Here a batch's rows
are converted to driver values once, with plain functions that give exactly what the column types store
(``gateway.adapters.bulk``), and the statements and the commit run in one hand-over to a thread of this adapter's
own, on a ``sqlite3`` connection of its own (``BEGIN IMMEDIATE`` ... ``COMMIT``). Everything else (reads, relay
commands, the batches that create commands) goes the portable way. Both give the same rows (tested).
"""

from __future__ import annotations

import asyncio
import sqlite3
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.adapters import bulk
from gateway.adapters import tables as t
from gateway.adapters.sql import LIMITER, SqlStorage, is_duplicate
from gateway.service.errors import DuplicateRow
from gateway.service.ports import BatchChanges

__all__ = ["SqlitePipelineStorage", "batch_statements"]


class SqlitePipelineStorage(SqlStorage):
    def __init__(self, engine: AsyncEngine) -> None:
        super().__init__(engine)
        if engine.dialect.name != "sqlite":
            raise ValueError("the SQLite pipeline needs a SQLite database")
        self.path = engine.url.database or ""
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="sqlite-pipeline")
        self._db: sqlite3.Connection | None = None  # used in that thread only

    async def commit_batch(self, changes: BatchChanges, *, background: bool = False) -> None:
        if changes.commands:  # new relay commands supersede older ones, which is read before it is written
            await super().commit_batch(changes, background=background)
            return
        statements = batch_statements(changes)  # pure Python, before taking the write lock
        assert self.write_lock is not None
        await self.write_lock.acquire(urgent=not background)
        try:
            await asyncio.get_running_loop().run_in_executor(self._thread, self._commit, statements)
        except sqlite3.IntegrityError as exc:
            if is_duplicate(str(exc)):
                raise DuplicateRow(str(exc)[:200]) from exc
            raise
        finally:
            self.write_lock.release()

    def _commit(self, statements: list[bulk.Statement]) -> None:
        db = self._db
        if db is None:
            db = self._db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
            for pragma in ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON", "busy_timeout=30000"):
                db.execute(f"PRAGMA {pragma}")
        db.execute("BEGIN IMMEDIATE")
        try:
            bulk.run_all(db, statements)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    async def aclose(self) -> None:
        def close() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        await asyncio.get_running_loop().run_in_executor(self._thread, close)
        self._thread.shutdown(wait=True)
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="sqlite-pipeline")


def batch_statements(changes: BatchChanges) -> list[bulk.Statement]:
    """A batch's rows as driver statements, in the order the portable path writes them."""
    out = bulk.insert_statements(t.ledger, changes.ledger)
    out += bulk.insert_statements(t.payments, changes.payments)
    out += [bulk.Statement("UPDATE payments SET reversed_at = ?, reversal_reason = ?, reversed_by = ? "
                           "WHERE source = ? AND payment_id = ?",
                           [bulk.sqlite_datetime(r["reversed_at"]), r["reversal_reason"], r["reversed_by"],
                            r["source"], r["payment_id"]], many=False) for r in changes.reversals]
    out += bulk.insert_statements(t.readings, changes.readings)
    out += bulk.update_statements(t.meters, "id", [values | {"id": meter_id}
                                                   for meter_id, values in sorted(changes.meters.items())])
    # guarded: an account whose version is not the one read fails the batch (StaleWrite)
    out += bulk.update_statements(t.accounts, "id", [row | {"id": account_id, "version": version}
                                                     for account_id, version, row in changes.accounts],
                                  increment="version")
    if changes.limiter is not None:
        old, new = changes.limiter
        if old is None:
            out.append(bulk.Statement("INSERT INTO site_state (name, state) VALUES (?, ?)",
                                      [LIMITER, bulk.dumps_json(new)], many=False))
        else:
            out.append(bulk.Statement("UPDATE site_state SET state = ? WHERE name = ? AND state = ?",
                                      [bulk.dumps_json(new), LIMITER, bulk.dumps_json(old)], guard=1, many=False))
    out += bulk.insert_statements(t.outbox, changes.outbox)
    out += bulk.insert_statements(t.audit_log, changes.audits)
    return out

