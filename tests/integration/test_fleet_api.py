"""The fleet as data, through the API on a real SQLite file: accounts and meters opened, changed, swapped (换表),
closed and moved in, each one transaction with its ledger entries, audit row and event; refusals change nothing."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from drivers.base import Reading
from gateway.adapters import tables as t
from gateway.service.verify import check_ledger
from tests.integration.api_support import api_client, auth, site, snapshot
from tests.support import SetClock

T0 = dt.datetime(2026, 11, 23, 0, 0, tzinfo=dt.UTC)
PROV = auth("provisioning")


async def _gateway(tmp_path: Path, database: dict[str, Any] | None = None) -> Any:
    settings = site(tmp_path)
    if database is not None:
        settings = settings.model_copy(update={"database": settings.database.model_copy(update=database)})
    settings.tariffs["dear"] = {"kind": "flat", "price": "1.0000"}
    clock = SetClock(T0)
    from gateway.bootstrap import Gateway
    import httpx

    async with Gateway(settings, base_dir=tmp_path, run_buses=False, clock=clock) as gateway:
        transport = httpx.ASGITransport(app=gateway.app())
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            gateway.test_clock = clock
            yield client, gateway


@pytest.fixture
async def gw(tmp_path: Path) -> Any:
    """On a SQLite file (the tests that compare every table before and after)."""
    async for pair in _gateway(tmp_path):
        yield pair


@pytest.fixture
async def anydb(tmp_path: Path, database: dict[str, Any]) -> Any:
    """On SQLite, SQLite with the pipeline, and PostgreSQL."""
    async for pair in _gateway(tmp_path, database):
        yield pair


async def rows(gateway: Any, table: sa.Table, *where: Any) -> list[Any]:
    async with gateway.service.uow(readonly=True) as uow:
        return (await uow.execute(sa.select(table).where(*where))).all()  # type: ignore[no-any-return]


async def charges(gateway: Any, account_id: str) -> list[tuple[int, int | None]]:
    return [(r.amount_fen, r.energy_wh) for r in await rows(gateway, t.ledger, t.ledger.c.account_id == account_id,
                                                             t.ledger.c.kind == "charge")]


async def read(gateway: Any, meter_id: str, wh: int, minutes: float) -> list[Any]:
    clock = gateway.test_clock
    clock.now = T0 + dt.timedelta(minutes=minutes)
    return await gateway.service.record_reading(Reading(meter_id, clock.now, wh))  # type: ignore[no-any-return]


NEW = {"id": "A-10", "tariff": "flat", "opening_balance": "20.00", "credit_class": "B",
       "meters": [{"id": "M-10", "bus": "b", "unit_id": 10}]}


async def test_opening_an_account_writes_its_rows_ledger_audit_and_event(anydb: Any) -> None:
    client, gateway = anydb
    answer = await client.post("/v1/accounts", json=NEW, headers=PROV)
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert (body["id"], body["balance"], body["status"], body["tariff"], body["meters"]) == (
        "A-10", "20.00", "open", "flat", ["M-10"])
    [entry] = await rows(gateway, t.ledger, t.ledger.c.account_id == "A-10")
    assert (entry.kind, entry.amount_fen, entry.balance_after_fen) == ("opening", 2000, 2000)
    [meter] = await rows(gateway, t.meters, t.meters.c.id == "M-10")
    assert (meter.account_id, meter.bus_id, meter.unit_id, meter.status) == ("A-10", "b", 10, "active")
    [audit] = await rows(gateway, t.audit_log, t.audit_log.c.action == "account.open")
    assert (audit.actor, audit.target) == ("provisioning-key", "A-10")
    events = [r.payload["type"] for r in await rows(gateway, t.outbox, t.outbox.c.topic == "accounts/A-10/events")]
    assert "AccountOpened" in events
    assert gateway.catalog.meters["M-10"].account_id == "A-10"
    # the meter is billed from its first reading
    assert await read(gateway, "M-10", 1_000, 1) == []
    await read(gateway, "M-10", 2_000, 2)
    assert await charges(gateway, "A-10") == [(-56, 1_000)]
    async with gateway.service.uow(readonly=True) as uow:
        assert await check_ledger(uow) == ([], 4, 5)


@pytest.mark.parametrize("role", ["viewer", "billing", "operator"])
async def test_only_provisioning_and_admin_keys_provision(gw: Any, role: str) -> None:
    client, _ = gw
    assert (await client.post("/v1/accounts", json=NEW, headers=auth(role))).status_code == 403
    assert (await client.post("/v1/accounts", json=NEW, headers=auth("admin"))).status_code == 201


@pytest.mark.parametrize("change, status, field", [
    ({"tariff": "nope"}, 409, "tariff"),
    ({"credit_class": "ZZ"}, 409, "credit_class"),
    ({"id": "A-1"}, 409, "id"),
    ({"meters": [{"id": "M-10", "bus": "b", "unit_id": 1}]}, 409, "unit_id"),  # M-1's place
    ({"meters": [{"id": "M-1", "bus": "b", "unit_id": 10}]}, 409, "id"),
    ({"meters": [{"id": "M-10", "bus": "nowhere", "unit_id": 10}]}, 409, "bus"),
    ({"meters": [{"id": "M-10", "bus": "b"}]}, 409, "unit_id"),
    ({"meters": [{"id": "M-10", "bus": "b", "unit_id": 10, "model": "unknown-model"}]}, 409, "model"),
    ({"meters": [{"id": "M-10", "bus": "b", "unit_id": 10, "model": "eastron-sdm120"}]}, 409, "model"),  # no relay
    ({"meters": [{"id": "M-10", "bus": "b", "unit_id": 10}, {"id": "M-11", "bus": "b", "unit_id": 10}]}, 409,
     "unit_id"),
])
async def test_a_refused_account_changes_nothing(gw: Any, tmp_path: Path, change: dict[str, Any], status: int,
                                                 field: str) -> None:
    client, gateway = gw
    before = snapshot(tmp_path / "gw.db")
    answer = await client.post("/v1/accounts", json=NEW | change, headers=PROV)
    assert answer.status_code == status, answer.text
    problem = answer.json()
    assert answer.headers["content-type"] == "application/problem+json"
    assert any(e.get("field") == field for e in problem["errors"]), problem
    assert snapshot(tmp_path / "gw.db") == before
    assert "A-10" not in gateway.catalog.accounts and "M-10" not in gateway.catalog.meters


async def test_changing_an_account_and_a_meter(gw: Any, tmp_path: Path) -> None:
    client, gateway = gw
    answer = await client.patch("/v1/accounts/A-1", json={"warning1": "15.00", "protected": True}, headers=PROV)
    assert answer.status_code == 200, answer.text
    assert (answer.json()["warning1"], answer.json()["protected"]) == ("15.00", True)
    assert gateway.catalog.accounts["A-1"].thresholds.warning1_fen == 1500
    # a meter moves to a free unit id, not to a taken one
    before = snapshot(tmp_path / "gw.db")
    taken = await client.patch("/v1/meters/M-1", json={"unit_id": 2}, headers=PROV)
    assert taken.status_code == 409 and taken.json()["errors"][0]["field"] == "unit_id"
    assert snapshot(tmp_path / "gw.db") == before
    moved = await client.patch("/v1/meters/M-1", json={"unit_id": 20, "poll_interval_s": 30}, headers=PROV)
    assert moved.status_code == 200, moved.text
    assert (moved.json()["unit_id"], moved.json()["poll_interval_s"]) == (20, 30)
    assert gateway.catalog.place_of(("b", 20)) == "M-1" and gateway.catalog.place_of(("b", 1)) is None
    # its account is not changed this way
    assert (await client.patch("/v1/meters/M-1", json={"account": "A-3"}, headers=PROV)).status_code == 422


@pytest.mark.parametrize("interval", [5e-324, 0, 0.01, -1, 86_401])
async def test_a_poll_interval_the_schedule_cannot_keep_is_refused(gw: Any, tmp_path: Path, interval: float) -> None:
    # found by the fuzzer: 5e-324 s was stored, and the bus then spun on the meter (its next slot an infinity)
    client, gateway = gw
    before = snapshot(tmp_path / "gw.db")
    changed = await client.patch("/v1/meters/M-1", json={"poll_interval_s": interval}, headers=PROV)
    assert changed.status_code == 422, changed.text
    added = await client.post("/v1/meters", json={"id": "M-10", "account": "A-1", "bus": "b", "unit_id": 10,
                                                   "poll_interval_s": interval}, headers=PROV)
    assert added.status_code == 422, added.text
    imported = await client.post("/v1/fleet/import?kind=meters", headers=PROV | {"content-type": "text/csv"},
                                 content=f"id,account,bus,unit_id,poll_interval_s\nM-10,A-1,b,10,{interval}\n")
    assert imported.status_code == 409 and imported.json()["errors"][0]["field"] == "poll_interval_s", imported.text
    assert snapshot(tmp_path / "gw.db") == before
    assert gateway.catalog.meters["M-1"].poll_interval_s != interval and "M-10" not in gateway.catalog.meters


async def test_a_tariff_change_prices_energy_after_it_at_the_new_tariff(anydb: Any) -> None:
    client, gateway = anydb
    await read(gateway, "M-1", 10_000, 0)
    effective = T0 + dt.timedelta(hours=1)
    answer = await client.post("/v1/accounts/A-1/tariff-change",
                               json={"tariff": "dear", "effective_at": effective.isoformat()}, headers=PROV)
    assert answer.status_code == 200, answer.text
    assert answer.json()["tariff_change"]["tariff"] == "dear"
    await read(gateway, "M-1", 11_000, 30)  # before: 1 kWh at 0.56
    await read(gateway, "M-1", 13_000, 90)  # 2 kWh over 30 min before and 30 min after: 1 at 0.56, 1 at 1.00
    await read(gateway, "M-1", 14_000, 120)  # after: 1 kWh at 1.00
    assert [c for c, _ in await charges(gateway, "A-1")] == [-56, -56, -100, -100]
    view = (await client.get("/v1/accounts/A-1", headers=auth("viewer"))).json()
    assert (view["tariff"], view["tariff_change"]) == ("dear", None)
    # a change before a reading already billed is refused
    late = await client.post("/v1/accounts/A-1/tariff-change",
                             json={"tariff": "flat", "effective_at": (T0 + dt.timedelta(minutes=60)).isoformat()},
                             headers=PROV)
    assert late.status_code == 409, late.text


async def test_a_meter_swap_bills_continuously_and_retires_the_old_meter(anydb: Any) -> None:
    client, gateway = anydb
    await read(gateway, "M-1", 10_000, 0)
    await read(gateway, "M-1", 11_000, 10)
    queued = await client.post("/v1/meters/M-1/reconnect", json={"reason": "x"}, headers=auth("operator"))
    assert queued.status_code == 202, queued.text
    gateway.test_clock.now = T0 + dt.timedelta(minutes=20)
    answer = await client.post("/v1/meters/M-1/swap", json={
        "new_meter": {"id": "M-1B", "bus": "b", "unit_id": 1}, "final_wh": 11_500, "initial_wh": 7,
        "relay": "follow"}, headers=PROV)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["charged"], body["final_wh"], body["initial_wh"], body["meter"]["account_id"]) == (
        "0.28", 11_500, 7, "A-1")
    assert body["command_id"] is not None  # the new meter's relay follows the account's supply (closed)
    [command] = await rows(gateway, t.commands, t.commands.c.id == body["command_id"])
    assert (command.meter_id, command.action) == ("M-1B", "close")
    [old_command] = await rows(gateway, t.commands, t.commands.c.id == queued.json()["command_id"])
    assert old_command.state == "cancelled"  # the old meter's queued command is not sent after it is retired
    [cancel] = await rows(gateway, t.audit_log, t.audit_log.c.action == "command.cancel")
    assert (cancel.actor, cancel.target) == ("provisioning-key", old_command.id)
    [old] = await rows(gateway, t.meters, t.meters.c.id == "M-1")
    assert old.status == "retired" and "M-1" not in gateway.catalog.meters and "M-1" in gateway.catalog.retired
    assert gateway.catalog.accounts["A-1"].meter_ids == ("M-1B",)
    async with gateway.service.uow() as uow:  # the old meter's relay was read open before it was retired
        await uow.meters.update("M-1", {"relay": "open"})
        await uow.commit()
    view = (await client.get("/v1/accounts/A-1", headers=auth("viewer"))).json()
    assert "M-1" not in view["relays"] and view["state"] != "disconnected"
    await read(gateway, "M-1B", 1_007, 30)  # 1 kWh on the new meter, from its initial reading
    assert await charges(gateway, "A-1") == [(-56, 1_000), (-28, 500), (-56, 1_000)]
    # the old meter's readings are refused now, its id can't come back
    with pytest.raises(Exception, match="M-1"):
        await read(gateway, "M-1", 12_000, 40)
    again = await client.post("/v1/meters", json={"id": "M-1", "account": "A-1", "bus": "b", "unit_id": 30},
                              headers=PROV)
    assert again.status_code == 409 and "retired" in again.text
    async with gateway.service.uow(readonly=True) as uow:
        assert (await check_ledger(uow))[0] == []


async def test_closing_an_account_settles_its_balance_and_leaves_the_relay_as_asked(anydb: Any) -> None:
    client, gateway = anydb
    await read(gateway, "M-1", 10_000, 0)
    gateway.test_clock.now = T0 + dt.timedelta(minutes=5)
    answer = await client.post("/v1/accounts/A-1/close", headers=PROV, json={
        "final_readings": [{"meter_id": "M-1", "final_wh": 11_000}], "relay": "open", "reason": "moved away"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["charged"], body["settled"], body["account"]["status"], body["account"]["balance"]) == (
        "0.56", "-9.44", "closed", "0.00")
    kinds = [(r.kind, r.amount_fen) for r in await rows(gateway, t.ledger, t.ledger.c.account_id == "A-1")]
    assert kinds == [("opening", 1000), ("charge", -56), ("refund", -944)]
    [command] = await rows(gateway, t.commands, t.commands.c.id == body["commands"][0])
    assert (command.meter_id, command.action) == ("M-1", "open")
    # a closed account takes no payment and no change; its meter's readings are stored, not billed
    paid = await client.post("/v1/payments", json={"source": "billing", "payment_id": "P-9", "account_id": "A-1",
                                                   "amount": "5.00"}, headers=auth("billing"))
    assert paid.status_code == 409, paid.text
    assert (await client.post("/v1/accounts/A-1/close", json={}, headers=PROV)).status_code == 409
    await read(gateway, "M-1", 12_000, 10)
    [*_, last] = await rows(gateway, t.readings, t.readings.c.meter_id == "M-1")
    assert (last.energy_wh, last.billed) == (12_000, False)
    async with gateway.service.uow(readonly=True) as uow:
        assert (await check_ledger(uow))[0] == []


async def test_a_move_in_starts_a_new_account_from_the_given_reading(anydb: Any) -> None:
    client, gateway = anydb
    await read(gateway, "M-3", 5_000, 0)
    gateway.test_clock.now = T0 + dt.timedelta(minutes=5)
    answer = await client.post("/v1/meters/M-3/move-in", json={
        "account": {"id": "A-30", "tariff": "flat", "opening_balance": "30.00"}, "reading_wh": 5_500},
        headers=PROV)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["previous_account"], body["account"]["meters"], body["account"]["balance"]) == (
        "A-3", ["M-3"], "30.00")
    previous = (await client.get("/v1/accounts/A-3", headers=auth("viewer"))).json()
    assert previous["status"] == "closed" and previous["balance"] == "0.00"
    kinds = [(r.kind, r.amount_fen) for r in await rows(gateway, t.ledger, t.ledger.c.account_id == "A-3")]
    assert kinds == [("opening", 100), ("charge", -28), ("refund", -72)]
    await read(gateway, "M-3", 6_500, 10)  # the new account pays from 5,500 Wh on
    assert await charges(gateway, "A-30") == [(-56, 1_000)]
    assert gateway.catalog.meters["M-3"].account_id == "A-30"


ACCOUNTS_CSV = """id,tariff,opening_balance,credit_class,contacts
A-20,flat,20.00,B,
A-21,flat,-3.50,,"[{""name"": ""Li Na"", ""channel"": ""nowhere"", ""to"": ""+86138""}]"
A-22,nope,1.00,,
"""
METERS_CSV = """id,account,bus,unit_id,groups,poll_interval_s
M-20,A-20,b,20,street-1;feeder-2,30
M-21,A-21,b,21,,
M-22,A-22,b,1,,
"""


async def test_an_import_reports_every_bad_row_and_changes_nothing(gw: Any, tmp_path: Path) -> None:
    client, gateway = gw
    before = snapshot(tmp_path / "gw.db")
    csv = {"content-type": "text/csv"} | PROV
    answer = await client.post("/v1/fleet/import?kind=accounts", content=ACCOUNTS_CSV, headers=csv)
    assert answer.status_code == 409, answer.text
    errors = {(e["row"], e["field"]) for e in answer.json()["errors"]}
    assert errors == {(3, "contacts[0].channel"), (4, "tariff")}  # lines of the file (the header is line 1)
    assert snapshot(tmp_path / "gw.db") == before
    # partial: the good rows go in, the others are reported
    partial = await client.post("/v1/fleet/import?kind=accounts&partial=true", content=ACCOUNTS_CSV, headers=csv)
    assert partial.status_code == 200, partial.text
    assert partial.json()["accounts"] == {"created": 1, "changed": 0, "unchanged": 0}
    assert {e["row"] for e in partial.json()["errors"]} == {3, 4}
    meters = await client.post("/v1/fleet/import?kind=meters", content=METERS_CSV, headers=csv)
    assert meters.status_code == 409  # M-21's and M-22's accounts are missing; M-22 is also on M-1's unit
    assert {(e["row"], e["field"]) for e in meters.json()["errors"]} >= {(3, "account"), (4, "account")}
    good = "\n".join(METERS_CSV.splitlines()[:2]) + "\n"
    dry = await client.post("/v1/fleet/import?kind=meters&dry_run=true", content=good, headers=csv)
    assert dry.json()["meters"]["created"] == 1 and "M-20" not in gateway.catalog.meters
    assert (await client.post("/v1/fleet/import?kind=meters", content=good, headers=csv)).status_code == 200
    assert gateway.catalog.meters["M-20"].groups == ("street-1", "feeder-2")
    # the same file again changes nothing; a row that differs is a conflict
    again = await client.post("/v1/fleet/import?kind=meters", content=good, headers=csv)
    assert again.json()["meters"] == {"created": 0, "changed": 0, "unchanged": 1}
    moved = good.replace("M-20,A-20,b,20", "M-20,A-20,b,25")
    conflict = await client.post("/v1/fleet/import?kind=meters", content=moved, headers=csv)
    assert conflict.status_code == 409 and conflict.json()["errors"][0]["field"] == "unit_id"
    # with update, a row that differs changes what PATCH may change; another account is never one of those
    updated = await client.post("/v1/fleet/import?kind=meters&update=true", content=moved, headers=csv)
    assert updated.json()["meters"] == {"created": 0, "changed": 1, "unchanged": 0}, updated.text
    assert gateway.catalog.place_of(("b", 25)) == "M-20" and gateway.catalog.place_of(("b", 20)) is None
    other = moved.replace("M-20,A-20,", "M-20,A-1,")
    refused = await client.post("/v1/fleet/import?kind=meters&update=true", content=other, headers=csv)
    assert refused.status_code == 409 and refused.json()["errors"][0]["field"] == "account_id", refused.text
    warned = ACCOUNTS_CSV.splitlines()[0] + "\nA-20,flat,20.00,B,\n"
    assert (await client.post("/v1/fleet/import?kind=accounts&update=true", content=warned.replace(",B,", ",A,"),
                              headers=csv)).json()["accounts"]["changed"] == 1
    assert gateway.catalog.accounts["A-20"].credit_class == "A"


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
async def test_an_export_imports_into_another_instance_as_it_was(gw: Any, tmp_path: Path, fmt: str) -> None:
    client, gateway = gw
    await read(gateway, "M-1", 10_000, 0)
    await read(gateway, "M-1", 11_000, 10)  # A-1 now has 9.44
    assert (await client.post("/v1/accounts", json=NEW | {"contacts": [{"name": "Li", "channel": "sms", "to": "1"}]},
                              headers=PROV)).status_code == 409  # no channel "sms" on this site
    assert (await client.post("/v1/accounts", json=NEW, headers=PROV)).status_code == 201
    exported = {kind: (await client.get(f"/v1/fleet/export?kind={kind}&format={fmt}", headers=PROV)).text
                for kind in ("accounts", "meters")}
    assert "9.44" in exported["accounts"]  # the current balance, as the opening one elsewhere
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    settings = site(other_dir)
    settings.accounts.clear()
    settings.meters.clear()
    async with api_client(settings, other_dir) as (other, other_gw):
        kind_type = {"csv": "text/csv", "jsonl": "application/x-ndjson"}[fmt]
        for kind in ("accounts", "meters"):
            answer = await other.post(f"/v1/fleet/import?kind={kind}", content=exported[kind],
                                      headers={"content-type": kind_type} | PROV)
            assert answer.status_code == 200, answer.text
        again = {kind: (await other.get(f"/v1/fleet/export?kind={kind}&format={fmt}", headers=PROV)).text
                 for kind in ("accounts", "meters")}
        assert again == exported
        assert (await other.get("/v1/accounts/A-1", headers=auth("viewer"))).json()["balance"] == "9.44"


async def test_the_settings_seed_never_overwrites_the_database(tmp_path: Path, caplog: Any) -> None:
    settings = site(tmp_path)
    async with api_client(settings, tmp_path) as (client, _):
        assert (await client.patch("/v1/accounts/A-1", json={"warning1": "15.00"}, headers=PROV)).status_code == 200
    settings.accounts[0] = settings.accounts[0].model_copy(update={"warning1": 3000})
    settings.meters[2] = settings.meters[2].model_copy(update={"unit_id": 9})
    from gateway.bootstrap import Gateway

    async with Gateway(settings, base_dir=tmp_path, run_buses=False) as gateway:
        conflicts = await gateway.prepare_fleet()
        assert gateway.catalog.accounts["A-1"].thresholds.warning1_fen == 1500  # the database's
        assert gateway.catalog.meters["M-3"].unit_id == 3
    assert any("account A-1" in c and "warning1_fen" in c for c in conflicts)
    assert any("meter M-3" in c and "unit_id" in c for c in conflicts)
    assert "differ from the database" in caplog.text


async def test_an_instance_sees_the_changes_of_another_on_the_same_database(tmp_path: Path,
                                                                          db_url: str) -> None:
    settings = site(tmp_path)
    settings = settings.model_copy(update={"database": settings.database.model_copy(update={"url": db_url})})
    async with api_client(settings, tmp_path) as (client, first), api_client(settings, tmp_path) as (_, second):
        assert (await client.post("/v1/accounts", json=NEW, headers=PROV)).status_code == 201
        assert "M-10" not in second.catalog.meters
        assert await second.fleet.refresh()
        assert second.catalog.meters["M-10"].account_id == "A-10"
        assert not await second.fleet.refresh()  # nothing new since
        assert first.catalog.rev == second.catalog.rev


@pytest.mark.parametrize("body, kind, msg", [
    ("", "accounts", "the file is empty"),
    ("{}", "accounts", "the header's columns"),
    ("id,tariff,colour\nA-20,flat,red\n", "accounts", "unknown: colour"),
    ("bus,unit_id\nb,20\n", "meters", "id needed"),
])
async def test_a_csv_without_a_proper_header_is_refused(gw: Any, tmp_path: Path, body: str, kind: str,
                                                        msg: str) -> None:
    client, _ = gw
    before = snapshot(tmp_path / "gw.db")
    for partial in ("false", "true"):  # a file that can't be read is refused even where bad rows are left out
        answer = await client.post(f"/v1/fleet/import?kind={kind}&partial={partial}", content=body,
                                   headers={"content-type": "text/csv"} | PROV)
        assert answer.status_code == 409 and msg in answer.text, answer.text
    assert answer.json()["errors"][0]["row"] == 1
    assert snapshot(tmp_path / "gw.db") == before


async def test_a_meter_without_a_relay_joins_an_account_that_can_be_switched(gw: Any) -> None:
    client, gateway = gw
    sub = {"id": "M-1S", "account": "A-1", "bus": "b", "unit_id": 40, "model": "eastron-sdm120"}
    answer = await client.post("/v1/meters", json=sub, headers=PROV)
    assert answer.status_code == 201, answer.text
    assert gateway.catalog.accounts["A-1"].meter_ids == ("M-1", "M-1S")
    # ... but it can't replace the account's only switchable meter
    swap = {"new_meter": {"id": "M-1B", "bus": "b", "unit_id": 41, "model": "eastron-sdm120"}, "final_wh": 0,
            "initial_wh": 0}
    refused = await client.post("/v1/meters/M-1/swap", json=swap, headers=PROV)
    assert refused.status_code == 409 and refused.json()["errors"][0]["field"] == "model", refused.text


async def test_a_command_on_the_wire_refuses_a_change_of_its_meter(gw: Any, tmp_path: Path) -> None:
    client, gateway = gw
    queued = await client.post("/v1/meters/M-3/disconnect", json={"reason": "x"}, headers=auth("operator"))
    async with gateway.service.uow() as uow:
        await uow.execute(sa.update(t.commands).values(state="sent"))  # as the relay runner leaves it, waiting
        await uow.commit()
    before = snapshot(tmp_path / "gw.db")
    for path, body in (("/v1/meters/M-3/retire", {"final_wh": 0}),
                       ("/v1/meters/M-3/swap", {"new_meter": {"id": "M-3B", "bus": "b", "unit_id": 33},
                                                "final_wh": 0, "initial_wh": 0}),
                       ("/v1/accounts/A-3/close", {"final_readings": [{"meter_id": "M-3", "final_wh": 0}]})):
        answer = await client.post(path, json=body, headers=PROV)
        assert answer.status_code == 409 and "in progress" in answer.text, (path, answer.text)
    assert snapshot(tmp_path / "gw.db") == before
    assert queued.json()["command_id"] and "M-3" in gateway.catalog.meters


async def test_a_dlt645_meter_is_known_by_its_twelve_digit_address(tmp_path: Path) -> None:
    settings = site(tmp_path)
    settings.buses.append(settings.buses[0].model_copy(update={"id": "rs485", "protocol": "dlt645-tcp"}))
    async with api_client(settings, tmp_path) as (client, gateway):
        meter = {"id": "D-1", "account": "A-1", "bus": "rs485", "address": "12345"}
        answer = await client.post("/v1/meters", json=meter, headers=PROV)
        assert answer.status_code == 201, answer.text
        assert answer.json()["address"] == "000000012345"
        same = await client.post("/v1/meters", json=meter | {"id": "D-2", "address": "000000012345"}, headers=PROV)
        assert same.status_code == 409 and same.json()["errors"][0]["field"] == "address", same.text
        wrong = await client.post("/v1/meters", json=meter | {"id": "D-3", "address": None, "unit_id": 5},
                                  headers=PROV)
        assert wrong.status_code == 409 and {e["field"] for e in wrong.json()["errors"]} == {"unit_id", "address"}
        [row] = await rows(gateway, t.meters, t.meters.c.id == "D-1")
        assert (row.bus_id, row.address, row.unit_id) == ("rs485", "000000012345", None)


async def test_a_csv_that_breaks_off_is_refused_with_its_line(gw: Any) -> None:
    """A carriage return inside an unquoted cell (found by the fuzzer: it was a 500)."""
    client, _ = gw
    body = "id,account,bus,unit_id\nM-20,A-1,b,20\nM-21,A-1,b,\r21\n"
    for partial in ("false", "true"):
        answer = await client.post(f"/v1/fleet/import?kind=meters&partial={partial}", content=body,
                                   headers={"content-type": "text/csv"} | PROV)
        assert answer.status_code in (200, 409), answer.text
        assert any("not CSV" in e["msg"] for e in answer.json()["errors"]), answer.text
    weird = "$²ç3P¤Ài\U000f3b4d\x8eW»\r>M\x9dÆ"
    answer = await client.post("/v1/fleet/import?kind=meters&partial=true", content=weird.encode(),
                               headers={"content-type": "text/csv"} | PROV)
    assert answer.status_code == 409, answer.text


@pytest.mark.parametrize("when", ["0001-01-01T00:00:00-14:00", "9999-12-31T23:59:59+00:00", "2027-01-01T00:00:00"])
async def test_an_imported_tariff_change_needs_a_time_that_stays_usable(gw: Any, tmp_path: Path, when: str) -> None:
    client, _ = gw
    before = snapshot(tmp_path / "gw.db")
    body = f"id,tariff,tariff_next,tariff_next_at\nA-20,flat,dear,{when}\n"
    answer = await client.post("/v1/fleet/import?kind=accounts", content=body,
                               headers={"content-type": "text/csv"} | PROV)
    assert answer.status_code == 409 and answer.json()["errors"][0]["field"] == "tariff_next_at", answer.text
    assert snapshot(tmp_path / "gw.db") == before


@pytest.mark.parametrize("line", ['{"id": "A-20", "id": "A-21", "tariff": "flat"}',
                                  '{"id": "A-\\ud800", "tariff": "flat"}',
                                  '{"id": "A-20", "tariff": "flat", "opening_balance": NaN}'])
async def test_a_json_lines_row_is_read_as_strictly_as_an_api_body(gw: Any, tmp_path: Path, line: str) -> None:
    client, _ = gw
    before = snapshot(tmp_path / "gw.db")
    answer = await client.post("/v1/fleet/import?kind=accounts", content=line + "\n",
                               headers={"content-type": "application/x-ndjson"} | PROV)
    assert answer.status_code == 409 and "not JSON" in answer.text, answer.text
    assert snapshot(tmp_path / "gw.db") == before
