"""The account's life: meters attached, detached and replaced (their final readings billed like any reading, the
billing period going on), and the account closed with its balance settled to zero (refund or arrears); a
closed account refuses everything but queries. The ledger invariant holds throughout."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.domain import events as ev
from gateway.domain.account import Decision, PrepaidAccount, Supply, TariffChange, Thresholds
from gateway.domain.errors import (
    ClosedAccount,
    DomainError,
    EmergencyCreditRefused,
    InvalidAmount,
    InvalidTime,
    MeterAlreadyAttached,
    MetersStillAttached,
    UnknownMeter,
)
from gateway.domain.ledger import EntryKind
from gateway.domain.policy import SitePolicy
from gateway.domain.tariffs import FlatTariff, Tariff, Tier, TieredTariff

SITE = SitePolicy(notice_period=dt.timedelta(0), stale_after=None)
T0 = dt.datetime(2026, 11, 10, 0, 0, tzinfo=dt.UTC)
FLAT = FlatTariff(Decimal("1.00"))  # 1 fen per 10 Wh
TIERED = TieredTariff((Tier(10_000, Decimal("0.50")), Tier(None, Decimal("1.00"))))


def hours(h: float) -> dt.datetime:
    return T0 + dt.timedelta(hours=h)


def account(balance: int = 10_000, tariff: Tariff = FLAT, **kw: Any) -> PrepaidAccount:
    return PrepaidAccount("A-1", tariff, Thresholds(warning1_fen=0, warning2_fen=0, overdraft_fen=0),
                          balance_fen=balance, site=SITE, **kw)


def kinds(acc: PrepaidAccount) -> list[type]:
    return [type(e) for e in acc.events]


def test_attach_starts_a_meter_from_its_baseline() -> None:
    acc = account()
    acc.attach_meter("M-1", energy_wh=5_000, at=hours(0), max_power_w=3_000, by="op")
    cursor = acc.cursors["M-1"]
    assert (cursor.energy_wh, cursor.taken_at, cursor.seen_at, cursor.max_power_w) == (5_000, hours(0), hours(0),
                                                                                       3_000)
    assert acc.events == [ev.MeterAttached("A-1", "M-1", 5_000, hours(0), "op")] and acc.entries == []
    assert acc.apply_reading("M-1", 6_000, hours(1)) == 100
    with pytest.raises(MeterAlreadyAttached):
        acc.attach_meter("M-1", energy_wh=0, at=hours(2))
    for bad in (-1, 10**12 + 1):
        with pytest.raises(InvalidAmount):
            acc.attach_meter("M-2", energy_wh=bad, at=hours(2))
    with pytest.raises(ValueError, match="timezone-aware"):
        acc.attach_meter("M-2", energy_wh=0, at=dt.datetime(2026, 11, 10))
    assert set(acc.cursors) == {"M-1"}


def test_attach_takes_a_meter_registered_without_a_reading_with_its_configuration() -> None:
    acc = account()
    acc.add_meter("M-1", rollover_wh=10**9, resolution_wh=100)
    acc.attach_meter("M-1", energy_wh=700, at=hours(0))
    assert (acc.cursors["M-1"].energy_wh, acc.cursors["M-1"].rollover_wh, acc.cursors["M-1"].resolution_wh) == (
        700, 10**9, 100)


def test_detach_bills_the_final_reading_and_removes_the_meter() -> None:
    acc = account()
    acc.attach_meter("M-1", energy_wh=1_000, at=hours(0))
    acc.events.clear()
    assert acc.detach_meter("M-1", final_wh=3_500, at=hours(2), by="op") == 250
    assert "M-1" not in acc.cursors and acc.balance_fen == 9_750
    assert kinds(acc) == [ev.AccountCharged, ev.MeterDetached]
    assert acc.events[-1] == ev.MeterDetached("A-1", "M-1", 3_500, hours(2), 250, "op")
    (entry,) = acc.entries
    assert (entry.kind, entry.amount_fen, entry.meter_id, entry.reading_wh, entry.at) == (
        EntryKind.CHARGE, -250, "M-1", 3_500, hours(2))
    with pytest.raises(UnknownMeter):
        acc.detach_meter("M-1", final_wh=3_500, at=hours(3))


def test_a_final_reading_is_explicit_and_not_checked_against_the_meters_capacity() -> None:
    acc = account(balance=10**6)
    acc.attach_meter("M-1", energy_wh=0, at=hours(0), max_power_w=1_000)
    acc.apply_reading("M-1", 500_000, hours(1))  # a jump: quarantined
    acc.events.clear()
    # the person's final reading bills 600 kWh in 2 h on a 1 kW meter, and discards the quarantined reading
    assert acc.detach_meter("M-1", final_wh=600_000, at=hours(2), by="op") == 60_000
    assert acc.events[0] == ev.QuarantineResolved("A-1", "M-1", "discarded", 500_000, 0, "op")
    assert kinds(acc) == [ev.QuarantineResolved, ev.AccountCharged, ev.MeterDetached]


def test_a_final_reading_below_or_before_the_last_billed_one_is_refused_and_nothing_changes() -> None:
    acc = account()
    acc.attach_meter("M-1", energy_wh=1_000, at=hours(0))
    acc.apply_reading("M-1", 2_000, hours(1))
    state, entries = acc.state_dict(), list(acc.entries)
    with pytest.raises(InvalidAmount, match="below the last billed reading .*re-base the meter first"):
        acc.detach_meter("M-1", final_wh=1_999, at=hours(2))
    with pytest.raises(InvalidTime, match="before the last billed reading"):
        acc.detach_meter("M-1", final_wh=2_500, at=hours(0.5))
    with pytest.raises(InvalidTime, match="must be that reading"):
        acc.detach_meter("M-1", final_wh=2_500, at=hours(1))
    for bad in (-5, 10**13):
        with pytest.raises(InvalidAmount):
            acc.detach_meter("M-1", final_wh=bad, at=hours(2))
    assert acc.state_dict() == state and acc.entries == entries
    assert acc.detach_meter("M-1", final_wh=2_000, at=hours(1)) == 0  # the last reading itself: nothing to bill


def test_a_backwards_meter_is_rebased_before_its_final_reading() -> None:
    acc = account()
    acc.attach_meter("M-1", energy_wh=9_000, at=hours(0))
    acc.apply_reading("M-1", 100, hours(1))  # reset: quarantined
    with pytest.raises(InvalidAmount):
        acc.detach_meter("M-1", final_wh=300, at=hours(2))
    acc.rebase_meter("M-1")
    assert acc.detach_meter("M-1", final_wh=300, at=hours(2)) == 20


def test_a_meter_without_a_baseline_is_detached_with_nothing_billed() -> None:
    acc = account()
    acc.add_meter("M-1")
    assert acc.detach_meter("M-1", final_wh=0, at=hours(1)) == 0
    assert acc.cursors == {} and acc.entries == []
    assert acc.events == [ev.MeterDetached("A-1", "M-1", 0, hours(1), 0)]


def test_a_final_reading_is_priced_across_periods_and_a_tariff_change() -> None:
    change = TariffChange(dt.datetime(2026, 11, 30, 16, tzinfo=dt.UTC), "december", FlatTariff(Decimal("2.00")))
    acc = account(balance=10**6, tariff_change=change)
    acc.attach_meter("M-1", energy_wh=0, at=dt.datetime(2026, 11, 30, 4, tzinfo=dt.UTC))  # 12:00 in Shanghai
    # 24 h: 12 h in November at 1.00, 12 h in December at 2.00
    assert acc.detach_meter("M-1", final_wh=24_000, at=dt.datetime(2026, 12, 1, 4, tzinfo=dt.UTC)) == 1_200 + 2_400
    assert [(e.period, -e.amount_fen) for e in acc.entries] == [("2026-11", 1_200), ("2026-12", 2_400)]
    assert ev.TariffSwitched in kinds(acc) and acc.tariff is change.tariff


def test_replace_bills_the_old_meter_and_starts_the_new_one_in_the_same_period() -> None:
    acc = account(balance=10**6, tariff=TIERED)
    acc.attach_meter("OLD", energy_wh=0, at=hours(0), max_power_w=4_000)
    acc.apply_reading("OLD", 6_000, hours(2))
    acc.events.clear()
    assert acc.replace_meter("OLD", final_wh=8_000, new_id="NEW", initial_wh=12, at=hours(3), by="op") == 100
    assert kinds(acc) == [ev.AccountCharged, ev.MeterReplaced]
    assert acc.events[-1] == ev.MeterReplaced("A-1", "OLD", "NEW", 8_000, 12, hours(3), 100, "op")
    assert set(acc.cursors) == {"NEW"}
    new = acc.cursors["NEW"]
    assert (new.energy_wh, new.taken_at, new.max_power_w) == (12, hours(3), 4_000)  # the contract's capacity
    assert acc.period_wh == 8_000
    # the period goes on: 4 kWh more cross into the second tier (2 kWh at 0.50, 2 kWh at 1.00)
    assert acc.apply_reading("NEW", 4_012, hours(4)) == 100 + 200
    assert acc.period_wh == 12_000 and acc.period_charged_fen == TIERED.period_cost_fen(12_000)


def test_replace_under_the_same_id_and_with_a_new_capacity() -> None:
    acc = account()
    acc.attach_meter("M-1", energy_wh=50_000, at=hours(0), max_power_w=4_000)
    acc.add_meter("M-1", rollover_wh=10**6)
    assert acc.replace_meter("M-1", final_wh=51_000, new_id="M-1", initial_wh=0, at=hours(1),
                             max_power_w=8_000) == 100
    cursor = acc.cursors["M-1"]
    assert (cursor.energy_wh, cursor.max_power_w, cursor.rollover_wh) == (0, 8_000, None)  # the new register's
    assert acc.apply_reading("M-1", 1_000, hours(2)) == 100


def test_replace_refusals_change_nothing() -> None:
    acc = account()
    acc.attach_meter("A", energy_wh=1_000, at=hours(0))
    acc.attach_meter("B", energy_wh=0, at=hours(0))
    acc.apply_reading("A", 2_000, hours(1))
    state, events = acc.state_dict(), list(acc.events)
    with pytest.raises(MeterAlreadyAttached):
        acc.replace_meter("A", final_wh=3_000, new_id="B", initial_wh=0, at=hours(2))
    with pytest.raises(InvalidAmount):
        acc.replace_meter("A", final_wh=3_000, new_id="C", initial_wh=-1, at=hours(2))
    with pytest.raises(InvalidAmount):
        acc.replace_meter("A", final_wh=1_500, new_id="C", initial_wh=0, at=hours(2))
    with pytest.raises(InvalidTime):
        acc.replace_meter("A", final_wh=3_000, new_id="C", initial_wh=0, at=hours(0))
    with pytest.raises(UnknownMeter):
        acc.replace_meter("Z", final_wh=3_000, new_id="C", initial_wh=0, at=hours(2))
    assert acc.state_dict() == state and acc.events == events
    # a meter registered by configuration but not yet read can be the new one (its configuration kept)
    acc.add_meter("C", max_power_w=1_234)
    assert acc.replace_meter("A", final_wh=3_000, new_id="C", initial_wh=0, at=hours(2)) == 100
    assert acc.cursors["C"].max_power_w == 1_234


@pytest.mark.parametrize(("balance", "refund", "arrears", "settlement"),
                         [(1_234, 1_234, 0, -1_234), (-567, 0, 567, 567), (0, 0, 0, 0)])
def test_close_settles_the_balance_to_zero(balance: int, refund: int, arrears: int, settlement: int) -> None:
    acc = account(balance=balance)
    assert acc.close(hours(1), by="op", reason="moved out") == settlement
    assert acc.balance_fen == 0 and acc.closed and acc.closed_at == hours(1)
    assert acc.events == [ev.AccountClosed("A-1", balance, refund, arrears, "moved out", 0, "op")]
    expected = [] if not balance else [(EntryKind.REFUND if balance > 0 else EntryKind.ARREARS, settlement)]
    assert [(e.kind, e.amount_fen) for e in acc.entries] == expected
    assert all(e.balance_after_fen == 0 and e.at == hours(1) and e.detail == "moved out" for e in acc.entries)
    assert acc.state_dict()["closed_at"] == "2026-11-10T01:00:00Z"


def test_close_repays_outstanding_emergency_credit_before_refunding() -> None:
    """Emergency credit is in the balance (credited when granted) but is a loan: only the rest is refunded."""
    acc = account(balance=0)
    acc.attach_meter("M-1", energy_wh=0, at=hours(0))
    acc.grant_emergency_credit(hours(0), amount_fen=1_000)
    acc.apply_reading("M-1", 4_000, hours(1))  # 400 fen used: balance 600, all of it borrowed
    acc.detach_meter("M-1", final_wh=5_000, at=hours(2))  # 100 more: balance 500
    acc.events.clear()
    assert acc.close(hours(3)) == 500  # 1,000 repaid, 500 owed
    assert [(e.kind, e.amount_fen) for e in acc.entries[-2:]] == [(EntryKind.REPAYMENT, -1_000),
                                                                  (EntryKind.ARREARS, 500)]
    assert acc.events == [ev.EmergencyCreditRepaid("A-1", 1_000, 0, -500),
                          ev.AccountClosed("A-1", 500, 0, 500, "", 1_000, "")]
    assert acc.emergency.outstanding_fen == 0 and acc.balance_fen == 0


def test_close_needs_the_meters_detached_and_happens_once() -> None:
    acc = account()
    acc.attach_meter("M-1", energy_wh=0, at=hours(0))
    with pytest.raises(MetersStillAttached, match="M-1"):
        acc.close(hours(1))
    assert not acc.closed and acc.entries == []
    acc.detach_meter("M-1", final_wh=0, at=hours(1))
    acc.close(hours(1))
    with pytest.raises(ClosedAccount):
        acc.close(hours(2))


def test_a_closed_account_refuses_everything_but_queries() -> None:
    acc = account(balance=-5_000)
    acc.attach_meter("M-1", energy_wh=0, at=hours(0))
    acc.apply_payment("billing", "P-1", 1_000)
    acc.place_hold(hours(10))
    assert acc.evaluate(hours(1)) is Decision.NONE and acc.deferred_reason == "operator_hold"
    acc.detach_meter("M-1", final_wh=0, at=hours(1))
    acc.close(hours(2))
    assert (acc.hold_until, acc.deferred_reason, acc.balance_fen) == (None, "", 0)
    acc.events.clear()
    refused = [
        lambda: acc.apply_payment("billing", "P-2", 100),
        lambda: acc.apply_reversal("billing", "P-1", 1_000),
        lambda: acc.apply_adjustment(100, "late"),
        lambda: acc.grant_emergency_credit(hours(3)),
        lambda: acc.apply_reading("M-1", 10, hours(3)),
        lambda: acc.accept_reading("M-1"),
        lambda: acc.rebase_meter("M-1", energy_wh=0, taken_at=hours(3)),
        lambda: acc.attach_meter("M-2", energy_wh=0, at=hours(3)),
        lambda: acc.detach_meter("M-1", final_wh=0, at=hours(3)),
        lambda: acc.replace_meter("M-1", final_wh=0, new_id="M-2", initial_wh=0, at=hours(3)),
        lambda: acc.place_hold(hours(9)),
        lambda: acc.set_protected(True),
    ]
    for action in refused:
        with pytest.raises(ClosedAccount, match="account A-1 is closed"):
            action()
    acc.supply = Supply.DISCONNECTED
    acc.withdraw_disconnect("M-1", "offline")
    assert acc.supply is Supply.DISCONNECTED  # nothing to withdraw on a closed account
    acc.supply = Supply.CONNECTED
    assert acc.evaluate(hours(30)) is Decision.NONE and acc.settled()
    assert acc.events == [] and acc.entries[-1].balance_after_fen == 0
    again = PrepaidAccount.from_state(json.loads(json.dumps(acc.state_dict())), id="A-1", tariff=FLAT, site=SITE)
    assert again.closed_at == hours(2) and again.settled()
    with pytest.raises(ClosedAccount):
        again.apply_payment("billing", "P-3", 1)
    assert issubclass(ClosedAccount, DomainError) and issubclass(MetersStillAttached, DomainError)


# --- the ledger invariant through the account's whole life ------------------------------------------------
life = st.lists(st.one_of(
    st.tuples(st.just("pay"), st.integers(1, 50_000)),
    st.tuples(st.just("consume"), st.integers(0, 40_000)),
    st.tuples(st.just("emergency"), st.integers(1, 3_000)),
    st.tuples(st.just("adjust"), st.integers(-5_000, 5_000).filter(bool)),
    st.tuples(st.just("attach"), st.integers(0, 10**6)),
    st.tuples(st.just("detach"), st.integers(0, 40_000)),
    st.tuples(st.just("replace"), st.integers(0, 40_000)),
    st.tuples(st.just("close"), st.just(0)),
    st.tuples(st.just("days"), st.integers(1, 40)),
), max_size=50)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(opening=st.integers(-10_000, 10_000), ops=life, tiered=st.booleans())
def test_the_balance_is_the_sum_of_the_entries_through_the_accounts_life(opening: int, ops: list[tuple[str, int]],
                                                                         tiered: bool) -> None:
    """Random movements, meters moving in, out and replaced, and closing: after every step the balance equals
    the opening balance plus the entries (each entry's balance_after follows the last), the charges never go
    negative, a closed account's balance is zero and stays so, and the state survives a JSON round trip."""
    tariff = TIERED if tiered else FLAT
    acc = account(balance=opening, tariff=tariff)
    now, number, energy = T0, 0, {}
    for op, value in ops:
        number += 1
        now += dt.timedelta(hours=1)
        try:
            if op == "pay":
                acc.apply_payment("billing", f"P-{number}", value)
            elif op == "consume" and energy:
                meter = sorted(energy)[value % len(energy)]
                energy[meter] += value
                acc.apply_reading(meter, energy[meter], now)
            elif op == "emergency":
                acc.grant_emergency_credit(now, amount_fen=value)
            elif op == "adjust":
                acc.apply_adjustment(value, "random")
            elif op == "attach":
                acc.attach_meter(f"M-{number}", energy_wh=value, at=now, max_power_w=10**9)
                energy[f"M-{number}"] = value
            elif op == "detach" and energy:
                meter = sorted(energy)[value % len(energy)]
                acc.detach_meter(meter, final_wh=energy.pop(meter) + value, at=now)
            elif op == "replace" and energy:
                meter = sorted(energy)[value % len(energy)]
                acc.replace_meter(meter, final_wh=energy.pop(meter) + value, new_id=f"M-{number}", initial_wh=7,
                                  at=now)
                energy[f"M-{number}"] = 7
            elif op == "close":
                for meter in sorted(energy):
                    acc.detach_meter(meter, final_wh=energy.pop(meter), at=now)
                acc.close(now)
            elif op == "days":
                now += dt.timedelta(days=value)
        except ClosedAccount:
            assert acc.closed
        except EmergencyCreditRefused:
            pass
        acc.evaluate(now)
        balance = opening
        for entry in acc.entries:
            balance += entry.amount_fen
            assert entry.balance_after_fen == balance
            if entry.kind is EntryKind.CHARGE:
                assert entry.amount_fen < 0
        assert acc.balance_fen == balance
        assert set(acc.cursors) == set(energy)
        if acc.closed:
            assert acc.balance_fen == 0 and acc.emergency.outstanding_fen == 0 and acc.settled()
        state = acc.state_dict()
        again = PrepaidAccount.from_state(json.loads(json.dumps(state)), id="A-1", tariff=tariff,
                                          thresholds=acc.thresholds, site=SITE)
        assert again.state_dict() == state
