"""The dashboard (/ui) in a real browser, Debian's Chromium driven by Playwright, against one running
demo: the overview of the simulated fleet, an operator's disconnect and reconnect seen on the simulated meter
itself, a payment arriving on the account page without a reload, what a viewer and forged forms can't do, the
language switch, and axe-core's accessibility check of every page in both languages.

The tests share the module's demo, so each leaves it fit for the others in any order: the relay tests use M-3
(A-3 starts with ¥30, never cut off by the engine during the run), the forged posts aim at M-2 and look only
for commands of operator origin (A-1 and A-2 start nearly empty: the engine may cut them off at any time).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from tests.browser import Demo, browser_for_module, demo_for_module, live, mark, not_reloaded, sign_in
from tests.support import wait_until

pytestmark = [pytest.mark.tool("chromium"), pytest.mark.slow]

EN, ZH = "en-US", "zh-CN"
CONFIRM_S = 30_000  # ms: a relay command written, read back and confirmed (about a second on the demo)
LIVE_S = 15_000  # ms: an event reaching the page and the page's refresh (at most one a second)


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    yield from browser_for_module()


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    yield from demo_for_module(tmp_path_factory)


def context(browser: Any, locale: str = EN) -> Any:
    ctx = browser.new_context(locale=locale, viewport={"width": 1400, "height": 900})
    ctx.set_default_timeout(15_000)
    return ctx


def yuan(text: str) -> Decimal:
    """'¥1,234.50' or '1,234.50 元' as a number."""
    found = re.search(r"-?[\d,]+\.\d{2}", text)
    assert found, text
    return Decimal(found[0].replace(",", ""))


def open_meter(page: Any, demo: Demo, meter_id: str) -> None:
    page.goto(demo.url(f"/ui/meters/{meter_id}"))
    live(page)


def act_from_meter_page(page: Any, demo: Demo, meter_id: str, button: str, reason: str) -> str:
    """Click the meter page's action button, confirm with a reason; returns the queued command's id."""
    page.locator(".actions a.button", has_text=button).click()
    expect(page).to_have_url(demo.url(f"/ui/act/{button.lower()}/{meter_id}"))
    expect(page.locator("#verdict")).to_contain_text("The gateway allows it now.")
    page.fill("#reason", reason)
    page.locator("#confirm").click()
    expect(page).to_have_url(demo.url(f"/ui/meters/{meter_id}"))
    flash = page.locator("p.flash").inner_text()
    found = re.fullmatch(r"Command (\S+) queued\.", flash.strip())
    assert found, f"no command id in the flash message {flash!r}"
    return found[1]


def watch_meter(ctx: Any, demo: Demo, meter_id: str, relay: str) -> Any:
    """A second tab on the meter page, loaded (and marked) before the action: what it shows of the command
    afterwards can only have come by a live update. (The acting tab's own page is rendered after the post: the
    command may already be confirmed there.)"""
    watcher = ctx.new_page()
    open_meter(watcher, demo, meter_id)
    expect(watcher.locator("#relay")).to_have_text(relay)
    mark(watcher)
    return watcher


def wait_live_confirmed(watcher: Any, page: Any, demo: Demo, command_id: str, relay: str) -> None:
    """The command reaches "confirmed" and the relay shows ``relay``: on the watching tab without a reload,
    and on the acting tab."""
    state = f"tr[data-command='{command_id}'] .command-state"
    expect(page.locator(state)).to_be_visible()  # the acting tab lists the new command at once
    expect(watcher.locator(state)).to_have_text("confirmed", timeout=CONFIRM_S)
    expect(watcher.locator("#relay")).to_have_text(relay, timeout=LIVE_S)
    assert not_reloaded(watcher), "the meter page was reloaded instead of updated in place"
    assert watcher.evaluate("document.body.hasAttribute('data-refreshed')")
    expect(page.locator(state)).to_have_text("confirmed", timeout=LIVE_S)
    expect(page.locator("#relay")).to_have_text(relay, timeout=LIVE_S)
    assert demo.get(f"/v1/commands/{command_id}")["state"] == "confirmed"

def test_overview_shows_the_simulated_fleet(chromium: Any, demo: Demo) -> None:
    with context(chromium) as ctx:
        page = sign_in(ctx.new_page(), demo, "viewer")
        counts = [int(n) for n in page.locator("#counts [data-state]").all_inner_texts()]
        assert sum(counts) == 3 and len(counts) > 1, counts
        # the bus's row of today (the demo's pollers wrote it: see tests/browser.running_demo)
        expect(page.locator("#timeliness tbody tr").first).to_contain_text("demo-feeder")
        bus = page.locator("#timeliness tbody tr", has_text="demo-feeder").locator("td").all_inner_texts()
        assert bus[:2] == ["demo-feeder", "3"], bus

        page.locator("header nav a", has_text="Meters").click()
        expect(page).to_have_url(demo.url("/ui/meters"))
        meters = page.locator("tr[data-meter]").evaluate_all("rows => rows.map(r => r.dataset.meter)")
        assert meters == ["M-1", "M-2", "M-3"]  # the spare simulated meters belong to no account: not listed
        for meter_id in meters:
            expect(page.locator(f"tr[data-meter='{meter_id}']")).to_contain_text("demo-feeder")

        page.locator("header nav a", has_text="Accounts").click()
        accounts = page.locator("tr[data-account]").evaluate_all("rows => rows.map(r => r.dataset.account)")
        assert accounts == ["A-1", "A-2", "A-3"]
        page.fill("#q", "M-2")
        page.locator("form.filters button[type=submit]").click()
        expect(page.locator("tr[data-account]")).to_have_count(1)
        expect(page.locator("tr[data-account='A-2']")).to_be_visible()


def test_operator_disconnects_a_meter_and_the_simulated_relay_opens(chromium: Any, demo: Demo) -> None:
    if demo.get("/v1/meters/M-3")["relay"] != "closed":  # left open by the reconnect test's first half
        reconnect = demo.api("POST", "/v1/meters/M-3/reconnect", role="operator",
                             json={"reason": "test setup"})
        assert reconnect.status_code in (200, 201, 202), reconnect.text
        demo.wait_command(reconnect.json()["command"]["id"], "confirmed")
    assert demo.relay_on_simulator(3) == {"coil": 1, "state": 1}
    with context(chromium) as ctx:
        page = sign_in(ctx.new_page(), demo, "operator", path="/ui/meters/M-3")
        live(page)
        watcher = watch_meter(ctx, demo, "M-3", "closed")
        command_id = act_from_meter_page(page, demo, "M-3", "Disconnect", "browser test: meter inspection")
        wait_live_confirmed(watcher, page, demo, command_id, "open")
        expect(page.locator("#account-state")).to_contain_text("disconnected")
    # the simulated meter itself, read over Modbus past the gateway: the command coil and the relay's state
    assert demo.relay_on_simulator(3) == {"coil": 0, "state": 0}
    command = demo.get(f"/v1/commands/{command_id}")
    assert (command["action"], command["origin"], command["reason"]) == ("open", "operator",
                                                                        "browser test: meter inspection")


def test_a_payment_shows_live_but_only_an_operator_ends_a_manual_disconnect(chromium: Any,
                                                                           demo: Demo) -> None:
    """docs/commands.md: "A manual disconnect is not undone by the engine: a payment does not reconnect it. An
    operator's reconnect ends it." The payment shows on the account page without a reload, the meter stays
    open (no command goes out for it), and the operator's Reconnect closes the relay, live on the meter
    page."""
    if not demo.get("/v1/accounts/A-3")["manual_disconnect"]:  # this test runs first: disconnect by hand
        disconnect = demo.api("POST", "/v1/meters/M-3/disconnect", role="operator",
                              json={"reason": "test setup"})
        assert disconnect.status_code in (200, 201, 202), disconnect.text
        demo.wait_command(disconnect.json()["command"]["id"], "confirmed")
    assert demo.relay_on_simulator(3) == {"coil": 0, "state": 0}
    before = {c["id"] for c in demo.commands("M-3")}
    payment_id = f"P-browser-{uuid.uuid4().hex[:8]}"

    with context(chromium) as ctx:
        page = sign_in(ctx.new_page(), demo, "operator", path="/ui/accounts/A-3")
        live(page)
        shown = page.locator("#balance").inner_text()
        expect(page.locator("#account-state")).to_contain_text("disconnected")
        mark(page)
        payment = {"source": "billing", "payment_id": payment_id, "account_id": "A-3", "amount": "50.00"}
        paid = demo.api("POST", "/v1/payments", role="billing", json=payment)
        assert paid.status_code == 201, paid.text
        row = page.locator("#ledger tbody tr", has_text=payment_id)
        expect(row).to_contain_text("payment", timeout=LIVE_S)
        cells = row.locator("td").all_inner_texts()
        assert cells[1:4] == ["payment", "¥50.00", f"¥{Decimal(paid.json()['balance']):,.2f}"], cells
        expect(page.locator("#balance")).not_to_have_text(shown, timeout=LIVE_S)
        # the payment, less at most what the meter's last reading before it opened may still bill
        assert Decimal("49.90") <= yuan(page.locator("#balance").inner_text()) - yuan(shown) <= 50
        assert not_reloaded(page), "the account page was reloaded instead of updated in place"
        # the payment did not reconnect: the decision is taken with the payment; no command came of it
        account = demo.get("/v1/accounts/A-3")
        assert account["manual_disconnect"] is True and account["supply"] == "disconnected", account
        assert {c["id"] for c in demo.commands("M-3")} == before
        expect(page.locator("#account-state")).to_contain_text("disconnected")
        assert demo.relay_on_simulator(3) == {"coil": 0, "state": 0}

        # the operator's Reconnect ends it; the confirmation page says so
        open_meter(page, demo, "M-3")
        expect(page.locator("#relay")).to_have_text("open")
        page.locator(".actions a.button", has_text="Reconnect").click()
        expect(page.locator("#verdict")).to_contain_text("ends a manual disconnect")
        page.locator(".actions a.button.secondary").click()  # Cancel: back to the meter, nothing queued
        expect(page).to_have_url(demo.url("/ui/meters/M-3"))
        assert {c["id"] for c in demo.commands("M-3")} == before
        live(page)
        watcher = watch_meter(ctx, demo, "M-3", "open")
        command_id = act_from_meter_page(page, demo, "M-3", "Reconnect", "browser test: paid, reconnect")
        wait_live_confirmed(watcher, page, demo, command_id, "closed")
    assert demo.relay_on_simulator(3) == {"coil": 1, "state": 1}
    assert demo.get("/v1/accounts/A-3")["manual_disconnect"] is False


def test_a_payment_reconnects_a_meter_the_engine_cut_off_live_on_its_page(chromium: Any, demo: Demo) -> None:
    """A-1 runs out of credit (it starts with ¥0.20 and its meter runs 60 times faster than real time; an admin's
    correction of -¥20 spares the test the minute that takes) and the engine cuts it off. A payment pushed through
    the API reconnects it: the meter page, loaded while it was cut off, shows the reconnect's command reach
    "confirmed" and the relay close without a reload, and the simulated meter's relay is closed."""
    if demo.get("/v1/meters/M-1")["relay"] != "open":
        spent = demo.api("POST", "/v1/accounts/A-1/adjustments", role="admin",
                         json={"amount": "-20.00", "reason": "browser test: credit spent"})
        assert spent.status_code == 200, spent.text
    wait_until(lambda: demo.get("/v1/meters/M-1")["relay"] == "open", timeout=60, interval=0.2,
               what="the engine's automatic disconnect of M-1 (A-1 out of credit)")
    assert demo.relay_on_simulator(1) == {"coil": 0, "state": 0}
    account = demo.get("/v1/accounts/A-1")
    assert account["manual_disconnect"] is False and account["supply"] == "disconnected", account
    before = {c["id"] for c in demo.commands("M-1")}
    with context(chromium) as ctx:
        page = sign_in(ctx.new_page(), demo, "viewer", path="/ui/meters/M-1")
        live(page)
        expect(page.locator("#relay")).to_have_text("open")
        mark(page)
        payment = {"source": "billing", "payment_id": f"P-browser-{uuid.uuid4().hex[:8]}", "account_id": "A-1",
                   "amount": "200.00"}
        paid = demo.api("POST", "/v1/payments", role="billing", json=payment)
        assert paid.status_code == 201, paid.text
        wait_until(lambda: {c["id"] for c in demo.commands("M-1")} - before != set(), timeout=10,
                   what="the reconnect the payment queues")
        [command_id] = {c["id"] for c in demo.commands("M-1")} - before
        row = page.locator(f"#meter-commands tr[data-command='{command_id}'] .command-state")
        expect(row).to_have_text("confirmed", timeout=CONFIRM_S)  # a row the page got by a live update
        expect(page.locator("#relay")).to_have_text("closed", timeout=LIVE_S)
        expect(page.locator("#account-state")).to_contain_text("connected")
        assert not_reloaded(page), "the meter page was reloaded instead of updated in place"
    command = demo.get(f"/v1/commands/{command_id}")
    assert (command["action"], command["origin"], command["state"]) == ("close", "billing", "confirmed"), command
    assert command["reason"] == f"payment billing/{payment['payment_id']}"
    assert demo.relay_on_simulator(1) == {"coil": 1, "state": 1}


