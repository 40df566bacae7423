"""Events out over MQTT, on a real mosquitto: the outbox's events published after their commit, in order, with
their event id; the gateway's status retained (online, then offline when it stops); a broker outage holds the
events in the outbox and they all arrive afterwards, in order, flagged as replayed."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import sqlalchemy as sa

from gateway.adapters import tables as t
from gateway.bootstrap import Gateway
from gateway.settings import Settings
from tests.mosquitto import Broker, Listener, mosquitto_broker
from tests.support import async_wait_until

pytestmark = pytest.mark.tool("mosquitto")


def site(tmp_path: Path, port: int, url: str | None = None) -> Settings:
    return Settings.model_validate({
        "database": {"url": url or f"sqlite:///{tmp_path / 'gw.db'}"},
        "mqtt": {"host": "127.0.0.1", "port": port, "prefix": "gw-test"},
        "tariffs": {"flat": {"kind": "flat", "price": "1.0000"}},
        "accounts": [{"id": f"A-{i}", "tariff": "flat", "opening_balance": "10.00"} for i in (1, 2)],
        "meters": [],
    })


class Subscriber(Listener):
    """Everything published under the prefix, in arrival order."""

    def __init__(self, port: int) -> None:
        super().__init__(port, "gw-test/#")

    def payments(self) -> list[dict[str, Any]]:
        return [p for topic, p, _ in self.messages if isinstance(p, dict) and p.get("type") == "PaymentReceived"]


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Broker]:
    with mosquitto_broker(tmp_path) as running:
        yield running


async def test_committed_events_go_out_in_order_numbered_with_the_status_retained(broker: Broker, tmp_path: Path,
                                                                                  db_url: str) -> None:
    """On SQLite and PostgreSQL (the topics' numbers are kept with an upsert of each dialect)."""
    async with Gateway(site(tmp_path, broker.port, db_url), run_buses=False, base_dir=tmp_path) as gw, \
            Subscriber(broker.port) as sub:
        await async_wait_until(lambda: ("gw-test/gateway/status", "online", True) in sub.messages
                               or ("gw-test/gateway/status", "online", False) in sub.messages, timeout=10,
                               what="the gateway's status")
        for n in range(20):
            await gw.service.record_payment(source="billing", payment_id=f"P-{n}", account_id=f"A-{1 + n % 2}",
                                            amount_fen=100 + n)
        await async_wait_until(lambda: len(sub.payments()) == 20, timeout=10, what="20 payment events")
        events = sub.payments()
        assert [e["payment_id"] for e in events] == [f"P-{n}" for n in range(20)]  # commit order
        ids = [e["event_id"] for e in events]
        assert ids == sorted(ids) and len(set(ids)) == 20
        assert {topic for topic, p, _ in sub.messages if p in events} == {"gw-test/accounts/A-1/balance",
                                                                         "gw-test/accounts/A-2/balance"}
        assert not any(e.get("replayed") for e in events)
        async with gw.uow(readonly=True) as uow:  # marked as published
            pending = await uow.outbox.pending(0, 1000)
        assert not [e for e in pending if e.payload.get("type") == "PaymentReceived"]
        seqs = [e["seq"] for e in events if e["account_id"] == "A-1"]
        assert seqs == list(range(1, 11))  # numbered per topic (one account's balance), without gaps
    async with Subscriber(broker.port) as later:  # a new subscriber: the retained status (offline), balances
        await async_wait_until(lambda: ("gw-test/gateway/status", "offline", True) in later.messages, timeout=10,
                               what="the retained offline status")
        await async_wait_until(lambda: len(later.payments()) == 2, timeout=10, what="the retained balances")
        assert {(p["payment_id"], p["seq"]) for p in later.payments()} == {("P-18", 10), ("P-19", 10)}
    async with Gateway(site(tmp_path, broker.port, db_url), run_buses=False, base_dir=tmp_path) as gw, \
            Subscriber(broker.port) as sub:  # after a restart the numbers go on
        await gw.service.record_payment(source="billing", payment_id="P-20", account_id="A-1", amount_fen=1)
        await async_wait_until(lambda: any(p["payment_id"] == "P-20" for p in sub.payments()), timeout=10,
                               what="the event after the restart")
        assert [p["seq"] for p in sub.payments() if p["payment_id"] == "P-20"] == [11]


async def test_events_of_a_broker_outage_arrive_afterwards_in_order(broker: Broker, tmp_path: Path) -> None:
    async with Gateway(site(tmp_path, broker.port), run_buses=False, base_dir=tmp_path) as gw:
        async with Subscriber(broker.port) as sub:
            await gw.service.record_payment(source="billing", payment_id="P-0", account_id="A-1", amount_fen=100)
            await async_wait_until(lambda: len(sub.payments()) == 1, timeout=10, what="the first event")
        broker.stop()
        for n in range(1, 11):  # committed while the broker is down
            await gw.service.record_payment(source="billing", payment_id=f"P-{n}", account_id="A-1",
                                            amount_fen=100 + n)
        async with gw.uow(readonly=True) as uow:
            waiting = [e for e in await uow.outbox.pending(0, 1000) if e.payload.get("type") == "PaymentReceived"]
        assert len(waiting) == 10  # nothing dropped, nothing published
        broker.start()  # the same port
        async with Subscriber(broker.port) as sub:
            await async_wait_until(lambda: len(sub.payments()) == 10, timeout=30, what="the 10 held events")
            events = sub.payments()
        assert [e["payment_id"] for e in events] == [f"P-{n}" for n in range(1, 11)]
        assert all(e.get("replayed") is True for e in events)

        async def all_marked() -> bool:
            async with gw.uow(readonly=True) as uow:
                return (await uow.execute(sa.select(sa.func.count()).select_from(t.outbox)
                                          .where(t.outbox.c.published_at.is_(None)))).scalar_one() == 0

        await async_wait_until(all_marked, timeout=10, what="every event marked as published")


async def test_a_killed_gateway_is_reported_offline_by_its_last_will(broker: Broker, tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    import yaml

    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump({**site(tmp_path, broker.port).model_dump(mode="json", exclude_unset=True),
                                      "database": {"url": "sqlite:///gw.db"}}))
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "run", "--config", str(config)], cwd=root,
                            stdout=subprocess.DEVNULL, stderr=(tmp_path / "gw.log").open("ab"))
    try:
        async with Subscriber(broker.port) as sub:
            await async_wait_until(lambda: sub.messages and sub.messages[-1][:2] == ("gw-test/gateway/status",
                                                                                      "online"),
                                   timeout=30, what="the gateway online")
            proc.send_signal(signal.SIGKILL)
            await async_wait_until(lambda: sub.messages[-1][:2] == ("gw-test/gateway/status", "offline"),
                                   timeout=30, what="the Last Will")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
    async with Subscriber(broker.port) as later:  # and it stays: retained
        await async_wait_until(lambda: ("gw-test/gateway/status", "offline", True) in later.messages, timeout=10,
                               what="the retained offline status")


