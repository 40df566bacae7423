"""The dashboard's read model on a real SQLite file and on PostgreSQL, with known rows written through SQLAlchemy
Core: the supply-state counts against ``supply_state`` computed here, the accounts about to trip and the deferred
ones, the tables' search (LIKE's wildcards taken literally), sorts, pages and totals, the energy at instants, and
consumption per site-local day where a day has 23 hours."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from gateway.adapters import tables as t
from gateway.adapters.dashboard_rows import SqlDashboardStore
from gateway.adapters.database import create_engine, migrate
from gateway.adapters.list_store import SqlListStore
from gateway.adapters.report_rows import SqlReportStore
from gateway.adapters.sql import SqlStorage
from gateway.domain.policy import SitePolicy
from gateway.domain.relay import supply_state
from gateway.service.alarm_desk import AlarmDesk
from gateway.service.catalog import Catalog
from gateway.service.dashboard import Dashboard, TableQuery
from gateway.service.lists import SUPPLY_STATES, Lists
from gateway.service.reports import Reports
from tests.support import SetClock

T0 = dt.datetime(2026, 11, 23, 4, 0, tzinfo=dt.UTC)  # 12:00 in Shanghai


class Db:
    def __init__(self, engine: Any, clock: SetClock) -> None:
        self.engine, self.clock = engine, clock
        self.storage = SqlStorage(engine)
        self.store = SqlDashboardStore(self.storage)

    def dashboard(self, zone: str = "Asia/Shanghai") -> Dashboard:
        catalog = Catalog(site=SitePolicy(tz=ZoneInfo(zone)))
        return Dashboard(self.store, Lists(SqlListStore(self.storage), {}), AlarmDesk(self.storage, self.clock),
                         Reports(SqlReportStore(self.storage), catalog, self.clock), catalog, self.clock)

    async def insert(self, table: sa.Table, rows: list[dict[str, Any]]) -> None:
        if rows:
            async with self.engine.begin() as conn:
                await conn.execute(sa.insert(table), rows)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.tool("postgres"))])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Db]:
    url = (f"sqlite:///{tmp_path / 'gw.db'}" if request.param == "sqlite"
           else str(request.getfixturevalue("pg_cluster").create_database()))
    engine = create_engine(url)
    await migrate(engine)
    try:
        yield Db(engine, SetClock(T0))
    finally:
        await engine.dispose()


def account(account_id: str, balance_fen: int = 1000, *, supply: str = "connected", status: str = "open",
            warning2_fen: int = 500, deferred: str = "", until: dt.datetime | None = None,
            updated_at: dt.datetime = T0, **state: Any) -> dict[str, Any]:
    doc = {"version": 1, "balance_fen": balance_fen, "supply": supply, "deferred_reason": deferred, **state}
    return dict(id=account_id, balance_fen=balance_fen, supply=supply, status=status, warning2_fen=warning2_fen,
                deferred_reason=deferred, deferred_until=until, state=doc, updated_at=updated_at, tariff="flat")


def meter(meter_id: str, account_id: str, relay: str = "closed", fault: str = "", *, status: str = "active",
          health: str = "online", last_success_at: dt.datetime | None = None, bus: str = "b") -> dict[str, Any]:
    return dict(id=meter_id, account_id=account_id, relay=relay, relay_fault=fault, status=status, health=health,
                last_success_at=last_success_at, bus_id=bus, consecutive_failures=0)


# a mixed fleet: (supply, status, [(relay, fault, meter status)]) per account
FLEET: dict[str, tuple[str, str, list[tuple[str, str, str]]]] = {
    "F-01": ("connected", "open", [("closed", "", "active")]),
    "F-02": ("connected", "open", [("closed", "", "active"), ("closed", "", "active")]),
    "F-03": ("disconnected", "open", [("open", "", "active"), ("closed", "", "retired")]),
    "F-04": ("disconnected", "open", [("open", "", "active"), ("closed", "", "active")]),
    "F-05": ("connected", "open", [("open", "", "active"), ("closed", "", "active")]),
    "F-06": ("connected", "open", [("armed", "", "active"), ("closed", "", "active")]),
    "F-07": ("disconnected", "open", [("closed", "disconnect_failed", "active"), ("open", "", "active")]),
    "F-08": ("connected", "open", [("open", "reconnect_failed", "active"), ("armed", "", "active")]),
    "F-09": ("disconnected", "open", [("unknown", "", "active")]),
    "F-10": ("disconnected", "open", []),  # no meters: disconnecting, as supply_state says
    "F-11": ("connected", "open", [("open", "", "retired")]),  # only a retired meter: connected
    "F-12": ("connected", "closed", [("closed", "", "active")]),
    "F-13": ("disconnected", "closed", [("open", "", "retired")]),
    "F-14": ("disconnected", "open", [("open", "", "active"), ("open", "reconnect_failed", "active")]),
    "F-15": ("connected", "open", [("armed", "disconnect_failed", "active")]),
}


async def fleet(db: Db) -> dict[str, str]:
    """Writes FLEET; returns each open account's state as ``supply_state`` computes it."""
    await db.insert(t.accounts, [account(a, supply=s, status=st) for a, (s, st, _) in FLEET.items()])
    await db.insert(t.meters, [meter(f"{a}.{i}", a, relay, fault, status=ms)
                               for a, (_, _, ms_) in FLEET.items() for i, (relay, fault, ms) in enumerate(ms_)])
    return {a: supply_state(s, [(r, f) for r, f, ms in ms_ if ms == "active"])
            for a, (s, st, ms_) in FLEET.items() if st == "open"}


