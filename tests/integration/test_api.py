"""The HTTP API on a real SQLite database: shapes, roles, errors as problem+json."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.integration.api_support import api_client, auth, site


@pytest.fixture
async def client(tmp_path: Path):
    async with api_client(site(tmp_path), tmp_path) as (c, _):
        yield c


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
    assert command["state"] == "queued"
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


async def test_reversal_once_and_ledger(client: httpx.AsyncClient) -> None:
    assert (await client.post("/v1/payments", json=PAYMENT, headers=auth("billing"))).status_code == 201
    url = "/v1/payments/billing/P-1001/reversal"
    first = await client.post(url, json={"reason": "transfer bounced"}, headers=auth("billing"))
    assert first.status_code == 201, first.text
    assert first.json()["balance"] == "10.00" and first.json()["reversed_at"]
    again = await client.post(url, json={"reason": "transfer bounced"}, headers=auth("billing"))
    assert again.status_code == 200
    assert (await client.post("/v1/payments/billing/nope/reversal", json={"reason": "x"},
                              headers=auth("billing"))).status_code == 404
    assert (await client.post(url, json={"reason": "x"}, headers=auth("viewer"))).status_code == 403
    ledger = (await client.get("/v1/accounts/A-1/ledger", headers=auth("viewer"))).json()["data"]
    assert [(e["kind"], e["amount"], e["balance_after"]) for e in ledger] == [
        ("reversal", "-50.00", "10.00"), ("payment", "50.00", "60.00"), ("opening", "10.00", "10.00")]
    assert (await client.get("/v1/accounts/A-1", headers=auth("viewer"))).json()["balance"] == "10.00"


async def test_ledger_pages(client: httpx.AsyncClient) -> None:
    for i in range(5):
        body = {**PAYMENT, "payment_id": f"P-{i}", "amount": "1.00"}
        assert (await client.post("/v1/payments", json=body, headers=auth("billing"))).status_code == 201
    first = (await client.get("/v1/accounts/A-1/ledger?limit=4", headers=auth("viewer"))).json()
    second = (await client.get(f"/v1/accounts/A-1/ledger?limit=4&before_id={first['next_before_id']}",
                               headers=auth("viewer"))).json()
    assert len(first["data"]) == 4 and len(second["data"]) == 2 and second["next_before_id"] is None
    assert first["data"][0]["balance_after"] == "15.00"


async def test_emergency_credit_once_per_period(client: httpx.AsyncClient) -> None:
    body = {"reason": "customer at the counter", "amount": "5.00"}
    granted = await client.post("/v1/accounts/A-3/emergency-credit", json=body, headers=auth("operator"))
    assert granted.status_code == 200, granted.text
    assert granted.json()["balance"] == "6.00" and granted.json()["emergency_credit_outstanding"] == "5.00"
    refused = await client.post("/v1/accounts/A-3/emergency-credit", json=body, headers=auth("operator"))
    assert refused.status_code == 409
    pay = {**PAYMENT, "account_id": "A-3", "payment_id": "P-EC", "amount": "20.00"}
    assert (await client.post("/v1/payments", json=pay, headers=auth("billing"))).status_code == 201
    account = (await client.get("/v1/accounts/A-3", headers=auth("viewer"))).json()
    assert (account["balance"], account["emergency_credit_outstanding"]) == ("21.00", "0.00")  # 6 + 20 paid - 5 repaid
    kinds = [e["kind"] for e in (await client.get("/v1/accounts/A-3/ledger", headers=auth("viewer"))).json()["data"]]
    assert kinds[:3] == ["repayment", "payment", "emergency_credit"]


async def test_protected_account_needs_admin_and_force(client: httpx.AsyncClient) -> None:
    body = {"reason": "meter tampering"}
    refused = await client.post("/v1/meters/M-2/disconnect", json=body, headers=auth("operator"))
    assert refused.status_code == 403 and "protected" in refused.json()["detail"]
    refused = await client.post("/v1/meters/M-2/disconnect", json={**body, "force": True}, headers=auth("operator"))
    assert refused.status_code == 403
    refused = await client.post("/v1/meters/M-2/disconnect", json=body, headers=auth("admin"))
    assert refused.status_code == 403
    forced = await client.post("/v1/meters/M-2/disconnect", json={**body, "force": True}, headers=auth("admin"))
    assert forced.status_code == 202, forced.text
    assert (await client.put("/v1/accounts/A-1/protection", json={"protected": True, "reason": "clinic"},
                             headers=auth("operator"))).status_code == 403
    protected = await client.put("/v1/accounts/A-1/protection", json={"protected": True, "reason": "clinic"},
                                 headers=auth("admin"))
    assert protected.status_code == 200 and protected.json()["protected"] is True
    assert (await client.post("/v1/meters/M-1/disconnect", json=body, headers=auth("operator"))).status_code == 403


async def test_dry_run_changes_nothing_and_says_why(client: httpx.AsyncClient) -> None:
    dry = await client.post("/v1/meters/M-2/disconnect", json={"reason": "check", "dry_run": True},
                            headers=auth("operator"))
    assert dry.status_code == 403 and "protected" in dry.json()["detail"]
    dry = await client.post("/v1/meters/M-3/disconnect", json={"reason": "check", "dry_run": True},
                            headers=auth("operator"))
    assert dry.status_code == 200 and dry.json()["allowed"] and dry.json()["command_id"] is None
    assert (await client.get("/v1/commands", headers=auth("viewer"))).json()["data"] == []


async def test_manual_reconnect_below_the_disconnect_point_places_a_hold(client: httpx.AsyncClient) -> None:
    reconnect = await client.post("/v1/meters/M-2/reconnect", json={"reason": "doctor's visit"},
                                  headers=auth("operator"))
    assert reconnect.status_code == 202, reconnect.text
    assert reconnect.json()["hold_until"] is not None
    account = (await client.get("/v1/accounts/A-2", headers=auth("viewer"))).json()
    assert account["hold_until"] == reconnect.json()["hold_until"]
    fine = await client.post("/v1/meters/M-1/reconnect", json={"reason": "after inspection"}, headers=auth("operator"))
    assert fine.status_code == 202 and fine.json()["hold_until"] is None


async def test_manual_disconnect_is_not_undone_by_a_payment(client: httpx.AsyncClient) -> None:
    assert (await client.post("/v1/meters/M-3/disconnect", json={"reason": "unsafe wiring"},
                              headers=auth("operator"))).status_code == 202
    pay = {**PAYMENT, "account_id": "A-3", "payment_id": "P-M3"}
    assert (await client.post("/v1/payments", json=pay, headers=auth("billing"))).status_code == 201
    account = (await client.get("/v1/accounts/A-3", headers=auth("viewer"))).json()
    # no bus runs here: the trip is queued, not confirmed; the engine still wants the supply off
    assert (account["supply"], account["state"], account["manual_disconnect"]) == ("disconnected", "disconnecting",
                                                                                  True)
    commands = (await client.get("/v1/commands?meter_id=M-3", headers=auth("viewer"))).json()["data"]
    assert [c["action"] for c in commands] == ["open"]


async def test_bulk_by_group_with_a_result_per_meter(client: httpx.AsyncClient) -> None:
    body = {"action": "disconnect", "group": "feeder-7", "reason": "feeder maintenance", "dry_run": True}
    dry = (await client.post("/v1/commands/bulk", json=body, headers=auth("operator"))).json()
    assert [(r["meter_id"], r["allowed"]) for r in dry["results"]] == [("M-1", True), ("M-2", False)]
    assert "protected" in dry["results"][1]["reason"]
    real = (await client.post("/v1/commands/bulk", json={**body, "dry_run": False, "meter_ids": ["M-9"]},
                              headers=auth("operator"))).json()
    by_meter = {r["meter_id"]: r for r in real["results"]}
    assert by_meter["M-1"]["command_id"] and by_meter["M-1"]["state"] == "queued"
    assert by_meter["M-2"]["command_id"] is None and by_meter["M-9"]["error"] == "unknown meter"
    assert (await client.post("/v1/commands/bulk", json={**body, "group": "nowhere"},
                              headers=auth("operator"))).status_code == 404  # no such group


async def test_cancel_and_supersede_and_list(client: httpx.AsyncClient) -> None:
    first = (await client.post("/v1/meters/M-1/disconnect", json={"reason": "a"}, headers=auth("operator"))).json()
    second = (await client.post("/v1/meters/M-1/reconnect", json={"reason": "b"}, headers=auth("operator"))).json()
    older = (await client.get(f"/v1/commands/{first['command_id']}", headers=auth("viewer"))).json()
    assert older["state"] == "superseded"
    cancelled = await client.post(f"/v1/commands/{second['command_id']}/cancel", headers=auth("operator"))
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    again = await client.post(f"/v1/commands/{second['command_id']}/cancel", headers=auth("operator"))
    assert again.status_code == 409
    listed = (await client.get("/v1/commands?meter_id=M-1&limit=1", headers=auth("viewer"))).json()
    assert len(listed["data"]) == 1 and listed["next_before"]
    states = {c["state"] for c in (await client.get("/v1/commands?meter_id=M-1",
                                                    headers=auth("viewer"))).json()["data"]}
    assert states == {"superseded", "cancelled"}
