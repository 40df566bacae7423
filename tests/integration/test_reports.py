"""The daily reports through the API of a gateway on a real SQLite file and on PostgreSQL, with known data: each
report's rows and totals, its CSV equal to its JSON pages, pages that walk every row once, refused ranges and
cursors, and the roles that may read them."""

from __future__ import annotations

import csv
import datetime as dt
import io
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from drivers.base import Reading
from gateway.adapters import tables as t
from tests.integration.api_support import api_client, auth, on_database, site
from tests.support import SetClock

T0 = dt.datetime(2026, 11, 23, 0, 0, tzinfo=dt.UTC)
VIEW = auth("viewer")


@pytest.fixture(params=["sqlite", "postgresql"])
async def gw(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    async with api_client(on_database(site(tmp_path), request), tmp_path, clock=SetClock(T0)) as pair:
        yield pair


async def insert(gateway: Any, table: sa.Table, *rows: dict[str, Any]) -> None:
    async with gateway.service.uow() as uow:
        for row in rows:
            await uow.execute(sa.insert(table).values(**row))
        await uow.commit()


async def read(gateway: Any, meter_id: str, wh: int, at: dt.datetime) -> None:
    gateway.test_clock.now = at
    await gateway.service.record_reading(Reading(meter_id, at, wh))


async def pay(gateway: Any, payment_id: str, account_id: str, fen: int, at: dt.datetime, *, source: str = "billing",
              channel: str | None = None) -> None:
    gateway.test_clock.now = at
    await gateway.service.record_payment(source=source, payment_id=payment_id, account_id=account_id,
                                         amount_fen=fen, channel=channel)


async def report(client: httpx.AsyncClient, name: str, **params: Any) -> dict[str, Any]:
    answer = await client.get(f"/v1/reports/{name}", params=params, headers=VIEW)
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


async def walk(client: httpx.AsyncClient, name: str, limit: int, **params: Any) -> list[dict[str, Any]]:
    """Every row, ``limit`` to a page."""
    rows: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = await report(client, name, limit=limit, **params, **({"cursor": cursor} if cursor else {}))
        assert len(page["data"]) <= limit
        rows += page["data"]
        cursor = page["next_cursor"]
        if cursor is None:
            return rows


async def as_csv(client: httpx.AsyncClient, name: str, **params: Any) -> list[dict[str, str]]:
    answer = await client.get(f"/v1/reports/{name}", params={**params, "format": "csv"}, headers=VIEW)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/csv")
    return list(csv.DictReader(io.StringIO(answer.text)))


def cells(rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    """JSON rows as their CSV cells."""
    def cell(value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)
    return [{k: cell(v) for k, v in row.items()} for row in rows]


async def test_arrears_lists_accounts_below_the_threshold_since_when_and_their_last_payment(gw: Any) -> None:
    client, gateway = gw
    # A-1 opens at 10.00, A-2 at -5.00 (protected), A-3 at 1.00; all at T0
    await read(gateway, "M-3", 0, T0 + dt.timedelta(minutes=1))
    await read(gateway, "M-3", 5_000, T0 + dt.timedelta(hours=2))  # 5 kWh x 0.56: -2.80 -> -1.80
    await pay(gateway, "P-1", "A-3", 100, T0 + dt.timedelta(days=1), channel="alipay")  # -0.80, still below 0
    gateway.test_clock.now = now = T0 + dt.timedelta(days=3, hours=1)
    body = await report(client, "arrears")
    async with gateway.service.uow(readonly=True) as uow:
        supply = dict((await uow.execute(sa.select(t.accounts.c.id, t.accounts.c.supply))).all())
    assert body["data"] == [
        {"account_id": "A-2", "balance": "-5.00", "supply": supply["A-2"], "credit_class": None, "protected": True,
         "below_since": "2026-11-23T00:00:00Z", "days_in_arrears": 3, "last_payment_at": None,
         "last_payment": None},
        {"account_id": "A-3", "balance": "-0.80", "supply": supply["A-3"], "credit_class": None, "protected": False,
         "below_since": "2026-11-23T02:00:00Z", "days_in_arrears": 2, "last_payment_at": "2026-11-24T00:00:00Z",
         "last_payment": "1.00"}]
    assert body["totals"] == {"accounts": 2, "balance": "-5.80", "below": "0.00",
                              "as_of": now.isoformat().replace("+00:00", "Z")}
    assert body["next_cursor"] is None
    # another threshold: below -1.00 only A-2; below 20.00 all three, A-1 since its opening
    assert [r["account_id"] for r in (await report(client, "arrears", below="-1.00"))["data"]] == ["A-2"]
    every = await report(client, "arrears", below="20.00")
    assert [(r["account_id"], r["below_since"]) for r in every["data"]] == [
        ("A-1", "2026-11-23T00:00:00Z"), ("A-2", "2026-11-23T00:00:00Z"), ("A-3", "2026-11-23T00:00:00Z")]
    assert every["totals"]["balance"] == "4.20"
    # pages of one walk the same rows; the CSV has the same cells
    assert await walk(client, "arrears", 1, below="20.00") == every["data"]
    assert await as_csv(client, "arrears", below="20.00") == cells(every["data"])
    # a closed account is in no arrears list
    async with gateway.service.uow() as uow:
        await uow.execute(sa.update(t.accounts).where(t.accounts.c.id == "A-2").values(status="closed"))
        await uow.commit()
    closed = await report(client, "arrears")
    assert [r["account_id"] for r in closed["data"]] == ["A-3"] and closed["totals"]["accounts"] == 1


async def test_disconnections_with_their_reconnection_and_duration(gw: Any) -> None:
    client, gateway = gw
    day = T0 - dt.timedelta(days=2)

    def command(id: str, meter: str, action: str, state: str, at: dt.datetime, **more: Any) -> dict[str, Any]:
        return dict(id=id, meter_id=meter, action=action, origin=more.pop("origin", "automatic"),
                    operator=more.pop("operator", None), reason=more.pop("reason", "balance"), state=state,
                    created_at=at - dt.timedelta(seconds=30), updated_at=at, expires_at=at + dt.timedelta(minutes=9))

    await insert(gateway, t.commands,
                 command("c-early-close", "M-3", "close", "confirmed", day + dt.timedelta(hours=9)),
                 command("c-off", "M-3", "open", "confirmed", day + dt.timedelta(hours=10)),
                 command("c-on", "M-3", "close", "confirmed", day + dt.timedelta(hours=12)),
                 command("c-failed", "M-1", "open", "failed", day + dt.timedelta(hours=11)),
                 command("c-before", "M-1", "open", "confirmed", day - dt.timedelta(minutes=1)),
                 command("c-armed", "M-2", "close", "armed", day + dt.timedelta(hours=20)),
                 command("c-still", "M-2", "open", "confirmed", day + dt.timedelta(days=1, hours=8), origin="operator",
                         operator="Zhang Wei", reason='meter inspection, "urgent"\nby phone'))
    gateway.test_clock.now = T0 + dt.timedelta(hours=1)
    params = dict(since="2026-11-21T00:00:00Z", until="2026-11-23T00:00:00Z")
    body = await report(client, "disconnections", **params)
    assert body["data"] == [
        {"command_id": "c-off", "meter_id": "M-3", "account_id": "A-3", "origin": "automatic", "reason": "balance",
         "operator": None, "disconnected_at": "2026-11-21T10:00:00Z", "reconnected_at": "2026-11-21T12:00:00Z",
         "duration_s": 7200, "still_off": False},
        {"command_id": "c-still", "meter_id": "M-2", "account_id": "A-2", "origin": "operator",
         "reason": 'meter inspection, "urgent"\nby phone', "operator": "Zhang Wei",
         "disconnected_at": "2026-11-22T08:00:00Z",
         "reconnected_at": None, "duration_s": 17 * 3600, "still_off": True}]
    assert body["totals"]["disconnections"] == 2
    assert await walk(client, "disconnections", 1, **params) == body["data"]
    assert await as_csv(client, "disconnections", **params) == cells(body["data"])  # quoted, as RFC 4180 says
    # until defaults to now; a range that holds neither is empty
    assert len((await report(client, "disconnections", since="2026-11-21T00:00:00Z"))["data"]) == 2
    assert (await report(client, "disconnections", since="2026-11-22T09:00:00+08:00",  # 01:00Z
                         until="2026-11-22T07:59:59Z"))["data"] == []


async def test_payments_by_site_local_day_source_and_channel(gw: Any) -> None:
    client, gateway = gw  # the site's zone: Asia/Shanghai (UTC+8)
    await pay(gateway, "P-1", "A-1", 5000, dt.datetime(2026, 11, 23, 15, 30, tzinfo=dt.UTC), channel="alipay")
    await pay(gateway, "P-2", "A-1", 2000, dt.datetime(2026, 11, 23, 16, 30, tzinfo=dt.UTC), channel="alipay")
    await pay(gateway, "P-3", "A-2", 1000, dt.datetime(2026, 11, 23, 16, 40, tzinfo=dt.UTC), channel="wechat")
    await pay(gateway, "P-4", "A-3", 500, dt.datetime(2026, 11, 24, 2, 0, tzinfo=dt.UTC), source="collector")
    await pay(gateway, "P-5", "A-3", 700, dt.datetime(2026, 11, 25, 16, 0, tzinfo=dt.UTC))  # Nov 26 local
    gateway.test_clock.now = dt.datetime(2026, 11, 24, 3, 0, tzinfo=dt.UTC)
    await gateway.service.reverse_payment(source="collector", payment_id="P-4", reason="bounced")
    params = dict(since="2026-11-23", until="2026-11-25")
    body = await report(client, "payments", **params)

    def row(day: str, source: str, channel: str | None, count: int, total: str, rc: int, rt: str, net: str
            ) -> dict[str, Any]:
        return {"day": day, "source": source, "channel": channel, "count": count, "total": total,
                "reversed_count": rc, "reversed_total": rt, "net": net}

    assert body["data"] == [row("2026-11-23", "billing", "alipay", 1, "50.00", 0, "0.00", "50.00"),
                            row("2026-11-24", "billing", "alipay", 1, "20.00", 0, "0.00", "20.00"),
                            row("2026-11-24", "billing", "wechat", 1, "10.00", 0, "0.00", "10.00"),
                            row("2026-11-24", "collector", None, 1, "5.00", 1, "5.00", "0.00")]
    assert body["totals"] == {"count": 4, "total": "85.00", "reversed_count": 1, "reversed_total": "5.00",
                              "net": "80.00", "since": "2026-11-23", "until": "2026-11-25",
                              "time_zone": "Asia/Shanghai"}
    for limit in (1, 2, 3):
        assert await walk(client, "payments", limit, **params) == body["data"]
    assert await as_csv(client, "payments", **params) == cells(body["data"])
    assert [r["day"] for r in (await report(client, "payments", since="2026-11-26", until="2026-11-26"))["data"]
            ] == ["2026-11-26"]


async def test_reading_timeliness_per_bus_and_day(gw: Any) -> None:
    client, gateway = gw

    def day(bus: str, day: str, meters: int, read: int, on_time: int, ok: int, failed: int) -> dict[str, Any]:
        return dict(bus_id=bus, day=day, meters=meters, read=read, on_time=on_time, polls_ok=ok, polls_failed=failed,
                    updated_at=T0)

    await insert(gateway, t.reading_days, day("b", "2026-11-22", 10, 9, 8, 1000, 20),
                 day("b", "2026-11-23", 10, 10, 10, 1100, 0), day("c", "2026-11-23", 4, 3, 2, 300, 40),
                 day("c", "2026-11-21", 4, 4, 4, 400, 0), day("z", "2026-11-24", 0, 0, 0, 0, 0))
    params = dict(since="2026-11-22", until="2026-11-24")
    body = await report(client, "reading-timeliness", **params)
    assert [(r["day"], r["bus"], r["meters"], r["read"], r["read_share"], r["on_time"], r["on_time_share"],
             r["polls_ok"], r["polls_failed"]) for r in body["data"]] == [
        ("2026-11-22", "b", 10, 9, 0.9, 8, 0.8, 1000, 20), ("2026-11-23", "b", 10, 10, 1.0, 10, 1.0, 1100, 0),
        ("2026-11-23", "c", 4, 3, 0.75, 2, 0.5, 300, 40), ("2026-11-24", "z", 0, 0, None, 0, None, 0, 0)]
    assert body["totals"] == {"meters": 24, "read": 22, "read_share": 0.9167, "on_time": 20,
                              "on_time_share": 0.8333, "polls_ok": 2400, "polls_failed": 60,
                              "since": "2026-11-22", "until": "2026-11-24", "time_zone": "Asia/Shanghai"}
    assert await walk(client, "reading-timeliness", 1, **params) == body["data"]
    assert await as_csv(client, "reading-timeliness", **params) == cells(body["data"])
    only_c = await report(client, "reading-timeliness", bus="c", **params)
    assert [(r["day"], r["bus"]) for r in only_c["data"]] == [("2026-11-23", "c")]
    assert only_c["totals"]["read_share"] == 0.75


async def test_consumption_per_account_and_billing_period(gw: Any) -> None:
    client, gateway = gw
    local = dt.timezone(dt.timedelta(hours=8))
    await read(gateway, "M-3", 0, T0 + dt.timedelta(minutes=1))
    await read(gateway, "M-3", 5_000, T0 + dt.timedelta(hours=2))
    await read(gateway, "M-1", 0, T0 + dt.timedelta(minutes=1))
    await read(gateway, "M-1", 1_000, dt.datetime(2026, 11, 30, 23, 0, tzinfo=local))
    await read(gateway, "M-1", 3_000, dt.datetime(2026, 12, 2, 12, 0, tzinfo=local))
    body = await report(client, "consumption")
    async with gateway.service.uow(readonly=True) as uow:  # the ledger's charges, grouped here
        charges = (await uow.execute(sa.select(t.ledger).where(t.ledger.c.kind == "charge"))).all()
    expected: dict[tuple[str, str], list[int]] = {}
    for c in charges:
        sums = expected.setdefault((c.account_id, c.period), [0, 0, 0])
        sums[0] += c.energy_wh
        sums[1] -= c.amount_fen
        sums[2] += 1
    assert [(r["account_id"], r["period"], r["energy_wh"], r["charges"], r["entries"]) for r in body["data"]] == [
        (a, p, e, f"{fen // 100}.{fen % 100:02d}", n) for (a, p), (e, fen, n) in sorted(expected.items())]
    assert ("A-3", "2026-11", 5_000, "2.80", 1) in [(r["account_id"], r["period"], r["energy_wh"], r["charges"],
                                                    r["entries"]) for r in body["data"]]
    assert {r["period"] for r in body["data"] if r["account_id"] == "A-1"} == {"2026-11", "2026-12"}
    assert sum(r["energy_wh"] for r in body["data"] if r["account_id"] == "A-1") == 3_000
    assert body["totals"] == {"accounts": 2, "energy_wh": 8_000,
                              "charges": f"{sum(-c.amount_fen for c in charges) / 100:.2f}"}
    assert await walk(client, "consumption", 1) == body["data"]
    assert await as_csv(client, "consumption") == cells(body["data"])
    one = await report(client, "consumption", account_id="A-1", period="2026-12")
    assert [(r["account_id"], r["period"]) for r in one["data"]] == [("A-1", "2026-12")]
    # charges made in a range: the reading of Dec 2 billed the rest of November and the start of December
    since = await report(client, "consumption", since="2026-12-01T00:00:00Z", until="2026-12-31T00:00:00Z")
    assert {(r["account_id"], r["period"]) for r in since["data"]} == {("A-1", "2026-11"), ("A-1", "2026-12")}
    assert since["totals"]["energy_wh"] == 2_000


@pytest.mark.parametrize("name, params, detail", [
    ("disconnections", dict(since="2026-11-23T00:00:00Z", until="2026-11-22T00:00:00Z"), "empty"),
    ("disconnections", dict(since="2025-11-01T00:00:00Z", until="2026-11-23T00:00:00Z"), "366 days"),
    ("payments", dict(since="2026-11-23", until="2026-11-22"), "empty"),
    ("payments", dict(since="2025-11-22", until="2026-11-23"), "366 days"),
    ("payments", dict(since="2026-02-30", until="2026-03-02"), "calendar"),
    ("reading-timeliness", dict(since="2025-01-01", until="2026-01-02"), "366 days"),
    ("consumption", dict(since="2025-01-01T00:00:00Z", until="2026-11-23T00:00:00Z"), "366 days"),
    ("arrears", dict(cursor="bm90LWEtY3Vyc29y"), "cursor"),
    ("payments", dict(since="2026-11-23", until="2026-11-23", cursor="WyJhcnJlYXJzIiwiQS0xIl0"), "cursor"),
])
async def test_refused_ranges_and_cursors(gw: Any, name: str, params: dict[str, str], detail: str) -> None:
    client, _ = gw
    for format in ("json", "csv"):
        answer = await client.get(f"/v1/reports/{name}", params={**params, "format": format}, headers=VIEW)
        assert answer.status_code == 409, answer.text
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.json()["type"].endswith(":report-refused") and detail in answer.json()["detail"]


async def test_malformed_parameters_are_validation_errors(gw: Any) -> None:
    client, _ = gw
    for name, params in (("payments", dict(until="2026-11-23")), ("payments", dict(since="23.11.2026",
                                                                                    until="2026-11-23")),
                         ("arrears", dict(below="1.234")), ("arrears", dict(format="xlsx")),
                         ("disconnections", dict(since="2026-11-23T00:00:00")), ("arrears", dict(limit="0"))):
        answer = await client.get(f"/v1/reports/{name}", params=params, headers=VIEW)
        assert answer.status_code == 422, (name, params, answer.text)


@pytest.mark.parametrize("role", ["viewer", "billing", "operator", "provisioning", "admin"])
async def test_every_role_reads_reports_and_no_key_none(gw: Any, role: str) -> None:
    client, _ = gw
    url = "/v1/reports/payments?since=2026-11-23&until=2026-11-23"
    assert (await client.get(url, headers=auth(role))).status_code == 200
    assert (await client.get(url)).status_code == 401
    assert (await client.get(url, headers={"Authorization": "Bearer nope"})).status_code == 401


async def test_csv_text_a_spreadsheet_would_run_is_escaped_and_amounts_stay_numbers(gw: Any) -> None:
    client, gateway = gw
    at = T0 - dt.timedelta(hours=2)
    reasons = ['=HYPERLINK("http://x","pay")', "+1 2", "-cmd", "@SUM(A1)", "\tx", "plain", "-12.34"]
    await insert(gateway, t.commands, *[
        dict(id=f"c-{n}", meter_id="M-3", action="open", origin="operator", operator="=op", reason=reason,
             state="confirmed", created_at=at + dt.timedelta(minutes=n), updated_at=at + dt.timedelta(minutes=n),
             expires_at=at + dt.timedelta(minutes=n + 9)) for n, reason in enumerate(reasons)])
    rows = await as_csv(client, "disconnections", since="2026-11-22T00:00:00Z")
    assert [(r["reason"], r["operator"]) for r in rows] == [
        ("\'=HYPERLINK(\"http://x\",\"pay\")", "'=op"), ("'+1 2", "'=op"), ("'-cmd", "'=op"), ("'@SUM(A1)", "'=op"),
        ("'\tx", "'=op"), ("plain", "'=op"), ("-12.34", "'=op")]
    # the same report as JSON: the text as stored
    body = await report(client, "disconnections", since="2026-11-22T00:00:00Z")
    assert [r["reason"] for r in body["data"]] == reasons
    arrears = await as_csv(client, "arrears", below="1000.00")
    assert any(r["balance"].startswith("-") and r["balance"][1:2].isdigit() for r in arrears)  # a number still
