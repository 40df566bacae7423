"""The lists and the audit log at scale (docs/api.md, "Lists and the audit log"): one page of each, timed.

A database (SQLite in a temporary directory, or ``--url`` for PostgreSQL: a fresh, empty database) gets
``--accounts`` accounts (default 100,000) with one meter each, spread over balances, credit classes, supplies,
relays and health states (a few of each rare kind: disconnect failures, protection by an admin), ``--commands``
relay commands (many sharing a time) and ``--audit`` audit rows (default 1,000,000). Rows are written in bulk
through SQLAlchemy Core, then ``ANALYZE`` (what a long-running database has).

Each query is one page (``--limit``, default 100) through ``gateway.service.lists.Lists`` on the SQL adapter, as
the API calls it; the median of ``--repeat`` runs is printed with its target (50 ms a page), ``OK`` or ``OVER``.
Rare filters (a state a handful of accounts are in) and the deepest page are the hard cases: they show whether
the query walks an index or the whole table.

Usage: python bench/lists_scale.py [--accounts 100000] [--audit 1000000] [--commands 100000] [--limit 100]
                                   [--repeat 5] [--url postgresql://...]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.adapters import tables as t  # noqa: E402
from gateway.adapters.database import create_engine, migrate  # noqa: E402
from gateway.adapters.list_store import SqlListStore  # noqa: E402
from gateway.adapters.sql import SqlStorage  # noqa: E402
from gateway.service.lists import AccountFilter, AuditFilter, CommandFilter, Lists, MeterFilter  # noqa: E402

T0 = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
TARGET_MS = 50.0


def _accounts(n: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    accounts, meters = [], []
    for i in range(n):
        aid, mid = f"A-{i:06d}", f"M-{i:06d}"
        off = i % 10 == 0
        state: dict[str, Any] = {"version": 1, "balance_fen": 0, "supply": "disconnected" if off else "connected"}
        if i % 5000 == 7:
            state["operator_protected"] = True
        accounts.append(dict(id=aid, balance_fen=(i * 7919) % 200_000 - 20_000, supply=state["supply"],
                             deferred_reason="", state=state, updated_at=T0, status="open",
                             tariff="flat", credit_class="ABC"[i % 3], protected=i % 1000 == 3))
        fault = "disconnect_failed" if off and i % 4000 == 0 else ""
        meters.append(dict(id=mid, account_id=aid, relay="open" if off else "closed", relay_fault=fault,
                           health=("online", "online", "online", "degraded", "offline")[i % 5], status="active",
                           bus_id=f"bus-{i // 247}", unit_id=i % 247 + 1, model="generic-prepaid",
                           consecutive_failures=0))
    return accounts, meters


async def _fill(engine: Any, args: argparse.Namespace) -> None:
    accounts, meters = _accounts(args.accounts)
    async with engine.begin() as conn:
        for start in range(0, len(accounts), 5000):
            await conn.execute(sa.insert(t.accounts), accounts[start:start + 5000])
            await conn.execute(sa.insert(t.meters), meters[start:start + 5000])
        commands = [dict(id=f"c-{i:08d}", meter_id=f"M-{i % args.accounts:06d}", action="open",
                         origin=("automatic", "operator", "billing")[i % 3], state="succeeded", attempts=1,
                         created_at=T0 + dt.timedelta(seconds=i // 10), updated_at=T0, expires_at=T0)
                    for i in range(args.commands)]
        for start in range(0, len(commands), 10_000):
            await conn.execute(sa.insert(t.commands), commands[start:start + 10_000])
        actions = ("account.hold", "command.open", "payment.reverse", "meter.change", "command.cancel")
        for start in range(0, args.audit, 20_000):
            rows = []
            for i in range(start, min(start + 20_000, args.audit)):
                action = actions[i % 5]
                target = f"c-{i % max(args.commands, 1):08d}" if action == "command.cancel" else (
                    f"M-{i % args.accounts:06d}" if action == "meter.change" else f"A-{i % args.accounts:06d}")
                detail = {"meter_id": f"M-{i % args.accounts:06d}"} if action == "command.open" else None
                actor = f"key-{i % 20}"
                if i % 100_000 == 17:  # a key that changed little, with an action nobody else takes
                    actor, action = "key-rare", "account.adjustment"
                rows.append(dict(at=T0 + dt.timedelta(seconds=i), actor=actor, action=action, target=target,
                                 detail=detail))
            await conn.execute(sa.insert(t.audit_log), rows)
        await conn.execute(sa.text("ANALYZE"))


async def _time(call: Any, repeat: int) -> tuple[float, int]:
    times, count = [], 0
    for _ in range(repeat):
        began = time.perf_counter()
        page = await call()
        times.append((time.perf_counter() - began) * 1000)
        count = len(page["data"])
    return statistics.median(times), count


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        url = args.url or f"sqlite:///{Path(tmp) / 'lists.db'}"
        engine = create_engine(url)
        await migrate(engine)
        began = time.perf_counter()
        await _fill(engine, args)
        print(f"{engine.dialect.name}: {args.accounts} accounts and meters, {args.commands} commands, "
              f"{args.audit} audit rows written in {time.perf_counter() - began:.1f} s")
        lists = Lists(SqlListStore(SqlStorage(engine)), {})
        n, limit = args.accounts, args.limit
        last = f"A-{n - limit - 1:06d}"
        cases = {
            "accounts: first page": lambda: lists.accounts(AccountFilter(limit=limit)),
            "accounts: deepest page (after)": lambda: lists.accounts(AccountFilter(after=last, limit=limit)),
            "accounts: balance -10.00..0.00": lambda: lists.accounts(
                AccountFilter(balance_min_fen=-1000, balance_max_fen=0, limit=limit)),
            "accounts: balance 1000.00..1999.99 (wide)": lambda: lists.accounts(
                AccountFilter(balance_min_fen=100_000, balance_max_fen=199_999, limit=limit)),
            "accounts: state=disconnected": lambda: lists.accounts(AccountFilter(state="disconnected", limit=limit)),
            "accounts: state=disconnect_failed (rare)": lambda: lists.accounts(
                AccountFilter(state="disconnect_failed", limit=limit)),
            "accounts: protected=true (rare)": lambda: lists.accounts(AccountFilter(protected=True, limit=limit)),
            "accounts: credit_class=B, status=open": lambda: lists.accounts(
                AccountFilter(credit_class="B", status="open", limit=limit)),
            "accounts: meter_id": lambda: lists.accounts(AccountFilter(meter_id=f"M-{n // 2:06d}", limit=limit)),
            "meters: first page": lambda: lists.meters(MeterFilter(limit=limit)),
            "meters: health=offline, bus": lambda: lists.meters(MeterFilter(health="offline", bus="bus-100",
                                                                            limit=limit)),
            "meters: relay_fault (rare)": lambda: lists.meters(MeterFilter(relay_fault="disconnect_failed",
                                                                           limit=limit)),
            "commands: newest page": lambda: lists.commands(CommandFilter(limit=limit)),
            "commands: origin=billing, a day": lambda: lists.commands(CommandFilter(
                origin="billing", since=T0 + dt.timedelta(hours=1), until=T0 + dt.timedelta(hours=2),
                limit=limit)),
            "commands: one meter": lambda: lists.commands(CommandFilter(meter_id=f"M-{n // 3:06d}", limit=limit)),
            "commands: (time, id) cursor": lambda: lists.commands(CommandFilter(
                before=T0 + dt.timedelta(seconds=args.commands // 20), before_id="c-00000005", limit=limit)),
            "audit: newest page": lambda: lists.audit(AuditFilter(limit=limit)),
            "audit: actor": lambda: lists.audit(AuditFilter(actor="key-7", limit=limit)),
            "audit: a rare actor": lambda: lists.audit(AuditFilter(actor="key-rare", limit=limit)),
            "audit: a rare action": lambda: lists.audit(AuditFilter(action="account.adjustment", limit=limit)),
            "audit: account (own, meters', commands')": lambda: lists.audit(
                AuditFilter(account_id=f"A-{n // 2:06d}", limit=limit)),
            "audit: meter (own, commands', named)": lambda: lists.audit(
                AuditFilter(meter_id=f"M-{n // 2 + 1:06d}", limit=limit)),
            "audit: action prefix command.": lambda: lists.audit(AuditFilter(action="command.", limit=limit)),
            "audit: a day (since, until)": lambda: lists.audit(AuditFilter(
                since=T0 + dt.timedelta(days=3), until=T0 + dt.timedelta(days=4), limit=limit)),
            "audit: a day and an actor": lambda: lists.audit(AuditFilter(
                actor="key-7", since=T0 + dt.timedelta(days=3), until=T0 + dt.timedelta(days=4), limit=limit)),
            "audit: a day and an account": lambda: lists.audit(AuditFilter(
                account_id=f"A-{n // 2:06d}", since=T0 + dt.timedelta(days=3), until=T0 + dt.timedelta(days=4),
                limit=limit)),
        }
        for name, call in cases.items():
            ms, count = await _time(call, args.repeat)
            print(f"  {name:45s} {ms:8.1f} ms  {count:4d} rows   target {TARGET_MS:.0f} ms  "
                  f"{'OK' if ms <= TARGET_MS else 'OVER'}")
        await engine.dispose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--audit", type=int, default=1_000_000)
    parser.add_argument("--commands", type=int, default=100_000)
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--url", default=None)
    asyncio.run(main(parser.parse_args()))
