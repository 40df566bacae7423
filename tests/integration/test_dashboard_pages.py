"""The dashboard's pages in process (httpx over ASGI, a real SQLite file): sign-in and sessions, CSRF and roles on
every action (a refused post changes nothing), the actions through the API's own rules, both languages."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import httpx
import pytest

from drivers.base import Reading
from gateway.api.dashboard.actions import ACTIONS
from gateway.api.dashboard.session import COOKIE
from gateway.api.dashboard.web import ACTION_ROLES
from tests.integration.api_support import KEYS, api_client, site, snapshot

PAGES = ("/ui/", "/ui/accounts", "/ui/meters", "/ui/accounts/A-1", "/ui/meters/M-1", "/ui/alarms",
         "/ui/accounts?sort=balance&order=desc&q=A-", "/ui/meters?state=unknown&sort=health",
         "/ui/meters/M-1?span=day", "/ui/accounts/A-2?span=month")


async def sign_in(c: httpx.AsyncClient, role: str) -> None:
    c.headers["Accept-Language"] = "en-GB,en;q=0.8"
    answer = await c.post("/ui/login", data={"key": KEYS[role], "next": "/ui/meters/M-1"})
    assert answer.status_code == 303 and answer.headers["location"] == "/ui/meters/M-1"
    cookie = answer.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/ui" in cookie
    assert KEYS[role] not in cookie  # the key itself is never in the cookie


def csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no CSRF token on the page"
    return found.group(1)


async def test_pages_need_a_session_and_a_known_key(tmp_path: Path) -> None:
    async with api_client(site(tmp_path), tmp_path) as (c, _):
        c.headers["Accept-Language"] = "en"
        answer = await c.get("/ui/accounts?q=A")
        assert answer.status_code == 303 and answer.headers["location"].startswith("/ui/login?next=%2Fui%2Faccounts")
        assert (await c.get("/")).headers["location"] == "/ui/"
        wrong = await c.post("/ui/login", data={"key": "not-a-key"})
        assert wrong.status_code == 401 and "Unknown API key" in wrong.text and COOKIE not in c.cookies
        c.cookies.set(COOKIE, "0" * 64 + ".1.x.forged", domain="gw", path="/ui")
        assert (await c.get("/ui/")).status_code == 303  # a forged cookie is no session
        assert (await c.get("/ui/events")).status_code == 401
        c.cookies.clear()
        await sign_in(c, "viewer")
        assert (await c.get("/ui/")).status_code == 200
        # a login's next is never another site
        away = await c.post("/ui/login", data={"key": KEYS["viewer"], "next": "//evil.example/"})
        assert away.headers["location"] == "/ui/"
        # nor does another site sign the browser in (to a session of its choosing)
        c.cookies.clear()
        planted = await c.post("/ui/login", data={"key": KEYS["viewer"]}, headers={"Origin": "https://evil.example"})
        assert planted.status_code == 403 and COOKIE not in c.cookies
        same = await c.post("/ui/login", data={"key": KEYS["viewer"]}, headers={"Origin": "http://gw"})
        assert same.status_code == 303


@pytest.mark.parametrize("role", ["viewer", "operator", "admin", "provisioning", "billing"])
async def test_every_page_answers_for_every_role_in_both_languages(tmp_path: Path, role: str) -> None:
    async with api_client(site(tmp_path), tmp_path) as (c, _):
        await sign_in(c, role)
        for lang, word in (("en", "Overview"), ("zh", "总览")):
            assert (await c.get(f"/ui/lang/{lang}?next=/ui/")).cookies.get("mg_lang") == lang
            for path in PAGES:
                page = await c.get(path)
                assert page.status_code == 200, (path, page.text[:300])
                assert word in page.text and f'lang="{"zh-CN" if lang == "zh" else "en"}"' in page.text
                assert page.headers["content-security-policy"].startswith("default-src 'self'")
                # the buttons a role may use, and only those
                for name, action in ACTIONS.items():
                    shown = f"/ui/act/{name}/" in page.text
                    allowed = role == "admin" or role in ACTION_ROLES[name]
                    if shown:
                        assert allowed, (role, name, path)
                if path == "/ui/meters/M-1":  # and the buttons are there for who may use them
                    assert ("/ui/act/disconnect/M-1" in page.text) == (role in ("operator", "admin"))
                    assert ("/ui/act/swap/M-1" in page.text) == (role in ("provisioning", "admin"))


async def test_a_refused_post_changes_nothing(tmp_path: Path) -> None:
    async with api_client(site(tmp_path), tmp_path) as (c, _):
        await sign_in(c, "viewer")
        token = csrf((await c.get("/ui/")).text)
        before = snapshot(tmp_path / "gw.db")
        # a viewer, with a valid token: the role may not
        answer = await c.post("/ui/act/disconnect/M-1", data={"csrf": token, "reason": "test"})
        assert answer.status_code == 403
        assert (await c.get("/ui/act/disconnect/M-1")).status_code == 403
        c.cookies.clear()
        await sign_in(c, "operator")
        # an operator without the token, with another session's token, with a token of nothing
        for forged in ({}, {"csrf": token}, {"csrf": ""}):
            answer = await c.post("/ui/act/disconnect/M-1", data={**forged, "reason": "forged"})
            assert answer.status_code == 403, forged
        # an operator with the token, from a page of another site
        token = csrf((await c.get("/ui/")).text)
        answer = await c.post("/ui/act/disconnect/M-1", data={"csrf": token, "reason": "x"},
                              headers={"Origin": "https://evil.example"})
        assert answer.status_code == 403
        # an operator with the token but bad input: no reason, a reason of control characters, an unknown meter,
        # an amount out of range, a hold in the past, an action that is admin's
        token = csrf((await c.get("/ui/")).text)
        for path, form, status in (("/ui/act/disconnect/M-1", {"reason": ""}, 422),
                                   ("/ui/act/disconnect/M-1", {"reason": "\x00\x01"}, 422),
                                   ("/ui/act/disconnect/M-9", {"reason": "x"}, 404),
                                   ("/ui/act/emergency-credit/A-1", {"reason": "x", "amount": "1e9"}, 422),
                                   ("/ui/act/hold/A-1", {"reason": "x", "until": "2001-01-01T00:00"}, 409),
                                   ("/ui/act/hold/A-1", {"reason": "x", "until": "tomorrow"}, 422),
                                   ("/ui/act/accept/M-1", {"reason": "x", "energy_wh": "-5"}, 422),
                                   ("/ui/act/protect/A-1", {"reason": "x"}, 403),
                                   ("/ui/act/resolve/99", {"reason": "x"}, 404),
                                   ("/ui/act/nothing/M-1", {"reason": "x"}, 404)):
            answer = await c.post(path, data={"csrf": token, **form})
            assert answer.status_code == status, (path, form, answer.status_code, answer.text[-600:])
        assert snapshot(tmp_path / "gw.db") == before


async def test_actions_go_through_the_apis_rules(tmp_path: Path) -> None:
    async with api_client(site(tmp_path), tmp_path) as (c, gw):
        await sign_in(c, "operator")
        confirm = await c.get("/ui/act/disconnect/M-2")  # A-2 is protected: the guardrail says so before
        assert confirm.status_code == 200 and 'class="verdict error"' in confirm.text
        token = csrf(confirm.text)
        refused = await c.post("/ui/act/disconnect/M-2", data={"csrf": token, "reason": "try"})
        assert refused.status_code == 403 and "protected" in refused.text
        done = await c.post("/ui/act/disconnect/M-1", data={"csrf": token, "reason": "meter inspection"})
        assert done.status_code == 303 and done.headers["location"] == "/ui/meters/M-1"
        page = await c.get("/ui/meters/M-1")
        command = re.search(r"Command ([0-9a-f-]{36}) queued", page.text) or re.search(
            r"命令 ([0-9a-f-]{36}) 已排队", page.text)
        assert command, page.text[:2000]
        stored = await c.get(f"/v1/commands/{command.group(1)}", headers={"Authorization": f"Bearer {KEYS['viewer']}"})
        assert stored.json()["action"] == "open" and stored.json()["reason"] == "meter inspection"
        assert stored.json()["operator"] == "operator-key"
        # emergency credit above the site's amount needs admin, as in the API
        over = await c.post("/ui/act/emergency-credit/A-1", data={"csrf": token, "reason": "x", "amount": "50.00"})
        assert over.status_code == 403 and "admin" in over.text
        granted = await c.post("/ui/act/emergency-credit/A-1", data={"csrf": token, "reason": "hospital"})
        assert granted.status_code == 303
        account = (await c.get("/v1/accounts/A-1", headers={"Authorization": f"Bearer {KEYS['viewer']}"})).json()
        assert account["emergency_credit_outstanding"] == "10.00"
        audit = (await c.get("/v1/audit?action=account.emergency_credit",
                             headers={"Authorization": f"Bearer {KEYS['admin']}"})).json()["data"]
        assert audit[0]["actor"] == "operator-key" and audit[0]["detail"]["reason"] == "hospital"


async def test_sign_out_ends_the_session(tmp_path: Path) -> None:
    async with api_client(site(tmp_path), tmp_path) as (c, _):
        await sign_in(c, "viewer")
        token = csrf((await c.get("/ui/")).text)
        assert (await c.post("/ui/logout", data={"csrf": "wrong"})).status_code == 303
        assert (await c.get("/ui/")).status_code == 200  # a forged sign-out signed nobody out
        out = await c.post("/ui/logout", data={"csrf": token})
        assert out.headers["location"] == "/ui/login"
        assert (await c.get("/ui/")).status_code == 303


async def test_every_action_does_what_the_api_does(tmp_path: Path) -> None:
    """Each action of the dashboard, confirmed with a reason, changes what its API route changes: a hold and its
    release, protection and its release, a quarantined reading accepted, an alarm acknowledged and resolved, a
    meter replaced; each audited with the key's name and the reason."""
    async with api_client(site(tmp_path), tmp_path) as (c, gw):
        now = gw.service.clock()
        # a quarantined reading on M-3 (a jump no 60 kW contract can make in a minute) and a tamper alarm on M-1
        await gw.service.record_reading(Reading("M-3", now - dt.timedelta(minutes=2), 1_000_000))
        await gw.service.record_reading(Reading("M-3", now - dt.timedelta(minutes=1), 9_000_000))
        async with gw.uow() as uow:
            await uow.add_outbox("alarms", {"type": "MeterTamper", "meter_id": "M-1", "account_id": "A-1",
                                            "flags": ["cover_open"]}, now)
            await uow.commit()
        while await gw.alarms.step():
            pass
        viewer = {"Authorization": f"Bearer {KEYS['viewer']}"}
        assert (await c.get("/v1/meters/M-3", headers=viewer)).json()["quarantine"] is not None
        [alarm] = (await c.get("/v1/alarms?kind=tamper", headers=viewer)).json()["data"]

        await sign_in(c, "admin")
        token = csrf((await c.get("/ui/")).text)
        until = (now + dt.timedelta(days=2)).astimezone(gw.catalog.site.tz).strftime("%Y-%m-%dT%H:%M")

        async def act(name: str, target: str, **form: str) -> None:
            confirm = await c.get(f"/ui/act/{name}/{target}")
            assert confirm.status_code == 200 and 'name="reason"' in confirm.text, confirm.text[-500:]
            done = await c.post(f"/ui/act/{name}/{target}", data={"csrf": token, "reason": f"why {name}", **form})
            assert done.status_code == 303, (name, done.status_code, done.text[-800:])

        await act("hold", "A-1", until=until)
        held = (await c.get("/v1/accounts/A-1", headers=viewer)).json()["hold_until"]
        assert dt.datetime.fromisoformat(held) == dt.datetime.fromisoformat(until).replace(
            tzinfo=gw.catalog.site.tz)  # the site's local time, stored as the same instant
        await act("release-hold", "A-1")
        assert (await c.get("/v1/accounts/A-1", headers=viewer)).json()["hold_until"] is None
        await act("protect", "A-3")
        assert (await c.get("/v1/accounts/A-3", headers=viewer)).json()["protected"] is True
        await act("unprotect", "A-3")
        assert (await c.get("/v1/accounts/A-3", headers=viewer)).json()["protected"] is False
        await act("accept", "M-3")
        assert (await c.get("/v1/meters/M-3", headers=viewer)).json()["quarantine"] is None
        await act("acknowledge", str(alarm["id"]))
        assert (await c.get(f"/v1/alarms/{alarm['id']}", headers=viewer)).json()["state"] == "acknowledged"
        await act("resolve", str(alarm["id"]))
        assert (await c.get(f"/v1/alarms/{alarm['id']}", headers=viewer)).json()["state"] == "resolved"
        await act("swap", "M-1", new_id="M-1B", unit_id="9", final_wh="5000", initial_wh="0")
        swapped = (await c.get("/v1/meters/M-1B", headers=viewer)).json()
        assert (swapped["account_id"], swapped["bus"], swapped["unit_id"]) == ("A-1", "b", 9)
        audit = (await c.get("/v1/audit?actor=admin-key&limit=50", headers={"Authorization": f"Bearer {KEYS['admin']}"}
                             )).json()["data"]
        reasons = {row["detail"].get("reason") for row in audit if isinstance(row["detail"], dict)}
        assert {"why hold", "why release-hold", "why protect", "why unprotect", "why accept", "why acknowledge",
                "why resolve", "why swap"} <= reasons, reasons
