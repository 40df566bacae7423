"""Payments/s and readings/s through the service layer on SQLite (WAL, synchronous=FULL), on each write path
(the portable default, the portable path on a loop of its own: ``database.own_loop``, ``database.sqlite_pipeline``),
each next to a baseline measured in the same run:

- payments: the gateway's durable payments/s (concurrent clients, group commit) against the same number of bare
  sqlite3 ``INSERT`` + ``COMMIT`` with the same durability settings;
- readings: readings/s through the balance engine with ledger commits, against the same bare insert loop. Every
  meter has one reading in flight at a time, as in the gateway (a meter's next poll waits for its reading to be
  recorded): one client per meter by default. Every reading adds energy, so every one is billed and stored.

Usage: python bench/ledger.py [--payments 20000] [--readings 50000] [--clients 256] [--meters 1000]
                              [--reading-clients METERS]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from drivers.base import Reading  # noqa: E402
from gateway.bootstrap import Gateway  # noqa: E402
from gateway.settings import Settings  # noqa: E402


def bare_sqlite(path: Path, n: int) -> float:
    """n single-row INSERT + COMMIT in WAL mode with synchronous=FULL; returns rows/s."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE p (source TEXT, payment_id TEXT, account_id TEXT, amount INTEGER, "
                 "PRIMARY KEY (source, payment_id))")
    start = time.perf_counter()
    for i in range(n):
        conn.execute("BEGIN")
        conn.execute("INSERT INTO p VALUES (?, ?, ?, ?)", ("billing", f"P-{i}", f"A-{i % 1000}", 100))
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    return n / elapsed


# the write paths (database settings): the default (portable, on the gateway's loop), the portable path on a
# loop of its own, and the SQLite pipeline (on a loop of its own)
PATHS: dict[str, dict[str, bool]] = {"portable": {}, "portable, own loop": {"own_loop": True},
                                     "pipeline": {"sqlite_pipeline": True}}


def site(db: Path, accounts: int, path: dict[str, bool]) -> Settings:
    return Settings.model_validate({
        "database": {"url": f"sqlite:///{db}", **path},
        "tariffs": {"flat": {"kind": "flat", "price": "0.5600"}},
        "accounts": [{"id": f"A-{i}", "tariff": "flat", "opening_balance": "100000.00"} for i in range(accounts)],
        "buses": [{"id": f"b{n}", "protocol": "modbus-tcp", "host": "127.0.0.1", "port": 9 + n}
                  for n in range(accounts // 247 + 1)],  # 247 unit ids per bus
        "meters": [{"id": f"M-{i}", "bus": f"b{i // 247}", "unit_id": 1 + i % 247, "account": f"A-{i}",
                    "poll_interval_s": 86400} for i in range(accounts)],
    })


async def gateway_payments(db: Path, n: int, clients: int, accounts: int, path: dict[str, bool]
                           ) -> tuple[float, int]:
    async with Gateway(site(db, accounts, path), base_dir=db.parent, run_buses=False) as gw:
        queue = iter(range(n))

        async def client() -> None:
            for i in queue:
                await gw.service.record_payment(source="billing", payment_id=f"P-{i}", account_id=f"A-{i % accounts}",
                                                amount_fen=100)

        start = time.perf_counter()
        await asyncio.gather(*[client() for _ in range(clients)])
        elapsed = time.perf_counter() - start
        return n / elapsed, gw.service.writer.batches


async def gateway_readings(db: Path, n: int, clients: int, meters: int, path: dict[str, bool]
                           ) -> tuple[float, int]:
    t0 = dt.datetime(2026, 11, 23, tzinfo=dt.UTC)
    async with Gateway(site(db, meters, path), base_dir=db.parent, run_buses=False) as gw:
        writer = gw.service.writer
        batches_before = writer.batches
        queue = iter(range(n))

        async def client() -> None:
            for i in queue:
                meter, round_ = i % meters, i // meters
                # every meter consumes 5 Wh per second; readings one second apart
                reading = Reading(f"M-{meter}", t0 + dt.timedelta(seconds=round_), 1_000_000 + 5 * round_,
                                  power_w=18_000)
                await gw.service.record_reading(reading)

        start = time.perf_counter()
        await asyncio.gather(*[client() for _ in range(clients)])
        elapsed = time.perf_counter() - start
        return n / elapsed, writer.batches - batches_before


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--payments", type=int, default=20_000)
    parser.add_argument("--readings", type=int, default=50_000)
    parser.add_argument("--clients", type=int, default=256)
    parser.add_argument("--meters", type=int, default=1000)
    parser.add_argument("--reading-clients", type=int, default=None,
                        help="concurrent submitters of readings (default: one per meter)")
    parser.add_argument("--baseline", type=int, default=5_000, help="bare inserts for the baseline")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        root = Path(tmp)
        bare = bare_sqlite(root / "bare.db", args.baseline)
        print(f"baseline: bare sqlite3 INSERT+COMMIT (WAL, synchronous=FULL): {bare:,.0f}/s")
        clients = args.reading_clients or args.meters
        for n, (path, database) in enumerate(PATHS.items()):
            pay, batches = asyncio.run(gateway_payments(root / f"pay-{n}.db", args.payments, args.clients,
                                                        args.meters, database))
            print(f"{path}: durable payments through the service layer: {pay:,.0f}/s "
                  f"({args.payments} payments, {args.clients} concurrent clients, {batches} commits); "
                  f"ratio to bare commits: {pay / bare:.2f}")
            rd, batches = asyncio.run(gateway_readings(root / f"read-{n}.db", args.readings, clients, args.meters,
                                                       database))
            print(f"{path}: readings through the engine with ledger commits: {rd:,.0f}/s "
                  f"({args.readings} readings of {args.meters} meters, {clients} concurrent clients, "
                  f"{batches} commits); ratio to bare commits: {rd / bare:.2f}")

if __name__ == "__main__":
    main()
