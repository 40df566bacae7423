"""The notice-backed prepaid loop over real sockets: Modbus TCP to a simulated meter, the gateway's HTTP API,
and the customer's SMS gateway as a local HTTP receiver of the signed webhook.

A delivered final warning starts the notice period, then the disconnect happens and is told; a payment
reconnects and is told. An undeliverable final warning holds the disconnect (the meter's relay stays closed)
until it is delivered. Relays are asserted on the simulated meter itself.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from drivers.modbus import load_model
from gateway.bootstrap import default_models_dir
from gateway.settings import Settings, hash_key
from simulators.modbus import ModbusFleet
from tests.e2e.gateway_process import running_gateway
from tests.receiver import Receiver, receiver
from tests.support import async_wait_until, free_port

BILLING, VIEWER = "e2e-billing-key", "e2e-viewer-key"
SECRET = "e2e-webhook-secret-0123"


def kinds(sms: Receiver) -> list[str]:
    return [r.json()["kind"] for r in sms.requests if r.status == 200]


@pytest.fixture
async def loop(tmp_path: Path) -> AsyncIterator[tuple[Any, Receiver, httpx.AsyncClient]]:
    sim_port, api_port = free_port(), free_port()
    model = load_model(default_models_dir() / "generic-prepaid.yaml")
    with receiver() as sms:
        settings = Settings.model_validate({
            "database": {"url": f"sqlite:///{tmp_path / 'gw.db'}"},
            "api": {"port": api_port, "keys": [{"name": "billing", "role": "billing", "sha256": hash_key(BILLING)},
                                               {"name": "viewer", "role": "viewer", "sha256": hash_key(VIEWER)}]},
            "engine": {"command_expiry_s": 30, "confirm_interval_s": 0.2, "reading_history_s": 5,
                       "evaluate_every_s": 0.5},
            "policy": {"notice_period": "2s", "stale_after": "10s"},
            "notices": {"channels": {"sms": {"kind": "webhook", "url": f"{sms.url}/send", "secret": SECRET}},
                        "retry_backoff_s": 0.3, "retry_backoff_cap_s": 0.6, "max_attempts": 50,
                        "delivery_timeout_s": 1.5},
            "tariffs": {"flat": {"kind": "flat", "price": "1.0000"}},
            "accounts": [{"id": "A-1", "tariff": "flat", "opening_balance": "0.60", "warning1": "0.50",
                          "warning2": "0.30", "reconnect_min_topup": "1.00",
                          "contacts": [{"name": "Li Lei", "channel": "sms", "to": "+8613800000000"}]}],
            "buses": [{"id": "feeder", "protocol": "modbus-tcp", "host": "127.0.0.1", "port": sim_port,
                       "timeout_s": 0.5}],
            "meters": [{"id": "M-1", "bus": "feeder", "unit_id": 1, "account": "A-1", "poll_interval_s": 0.25,
                        "max_power_w": 2_000_000}],
        })
        async with ModbusFleet(model, meters=1, host="127.0.0.1", port=sim_port, seed=7) as fleet:
            meter = fleet.meters[1]
            meter.set_power_w(360_000)  # 100 Wh per second: 0.10 yuan per second
            async with running_gateway(settings, tmp_path), \
                    httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", timeout=5) as client:
                yield meter, sms, client


async def account(client: httpx.AsyncClient) -> dict[str, Any]:
    answer = await client.get("/v1/accounts/A-1", headers={"Authorization": f"Bearer {VIEWER}"})
    assert answer.status_code == 200
    return answer.json()  # type: ignore[no-any-return]


async def test_told_at_every_step_and_cut_off_only_after_the_delivered_warning(loop: Any) -> None:
    meter, sms, client = loop
    await async_wait_until(lambda: "low_balance_2" in kinds(sms), timeout=15, what="the final warning delivered")
    await async_wait_until(lambda: not meter.relay_closed, timeout=20, what="the automatic disconnect")
    state = await account(client)
    delivered = state["final_warning_delivered_at"]
    assert delivered is not None and state["final_warning_at"] <= delivered
    await async_wait_until(lambda: "disconnected" in kinds(sms), timeout=15, what="the disconnection told")
    told = next(r.json() for r in sms.requests if r.json()["kind"] == "disconnected")
    assert "M-1" in told["text"] and told["to"] == "+8613800000000"
    assert kinds(sms).index("low_balance_1") < kinds(sms).index("low_balance_2") < kinds(sms).index("disconnected")

    paid = await client.post("/v1/payments", headers={"Authorization": f"Bearer {BILLING}"}, json={
        "source": "billing", "payment_id": "P-1", "account_id": "A-1", "amount": "50.00",
        "paid_at": "2026-12-03T08:00:00Z", "channel": "cash"})
    assert paid.status_code == 201, paid.text
    await async_wait_until(lambda: meter.relay_closed, timeout=10, what="the reconnect")
    await async_wait_until(lambda: {"payment_received", "reconnected"} <= set(kinds(sms)), timeout=15,
                           what="the payment and the reconnection told")
    receipt = next(r.json() for r in sms.requests if r.json()["kind"] == "payment_received")
    assert "50.00" in receipt["text"]


async def test_an_undeliverable_final_warning_keeps_the_supply_on(loop: Any) -> None:
    meter, sms, client = loop
    sms.answer(*[503] * 10_000)  # the SMS gateway is down
    await async_wait_until(lambda: _detail(client, "staff told"), timeout=20,
                           what="the delivery timeout passed, the disconnect still deferred")
    state = await account(client)
    assert state["disconnect_deferred_because"] == "notice_undelivered" and state["supply"] == "connected"
    assert float(state["balance"]) <= 0 and meter.relay_closed  # at or past the disconnect point (0)
    attempts = len(sms.requests)
    await async_wait_until(lambda: len(sms.requests) >= attempts + 3, timeout=10, what="more failed attempts")
    assert meter.relay_closed and (await account(client))["supply"] == "connected"
    sms.answers.clear()  # the SMS gateway is back: the next attempt delivers, the notice period starts
    await async_wait_until(lambda: "low_balance_2" in kinds(sms), timeout=10, what="the warning delivered")
    await async_wait_until(lambda: not meter.relay_closed, timeout=20, what="the disconnect after the notice")


async def _detail(client: httpx.AsyncClient, text: str) -> bool:
    return text in ((await account(client))["deferred_detail"] or "")
