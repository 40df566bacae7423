"""GET /v1/events through a running gateway process (``meter-gateway run``) on a real port: live events within
half a second of their commit, a resume with Last-Event-ID that gives every event once and in order, the topic
filter, the gap when the resume point is no longer kept, and streams that end cleanly when the gateway stops."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gateway.settings import hash_key
from tests.support import free_port, stop_process, wait_for_port

ROOT = Path(__file__).resolve().parents[2]
VIEWER, BILLING = "sse-viewer-key", "sse-billing-key"
STREAM = {"Authorization": f"Bearer {VIEWER}", "Accept": "text/event-stream"}

pytestmark = pytest.mark.timeout(120)


@dataclass
class Gateway:
    base: str
    db: Path
    process: subprocess.Popen[bytes]


def _start(tmp_path: Path) -> Gateway:
    port = free_port()
    config = {
        "database": {"url": "sqlite:///gateway.db"},
        "api": {"host": "127.0.0.1", "port": port,
                "keys": [{"name": "viewer", "role": "viewer", "sha256": hash_key(VIEWER)},
                         {"name": "billing", "role": "billing", "sha256": hash_key(BILLING)}]},
        "policy": {"notice_period": 0, "friendly_windows": []},
        "tariffs": {"flat": {"kind": "flat", "price": "0.5600"}},
        "accounts": [{"id": f"A-{i}", "tariff": "flat", "opening_balance": "100.00"} for i in (1, 2, 3)],
    }
    (tmp_path / "gateway.yaml").write_text(yaml.safe_dump(config))
    process = subprocess.Popen([sys.executable, "-m", "gateway.cli", "run", "--config", str(tmp_path / "gateway.yaml"),
                                "--log-level", "WARNING"], cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=(tmp_path / "gateway.log").open("wb"))
    wait_for_port(port, timeout=60)
    return Gateway(f"http://127.0.0.1:{port}", tmp_path / "gateway.db", process)


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    gw = _start(tmp_path)
    try:
        yield gw
    finally:
        stop_process(gw.process)


@dataclass
class Sse:
    event: str
    data: dict[str, Any]
    id: int | None


async def sse_items(response: httpx.Response) -> AsyncIterator[Sse | str]:
    """The stream's events (and its comment lines, as str), as an EventSource parses them."""
    fields: dict[str, str] = {}
    async for line in response.aiter_lines():
        if line.startswith(":"):
            yield line
        elif line == "":
            if "data" in fields:
                yield Sse(fields.get("event", "message"), json.loads(fields["data"]),
                          int(fields["id"]) if "id" in fields else None)
            fields = {}
        else:
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")


async def next_event(items: AsyncIterator[Sse | str], timeout: float = 5.0) -> Sse:
    async with asyncio.timeout(timeout):
        async for item in items:
            if isinstance(item, Sse):
                return item
    raise AssertionError("the stream ended")


async def pay(client: httpx.AsyncClient, gw: Gateway, account: str, payment_id: str) -> None:
    answer = await client.post(f"{gw.base}/v1/payments", headers={"Authorization": f"Bearer {BILLING}"},
                               json={"source": "billing", "payment_id": payment_id, "account_id": account,
                                     "amount": "1.00"})
    assert answer.status_code == 201, answer.text


async def page(client: httpx.AsyncClient, gw: Gateway, **params: Any) -> dict[str, Any]:
    answer = await client.get(f"{gw.base}/v1/events", params=params, headers={"Authorization": f"Bearer {VIEWER}"})
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/json", answer.text
    return answer.json()  # type: ignore[no-any-return]


