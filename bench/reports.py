"""The arrears report over 100,000 accounts (target: under 1 s), through the service layer and through the HTTP API,
each next to a baseline measured in the same run: a bare sqlite3 ``SELECT`` of the same accounts' columns (what
the report adds is the ledger's look-ups: since when each account is below, its last payment).

The database is a SQLite file (WAL) migrated by the gateway and filled with sqlite3: ``--accounts`` open
accounts, ``--arrears`` of them (a share) below zero, the others at or above it, each with a ledger of an opening
entry, charges and now and then a payment over 180 days (``--entries`` on average), and the payments table. The
report is read whole (every row, in the chunks the CSV answer reads) and as the first JSON page (1,000 rows); over
HTTP in process (httpx's ASGI transport, the gateway's own app and key check), as CSV (whole) and JSON (first
page). Each figure is the median of ``--runs`` runs after one warm-up run: wall time, and the CPU time of the
process (its database thread included), the steadier figure on a shared machine.

Usage: python bench/reports.py [--accounts 100000] [--arrears 0.12] [--entries 10] [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402

from gateway.adapters.database import create_engine, migrate  # noqa: E402
from gateway.adapters.read_store import SqlReadStore  # noqa: E402
from gateway.adapters.report_rows import SqlReportStore  # noqa: E402
from gateway.adapters.sql import SqlStorage  # noqa: E402
from gateway.api.main import create_app  # noqa: E402
from gateway.api.security import Caller  # noqa: E402
from gateway.service.catalog import Catalog  # noqa: E402
from gateway.service.facade import Service  # noqa: E402
from gateway.service.reports import Reports  # noqa: E402
from gateway.settings import hash_key  # noqa: E402

NOW = dt.datetime(2026, 12, 3, 8, 0, tzinfo=dt.UTC)
START = NOW - dt.timedelta(days=180)
KEY = "bench-viewer-key"
TARGET_S = 1.0


def _t(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")


def fill(db: Path, accounts: int, arrears: float, entries: int, seed: int = 17) -> tuple[int, int]:
    """The accounts, their ledgers and payments; returns (accounts in arrears, ledger entries)."""
    rnd = random.Random(seed)
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=WAL")
    account_rows, ledger_rows, payment_rows = [], [], []
    below = 0
    for i in range(accounts):
        account_id = f"A-{i:06d}"
        in_arrears = rnd.random() < arrears
        n = max(2, int(rnd.expovariate(1 / entries)) + 1)
        times = sorted(START + dt.timedelta(seconds=rnd.uniform(0, (NOW - START).total_seconds() - 3600))
                       for _ in range(n - 1))
        balance = rnd.randint(2_000, 20_000)
        ledger_rows.append((account_id, "opening", balance, balance, _t(START), "settings", None, None, None, None))
        for k, at in enumerate(times):
            if k % 4 == 3:  # a payment now and then
                amount = rnd.choice((2_000, 5_000, 10_000))
                payment_id = f"P-{i}-{k}"
                balance += amount
                ledger_rows.append((account_id, "payment", amount, balance, _t(at), f"billing/{payment_id}",
                                    "billing", payment_id, None, None))
                payment_rows.append(("billing", payment_id, account_id, amount, _t(at), rnd.choice(
                    ("alipay", "wechat", "counter")), balance, _t(at)))
            else:
                amount = rnd.randint(100, 3_000)
                balance -= amount
                ledger_rows.append((account_id, "charge", -amount, balance, _t(at), f"M-{i:06d}", None, None,
                                    amount * 2, "2026-11"))
        if balance < 0 and not in_arrears:  # a customer who keeps paying: a last top-up
            at = NOW - dt.timedelta(hours=rnd.uniform(1, 48))
            amount = -balance + rnd.randint(500, 5_000)
            payment_id = f"P-{i}-last"
            balance += amount
            ledger_rows.append((account_id, "payment", amount, balance, _t(at), f"billing/{payment_id}", "billing",
                                payment_id, None, None))
            payment_rows.append(("billing", payment_id, account_id, amount, _t(at), "counter", balance, _t(at)))
        if in_arrears:  # a last charge that takes it below zero
            amount = balance + rnd.randint(1, 5_000)
            balance -= amount
            ledger_rows.append((account_id, "charge", -amount, balance, _t(NOW - dt.timedelta(
                days=rnd.uniform(0, 60))), f"M-{i:06d}", None, None, amount * 2, "2026-11"))
        below += balance < 0
        account_rows.append((account_id, balance, "disconnected" if balance < 0 and rnd.random() < 0.7 else
                             "connected", "", "{}", 1, _t(NOW), "open", "flat", rnd.choice(("", "A", "B", "C")),
                             rnd.random() < 0.01, _t(START)))
    conn.executemany("INSERT INTO accounts (id, balance_fen, supply, deferred_reason, state, version, updated_at, "
                     "status, tariff, credit_class, protected, opened_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                     account_rows)
    ledger_rows.sort(key=lambda r: r[4])  # ids in time order, as the gateway writes them
    conn.executemany("INSERT INTO ledger_entries (account_id, kind, amount_fen, balance_after_fen, created_at, "
                     "reference, payment_source, payment_id, energy_wh, period) VALUES (?,?,?,?,?,?,?,?,?,?)",
                     ledger_rows)
    conn.executemany("INSERT INTO payments (source, payment_id, account_id, amount_fen, paid_at, channel, "
                     "balance_after_fen, received_at) VALUES (?,?,?,?,?,?,?,?)", payment_rows)
    conn.commit()
    conn.execute("ANALYZE")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # as the gateway's own writes leave it: no 175 MB WAL to read
    conn.close()
    return below, len(ledger_rows)


def bare(db: Path) -> int:
    """The baseline: the same accounts' own columns, no ledger look-ups."""
    conn = sqlite3.connect(db)
    rows = conn.execute("SELECT id, balance_fen, supply, credit_class, protected FROM accounts "
                        "WHERE status = 'open' AND balance_fen < 0 ORDER BY id").fetchall()
    conn.close()
    return len(rows)


