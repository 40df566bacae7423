"""The lists through the API, on a real SQLite file and on PostgreSQL: accounts, meters, relay commands and notices
by each filter, and pages that walk every row once (also when rows share a time)."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from drivers.base import Reading
from gateway.adapters import list_store
from gateway.adapters import tables as t
from gateway.bootstrap import Gateway
from gateway.domain.relay import supply_state
from gateway.service.lists import SUPPLY_STATES
from tests.integration.api_support import api_client, auth, on_database, site
from tests.support import SetClock

T0 = dt.datetime(2026, 11, 23, 0, 0, tzinfo=dt.UTC)
VIEWER, OPERATOR, ADMIN, PROV = auth("viewer"), auth("operator"), auth("admin"), auth("provisioning")


@pytest.fixture(params=["sqlite", "postgresql"])
async def gw(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Gateway]]:
    async with api_client(on_database(site(tmp_path), request), tmp_path, clock=SetClock(T0)) as pair:
        yield pair


async def _execute(gateway: Gateway, *statements: Any) -> None:
    async with gateway.engine.begin() as conn:
        for statement in statements:
            await conn.execute(statement)


async def _open(client: httpx.AsyncClient, account_id: str, meters: list[str], unit: int, **extra: Any) -> None:
    body = {"id": account_id, "tariff": "flat", "opening_balance": "5.00", **extra,
            "meters": [{"id": m, "bus": "b", "unit_id": unit + i} for i, m in enumerate(meters)]}
    answer = await client.post("/v1/accounts", json=body, headers=PROV)
    assert answer.status_code == 201, answer.text


async def _get(client: httpx.AsyncClient, url: str, headers: dict[str, str] = VIEWER, **params: Any) -> Any:
    answer = await client.get(url, params=params, headers=headers)
    assert answer.status_code == 200, answer.text
    return answer.json()


async def _walk(client: httpx.AsyncClient, url: str, cursor: dict[str, str], **params: Any) -> list[dict[str, Any]]:
    """Every page of a list; ``cursor`` maps each query parameter of the cursor to the answer's key."""
    rows: list[dict[str, Any]] = []
    after: dict[str, Any] = {}
    for _ in range(1000):
        page = await _get(client, url, **params, **after)
        rows += page["data"]
        after = {name: page[key] for name, key in cursor.items()}
        if all(v is None for v in after.values()):
            return rows
    raise AssertionError("the pages never end")


def _ids(rows: list[dict[str, Any]]) -> list[str]:
    return [r["id"] for r in rows]


# Each account's stored supply and its meters' (relay, fault), one account per supply state (and a retired
# meter, which does not count): the filter in SQL must agree with gateway.domain.relay.supply_state.
SUPPLIES = {
    "S-1": ("connected", [("closed", "")]),
    "S-2": ("disconnected", [("open", ""), ("closed", "retired")]),
    "S-3": ("disconnected", [("open", ""), ("closed", "")]),
    "S-4": ("connected", [("open", "")]),
    "S-5": ("connected", [("armed", ""), ("closed", "")]),
    "S-6": ("disconnected", [("closed", "disconnect_failed")]),
    "S-7": ("connected", [("open", "reconnect_failed")]),
    "S-8": ("disconnected", [("unknown", "")]),
}


async def _supplies(client: httpx.AsyncClient, gateway: Gateway) -> None:
    for n, (account_id, (supply, meters)) in enumerate(SUPPLIES.items()):
        ids = [f"{account_id}.{i}" for i in range(len(meters))]
        await _open(client, account_id, ids, 100 + 10 * n)
        statements: list[Any] = [sa.update(t.accounts).where(t.accounts.c.id == account_id).values(supply=supply)]
        for meter_id, (relay, fault) in zip(ids, meters, strict=True):
            values = {"relay": relay, "relay_fault": fault}
            if fault == "retired":  # (in SQL: the API's retire would have the engine decide the supply again)
                values = {"relay": relay, "status": "retired"}
            statements.append(sa.update(t.meters).where(t.meters.c.id == meter_id).values(**values))
        await _execute(gateway, *statements)


