"""Property tests of the balance engine: no drift for every tariff kind, TOU split conservation, and the ledger
invariant under random money movements."""

from __future__ import annotations

import datetime as dt
import itertools
import json
from collections import defaultdict
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.domain.account import PrepaidAccount, Thresholds
from gateway.domain.calendar import FriendlyWindow
from gateway.domain.energy import apportion, rate_deltas, split_energy
from gateway.domain.errors import EmergencyCreditRefused
from gateway.domain.ledger import EntryKind
from gateway.domain.policy import SitePolicy
from gateway.domain.tariff_config import tariff_from_dict
from gateway.domain.tariffs import RATES, DaySchedule, Tariff, TouTariff, period_key, period_label

SHANGHAI = ZoneInfo("Asia/Shanghai")
SITE = SitePolicy(notice_period=dt.timedelta(0), stale_after=None)
T0 = dt.datetime(2026, 11, 20, 3, 17, tzinfo=dt.UTC)
PERIODS = {"08:00-11:00": "峰", "11:00-17:00": "平", "17:00-19:00": "峰", "19:00-21:00": "尖", "21:00-22:00": "峰",
           "22:00-24:00": "谷", "00:00-08:00": "谷"}
TIERS = [{"up_to_kwh": 50, "price": "0.5283"}, {"up_to_kwh": "120.5", "price": "0.5783"}, {"price": "0.8283"}]
TARIFFS: dict[str, dict[str, Any]] = {
    "flat": {"kind": "flat", "price": "0.5283"},
    "tiered_monthly": {"kind": "tiered", "period": "monthly", "tiers": TIERS},
    "tiered_yearly": {"kind": "tiered", "period": "yearly", "tiers": TIERS},
    "tou": {"kind": "tou", "prices": {"尖": "1.2345", "峰": "0.9871", "平": "0.6133", "谷": "0.3077"},
            "periods": PERIODS},
    "tiered_tou": {"kind": "tiered_tou", "period": "monthly",
                   "prices": {"尖": "1.2345", "峰": "0.9871", "平": "0.6133", "谷": "0.3077"}, "periods": PERIODS,
                   "tiers": [{"up_to_kwh": 40, "surcharge": "0"}, {"up_to_kwh": 90, "surcharge": "0.05"},
                             {"surcharge": "0.3"}]},
}

# one reading: minutes since the previous one, energy per register (4 registers) or total, and registers or not
steps = st.lists(st.tuples(st.integers(1, 3 * 24 * 60), st.lists(st.integers(0, 900), min_size=4, max_size=4),
                           st.booleans(), st.integers(-3, 3)), min_size=1, max_size=40)