def timed(runs: int, job: Callable[[], Awaitable[Any]]) -> tuple[tuple[float, float], Any]:
    """The median wall time and the median CPU time of the process (its database threads included) of ``runs``
    runs of ``job``, and its result."""
    async def go() -> tuple[tuple[float, float], Any]:
        result = await job()  # warm-up
        walls, cpus = [], []
        for _ in range(runs):
            start, cpu = time.perf_counter(), time.process_time()
            result = await job()
            walls.append(time.perf_counter() - start)
            cpus.append(time.process_time() - cpu)
        return (statistics.median(walls), statistics.median(cpus)), result
    return asyncio.get_event_loop().run_until_complete(go())


def line(name: str, times: tuple[float, float], baseline: tuple[float, float], *, rows: int,
         target: float | None = TARGET_S) -> None:
    wall, cpu = times
    verdict = "" if target is None else f"  target < {target:.1f} s: {'met' if wall < target else 'MISSED'}"
    print(f"{name:<44} {wall * 1000:7.1f} ms (CPU {cpu * 1000:6.1f} ms)  {rows:>7,} rows  "
          f"x{wall / baseline[0]:5.1f} baseline (CPU x{cpu / baseline[1]:5.1f}){verdict}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--arrears", type=float, default=0.12, help="share of accounts in arrears (below zero)")
    parser.add_argument("--entries", type=int, default=10, help="ledger entries per account, on average")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    print(f"load average: {os.getloadavg()}")
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        db = Path(tmp) / "reports.db"
        engine = create_engine(f"sqlite:///{db}")
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        loop.run_until_complete(migrate(engine))
        start = time.perf_counter()
        below, entries = fill(db, args.accounts, args.arrears, args.entries)
        print(f"database: {args.accounts:,} accounts, {below:,} below 0.00, {entries:,} ledger entries "
              f"(filled in {time.perf_counter() - start:.1f} s, {db.stat().st_size / 1e6:.0f} MB)")

        base_s, base_rows = timed(args.runs, lambda: asyncio.to_thread(bare, db))
        line("baseline: bare sqlite3 SELECT of the accounts", base_s, base_s, rows=base_rows, target=None)

        catalog = Catalog()
        reports = Reports(SqlReportStore(SqlStorage(engine)), catalog, lambda: NOW)

        async def whole() -> int:
            return sum([1 async for _ in Reports.rows(reports.arrears, below_fen=0)])

        async def first_page() -> int:
            return len((await reports.arrears(0, limit=1000)).rows)

        seconds, rows = timed(args.runs, whole)
        assert rows == below, (rows, below)
        line("service: the whole arrears report", seconds, base_s, rows=rows)
        seconds, rows = timed(args.runs, first_page)
        line("service: first JSON page (1,000 rows)", seconds, base_s, rows=rows)

        service = Service(SqlStorage(engine), catalog, lambda: NOW, reads=SqlReadStore(SqlStorage(engine)))
        service.reports = reports  # type: ignore[attr-defined]
        app = create_app(service, static_keys={hash_key(KEY): Caller("bench", "viewer", None)})
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw",
                                   headers={"Authorization": f"Bearer {KEY}"})

        async def http_csv() -> int:
            answer = await client.get("/v1/reports/arrears", params={"format": "csv"})
            assert answer.status_code == 200, answer.text
            return answer.text.count("\r\n") - 1

        async def http_json() -> int:
            answer = await client.get("/v1/reports/arrears", params={"limit": 1000})
            assert answer.status_code == 200, answer.text
            return len(answer.json()["data"])

        seconds, rows = timed(args.runs, http_csv)
        assert rows == below, (rows, below)
        line("HTTP: the whole report as CSV", seconds, base_s, rows=rows)
        seconds, rows = timed(args.runs, http_json)
        line("HTTP: first JSON page (1,000 rows)", seconds, base_s, rows=rows)
        loop.run_until_complete(client.aclose())
        loop.run_until_complete(engine.dispose())
    print(f"load average: {os.getloadavg()}")


if __name__ == "__main__":
    main()