async def test_accounts_by_supply_state_agree_with_the_account_view(gw: Any) -> None:
    client, gateway = gw
    await _supplies(client, gateway)
    everything = (await _get(client, "/v1/accounts", limit=1000))["data"]
    shown = {r["id"]: r["state"] for r in everything}
    expected = {"S-1": "connected", "S-2": "disconnected", "S-3": "disconnecting", "S-4": "reconnecting",
                "S-5": "armed", "S-6": "disconnect_failed", "S-7": "reconnect_failed", "S-8": "disconnecting"}
    assert {k: shown[k] for k in expected} == expected
    for account_id in expected:  # the list says what the account's own page says
        one = await _get(client, f"/v1/accounts/{account_id}")
        assert one["state"] == shown[account_id]
    assert [r["meters"] for r in everything if r["id"] in ("S-2", "S-3")] == [["S-2.0"], ["S-3.0", "S-3.1"]]
    for state in SUPPLY_STATES:
        listed = _ids((await _get(client, "/v1/accounts", state=state))["data"])
        assert listed == sorted(k for k, v in shown.items() if v == state), state
    assert supply_state("disconnected", []) == "disconnecting"  # an account without meters, as S-8's unknown relay
    stored = _ids((await _get(client, "/v1/accounts", supply="disconnected"))["data"])
    assert stored == ["S-2", "S-3", "S-6", "S-8"]


async def test_accounts_by_balance_class_protection_status_and_meter(gw: Any) -> None:
    client, gateway = gw
    await _open(client, "A-10", ["M-10"], 10, credit_class="B", opening_balance="20.00")
    await _open(client, "A-11", ["M-11"], 11, credit_class="B", opening_balance="0.01")
    await _open(client, "A-12", ["M-12"], 12)
    assert (await client.put("/v1/accounts/A-3/protection", json={"protected": True, "reason": "clinic"},
                             headers=ADMIN)).status_code == 200  # by an admin: in the state document
    closed = await client.post("/v1/accounts/A-12/close", headers=PROV,
                               json={"final_readings": [{"meter_id": "M-12", "final_wh": 0}]})
    assert closed.status_code == 200, closed.text

    async def ids(**params: Any) -> list[str]:
        return _ids((await _get(client, "/v1/accounts", **params))["data"])

    # balances: A-1 10.00, A-2 -5.00, A-3 1.00, A-10 20.00, A-11 0.01, A-12 settled at 0.00
    assert await ids(balance_min="1.00") == ["A-1", "A-10", "A-3"]  # inclusive
    assert await ids(balance_max="-5.00") == ["A-2"]
    assert await ids(balance_min="-0.00", balance_max="0.01") == ["A-11", "A-12"]
    assert await ids(balance_min="0.02", balance_max="0.99") == []
    assert await ids(balance_min="-5", balance_max="-4.99") == ["A-2"]
    assert await ids(credit_class="B") == ["A-10", "A-11"]
    assert await ids(protected="true") == ["A-2", "A-3"]  # by configuration, by an admin
    assert await ids(protected="false") == ["A-1", "A-10", "A-11", "A-12"]
    assert await ids(status="closed") == ["A-12"]
    assert await ids(status="open", credit_class="B", balance_min="1") == ["A-10"]
    assert await ids(meter_id="M-11") == ["A-11"]
    assert await ids(meter_id="M-404") == []
    row = (await _get(client, "/v1/accounts", meter_id="M-10"))["data"][0]
    assert row == {"id": "A-10", "balance": "20.00", "state": "connected", "supply": "connected", "status": "open",
                   "tariff": "flat", "credit_class": "B", "protected": False, "meters": ["M-10"],
                   "disconnect_deferred_because": None, "updated_at": row["updated_at"]}
    # the tariff in force after a change took effect is the one the engine switched to (the state document)
    async with gateway.engine.begin() as conn:
        state = (await conn.execute(sa.select(t.accounts.c.state).where(t.accounts.c.id == "A-10"))).scalar_one()
        state["tariff_switch"] = {"at": "2026-11-23T00:00:00Z", "name": "dear"}
        await conn.execute(sa.update(t.accounts).where(t.accounts.c.id == "A-10").values(state=state))
    assert (await _get(client, "/v1/accounts", meter_id="M-10"))["data"][0]["tariff"] == "dear"


