"""The whole prepaid loop over real sockets: Modbus TCP to a simulated meter, HTTP to the gateway's API.

A meter is charged, disconnected automatically when its balance passes the disconnect point, and reconnected
within seconds of a payment. The relay state is asserted on the simulated meter itself.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from drivers.modbus import load_model
from gateway.bootstrap import default_models_dir
from gateway.settings import Settings, hash_key
from simulators.modbus import ModbusFleet
from tests.e2e.gateway_process import running_gateway
from tests.support import async_wait_until, free_port

BILLING, VIEWER = "e2e-billing-key", "e2e-viewer-key"


@pytest.fixture
async def loop_setup(tmp_path: Path):
    sim_port, api_port = free_port(), free_port()
    model = load_model(default_models_dir() / "generic-prepaid.yaml")
    settings = Settings.model_validate({
        "database": {"url": f"sqlite:///{tmp_path / 'gw.db'}"},
        "api": {"port": api_port, "keys": [{"name": "billing", "role": "billing", "sha256": hash_key(BILLING)},
                                           {"name": "viewer", "role": "viewer", "sha256": hash_key(VIEWER)}]},
        "engine": {"command_expiry_s": 30, "confirm_interval_s": 0.2, "reading_history_s": 5},
        "policy": {"notice_period": 0, "stale_after": "10s"},
        "tariffs": {"flat": {"kind": "flat", "price": "1.0000"}},
        "accounts": [{"id": "A-1", "tariff": "flat", "opening_balance": "0.50", "warning1": "0.40",
                      "warning2": "0.20", "reconnect_min_topup": "1.00"}],
        "buses": [{"id": "feeder", "protocol": "modbus-tcp", "host": "127.0.0.1", "port": sim_port,
                   "timeout_s": 0.5}],
        "meters": [{"id": "M-1", "bus": "feeder", "unit_id": 1, "account": "A-1", "poll_interval_s": 0.25,
                    "max_power_w": 2_000_000}],
    })
    async with ModbusFleet(model, meters=1, host="127.0.0.1", port=sim_port, seed=7) as fleet:
        meter = fleet.meters[1]
        meter.set_power_w(360_000)  # 100 Wh per second: 0.10 yuan per second at 1 yuan/kWh
        async with running_gateway(settings, tmp_path) as gateway:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", timeout=5) as client:
                yield meter, gateway, client


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_charge_disconnect_pay_reconnect(loop_setup) -> None:  # type: ignore[no-untyped-def]
    meter, gateway, client = loop_setup

    async def balance() -> str:
        response = await client.get("/v1/accounts/A-1", headers=bearer(VIEWER))
        assert response.status_code == 200
        return str(response.json()["balance"])

    # charged from the meter's growing energy
    await async_wait_until(lambda: _lt(balance(), "0.50"), timeout=10, what="a charge")
    assert meter.relay_closed

    # exhausted: disconnected automatically, confirmed on the simulated meter
    await async_wait_until(lambda: not meter.relay_closed, timeout=20, what="the automatic disconnect")
    account = (await client.get("/v1/accounts/A-1", headers=bearer(VIEWER))).json()
    assert account["supply"] == "disconnected"  # what the engine wants; the state follows the confirmation
    energy_when_open = meter.energy_wh

    async def confirmed_open() -> bool:
        m = (await client.get("/v1/meters/M-1", headers=bearer(VIEWER))).json()
        return bool(m["relay"] == "open")

    await async_wait_until(confirmed_open, timeout=10, what="the gateway to read the open relay back")
    account = (await client.get("/v1/accounts/A-1", headers=bearer(VIEWER))).json()
    assert (account["state"], account["relays"]) == ("disconnected", {"M-1": "open"})
    assert meter.energy_wh == energy_when_open  # no energy flows while the relay is open

    # a payment reconnects within seconds
    paid = time.monotonic()
    response = await client.post("/v1/payments", headers=bearer(BILLING), json={
        "source": "billing", "payment_id": "P-1", "account_id": "A-1", "amount": "50.00",
        "paid_at": "2026-11-23T08:00:00Z", "channel": "cash"})
    assert response.status_code == 201, response.text
    await async_wait_until(lambda: meter.relay_closed, timeout=5, what="the reconnect after the payment")
    reconnect_s = time.monotonic() - paid
    assert reconnect_s < 5
    account = (await client.get("/v1/accounts/A-1", headers=bearer(VIEWER))).json()
    assert account["supply"] == "connected"

    async def confirmed_closed() -> bool:  # once the gateway has read the closed relay back
        return (await client.get("/v1/accounts/A-1", headers=bearer(VIEWER))).json()["state"] == "connected"

    await async_wait_until(confirmed_closed, timeout=5, what="the reconnect to be confirmed")

    # the same payment again credits nothing
    again = await client.post("/v1/payments", headers=bearer(BILLING), json={
        "source": "billing", "payment_id": "P-1", "account_id": "A-1", "amount": "50.00",
        "paid_at": "2026-11-23T08:00:00Z", "channel": "cash"})
    assert again.status_code == 200 and again.json() == response.json()


async def _lt(value: object, limit: str) -> bool:
    from decimal import Decimal

    return Decimal(await value) < Decimal(limit)  # type: ignore[misc]
