"""Reading timeliness rows (``reading_days``): the store's merge on every storage (SQLite, the SQLite pipeline,
PostgreSQL), and a running gateway on a real SQLite file polling simulated Modbus meters over TCP, one of them
absent, writing its bus's row of the day; then restarted on the same file in the middle of the day."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from drivers.modbus import load_model
from gateway.adapters import tables as t
from gateway.adapters.reading_days_rows import SqlReadingDays
from gateway.bootstrap import Gateway
from gateway.service.polling.timeliness import DayRow, day_of
from gateway.settings import Settings
from simulators.modbus import DEFAULT_MODEL_PATH, ModbusFleet
from tests.support import async_wait_until, free_port

AT = dt.datetime(2026, 11, 23, 8, tzinfo=dt.UTC)


async def stored(gw: Gateway) -> dict[tuple[str, str], dict[str, Any]]:
    async with gw.uow(readonly=True) as uow:
        rows = (await uow.execute(sa.select(t.reading_days))).mappings().all()  # type: ignore[attr-defined]
    return {(r["bus_id"], r["day"]): {k: r[k] for k in ("meters", "read", "on_time", "polls_ok", "polls_failed",
                                                          "updated_at")} for r in rows}


async def test_rows_are_merged_with_the_stored_ones(database: dict[str, Any], tmp_path: Path) -> None:
    settings = Settings.model_validate({"database": database})
    async with Gateway(settings, base_dir=tmp_path, run_buses=False) as gw:
        store = SqlReadingDays(gw.uow, gw.engine.dialect.name)
        await store.add([DayRow("b1", "2026-11-23", 3, 2, 2, 10, 1), DayRow("b2", "2026-11-23", 1, 0, 1, 0, 0)], AT)
        later = AT + dt.timedelta(minutes=1)
        await store.add([DayRow("b1", "2026-11-23", 3, 3, 1, 5, 2)], later)  # a minute later: increments
        rows = await stored(gw)
        assert rows[("b1", "2026-11-23")] == {"meters": 3, "read": 3, "on_time": 1, "polls_ok": 15,
                                              "polls_failed": 3, "updated_at": later}
        assert rows[("b2", "2026-11-23")]["read"] == 0
        # a restart mid-day: the new run knows only the afternoon (fewer read so far, nobody late yet, a new meter)
        await store.add([DayRow("b1", "2026-11-23", 4, 1, 4, 7, 0)], later)
        assert (await stored(gw))[("b1", "2026-11-23")] == {
            "meters": 4, "read": 3, "on_time": 2, "polls_ok": 22, "polls_failed": 3, "updated_at": later}
        await store.add([DayRow("b1", "2026-11-24", 4, 0, 4, 0, 0)], later)  # another day: another row
        assert len(await stored(gw)) == 3


def settings(tmp_path: Path, port: int) -> Settings:
    """Three meters polled every 0.2 s on one Modbus TCP bus; M-3's unit is not there (never answers)."""
    return Settings.model_validate({
        "database": {"url": f"sqlite:///{tmp_path / 'gw.db'}"},
        "tariffs": {"flat": {"kind": "flat", "price": "1.0000"}},
        "accounts": [{"id": f"A-{i}", "tariff": "flat", "opening_balance": "1000.00"} for i in (1, 2, 3)],
        "buses": [{"id": "bus", "protocol": "modbus-tcp", "host": "127.0.0.1", "port": port, "timeout_s": 0.2,
                   "backoff_s": 0.5, "backoff_cap_s": 0.5}],
        "meters": [{"id": f"M-{i}", "bus": "bus", "unit_id": unit, "account": f"A-{i}", "poll_interval_s": 0.2}
                   for i, unit in ((1, 1), (2, 2), (3, 9))],
    })


async def test_a_running_gateway_writes_its_bus_row_of_the_day_and_a_restart_adds_to_it(tmp_path: Path) -> None:
    fleet = ModbusFleet(load_model(DEFAULT_MODEL_PATH), meters=2, port=free_port())
    config = settings(tmp_path, fleet.port)
    now = dt.datetime.now(dt.UTC)
    day, end = day_of(now, ZoneInfo(config.site.timezone))
    if end - now < dt.timedelta(minutes=1):
        pytest.skip("the site's midnight would fall within the test (its rows are of one day)")
    async with fleet:
        async with Gateway(config, base_dir=tmp_path) as gw:
            assert gw.scheduler is not None and gw.scheduler.timeliness is not None
            poller = gw.scheduler.buses[0].poller
            await async_wait_until(lambda: poller.counters.polls >= 10 and poller.counters.failures >= 2,
                                   timeout=10, what="polls and failures")
            assert await gw.scheduler.timeliness.flush() == 1  # what the minute's write does, while it runs
            first = (await stored(gw))[("bus", day)]
            assert (first["meters"], first["read"]) == (3, 2) and first["polls_ok"] >= 10
            await async_wait_until(lambda: poller.counters.polls >= first["polls_ok"] + 5, timeout=10,
                                   what="more polls")
        polls, failures = poller.counters.polls, poller.counters.failures
        async with Gateway(config, base_dir=tmp_path, run_buses=False) as gw:
            row = (await stored(gw))[("bus", day)]
        # the stop wrote the polls up to the last; M-3 never answered for longer than 0.2 s + 0.5 s + 0.2 s: late
        assert (row["meters"], row["read"], row["on_time"]) == (3, 2, 2)
        assert (row["polls_ok"], row["polls_failed"]) == (polls, failures)

        async with Gateway(config, base_dir=tmp_path) as gw:  # restarted in the middle of the day
            assert gw.scheduler is not None
            poller = gw.scheduler.buses[0].poller
            await async_wait_until(lambda: poller.counters.polls >= 4, timeout=10, what="polls after the restart")
        async with Gateway(config, base_dir=tmp_path, run_buses=False) as gw:
            after = (await stored(gw))[("bus", day)]
    assert (after["meters"], after["read"], after["on_time"]) == (3, 2, 2)
    assert after["polls_ok"] == polls + poller.counters.polls
    assert after["polls_failed"] == failures + poller.counters.failures
    assert after["updated_at"] > row["updated_at"]
