"""How long a /metrics scrape reads the database at scale (docs/metrics.md): a generated SQLite database with
100,000 accounts and meters, a ledger of 1,000,000 entries, 200,000 commands (a few hundred active), 300,000
outbox events (10,000 waiting for MQTT), 100,000 notices and 5,000 alarms. Each scrape is timed whole (the
database's figures and the text; the first of a series also counts the accounts by status and supply and the
active commands, which later scrapes take from it for 30 s); the target is well under a second. The baseline
is a bare ``SELECT 1`` on the same engine.

    .venv/bin/python bench/metrics_scrape.py [--accounts 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sqlalchemy as sa  # noqa: E402

from gateway.adapters.database import create_engine, migrate  # noqa: E402
from gateway.adapters.metric_rows import SqlMetricRows  # noqa: E402
from gateway.adapters.sql import SqlStorage  # noqa: E402
from gateway.service.metrics import GatewayMetrics  # noqa: E402


def generate(path: Path, accounts: int) -> None:
    at = dt.datetime(2026, 12, 3, tzinfo=dt.UTC).isoformat()
    state = json.dumps({"version": 1})
    with sqlite3.connect(path) as db:
        db.executemany("INSERT INTO accounts (id, balance_fen, supply, state, updated_at) VALUES (?, ?, ?, ?, ?)",
                       ((f"A-{i}", i % 10_000 - 500, "connected" if i % 50 else "disconnected", state, at)
                        for i in range(accounts)))
        db.executemany("INSERT INTO meters (id, account_id, bus_id, unit_id) VALUES (?, ?, ?, ?)",
                       ((f"M-{i}", f"A-{i}", f"bus-{i // 247}", i % 247 + 1) for i in range(accounts)))
        kinds = ("charge",) * 8 + ("payment", "reversal")
        db.executemany("INSERT INTO ledger_entries (account_id, kind, amount_fen, balance_after_fen, created_at) "
                       "VALUES (?, ?, ?, 0, ?)",
                       ((f"A-{i % accounts}", kinds[i % 10], 100, at) for i in range(accounts * 10)))
        states = ("confirmed",) * 997 + ("queued", "sending", "sent")
        db.executemany("INSERT INTO commands (id, meter_id, action, origin, state, created_at, updated_at, "
                       "expires_at) VALUES (?, ?, ?, 'automatic', ?, ?, ?, ?)",
                       ((f"c-{i}", f"M-{i % accounts}", "open" if i % 2 else "close", states[i % 1000], at, at, at)
                        for i in range(accounts * 2)))
        waiting = 10_000
        db.executemany("INSERT INTO outbox (topic, payload, created_at, published_at) VALUES (?, '{}', ?, ?)",
                       ((f"accounts/A-{i % accounts}/balance", at, at if i < accounts * 3 - waiting else None)
                        for i in range(accounts * 3)))
        db.executemany("INSERT INTO notices (dedup_key, event_id, kind, account_id, contact, role, channel, "
                       "recipient, language, subject, text, final, state, attempts, issued_at, created_at, updated_at)"
                       " VALUES (?, 1, 'low_balance_1', 'A-1', 'c', 'customer', 'sms', 'r', 'en', 's', 't', 0, ?, 0, "
                       "?, ?, ?)", ((f"k-{i}", (("delivered",) * 98 + ("pending", "failed"))[i % 100], at, at, at)
                                    for i in range(accounts)))
        db.executemany("INSERT INTO alarms (kind, subject, severity, state, raised_at, last_seen_at, updated_at) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?)",
                       ((("meter_offline", "tamper")[i % 2], f"M-{i}", ("major", "critical")[i % 2],
                         ("open", "acknowledged", "resolved")[i % 3], at, at, at) for i in range(accounts // 20)))
        db.execute("ANALYZE")


async def run(accounts: int, scrapes: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "metrics.db"
        engine = create_engine(f"sqlite:///{path}")
        await migrate(engine)
        started = time.perf_counter()
        generate(path, accounts)
        print(f"generated {accounts:,} accounts in {time.perf_counter() - started:.1f} s")
        storage = SqlStorage(engine)
        baseline = []
        for _ in range(scrapes):
            t0 = time.perf_counter()
            async with storage.reading() as conn:
                await conn.execute(sa.text("SELECT 1"))
            baseline.append(time.perf_counter() - t0)
        for publishing in (False, True):
            metrics = GatewayMetrics(SqlMetricRows(storage), publishing=publishing)
            await metrics.start()
            with sqlite3.connect(path) as db:  # new entries between scrapes: 10,000 (a busy minute)
                db.executemany("INSERT INTO ledger_entries (account_id, kind, amount_fen, balance_after_fen, "
                               "created_at) VALUES (?, 'charge', 7, 0, '2026-12-03T00:00:00+00:00')",
                               ((f"A-{i}",) for i in range(10_000)))
            times = []
            for _ in range(scrapes):
                t0 = time.perf_counter()
                body = await metrics.render()
                times.append(time.perf_counter() - t0)
            label = "with the MQTT backlog" if publishing else "without MQTT"
            print(f"scrape {label}: with the pass over accounts and commands (every 30 s) {times[0] * 1000:.1f} ms, "
                  f"the others median {statistics.median(times[1:]) * 1000:.1f} ms ({len(body):,} bytes; baseline "
                  f"SELECT 1: {statistics.median(baseline) * 1000:.2f} ms; target < 1000 ms: "
                  f"{'met' if max(times) < 1 else 'NOT met'})")
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--scrapes", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(run(args.accounts, args.scrapes))


if __name__ == "__main__":
    main()