async def test_events_go_out_over_tls_with_a_password_and_wait_when_it_is_wrong(tmp_path: Path) -> None:
    import ssl

    with mosquitto_broker(tmp_path, secure=True) as secure:
        def settings(password: str) -> Settings:
            return Settings.model_validate({
                **site(tmp_path, secure.port).model_dump(mode="json", exclude_unset=True),
                "mqtt": {"host": "127.0.0.1", "port": secure.port, "prefix": "gw-test", "username": "gateway",
                         "password": password, "tls_ca": str(secure.ca)}})

        received: list[dict[str, Any]] = []
        ready = asyncio.Event()

        async def subscriber() -> None:
            context = ssl.create_default_context(cafile=str(secure.ca))
            async with aiomqtt.Client("127.0.0.1", secure.port, username="gateway", password="s3cret",
                                      tls_context=context) as client:
                await client.subscribe("gw-test/accounts/#", qos=1)
                ready.set()
                async for message in client.messages:
                    received.append(json.loads(bytes(message.payload)))  # type: ignore[arg-type]

        task = asyncio.create_task(subscriber())
        try:
            await asyncio.wait_for(ready.wait(), 10)
            async with Gateway(settings("wrong"), run_buses=False, base_dir=tmp_path) as gw:
                await gw.service.record_payment(source="billing", payment_id="P-1", account_id="A-1",
                                                amount_fen=100)
                async with gw.uow(readonly=True) as uow:  # refused by the broker: the event waits
                    assert [e.payload["payment_id"] for e in await uow.outbox.pending(0, 100)
                            if e.payload.get("type") == "PaymentReceived"] == ["P-1"]
            assert received == []
            async with Gateway(settings("s3cret"), run_buses=False, base_dir=tmp_path) as gw:
                await gw.service.record_payment(source="billing", payment_id="P-2", account_id="A-1",
                                                amount_fen=100)
                await async_wait_until(lambda: [e["payment_id"] for e in received] == ["P-1", "P-2"], timeout=15,
                                       what="both events over TLS")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def test_stored_readings_go_out_per_meter_in_order(broker: Broker, tmp_path: Path) -> None:
    import datetime as dt

    from drivers.base import Reading

    settings = Settings.model_validate({**site(tmp_path, broker.port).model_dump(mode="json", exclude_unset=True),
                                        "buses": [{"id": "b", "protocol": "modbus-tcp", "host": "127.0.0.1",
                                                   "port": 1}],
                                        "meters": [{"id": "M-1", "bus": "b", "unit_id": 1, "account": "A-1"}]})
    t0 = dt.datetime(2026, 12, 3, 8, tzinfo=dt.UTC)
    async with Gateway(settings, run_buses=False, base_dir=tmp_path) as gw, Subscriber(broker.port) as sub:
        for n in range(5):
            await gw.service.record_reading(Reading("M-1", t0 + dt.timedelta(minutes=n), 1_000 + 10 * n))

        def readings() -> list[dict[str, Any]]:
            return [p for topic, p, _ in sub.messages if topic == "gw-test/meters/M-1/reading"]

        await async_wait_until(lambda: len(readings()) == 5, timeout=10, what="5 readings")
        assert [(r["energy_wh"], r["seq"]) for r in readings()] == [(1_000 + 10 * n, n + 1) for n in range(5)]
        assert readings()[0]["at"] == "2026-12-03T08:00:00Z" and readings()[0]["type"] == "Reading"