def operator_commands(demo: Demo, meter_id: str) -> set[str]:
    return {c["id"] for c in demo.commands(meter_id) if c["origin"] == "operator"}


def dashboard_audit(demo: Demo) -> list[dict[str, Any]]:
    """The audit log's records of commands by the demo's viewer or operator key (not the engine's)."""
    return [e for e in demo.get("/v1/audit?limit=200", role="operator")["data"]
            if e.get("actor") in ("demo-viewer", "demo-operator")
            and str(e.get("action")).startswith("command.")]


def test_a_viewer_gets_no_buttons_and_forged_posts_are_refused(chromium: Any, demo: Demo) -> None:
    before = operator_commands(demo, "M-2")
    audit_before = dashboard_audit(demo)
    target = demo.url("/ui/act/disconnect/M-2")
    forged = "forged by the browser test"
    with context(chromium) as viewer_ctx, context(chromium) as operator_ctx:
        viewer = sign_in(viewer_ctx.new_page(), demo, "viewer", path="/ui/meters/M-2")
        expect(viewer.locator("#h-actions")).to_be_visible()
        expect(viewer.locator(".actions a.button")).to_have_count(0)
        viewer.goto(demo.url("/ui/accounts/A-2"))
        expect(viewer.locator("#balance")).to_be_visible()
        expect(viewer.locator(".actions a.button")).to_have_count(0)
        assert viewer.request.get(target).status == 403  # the confirmation page itself
        viewer_token = viewer.locator("form[action='/ui/logout'] input[name=csrf]").get_attribute("value")
        assert viewer_token

        operator = sign_in(operator_ctx.new_page(), demo, "operator", path="/ui/meters/M-2")
        expect(operator.locator(".actions a.button", has_text="Disconnect")).to_be_visible()  # the control
        operator_token = operator.locator("form[action='/ui/logout'] input[name=csrf]").get_attribute("value")
        assert operator_token and operator_token != viewer_token

        wrong = ("y" if operator_token[0] == "x" else "x") + operator_token[1:]  # one character off
        attempts = {
            "viewer, its own valid token": (viewer, {"csrf": viewer_token, "reason": forged}),
            "operator, no token": (operator, {"reason": forged}),
            "operator, a wrong token": (operator, {"csrf": wrong, "reason": forged}),
            "operator, the viewer's token": (operator, {"csrf": viewer_token, "reason": forged}),
        }
        answers = {what: page.request.post(target, form=form, max_redirects=0).status
                   for what, (page, form) in attempts.items()}
        assert answers == dict.fromkeys(attempts, 403), answers
        # and from outside a browser: the operator's session cookie without the form's token
        cookie = {c["name"]: c["value"] for c in operator_ctx.cookies() if c["name"] == "mg_session"}
        assert cookie, operator_ctx.cookies()
        bare = httpx.post(target, data={"reason": forged}, cookies=cookie, follow_redirects=False)
        assert bare.status_code == 403, bare.text
        no_session = httpx.post(target, data={"csrf": operator_token, "reason": forged},
                                follow_redirects=False)
        assert no_session.status_code == 401, no_session.text

        # nothing changed: no operator command for the meter, no audit record, the page shows no new command
        assert operator_commands(demo, "M-2") == before
        assert not [c for c in demo.commands("M-2") if c.get("reason") == forged]
        assert dashboard_audit(demo) == audit_before
        operator.reload()
        commands_shown = operator.locator("#meter-commands tr[data-command]").evaluate_all(
            "rows => rows.map(r => r.dataset.command)")
        assert set(commands_shown) <= {c["id"] for c in demo.commands("M-2")}
        expect(operator.locator("#meter-commands")).not_to_contain_text(forged)

    # an unknown key signs no one in: 401, the form again with the error, no session cookie
    with context(chromium) as ctx:
        page = ctx.new_page()
        page.goto(demo.url("/ui/login"))
        page.fill("#key", "not-a-key-of-this-gateway")
        with page.expect_response(lambda r: r.request.method == "POST") as answer:
            page.locator("main form button[type=submit]").click()
        assert answer.value.status == 401
        expect(page.locator("p.flash.error")).to_have_text("Unknown API key.")
        expect(page.locator("#key")).to_be_visible()
        assert not [c for c in ctx.cookies() if c["name"] == "mg_session"]

