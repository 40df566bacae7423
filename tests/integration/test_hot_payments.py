"""Payments answered by the hot path (gateway.api.hot_paths) are answered, recorded and counted exactly as the
documented route does; every payment it does not take plainly is the route's, with its body handed on.

Two gateways on two databases with the same site and the same fixed clock: one served with the hot paths (as
the gateway is), one with every request through FastAPI's routes. The same requests, in the same order, go to
each; every answer must be equal byte for byte, and at the end so must every table and the payment counters.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.api.hot_paths import HotPaths
from gateway.bootstrap import Gateway
from tests.integration.api_support import KEYS, auth, site, snapshot
from tests.support import SetClock

pytestmark = pytest.mark.asyncio

T0 = dt.datetime(2026, 11, 23, 8, 0, tzinfo=dt.UTC)
JSON = {"Content-Type": "application/json"}


def _payment(payment_id: str, **fields: Any) -> dict[str, Any]:
    return {"source": "billing", "payment_id": payment_id, "account_id": "A-1", "amount": "5.00", **fields}


async def _served(tmp: Path, *, hot: bool) -> AsyncIterator[tuple[httpx.AsyncClient, Gateway]]:
    tmp.mkdir()
    async with Gateway(site(tmp), base_dir=tmp, run_buses=False, clock=SetClock(T0)) as gw:
        transport = httpx.ASGITransport(app=gw.app(hot_paths=hot))
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            assert (await client.get("/healthz")).status_code == 200  # (the app's middleware stack is built)
            yield client, gw


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Any]:
    hot_gen, plain_gen = _served(tmp_path / "hot", hot=True), _served(tmp_path / "plain", hot=False)
    hot, plain = await anext(hot_gen), await anext(plain_gen)
    yield hot, plain, tmp_path
    for gen in (hot_gen, plain_gen):
        await gen.aclose()


def _answered(client: httpx.AsyncClient) -> int:
    layer: Any = client._transport.app.middleware_stack  # type: ignore[attr-defined]
    while not isinstance(layer, HotPaths):
        layer = layer.app
    return layer.answered


async def _both(pair: Any, content: Any, *, headers: dict[str, str] | None = None, path: str = "/v1/payments",
                taken: bool) -> httpx.Response:
    """The same request to both gateways; equal answers; ``taken``: whether the hot path answered it."""
    (hot, _), (plain, _), _ = pair
    before = _answered(hot)
    kw = {"json": content} if isinstance(content, dict) else {"content": content}
    a = await hot.post(path, headers=headers if headers is not None else auth("billing"), **kw)
    b = await plain.post(path, headers=headers if headers is not None else auth("billing"), **kw)
    assert (a.status_code, a.headers.raw, a.content) == (b.status_code, b.headers.raw, b.content), a.text
    assert _answered(hot) - before == (1 if taken else 0), a.text
    return a


async def test_payments_and_refusals_answer_record_and_count_as_the_route(pair: Any) -> None:
    first = await _both(pair, _payment("P-1", channel="alipay", paid_at="2026-11-23T07:59:00+08:00"), taken=True)
    assert first.status_code == 201 and first.json()["balance"] == "15.00"
    assert (await _both(pair, _payment("P-1", channel="alipay", paid_at="2026-11-23T07:59:00+08:00"),
                        taken=True)).status_code == 200  # the same again: the first result
    assert (await _both(pair, _payment("P-1", amount="6.00"), taken=False)).status_code == 409
    assert (await _both(pair, _payment("P-2", account_id="A-9"), taken=False)).status_code == 404
    for amount in ("1.001", "-1.00", "0.00", "1000.01", 5):
        assert (await _both(pair, _payment("P-3", amount=amount), taken=False)).status_code == 422, amount
    assert (await _both(pair, _payment("P-3", extra=1), taken=False)).status_code == 422
    for body in (b'{"source": "billing", "source": "billing", "payment_id": "P-4", "account_id": "A-1", '
                 b'"amount": "1.00"}', b'{"source": NaN}', b"not json", b'["a list"]', b'"\\ud800"', b"\xff"):
        assert (await _both(pair, body, headers={**auth("billing"), **JSON}, taken=False)).status_code == 422
    # not plainly JSON, or not a plain body: the route's
    body = b'{"source": "billing", "payment_id": "P-5", "account_id": "A-2", "amount": "1.00"}'
    await _both(pair, body, headers={**auth("billing"), "Content-Type": "text/plain"}, taken=False)
    await _both(pair, body, headers=auth("billing"), taken=False)  # no content type
    await _both(pair, body + b" " * 5000, headers={**auth("billing"), **JSON}, taken=False)  # 201, the route's
    await _both(pair, _payment("P-6"), path="/v1/payments?x=1", taken=False)
    # keys and roles
    assert (await _both(pair, _payment("P-7"), headers={}, taken=False)).status_code == 401
    assert (await _both(pair, _payment("P-7"), headers={"Authorization": "Bearer nope"}, taken=False)
            ).status_code == 401
    assert (await _both(pair, _payment("P-7"), headers=auth("viewer"), taken=False)).status_code == 403
    assert (await _both(pair, _payment("P-7"), headers=auth("collector"), taken=False)).status_code == 403
    assert (await _both(pair, _payment("P-7", source="collector"), headers=auth("collector"), taken=True)
            ).status_code == 201
    assert (await _both(pair, _payment("P-8"), headers=auth("admin"), taken=True)).status_code == 201
    (hot, hot_gw), (plain, plain_gw), tmp = pair
    # what was recorded, audited and sent out, and what was counted
    assert snapshot(tmp / "hot" / "gw.db") == snapshot(tmp / "plain" / "gw.db")
    assert _counts(hot_gw) == _counts(plain_gw)
    assert _counts(hot_gw)[("payment", "recorded")] == 5


async def test_a_chunked_body_is_the_routes(pair: Any) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"source": "billing", "payment_id": "P-1", '
        yield b'"account_id": "A-1", "amount": "2.00"}'

    (hot, _), (plain, _), _ = pair
    a = await hot.post("/v1/payments", content=chunks(), headers={**auth("billing"), **JSON})
    b = await plain.post("/v1/payments", content=chunks(), headers={**auth("billing"), **JSON})
    assert (a.status_code, a.content) == (b.status_code, b.content) and a.status_code == 201
    assert _answered(hot) == 0


def _counts(gw: Gateway) -> dict[tuple[str, str], float]:
    assert gw.metrics is not None
    return {(s.labels["operation"], s.labels["outcome"]): s.value for m in gw.metrics.payments.collect()
            for s in m.samples if s.name.endswith("_total")}


async def test_a_body_the_site_takes_no_more_is_refused_by_the_route(tmp_path: Path) -> None:
    async with Gateway(site(tmp_path, max_body_bytes=1024), base_dir=tmp_path, run_buses=False) as gw:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=gw.app()), base_url="http://gw") as client:
            assert (await client.get("/healthz")).status_code == 200
            body = b'{"source": "billing", "payment_id": "P-1", "account_id": "A-1", "amount": "1.00"}'
            padded = await client.post("/v1/payments", content=body + b" " * 1500,
                                       headers={**auth("billing"), **JSON})
            assert padded.status_code == 413 and _answered(client) == 0  # (the hot path takes up to 4 KB)
            plain = await client.post("/v1/payments", content=body, headers={**auth("billing"), **JSON})
            assert plain.status_code == 201 and _answered(client) == 1
