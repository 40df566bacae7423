"""Notices in the domain: which events make which notices for whom, templates, quiet hours, retries; and the
notice-backed guardrail (the notice period from the final warning's delivery)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from gateway.domain import events as ev
from gateway.domain.account import Decision, PrepaidAccount, Thresholds
from gateway.domain.notices import (
    DEFAULT_TEMPLATES,
    KINDS,
    PLACEHOLDERS,
    Contact,
    NoticePolicy,
    QuietHours,
    check_template,
    notice_kind,
)
from gateway.domain.policy import SitePolicy
from gateway.domain.tariffs import FlatTariff

SHANGHAI = ZoneInfo("Asia/Shanghai")
T0 = dt.datetime(2026, 12, 3, 2, 0, tzinfo=dt.UTC)  # 10:00 in Shanghai
CUSTOMER = Contact("Li Lei", "customer", "sms", "+8613800000000", "zh")
ENGLISH = Contact("Han Meimei", "customer", "mail", "han@example.com", "en", frozenset({"payment_received"}))
STAFF = Contact("collector", "staff", "sms", "+8613900000001", "en")
POLICY = NoticePolicy(DEFAULT_TEMPLATES, site="Town", staff=(STAFF,))


def at(minutes: float) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


@pytest.mark.parametrize(("topic", "payload", "kind"), [
    ("accounts/A-1/events", {"type": "CreditLow", "level": 1}, "low_balance_1"),
    ("accounts/A-1/events", {"type": "CreditLow", "level": 2}, "low_balance_2"),
    ("accounts/A-1/events", {"type": "CreditLow", "level": 3}, None),
    ("accounts/A-1/events", {"type": "CreditExhausted"}, "exhausted"),
    ("accounts/A-1/balance", {"type": "PaymentReceived"}, "payment_received"),
    ("accounts/A-1/balance", {"type": "AccountCharged"}, None),
    ("commands/c-1", {"type": "CommandState", "state": "confirmed", "action": "open"}, "disconnected"),
    ("commands/c-1", {"type": "CommandState", "state": "confirmed", "action": "close"}, "reconnected"),
    ("commands/c-1", {"type": "CommandState", "state": "sent", "action": "open"}, None),
    ("accounts/A-1/events", {"type": "FinalWarningUndelivered"}, "final_warning_undelivered"),
    ("accounts/A-1/notices", {"type": "NoticeState"}, None),
])
def test_the_events_that_make_notices(topic: str, payload: dict[str, object], kind: str | None) -> None:
    assert notice_kind(topic, payload) == kind


def test_a_final_warning_goes_to_everyone_and_counts_for_the_customer() -> None:
    payload = {"type": "CreditLow", "account_id": "A-1", "level": 2, "balance_fen": 480, "at": "2026-12-03T02:00:00Z"}
    planned = POLICY.plan(7, "accounts/A-1/events", payload, T0, "A-1", (CUSTOMER,))
    assert [(n.contact.name, n.final) for n in planned] == [("Li Lei", True), ("collector", False)]
    assert planned[0].text == ("【Town】最后提醒：您的电费账户A-1余额为4.80元。余额用尽后将停止供电，请尽快缴费。")
    assert planned[1].text.startswith("Town: FINAL NOTICE. Account A-1 has 4.80 yuan left.")
    assert len({n.dedup_key for n in planned}) == 2 and all(n.dedup_key.startswith("7/") for n in planned)
    # no customer contact: the staff's copy is the one that counts
    [staff] = POLICY.plan(7, "accounts/A-1/events", payload, T0, "A-1", ())
    assert staff.final and staff.contact is STAFF


def test_opt_out_and_staff_only_kinds() -> None:
    payment = {"type": "PaymentReceived", "account_id": "A-1", "amount_fen": 5000, "balance_fen": 5480}
    planned = POLICY.plan(8, "accounts/A-1/balance", payment, T0, "A-1", (CUSTOMER, ENGLISH))
    assert [n.contact.name for n in planned] == ["Li Lei", "collector"]  # Han opted out of payments
    assert "缴费50.00元，当前余额54.80元" in planned[0].text and "18:00" not in planned[0].text
    assert "10:00" in planned[0].text  # the site's local time
    undelivered = {"type": "FinalWarningUndelivered", "account_id": "A-1", "balance_fen": -20}
    planned = POLICY.plan(9, "accounts/A-1/events", undelivered, T0, "A-1", (CUSTOMER,))
    assert [n.contact.role for n in planned] == ["staff"]
    assert "-0.20" in planned[0].text


def test_a_relay_notice_takes_the_balance_and_meter_it_is_given() -> None:
    confirmed = {"type": "CommandState", "meter_id": "M-1", "action": "open", "state": "confirmed"}
    [notice, _] = POLICY.plan(3, "commands/c-1", confirmed, T0, "A-1", (CUSTOMER,), balance_fen=-5)
    assert notice.kind == "disconnected" and "电表M-1" in notice.text and "2026-12-03 10:00" in notice.text


def test_templates_name_only_known_placeholders() -> None:
    for kind in KINDS:
        for text in DEFAULT_TEMPLATES[kind].values():
            assert check_template(text) == text
    with pytest.raises(ValueError, match=r"unknown placeholder \{phone\}"):
        check_template("call {phone}")
    with pytest.raises(ValueError, match="not a valid template"):
        check_template("balance {balance")
    assert "site" in PLACEHOLDERS and check_template("{{literal}} {account}")


def test_a_missing_language_falls_back_to_english() -> None:
    french = Contact("Jean", "customer", "sms", "+33600000000", "fr")
    [notice, _] = POLICY.plan(1, "accounts/A-1/events", {"type": "CreditExhausted", "balance_fen": 0}, T0, "A-1",
                              (french,))
    assert notice.text.startswith("Town: the credit of account A-1 is spent")


def test_quiet_hours_over_midnight() -> None:
    quiet = QuietHours(dt.time(22), dt.time(7))
    local = lambda h, m=0, d=3: dt.datetime(2026, 12, d, h, m, tzinfo=SHANGHAI).astimezone(dt.UTC)  # noqa: E731
    assert quiet.ends_at(local(21, 59), SHANGHAI) is None
    assert quiet.ends_at(local(22), SHANGHAI) == local(7, d=4)
    assert quiet.ends_at(local(3), SHANGHAI) == local(7)
    assert quiet.ends_at(local(7), SHANGHAI) is None
    day = QuietHours(dt.time(12), dt.time(14))
    assert day.ends_at(local(13), SHANGHAI) == local(14) and day.ends_at(local(14), SHANGHAI) is None
    policy = NoticePolicy(DEFAULT_TEMPLATES, quiet_hours=quiet)
    assert policy.hold_until("low_balance_1", local(23)) == local(7, d=4)
    assert policy.hold_until("disconnected", local(23)) is None  # urgent


def test_retries_back_off_to_a_cap_then_give_up() -> None:
    policy = NoticePolicy(DEFAULT_TEMPLATES, max_attempts=5, backoff=dt.timedelta(seconds=30),
                          backoff_cap=dt.timedelta(seconds=100))
    waits = [(policy.retry_at(n, T0) - T0).total_seconds() for n in range(1, 5)]  # type: ignore[operator]
    assert waits == [30, 60, 100, 100]
    assert policy.retry_at(5, T0) is None


# --- the guardrail ----------------------------------------------------------------------------------------
NOTICES_ON = SitePolicy(stale_after=None, notice_period=dt.timedelta(hours=1), notice_delivery=True,
                        notice_delivery_timeout=dt.timedelta(minutes=30))


def broke(site: SitePolicy = NOTICES_ON) -> PrepaidAccount:
    acc = PrepaidAccount("A-1", FlatTariff(Decimal("1")), Thresholds(overdraft_fen=0), balance_fen=600, site=site)
    acc.apply_adjustment(-700, "test")  # below the disconnect point in one movement
    return acc


def test_no_disconnect_before_the_final_warning_is_delivered_and_the_staff_told_once() -> None:
    acc = broke()
    assert acc.evaluate(at(0)) is Decision.NONE
    assert (acc.deferred_reason, acc.deferred_until) == ("notice_undelivered", at(30))
    assert acc.final_warning_at == at(0)
    acc.events.clear()
    assert acc.evaluate(at(30)) is Decision.NONE
    assert acc.deferred_reason == "notice_undelivered" and acc.deferred_until is None
    assert acc.deferred_detail.endswith("not delivered within 1800 s: staff told")
    assert [type(e) for e in acc.events] == [ev.FinalWarningUndelivered]
    assert acc.evaluate(at(600)) is Decision.NONE and len(acc.events) == 1  # told once
    assert acc.final_warning_delivered(at(0), at(601), "customer:Li Lei")
    assert acc.evaluate(at(601)) is Decision.NONE
    assert (acc.deferred_reason, acc.deferred_until) == ("notice_period", at(661))
    assert acc.evaluate(at(661)) is Decision.DISCONNECT


def test_a_delivery_counts_once_and_only_for_the_current_warning() -> None:
    acc = broke()
    acc.evaluate(at(0))
    assert not acc.final_warning_delivered(at(-5), at(1))  # a warning of an earlier fall
    assert acc.final_warning_delivered(at(0), at(2), "staff:collector")
    assert not acc.final_warning_delivered(at(0), at(3))
    assert acc.final_warning_delivered_at == at(2)
    assert [e.to for e in acc.events if isinstance(e, ev.FinalWarningDelivered)] == ["staff:collector"]
    acc.apply_payment("bank", "P-1", 5_000)  # back above the warnings: re-armed
    acc.evaluate(at(4))
    assert (acc.final_warning_at, acc.final_warning_delivered_at, acc.final_warning_escalated) == (None, None, False)
    restored = PrepaidAccount.from_state(broke().state_dict(), id="A-1", tariff=FlatTariff(Decimal("1")),
                                         site=NOTICES_ON)
    assert restored.final_warning_delivered_at is None


def test_the_delivery_state_survives_a_round_trip() -> None:
    acc = broke()
    acc.evaluate(at(0))
    acc.evaluate(at(30))
    acc.final_warning_delivered(at(0), at(31))
    back = PrepaidAccount.from_state(acc.state_dict(), id="A-1", tariff=FlatTariff(Decimal("1")), site=NOTICES_ON)
    assert (back.final_warning_at, back.final_warning_delivered_at, back.final_warning_escalated) == (
        at(0), at(31), True)


def test_the_staff_are_told_of_an_overdue_warning_before_the_disconnect_point() -> None:
    acc = PrepaidAccount("A-1", FlatTariff(Decimal("1")), Thresholds(warning2_fen=500, overdraft_fen=0),
                         balance_fen=600, site=NOTICES_ON)
    acc.apply_adjustment(-200, "test")  # 4.00: the final warning, the balance still positive
    assert acc.evaluate(at(0)) is Decision.NONE and acc.final_warning_at == at(0)
    assert not acc.settled()  # the staff may have to be told later: not settled until then
    assert acc.evaluate(at(29)) is Decision.NONE and not acc.final_warning_escalated
    acc.events.clear()
    acc.evaluate(at(30))
    assert [type(e) for e in acc.events] == [ev.FinalWarningUndelivered] and acc.final_warning_escalated
    assert acc.settled()


def test_without_notice_delivery_the_period_runs_from_the_warning() -> None:
    acc = broke(SitePolicy(stale_after=None, notice_period=dt.timedelta(hours=1)))
    assert acc.evaluate(at(0)) is Decision.NONE and acc.deferred_reason == "notice_period"
    assert acc.evaluate(at(60)) is Decision.DISCONNECT
