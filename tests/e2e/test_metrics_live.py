"""/metrics of a gateway polling simulated Modbus meters over real sockets, scraped over HTTP: polls counted by
bus and outcome and moving, the bus's utilisation, lag and meters' health, and a relay command's latency observed
when the relay runner confirms it."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from drivers.modbus import load_model
from gateway.bootstrap import default_models_dir
from gateway.settings import Settings, hash_key
from simulators.modbus import ModbusFleet
from tests.e2e.gateway_process import running_gateway
from tests.support import async_wait_until, free_port

OPERATOR = "metrics-operator-key"
BEARER = {"Authorization": f"Bearer {OPERATOR}"}

pytestmark = pytest.mark.timeout(120)


async def scrape(client: httpx.AsyncClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    answer = await client.get("/metrics", headers=BEARER)
    assert answer.status_code == 200, answer.text
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(answer.text) for s in family.samples}


def bus(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return name, frozenset({"bus": "feeder", **labels}.items())


async def test_polls_move_and_a_confirmed_command_is_timed(tmp_path: Path) -> None:
    sim_port, api_port = free_port(), free_port()
    model = load_model(default_models_dir() / "generic-prepaid.yaml")
    settings = Settings.model_validate({
        "database": {"url": f"sqlite:///{tmp_path / 'gw.db'}"},
        "api": {"port": api_port, "keys": [{"name": "operator", "role": "operator", "sha256": hash_key(OPERATOR)}]},
        "engine": {"command_expiry_s": 30, "confirm_interval_s": 0.2},
        "policy": {"notice_period": 0, "friendly_windows": []},
        "tariffs": {"flat": {"kind": "flat", "price": "1.0000"}},
        "accounts": [{"id": f"A-{i}", "tariff": "flat", "opening_balance": "100.00"} for i in (1, 2)],
        "buses": [{"id": "feeder", "protocol": "modbus-tcp", "host": "127.0.0.1", "port": sim_port,
                   "timeout_s": 0.5}],
        "meters": [{"id": f"M-{i}", "bus": "feeder", "unit_id": i, "account": f"A-{i}", "poll_interval_s": 0.25}
                   for i in (1, 2)],
    })
    async with ModbusFleet(model, meters=2, host="127.0.0.1", port=sim_port, seed=7), \
            running_gateway(settings, tmp_path) as gateway, \
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", timeout=5) as client:
        gateway.metrics.fleet_every_s = 0  # the active commands at every scrape (30 s apart by default)
        first: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}

        async def polled() -> bool:
            first.update(await scrape(client))
            return first.get(bus("gateway_polls_total", outcome="ok"), 0) >= 4 and \
                first.get(bus("gateway_meters", health="online")) == 2

        await async_wait_until(polled, timeout=20, what="the meters to be polled and online")
        assert first[bus("gateway_bus_up")] == 1
        assert first[bus("gateway_bus_demand_polls_per_second")] == 8  # two meters every 0.25 s
        assert 0 < first[bus("gateway_bus_utilisation")] < 1
        assert first[bus("gateway_bus_busy_seconds_total")] > 0
        assert first[bus("gateway_polls_total", outcome="failed")] == 0
        assert bus("gateway_poll_lag_seconds") in first and bus("gateway_meters_stale") in first

        queued = await client.post("/v1/meters/M-1/disconnect", json={"reason": "metrics test"}, headers=BEARER)
        assert queued.status_code == 202, queued.text
        command = queued.json()["command_id"]

        async def confirmed() -> bool:
            return (await client.get(f"/v1/commands/{command}", headers=BEARER)).json()["state"] == "confirmed"

        await async_wait_until(confirmed, timeout=15, what="the disconnect to be confirmed")
        later = await scrape(client)
        latency = ("gateway_command_latency_seconds_count", frozenset({"action": "open", "state": "confirmed"}.items()))
        assert later[latency] == 1
        assert 0 < later[("gateway_command_latency_seconds_sum", latency[1])] < 15
        ok = bus("gateway_polls_total", outcome="ok")

        async def polled_on() -> bool:  # (the command may be confirmed before the next poll: wait for one)
            later.update(await scrape(client))
            return later[ok] > first[ok]

        await async_wait_until(polled_on, timeout=10, what="the polls counted on")
        assert all(later[("gateway_commands_active", frozenset({"state": s, "action": a}.items()))] == 0
                   for s in ("queued", "sending", "sent") for a in ("open", "close"))