async def test_state_counts_agree_with_supply_state_and_the_table(db: Db) -> None:
    expected = await fleet(db)
    counts = await db.store.state_counts()
    assert counts == {**{s: sum(v == s for v in expected.values()) for s in SUPPLY_STATES}, "closed": 2}
    assert set(expected.values()) == set(SUPPLY_STATES)  # every state is met at least once
    dash = db.dashboard()
    for state in SUPPLY_STATES:
        page = await dash.accounts(TableQuery(state=state, limit=100))
        assert [r["id"] for r in page["rows"]] == sorted(a for a, v in expected.items() if v == state), state
        assert page["total"] == counts[state]
        assert {r["state"] for r in page["rows"]} <= {state}
    closed = await dash.accounts(TableQuery(state="closed"))
    assert [r["id"] for r in closed["rows"]] == ["F-12", "F-13"] and closed["total"] == 2
    f08 = (await dash.accounts(TableQuery(search="F-08")))["rows"]
    assert f08[0]["meters"] == [
        {"id": "F-08.0", "relay": "open", "relay_fault": "reconnect_failed", "health": "online",
         "last_success_at": None},
        {"id": "F-08.1", "relay": "armed", "relay_fault": None, "health": "online", "last_success_at": None}]


async def test_about_to_trip_and_deferred(db: Db) -> None:
    soon, later = T0 + dt.timedelta(hours=1), T0 + dt.timedelta(hours=5)
    warned = "2026-11-22T08:00:00Z"
    await db.insert(t.accounts, [
        account("T-1", 400),  # at or below the final warning level (500), not deferred
        account("T-2", -100, final_warning_at=warned),
        account("T-3", 500, deferred="friendly_hours", until=later, deferred_detail="night"),
        account("T-4", 300, deferred="notice_period", until=soon),
        account("T-5", 900, warning2_fen=1000),  # its own, higher level
        account("T-6", -100),  # same balance as T-2: by id
        account("N-1", 501),  # above
        account("N-2", -50_000, supply="disconnected", deferred="protected"),  # the engine wants it off
        account("N-3", 0, status="closed"),
        account("N-4", 2_000, deferred="stale_reading", deferred_detail="M-9 offline"),
    ])
    rows = await db.store.about_to_trip(10)
    assert [r.id for r in rows] == ["T-4", "T-3", "T-2", "T-6", "T-1", "T-5"]
    assert (rows[0].balance_fen, rows[0].warning2_fen, rows[0].deferred_reason, rows[0].deferred_until) == (
        300, 500, "notice_period", soon)
    assert [r.id for r in await db.store.about_to_trip(2)] == ["T-4", "T-3"]
    shaped = (await db.dashboard().overview(limit=10))["about_to_trip"]
    warned_at = dt.datetime(2026, 11, 22, 8, tzinfo=dt.UTC)
    assert shaped[2] == {"id": "T-2", "balance": "-1.00", "final_warning_level": "5.00", "deferred_reason": None,
                         "deferred_until": None, "final_warning_at": warned_at, "final_warning_delivered_at": None,
                         "notice_ends": warned_at + dt.timedelta(hours=24)}  # the site's notice period from it
    assert shaped[1]["final_warning_at"] is None and shaped[1]["deferred_reason"] == "friendly_hours"
    assert shaped[1]["notice_ends"] is None and shaped[0]["notice_ends"] == soon  # the guardrail's own end

    rows, total = await db.store.deferred(2)
    assert total == 4  # T-3, T-4, N-2, N-4 (not the closed one)
    assert [(r.id, r.deferred_detail) for r in rows] == [("N-2", None), ("N-4", "M-9 offline")]
    deferred = await db.dashboard()._deferred(10)
    assert [r["id"] for r in deferred["rows"]] == ["N-2", "N-4", "T-3", "T-4"] and deferred["total"] == 4
    assert deferred["rows"][2] == {"id": "T-3", "balance": "5.00", "deferred_reason": "friendly_hours",
                                   "deferred_until": later, "deferred_detail": "night"}


