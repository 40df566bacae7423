"""GET /v1/events without ``Accept: text/event-stream``: a JSON page of past events, on SQLite and PostgreSQL —
in commit order from the oldest kept, pages that walk every event once, the topic filter, and the gap when the
resume point was pruned (the stream itself runs through a real server: tests/e2e/test_sse_events.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from gateway.adapters import tables as t
from tests.integration.api_support import api_client, auth, on_database, site


@pytest.fixture(params=["sqlite", "postgresql"])
async def either(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    async with api_client(on_database(site(tmp_path), request), tmp_path) as pair:
        yield pair


async def page(client: httpx.AsyncClient, **params: Any) -> dict[str, Any]:
    answer = await client.get("/v1/events", params=params, headers=auth("viewer"))
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


async def test_pages_filter_and_gap(either: tuple[httpx.AsyncClient, Any]) -> None:
    client, gw = either
    for n, account in enumerate(("A-1", "A-3", "A-1", "A-3", "A-1"), start=1):
        answer = await client.post("/v1/payments", headers=auth("billing"), json={
            "source": "billing", "payment_id": f"P-{n}", "account_id": account, "amount": "1.00"})
        assert answer.status_code == 201, answer.text
    everything = await page(client, limit=1000)
    ids = [e["id"] for e in everything["data"]]
    assert everything["gap"] is None and ids == sorted(ids) and everything["next_after"] == ids[-1]
    paid = [e["payload"]["payment_id"] for e in everything["data"] if e["type"] == "PaymentReceived"]
    assert paid == ["P-1", "P-2", "P-3", "P-4", "P-5"]
    assert all(e["type"] == e["payload"]["type"] and e["at"].endswith("Z") for e in everything["data"])

    walked: list[int] = []
    after = 0
    while True:  # two at a time, each once
        got = await page(client, after=after, limit=2)
        walked += [e["id"] for e in got["data"]]
        if not got["data"]:
            break
        after = got["next_after"]
    assert walked == ids

    a3 = await page(client, topic="accounts/A-3/")
    assert {e["topic"] for e in a3["data"]} <= {"accounts/A-3/balance", "accounts/A-3/events"}
    assert [e["payload"]["payment_id"] for e in a3["data"] if e["type"] == "PaymentReceived"] == ["P-2", "P-4"]

    async with gw.engine.begin() as conn:  # pruned, as retention does
        await conn.execute(sa.delete(t.outbox).where(t.outbox.c.id <= ids[2]))
    pruned = await page(client, after=ids[0], limit=1)
    assert pruned["gap"] == {"after": ids[0], "oldest": ids[3], "newest": ids[-1]}
    assert [e["id"] for e in pruned["data"]] == [ids[3]]
    assert (await page(client, after=ids[2]))["gap"] is None  # the next one is kept: no gap


async def test_a_bad_resume_point_or_topic_is_refused(either: tuple[httpx.AsyncClient, Any]) -> None:
    client, _ = either
    for headers, params in (({"Last-Event-ID": "x"}, {}), ({"Last-Event-ID": "-1"}, {}), ({}, {"after": -1}),
                            ({}, {"topic": ""}), ({}, {"topic": "a\nb"}), ({}, {"limit": 0})):
        answer = await client.get("/v1/events", params=params, headers={**auth("viewer"), **headers})
        assert answer.status_code == 422, (headers, params)
        assert answer.headers["content-type"] == "application/problem+json"