async def test_live_within_half_a_second_and_a_resume_gives_each_event_once_in_order(gateway: Gateway) -> None:
    gw = gateway
    async with httpx.AsyncClient(timeout=30) as client:
        seen: list[Sse] = []
        async with client.stream("GET", f"{gw.base}/v1/events", headers=STREAM) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            items = sse_items(response)
            for n in range(1, 4):
                await pay(client, gw, "A-1", f"P-{n}")
                committed = time.monotonic()
                while True:  # the payment's own event (a CreditLow may follow it)
                    event = await next_event(items)
                    seen.append(event)
                    if event.event == "PaymentReceived" and event.data["payload"]["payment_id"] == f"P-{n}":
                        break
                assert time.monotonic() - committed < 0.5, "a live event took more than 0.5 s"
                assert event.data["topic"] == "accounts/A-1/balance" and event.data["at"].endswith("Z")
        last = seen[-1].id
        assert last is not None and [e.id for e in seen] == sorted({e.id for e in seen})  # in order, once

        for n in range(4, 7):  # while nobody listens
            await pay(client, gw, "A-2", f"P-{n}")
        missed = (await page(client, gw, after=last))["data"]
        assert {e["payload"]["payment_id"] for e in missed if e["type"] == "PaymentReceived"} == {"P-4", "P-5", "P-6"}

        resumed: list[Sse] = []
        async with client.stream("GET", f"{gw.base}/v1/events", headers={**STREAM, "Last-Event-ID": str(last)},
                                 params={"after": 1}) as response:  # the header wins over ?after
            items = sse_items(response)
            while len(resumed) < len(missed):
                resumed.append(await next_event(items))
            await pay(client, gw, "A-3", "P-7")  # then live again
            live = await next_event(items)
        assert [(e.id, e.event, e.data["topic"], e.data["payload"]) for e in resumed] == [
            (e["id"], e["type"], e["topic"], e["payload"]) for e in missed]
        assert live.event == "PaymentReceived" and live.data["payload"]["payment_id"] == "P-7"
        assert live.id is not None and live.id > resumed[-1].id  # type: ignore[operator]


async def test_topic_filter_and_a_gap(gateway: Gateway) -> None:
    gw = gateway
    async with httpx.AsyncClient(timeout=30) as client:
        for n, account in enumerate(("A-1", "A-3", "A-1", "A-3"), start=1):
            await pay(client, gw, account, f"P-{n}")
        everything = (await page(client, gw))["data"]
        assert len(everything) >= 4
        async with client.stream("GET", f"{gw.base}/v1/events", headers=STREAM,
                                 params={"after": 0, "topic": "accounts/A-3/"}) as response:
            items = sse_items(response)
            past = [await next_event(items), await next_event(items)]
            await pay(client, gw, "A-1", "P-5")
            await pay(client, gw, "A-3", "P-6")
            live = await next_event(items)
        assert [e.data["payload"]["payment_id"] for e in past] == ["P-2", "P-4"]
        assert all(e.data["topic"].startswith("accounts/A-3/") for e in [*past, live])
        assert live.data["payload"]["payment_id"] == "P-6"  # A-1's P-5 was left out

        cut = everything[2]["id"]  # the outbox pruned up to here (as retention does)
        with sqlite3.connect(gw.db) as db:
            db.execute("DELETE FROM outbox WHERE id <= ?", (cut,))
        async with client.stream("GET", f"{gw.base}/v1/events", headers={**STREAM, "Last-Event-ID": "1"}) as response:
            items = sse_items(response)
            gap, first = await next_event(items), await next_event(items)
        assert gap.event == "gap" and gap.id is None and gap.data["after"] == 1 and gap.data["oldest"] == cut + 1
        assert first.id == cut + 1
        answer = await page(client, gw, after=1, limit=1)
        assert answer["gap"]["oldest"] == cut + 1 and [e["id"] for e in answer["data"]] == [cut + 1]
        assert answer["next_after"] == cut + 1
        ahead = await page(client, gw, after=10**9)  # a resume point from another database
        assert ahead["gap"] is not None and ahead["data"][0]["id"] == cut + 1


async def test_a_stream_needs_a_key_and_ends_when_the_gateway_stops(gateway: Gateway) -> None:
    gw = gateway
    async with httpx.AsyncClient(timeout=30) as client:
        refused = await client.get(f"{gw.base}/v1/events", headers={"Accept": "text/event-stream"})
        assert refused.status_code == 401
        assert refused.headers["content-type"] == "application/problem+json"
        async with client.stream("GET", f"{gw.base}/v1/events", headers=STREAM) as response:
            assert response.status_code == 200  # the stream is open
            items = sse_items(response)
            gw.process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(10):
                rest = [item async for item in items]  # ends without an error
        assert not any(isinstance(item, Sse) for item in rest)
    assert gw.process.wait(timeout=20) == 0
