"""The audit log through the API, on a real SQLite file and on PostgreSQL: changes made through the API are found by
who made them, the account or meter they concern, their action (exact or a prefix) and time; pages walk every row
once; operators and admins only."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.adapters import list_store
from tests.integration.api_support import api_client, auth, on_database, site
from tests.support import SetClock

T0 = dt.datetime(2026, 11, 23, 0, 0, tzinfo=dt.UTC)
OPERATOR, ADMIN, PROV, BILLING = auth("operator"), auth("admin"), auth("provisioning"), auth("billing")


@pytest.fixture(params=["sqlite", "postgresql"])
async def gw(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    clock = SetClock(T0)
    async with api_client(on_database(site(tmp_path), request), tmp_path, clock=clock) as (c, _):
        yield c, clock


async def _changes(client: httpx.AsyncClient, clock: SetClock) -> dict[str, str]:
    """A change a minute through the API, by four keys; returns the ids it made."""
    steps: list[tuple[str, str, dict[str, Any] | None, dict[str, str]]] = [
        ("put", "/v1/accounts/A-1/hold", {"until": "2026-11-24T00:00:00Z", "reason": "promised"}, OPERATOR),
        ("post", "/v1/meters/M-1/disconnect", {"reason": "inspection"}, OPERATOR),
        ("cancel", "", None, OPERATOR),
        ("put", "/v1/accounts/A-2/protection", {"protected": False, "reason": "moved out"}, ADMIN),
        ("post", "/v1/accounts", {"id": "A-10", "tariff": "flat", "opening_balance": "5.00",
                                  "meters": [{"id": "M-10", "bus": "b", "unit_id": 10}]}, PROV),
        ("post", "/v1/meters/M-10/swap", {"new_meter": {"id": "M-11", "bus": "b", "unit_id": 11}, "final_wh": 0,
                                          "initial_wh": 0}, PROV),
        ("post", "/v1/meters/M-3/retire", {"final_wh": 0}, PROV),
        ("post", "/v1/payments", {"source": "billing", "payment_id": "P-1", "account_id": "A-3", "amount": "5.00"},
         BILLING),
        ("post", "/v1/payments/billing/P-1/reversal", {"reason": "bounced"}, BILLING),
    ]
    made: dict[str, str] = {}
    for minute, (method, url, body, headers) in enumerate(steps, start=1):
        clock.now = T0 + dt.timedelta(minutes=minute)
        if method == "cancel":
            method, url = "post", f"/v1/commands/{made['command']}/cancel"
        answer = await client.request(method.upper(), url, json=body, headers=headers)
        assert answer.status_code in (200, 201, 202), (url, answer.text)
        if url.endswith("/disconnect"):
            made["command"] = answer.json()["command_id"]
    return made


async def _audit(client: httpx.AsyncClient, headers: dict[str, str] = OPERATOR, **params: Any) -> Any:
    answer = await client.get("/v1/audit", params=params, headers=headers)
    assert answer.status_code == 200, answer.text
    return answer.json()


def _changes_only(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Without the rows of alarms (the gateway raises them in the background, in its own time)."""
    return [r for r in rows if not r["action"].startswith("alarm.")]


async def _actions(client: httpx.AsyncClient, **params: Any) -> list[str]:
    return [r["action"] for r in _changes_only((await _audit(client, limit=1000, **params))["data"])]