TRICKY = ["A%B", "AxB", "A_C", "AyC", "a%b-2", "Q-1", "Q-2"]


async def test_table_search_takes_wildcards_literally_and_finds_a_meter(db: Db) -> None:
    await db.insert(t.accounts, [account(a, 100 * n) for n, a in enumerate(TRICKY)])
    await db.insert(t.meters, [meter(f"M-{a}", a) for a in TRICKY] + [meter("M_%", "Q-2")])
    dash = db.dashboard()

    async def ids(search: str, table: str = "accounts") -> list[str]:
        page = await getattr(dash, table)(TableQuery(search=search, limit=100))
        assert page["total"] == len(page["rows"])
        return [r["id"] for r in page["rows"]]

    assert await ids("a%b") == ["A%B", "a%b-2"]  # any case; % is a percent sign
    assert await ids("A_C") == ["A_C"]  # _ is an underscore
    assert await ids("%") == ["A%B", "a%b-2"]
    assert await ids("_") == ["A_C"]
    assert await ids("M-Q-1") == ["Q-1"]  # a meter's exact id
    assert await ids("M_%") == ["Q-2"]  # (only an exact meter id: not a pattern)
    assert await ids("M-") == []
    assert await ids("\\") == []
    assert await ids("_%", "meters") == ["M_%"]
    assert await ids("a%b", "meters") == ["M-A%B", "M-a%b-2"]  # the meter's or its account's id


