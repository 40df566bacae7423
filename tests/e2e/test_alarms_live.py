"""Alarms through real processes: a `meter-gateway run` gateway polling a Modbus simulator (`meter-gateway simulate
modbus ... --control`). The simulated meter stops answering (its fault switched on through the control
interface): `meter_offline` is raised once, acknowledged by an operator over the HTTP API; the meter answers
again: the alarm is resolved by the gateway. Its cover opened and closed: `tamper` raised (critical) and resolved.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gateway.settings import hash_key
from simulators.control_client import AsyncSimulatorControl
from tests.e2e.test_fleet_live import _accepting, _process
from tests.support import async_wait_until, free_port

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "gateway.cli"]
VIEWER, OPERATOR = "alarms-live-viewer", "alarms-live-ops"

pytestmark = pytest.mark.slow


def _config(tmp_path: Path, api_port: int, bus_port: int) -> Path:
    config = {
        "database": {"url": "sqlite:///gw.db"},
        "api": {"port": api_port, "keys": [{"name": "viewer", "role": "viewer", "sha256": hash_key(VIEWER)},
                                           {"name": "ops", "role": "operator", "sha256": hash_key(OPERATOR)}]},
        "engine": {"reading_history_s": 0},
        "policy": {"notice_period": 0, "friendly_windows": [], "stale_after": "1h"},
        "tariffs": {"flat": {"kind": "flat", "price": "1.0000"}},
        "accounts": [{"id": "A-1", "tariff": "flat", "opening_balance": "50.00"}],
        "buses": [{"id": "feeder", "protocol": "modbus-tcp", "host": "127.0.0.1", "port": bus_port,
                   "timeout_s": 0.3, "backoff_s": 0.3, "backoff_cap_s": 0.6}],
        "meters": [{"id": "M-1", "bus": "feeder", "unit_id": 1, "account": "A-1", "poll_interval_s": 0.3}],
    }
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


async def _alarms(api: httpx.AsyncClient, **query: Any) -> list[dict[str, Any]]:
    answer = await api.get("/v1/alarms", params=query, headers={"Authorization": f"Bearer {VIEWER}"})
    assert answer.status_code == 200, answer.text
    return answer.json()["data"]  # type: ignore[no-any-return]


async def test_a_silent_meter_raises_meter_offline_and_answering_again_resolves_it(tmp_path: Path) -> None:
    sim_port, control_port, api_port = free_port(), free_port(), free_port()
    simulator = [*CLI, "simulate", "modbus", "--meters", "1", "--port", str(sim_port),
                 "--control", f"127.0.0.1:{control_port}"]
    async with _process(simulator, tmp_path / "sim.log"):
        await async_wait_until(lambda: _accepting(control_port), timeout=30, what="the simulator's control port")
        sim = AsyncSimulatorControl(f"http://127.0.0.1:{control_port}")
        meter = f"{sim_port}/1"
        config = _config(tmp_path, api_port, sim_port)
        async with _process([*CLI, "run", "--config", str(config)], tmp_path / "gateway.log"), \
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", timeout=10) as api:
            await async_wait_until(lambda: _accepting(api_port), timeout=60, what="the gateway's API")

            async def online() -> bool:
                answer = await api.get("/v1/meters/M-1", headers={"Authorization": f"Bearer {VIEWER}"})
                return answer.status_code == 200 and answer.json()["health"] == "online"

            await async_wait_until(online, timeout=20, what="M-1 to be polled")
            assert await _alarms(api) == []

            await sim.silence(meter)

            async def raised() -> bool:
                return bool(await _alarms(api, kind="meter_offline", state="open"))

            await async_wait_until(raised, timeout=20, what="meter_offline to be raised")
            [alarm] = await _alarms(api, kind="meter_offline")
            assert (alarm["subject"], alarm["meter_id"], alarm["account_id"], alarm["severity"], alarm["times"]) == (
                "M-1", "M-1", "A-1", "major", 1)
            acked = await api.post(f"/v1/alarms/{alarm['id']}/acknowledge", json={"reason": "crew sent"},
                                   headers={"Authorization": f"Bearer {OPERATOR}"})
            assert acked.status_code == 200 and acked.json()["state"] == "acknowledged", acked.text

            await sim.revive(meter)

            async def resolved() -> bool:
                return [a["state"] for a in await _alarms(api, kind="meter_offline")] == ["resolved"]

            await async_wait_until(resolved, timeout=20, what="meter_offline to be resolved")
            [alarm] = await _alarms(api, kind="meter_offline")
            assert (alarm["resolved_by"], alarm["acknowledged_by"], alarm["times"]) == ("gateway", "ops", 1)

            # tamper: the meter's cover opened, then closed
            await sim.open_cover(meter)

            async def tampered() -> bool:
                return bool(await _alarms(api, kind="tamper", state="open"))

            await async_wait_until(tampered, timeout=20, what="tamper to be raised")
            [tamper] = await _alarms(api, kind="tamper")
            assert (tamper["severity"], tamper["meter_id"]) == ("critical", "M-1") and tamper["detail"]["flags"]
            await sim.open_cover(meter, on=False)

            async def closed() -> bool:
                return [a["state"] for a in await _alarms(api, kind="tamper")] == ["resolved"]

            await async_wait_until(closed, timeout=20, what="tamper to be resolved")
            assert [a["kind"] for a in await _alarms(api, state="unresolved")] == []
