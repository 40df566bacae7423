"""The balance engine: charges without drift, thresholds, guardrails, disconnect and reconnect decisions."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.domain import events as ev
from gateway.domain.account import Decision, MeterCursor, PrepaidAccount, Supply, Thresholds
from gateway.domain.errors import EmergencyCreditRefused, InvalidAmount, NoQuarantinedReading, UnknownMeter
from gateway.domain.ledger import EntryKind
from gateway.domain.money import cost_fen
from gateway.domain.policy import SitePolicy
from gateway.domain.tariffs import FlatTariff

T0 = dt.datetime(2026, 11, 23, 0, 0, tzinfo=dt.UTC)
PRICE = Decimal("0.5283")
PLAIN = SitePolicy(notice_period=dt.timedelta(0), stale_after=None)  # no notice, staleness judged by the caller


def account(balance: int = 10_000, site: SitePolicy = PLAIN, **thresholds: int) -> PrepaidAccount:
    thresholds.setdefault("overdraft_fen", 0)
    return PrepaidAccount("A-1", FlatTariff(PRICE), Thresholds(**thresholds), balance_fen=balance, site=site)


def at(minutes: float) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


def test_first_reading_sets_the_baseline_only() -> None:
    acc, cur = account(), MeterCursor("M-1")
    assert acc.apply_reading(cur, 123_456, at(0)) == 0
    assert (cur.energy_wh, acc.balance_fen) == (123_456, 10_000)
    assert acc.cursors["M-1"] is cur  # a cursor handed in is adopted into the account's state


def test_meters_by_id_must_be_known() -> None:
    acc = account()
    with pytest.raises(UnknownMeter):
        acc.apply_reading("M-9", 1, at(0))
    acc.add_meter("M-9", max_power_w=5_000)
    assert acc.apply_reading("M-9", 1, at(0)) == 0
    assert acc.cursors["M-9"].max_power_w == 5_000


@given(st.lists(st.integers(min_value=0, max_value=500), min_size=1, max_size=200))
def test_charges_never_drift(deltas: list[int]) -> None:
    """The sum of charges equals the tariff applied to the total consumption, however many readings."""
    acc, cur = account(balance=10**9), MeterCursor("M-1")
    acc.apply_reading(cur, 1000, at(0))
    energy = 1000
    for i, delta in enumerate(deltas, start=1):
        energy += delta
        acc.apply_reading(cur, energy, at(i))
    charged = sum(e.amount_fen for e in acc.events if isinstance(e, ev.AccountCharged))
    assert charged == cost_fen(energy - 1000, PRICE)
    assert acc.balance_fen == 10**9 - charged
    assert -sum(e.amount_fen for e in acc.entries) == charged


def test_backwards_and_implausible_readings_are_quarantined_once() -> None:
    acc, cur = account(), MeterCursor("M-1", max_power_w=10_000)
    acc.apply_reading(cur, 5_000, at(0))
    assert acc.apply_reading(cur, 4_000, at(1)) == 0
    assert acc.apply_reading(cur, 3_000, at(2)) == 0  # still quarantined: no second alarm
    quarantined = [e for e in acc.events if isinstance(e, ev.ReadingQuarantined)]
    assert [(q.energy_wh, q.kind) for q in quarantined] == [(4_000, "backwards")]
    assert cur.energy_wh == 5_000 and acc.balance_fen == 10_000
    assert cur.pending is not None and cur.pending.latest is not None and cur.pending.latest.energy_wh == 3_000


def test_a_jump_is_quarantined_and_a_later_plausible_reading_discards_it() -> None:
    acc, cur = account(), MeterCursor("M-1", max_power_w=10_000)
    acc.apply_reading(cur, 5_000, at(0))
    # 10 kW for one minute is ~167 Wh (x1.5 margin = 250 + 10); 100 kWh is not plausible
    assert acc.apply_reading(cur, 105_000, at(1)) == 0
    assert acc.disconnect_blocked_by(at(1)) == "quarantined_reading"
    charge = acc.apply_reading(cur, 5_200, at(2))
    assert charge == cost_fen(200, PRICE) and cur.pending is None
    resolved = [e for e in acc.events if isinstance(e, ev.QuarantineResolved)]
    assert [(r.action, r.energy_wh) for r in resolved] == [("discarded", 105_000)]


def test_accepting_a_jump_bills_it_and_then_the_readings_since() -> None:
    acc = account(balance=100_000)
    acc.add_meter("M-1", max_power_w=1_000)
    acc.apply_reading("M-1", 0, at(0))
    acc.apply_reading("M-1", 50_000, at(10))  # 50 kWh in 10 minutes from a 1 kW meter
    acc.apply_reading("M-1", 50_100, at(20))  # implausible against the baseline as well: kept as the latest
    assert acc.balance_fen == 100_000
    charge = acc.accept_reading("M-1", by="op")
    assert charge == cost_fen(50_100, PRICE)
    assert acc.cursors["M-1"].energy_wh == 50_100 and acc.cursors["M-1"].pending is None
    with pytest.raises(NoQuarantinedReading):
        acc.accept_reading("M-1")


def test_a_backwards_reading_needs_rollover_or_an_amount_or_a_rebase() -> None:
    acc = account(balance=100_000)
    acc.add_meter("M-1")
    acc.apply_reading("M-1", 999_999_000, at(0))
    acc.apply_reading("M-1", 500, at(10))
    with pytest.raises(NoQuarantinedReading, match="rollover"):
        acc.accept_reading("M-1")
    acc.add_meter("M-1", rollover_wh=1_000_000_000)
    assert acc.accept_reading("M-1") == cost_fen(1_500, PRICE)
    acc.apply_reading("M-1", 100, at(20))  # a reset: re-base without billing the gap
    assert acc.rebase_meter("M-1") == 0
    assert acc.cursors["M-1"].energy_wh == 100


def test_one_warning_per_crossing_and_rearm() -> None:
    acc, cur = account(balance=2_100, warning1_fen=2_000, warning2_fen=500), MeterCursor("M-1")
    acc.apply_reading(cur, 0, at(0))
    for i, energy in enumerate((1_000, 2_000, 3_000), start=1):  # each kWh ~ 53 fen: crosses warning 1 once
        acc.apply_reading(cur, energy, at(i * 10))
    assert [e.level for e in acc.events if isinstance(e, ev.CreditLow)] == [1]
    acc.apply_payment("billing", "P-1", 1_000)  # back above warning 1: re-armed
    acc.events.clear()
    acc.apply_reading(cur, 22_000, at(100))  # 19 kWh ~ 10.04 yuan: below warning 1 again
    assert [e.level for e in acc.events if isinstance(e, ev.CreditLow)] == [1]


def test_disconnect_at_the_disconnect_point_and_reconnect_after_payment() -> None:
    acc, cur = account(balance=100, overdraft_fen=50, reconnect_min_topup_fen=100), MeterCursor("M-1")
    acc.apply_reading(cur, 0, at(0))
    acc.apply_reading(cur, 2_000, at(30))  # ~106 fen: balance -6, above -50
    assert acc.evaluate(at(30)) is Decision.NONE
    acc.apply_reading(cur, 3_000, at(60))  # another ~53 fen: -59 <= -50
    assert acc.evaluate(at(60)) is Decision.DISCONNECT
    assert acc.supply is Supply.DISCONNECTED
    assert acc.evaluate(at(61)) is Decision.NONE  # already disconnected: no second command
    acc.apply_payment("billing", "P-1", 100)  # 41 fen: below the reconnect threshold (-50 + 100 = 50)
    assert acc.evaluate(at(62)) is Decision.NONE
    acc.apply_payment("billing", "P-2", 10)
    assert acc.evaluate(at(63)) is Decision.RECONNECT
    assert acc.supply is Supply.CONNECTED


def test_guardrails_defer_a_disconnect_and_record_the_reason_once() -> None:
    acc = account(balance=-10)
    acc.protected = True
    assert acc.evaluate(at(0)) is Decision.NONE
    assert acc.evaluate(at(1)) is Decision.NONE
    deferred = [e for e in acc.events if isinstance(e, ev.DisconnectDeferred)]
    assert [d.reason for d in deferred] == ["protected"]
    acc.protected = False
    acc.hold_until = at(10)
    assert acc.evaluate(at(5)) is Decision.NONE
    assert acc.evaluate(at(6), readings_ok=True) is Decision.NONE
    assert acc.evaluate(at(11), readings_ok=False, why_not_ok="meter M-1 reading stale") is Decision.NONE
    deferred = [e for e in acc.events if isinstance(e, ev.DisconnectDeferred)]
    assert [(e.reason, e.detail) for e in deferred] == [
        ("protected", ""), ("operator_hold", "until 2026-11-23T00:10:00Z"),
        ("readings_not_ok", "meter M-1 reading stale")]
    assert deferred[1].until == at(10)
    assert acc.evaluate(at(12)) is Decision.DISCONNECT  # the reason ended: the disconnect happens
    assert acc.deferred_reason == ""


def test_notice_period_starts_at_the_final_warning() -> None:
    acc = account(balance=600, site=SitePolicy(stale_after=None), warning2_fen=500)
    acc.apply_adjustment(-700, "test")  # straight from OK to below zero in one movement
    assert acc.evaluate(at(0)) is Decision.NONE
    assert acc.deferred_reason == "notice_period" and acc.deferred_until == at(24 * 60)
    assert acc.evaluate(at(24 * 60 - 1)) is Decision.NONE
    assert acc.evaluate(at(24 * 60)) is Decision.DISCONNECT


def test_payments_repay_emergency_credit_and_reversals_restore_the_debt() -> None:
    acc = account(balance=-100)
    assert acc.grant_emergency_credit(at(0), by="op") == 1_000
    with pytest.raises(EmergencyCreditRefused, match="not yet repaid"):
        acc.grant_emergency_credit(at(1))
    acc.apply_payment("billing", "P-1", 600)
    acc.apply_payment("billing", "P-2", 5_000)
    assert acc.emergency.outstanding_fen == 0
    assert [(e.kind, e.amount_fen) for e in acc.entries] == [
        (EntryKind.EMERGENCY_CREDIT, 1_000), (EntryKind.PAYMENT, 600), (EntryKind.REPAYMENT, -600),
        (EntryKind.PAYMENT, 5_000), (EntryKind.REPAYMENT, -400)]
    acc.apply_reversal("billing", "P-2", 5_000)
    assert acc.emergency.outstanding_fen == 400
    # -100 + 1000 (grant) + 600 - 600 (repaid) + 5000 - 400 (repaid) - 5000 (reversal) + 400 (repayment undone)
    assert acc.balance_fen == 900
    assert acc.balance_fen == -100 + sum(e.amount_fen for e in acc.entries)
    with pytest.raises(EmergencyCreditRefused, match="not yet repaid"):
        acc.grant_emergency_credit(at(60 * 24 * 40))


def test_amounts_must_be_positive() -> None:
    acc = account()
    for call in (lambda: acc.apply_payment("b", "P", 0), lambda: acc.apply_reversal("b", "P", -1),
                 lambda: acc.apply_adjustment(0, "x")):
        with pytest.raises(InvalidAmount):
            call()
    with pytest.raises(ValueError):  # InvalidAmount is a ValueError, as before
        acc.apply_payment("b", "P", -5)


def test_naive_times_are_refused() -> None:
    acc = account()
    with pytest.raises(ValueError, match="aware"):
        acc.evaluate(dt.datetime(2026, 11, 23))


def test_manual_disconnect_is_not_undone_by_a_payment_and_manual_reconnect_below_the_point_holds() -> None:
    acc = account(balance=5_000)
    acc.manual_switch("open", at(0), by="op")
    acc.apply_payment("billing", "P-9", 10_000)
    assert acc.evaluate(at(1)) is Decision.NONE  # an operator's cut is not reversed by the engine
    assert acc.supply is Supply.DISCONNECTED
    assert PrepaidAccount.from_state(acc.state_dict(), id=acc.id, tariff=acc.tariff).manual_disconnect
    assert acc.manual_switch("close", at(2), hold=dt.timedelta(hours=24)) is None  # balance fine: no hold
    assert acc.supply is Supply.CONNECTED and acc.hold_until is None
    low = account(balance=-100)
    until = low.manual_switch("close", at(3), hold=dt.timedelta(hours=24))
    assert until == at(3) + dt.timedelta(hours=24) and low.hold_until == until
    assert low.evaluate(at(4)) is Decision.NONE and low.deferred_reason == "operator_hold"