async def test_a_full_outbox_keeps_the_oldest_and_reports_what_it_left_out(broker: Broker, tmp_path: Path) -> None:
    settings = Settings.model_validate({**site(tmp_path, broker.port).model_dump(mode="json", exclude_unset=True),
                                        "mqtt": {"host": "127.0.0.1", "port": broker.port, "prefix": "gw-test",
                                                 "max_waiting": 10}})
    async with Gateway(settings, run_buses=False, base_dir=tmp_path) as gw:
        async with Subscriber(broker.port) as sub:  # connected first
            await gw.service.record_payment(source="billing", payment_id="P-0", account_id="A-1", amount_fen=1)
            await async_wait_until(lambda: len(sub.payments()) == 1, timeout=10, what="the first event")
        broker.stop()
        async with gw.uow(readonly=True) as uow:
            before = (await uow.ledger.balances())["A-1"]
        n = 1
        while not gw.relay.full:  # until the relay finds the outbox full
            await gw.service.record_payment(source="billing", payment_id=f"P-{n}", account_id="A-1", amount_fen=1)
            n += 1
            assert n < 20_000, "the outbox never filled"
        for m in range(n, n + 5):  # left out: counted, not written
            await gw.service.record_payment(source="billing", payment_id=f"P-{m}", account_id="A-1", amount_fen=1)
        paid = n + 4  # P-1 .. P-(n+4)
        async with gw.uow(readonly=True) as uow:
            waiting = await uow.outbox.waiting()
            assert (await uow.ledger.balances())["A-1"] == before + paid  # every payment is committed
        left_out = gw.relay.left_out
        assert left_out >= 5 and waiting + left_out == paid  # each event kept or counted, none lost silently
        broker.start()
        async with Subscriber(broker.port) as sub:
            await async_wait_until(lambda: any(p.get("type") == "OutboxOverflow" for _, p, _ in sub.messages
                                               if isinstance(p, dict)), timeout=30, what="the overflow alarm")
            assert [p["payment_id"] for p in sub.payments()] == [f"P-{i}" for i in range(1, waiting + 1)]  # oldest
            [alarm] = [p for topic, p, _ in sub.messages if isinstance(p, dict) and p.get("type") == "OutboxOverflow"]
            assert alarm["left_out"] == left_out


async def test_two_instances_on_one_database_publish_each_event_once(broker: Broker, tmp_path: Path,
                                                                     db_url: str) -> None:
    """Instances sharing a database take turns by a lease: one publishes, the other stands by and takes over
    when the first stops (numbering on where it stopped)."""
    settings = site(tmp_path, broker.port, db_url)
    async with Subscriber(broker.port) as sub:
        async with Gateway(settings, run_buses=False, base_dir=tmp_path) as first:
            async with Gateway(settings, run_buses=False, base_dir=tmp_path) as second:
                await async_wait_until(lambda: first.relay._leading or second.relay._leading, timeout=10,
                                       what="one instance publishing")
                assert not (first.relay._leading and second.relay._leading)
                for n in range(10):
                    gw = (first, second)[n % 2]  # payments through both instances
                    await gw.service.record_payment(source="billing", payment_id=f"P-{n}", account_id="A-1",
                                                    amount_fen=100)
                await async_wait_until(lambda: len(sub.payments()) >= 10, timeout=15, what="ten payments")
                leader, standby = (first, second) if first.relay._leading else (second, first)
                assert standby.relay.published == 0
            # one of them stopped: if it was the publisher, the other takes over at once (the lease given back)
            await first.service.record_payment(source="billing", payment_id="P-10", account_id="A-1",
                                               amount_fen=100)
            await async_wait_until(lambda: len(sub.payments()) >= 11, timeout=15, what="the payment after a stop")
    events = sub.payments()
    assert [e["payment_id"] for e in events] == [f"P-{n}" for n in range(11)]  # each once, in order
    assert [e["seq"] for e in events] == list(range(1, 12))