async def _walk(client: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    cursor: dict[str, Any] = {}
    for _ in range(1000):
        page = await _audit(client, **params, **cursor)
        rows += page["data"]
        if page["next_before_id"] is None:
            return rows
        cursor = {"before_id": page["next_before_id"]}
    raise AssertionError("the pages never end")


async def test_the_audit_log_by_actor_account_meter_action_and_time(gw: Any, monkeypatch: pytest.MonkeyPatch
                                                                     ) -> None:
    client, clock = gw
    made = await _changes(client, clock)
    everything = (await _audit(client, limit=1000))["data"]
    ids = [r["id"] for r in everything]
    assert ids == sorted(ids, reverse=True)  # newest first
    mine = [r for r in _changes_only(everything) if r["at"] >= "2026-11-23T00:01:00Z"]
    assert [r["action"] for r in mine] == [
        "payment.reverse", "meter.retire", "meter.swap", "account.open", "account.protection", "command.cancel",
        "command.cancelled", "command.open", "account.hold"]  # (the command's own move: by the gateway)
    hold = mine[-1]
    assert hold == {"id": hold["id"], "at": "2026-11-23T00:01:00Z", "actor": "operator-key",
                    "action": "account.hold", "target": "A-1",
                    "detail": {"until": "2026-11-24T00:00:00+00:00", "reason": "promised"}}

    for wide in (1, 2000):  # a key with many rows (read through the time index) or few (through its own)
        monkeypatch.setattr(list_store, "WIDE", wide)
        assert await _actions(client, actor="operator-key") == ["command.cancel", "command.open", "account.hold"]
        assert await _actions(client, actor="operator-key", meter_id="M-1") == ["command.cancel", "command.open"]
    assert await _actions(client, actor="billing-key") == ["payment.reverse"]
    assert await _actions(client, actor="nobody") == []
    # an account: its own rows, and its meters' and their commands' (the cancel's target is the command)
    assert await _actions(client, account_id="A-1") == ["command.cancel", "command.cancelled", "command.open",
                                                        "account.hold"]
    assert await _actions(client, account_id="A-10", since="2026-11-23T00:01:00Z") == ["meter.swap",
                                                                                       "account.open"]
    assert await _actions(client, account_id="A-3", since="2026-11-23T00:01:00Z") == ["payment.reverse",
                                                                                      "meter.retire"]
    # a meter: its own rows, its commands', and its account's rows that name it (an operator's disconnect, a swap)
    assert await _actions(client, meter_id="M-1") == ["command.cancel", "command.cancelled", "command.open"]
    assert await _actions(client, meter_id="M-10", action="meter.") == ["meter.swap"]
    assert await _actions(client, meter_id="M-11") == ["meter.swap"]
    assert await _actions(client, meter_id="M-3") == ["meter.retire"]
    assert await _actions(client, meter_id="M-2") == []
    assert await _actions(client, account_id="A-1", meter_id="M-1", action="command.open") == ["command.open"]
    assert await _actions(client, account_id="A-2", meter_id="M-1") == []
    cancel = (await _audit(client, meter_id="M-1", action="command.cancel"))["data"][0]
    assert cancel["target"] == made["command"] and cancel["actor"] == "operator-key"
    # actions: exact, or every action under a prefix ending with "."
    assert await _actions(client, action="command.") == ["command.cancel", "command.cancelled", "command.open"]
    assert await _actions(client, action="command.cancel") == ["command.cancel"]
    assert await _actions(client, action="command.open") == ["command.open"]
    assert await _actions(client, action="command") == []
    assert await _actions(client, action="account.", since="2026-11-23T00:01:00Z") == [
        "account.open", "account.protection", "account.hold"]
    # time: since inclusive, until exclusive, any offset
    assert await _actions(client, since="2026-11-23T00:04:00Z", until="2026-11-23T08:06:00+08:00") == [
        "account.open", "account.protection"]


async def test_audit_pages_walk_every_row_once(gw: Any) -> None:
    client, clock = gw
    await _changes(client, clock)
    for params in ({}, {"account_id": "A-1"}, {"meter_id": "M-1"}, {"action": "account."},
                   {"account_id": "A-10", "meter_id": "M-10"}):
        everything = [r["id"] for r in (await _audit(client, limit=1000, **params))["data"]]
        assert everything, params
        for limit in (1, 2, 3):
            walked = [r["id"] for r in await _walk(client, limit=limit, **params)]
            assert [i for i in walked if i <= everything[0]] == everything, (params, limit)  # (newer: alarms)
    last = await _audit(client, action="command.open", limit=1)
    assert len(last["data"]) == 1 and last["next_before_id"] is None  # no empty page after the last


async def test_only_operators_and_admins_read_the_audit_log(gw: Any) -> None:
    client, _ = gw
    for role in ("operator", "admin"):
        assert (await client.get("/v1/audit", headers=auth(role))).status_code == 200
    for role in ("viewer", "billing", "provisioning"):
        answer = await client.get("/v1/audit", headers=auth(role))
        assert answer.status_code == 403 and answer.headers["content-type"] == "application/problem+json"
    assert (await client.get("/v1/audit")).status_code == 401


@pytest.mark.parametrize("query", ["action=Command.", "action=command..x%25", "action=.", "before_id=0",
                                   "since=2026-11-23", "until=1999-01-01T00:00:00Z", "limit=1001", "actor=%20x",
                                   "account_id=a%2Fb"])
async def test_an_audit_filter_outside_its_schema_is_refused(gw: Any, query: str) -> None:
    client, _ = gw
    answer = await client.get(f"/v1/audit?{query}", headers=OPERATOR)
    assert answer.status_code == 422 and answer.headers["content-type"] == "application/problem+json", answer.text


async def test_newest_first_is_by_time_and_a_cursor_keeps_that_order(gw: Any) -> None:
    client, clock = gw
    for minute, url, body, headers in (
            (5, "/v1/accounts/A-1/hold", {"until": "2026-11-24T00:00:00Z", "reason": "promised"}, OPERATOR),
            (1, "/v1/accounts/A-2/protection", {"protected": False, "reason": "moved out"}, ADMIN),  # clock set back
            (3, "/v1/accounts/A-3/protection", {"protected": True, "reason": "clinic"}, ADMIN)):
        clock.now = T0 + dt.timedelta(minutes=minute)
        assert (await client.put(url, json=body, headers=headers)).status_code == 200
    rows = _changes_only((await _audit(client, since="2026-11-23T00:01:00Z"))["data"])
    assert [(r["target"], r["at"][11:16]) for r in rows] == [("A-1", "00:05"), ("A-3", "00:03"), ("A-2", "00:01")]
    walked = _changes_only(await _walk(client, limit=1, since="2026-11-23T00:01:00Z"))
    assert [r["id"] for r in walked] == [r["id"] for r in rows]
