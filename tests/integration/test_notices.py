"""Notices through the real gateway, a real SQLite file and a local HTTP receiver (a stand-in SMS gateway):
signed webhooks, apprise, retries with backoff, dead letters and their retry in the API, quiet hours, opt-out,
deduplication, and the notice-backed disconnect guardrail (an undeliverable final warning holds the disconnect
and tells the staff; a delivered one starts the notice period)."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from drivers.base import Reading
from gateway.adapters import tables as t
from gateway.bootstrap import Gateway
from gateway.service.lists import NoticeFilter
from gateway.settings import Settings, hash_key
from tests.receiver import Receiver, receiver
from tests.support import SetClock, async_wait_until

SECRET = "s3cret-hmac-key-0123456789"
T0 = dt.datetime(2026, 12, 3, 2, 0, tzinfo=dt.UTC)  # 10:00 in Shanghai
OPERATOR = "operator-key-0123456789"


@pytest.fixture
def sms() -> Iterator[Receiver]:
    with receiver() as running:
        yield running


@pytest.fixture
def staff_sms() -> Iterator[Receiver]:
    with receiver() as running:
        yield running


def site(tmp_path: Path, sms: Receiver, staff: Receiver | None = None, *, notices: dict[str, Any] | None = None,
         customer: dict[str, Any] | None = None, policy: dict[str, Any] | None = None,
         database: dict[str, Any] | None = None) -> Settings:
    channels: dict[str, Any] = {"sms": {"kind": "webhook", "url": f"{sms.url}/send", "secret": SECRET}}
    staff_contacts = []
    if staff is not None:
        channels["staff"] = {"kind": "webhook", "url": f"{staff.url}/staff", "secret": SECRET}
        staff_contacts = [{"name": "collector", "role": "staff", "channel": "staff", "to": "+8613900000001",
                           "language": "en", "opt_out": ["payment_received"]}]
    return Settings.model_validate({
        "database": database or {"url": f"sqlite:///{tmp_path / 'gw.db'}"},
        "api": {"keys": [{"name": "ops", "role": "operator", "sha256": hash_key(OPERATOR)}]},
        "engine": {"reading_history_s": 0, "evaluate_every_s": 86_400},
        "policy": {"notice_period": "1h", **(policy or {})},
        "notices": {"channels": channels, "staff": staff_contacts, "retry_backoff_s": 60,
                    "delivery_timeout_s": 1800, **(notices or {})},
        "tariffs": {"flat": {"kind": "flat", "price": "1.0000"}},
        "accounts": [{"id": "A-1", "tariff": "flat", "opening_balance": "10.00", "warning1": "8.00",
                      "warning2": "5.00", "contacts": [{"name": "Li Lei", "channel": "sms", "to": "+8613800000000",
                                                        **(customer or {})}]}],
        "buses": [{"id": "bus", "protocol": "modbus-tcp", "host": "127.0.0.1", "port": 1}],
        "meters": [{"id": "M-1", "bus": "bus", "unit_id": 1, "account": "A-1"}],
    })


def verify(request: Any) -> dict[str, Any]:
    """The webhook's signature checked as a receiver would; returns the body."""
    timestamp = request.headers["x-gateway-timestamp"]
    expected = hmac.new(SECRET.encode(), timestamp.encode() + b"." + request.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(request.headers["x-gateway-signature"], f"sha256={expected}")
    body: dict[str, Any] = request.json()
    assert request.headers["idempotency-key"] == body["dedup_key"]
    return body


async def reading(gw: Gateway, clock: SetClock, energy_wh: int, *, before_s: float = 0) -> None:
    """A reading of the meter taken ``before_s`` before the clock's now."""
    await gw.service.record_reading(Reading("M-1", clock.now - dt.timedelta(seconds=before_s), energy_wh))


async def notices(gw: Gateway, **filters: Any) -> list[dict[str, Any]]:
    return (await gw.service.lists.notices(NoticeFilter(**filters)))["data"]  # type: ignore[no-any-return]


async def test_a_payment_is_told_by_a_signed_webhook_once(tmp_path: Path, sms: Receiver) -> None:
    clock = SetClock(T0)
    async with Gateway(site(tmp_path, sms), run_buses=False, base_dir=tmp_path, clock=clock) as gw:
        await gw.service.record_payment(source="bank", payment_id="P-1", account_id="A-1", amount_fen=520)
        await async_wait_until(lambda: len(sms.requests) == 1, what="the payment notice")
        body = verify(sms.requests[0])
        assert sms.requests[0].path == "/send"
        assert body["kind"] == "payment_received" and body["to"] == "+8613800000000" and body["attempt"] == 1
        assert "5.20" in body["text"] and "15.20" in body["text"] and "A-1" in body["text"]
        await async_wait_until(lambda: _is(gw, body["notice_id"], "delivered"), what="delivered")
        async with gw.uow() as uow:  # the planner looks at every event again (a crash before its mark)
            await uow.execute(sa.update(t.outbox).values(noticed_at=None))
            await uow.commit()
        gw.notices.after_id = 0
        await gw.notices.plan()
        stored = await notices(gw)
        assert len(stored) == 1  # the dedup key made it once
        assert stored[0]["to"] == "*" * 10 + "0000"  # the API masks the address
        events = await _outbox(gw, "NoticeState")
        assert [e["state"] for e in events] == ["delivered"]


async def test_two_dispatchers_send_each_notice_once_and_pruning_waits_for_the_planner(
        tmp_path: Path, sms: Receiver, database: dict[str, Any]) -> None:
    """On every storage (SQLite, the SQLite pipeline, PostgreSQL): a notice is claimed before it is sent, so two
    dispatchers (two instances) never send one twice; a published event is pruned only once the planner took it."""
    from gateway.service.notices import NoticeService

    clock = SetClock(T0)
    async with Gateway(site(tmp_path, sms, database=database), run_buses=False, base_dir=tmp_path,
                       clock=clock) as gw:
        other = NoticeService(gw.uow, gw.catalog, gw.notices.policy, gw.notices.notifier, clock,
                              gw.service.final_warning_delivered)
        gw.notices.idle_s = 3600  # the running loops sleep; the test drives both dispatchers
        for n in range(12):
            await gw.service.record_payment(source="bank", payment_id=f"P-{n}", account_id="A-1", amount_fen=100)
        while await other.plan():
            pass
        await asyncio.gather(gw.notices.dispatch(), other.dispatch(), gw.notices.dispatch())
        await async_wait_until(lambda: _has(gw, "delivered", 12), what="all delivered")
        assert len(sms.requests) == 12 and len({r.headers["idempotency-key"] for r in sms.requests}) == 12
        async with gw.uow() as uow:
            await uow.execute(sa.update(t.outbox).values(published_at=T0))  # as if MQTT had published them all
            await uow.execute(sa.update(t.outbox).where(t.outbox.c.id % 2 == 0).values(noticed_at=None))
            await uow.commit()
        async with gw.uow() as uow:
            kept = await uow.outbox.prune(T0 + dt.timedelta(seconds=1), keep_unnoticed=True)
            await uow.commit()
        async with gw.uow(readonly=True) as uow:
            left = (await uow.execute(sa.select(t.outbox.c.id, t.outbox.c.noticed_at))).all()
        assert kept > 0 and left and all(row.noticed_at is None for row in left)


async def test_retries_with_backoff_then_delivered_with_the_same_key(tmp_path: Path, sms: Receiver) -> None:
    clock = SetClock(T0)
    sms.answer(503, 429)
    async with Gateway(site(tmp_path, sms), run_buses=False, base_dir=tmp_path, clock=clock) as gw:
        await gw.service.record_payment(source="bank", payment_id="P-1", account_id="A-1", amount_fen=100)
        await async_wait_until(lambda: len(sms.requests) == 1, what="the first attempt")
        await async_wait_until(lambda: _pending_retry(gw), what="the retry planned")
        [notice] = await notices(gw)
        assert notice["next_attempt_at"] == T0 + dt.timedelta(seconds=60)
        assert notice["last_error"] == "webhook answered 503 Service Unavailable"
        clock.now = T0 + dt.timedelta(seconds=59)
        await gw.notices.dispatch()
        assert len(sms.requests) == 1  # not before its backoff
        clock.now = T0 + dt.timedelta(seconds=60)
        await async_wait_until(lambda: len(sms.requests) == 2, what="the second attempt")
        await async_wait_until(lambda: _pending_retry(gw, attempts=2), what="the third attempt planned")
        [notice] = await notices(gw)
        assert notice["next_attempt_at"] == clock.now + dt.timedelta(seconds=120)  # doubled
        clock.now += dt.timedelta(seconds=120)
        await async_wait_until(lambda: len(sms.requests) == 3, what="the third attempt")
        await async_wait_until(lambda: _is(gw, notice["id"], "delivered"), what="delivered")
        keys = {r.headers["idempotency-key"] for r in sms.requests}
        assert len(keys) == 1 and [r.json()["attempt"] for r in sms.requests] == [1, 2, 3]
        assert [e["state"] for e in await _outbox(gw, "NoticeState")] == ["pending", "pending", "delivered"]


async def test_a_refused_notice_is_a_dead_letter_listed_and_retried_in_the_api(tmp_path: Path,
                                                                             sms: Receiver) -> None:
    clock = SetClock(T0)
    sms.answer(400)
    async with Gateway(site(tmp_path, sms, notices={"max_attempts": 2}), run_buses=False, base_dir=tmp_path,
                       clock=clock) as gw:
        await gw.service.record_payment(source="bank", payment_id="P-1", account_id="A-1", amount_fen=100)
        await async_wait_until(lambda: _has(gw, "failed", 1), what="the dead letter")
        assert len(sms.requests) == 1  # refused: not tried again
        alarms = await _outbox(gw, "NoticeFailed")
        assert alarms[0]["error"] == "webhook answered 400 Bad Request" and alarms[0]["attempts"] == 1
        transport = httpx.ASGITransport(app=gw.app())
        async with httpx.AsyncClient(transport=transport, base_url="http://gw",
                                     headers={"Authorization": f"Bearer {OPERATOR}"}) as api:
            dead = (await api.get("/v1/notices", params={"state": "failed"})).json()["data"]
            assert [(n["kind"], n["attempts"], n["last_error"]) for n in dead] == [
                ("payment_received", 1, "webhook answered 400 Bad Request")]
            sms.answer(500, 500)
            answer = await api.post(f"/v1/notices/{dead[0]['id']}/retry")
            assert answer.status_code == 200 and answer.json()["state"] == "pending"
            await async_wait_until(lambda: _pending_retry(gw, attempts=1), what="the retried notice failed once")
            assert len(sms.requests) == 2
            clock.now += dt.timedelta(seconds=60)
            await async_wait_until(lambda: _has(gw, "failed", 1, requests=(sms, 3)),
                                   what="failed again after max_attempts")
            again = await api.post(f"/v1/notices/{dead[0]['id']}/retry")
            assert again.status_code == 200
            await async_wait_until(lambda: _is(gw, dead[0]["id"], "delivered"), what="delivered at last")
            refused = await api.post(f"/v1/notices/{dead[0]['id']}/retry")
            assert refused.status_code == 409
            assert refused.json()["type"].endswith("notice-not-retryable")
            assert (await api.get("/v1/notices/999")).status_code == 404
        async with gw.uow(readonly=True) as uow:
            audits = (await uow.execute(sa.select(t.audit_log.c.actor, t.audit_log.c.action)
                                        .where(t.audit_log.c.action == "notice.retry"))).all()
        assert [tuple(a) for a in audits] == [("ops", "notice.retry")] * 2


async def test_quiet_hours_hold_warnings_not_payments_and_opted_out_kinds_are_not_sent(
        tmp_path: Path, sms: Receiver) -> None:
    night = dt.datetime(2026, 12, 3, 15, 0, tzinfo=dt.UTC)  # 23:00 in Shanghai
    clock = SetClock(night)
    settings = site(tmp_path, sms, notices={"quiet_hours": {"start": "22:00", "end": "07:00"}},
                    customer={"opt_out": ["exhausted"]})
    async with Gateway(settings, run_buses=False, base_dir=tmp_path, clock=clock) as gw:
        await reading(gw, clock, 1_000_000, before_s=3600)
        await reading(gw, clock, 1_003_000)  # 3 kWh: 10.00 -> 7.00, below warning 1
        await async_wait_until(lambda: _has(gw, None, 1), what="the warning planned")
        await gw.service.record_payment(source="bank", payment_id="P-1", account_id="A-1", amount_fen=100)
        await async_wait_until(lambda: len(sms.requests) == 1, what="the payment notice, urgent")
        assert sms.requests[0].json()["kind"] == "payment_received"
        warning = next(n for n in await notices(gw) if n["kind"] == "low_balance_1")
        await async_wait_until(lambda: _held(gw, warning["id"]), what="held until 07:00")
        [held] = [n for n in await notices(gw) if n["id"] == warning["id"]]
        assert held["next_attempt_at"] == dt.datetime(2026, 12, 3, 23, 0, tzinfo=dt.UTC)  # 07:00 local
        assert held["attempts"] == 0 and held["last_error"].startswith("quiet hours until")
        clock.now = dt.datetime(2026, 12, 3, 23, 0, tzinfo=dt.UTC)
        await async_wait_until(lambda: len(sms.requests) == 2, what="the warning after the quiet hours")
        assert sms.requests[1].json()["kind"] == "low_balance_1"
        await reading(gw, clock, 1_010_000)  # 8.00 -> 1.00 -> -? exhausted: opted out
        await async_wait_until(lambda: _has(gw, None, 3), what="the final warning planned")
        assert {n["kind"] for n in await notices(gw)} == {"low_balance_1", "payment_received", "low_balance_2"}


async def test_an_undeliverable_final_warning_holds_the_disconnect_and_tells_the_staff(
        tmp_path: Path, sms: Receiver, staff_sms: Receiver) -> None:
    clock = SetClock(T0)
    sms.answer(*[503] * 50)  # the customer's SMS gateway is down
    async with Gateway(site(tmp_path, sms, staff_sms), run_buses=False, base_dir=tmp_path, clock=clock) as gw:
        await reading(gw, clock, 1_000_000, before_s=3600)
        await reading(gw, clock, 1_012_000)  # 10.00 -> -2.00: below the disconnect point (0)
        account = await gw.service.views.account("A-1")
        assert account["disconnect_deferred_because"] == "notice_undelivered"
        assert account["final_warning_at"] == T0 and account["final_warning_delivered_at"] is None
        assert account["deferred_until"] == T0 + dt.timedelta(seconds=1800)
        await async_wait_until(lambda: len(staff_sms.requests) >= 1, what="the staff's copy of the warnings")
        clock.now = T0 + dt.timedelta(seconds=1800)
        await reading(gw, clock, 1_012_000)  # fresh (not stale), and past the delivery timeout
        account = await gw.service.views.account("A-1")
        assert account["supply"] == "connected" and account["disconnect_deferred_because"] == "notice_undelivered"
        assert account["deferred_detail"].endswith("not delivered within 1800 s: staff told")
        await async_wait_until(lambda: any(r.json()["kind"] == "final_warning_undelivered"
                                           for r in staff_sms.requests), what="the staff told")
        told = next(verify(r) for r in staff_sms.requests if r.json()["kind"] == "final_warning_undelivered")
        assert "A-1" in told["text"] and "could not be delivered" in told["text"]
        clock.now += dt.timedelta(hours=5)
        await reading(gw, clock, 1_012_000)
        assert (await gw.service.views.account("A-1"))["supply"] == "connected"  # still waits
        assert len([r for r in staff_sms.requests if r.json()["kind"] == "final_warning_undelivered"]) == 1
        async with gw.uow(readonly=True) as uow:
            assert not await uow.commands.active("M-1")


async def test_a_delivered_final_warning_starts_the_notice_period(tmp_path: Path, sms: Receiver,
                                                                 staff_sms: Receiver) -> None:
    clock = SetClock(T0)
    sms.answer(503, 503, 503)  # the customer's three notices (warnings 1 and 2, exhausted): the second attempt
    async with Gateway(site(tmp_path, sms, staff_sms), run_buses=False, base_dir=tmp_path, clock=clock) as gw:
        await reading(gw, clock, 1_000_000, before_s=3600)
        await reading(gw, clock, 1_012_000)
        await async_wait_until(lambda: _pending_retry(gw, kind="exhausted"), what="the third notice's retry")
        # one recipient's notices go one after another, in the order of their events
        assert [r.json()["kind"] for r in sms.requests] == ["low_balance_1", "low_balance_2", "exhausted"]
        clock.now = delivered = T0 + dt.timedelta(seconds=60)
        await async_wait_until(lambda: _delivered_warning(gw), what="the delivery recorded on the account")
        account = await gw.service.views.account("A-1")
        assert account["final_warning_delivered_at"] == delivered
        assert account["disconnect_deferred_because"] == "notice_period"
        assert account["deferred_until"] == delivered + dt.timedelta(hours=1)
        clock.now = delivered + dt.timedelta(minutes=59)
        await reading(gw, clock, 1_012_000)
        assert (await gw.service.views.account("A-1"))["supply"] == "connected"
        clock.now = delivered + dt.timedelta(hours=1)
        await reading(gw, clock, 1_012_000)
        assert (await gw.service.views.account("A-1"))["supply"] == "disconnected"
        async with gw.uow(readonly=True) as uow:
            [command] = await uow.commands.active("M-1")
        assert command.action == "open" and command.origin == "automatic"
        assert not any(r.json()["kind"] == "final_warning_undelivered" for r in staff_sms.requests)


async def test_apprise_json_channel_reaches_the_receiver(tmp_path: Path, sms: Receiver,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    clock = SetClock(T0)
    settings = site(tmp_path, sms, notices={"channels": {
        "sms": {"kind": "apprise", "url": f"json://gw:topsecret@127.0.0.1:{sms.port}/apprise?to={{to}}"}}})
    async with Gateway(settings, run_buses=False, base_dir=tmp_path, clock=clock) as gw:
        await gw.service.record_payment(source="bank", payment_id="P-1", account_id="A-1", amount_fen=250)
        await async_wait_until(lambda: len(sms.requests) == 1, what="apprise's POST")
        request = sms.requests[0]
        assert request.path.startswith("/apprise")
        assert "2.50" in request.json()["message"]
        await async_wait_until(lambda: _has(gw, "delivered", 1), what="delivered")
        sms.answer(500)
        await gw.service.record_payment(source="bank", payment_id="P-2", account_id="A-1", amount_fen=1)
        await async_wait_until(lambda: _pending_retry(gw), what="apprise's failure planned again")
        [failed] = [n for n in await notices(gw) if n["state"] == "pending"]
        assert failed["last_error"].startswith("apprise:") and "topsecret" not in failed["last_error"]
        assert "authorization" in sms.requests[0].headers  # the credentials went to the receiver...
    assert "topsecret" not in caplog.text  # ...and never into a log line


# --- helpers reading the notices table -----------------------------------------------------------------------
async def _rows(gw: Gateway) -> list[Any]:
    async with gw.uow(readonly=True) as uow:
        return list((await uow.execute(sa.select(t.notices))).all())


async def _state(gw: Gateway, notice_id: int) -> str:
    return next((r.state for r in await _rows(gw) if r.id == notice_id), "")


async def _is(gw: Gateway, notice_id: int, state: str) -> bool:
    return await _state(gw, notice_id) == state


async def _has(gw: Gateway, state: str | None, count: int, *, requests: tuple[Receiver, int] | None = None) -> bool:
    """``count`` notices in ``state`` (any state: None), and with ``requests``, that many requests received."""
    if requests is not None and len(requests[0].requests) != requests[1]:
        return False
    return len([r for r in await _rows(gw) if state is None or r.state == state]) == count


async def _pending_retry(gw: Gateway, *, attempts: int = 1, kind: str | None = None) -> bool:
    """A failed attempt (the ``attempts``-th) recorded, the notice planned again (its state event written)."""
    return any(e["state"] == "pending" and e["attempts"] == attempts and (kind is None or e["kind"] == kind)
               for e in await _outbox(gw, "NoticeState"))


async def _held(gw: Gateway, notice_id: int) -> bool:
    return any(r.id == notice_id and (r.last_error or "").startswith("quiet hours") for r in await _rows(gw))


async def _delivered_warning(gw: Gateway) -> bool:
    return (await gw.service.views.account("A-1"))["final_warning_delivered_at"] is not None


async def _outbox(gw: Gateway, kind: str) -> list[dict[str, Any]]:
    async with gw.uow(readonly=True) as uow:
        rows = (await uow.execute(sa.select(t.outbox.c.payload).order_by(t.outbox.c.id))).all()
    return [r.payload for r in rows if r.payload.get("type") == kind]


async def test_without_mqtt_old_events_are_deleted_once_the_planner_took_them(tmp_path: Path, sms: Receiver,
                                                                               database: dict[str, Any]) -> None:
    """The outbox stays bounded on a default install (no MQTT): events older than engine.event_retention_s go,
    but with notices on, not before the notice planner looked at them."""
    clock = SetClock(T0)
    async with Gateway(site(tmp_path, sms, database=database), run_buses=False, base_dir=tmp_path,
                       clock=clock) as gw:
        assert gw.relay is None and gw.pruner is not None and gw.pruner.keep_unnoticed
        for n in range(5):
            await gw.service.record_payment(source="bank", payment_id=f"P-{n}", account_id="A-1", amount_fen=100)
        await async_wait_until(lambda: _has(gw, "delivered", 5), what="the notices")
        await async_wait_until(lambda: _all_noticed(gw), what="every event looked at")
        gw.notices.after_id = 2**62  # the planner looks past the event below: it stays unnoticed
        async with gw.uow() as uow:
            await uow.add_outbox("alarms", {"type": "Test"}, T0)
            await uow.commit()
        clock.now = T0 + dt.timedelta(days=1, seconds=1)
        assert await gw.pruner.once() > 0
        async with gw.uow(readonly=True) as uow:
            left = (await uow.execute(sa.select(t.outbox.c.payload, t.outbox.c.noticed_at))).all()
        assert [row.payload["type"] for row in left if row.noticed_at is None] == ["Test"]
        assert all(row.noticed_at is None for row in left)  # every event the planner took is gone


async def _all_noticed(gw: Gateway) -> bool:
    async with gw.uow(readonly=True) as uow:
        rows = (await uow.execute(sa.select(t.outbox.c.noticed_at))).all()
    return all(row.noticed_at is not None for row in rows)
