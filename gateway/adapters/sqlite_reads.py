"""The SQLite fast path for the API's hottest reads (``database.sqlite_direct_reads``): one account, one meter.

The portable read store (``gateway.adapters.read_store``) runs each statement through SQLAlchemy and aiosqlite:
a statement is several hand-overs between the event loop and aiosqlite's thread (a cursor, the statement, its
rows, closing it), and the thread waits for the GIL of a busy loop each time. A point read by primary key in
SQLite takes microseconds, less than one hand-over: here the reads of one account or one meter run on the event
loop itself, on a ``sqlite3`` connection of their own opened read-only, each one statement, so one read
transaction (WAL: a reader never waits for the writer and sees every commit before it began, so a read after a
payment's answer sees the payment).

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
from gateway.service.ports import PaymentKey
from gateway.service.views import AccountRows, MeterRows

__all__ = ["SqliteReadStore"]

# One statement each: a statement is its own read transaction (one snapshot), and each statement run is a turn
# of the GIL given up and taken back.
_ACCOUNT = ("SELECT a.id, a.balance_fen, a.supply, a.deferred_reason, a.state, a.updated_at, "
            "m.id, m.relay, m.relay_fault FROM accounts a "
            "LEFT JOIN meters m ON m.account_id = a.id AND m.status = 'active' "  # (a retired meter's relay is
            "WHERE a.id = ? ORDER BY m.id")                                       # no longer the account's)
_METER = ("SELECT (SELECT state FROM accounts WHERE id = :account), "
          "m.id, m.account_id, m.relay, m.relay_fault, m.health, m.consecutive_failures, m.last_error, "
          "m.last_success_at, r.id, r.taken_at, r.energy_wh, r.power_w, r.voltage_v, r.current_a, r.relay, r.billed "
          "FROM (SELECT 1) LEFT JOIN meters m ON m.id = :meter "
          "LEFT JOIN (SELECT id, taken_at, energy_wh, power_w, voltage_v, current_a, relay, billed FROM readings "
          "WHERE meter_id = :meter ORDER BY taken_at DESC, id DESC LIMIT 1) r ON 1")  # the newest taken

_PAYMENT_COLUMNS = ("source", "payment_id", "account_id", "amount_fen", "paid_at", "channel", "balance_after_fen",
                    "received_at", "reversed_at", "reversal_reason", "recorded_by", "reversed_by")
_PAYMENT_TIMES = ("paid_at", "received_at", "reversed_at")
_PAYMENTS = f"SELECT {', '.join(_PAYMENT_COLUMNS)} FROM payments WHERE (source, payment_id) IN (VALUES {{}})"
_PAYMENTS_AT_ONCE = 256  # keys per statement (two parameters each)

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

    def _read(self, sql: str, parameters: Any) -> list[Any] | None:
        """The rows of one statement (its own read transaction); None when SQLite is busy."""
        try:
            return self._conn().execute(sql, parameters).fetchall()
        except sqlite3.OperationalError:
            self.close()  # (a fresh connection next time, whatever state this one was left in)
            self.fallbacks += 1
            return None

    async def account(self, account_id: str) -> AccountRows:
        rows = self._read(_ACCOUNT, (account_id,))
        if rows is None:
            return await super().account(account_id)
        if not rows:
            return AccountRows(None, [])
        row = rows[0]
        account = AccountRow(row[0], row[1], row[2], row[3], _json(row[4]), _utc(row[5]))
        return AccountRows(account, [RelayRow(*r[6:9]) for r in rows if r[6] is not None])

    async def meter(self, meter_id: str, account_id: str) -> MeterRows:
        rows = self._read(_METER, {"account": account_id, "meter": meter_id})
        if rows is None:
            return await super().meter(meter_id, account_id)
        [row] = rows
        state, meter, newest = row[0], row[1:9], row[9:17]
        return MeterRows(None if meter[0] is None else MeterRow(*meter[:7], _utc(meter[7])),
                         None if newest[0] is None else ReadingRow(newest[0], _utc(newest[1]), *newest[2:7],
                                                                   bool(newest[7])),
                         None if state is None else _json(state))


    def stored_payments(self, keys: set[PaymentKey]) -> dict[PaymentKey, dict[str, Any]] | None:
        ordered = sorted(keys)
        out: dict[PaymentKey, dict[str, Any]] = {}
        for start in range(0, len(ordered), _PAYMENTS_AT_ONCE):
            part = ordered[start:start + _PAYMENTS_AT_ONCE]
            rows = self._read(_PAYMENTS.format(", ".join(["(?, ?)"] * len(part))), [v for key in part for v in key])
            if rows is None:
                return None
            for row in rows:
                record = dict(zip(_PAYMENT_COLUMNS, row, strict=True))
                for name in _PAYMENT_TIMES:
                    record[name] = _utc(record[name])
                out[(record["source"], record["payment_id"])] = record
        return out


def _json(text: Any) -> Any:
    return orjson.loads(text) if isinstance(text, (str, bytes)) else text
