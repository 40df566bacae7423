"""Reading timeliness across restarts of a real gateway process (``meter-gateway run``) polling simulated Modbus
meters over TCP: a clean stop (SIGTERM) writes the day's row with its polls to the last; a crash (SIGKILL) within
the minute loses that minute's polls but not the morning; the next run adds its polls to the stored row. What was
polled is told by the simulator (the requests it received), not by the gateway."""

from __future__ import annotations

import datetime as dt
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
import yaml

from drivers.modbus import load_model
from gateway.service.polling.timeliness import day_of
from simulators.modbus import DEFAULT_MODEL_PATH, ModbusFleet
from tests.support import async_wait_until, free_port

ROOT = Path(__file__).resolve().parents[2]


def row(db: Path, day: str) -> dict[str, Any] | None:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        found = conn.execute("select meters, read, on_time, polls_ok, polls_failed, updated_at from reading_days "
                             "where bus_id = 'bus' and day = ?", (day,)).fetchone()
    finally:
        conn.close()
    return None if found is None else dict(zip(("meters", "read", "on_time", "polls_ok", "polls_failed",
                                                 "updated_at"), found, strict=True))


async def run_until(config: Path, log: Path, api_port: int, requests: list[int], more: int, how: signal.Signals
                    ) -> int:
    """Start the gateway, wait until the simulator has had ``more`` requests, stop it with ``how``; returns the
    requests the simulator had while it ran."""
    before = len(requests)
    gateway = subprocess.Popen([sys.executable, "-m", "gateway.cli", "run", "--config", str(config)], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=log.open("ab"))
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", timeout=5) as client:
            async def api_up() -> bool:
                try:
                    return (await client.get("/healthz")).status_code == 200
                except httpx.TransportError:
                    return False

            await async_wait_until(api_up, timeout=30, what="the gateway's API")
        await async_wait_until(lambda: len(requests) >= before + more, timeout=30, what="polls")
        gateway.send_signal(how)
        assert gateway.wait(timeout=30) == (0 if how == signal.SIGTERM else -signal.SIGKILL)
    finally:
        if gateway.poll() is None:
            gateway.kill()
            gateway.wait()
    return len(requests) - before


async def test_a_clean_stop_writes_the_day_a_crash_keeps_the_morning_a_restart_adds(tmp_path: Path) -> None:
    fleet = ModbusFleet(load_model(DEFAULT_MODEL_PATH), meters=2, port=free_port())
    requests: list[int] = []
    fleet.trace = lambda unit, pdu: requests.append(unit)
    api_port = free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump({
        "database": {"url": "sqlite:///gw.db"},
        "api": {"port": api_port},
        "tariffs": {"flat": {"kind": "flat", "price": "0.5000"}},
        "accounts": [{"id": f"A-{i}", "tariff": "flat", "opening_balance": "100.00"} for i in (1, 2)],
        "buses": [{"id": "bus", "protocol": "modbus-tcp", "host": "127.0.0.1", "port": fleet.port}],
        "meters": [{"id": f"M-{i}", "bus": "bus", "unit_id": i, "account": f"A-{i}", "poll_interval_s": 0.1}
                   for i in (1, 2)],
    }))
    db, log = tmp_path / "gw.db", tmp_path / "gw.log"
    now = dt.datetime.now(dt.UTC)
    day, end = day_of(now, ZoneInfo("Asia/Shanghai"))
    if end - now < dt.timedelta(minutes=3):
        pytest.skip("the site's midnight would fall within the test (its rows are of one day)")
    async with fleet:
        sent = await run_until(config, log, api_port, requests, 40, signal.SIGTERM)
        morning = row(db, day)
        assert morning is not None, log.read_text()
        assert (morning["meters"], morning["read"], morning["on_time"], morning["polls_failed"]) == (2, 2, 2, 0)
        assert sent / 4 <= morning["polls_ok"] <= sent  # (a poll is one request or a few)

        await run_until(config, log, api_port, requests, 40, signal.SIGKILL)  # within its first minute
        assert row(db, day) == morning  # the crash lost its own polls (not written yet), not the morning's

        sent = await run_until(config, log, api_port, requests, 40, signal.SIGTERM)
        after = row(db, day)
    assert after is not None
    assert (after["meters"], after["read"], after["on_time"], after["polls_failed"]) == (2, 2, 2, 0)
    assert sent / 4 <= after["polls_ok"] - morning["polls_ok"] <= sent
    assert after["updated_at"] > morning["updated_at"]