def _account(tariff: Tariff, balance: int = 10**10) -> PrepaidAccount:
    account = PrepaidAccount("A-1", tariff, Thresholds(overdraft_fen=0), balance_fen=balance, site=SITE)
    account.add_meter("M-1", max_power_w=10**9)
    return account


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(sorted(TARIFFS)), readings=steps)
def test_charges_per_period_equal_the_tariff_of_the_period(kind: str, readings: list[Any]) -> None:
    """For every tariff kind, over random readings spanning periods, with and without registers: the charges of
    each billing period add up exactly to the tariff applied to that period's consumption (by rate)."""
    tariff = tariff_from_dict(TARIFFS[kind])
    account = _account(tariff)
    registers, total, when = [0, 0, 0, 0], 0, T0
    account.apply_reading("M-1", total, when, rates_wh=registers)
    used: dict[dt.date, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    previous: tuple[int, ...] | None = tuple(registers)
    for minutes, per_register, with_registers, skew in readings:
        t0, when = when, when + dt.timedelta(minutes=minutes)
        registers = [r + d for r, d in zip(registers, per_register, strict=True)]
        delta = max(sum(per_register) + skew, 0)  # the total may differ a little from the registers' sum
        total += delta
        now_registers = tuple(registers) if with_registers else None
        expected = split_energy(t0, when, delta, tariff, SHANGHAI, rate_deltas(tariff, previous, now_registers))
        for key, by_rate in expected.items():
            for rate, wh in by_rate.items():
                used[key][rate] += wh
        previous = now_registers
        account.apply_reading("M-1", total, when, rates_wh=now_registers)
    charged: dict[str, int] = defaultdict(int)
    for entry in account.entries:
        assert entry.kind is EntryKind.CHARGE and entry.period is not None
        charged[entry.period] += -entry.amount_fen
    for key, by_rate in used.items():
        energy = sum(by_rate.values())
        cost = tariff.period_cost_fen(energy, by_rate if tariff.schedule is not None else None)
        assert charged.get(period_label(key, tariff.period), 0) == cost
    assert sum(e.energy_wh or 0 for e in account.entries) <= total
    assert account.balance_fen == 10**10 - sum(charged.values())


@settings(max_examples=60, deadline=None)
@given(kind=st.sampled_from(["flat", "tiered_monthly"]), deltas=st.lists(st.integers(0, 5000), max_size=60))
def test_within_one_period_the_sum_of_charges_is_the_tariff_of_the_total(kind: str, deltas: list[int]) -> None:
    tariff = tariff_from_dict(TARIFFS[kind])
    account, total = _account(tariff), 0
    start = dt.datetime(2026, 11, 2, tzinfo=dt.UTC)
    account.apply_reading("M-1", 0, start)
    for i, delta in enumerate(deltas, start=1):
        total += delta
        account.apply_reading("M-1", total, start + dt.timedelta(minutes=i))
    assert -sum(e.amount_fen for e in account.entries) == tariff.period_cost_fen(total)


@st.composite
def schedules(draw: st.DrawFn) -> DaySchedule:
    cuts = sorted(draw(st.sets(st.integers(1, 1439), max_size=7)))
    edges = [0, *cuts, 1440]
    spans = tuple((a, b, draw(st.sampled_from(RATES))) for a, b in itertools.pairwise(edges))
    return DaySchedule(spans)


@settings(max_examples=150, deadline=None)
@given(schedule=schedules(), start_min=st.integers(0, 400 * 24 * 60), minutes=st.integers(1, 100 * 24 * 60),
       delta=st.integers(0, 10**7), zone=st.sampled_from(["Asia/Shanghai", "Europe/Paris", "UTC", "America/New_York"]),
       period=st.sampled_from(["monthly", "yearly"]),
       registers=st.none() | st.dictionaries(st.sampled_from(RATES), st.integers(0, 10**6), min_size=1))
def test_tou_split_conserves_energy(schedule: DaySchedule, start_min: int, minutes: int, delta: int, zone: str,
                                   period: str, registers: dict[str, int] | None) -> None:
    """However the day is cut and whatever the time zone (DST included): the parts add up to the delta."""
    tariff = TouTariff({r: 1 for r in RATES}, schedule, period)  # type: ignore[misc]
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(minutes=start_min)
    t1 = t0 + dt.timedelta(minutes=minutes)
    by_register = {r: w for r, w in (registers or {}).items() if w} or None
    split = split_energy(t0, t1, delta, tariff, ZoneInfo(zone), by_register)
    assert sum(wh for by_rate in split.values() for wh in by_rate.values()) == delta
    assert all(wh > 0 for by_rate in split.values() for wh in by_rate.values())
    first, last = (period_key(t.astimezone(ZoneInfo(zone)).date(), period) for t in (t0, t1))
    assert all(first <= key <= last for key in split)
    if by_register is None:
        assert {r for by_rate in split.values() for r in by_rate} <= set(schedule.rates)
    else:
        assert {r for by_rate in split.values() for r in by_rate} <= set(by_register)


@given(st.integers(0, 10**9), st.lists(st.integers(0, 10**6), min_size=1, max_size=20))
def test_apportion_is_exact_and_fair(total: int, weights: list[int]) -> None:
    shares = apportion(total, weights)
    assert sum(shares) == total and all(s >= 0 for s in shares)
    whole = sum(weights)
    if whole:
        for share, weight in zip(shares, weights, strict=True):
            assert abs(share * whole - total * weight) < whole  # within one unit of the exact share


operations = st.lists(st.one_of(
    st.tuples(st.just("pay"), st.integers(1, 50_000)),
    st.tuples(st.just("reverse"), st.integers(0, 30)),
    st.tuples(st.just("consume"), st.integers(0, 40_000)),
    st.tuples(st.just("emergency"), st.integers(1, 3_000)),
    st.tuples(st.just("adjust"), st.integers(-5_000, 5_000).filter(bool)),
    st.tuples(st.just("days"), st.integers(1, 40)),
), max_size=60)


@settings(max_examples=100, deadline=None)
@given(opening=st.integers(-10_000, 10_000), ops=operations)
def test_ledger_invariant_under_random_movements(opening: int, ops: list[tuple[str, int]]) -> None:
    """After every movement: balance == opening + sum of entries, each entry's balance_after follows the last,
    the emergency debt is never negative, and the state survives a JSON round trip."""
    tariff = tariff_from_dict(TARIFFS["tiered_tou"])
    account = _account(tariff, opening)
    now, energy, payments, reversed_ = T0, 0, [], set()
    account.apply_reading("M-1", 0, now)
    for number, (op, value) in enumerate(ops):
        if op == "pay":
            payments.append((f"P-{number}", value))
            account.apply_payment("billing", f"P-{number}", value)
        elif op == "reverse" and payments:
            payment_id, amount = payments[value % len(payments)]
            if payment_id not in reversed_:
                reversed_.add(payment_id)
                account.apply_reversal("billing", payment_id, amount)
        elif op == "consume":
            now, energy = now + dt.timedelta(hours=1), energy + value
            account.apply_reading("M-1", energy, now)
        elif op == "emergency":
            try:
                account.grant_emergency_credit(now, amount_fen=value)
            except EmergencyCreditRefused:
                pass
        elif op == "adjust":
            account.apply_adjustment(value, "random")
        elif op == "days":
            now += dt.timedelta(days=value)
        account.evaluate(now)
        balance = opening
        for entry in account.entries:
            balance += entry.amount_fen
            assert entry.balance_after_fen == balance
        assert account.balance_fen == balance
        assert account.emergency.outstanding_fen >= 0
        state = account.state_dict()
        again = PrepaidAccount.from_state(json.loads(json.dumps(state)), id="A-1", tariff=tariff,
                                          thresholds=account.thresholds, site=SITE)
        assert again.state_dict() == state


ABSORB_SITE = SitePolicy(stale_after=dt.timedelta(minutes=5), notice_period=dt.timedelta(hours=1),
                         friendly_windows=(FriendlyWindow("night", start_minute=22 * 60, end_minute=8 * 60),),
                         max_auto_disconnects_per_minute=1)

# one step: minutes since the previous reading, Wh consumed (often none), an operator or money movement, and
# whether the account is evaluated after that movement (the writer always does; the domain does not require it)
absorb_steps = st.lists(st.tuples(st.integers(0, 5) | st.integers(0, 40 * 24 * 60),
                                  st.sampled_from([0, 0, 0, 1, 7, 500, 20_000]),
                                  st.sampled_from(["", "", "", "pay", "charge", "protect", "hold", "manual"]),
                                  st.integers(1, 30_000), st.booleans()),
                        min_size=1, max_size=40)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(["flat", "tiered_monthly", "tou"]), opening=st.integers(-6_000, 6_000),
       overdraft=st.sampled_from([0, 1_000]), steps=absorb_steps, with_registers=st.booleans())