async def test_account_pages_walk_every_account_once(gw: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    client, _ = gw
    for n in range(20):
        await _open(client, f"P-{n:02d}", [f"PM-{n:02d}"], 20 + n, opening_balance=f"{n}.00")
    everything = _ids((await _get(client, "/v1/accounts", limit=1000))["data"])
    assert everything == sorted(everything) and len(everything) == 23
    for limit in (1, 3, 23):
        assert _ids(await _walk(client, "/v1/accounts", {"after": "next_after"}, limit=limit)) == everything
    in_range = [i for i in everything if i == "A-1" or i.startswith("P-") and 7 <= int(i[2:]) <= 14]
    for wide in (1, 1000):  # the range read through the balance index, or by id (a wide range)
        monkeypatch.setattr(list_store, "WIDE", wide)
        walked = _ids(await _walk(client, "/v1/accounts", {"after": "next_after"}, limit=4, balance_min="7",
                                  balance_max="14.50"))
        assert walked == in_range, wide
        assert _ids((await _get(client, "/v1/accounts", balance_max="0.99"))["data"]) == ["A-2", "P-00"]
    last = await _get(client, "/v1/accounts", limit=23)
    assert last["next_after"] is None  # exactly the last page: no empty page after it


async def test_meters_by_each_filter_and_page(gw: Any) -> None:
    client, gateway = gw
    await _open(client, "A-10", ["M-10", "M-11"], 10)
    await _execute(gateway,
                   sa.update(t.meters).where(t.meters.c.id == "M-10").values(health="offline", relay="open",
                                                                            relay_fault="disconnect_failed",
                                                                            consecutive_failures=7),
                   sa.update(t.meters).where(t.meters.c.id == "M-2").values(health="online", relay="closed",
                                                                           model="dds-1", bus_id="c"))
    retired = await client.post("/v1/meters/M-11/retire", json={"final_wh": 0}, headers=PROV)
    assert retired.status_code == 200, retired.text
    clock = gateway.test_clock
    clock.now = T0 + dt.timedelta(minutes=5)
    await gateway.service.record_reading(Reading("M-1", clock.now, 1000))

    async def ids(**params: Any) -> list[str]:
        return _ids((await _get(client, "/v1/meters", **params))["data"])

    assert await ids() == ["M-1", "M-10", "M-11", "M-2", "M-3"]  # active and retired alike
    assert await ids(status="retired") == ["M-11"]
    assert await ids(status="active", account_id="A-10") == ["M-10"]
    assert await ids(health="offline") == ["M-10"]
    assert await ids(health="unknown") == ["M-11", "M-3"]
    assert await ids(health="online") == ["M-1", "M-2"]  # M-1: its reading
    assert await ids(relay="closed") == ["M-2"]
    assert await ids(relay_fault="disconnect_failed") == ["M-10"]
    assert await ids(model="dds-1") == ["M-2"]
    assert await ids(bus="c") == ["M-2"]
    assert await ids(bus="b", health="offline", relay="open") == ["M-10"]
    assert await ids(bus="nowhere") == []
    rows = {r["id"]: r for r in (await _get(client, "/v1/meters"))["data"]}
    assert rows["M-10"] == {"id": "M-10", "account_id": "A-10", "status": "active", "bus": "b", "unit_id": 10,
                            "address": None, "model": "generic-prepaid", "relay": "open",
                            "relay_fault": "disconnect_failed", "health": "offline", "consecutive_failures": 7,
                            "last_success_at": None}
    one = await _get(client, "/v1/meters/M-1")
    assert rows["M-1"]["last_success_at"] == one["last_success_at"] == "2026-11-23T00:05:00Z"  # its reading's
    everything = await ids(limit=1000)
    for limit in (1, 2, 5):
        assert _ids(await _walk(client, "/v1/meters", {"after": "next_after"}, limit=limit)) == everything


async def test_commands_by_origin_and_time_pages_through_commands_of_the_same_time(gw: Any) -> None:
    client, gateway = gw
    clock = gateway.test_clock
    made = []
    for minute, origins in ((1, ["operator", "automatic", "billing", "automatic"]), (2, ["automatic"] * 3),
                            (3, ["operator"])):
        clock.now = T0 + dt.timedelta(minutes=minute)
        for n, origin in enumerate(origins):  # several commands of the same time, on different meters
            record = await gateway.service.request_command(meter_id=f"M-{n % 3 + 1}", action="open", origin=origin,
                                                           operator=None, reason=f"{minute}/{n}", actor="test")
            made.append(record)
    everything = (await _get(client, "/v1/commands", limit=1000))["data"]
    assert len(everything) == len(made) == 8
    keys = [(c["created_at"], c["id"]) for c in everything]
    assert keys == sorted(keys, reverse=True)  # newest first, ties by id
    for limit in (1, 2, 3):
        walked = await _walk(client, "/v1/commands", {"before": "next_before", "before_id": "next_before_id"},
                             limit=limit)
        assert _ids(walked) == _ids(everything)
    # the command id alone is a cursor too
    page = await _get(client, "/v1/commands", limit=3)
    rest = await _get(client, "/v1/commands", before_id=page["next_before_id"], limit=1000)
    assert _ids(page["data"] + rest["data"]) == _ids(everything)
    # the older cursor, the time alone, still works: strictly older commands
    older = await _get(client, "/v1/commands", before="2026-11-23T00:02:00Z", limit=1000)
    assert {c["reason"] for c in older["data"]} == {"1/0", "1/1", "1/2", "1/3"}

    async def reasons(**params: Any) -> set[str]:
        return {c["reason"] for c in (await _get(client, "/v1/commands", limit=1000, **params))["data"]}

    assert await reasons(origin="operator") == {"1/0", "3/0"}
    assert await reasons(origin="billing") == {"1/2"}
    assert await reasons(since="2026-11-23T00:02:00Z") == {"2/0", "2/1", "2/2", "3/0"}  # inclusive
    assert await reasons(until="2026-11-23T00:02:00Z") == {"1/0", "1/1", "1/2", "1/3"}  # exclusive
    assert await reasons(since="2026-11-23T08:02:00+08:00", until="2026-11-23T00:03:00Z",
                         origin="automatic", meter_id="M-2") == {"2/1"}
    assert await reasons(state="superseded", meter_id="M-1") == {"1/0", "1/3", "2/0"}
    walked = await _walk(client, "/v1/commands", {"before": "next_before", "before_id": "next_before_id"}, limit=1,
                         origin="automatic")
    assert {c["reason"] for c in walked[:3]} == {"2/0", "2/1", "2/2"} and len(set(_ids(walked))) == 5
    assert {c["reason"] for c in walked[3:]} == {"1/1", "1/3"} and {c["origin"] for c in walked} == {"automatic"}


async def test_notices_by_state_and_time(gw: Any) -> None:
    client, gateway = gw
    rows = []
    for n, (state, minute) in enumerate((("pending", 1), ("delivered", 2), ("failed", 3), ("failed", 3),
                                         ("delivered", 4))):
        at = T0 + dt.timedelta(minutes=minute)
        rows.append(dict(dedup_key=f"k{n}", event_id=n, kind="low_balance_1", account_id="A-1", contact="Li Lei",
                         role="customer", channel="sms", recipient="+8613800000000", language="zh", subject="s",
                         text=f"notice {n}", final=False, state=state, attempts=1, issued_at=at, created_at=at,
                         updated_at=at, delivered_at=at if state == "delivered" else None))
    await _execute(gateway, sa.insert(t.notices).values(rows))

    async def texts(**params: Any) -> list[str]:
        return [r["text"] for r in (await _get(client, "/v1/notices", **params))["data"]]

    assert await texts() == [f"notice {n}" for n in (4, 3, 2, 1, 0)]
    assert await texts(state="failed") == ["notice 3", "notice 2"]
    assert await texts(state="delivered", since="2026-11-23T00:03:00Z") == ["notice 4"]
    assert await texts(since="2026-11-23T00:02:00Z", until="2026-11-23T00:04:00Z") == [
        "notice 3", "notice 2", "notice 1"]
    walked = await _walk(client, "/v1/notices", {"before_id": "next_before_id"}, limit=2)
    assert [r["text"] for r in walked] == [f"notice {n}" for n in (4, 3, 2, 1, 0)]


@pytest.mark.parametrize("url", ["/v1/accounts", "/v1/meters", "/v1/commands", "/v1/notices"])
async def test_every_role_reads_the_lists_and_a_key_is_needed(gw: Any, url: str) -> None:
    client, _ = gw
    for role in ("viewer", "billing", "operator", "provisioning", "admin"):
        assert (await client.get(url, headers=auth(role))).status_code == 200, role
    assert (await client.get(url)).status_code == 401


@pytest.mark.parametrize("query", [
    "/v1/accounts?state=off", "/v1/accounts?balance_min=1.234", "/v1/accounts?balance_max=01.00",
    "/v1/accounts?balance_min=-", "/v1/accounts?protected=maybe", "/v1/accounts?limit=0",
    "/v1/accounts?limit=1001", "/v1/accounts?status=deleted", "/v1/accounts?after=", "/v1/meters?health=sick",
    "/v1/meters?relay=ajar", "/v1/meters?status=lost", "/v1/commands?origin=someone",
    "/v1/commands?since=2026-11-23", "/v1/commands?before_id=", "/v1/notices?until=yesterday"])
async def test_a_filter_outside_its_schema_is_refused(gw: Any, query: str) -> None:
    client, _ = gw
    answer = await client.get(query, headers=VIEWER)
    assert answer.status_code == 422 and answer.headers["content-type"] == "application/problem+json", answer.text