async def test_tables_sort_both_ways_and_page_by_offset(db: Db) -> None:
    ids = [f"S-{n:02d}" for n in range(23)]
    await db.insert(t.accounts, [account(a, (n * 7) % 5 * 100, updated_at=T0 - dt.timedelta(minutes=(n * 5) % 11))
                                 for n, a in enumerate(ids)])
    await db.insert(t.meters, [meter(f"M-{n:02d}", a, health=("online", "offline", "degraded")[n % 3],
                                     last_success_at=None if n % 4 == 0 else T0 - dt.timedelta(minutes=n % 6),
                                     status="retired" if n == 5 else "active") for n, a in enumerate(ids)])
    dash = db.dashboard()
    stored = {a["id"]: a for a in [account(a, (n * 7) % 5 * 100, updated_at=T0 - dt.timedelta(minutes=(n * 5) % 11))
                                   for n, a in enumerate(ids)]}

    async def walk(table: str, **query: Any) -> list[str]:
        seen: list[str] = []
        for offset in range(0, 40, 5):
            page = await getattr(dash, table)(TableQuery(offset=offset, limit=5, **query))
            assert page["total"] == (22 if table == "meters" and not query.get("include_retired") else 23)
            seen += [r["id"] for r in page["rows"]]
        assert len(seen) == len(set(seen))
        return seen

    by = {"id": lambda a: (a,), "balance": lambda a: (stored[a]["balance_fen"], a),
          "updated": lambda a: (stored[a]["updated_at"], a)}
    for sort, key in by.items():
        for descending in (False, True):
            assert await walk("accounts", sort=sort, descending=descending) == sorted(
                ids, key=key, reverse=descending), (sort, descending)
    meters = {f"M-{n:02d}": (("online", "offline", "degraded")[n % 3], a,
                             None if n % 4 == 0 else T0 - dt.timedelta(minutes=n % 6)) for n, a in enumerate(ids)}
    never = dt.datetime.min.replace(tzinfo=dt.UTC)  # a meter never read sorts as the oldest
    keys = {"id": lambda m: (m,), "health": lambda m: (meters[m][0], m), "account": lambda m: (meters[m][1], m),
            "last_reading": lambda m: (meters[m][2] or never, m)}
    for sort, key in keys.items():
        for descending in (False, True):
            want = sorted(meters, key=key, reverse=descending)
            assert await walk("meters", sort=sort, descending=descending, include_retired=True) == want
            assert await walk("meters", sort=sort, descending=descending) == [m for m in want if m != "M-05"]
    offline = await dash.meters(TableQuery(state="offline", limit=100))
    assert [r["id"] for r in offline["rows"]] == [m for m in sorted(meters) if meters[m][0] == "offline"]
    assert offline["rows"][0] == {"id": "M-01", "account_id": "S-01", "bus": "b", "model": "generic-prepaid",
                                  "status": "active", "relay": "closed", "relay_fault": None, "health": "offline",
                                  "last_success_at": T0 - dt.timedelta(minutes=1), "consecutive_failures": 0,
                                  "last_error": None}
    last = await dash.accounts(TableQuery(sort="balance", offset=20, limit=5))
    assert len(last["rows"]) == 3 and last["total"] == 23
    with pytest.raises(ValueError):
        await dash.accounts(TableQuery(sort="health"))
    with pytest.raises(ValueError):
        await dash.meters(TableQuery(state="connected"))


def reading(meter_id: str, at: dt.datetime, wh: int) -> dict[str, Any]:
    return dict(meter_id=meter_id, taken_at=at, energy_wh=wh, billed=True)


async def test_energy_at_takes_the_newest_reading_at_or_before_each_instant(db: Db) -> None:
    await db.insert(t.accounts, [account("E-1")])
    await db.insert(t.meters, [meter("E-1.a", "E-1"), meter("E-1.b", "E-1"), meter("E-1.c", "E-1")])
    h = [T0 + dt.timedelta(hours=n) for n in range(5)]
    await db.insert(t.readings, [reading("E-1.a", h[1], 100), reading("E-1.a", h[2], 250),
                                 reading("E-1.a", h[2] + dt.timedelta(seconds=1), 260), reading("E-1.b", h[4], 7)])
    found = await db.store.energy_at(["E-1.a", "E-1.b", "E-1.c"], h)
    assert found == {"E-1.a": [None, 100, 250, 260, 260], "E-1.b": [None, None, None, None, 7],
                     "E-1.c": [None] * 5}
    many = [T0 + dt.timedelta(minutes=n) for n in range(0, 300, 1)]  # 900 lookups: several statements
    found = await db.store.energy_at(["E-1.a", "E-1.b", "E-1.c"], many)
    assert found["E-1.a"][60] == 100 and found["E-1.a"][59] is None and found["E-1.a"][-1] == 260
    assert found["E-1.b"] == [None] * 240 + [7] * 60 and len(found["E-1.c"]) == 300


