"""The hot reads (gateway.api.hot_paths) answer exactly as the documented routes do, byte for byte, and leave
everything but a plain authorised read of a known account or meter to those routes.

Two apps over the same gateway: one with the hot reads (the gateway's), one without (every request through
FastAPI's routes). The same request goes to both; status, headers and body must be equal, and the hot app's
counter says which path answered.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from gateway.adapters import tables as t
from gateway.api.hot_paths import HotPaths
from gateway.bootstrap import Gateway
from gateway.settings import hash_key
from tests.integration.api_support import KEYS, auth, on_database, site

pytestmark = pytest.mark.asyncio


@pytest.fixture(params=["sqlite", "sqlite-direct", "postgresql"])
async def apps(request: Any, tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient, Any]]:
    """Clients of the hot app and of the routes-only app of one gateway, and the gateway (SQLite read the
    portable way, SQLite with its direct reads, PostgreSQL)."""
    storage = SimpleNamespace(param=request.param.removesuffix("-direct"), getfixturevalue=request.getfixturevalue)
    settings = on_database(site(tmp_path, failed_auth_limit=5), storage)
    database = settings.database.model_copy(update={"sqlite_direct_reads": request.param == "sqlite-direct"})
    async with Gateway(settings.model_copy(update={"database": database}), base_dir=tmp_path,
                       run_buses=False) as gw:
        hot_app, plain_app = gw.app(), gw.app(hot_paths=False)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=hot_app), base_url="http://gw") as hot, \
                httpx.AsyncClient(transport=httpx.ASGITransport(app=plain_app), base_url="http://gw") as plain:
            await _vary(hot)
            yield hot, plain, gw


async def _vary(client: httpx.AsyncClient) -> None:
    """Accounts in several states: a payment, a hold, a queued disconnect, a reading of a meter."""
    paid = await client.post("/v1/payments", headers=auth("billing"), json={
        "source": "billing", "payment_id": "P-1", "account_id": "A-3", "amount": "12.34"})
    assert paid.status_code == 201, paid.text
    held = await client.put("/v1/accounts/A-1/hold", headers=auth("admin"),
                            json={"until": "2030-01-01T00:00:00Z", "reason": "a dispute"})
    assert held.status_code in (200, 201), held.text
    cut = await client.post("/v1/meters/M-3/disconnect", headers=auth("operator"), json={"reason": "test"})
    assert cut.status_code == 202, cut.text


def _hot(client: httpx.AsyncClient) -> HotPaths:
    """The hot app's HotPaths middleware (built with its stack at the first request)."""
    layer: Any = client._transport.app.middleware_stack  # type: ignore[attr-defined]
    while not isinstance(layer, HotPaths):
        layer = layer.app
    return layer


async def _same(hot: httpx.AsyncClient, plain: httpx.AsyncClient, path: str, **kw: Any) -> httpx.Response:
    a, b = await hot.request(kw.pop("method", "GET"), path, **kw), await plain.request("GET", path, **kw)
    assert (a.status_code, a.headers.raw, a.content) == (b.status_code, b.headers.raw, b.content), path
    return a


async def test_every_account_and_meter_for_every_role_answers_as_the_route(apps: Any) -> None:
    hot, plain, gw = apps
    answered = _hot(hot).answered
    reads = [f"/v1/accounts/{a}" for a in gw.service.catalog.accounts] + \
            [f"/v1/meters/{m}" for m in gw.service.catalog.meters]
    assert len(reads) == 6
    roles = ["viewer", "billing", "operator", "admin", "provisioning", "collector"]
    for path in reads:
        for role in roles:
            response = await _same(hot, plain, path, headers=auth(role))
            assert response.status_code == 200 and response.headers["cache-control"] == "no-store"
    assert _hot(hot).answered - answered == len(reads) * len(roles)  # all of them answered the hot way
    body = (await hot.get("/v1/accounts/A-1", headers=auth("viewer"))).json()
    assert (body["hold_until"], body["balance"]) == ("2030-01-01T00:00:00Z", "10.00")
    assert (await hot.get("/v1/accounts/A-3", headers=auth("viewer"))).json()["balance"] == "13.34"


