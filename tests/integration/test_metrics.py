"""GET /metrics of a gateway on a real SQLite file (and PostgreSQL for the money), parsed with prometheus_client's
own parser: figures that move with a payment (and its outcomes), a reversal, the MQTT backlog, a queued command, a
finished command, alarms and notices; any key may scrape, none may not."""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from gateway.adapters import tables as t
from gateway.domain.messages import CommandFinished
from gateway.domain.relay import Action, Command, State
from tests.integration.api_support import api_client, auth, on_database, site

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
PAY = {"source": "billing", "payment_id": "P-1", "account_id": "A-1", "amount": "5.00"}


async def scrape(client: httpx.AsyncClient, role: str = "viewer") -> Samples:
    answer = await client.get("/metrics", headers=auth(role))
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(answer.text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_any_key_may_scrape_none_may_not(tmp_path: Path) -> None:
    async with api_client(site(tmp_path), tmp_path) as (client, _):
        refused = await client.get("/metrics")
        assert refused.status_code == 401 and refused.headers["content-type"] == "application/problem+json"
        assert (await client.get("/metrics", headers={"Authorization": "Bearer nope"})).status_code == 401
        for role in ("viewer", "billing", "operator", "provisioning", "admin"):
            assert value(await scrape(client, role), "gateway_accounts", status="open", supply="connected") == 3


@pytest.fixture(params=["sqlite", "postgresql"])
async def either(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    async with api_client(on_database(site(tmp_path), request), tmp_path) as pair:
        yield pair


async def test_payments_balances_and_the_ledger_move(either: tuple[httpx.AsyncClient, Any]) -> None:
    client, gw = either
    before = await scrape(client)
    assert value(before, "gateway_balance_fen", status="open", supply="connected") == 1000 - 500 + 100
    assert value(before, "gateway_balance_total_fen") == 600 and value(before, "gateway_accounts_total_count") == 3
    assert value(before, "gateway_ledger_entries_total", kind="payment") == 0  # counted from the start
    billing = auth("billing")
    assert (await client.post("/v1/payments", json=PAY, headers=billing)).status_code == 201
    paid = await scrape(client)
    assert value(paid, "gateway_balance_total_fen") == 1100  # at every scrape
    assert value(paid, "gateway_balance_fen", status="open", supply="connected") == 600  # recounted every 30 s
    gw.metrics.fleet_every_s = 0
    assert value(await scrape(client), "gateway_balance_fen", status="open", supply="connected") == 1100
    assert (await client.post("/v1/payments", json=PAY, headers=billing)).status_code == 200
    assert (await client.post("/v1/payments", json={**PAY, "amount": "6.00"}, headers=billing)).status_code == 409
    assert (await client.post("/v1/payments", json={**PAY, "payment_id": "P-2", "account_id": "A-9"},
                              headers=billing)).status_code == 404
    assert (await client.post("/v1/payments/billing/P-1/reversal", json={"reason": "bounced"},
                              headers=billing)).status_code == 201
    after = await scrape(client)
    for operation, outcome, n in (("payment", "recorded", 1), ("payment", "duplicate", 1),
                                  ("payment", "conflict", 1), ("payment", "refused", 1),
                                  ("reversal", "recorded", 1), ("reversal", "duplicate", 0)):
        assert value(after, "gateway_payments_total", operation=operation, outcome=outcome) == n, (operation,
                                                                                                    outcome)
    assert value(after, "gateway_ledger_entries_total", kind="payment") == 1
    assert value(after, "gateway_ledger_entries_total", kind="reversal") == 1
    assert value(after, "gateway_ledger_amount_fen_total", kind="payment") == 500
    assert value(after, "gateway_ledger_amount_fen_total", kind="reversal") == 500
    assert value(after, "gateway_balance_fen", status="open", supply="connected") == 600  # paid and reversed
    assert value(after, "gateway_balance_total_fen") == 600
    again = await scrape(client)  # counted once, not again at the next scrape
    assert value(again, "gateway_ledger_entries_total", kind="payment") == 1
    assert value(again, "gateway_scrape_duration_seconds") > 0

    gw.metrics.publishing = True  # as with MQTT on: the events after the newest published one wait
    events = [row.id for row in await _outbox(gw)]
    assert len(events) >= 2 and value(await scrape(client), "gateway_outbox_unpublished") == len(events)
    async with gw.engine.begin() as conn:
        await conn.execute(sa.update(t.outbox).where(t.outbox.c.id <= events[1])
                           .values(published_at=dt.datetime.now(dt.UTC)))
    assert value(await scrape(client), "gateway_outbox_unpublished") == len(events) - 2


async def _outbox(gw: Any) -> list[Any]:
    async with gw.engine.connect() as conn:
        return list(await conn.execute(sa.select(t.outbox.c.id).order_by(t.outbox.c.id)))


async def test_commands_alarms_and_notices(tmp_path: Path) -> None:
    async with api_client(site(tmp_path), tmp_path) as (client, gw):
        queued = await client.post("/v1/meters/M-1/disconnect", json={"reason": "unsafe wiring"},
                                   headers=auth("operator"))
        assert queued.status_code == 202, queued.text
        samples = await scrape(client)  # (the first scrape counts the commands)
        assert value(samples, "gateway_commands_active", state="queued", action="open") == 1
        assert value(samples, "gateway_commands_active", state="queued", action="close") == 0
        assert value(samples, "gateway_commands", state="queued", action="open") == 1

        now = dt.datetime.now(dt.UTC)
        command = Command("c-1", "M-1", Action.OPEN, "operator", State.CONFIRMED, now - dt.timedelta(seconds=3),
                          now + dt.timedelta(minutes=5), now)
        gw.messages.publish(CommandFinished(command, now))  # as the relay runner announces it
        samples = await scrape(client)
        assert value(samples, "gateway_command_latency_seconds_count", action="open", state="confirmed") == 1
        assert value(samples, "gateway_command_latency_seconds_sum", action="open", state="confirmed") == 3
        assert value(samples, "gateway_command_latency_seconds_bucket", action="open", state="confirmed", le="2.0") == 0
        assert value(samples, "gateway_command_latency_seconds_bucket", action="open", state="confirmed", le="5.0") == 1

        at = now.isoformat()
        with sqlite3.connect(tmp_path / "gw.db") as db:
            for kind, subject, severity, state in (("meter_offline", "M-1", "major", "open"),
                                                   ("meter_offline", "M-2", "major", "open"),
                                                   ("command_failed", "c-9", "critical", "acknowledged"),
                                                   ("tamper", "M-3", "critical", "resolved")):
                db.execute("INSERT INTO alarms (kind, subject, severity, state, raised_at, last_seen_at, times, "
                           "updated_at) VALUES (?, ?, ?, ?, ?, ?, 1, ?)", (kind, subject, severity, state, at, at, at))
            for n, state in enumerate(("pending", "pending", "failed", "delivered")):
                db.execute("INSERT INTO notices (dedup_key, event_id, kind, account_id, contact, role, channel, "
                           "recipient, language, subject, text, final, state, attempts, issued_at, created_at, "
                           "updated_at) VALUES (?, 1, 'low_balance_1', 'A-1', 'c', 'customer', 'sms', 'r', 'en', "
                           "'s', 't', 0, ?, 0, ?, ?, ?)", (f"k-{n}", state, at, at, at))
        samples = await scrape(client)
        assert value(samples, "gateway_alarms", kind="meter_offline", severity="major", state="open") == 2
        assert value(samples, "gateway_alarms", kind="command_failed", severity="critical", state="acknowledged") == 1
        assert value(samples, "gateway_alarms", kind="tamper", severity="critical", state="resolved") == 0
        assert value(samples, "gateway_notices", state="pending") == 2
        assert value(samples, "gateway_notices", state="failed") == 1
        assert ("gateway_outbox_unpublished", frozenset()) not in samples  # no MQTT: no backlog to speak of