@pytest.mark.parametrize("zone, now, day_hours", [
    ("Asia/Shanghai", dt.datetime(2026, 3, 30, 2, 0, tzinfo=dt.UTC), 24),  # 10:00 on the 30th, no DST
    ("Europe/Berlin", dt.datetime(2026, 3, 30, 8, 0, tzinfo=dt.UTC), 23),  # 10:00 CEST; the 29th has 23 hours
])
async def test_consumption_per_local_day_and_hour(db: Db, zone: str, now: dt.datetime, day_hours: int) -> None:
    tz = ZoneInfo(zone)
    await db.insert(t.accounts, [account("C-1")])
    await db.insert(t.meters, [meter("C-1.a", "C-1"), meter("C-1.b", "C-1")])
    start = dt.datetime(2026, 3, 20, tzinfo=tz).astimezone(dt.UTC)  # meter a from local midnight, 1 kWh an hour
    hours = int((now - start).total_seconds() // 3600)
    rows = [reading("C-1.a", start + dt.timedelta(hours=n), 1000 * n) for n in range(hours + 1)]
    rows += [reading("C-1.b", now - dt.timedelta(minutes=90), 5_000), reading("C-1.b", now - dt.timedelta(minutes=30),
                                                                               4_000)]  # b: reset, never negative
    await db.insert(t.readings, rows)
    db.clock.now = now
    dash = db.dashboard(zone)
    week = await dash.consumption(["C-1.a", "C-1.b", "C-1.a"], "week")
    assert len(week) == 7 and week[-1]["end"] == now
    for bucket in week:  # local midnight to local midnight
        local = bucket["start"].astimezone(tz)
        assert (local.hour, local.minute) == (0, 0) and bucket["start"].tzinfo == dt.UTC
    assert [b["start"].astimezone(tz).day for b in week] == list(range(24, 31))
    assert [b["energy_wh"] for b in week] == [24_000] * 5 + [day_hours * 1000, 10_000]
    assert week[-2]["end"] - week[-2]["start"] == dt.timedelta(hours=day_hours)
    month = await dash.consumption(["C-1.a"], "month")
    assert len(month) == 30 and month[-1]["start"].astimezone(tz).date() == dt.date(2026, 3, 30)
    # the 19th and before: no reading at their start -> 0; the 20th starts with the first reading
    assert [b["energy_wh"] for b in month[:21]] == [0] * 19 + [24_000, 24_000]
    day = await dash.consumption(["C-1.a"], "day")
    assert len(day) == 24 and day[-1]["start"] == now and day[-1]["energy_wh"] == 0
    assert [b["energy_wh"] for b in day[:-1]] == [1000] * 23
    assert all(b["end"] - b["start"] == dt.timedelta(hours=1) for b in day[:-1])
    assert await dash.consumption([], "day") == [{**b, "energy_wh": 0} for b in day]


async def test_consumption_counts_from_a_new_meters_first_reading(db: Db) -> None:
    """A meter read first in the middle of today (a new meter, the demo's first start): today's bucket counts from
    that reading, not 0, and nothing before it."""
    tz = ZoneInfo("Asia/Shanghai")
    now = dt.datetime(2026, 3, 30, 12, 0, tzinfo=tz).astimezone(dt.UTC)
    await db.insert(t.accounts, [account("N-1")])
    await db.insert(t.meters, [meter("N-1.a", "N-1")])
    first = dt.datetime(2026, 3, 30, 2, 0, tzinfo=tz).astimezone(dt.UTC)
    await db.insert(t.readings, [reading("N-1.a", first, 20_369_000), reading("N-1.a", first + dt.timedelta(hours=5),
                                                                              20_371_500)])
    db.clock.now = now
    week = await db.dashboard().consumption(["N-1.a"], "week")
    assert [b["energy_wh"] for b in week] == [0] * 6 + [2_500]
    day = await db.dashboard().consumption(["N-1.a"], "day")
    assert sum(b["energy_wh"] for b in day) == 2_500 and day[-1]["energy_wh"] == 0
    assert await db.store.first_energy("N-1.a", first + dt.timedelta(seconds=1)) == 20_371_500
    assert await db.store.first_energy("N-1.a", now) is None


async def test_overview(db: Db) -> None:
    await fleet(db)
    await db.insert(t.accounts, [account("T-1", 100, deferred="notice_period", until=T0)])
    await db.insert(t.meters, [meter("M-off1", "T-1", health="offline"), meter("M-off2", "F-01", health="offline"),
                               meter("M-off3", "F-01", health="offline", status="retired")])
    commands = [dict(id=f"c-{n}", meter_id="F-01.0", action="open", origin="operator", state=state, attempts=1,
                     created_at=T0 - dt.timedelta(minutes=n), updated_at=T0, expires_at=T0)
                for n, state in enumerate(["queued", "sent", "confirmed", "failed", "sending", "failed", "failed"])]
    await db.insert(t.commands, commands)
    notice = dict(event_id=1, kind="low_balance", account_id="T-1", contact="c", role="customer", channel="sms",
                  recipient="13800001234", language="zh", subject="s", text="x", final=False, attempts=1,
                  issued_at=T0, created_at=T0, updated_at=T0)
    await db.insert(t.notices, [{**notice, "dedup_key": f"k{n}", "state": state}
                                for n, state in enumerate(["pending", "failed", "delivered", "pending"])])
    alarm = dict(severity="major", raised_at=T0, last_seen_at=T0, updated_at=T0)
    await db.insert(t.alarms, [{**alarm, "kind": "meter_stale", "subject": "F-02.0", "state": "open"},
                               {**alarm, "kind": "meter_stale", "subject": "F-02.1", "state": "resolved"},
                               {**alarm, "kind": "meter_offline", "subject": "M-off1", "state": "acknowledged"}])
    day = dict(meters=10, read=9, on_time=8, polls_ok=100, polls_failed=3, updated_at=T0)
    await db.insert(t.reading_days, [{**day, "bus_id": "b", "day": "2026-11-23"},
                                     {**day, "bus_id": "b", "day": "2026-11-22"}])
    o = await db.dashboard().overview(limit=2)
    assert set(o) == {"counts", "about_to_trip", "deferred", "offline", "stale", "commands", "notices", "alarms",
                      "timeliness", "as_of"}
    assert o["as_of"] == T0 and o["counts"]["closed"] == 2
    assert [r["id"] for r in o["about_to_trip"]] == ["T-1"]
    assert o["deferred"]["total"] == 1
    assert [r["id"] for r in o["offline"]["rows"]] == ["M-off1", "M-off2"] and not o["offline"]["more"]
    assert [a["subject"] for a in o["stale"]["rows"]] == ["F-02.0"] and not o["stale"]["more"]
    assert [c["id"] for c in o["commands"]["active"]["rows"]] == ["c-0", "c-1"] and o["commands"]["active"]["more"]
    assert [c["id"] for c in o["commands"]["failed"]["rows"]] == ["c-3", "c-5"] and o["commands"]["failed"]["more"]
    assert [n["state"] for n in o["notices"]["pending"]["rows"]] == ["pending", "pending"]
    assert not o["notices"]["pending"]["more"] and len(o["notices"]["failed"]["rows"]) == 1
    assert o["notices"]["failed"]["rows"][0]["to"] == "*******1234"
    assert [a["subject"] for a in o["alarms"]["rows"]] == ["M-off1", "F-02.0"] and not o["alarms"]["more"]
    assert o["timeliness"]["day"] == "2026-11-23" and [r["day"] for r in o["timeliness"]["rows"]] == ["2026-11-23"]
    assert o["timeliness"]["rows"][0]["read_share"] == 0.9 and o["timeliness"]["totals"]["meters"] == 10
