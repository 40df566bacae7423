"""The API's contract at its edge: strict input, authority that matches money, keys, problem types, and an API
document that says every status each route can answer."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.api.problems import PROBLEM, PROBLEM_TYPES
from tests.integration.api_support import api_client, auth, site

ROOT = Path(__file__).resolve().parents[2]
PAY = {"source": "billing", "payment_id": "P-1", "account_id": "A-1", "amount": "5.00"}


@pytest.fixture
async def client(tmp_path: Path):
    async with api_client(site(tmp_path), tmp_path) as (c, _):
        yield c


@pytest.fixture
async def gw_client(tmp_path: Path):
    async with api_client(site(tmp_path), tmp_path) as pair:
        yield pair


# --- strict input ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("amount", ["５.00", "٥.00", "+5", "5.", ".5", "05.00", "5.00 ", "5e0", "0x5", 5, 5.0,
                                    "1,000", "\u0665"])
async def test_amounts_are_canonical_ascii_decimals(client: httpx.AsyncClient, amount: Any) -> None:
    response = await client.post("/v1/payments", json={**PAY, "amount": amount}, headers=auth("billing"))
    assert response.status_code == 422, (amount, response.text)


@pytest.mark.parametrize("paid_at", ["0001-01-01T00:00:00+14:00", "5138-11-16T09:46:40Z", "9999-12-31T23:59:59-14:00",
                                    "2026-11-23T08:00:00", "2026-11-23", "2026-02-30T00:00:00Z", "1700000000",
                                    "2026-11-23T08:00:00+15:00", "2026-11-23 08:00:00Z"])
async def test_timestamps_are_bounded_and_aware(client: httpx.AsyncClient, paid_at: str) -> None:
    response = await client.post("/v1/payments", json={**PAY, "paid_at": paid_at}, headers=auth("billing"))
    assert response.status_code == 422, (paid_at, response.text)


async def test_a_timestamp_with_an_offset_is_answered_in_utc(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/payments", json={**PAY, "paid_at": "2026-11-23T16:00:00+08:00"},
                                 headers=auth("billing"))
    assert response.status_code == 201, response.text
    assert response.json()["paid_at"] == "2026-11-23T08:00:00Z"


@pytest.mark.parametrize("body", [
    '{"source": "billing", "source": "billing", "payment_id": "P-1", "account_id": "A-1", "amount": "5.00"}',
    '{"source": "billing", "payment_id": "P-1", "account_id": "A-1", "amount": "5.00", "paid_at": NaN}',
    '{"source": "bil\\ud800ling", "payment_id": "P-1", "account_id": "A-1", "amount": "5.00"}',
    b'{"source": "bil\xffling", "payment_id": "P-1", "account_id": "A-1", "amount": "5.00"}',
    '{"source": "billing", "payment_id": "P-1", "account_id": "A-1", "amount": "5.00", "extra": 1}',
    '{"source": "billing", "payment_id": "P-1\\u0000", "account_id": "A-1", "amount": "5.00"}',
    '{"source": " billing", "payment_id": "P-1", "account_id": "A-1", "amount": "5.00"}',
    '[1, 2]',
])
async def test_bodies_are_parsed_strictly(client: httpx.AsyncClient, body: str | bytes) -> None:
    content = body.encode() if isinstance(body, str) else body
    response = await client.post("/v1/payments", content=content,
                                 headers={**auth("billing"), "Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["type"].endswith(":validation-error")


@pytest.mark.parametrize("flag", [0.0, 0, 1, "true", None])
async def test_booleans_are_booleans(client: httpx.AsyncClient, flag: Any) -> None:
    response = await client.put("/v1/accounts/A-1/protection", json={"protected": flag, "reason": "x"},
                                headers=auth("admin"))
    assert response.status_code == 422, (flag, response.text)


@pytest.mark.parametrize("url", ["/v1/accounts/A-1/ledger?before_id=18446744073709551617",
                                 "/v1/meters/M-1/readings?before_id=9223372036854775808",
                                 "/v1/accounts/A-1/ledger?before_id=0",
                                 "/v1/commands?before=9999-12-31T23:59:59-14:00",
                                 "/v1/commands?before=0001-01-01T00:00:00Z",
                                 "/v1/commands?state=exploded",
                                 "/v1/accounts/A-1/ledger?limit=1001"])
async def test_query_values_are_bounded(client: httpx.AsyncClient, url: str) -> None:
    response = await client.get(url, headers=auth("viewer"))
    assert response.status_code == 422, (url, response.text)


async def test_largest_row_id_is_fine(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/accounts/A-1/ledger?before_id=9223372036854775807", headers=auth("viewer"))
    assert response.status_code == 200 and len(response.json()["data"]) == 1


async def test_a_payment_id_with_a_slash_is_its_own_payment(client: httpx.AsyncClient) -> None:
    """(source, payment_id) is a pair: "col" + "x/y" is not "col/x" + "y" (a source has no "/")."""
    one = await client.post("/v1/payments", json={**PAY, "source": "col", "payment_id": "x/y"},
                            headers=auth("billing"))
    assert one.status_code == 201, one.text
    assert (await client.post("/v1/payments", json={**PAY, "source": "col/x", "payment_id": "y"},
                              headers=auth("billing"))).status_code == 422
    other = await client.post("/v1/payments", json={**PAY, "source": "col", "payment_id": "x"},
                              headers=auth("billing"))
    assert other.status_code == 201
    reversed_ = await client.post("/v1/payments/col/x/y/reversal", json={"reason": "bounced"},
                                  headers=auth("billing"))
    assert reversed_.status_code == 201, reversed_.text
    assert (reversed_.json()["payment_id"], reversed_.json()["balance"]) == ("x/y", "15.00")
    ledger = (await client.get("/v1/accounts/A-1/ledger", headers=auth("viewer"))).json()["data"]
    assert [(e["kind"], e["payment_source"], e["payment_id"]) for e in ledger[:3]] == [
        ("reversal", "col", "x/y"), ("payment", "col", "x"), ("payment", "col", "x/y")]


# --- authority ---------------------------------------------------------------------------------------------------
async def test_emergency_credit_beyond_the_site_amount_needs_admin(client: httpx.AsyncClient) -> None:
    too_much = {"amount": "10000.00", "reason": "x"}
    response = await client.post("/v1/accounts/A-1/emergency-credit", json=too_much, headers=auth("operator"))
    assert response.status_code == 422  # above the site's maximum per payment for anybody
    response = await client.post("/v1/accounts/A-1/emergency-credit", json={"amount": "10.01", "reason": "x"},
                                 headers=auth("operator"))
    assert response.status_code == 403 and response.json()["type"].endswith(":authority-exceeded")
    response = await client.post("/v1/accounts/A-1/emergency-credit", json={"amount": "10.00", "reason": "x"},
                                 headers=auth("operator"))
    assert response.status_code == 200 and response.json()["balance"] == "20.00"
    response = await client.post("/v1/accounts/A-3/emergency-credit", json={"amount": "500.00", "reason": "x"},
                                 headers=auth("admin"))
    assert response.status_code == 200 and response.json()["balance"] == "501.00"


async def test_billing_keys_bound_to_sources(client: httpx.AsyncClient) -> None:
    other = await client.post("/v1/payments", json=PAY, headers=auth("collector"))
    assert other.status_code == 403 and response_type(other) == "authority-exceeded"
    own = await client.post("/v1/payments", json={**PAY, "source": "collector"}, headers=auth("collector"))
    assert own.status_code == 201 and own.json()["recorded_by"] == "collector-key"
    assert (await client.post("/v1/payments", json=PAY, headers=auth("billing"))).status_code == 201
    refused = await client.post("/v1/payments/billing/P-1/reversal", json={"reason": "x"}, headers=auth("collector"))
    assert refused.status_code == 403
    done = await client.post("/v1/payments/collector/P-1/reversal", json={"reason": "x"}, headers=auth("collector"))
    assert done.status_code == 201 and done.json()["reversed_by"] == "collector-key"


async def test_the_audit_names_the_key_whatever_the_body_says(gw_client: Any) -> None:
    client, gw = gw_client
    response = await client.post("/v1/meters/M-1/disconnect", json={"reason": "x", "operator": "admin-key"},
                                 headers=auth("operator"))
    assert response.status_code == 202
    assert (await client.post("/v1/payments", json=PAY, headers=auth("billing"))).status_code == 201
    assert (await client.post("/v1/payments/billing/P-1/reversal", json={"reason": "x"},
                              headers=auth("billing"))).status_code == 201
    import sqlalchemy as sa

    from gateway.adapters import tables as t

    async with gw.service.uow(readonly=True) as uow:
        rows = (await uow.execute(sa.select(t.audit_log.c.actor, t.audit_log.c.action, t.audit_log.c.detail)
                                  .where(t.audit_log.c.actor.notin_(("gateway", "settings"))))).all()  # (the seed)
    assert {(r.actor, r.action) for r in rows} == {("operator-key", "command.open"), ("billing-key", "payment.reverse")}
    command = next(r for r in rows if r.action == "command.open")
    assert command.detail["operator"] == "admin-key"  # what the body claimed, recorded as a claim


async def test_an_operator_hold_is_bounded(client: httpx.AsyncClient) -> None:
    week = {"until": "2099-01-01T00:00:00Z", "reason": "x"}
    assert (await client.put("/v1/accounts/A-1/hold", json=week, headers=auth("operator"))).status_code == 403
    assert (await client.put("/v1/accounts/A-1/hold", json=week, headers=auth("admin"))).status_code == 200


# --- keys --------------------------------------------------------------------------------------------------------
async def test_failed_authentications_are_limited(tmp_path: Path) -> None:
    async with api_client(site(tmp_path, failed_auth_limit=3, failed_auth_window_s=60), tmp_path) as (client, _):
        for _ in range(3):
            assert (await client.get("/v1/accounts/A-1", headers={"Authorization": "Bearer nope"})).status_code == 401
        locked = await client.get("/v1/accounts/A-1", headers=auth("viewer"))  # even with a good key
        assert locked.status_code == 429
        assert 0 < int(locked.headers["retry-after"]) <= 60
        assert locked.json()["type"].endswith(":too-many-failed-authentications")


def test_the_limiter_forgets_after_its_window() -> None:
    from gateway.api.security import FailedAuthLimiter

    now = [0.0]
    limiter = FailedAuthLimiter(limit=2, window_s=10, max_clients=2, clock=lambda: now[0])
    limiter.failed("a")
    assert limiter.retry_after("a") is None
    limiter.failed("a")
    assert limiter.retry_after("a") == 10
    now[0] = 9.5
    assert limiter.retry_after("a") == 1
    now[0] = 10.0
    assert limiter.retry_after("a") is None
    for client in "bcd":  # the table stays bounded
        limiter.failed(client)
    assert len(limiter._clients) == 2


async def test_stored_keys_are_read_in_bulk_not_per_request(gw_client: Any) -> None:
    client, gw = gw_client
    import datetime as dt

    import sqlalchemy as sa

    from gateway.adapters import tables as t
    from gateway.settings import hash_key

    async with gw.service.uow() as uow:
        await uow.execute(sa.insert(t.api_keys).values(name="erp", sha256=hash_key("k-erp"), role="viewer",
                                                       created_at=dt.datetime.now(dt.UTC), sources=None))
        await uow.commit()
    keys = client._transport.app.state.keys  # type: ignore[attr-defined]
    for _ in range(50):
        assert (await client.get("/v1/accounts/A-1", headers={"Authorization": "Bearer k-erp"})).status_code == 200
        assert (await client.get("/v1/accounts/A-1", headers=auth("viewer"))).status_code == 200
    assert keys.loads == 1


async def test_answers_are_not_cached(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/accounts/A-1", headers=auth("viewer"))
    assert response.headers["cache-control"] == "no-store"
    assert (await client.get("/v1/accounts/A-1")).headers["cache-control"] == "no-store"


async def test_a_large_body_is_refused_unread(client: httpx.AsyncClient) -> None:
    body = b'{"reason": "' + b"x" * 2_000_000 + b'"}'
    response = await client.post("/v1/meters/M-1/disconnect", content=body,
                                 headers={**auth("operator"), "Content-Type": "application/json"})
    assert response.status_code == 413
    assert response.json()["type"].endswith(":content-too-large")

    async def chunks():  # no Content-Length: counted as it arrives
        yield b'{"reason": "'
        for _ in range(40):
            yield b"x" * 65_536
        yield b'"}'

    response = await client.post("/v1/meters/M-1/disconnect", content=chunks(),
                                 headers={**auth("operator"), "Content-Type": "application/json"})
    assert response.status_code == 413
    assert response.json()["type"].endswith(":content-too-large")


def response_type(response: httpx.Response) -> str:
    return str(response.json()["type"]).rsplit(":", 1)[-1]


# --- the API document --------------------------------------------------------------------------------------------
async def test_the_document_lists_problems_as_problem_json(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/openapi.json")).json()
    assert "Problem" in doc["components"]["schemas"] and "HTTPValidationError" not in doc["components"]["schemas"]
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            where = f"{method.upper()} {path}"
            codes = set(operation["responses"])
            for code, answer in operation["responses"].items():
                if int(code) >= 400:
                    assert list(answer["content"]) == [PROBLEM], where
                    assert answer["content"][PROBLEM]["examples"], where
            if path.startswith("/v1/"):
                assert {"401", "403", "422", "429", "500"} <= codes, where
                assert operation["security"] == [{"HTTPBearer": []}], where
            if "{" in path:
                assert "404" in codes, where
            if "requestBody" in operation:
                assert "413" in codes, where
                content = operation["requestBody"]["content"]
                assert content and all(kind["schema"] for kind in content.values()), where
            assert _has_example(doc, operation), f"{where} has no example"


def _has_example(doc: dict[str, Any], operation: dict[str, Any]) -> bool:
    success = [a for c, a in operation["responses"].items() if c.startswith("2")]
    for answer in success:
        for content in answer.get("content", {}).values():  # JSON, or text (/metrics)
            schema = content.get("schema", {})
            ref = schema.get("$ref", "")
            if ref and "examples" in doc["components"]["schemas"][ref.rsplit("/", 1)[-1]]:
                return True
            if "examples" in schema or "example" in content:
                return True
    return not any("examples" not in p.get("schema", p) for p in operation.get("parameters", [])) and bool(
        operation.get("parameters"))


async def test_the_document_carries_the_site_maximum(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/openapi.json")).json()
    pattern = doc["components"]["schemas"]["PaymentCreate"]["properties"]["amount"]["pattern"]
    for ok in ("0.01", "1", "999.99", "1000", "1000.0", "1000.00", "12.5"):
        assert re.fullmatch(pattern, ok), ok
    for bad in ("0", "0.00", "1000.01", "1001", "05", "5.", "-1"):
        assert not re.fullmatch(pattern, bad), bad


def test_every_problem_type_is_documented() -> None:
    text = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    for slug, kind in PROBLEM_TYPES.items():
        assert f"`{kind.uri}`" in text, f"docs/api.md does not list {slug}"


async def test_the_docs_pages_use_local_assets_only(client: httpx.AsyncClient) -> None:
    for page in ("/docs", "/redoc"):
        html = (await client.get(page)).text
        sources = re.findall(r'(?:src|href)="([^"]+)"', html) + re.findall(r"url: '([^']+)'", html)
        assert sources, page
        for source in sources:
            assert source.startswith("/"), f"{page} loads {source}"
            assert (await client.get(source)).status_code == 200, source