def test_a_reading_that_changes_nothing_is_exactly_that(
        kind: str, opening: int, overdraft: int, steps: list[Any], with_registers: bool) -> None:
    """Whenever ``reading_changes_nothing`` says so, billing the reading and evaluating the account the normal
    way (``apply_reading`` then ``evaluate``) gives no event, no entry, no decision, and the same state but the
    meter's time; and asking changes nothing. Accounts wander through warnings, deferrals, disconnects, holds
    and billing periods on the way, and a reading says so at least sometimes (the cases are not all refused)."""
    tariff = tariff_from_dict(TARIFFS[kind])
    account = PrepaidAccount("A-1", tariff, Thresholds(warning1_fen=2_000, warning2_fen=500, overdraft_fen=overdraft),
                             balance_fen=opening, site=ABSORB_SITE)
    account.add_meter("M-1", max_power_w=10_000)
    limiter = ABSORB_SITE.limiter()
    energy, when = 1_000, T0
    registers = [250, 250, 250, 250]
    account.apply_reading("M-1", energy, when, rates_wh=registers if with_registers else None)
    account.evaluate(when, limiter=limiter)
    for n, (minutes, wh, action, amount, evaluate) in enumerate(steps):
        when += dt.timedelta(minutes=minutes)
        if action == "pay":
            account.apply_payment("billing", f"P-{n}", amount)
        elif action == "charge":
            account.apply_reversal("billing", f"R-{n}", amount, reason="test")
        elif action == "protect":
            account.set_protected(not account.operator_protected)
        elif action == "hold":
            account.place_hold(when + dt.timedelta(minutes=amount % 600))
        elif action == "manual":
            account.manual_switch("open" if account.supply.value == "connected" else "close", when,
                                  hold=dt.timedelta(hours=1))
        if action and evaluate:
            account.evaluate(when, limiter=limiter)
        energy += wh
        registers[n % 4] += wh
        rates = tuple(registers) if with_registers else None
        account.events.clear()
        account.entries.clear()
        before = account.state_dict()
        if account.reading_changes_nothing("M-1", energy, when, rates):
            assert account.state_dict() == before
            account.apply_reading("M-1", energy, when, rates_wh=rates)
            assert account.evaluate(when, limiter=ABSORB_SITE.limiter()).value == "none"
            assert account.events == [] and account.entries == []
            after = account.state_dict()
            for state in (before, after):
                state["meters"]["M-1"].pop("taken_at")
                state["meters"]["M-1"].pop("seen_at")
            assert after == before
        else:
            assert account.state_dict() == before
            account.apply_reading("M-1", energy, when, rates_wh=rates)
            account.evaluate(when, limiter=limiter)


