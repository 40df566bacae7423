"""The storage ports (``gateway.service.ports``) on SQLAlchemy Core: SQLite and PostgreSQL, one code path. Here
the storage and the unit of work (transactions, the write lock, writes of many rows, a batch's checks and write);
the repositories working inside it are in ``gateway.adapters.repositories``.

Writes of many rows are one ``executemany`` per table and set of columns, of a statement SQLAlchemy compiles
once. (Multi-row ``INSERT ... VALUES (...), (...)`` and ``UPDATE ... FROM (VALUES ...)`` were measured too:
SQLAlchemy compiles such a statement again at every execution, which made them ten times slower per row; see
docs/benchmarks.md.) A batch locks the rows it changes (in key order, so that two instances never deadlock; on
SQLite the in-process write lock does it) and checks their versions before it writes.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Sequence
from typing import Any, Self

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from drivers.priority_lock import PriorityLock
from gateway.adapters import tables as t
from gateway.adapters.database import IMMEDIATE
from gateway.adapters.account_rows import account_row
from gateway.adapters.alarm_rows import Alarms
from gateway.adapters.fleet_rows import Fleet
from gateway.adapters.outbound_rows import Notices, Outbox
from gateway.adapters.repositories import Accounts, Commands, Ledger, Meters, Payments, chunks, command_record
from gateway.domain.account import PrepaidAccount
from gateway.service import ports
from gateway.service.errors import DuplicateRow
from gateway.service.ports import BatchChanges, StaleWrite

__all__ = ["LIMITER", "SqlStorage", "SqlUnitOfWork", "chunks", "command_record", "groups", "is_duplicate"]

LIMITER = "rate_limiter"  # the site_state row of the automatic-disconnect rate limiter
_updates: dict[tuple[Any, ...], Any] = {}  # the UPDATE statements of ``SqlUnitOfWork.update``, made once


def groups(rows: Sequence[dict[str, Any]]) -> dict[tuple[str, ...], list[dict[str, Any]]]:
    """The rows grouped by their set of keys (one statement each)."""
    out: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        out.setdefault(tuple(row), []).append(row)
    return out


class SqlStorage(ports.Storage):
    """Units of work on one engine; on SQLite also the in-process write lock (SQLite has one writer at a time:
    our own writers queue for it instead of spinning on SQLITE_BUSY, short transactions first)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.exclusive = engine.dialect.name == "sqlite"
        self.write_lock = PriorityLock() if self.exclusive else None

    def account_row(self, account: PrepaidAccount, now: dt.datetime) -> dict[str, Any]:
        return account_row(account, now)

    def __call__(self, *, readonly: bool = False, background: bool = False) -> SqlUnitOfWork:
        return SqlUnitOfWork(self.engine, None if readonly else self.write_lock, urgent=not background)

    @contextlib.asynccontextmanager
    async def reading(self) -> AsyncIterator[AsyncConnection]:
        """A connection for queries (the read models), in a transaction that is rolled back."""
        async with self.engine.connect() as conn:
            yield conn


def is_duplicate(message: str) -> bool:
    """Whether a driver's integrity error is a unique key's violation (another writer made the row first:
    ``DuplicateRow``), on SQLite or PostgreSQL."""
    text = message.lower()
    return "unique" in text or "duplicate key" in text


