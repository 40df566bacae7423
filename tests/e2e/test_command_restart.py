"""A gateway killed (SIGKILL) while a relay command is `sending` re-checks the relay first after a restart and
never blindly repeats the command."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import yaml

from gateway.settings import hash_key
from simulators.dlt645 import Dlt645Simulator
from tests.support import async_wait_until, free_port

ROOT = Path(__file__).resolve().parents[2]
OPERATOR = "restart-operator-key"
ADDRESS = "000000000001"


def command_state(db: Path, command_id: str) -> str | None:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        row = conn.execute("select state from commands where id = ?", (command_id,)).fetchone()
        return None if row is None else str(row[0])
    finally:
        conn.close()


def start(config: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "gateway.cli", "run", "--config", str(config)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=log.open("ab"))


async def test_killed_while_sending_then_relay_read_first(tmp_path: Path) -> None:
    sim_port, api_port = free_port(), free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump({
        "database": {"url": "sqlite:///gw.db"},
        "api": {"port": api_port, "keys": [{"name": "ops", "role": "operator", "sha256": hash_key(OPERATOR)}]},
        "engine": {"command_expiry_s": 120, "confirm_interval_s": 0.2},
        "tariffs": {"flat": {"kind": "flat", "price": "0.5000"}},
        "accounts": [{"id": "A-1", "tariff": "flat", "opening_balance": "100.00"}],
        "buses": [{"id": "rs485", "protocol": "dlt645-tcp", "host": "127.0.0.1", "port": sim_port,
                   "timeout_s": 30, "retries": 0}],
        "meters": [{"id": "M-1", "bus": "rs485", "address": ADDRESS, "account": "A-1", "poll_interval_s": 3600}],
    }))
    db = tmp_path / "gw.db"
    async with Dlt645Simulator(meters=1, tcp=f"127.0.0.1:{sim_port}") as simulator:
        meter = simulator.meter(ADDRESS)
        gateway = start(config, tmp_path / "gw.log")
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", timeout=5) as client:
                async def api_up() -> bool:
                    try:
                        return (await client.get("/healthz")).status_code == 200
                    except httpx.HTTPError:
                        return False

                await async_wait_until(api_up, timeout=60, what="the gateway's API")

                async def read_once() -> bool:  # the first poll done (at full speed: 8 reads)
                    answer = await client.get("/v1/meters/M-1", headers={"Authorization": f"Bearer {OPERATOR}"})
                    return answer.status_code == 200 and answer.json()["last_reading"] is not None

                await async_wait_until(read_once, timeout=60, what="the meter's first reading")
                meter.inject("slow", delay=4)  # the meter acts at once but answers late: the gateway stays `sending`
                response = await client.post("/v1/meters/M-1/disconnect", json={"reason": "restart test"},
                                             headers={"Authorization": f"Bearer {OPERATOR}"})
                assert response.status_code == 202, response.text
                command_id = response.json()["command_id"]
            await async_wait_until(lambda: command_state(db, command_id) == "sending" and len(meter.commands) == 1,
                                   timeout=60, what="the trip to be on the wire")
            gateway.send_signal(signal.SIGKILL)
            gateway.wait(timeout=10)
        finally:
            if gateway.poll() is None:
                gateway.kill()
        assert command_state(db, command_id) == "sending"
        assert meter.relay_open  # the meter did trip; only its answer was lost with the gateway

        meter.clear_fault()
        requests_before = simulator.bus.requests_seen
        gateway = start(config, tmp_path / "gw.log")
        try:
            await async_wait_until(lambda: command_state(db, command_id) == "confirmed", timeout=60,
                                   what="the restarted gateway to confirm the command by reading the relay")
        finally:
            gateway.send_signal(signal.SIGTERM)
            gateway.wait(timeout=30)
        assert len(meter.commands) == 1, "the trip was sent again instead of reading the relay first"
        assert simulator.bus.requests_seen > requests_before
