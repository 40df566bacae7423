"""The SQLite fast path for the API's hottest reads (``database.sqlite_direct_reads``): one account, one meter.

The portable read store (``gateway.adapters.read_store``) runs each statement through SQLAlchemy and aiosqlite:
a statement is several hand-overs between the event loop and aiosqlite's thread (a cursor, the statement, its
rows, closing it), and the thread waits for the GIL of a busy loop each time. A point read by primary key in
SQLite takes microseconds, less than one hand-over: here the reads of one account or one meter run on the event
loop itself, on a ``sqlite3`` connection of their own opened read-only, each in one read transaction (WAL: a
reader never waits for the writer and sees every commit before it began, so a read after a payment's answer sees
the payment).

Should SQLite be busy anyway (a checkpoint's rare exclusive moment), the read goes the portable way, which waits.
Everything else (pages of rows, reports) stays portable. Rows come back with the attributes and the Python types
the portable store gives (aware UTC datetimes, parsed JSON, booleans): ``tests/integration/test_sqlite_reads.py``
compares the two.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import urllib.parse
from collections import namedtuple
from typing import Any

import orjson

from gateway.adapters.read_store import SqlReadStore
from gateway.adapters.sql import SqlStorage
from gateway.service.views import AccountRows, MeterRows

__all__ = ["SqliteReadStore"]

_ACCOUNT = "SELECT id, balance_fen, supply, deferred_reason, state, updated_at FROM accounts WHERE id = ?"
_RELAYS = "SELECT id, relay, relay_fault FROM meters WHERE account_id = ? AND status = 'active' ORDER BY id"
_METER = ("SELECT id, account_id, relay, relay_fault, health, consecutive_failures, last_error, last_success_at "
          "FROM meters WHERE id = ?")
_NEWEST = ("SELECT id, taken_at, energy_wh, power_w, voltage_v, current_a, relay, billed FROM readings "
           "WHERE meter_id = ? ORDER BY taken_at DESC, id DESC LIMIT 1")
_STATE = "SELECT state FROM accounts WHERE id = ?"

AccountRow = namedtuple("AccountRow", "id balance_fen supply deferred_reason state updated_at")
RelayRow = namedtuple("RelayRow", "id relay relay_fault")
MeterRow = namedtuple("MeterRow", "id account_id relay relay_fault health consecutive_failures last_error "
                                  "last_success_at")
ReadingRow = namedtuple("ReadingRow", "id taken_at energy_wh power_w voltage_v current_a relay billed")


def _utc(value: str | None) -> dt.datetime | None:
    """A stored time (SQLAlchemy's SQLite text, UTC without a zone) as an aware UTC datetime."""
    return None if value is None else dt.datetime.fromisoformat(value).replace(tzinfo=dt.UTC)


class SqliteReadStore(SqlReadStore):
    """The portable read store, with the reads of one account and one meter done directly (see above)."""

    def __init__(self, storage: SqlStorage, path: str) -> None:
        super().__init__(storage)
        self.path = path
        self._db: sqlite3.Connection | None = None
        self.fallbacks = 0  # reads that went the portable way (SQLite was busy)

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            db = sqlite3.connect(f"file:{urllib.parse.quote(self.path)}?mode=ro", uri=True, isolation_level=None,
                                 check_same_thread=False)  # (quoted: a path may hold "#", "?" or "%")
            db.execute("PRAGMA busy_timeout=0")  # never wait on the event loop: busy → the portable way
            self._db = db
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _read(self, *statements: tuple[str, tuple[Any, ...], bool]) -> list[Any] | None:
        """Run ``(sql, parameters, all_rows)`` statements in one read transaction; None when SQLite is busy."""
        try:
            db = self._conn()
            db.execute("BEGIN")
            try:
                return [db.execute(sql, args).fetchall() if many else db.execute(sql, args).fetchone()
                        for sql, args, many in statements]
            finally:
                db.execute("COMMIT")
        except sqlite3.OperationalError:
            self.close()  # (a fresh connection next time, whatever state this one was left in)
            self.fallbacks += 1
            return None

    async def account(self, account_id: str) -> AccountRows:
        rows = self._read((_ACCOUNT, (account_id,), False), (_RELAYS, (account_id,), True))
        if rows is None:
            return await super().account(account_id)
        row, meters = rows
        if row is None:
            return AccountRows(None, [])
        account = AccountRow(row[0], row[1], row[2], row[3], _json(row[4]), _utc(row[5]))
        return AccountRows(account, [RelayRow(*m) for m in meters])

    async def meter(self, meter_id: str, account_id: str) -> MeterRows:
        rows = self._read((_METER, (meter_id,), False), (_NEWEST, (meter_id,), False),
                          (_STATE, (account_id,), False))
        if rows is None:
            return await super().meter(meter_id, account_id)
        row, newest, state = rows
        meter = None if row is None else MeterRow(*row[:7], _utc(row[7]))
        reading = None if newest is None else ReadingRow(newest[0], _utc(newest[1]), *newest[2:7], bool(newest[7]))
        return MeterRows(meter, reading, None if state is None else _json(state[0]))


def _json(text: Any) -> Any:
    return orjson.loads(text) if isinstance(text, (str, bytes)) else text