def test_an_unchanged_reading_of_a_settled_account_changes_nothing() -> None:
    """The property above is not vacuous: the plain case says yes, and a newer energy, an older time or an
    account with a decision pending say no."""
    tariff = tariff_from_dict(TARIFFS["flat"])
    account = PrepaidAccount("A-1", tariff, Thresholds(warning1_fen=2_000, warning2_fen=500), balance_fen=10_000,
                             site=ABSORB_SITE)
    account.add_meter("M-1")
    account.apply_reading("M-1", 1_000, T0)
    first = T0 + dt.timedelta(minutes=1)
    account.apply_reading("M-1", 1_100, first)  # the first bill opens the billing period
    account.evaluate(first, limiter=ABSORB_SITE.limiter())
    later = first + dt.timedelta(minutes=1)
    assert account.reading_changes_nothing("M-1", 1_100, later)
    assert not account.reading_changes_nothing("M-1", 1_101, later)
    assert not account.reading_changes_nothing("M-1", 1_100, first)
    assert not account.reading_changes_nothing("M-2", 1_100, later)
    account.apply_reversal("billing", "R-1", 12_000, reason="test")  # below the disconnect point: to decide
    assert not account.reading_changes_nothing("M-1", 1_100, later)


@settings(max_examples=80, deadline=None)
@given(kind=st.sampled_from(["flat", "tiered_monthly", "tiered_yearly"]),
       steps=st.lists(st.tuples(st.integers(1, 40 * 24 * 60), st.booleans(), st.integers(0, 50_000)), max_size=30))
def test_billing_within_a_period_takes_the_short_way_to_the_same_result(kind: str,
                                                                        steps: list[tuple[int, bool, int]]) -> None:
    """Readings of a tariff without time-of-use rates that stay in the current period skip the walk over
    periods; that changes nothing: entries, events and state are those of the general path, readings exactly
    on a period's first instant included (they close the period)."""
    from unittest import mock

    from gateway.domain import account_readings
    from gateway.domain.energy import period_bounds

    tariff = tariff_from_dict(TARIFFS[kind])
    short, general = _account(tariff), _account(tariff)
    when, total = T0, 0
    with mock.patch.object(account_readings, "_within", lambda *args: False):
        general.apply_reading("M-1", total, when)
    short.apply_reading("M-1", total, when)
    for minutes, snap, delta in steps:
        when += dt.timedelta(minutes=minutes)
        if snap:  # exactly the start of the next billing period
            key = period_key(when.astimezone(SHANGHAI).date(), tariff.period)
            when = period_bounds(key, tariff.period, SHANGHAI)[1]
        total += delta
        short.apply_reading("M-1", total, when)
        with mock.patch.object(account_readings, "_within", lambda *args: False):
            general.apply_reading("M-1", total, when)
    assert short.entries == general.entries
    assert short.events == general.events
    assert short.state_dict() == general.state_dict()
