"""A request that fails changes nothing: for every write route, requests refused for each kind of reason (bad
input, authority, state, unknown target) and requests that meet an unexpected database error leave every table
as it was, and the account in the writer's memory too (the next change does not carry the failed one)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.api_support import api_client, auth, site, snapshot

PAY = {"source": "billing", "payment_id": "P-1", "account_id": "A-1", "amount": "5.00"}
FAR = "9999-12-31T23:59:59-14:00"

# (what, method, path, role, body, status): each fails; the setup below has already made a payment P-1 (billing),
# a payment C-1 (collector), an emergency credit on A-3 and a cancelled command.
FAILURES: list[tuple[str, str, str, str, Any, int]] = [
    ("payment: amount in full-width digits", "POST", "/v1/payments", "billing", {**PAY, "amount": "５.00"}, 422),
    ("payment: extreme paid_at", "POST", "/v1/payments", "billing", {**PAY, "paid_at": FAR}, 422),
    ("payment: unknown account", "POST", "/v1/payments", "billing", {**PAY, "payment_id": "P-2",
                                                                     "account_id": "A-9"}, 404),
    ("payment: same id, other amount", "POST", "/v1/payments", "billing", {**PAY, "amount": "6.00"}, 409),
    ("payment: another source's", "POST", "/v1/payments", "collector", {**PAY, "payment_id": "P-3"}, 403),
    ("payment: above the maximum", "POST", "/v1/payments", "billing", {**PAY, "payment_id": "P-4",
                                                                       "amount": "1000.01"}, 422),
    ("reversal: unknown payment", "POST", "/v1/payments/billing/P-404/reversal", "billing", {"reason": "x"}, 404),
    ("reversal: another source's", "POST", "/v1/payments/billing/P-1/reversal", "collector", {"reason": "x"}, 403),
    ("reversal: reason with NUL", "POST", "/v1/payments/billing/P-1/reversal", "billing", {"reason": "a\x00"}, 422),
    ("emergency credit: above the site's amount", "POST", "/v1/accounts/A-1/emergency-credit", "operator",
     {"amount": "10.01", "reason": "x"}, 403),
    ("emergency credit: twice a period", "POST", "/v1/accounts/A-3/emergency-credit", "operator",
     {"reason": "x"}, 409),
    ("emergency credit: unknown account", "POST", "/v1/accounts/A-9/emergency-credit", "operator",
     {"reason": "x"}, 404),
    ("protection: by an operator", "PUT", "/v1/accounts/A-1/protection", "operator",
     {"protected": True, "reason": "x"}, 403),
    ("protection: 0.0 for false", "PUT", "/v1/accounts/A-1/protection", "admin", {"protected": 0.0, "reason": "x"},
     422),
    ("hold: extreme until", "PUT", "/v1/accounts/A-1/hold", "operator", {"until": FAR, "reason": "x"}, 422),
    ("hold: year 0001", "PUT", "/v1/accounts/A-1/hold", "operator",
     {"until": "0001-01-01T00:00:00+14:00", "reason": "x"}, 422),
    ("hold: in the past", "PUT", "/v1/accounts/A-1/hold", "operator",
     {"until": "2001-01-01T00:00:00Z", "reason": "x"}, 409),
    ("hold: longer than an operator may", "PUT", "/v1/accounts/A-1/hold", "operator",
     {"until": "2099-01-01T00:00:00Z", "reason": "x"}, 403),
    ("adjustment: by an operator", "POST", "/v1/accounts/A-1/adjustments", "operator",
     {"amount": "1.00", "reason": "x"}, 403),
    ("adjustment: zero", "POST", "/v1/accounts/A-1/adjustments", "admin", {"amount": "0.00", "reason": "x"}, 422),
    ("adjustment: duplicate key", "POST", "/v1/accounts/A-1/adjustments", "admin",
     '{"amount": "1.00", "amount": "-1.00", "reason": "x"}', 422),
    ("disconnect: protected account", "POST", "/v1/meters/M-2/disconnect", "operator", {"reason": "x"}, 403),
    ("disconnect: unknown meter", "POST", "/v1/meters/M-9/disconnect", "operator", {"reason": "x"}, 404),
    ("reconnect: force as a string", "POST", "/v1/meters/M-1/reconnect", "operator",
     {"reason": "x", "force": "true"}, 422),
    ("quarantine: nothing to accept", "POST", "/v1/meters/M-1/quarantine/accept", "operator", {"reason": "x"}, 409),
    ("quarantine: naive taken_at", "POST", "/v1/meters/M-1/quarantine/rebase", "operator",
     {"reason": "x", "energy_wh": 5, "taken_at": "2026-11-23T08:00:00"}, 422),
    ("quarantine: baseline in the future", "POST", "/v1/meters/M-1/quarantine/rebase", "operator",
     {"reason": "x", "energy_wh": 5, "taken_at": "2099-01-01T00:00:00Z"}, 409),
    ("quarantine: energy beyond 10^12 Wh", "POST", "/v1/meters/M-1/quarantine/rebase", "operator",
     {"reason": "x", "energy_wh": 2**63}, 422),
    ("bulk: unknown group", "POST", "/v1/commands/bulk", "operator",
     {"action": "disconnect", "group": "nowhere", "reason": "x"}, 404),
    ("bulk: no meters", "POST", "/v1/commands/bulk", "operator", {"action": "disconnect", "reason": "x"}, 422),
    ("cancel: no longer queued", "POST", "/v1/commands/{cancelled}/cancel", "operator", None, 409),
    ("cancel: unknown command", "POST", "/v1/commands/nope/cancel", "operator", None, 404),
]


async def _setup(client: httpx.AsyncClient) -> str:
    """The state the failures meet; returns the id of a cancelled command."""
    assert (await client.post("/v1/payments", json=PAY, headers=auth("billing"))).status_code == 201
    collected = {**PAY, "source": "collector", "payment_id": "C-1"}
    assert (await client.post("/v1/payments", json=collected, headers=auth("collector"))).status_code == 201
    assert (await client.post("/v1/accounts/A-3/emergency-credit", json={"reason": "x"},
                              headers=auth("operator"))).status_code == 200
    command = (await client.post("/v1/meters/M-3/disconnect", json={"reason": "x"}, headers=auth("operator"))).json()
    assert (await client.post(f"/v1/commands/{command['command_id']}/cancel",
                              headers=auth("operator"))).status_code == 200
    return str(command["command_id"])


async def _send(client: httpx.AsyncClient, method: str, path: str, role: str, body: Any) -> httpx.Response:
    if isinstance(body, str):
        return await client.request(method, path, content=body.encode(),
                                    headers={**auth(role), "Content-Type": "application/json"})
    return await client.request(method, path, json=body, headers=auth(role))


async def test_every_failing_write_changes_nothing(tmp_path: Path) -> None:
    async with api_client(site(tmp_path), tmp_path) as (client, _):
        cancelled = await _setup(client)
        before = snapshot(tmp_path / "gw.db")
        for what, method, path, role, body, status in FAILURES:
            response = await _send(client, method, path.format(cancelled=cancelled), role, body)
            assert response.status_code == status, f"{what}: {response.status_code} {response.text}"
            assert response.headers["content-type"] == "application/problem+json", what
            assert snapshot(tmp_path / "gw.db") == before, f"{what}: the database changed"
        # the writer's accounts in memory are as stored: a change now writes only itself
        response = await client.post("/v1/accounts/A-1/adjustments", json={"amount": "1.00", "reason": "check"},
                                     headers=auth("admin"))
        assert response.status_code == 200
        assert (response.json()["balance"], response.json()["hold_until"]) == ("21.00", None)  # 10 + 5 + 5 + 1


def _fault(db: Path, table: str, when: str) -> None:
    """An unexpected database error: a trigger that aborts matching inserts (like a full disk would). Run in a
    thread: it waits for the write lock, which a task of the gateway (the alarm keeper) may hold meanwhile."""
    with sqlite3.connect(db) as conn:
        conn.execute(f"CREATE TRIGGER fault_{table} BEFORE INSERT ON {table} WHEN {when} "
                     "BEGIN SELECT RAISE(ABORT, 'injected fault'); END")


@pytest.mark.parametrize(("table", "when", "method", "path", "role", "body"), [
    ("audit_log", "NEW.action = 'account.hold'", "PUT", "/v1/accounts/A-1/hold", "operator",
     {"until": "2099-01-01T00:00:00Z", "reason": "x"}),
    ("payments", "NEW.payment_id = 'P-FAULT'", "POST", "/v1/payments", "billing",
     {**PAY, "payment_id": "P-FAULT"}),
    ("ledger_entries", "NEW.kind = 'adjustment'", "POST", "/v1/accounts/A-1/adjustments", "admin",
     {"amount": "-20.00", "reason": "x"}),
    ("commands", "NEW.meter_id = 'M-1'", "POST", "/v1/meters/M-1/disconnect", "operator", {"reason": "x"}),
    ("audit_log", "NEW.action = 'quarantine.rebase'", "POST", "/v1/meters/M-1/quarantine/rebase", "operator",
     {"reason": "x", "energy_wh": 5}),
    ("audit_log", "NEW.action = 'payment.reverse'", "POST", "/v1/payments/billing/P-0/reversal", "billing",
     {"reason": "x"}),
    ("ledger_entries", "NEW.kind = 'emergency_credit'", "POST", "/v1/accounts/A-1/emergency-credit", "operator",
     {"reason": "x"}),
    ("audit_log", "NEW.action = 'account.hold'", "PUT", "/v1/accounts/A-1/hold", "operator",
     {"until": None, "reason": "release"}),
    ("commands", "NEW.meter_id = 'M-1'", "POST", "/v1/meters/M-1/reconnect", "operator", {"reason": "x"}),
    ("audit_log", "NEW.action = 'command.cancel'", "POST", "/v1/commands/{queued}/cancel", "operator", None),
    ("audit_log", "NEW.action = 'account.protection' AND NEW.target = 'A-3'", "PUT", "/v1/accounts/A-3/protection", "admin",
     {"protected": True, "reason": "x"}),
])
async def test_an_unexpected_error_rolls_back(tmp_path: Path, table: str, when: str, method: str, path: str,
                                             role: str, body: Any) -> None:
    async with api_client(site(tmp_path, max_operator_hold_s=10**10), tmp_path) as (client, _):
        assert (await client.post("/v1/payments", json={**PAY, "payment_id": "P-0", "account_id": "A-2"},
                                  headers=auth("billing"))).status_code == 201
        queued = (await client.post("/v1/meters/M-2/reconnect", json={"reason": "x"},
                                    headers=auth("operator"))).json()["command_id"]
        path = path.format(queued=queued)
        await asyncio.to_thread(_fault, tmp_path / "gw.db", table, when)
        before = snapshot(tmp_path / "gw.db")
        response = await _send(client, method, path, role, body)
        assert response.status_code == 500, response.text
        assert response.json()["type"].endswith(":internal-error")
        assert snapshot(tmp_path / "gw.db") == before
        # the next change of the same account carries nothing of the failed one
        protected = await client.put("/v1/accounts/A-1/protection", json={"protected": True, "reason": "x"},
                                     headers=auth("admin"))
        assert protected.status_code == 200, protected.text
        account = protected.json()
        assert (account["balance"], account["hold_until"], account["state"]) == ("10.00", None, "connected")


async def test_a_refused_change_leaves_the_account_as_it_was(tmp_path: Path) -> None:
    """The writer puts back an account that a refused job had already changed in memory."""
    from gateway.domain.errors import DomainError

    async with api_client(site(tmp_path), tmp_path) as (client, gw):
        def half_done(account: Any, now: Any) -> None:
            account.apply_adjustment(-5_000, "never written")
            account.place_hold(now.replace(year=2090), by="x")
            raise DomainError("refused after a change")

        with pytest.raises(DomainError):
            await gw.service.change_account("A-1", half_done, actor="t", action="test")
        await gw.service.change_account("A-1", lambda account, now: account.set_protected(True), actor="t",
                                        action="test")
        account = (await client.get("/v1/accounts/A-1", headers=auth("viewer"))).json()
        assert (account["balance"], account["hold_until"], account["protected"]) == ("10.00", None, True)
        ledger = (await client.get("/v1/accounts/A-1/ledger", headers=auth("viewer"))).json()["data"]
        assert [e["kind"] for e in ledger] == ["opening"]


async def test_a_bulk_command_reports_an_unexpected_error_per_meter(tmp_path: Path) -> None:
    """A bulk command is one decision per meter: a meter that meets an unexpected error gets nothing and says so;
    the others go ahead."""
    async with api_client(site(tmp_path), tmp_path) as (client, _):
        await asyncio.to_thread(_fault, tmp_path / "gw.db", "commands", "NEW.meter_id = 'M-1'")
        response = await client.post("/v1/commands/bulk", headers=auth("operator"), json={
            "action": "reconnect", "meter_ids": ["M-1", "M-3"], "reason": "x"})
        assert response.status_code == 200, response.text
        results = {r["meter_id"]: r for r in response.json()["results"]}
        assert results["M-1"]["command_id"] is None and "unexpected" in results["M-1"]["error"]
        assert results["M-3"]["state"] == "queued"
        with sqlite3.connect(tmp_path / "gw.db") as conn:
            assert conn.execute("SELECT meter_id FROM commands").fetchall() == [("M-3",)]
            audited = conn.execute("SELECT detail FROM audit_log WHERE action = 'command.close'").fetchall()
        assert len(audited) == 1 and "M-3" in audited[0][0]