class SqlUnitOfWork(ports.UnitOfWork):
    def __init__(self, engine: AsyncEngine, write_lock: PriorityLock | None, *, urgent: bool = True) -> None:
        self._engine = engine
        self._write_lock = write_lock  # None for read-only work (and on PostgreSQL, where row locks do the job)
        self._urgent = urgent
        self._conn: AsyncConnection | None = None
        self._locked = False
        self._just_committed = False  # nothing done since the last commit
        self.accounts = Accounts(self)
        self.meters = Meters(self)
        self.payments = Payments(self)
        self.commands = Commands(self)
        self.ledger = Ledger(self)
        self.outbox = Outbox(self)
        self.notices = Notices(self)
        self.fleet = Fleet(self)
        self.alarms = Alarms(self)

    @property
    def conn(self) -> AsyncConnection:
        if self._conn is None:
            raise RuntimeError("unit of work used outside `async with`")
        self._just_committed = False
        return self._conn

    @property
    def dialect(self) -> str:
        return self._engine.dialect.name

    async def __aenter__(self) -> Self:
        if self._write_lock is not None:
            await self._write_lock.acquire(urgent=self._urgent)
            self._locked = True
        try:
            self._conn = await self._engine.connect()
            if self._write_lock is not None:  # SQLite, a unit of work that writes
                (await self._conn.get_raw_connection()).info[IMMEDIATE] = True
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

    # --- rows of any table ---------------------------------------------------------------------------------
    async def insert(self, table: sa.Table, rows: Sequence[dict[str, Any]]) -> None:
        """INSERT ``rows``: one executemany per set of keys."""
        for group in groups(rows).values():
            await self.conn.execute(sa.insert(table), group)

    async def update(self, table: sa.Table, key: str, rows: Sequence[dict[str, Any]], *,
                     increment: str | None = None) -> None:
        """UPDATE ``table`` from ``rows`` (matched on column ``key``): one executemany per set of keys;
        ``increment`` names a counter to add one to in each row."""
        for names, group in groups(rows).items():
            statement = _updates.get((table.name, names, key, increment))
            if statement is None:
                values: dict[str, Any] = {c: sa.bindparam(c, type_=table.c[c].type) for c in names if c != key}
                if increment is not None:
                    values[increment] = table.c[increment] + 1
                statement = _updates[(table.name, names, key, increment)] = sa.update(table).where(
                    table.c[key] == sa.bindparam("_key", type_=table.c[key].type)).values(values)
            # (the key goes in as "_key" only: a parameter named after a column is SET too, and setting an
            # account's id, even to itself, makes SQLite check every row that refers to it)
            await self.conn.execute(statement, [{**{n: row[n] for n in names if n != key}, "_key": row[key]}
                                                for row in group])

    async def lock(self, table: sa.Table, key: str, ids: Sequence[Any], column: str) -> dict[Any, Any]:
        """``column`` of the rows whose ``key`` is in ``ids``, locked until the commit on PostgreSQL (in key order,
        so that writers never deadlock)."""
        out: dict[Any, Any] = {}
        ordered = sorted(ids)
        for start, size in chunks(len(ordered), 1):
            statement = (sa.select(table.c[key], table.c[column]).where(table.c[key].in_(ordered[start:start + size]))
                         .order_by(table.c[key]).with_for_update())
            out.update((row[0], row[1]) for row in await self.conn.execute(statement))
        return out

    # --- the port ------------------------------------------------------------------------------------------
    async def limiter(self) -> dict[str, Any] | None:
        row = (await self.execute(sa.select(t.site_state.c.state).where(t.site_state.c.name == LIMITER))
               ).one_or_none()
        return None if row is None else row.state  # type: ignore[no-any-return]

    def upsert(self, table: sa.Table) -> Any:
        """An INSERT of the database's dialect, to which ``on_conflict_do_update`` or ``_do_nothing`` is added."""
        return (sqlite_insert if self.dialect == "sqlite" else postgresql_insert)(table)

    def insert_new(self, table: sa.Table) -> Any:
        """An INSERT that leaves out the rows whose key is there already (another instance added them)."""
        return self.upsert(table).on_conflict_do_nothing()

    async def ensure_limiter(self) -> None:
        await self.execute(self.insert_new(t.site_state).values(name=LIMITER, state={"recent": []}))

    async def add_outbox(self, topic: str, payload: dict[str, Any], now: dt.datetime) -> None:
        await self.execute(sa.insert(t.outbox).values(topic=topic, payload=payload, created_at=now))

    async def audit(self, actor: str, action: str, target: str | None, detail: dict[str, Any] | None,
                    now: dt.datetime) -> None:
        await self.execute(sa.insert(t.audit_log).values(at=now, actor=actor, action=action, target=target,
                                                         detail=detail))

    async def api_keys(self) -> list[tuple[str, str, str, list[str] | None]]:
        k = t.api_keys.c
        rows = await self.execute(sa.select(k.sha256, k.name, k.role, k.sources))
        return [(row.sha256, row.name, row.role, row.sources) for row in rows]

    async def put_api_key(self, name: str, sha256: str, role: str, sources: list[str] | None,
                          now: dt.datetime) -> None:
        await self.execute(sa.delete(t.api_keys).where(t.api_keys.c.name == name))
        await self.execute(sa.insert(t.api_keys).values(name=name, sha256=sha256, role=role, sources=sources,
                                                        created_at=now))

    async def write_batch(self, changes: BatchChanges) -> None:
        try:
            await self._write_batch(changes)
        except sa.exc.IntegrityError as exc:
            if is_duplicate(str(exc.orig)):
                raise DuplicateRow(str(exc.orig)[:200]) from exc
            raise

    async def _write_batch(self, changes: BatchChanges) -> None:
        await self.check(changes)
        for record in changes.commands:
            await self.commands.add(record)
        await self.insert(t.ledger, changes.ledger)
        await self.insert(t.payments, changes.payments)
        for record in changes.reversals:
            await self.execute(sa.update(t.payments).where(
                t.payments.c.source == record["source"], t.payments.c.payment_id == record["payment_id"]).values(
                reversed_at=record["reversed_at"], reversal_reason=record["reversal_reason"],
                reversed_by=record["reversed_by"]))
        await self.insert(t.readings, changes.readings)
        await self.update(t.meters, "id", [values | {"id": meter_id} for meter_id, values
                                           in sorted(changes.meters.items())])
        await self.update(t.accounts, "id", [row | {"id": account_id} for account_id, _, row in changes.accounts],
                          increment="version")
        if changes.limiter is not None:
            if changes.limiter[0] is None:  # no row yet (a database the catalog was never synced to)
                await self.ensure_limiter()
            await self.execute(sa.update(t.site_state).where(t.site_state.c.name == LIMITER)
                               .values(state=changes.limiter[1]))
        await self.insert(t.outbox, changes.outbox)
        await self.insert(t.audit_log, changes.audits)

    async def check(self, changes: BatchChanges) -> None:
        """Lock the rows the batch changes and make sure they are as the batch read them (else ``StaleWrite``)."""
        expected = {account_id: version for account_id, version, _ in changes.accounts}
        if expected and await self.lock(t.accounts, "id", list(expected), "version") != expected:
            raise StaleWrite("an account was changed by another writer since it was read")
        if changes.meters and self.dialect != "sqlite":  # (SQLite locks the whole database when it writes)
            await self.lock(t.meters, "id", list(changes.meters), "id")
        if changes.limiter is not None:
            # Another instance may have counted a trip since this batch read the limiter. Batches that count no
            # trip never lock its row, so payments and readings of several instances go on side by side.
            stored = await self.lock(t.site_state, "name", [LIMITER], "state")
            if stored.get(LIMITER) != changes.limiter[0]:
                raise StaleWrite("the rate limiter changed since it was read")
