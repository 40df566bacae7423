"""The HTTP API on a real SQLite database: shapes, roles, errors as problem+json."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from gateway.bootstrap import Gateway
from gateway.settings import Settings, hash_key

KEYS = {"viewer": "k-viewer", "billing": "k-billing", "operator": "k-operator", "admin": "k-admin"}


@pytest.fixture
async def client(tmp_path: Path):
    settings = Settings.model_validate({
        "database": {"url": f"sqlite:///{tmp_path / 'gw.db'}"},
        "api": {"keys": [{"name": f"{role}-key", "role": role, "sha256": hash_key(key)}
                         for role, key in KEYS.items()], "max_payment": "1000.00"},
        "tariffs": {"flat": {"kind": "flat", "price": "0.5600"}},
        "accounts": [{"id": "A-1", "tariff": "flat", "opening_balance": "10.00"}],
        "buses": [{"id": "b", "protocol": "modbus-tcp", "host": "127.0.0.1", "port": 1}],
        "meters": [{"id": "M-1", "bus": "b", "unit_id": 1, "account": "A-1", "poll_interval_s": 3600}],
    })
    async with Gateway(settings, base_dir=tmp_path) as gw:
        transport = httpx.ASGITransport(app=gw.app())
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
            yield c


def auth(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[role]}"}


PAYMENT = {"source": "billing", "payment_id": "P-1001", "account_id": "A-1", "amount": "50.00",
           "paid_at": "2026-11-23T08:00:00Z", "channel": "alipay"}


async def test_payment_201_then_200_then_409(client: httpx.AsyncClient) -> None:
    first = await client.post("/v1/payments", json=PAYMENT, headers=auth("billing"))
    assert first.status_code == 201, first.text
    body = first.json()
    assert (body["amount"], body["balance"], body["account_id"]) == ("50.00", "60.00", "A-1")
    again = await client.post("/v1/payments", json=PAYMENT, headers=auth("billing"))
    assert (again.status_code, again.json()) == (200, body)
    conflict = await client.post("/v1/payments", json={**PAYMENT, "amount": "49.00"}, headers=auth("billing"))
    assert conflict.status_code == 409
    assert conflict.headers["content-type"] == "application/problem+json"
    account = (await client.get("/v1/accounts/A-1", headers=auth("viewer"))).json()
    assert (account["balance"], account["state"], account["meters"]) == ("60.00", "connected", ["M-1"])


@pytest.mark.parametrize("amount", ["50.001", "NaN", "-1.00", "Infinity", "1000.01", "0", "abc", 5])
async def test_bad_amounts_are_refused(client: httpx.AsyncClient, amount: object) -> None:
    response = await client.post("/v1/payments", json={**PAYMENT, "amount": amount}, headers=auth("billing"))
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"


async def test_unknown_account_is_404(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/payments", json={**PAYMENT, "account_id": "nope"}, headers=auth("billing"))
    assert response.status_code == 404


async def test_naive_paid_at_is_refused(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/payments", json={**PAYMENT, "paid_at": "2026-11-23T08:00:00"},
                                 headers=auth("billing"))
    assert response.status_code == 422


async def test_keys_and_roles(client: httpx.AsyncClient) -> None:
    assert (await client.get("/v1/accounts/A-1")).status_code == 401
    assert (await client.get("/v1/accounts/A-1", headers={"Authorization": "Bearer wrong"})).status_code == 401
    assert (await client.post("/v1/payments", json=PAYMENT, headers=auth("viewer"))).status_code == 403
    assert (await client.post("/v1/payments", json=PAYMENT, headers=auth("operator"))).status_code == 403
    disconnect = {"reason": "site test"}
    assert (await client.post("/v1/meters/M-1/disconnect", json=disconnect,
                              headers=auth("billing"))).status_code == 403
    assert (await client.post("/v1/meters/M-1/disconnect", json=disconnect,
                              headers=auth("viewer"))).status_code == 403
    assert (await client.post("/v1/payments", json=PAYMENT, headers=auth("admin"))).status_code == 201


async def test_relay_command_202_and_lookup(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/meters/M-1/disconnect", json={"reason": "unsafe wiring"},
                                 headers=auth("operator"))
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["state"] == "queued"
    command = (await client.get(f"/v1/commands/{accepted['command_id']}", headers=auth("viewer"))).json()
    assert {k: command[k] for k in ("meter_id", "action", "origin", "operator", "reason")} == {
        "meter_id": "M-1", "action": "open", "origin": "operator", "operator": "operator-key",
        "reason": "unsafe wiring"}
    assert command["state"] in ("queued", "sending", "sent", "failed")
    assert (await client.post("/v1/meters/M-1/reconnect", json={}, headers=auth("operator"))).status_code == 422
    assert (await client.post("/v1/meters/M-9/reconnect", json={"reason": "x"},
                              headers=auth("operator"))).status_code == 404
    assert (await client.get("/v1/commands/nope", headers=auth("viewer"))).status_code == 404


async def test_meter_and_health(client: httpx.AsyncClient) -> None:
    meter = (await client.get("/v1/meters/M-1", headers=auth("viewer"))).json()
    assert (meter["id"], meter["account_id"], meter["last_reading"]) == ("M-1", "A-1", None)
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    assert (await client.get("/readyz")).status_code == 200
    assert (await client.get("/v1/meters/nope", headers=auth("viewer"))).status_code == 404