def test_language_switch_is_remembered(chromium: Any, demo: Demo) -> None:
    with context(chromium, EN) as ctx:
        page = sign_in(ctx.new_page(), demo, "viewer", path="/ui/meters")
        html, nav = page.locator("html"), page.locator("header nav a").first
        expect(html).to_have_attribute("lang", "en")
        expect(nav).to_have_text("Overview")

        page.locator(".lang a[hreflang='zh-CN']").click()
        expect(page).to_have_url(demo.url("/ui/meters"))  # back where it was
        expect(html).to_have_attribute("lang", "zh-CN")
        expect(nav).to_have_text("总览")
        assert {c["name"]: c["value"] for c in ctx.cookies()}.get("mg_lang") == "zh"
        # remembered: another page, a new tab (the browser still asks for English)
        page.goto(demo.url("/ui/accounts/A-1"))
        expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
        other = ctx.new_page()
        other.goto(demo.url("/ui/"))
        expect(other.locator("html")).to_have_attribute("lang", "zh-CN")
        expect(other.locator("header nav a").first).to_have_text("总览")
        expect(other.locator("h1")).to_contain_text("总览")

        other.locator(".lang a[hreflang='en']").click()
        expect(other).to_have_url(demo.url("/ui/"))
        expect(other.locator("html")).to_have_attribute("lang", "en")
        expect(other.locator("header nav a").first).to_have_text("Overview")
        page.reload()
        expect(page.locator("html")).to_have_attribute("lang", "en")
        expect(page.locator("#h-summary")).to_contain_text("Balance")

    # without the cookie: the browser's language, and Chinese when it asks for neither
    with context(chromium, ZH) as ctx:
        page = ctx.new_page()
        page.goto(demo.url("/ui/login"))
        expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
    plain = httpx.get(demo.url("/ui/login"), headers={"Accept-Language": "fr-FR"})
    assert '<html lang="zh-CN">' in plain.text