@pytest.mark.parametrize(("path", "headers"), [
    ("/v1/accounts/A-9", {"Authorization": f"Bearer {KEYS['viewer']}"}),  # unknown: 404
    ("/v1/meters/M-9", {"Authorization": f"Bearer {KEYS['viewer']}"}),
    ("/v1/accounts/A-1", {}),  # no key: 401
    ("/v1/accounts/A-1", {"Authorization": "Bearer nope"}),
    ("/v1/accounts/A-1", {"Authorization": f"Basic {KEYS['viewer']}"}),
    ("/v1/accounts/A-1", {"Authorization": "Bearer "}),
    ("/v1/accounts/A-1/", {"Authorization": f"Bearer {KEYS['viewer']}"}),  # no such route
    ("/v1/accounts/A-1?x=1", {"Authorization": f"Bearer {KEYS['viewer']}"}),  # a query: the route's (200)
    ("/v1/accounts/A%2F1", {"Authorization": f"Bearer {KEYS['viewer']}"}),
    ("/v1/accounts/", {"Authorization": f"Bearer {KEYS['viewer']}"}),
    ("/v1/meters/M-1/readings", {"Authorization": f"Bearer {KEYS['viewer']}"}),
])
async def test_what_the_hot_path_leaves_to_the_route_is_answered_by_it(apps: Any, path: str,
                                                                     headers: dict[str, str]) -> None:
    hot, plain, _ = apps
    answered = _hot(hot).answered
    await _same(hot, plain, path, headers=headers)
    assert _hot(hot).answered == answered


async def test_the_key_is_read_as_the_route_reads_it(apps: Any) -> None:
    hot, plain, _ = apps
    answered = _hot(hot).answered
    for value in (f"bearer {KEYS['viewer']}", f"BEARER   {KEYS['viewer']}  ", f"Bearer {KEYS['viewer']}\xa0"):
        response = await _same(hot, plain, "/v1/accounts/A-1", headers=[("Authorization", value.encode("latin-1"))])
        assert response.status_code == 200, value
    assert _hot(hot).answered == answered + 3
    # two Authorization headers: the first counts, on both paths
    response = await _same(hot, plain, "/v1/accounts/A-1",
                           headers=[("Authorization", "Bearer nope"), ("Authorization", f"Bearer {KEYS['viewer']}")])
    assert response.status_code == 401


async def test_a_body_goes_to_the_route(apps: Any) -> None:
    hot, plain, _ = apps
    answered = _hot(hot).answered
    await _same(hot, plain, "/v1/accounts/A-1", content=b"{}", headers=auth("viewer"))
    await _same(hot, plain, "/v1/accounts/A-1", content=b"x" * 2_000_000, headers=auth("viewer"))  # 413
    assert _hot(hot).answered == answered


async def test_failed_keys_count_once_and_a_limited_client_is_refused(apps: Any) -> None:
    hot, _, gw = apps
    limiter = hot._transport.app.state.auth_limiter  # type: ignore[attr-defined]
    for n in range(5):  # the limit (5): each failure counted once, by the route
        assert (await hot.get("/v1/accounts/A-1", headers={"Authorization": "Bearer nope"})).status_code == 401
        assert limiter._clients["127.0.0.1"][1] == n + 1
    refused = await hot.get("/v1/accounts/A-1", headers=auth("viewer"))  # a good key, a limited client
    assert refused.status_code == 429 and "retry-after" in refused.headers


async def test_a_stored_key_once_the_route_has_read_it(apps: Any) -> None:
    _, _, gw = apps
    async with gw.service.uow() as uow:
        await uow.execute(sa.insert(t.api_keys).values(name="erp", sha256=hash_key("k-erp"), role="viewer",
                                                       created_at=dt.datetime.now(dt.UTC), sources=None))
        await uow.commit()
    # new apps: key rings that have not read the stored keys yet
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=gw.app()), base_url="http://gw") as hot, \
            httpx.AsyncClient(transport=httpx.ASGITransport(app=gw.app(hot_paths=False)),
                              base_url="http://gw") as plain:
        keys = hot._transport.app.state.keys  # type: ignore[attr-defined]
        assert keys.cached(hash_key("k-erp")) is None
        for _ in range(3):
            assert (await _same(hot, plain, "/v1/meters/M-1", headers={"Authorization": "Bearer k-erp"})
                    ).status_code == 200
        assert _hot(hot).answered == 2  # the first read the stored keys, through the route
        assert keys.cached(hash_key("k-erp")) is not None and keys.cached(hash_key("nope")) is None
        assert keys.loads == 1


async def test_an_account_state_that_cant_be_read_is_the_routes_problem(apps: Any) -> None:
    hot, plain, gw = apps
    accounts = t.accounts.c
    async with gw.service.uow() as uow:  # what an older version let in: a time beyond year 9999 in UTC
        state = (await uow.execute(sa.select(accounts.state).where(accounts.id == "A-1"))).scalar_one()
        state = {**state, "hold_until": "9999-12-31T23:59:59-14:00"}
        await uow.execute(sa.update(t.accounts).where(accounts.id == "A-1").values(state=state))
        await uow.commit()
    answered = _hot(hot).answered
    response = await _same(hot, plain, "/v1/accounts/A-1", headers=auth("viewer"))
    assert response.status_code == 409 and response.json()["type"].endswith(":account-state-unreadable")
    assert _hot(hot).answered == answered
