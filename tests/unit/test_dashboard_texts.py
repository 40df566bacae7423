"""The dashboard's texts and sessions: every text of the pages has its Chinese; a session cookie can't be forged,
stretched or replayed after its time."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from zoneinfo import ZoneInfo

from gateway.api.dashboard import actions
from gateway.api.dashboard.i18n import ZH, Locale, pick_language
from gateway.api.dashboard.session import SessionCodec

DASHBOARD = Path(actions.__file__).parent
TEXT = re.compile(r"""_\(\s*(["'])(.+?)\1\s*[,)]""")


def test_every_text_of_the_pages_has_its_chinese() -> None:
    texts = {m.group(2) for f in (DASHBOARD / "templates").glob("*.html") for m in TEXT.finditer(f.read_text())}
    texts |= {a.title for a in actions.ACTIONS.values()} | {a.what for a in actions.ACTIONS.values()}
    texts |= set(re.findall(r'locale\.text\("([^"]+)"', (DASHBOARD / "actions.py").read_text()))
    for module in ("pages.py", "actions.py", "web.py"):  # the messages the pages show
        texts |= set(re.findall(r'(?:error=|message=|message == |, )"([A-Z][^"]*\.)"', (DASHBOARD / module).read_text()))
    assert len(texts) > 100
    missing = sorted(t for t in texts if t not in ZH)
    assert not missing, missing


def test_money_and_times_follow_the_site() -> None:
    shanghai = ZoneInfo("Asia/Shanghai")
    at = dt.datetime(2026, 12, 3, 17, 49, 5, tzinfo=dt.UTC)
    zh, en = Locale("zh", shanghai), Locale("en", shanghai)
    assert zh.when(at) == "2026年12月4日 01:49" and en.when(at, seconds=True) == "4 Dec 2026 01:49:05"
    assert zh.money("-1234.5") == "-1,234.50 元" and en.money("1234567.00") == "¥1,234,567.00"
    assert en.money(12345) == "¥123.45"  # integer fen
    assert zh.text("Account %(id)s", id="A-1") == "账户 A-1" and en.text("Account %(id)s", id="A-1") == "Account A-1"
    assert zh.relay("open") == "断开" and zh.term("open") == "未处理"  # a relay's open is not an alarm's
    assert pick_language(None, "en-US,en;q=0.9") == "en" and pick_language("zh", "en") == "zh"
    assert pick_language("xx", "fr") == "zh"


def test_a_session_cookie_cannot_be_forged_or_outlive_its_time() -> None:
    now = [1_000_000.0]
    codec = SessionCodec(b"s" * 32, lifetime_s=3600, clock=lambda: now[0])
    session, cookie = codec.new("a" * 64)
    assert codec.read(cookie) == session
    body, _, signature = cookie.rpartition(".")
    assert codec.read(body.replace("a" * 64, "b" * 64) + "." + signature) is None  # another key's digest
    assert codec.read(cookie[:-1] + ("A" if cookie[-1] != "A" else "B")) is None
    assert SessionCodec(b"t" * 32, clock=lambda: now[0]).read(cookie) is None  # another secret
    assert codec.read("") is None and codec.read("x" * 400) is None and codec.read("a.b") is None
    assert codec.csrf_ok(session, session.csrf(codec.secret)) and not codec.csrf_ok(session, "")
    other, _ = codec.new("a" * 64)
    assert not codec.csrf_ok(session, other.csrf(codec.secret))  # another session's token
    now[0] += 3601
    assert codec.read(cookie) is None


def test_every_code_the_pages_show_has_its_chinese() -> None:
    """States, kinds and reasons are shown through ``term``: each code the gateway can produce has words."""
    from gateway.domain import alarms, notices
    from gateway.domain.account import CREDIT_STATES
    from gateway.domain.ledger import EntryKind
    from gateway.domain.relay import State
    from gateway.service.lists import SUPPLY_STATES

    guardrails = re.findall(r'Refusal\("([a-z_]+)"', (Path(alarms.__file__).parent / "guardrails.py").read_text())
    codes = {*CREDIT_STATES, *(k.value for k in EntryKind), *alarms.KINDS, *notices.KINDS, *(s.value for s in State),
             *SUPPLY_STATES, *guardrails, "online", "degraded", "offline", "unknown", "acknowledged", "resolved",
             "delivered", "pending", "critical", "warning"}
    assert len(guardrails) >= 9
    zh = Locale("zh", ZoneInfo("Asia/Shanghai"))
    missing = sorted(code for code in codes if zh.term(code) == code.replace("_", " "))
    assert not missing, missing
    assert zh.status("open") == "正常" and zh.term("open") == "未处理"  # an account in service is not an open alarm