PAGES = {
    "overview": "/ui/",
    "accounts": "/ui/accounts",
    "meters": "/ui/meters",
    "account": "/ui/accounts/A-2",
    "meter": "/ui/meters/M-2",
    "alarms": "/ui/alarms?state=all",
    "confirmation": "/ui/act/disconnect/M-2",
}


def serious(results: Any, name: str) -> list[str]:
    found = []
    for violation in results.response["violations"]:
        if violation.get("impact") in ("serious", "critical"):
            targets = [node.get("target") for node in violation.get("nodes", [])]
            found.append(f"{name}: {violation['id']} ({violation['impact']}): {violation.get('help')}; "
                         f"nodes: {targets}")
    return found


@pytest.mark.parametrize("locale", [EN, ZH], ids=["en", "zh"])
def test_every_page_passes_axe(chromium: Any, demo: Demo, locale: str) -> None:
    from axe_playwright_python.sync_playwright import Axe

    axe, problems, checked = Axe(), [], []
    lang = "en" if locale == EN else "zh-CN"
    with context(chromium, locale) as ctx:
        page = ctx.new_page()
        page.goto(demo.url("/ui/login"))
        expect(page.locator("html")).to_have_attribute("lang", lang)
        problems += serious(axe.run(page), "login")
        checked.append("login")
        sign_in(page, demo, "operator")
        for name, path in PAGES.items():
            response = page.goto(demo.url(path))
            assert response is not None and response.status == 200, (name, response and response.status)
            expect(page.locator("html")).to_have_attribute("lang", lang)
            expect(page.locator("main h1")).to_be_visible()
            problems += serious(axe.run(page), name)
            checked.append(name)
    assert checked == ["login", *PAGES]
    assert not problems, "axe-core found serious or critical violations:\n" + "\n".join(problems)
