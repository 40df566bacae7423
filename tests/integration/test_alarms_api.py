"""Alarms through the API on a real SQLite file: listed with filters and pages, acknowledged and resolved by an
operator with a reason (each with its audit row and event), refused requests change nothing."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from gateway.adapters import tables as t
from gateway.bootstrap import Gateway
from tests.integration.api_support import api_client, auth, site, snapshot

TABLES = ("alarms", "outbox", "audit_log", "site_state")


async def raise_some(gw: Gateway) -> None:
    """M-1 offline, a tamper on M-2 and an undeliverable notice of A-3, as their events would come."""
    now = gw.service.clock()
    async with gw.uow() as uow:
        await uow.add_outbox("meters/M-1/state", {"type": "MeterHealth", "meter_id": "M-1", "health": "offline",
                                                  "error": "timeout"}, now)
        await uow.add_outbox("alarms", {"type": "MeterTamper", "meter_id": "M-2", "account_id": "A-2",
                                        "flags": ["cover_open", "magnet"]}, now)
        await uow.add_outbox("alarms", {"type": "NoticeFailed", "notice_id": 1, "account_id": "A-3",
                                        "kind": "exhausted", "contact": "Li Lei", "channel": "sms", "attempts": 6,
                                        "error": "503"}, now)
        await uow.commit()
    while await gw.alarms.step():
        pass


def rows_of(db: Path, table: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()


async def test_list_filters_and_pages(tmp_path: Path) -> None:
    async with api_client(site(tmp_path), tmp_path) as (client, gw):
        await raise_some(gw)
        everything = (await client.get("/v1/alarms", headers=auth("viewer"))).json()
        assert [(a["kind"], a["subject"], a["state"], a["severity"]) for a in everything["data"]] == [
            ("notice_failed", "A-3/Li Lei/sms", "open", "minor"), ("tamper", "M-2", "open", "critical"),
            ("meter_offline", "M-1", "open", "major")]  # newest first
        assert everything["next_before_id"] is None
        tamper = everything["data"][1]
        assert tamper["detail"] == {"flags": ["cover_open", "magnet"]} and tamper["account_id"] == "A-2"
        for query, expected in (({"kind": "tamper"}, ["M-2"]), ({"severity": "major"}, ["M-1"]),
                                ({"meter_id": "M-1"}, ["M-1"]), ({"account_id": "A-1"}, ["M-1"]),
                                ({"state": "unresolved"}, ["A-3/Li Lei/sms", "M-2", "M-1"]),
                                ({"state": "resolved"}, []), ({"state": "acknowledged"}, [])):
            found = (await client.get("/v1/alarms", params=query, headers=auth("viewer"))).json()["data"]
            assert [a["subject"] for a in found] == expected, query
        first = (await client.get("/v1/alarms", params={"limit": 2}, headers=auth("viewer"))).json()
        rest = (await client.get("/v1/alarms", params={"limit": 2, "before_id": first["next_before_id"]},
                                 headers=auth("viewer"))).json()
        assert [a["id"] for a in first["data"] + rest["data"]] == [a["id"] for a in everything["data"]]
        assert rest["next_before_id"] is None
        one = await client.get(f"/v1/alarms/{tamper['id']}", headers=auth("viewer"))
        assert one.status_code == 200 and one.json() == tamper
        assert (await client.get("/v1/alarms/999", headers=auth("viewer"))).status_code == 404
        bad = await client.get("/v1/alarms", params={"state": "closed"}, headers=auth("viewer"))
        assert bad.status_code == 422


async def test_acknowledge_then_resolve_with_audit_and_events(tmp_path: Path) -> None:
    async with api_client(site(tmp_path), tmp_path) as (client, gw):
        await raise_some(gw)
        [offline] = (await client.get("/v1/alarms", params={"kind": "meter_offline"},
                                      headers=auth("viewer"))).json()["data"]
        path = f"/v1/alarms/{offline['id']}"
        acked = await client.post(f"{path}/acknowledge", json={"reason": "crew sent"}, headers=auth("operator"))
        assert acked.status_code == 200, acked.text
        body = acked.json()
        assert (body["state"], body["acknowledged_by"], body["ack_reason"]) == ("acknowledged", "operator-key",
                                                                                 "crew sent")
        again = await client.post(f"{path}/acknowledge", json={"reason": "other"}, headers=auth("admin"))
        assert again.status_code == 200 and again.json() == body  # the first acknowledgement counts
        # raised again while acknowledged: counted, still acknowledged
        async with gw.uow() as uow:
            await uow.add_outbox("meters/M-1/state", {"type": "MeterHealth", "meter_id": "M-1", "health": "offline",
                                                      "error": "timeout"}, gw.service.clock())
            await uow.commit()
        while await gw.alarms.step():
            pass
        counted = (await client.get(path, headers=auth("viewer"))).json()
        assert (counted["state"], counted["times"]) == ("acknowledged", 2)
        resolved = await client.post(f"{path}/resolve", json={"reason": "meter replaced"}, headers=auth("operator"))
        assert resolved.status_code == 200, resolved.text
        assert (resolved.json()["state"], resolved.json()["resolved_by"],
                resolved.json()["resolve_reason"]) == ("resolved", "operator-key", "meter replaced")
        for action in ("acknowledge", "resolve"):
            late = await client.post(f"{path}/{action}", json={"reason": "x"}, headers=auth("operator"))
            assert late.status_code == 409 and late.json()["type"].endswith(":alarm-resolved"), late.text
        async with gw.uow(readonly=True) as uow:
            audits = list(await uow.execute(sa.select(t.audit_log).where(t.audit_log.c.action.in_(
                ["alarm.acknowledge", "alarm.resolved"])).order_by(t.audit_log.c.id)))
            events = [r.payload for r in await uow.execute(sa.select(t.outbox).where(t.outbox.c.topic == "alarms")
                                                           .order_by(t.outbox.c.id))]
        assert [(a.actor, a.action, a.target, a.detail["reason"]) for a in audits] == [
            ("operator-key", "alarm.acknowledge", "M-1", "crew sent"),
            ("operator-key", "alarm.resolved", "M-1", "meter replaced")]
        mine = [(e["type"], e.get("by"), e.get("reason")) for e in events
                if e["type"] in ("AlarmAcknowledged", "AlarmResolved")]
        assert mine == [("AlarmAcknowledged", "operator-key", "crew sent"),
                        ("AlarmResolved", "operator-key", "meter replaced")]
        # the next event of the cause raises a new alarm
        async with gw.uow() as uow:
            await uow.add_outbox("meters/M-1/state", {"type": "MeterHealth", "meter_id": "M-1", "health": "offline",
                                                      "error": "timeout"}, gw.service.clock())
            await uow.commit()
        while await gw.alarms.step():
            pass
        found = (await client.get("/v1/alarms", params={"kind": "meter_offline"}, headers=auth("viewer"))).json()
        assert [(a["state"], a["times"]) for a in found["data"]] == [("open", 1), ("resolved", 2)]


async def test_refused_requests_change_nothing(tmp_path: Path) -> None:
    async with api_client(site(tmp_path), tmp_path) as (client, gw):
        await raise_some(gw)
        gw.alarms.idle_s = 3600
        [tamper] = (await client.get("/v1/alarms", params={"kind": "tamper"}, headers=auth("viewer"))).json()["data"]
        resolved = (await client.get("/v1/alarms", params={"kind": "notice_failed"},
                                     headers=auth("viewer"))).json()["data"][0]
        assert (await client.post(f"/v1/alarms/{resolved['id']}/resolve", json={"reason": "sent by post"},
                                  headers=auth("operator"))).status_code == 200
        while await gw.alarms.step():
            pass
        before = snapshot(tmp_path / "gw.db") | {"alarms": rows_of(tmp_path / "gw.db", "alarms")}
        for role, path, body, status in [
                ("viewer", f"/v1/alarms/{tamper['id']}/acknowledge", {"reason": "x"}, 403),
                ("billing", f"/v1/alarms/{tamper['id']}/resolve", {"reason": "x"}, 403),
                ("operator", f"/v1/alarms/{tamper['id']}/acknowledge", {}, 422),
                ("operator", f"/v1/alarms/{tamper['id']}/acknowledge", {"reason": ""}, 422),
                ("operator", f"/v1/alarms/{tamper['id']}/resolve", {"reason": "a\x00"}, 422),
                ("operator", f"/v1/alarms/{tamper['id']}/resolve", {"reason": "x", "by": "me"}, 422),
                ("operator", "/v1/alarms/424242/resolve", {"reason": "x"}, 404),
                ("operator", f"/v1/alarms/{resolved['id']}/acknowledge", {"reason": "x"}, 409),
                ("operator", f"/v1/alarms/{resolved['id']}/resolve", {"reason": "x"}, 409)]:
            answer = await client.post(path, json=body, headers=auth(role))
            assert answer.status_code == status, (path, body, answer.text)
            assert answer.headers["content-type"] == "application/problem+json"
            after = snapshot(tmp_path / "gw.db") | {"alarms": rows_of(tmp_path / "gw.db", "alarms")}
            assert after == before, (role, path, body)
