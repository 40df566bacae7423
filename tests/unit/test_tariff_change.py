"""A tariff change effective at a given time: energy before it at the old prices, after it at the new ones, the
billing period going on across the switch (a tiered tariff keeps its tier position), no drift, and the switch
recorded in the state so that a reloaded account bills at the right tariff."""

from __future__ import annotations

import datetime as dt
import json
from collections import defaultdict
from collections.abc import Mapping
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.domain import events as ev
from gateway.domain.account import PrepaidAccount, TariffChange, Thresholds
from gateway.domain.billing import BillingState
from gateway.domain.energy import apportion, rate_deltas, split_energy
from gateway.domain.ledger import EntryKind
from gateway.domain.policy import SitePolicy
from gateway.domain.tariff_config import tariff_from_dict
from gateway.domain.tariffs import FlatTariff, Tariff, Tier, TieredTariff, period_key, period_label

SHANGHAI = ZoneInfo("Asia/Shanghai")
SITE = SitePolicy(notice_period=dt.timedelta(0), stale_after=None)
T0 = dt.datetime(2026, 11, 10, 0, 0, tzinfo=dt.UTC)  # 08:00 in Shanghai
OLD = FlatTariff(Decimal("1.00"))
NEW = FlatTariff(Decimal("2.00"))
TWO_RATES = {"08:00-22:00": "peak", "22:00-08:00": "valley"}


def hours(h: float) -> dt.datetime:
    return T0 + dt.timedelta(hours=h)


def account(tariff: Tariff = OLD, change: TariffChange | None = None, *meters: str) -> PrepaidAccount:
    acc = PrepaidAccount("A-1", tariff, Thresholds(overdraft_fen=0), balance_fen=10**9, site=SITE,
                         tariff_change=change)
    for meter in meters or ("M-1",):
        acc.add_meter(meter, max_power_w=10**9)
    return acc


def charges(acc: PrepaidAccount) -> list[int]:
    return [-e.amount_fen for e in acc.entries if e.kind is EntryKind.CHARGE]


def test_a_reading_across_the_change_is_split_in_proportion_to_time() -> None:
    change = TariffChange(hours(1), "2027 prices", NEW)
    acc = account(OLD, change)
    acc.apply_reading("M-1", 0, hours(0))
    assert acc.apply_reading("M-1", 3_000, hours(3)) == 100 + 400  # 1 kWh at 1.00, then 2 kWh at 2.00
    assert charges(acc) == [100, 400]
    assert (acc.tariff, acc.tariff_change, acc.tariff_switch) == (NEW, None, (hours(1), "2027 prices"))
    assert [type(e) for e in acc.events] == [ev.TariffSwitched, ev.AccountCharged]
    assert acc.events[0] == ev.TariffSwitched("A-1", "2027 prices", hours(1))
    assert acc.state_dict()["tariff_switch"] == {"at": "2026-11-10T01:00:00Z", "name": "2027 prices"}
    assert acc.billing.to_dict()["base_fen"] == 100 and acc.billing.base_wh == 1_000
    assert acc.apply_reading("M-1", 4_000, hours(4)) == 200  # at the new prices, in the same period


def test_readings_up_to_the_change_are_billed_at_the_old_prices() -> None:
    acc = account(OLD, TariffChange(hours(2), "new", NEW))
    acc.apply_reading("M-1", 0, hours(0))
    assert acc.apply_reading("M-1", 1_000, hours(1)) == 100
    assert acc.apply_reading("M-1", 2_000, hours(2)) == 100  # taken at the change: still the old prices
    assert acc.tariff is OLD and acc.tariff_change is not None and acc.tariff_switch is None
    assert acc.apply_reading("M-1", 3_000, hours(2.5)) == 200  # nothing to split: all after the change
    assert acc.tariff is NEW and acc.tariff_change is None


def test_the_switch_waits_for_a_billed_reading_after_the_change() -> None:
    acc = account(OLD, TariffChange(hours(1), "new", NEW))
    acc.apply_reading("M-1", 5_000, hours(2))  # a first reading (baseline) after the change bills nothing...
    assert acc.tariff is OLD
    acc.apply_reading("M-1", 100, hours(3))  # ...nor does a quarantined one
    assert acc.tariff is OLD and acc.cursors["M-1"].pending is not None
    assert acc.apply_reading("M-1", 6_000, hours(3.5)) == 200
    assert acc.tariff is NEW and acc.cursors["M-1"].pending is None


def test_a_tiered_tariff_keeps_counting_the_period_across_the_change() -> None:
    old = TieredTariff((Tier(10_000, Decimal("0.50")), Tier(None, Decimal("1.00"))))
    new = TieredTariff((Tier(10_000, Decimal("0.60")), Tier(None, Decimal("1.20"))))
    acc = account(old, TariffChange(hours(10), "new", new))
    acc.apply_reading("M-1", 0, hours(0))
    assert acc.apply_reading("M-1", 8_000, hours(10)) == 400  # 8 kWh in the first tier at 0.50
    # 4 kWh more: 2 kWh left in the first tier at the new 0.60, 2 kWh in the second at 1.20
    assert acc.apply_reading("M-1", 12_000, hours(11)) == new.period_cost_fen(12_000) - new.period_cost_fen(8_000)
    assert charges(acc)[-1] == 120 + 240
    # a new period starts from the first tier, at the new prices, without a base
    december = dt.datetime(2026, 12, 5, tzinfo=dt.UTC)
    acc.apply_reading("M-1", 12_000, december)
    assert acc.billing.to_dict().keys() == {"period_start", "energy_wh", "rate_wh", "charged_fen"}
    assert acc.apply_reading("M-1", 17_000, december + dt.timedelta(hours=1)) == 300


def test_registers_are_mapped_by_the_new_tariff_after_the_change() -> None:
    """Old flat (no rates), new time of use: an interval after the change uses the meter's registers (all in
    the valley register, though the clock says peak); an interval across it is split by time only."""
    new = tariff_from_dict({"kind": "tou", "prices": {"peak": "2.00", "valley": "0.80"}, "periods": TWO_RATES})
    acc = account(OLD, TariffChange(hours(0), "tou", new))
    acc.apply_reading("M-1", 0, hours(1), rates_wh=[0, 0, 0, 0])
    assert acc.apply_reading("M-1", 1_000, hours(2), rates_wh=[0, 0, 0, 1_000]) == 80
    assert acc.billing.rate_wh == {"valley": 1_000}

    across = account(OLD, TariffChange(hours(1), "tou", new))
    across.apply_reading("M-1", 0, hours(0), rates_wh=[0, 0, 0, 0])
    # 1 kWh before the change at 1.00, 1 kWh after it by time: 09:00-10:00 in Shanghai is peak, 2.00
    assert across.apply_reading("M-1", 2_000, hours(2), rates_wh=[0, 0, 0, 2_000]) == 100 + 200
    assert across.billing.rate_wh == {"peak": 1_000}

    old = tariff_from_dict({"kind": "tou", "prices": {"peak": "1.00", "valley": "0.50"}, "periods": TWO_RATES})
    both = account(old, TariffChange(hours(1), "tou", new))
    both.apply_reading("M-1", 0, hours(0), rates_wh=[0, 0, 0, 0])
    # the registers say valley, but across the change both halves go by time: peak at 1.00, then at 2.00
    assert both.apply_reading("M-1", 2_000, hours(2), rates_wh=[0, 0, 0, 2_000]) == 100 + 200
    assert both.apply_reading("M-1", 3_000, hours(3), rates_wh=[0, 0, 0, 3_000]) == 80  # registers again


def test_a_change_between_time_of_use_tariffs_with_other_rates() -> None:
    """The old tariff's rates the new one does not price are left out of its cost (they cancel)."""
    old = tariff_from_dict({"kind": "tou", "prices": {"flat": "1.00"}, "periods": {"00:00-24:00": "flat"}})
    new = tariff_from_dict({"kind": "tou", "prices": {"peak": "2.00", "valley": "0.80"}, "periods": TWO_RATES})
    acc = account(old, TariffChange(hours(1), "tou", new))
    acc.apply_reading("M-1", 0, hours(0))
    assert acc.apply_reading("M-1", 2_000, hours(2)) == 100 + 200
    assert acc.billing.rate_wh == {"flat": 1_000, "peak": 1_000}
    assert acc.billing.cost_fen(new) == 300 == acc.period_charged_fen


def test_a_change_at_the_start_of_a_period_needs_no_base() -> None:
    december = dt.datetime(2026, 11, 30, 16, 0, tzinfo=dt.UTC)  # 2026-12-01 00:00 in Shanghai
    acc = account(OLD, TariffChange(december, "new", NEW))
    acc.apply_reading("M-1", 0, december - dt.timedelta(hours=1))
    assert acc.apply_reading("M-1", 2_000, december + dt.timedelta(hours=1)) == 100 + 200
    assert [(e.period, -e.amount_fen) for e in acc.entries] == [("2026-11", 100), ("2026-12", 200)]
    assert [type(e) for e in acc.events] == [ev.BillingPeriodClosed, ev.TariffSwitched, ev.AccountCharged]
    assert not acc.billing.has_base


def test_a_change_of_the_period_kind_closes_the_period_at_the_switch() -> None:
    yearly = TieredTariff((Tier(10_000, Decimal("0.50")), Tier(None, Decimal("1.00"))), period="yearly")
    acc = account(OLD, TariffChange(hours(1), "yearly", yearly))
    acc.apply_reading("M-1", 0, hours(0))
    assert acc.apply_reading("M-1", 2_000, hours(2)) == 100 + 50
    closed = [e for e in acc.events if isinstance(e, ev.BillingPeriodClosed)]
    assert closed == [ev.BillingPeriodClosed("A-1", "2026-11", 1_000, 100)]
    assert [e.period for e in acc.entries] == ["2026-11", "2026"]
    assert (acc.billing.period_start, acc.billing.energy_wh, acc.billing.has_base) == (dt.date(2026, 1, 1),
                                                                                      1_000, False)


def test_the_limit_with_several_meters() -> None:
    """Documented: another meter's energy before the change that arrives after the switch is billed at the new
    prices (no rebilling); and a change before a billed reading is refused by ``tariff_change_allowed``."""
    acc = account(OLD, TariffChange(hours(1), "new", NEW), "M-1", "M-2")
    acc.apply_reading("M-1", 0, hours(0))
    acc.apply_reading("M-2", 0, hours(0))
    acc.apply_reading("M-1", 1_000, hours(2))  # switches
    assert acc.tariff is NEW
    assert acc.apply_reading("M-2", 500, hours(0.5)) == 100  # 500 Wh before the change, at the new 2.00


def test_tariff_change_allowed() -> None:
    acc = account(OLD, None, "M-1", "M-2")
    assert acc.tariff_change_allowed(hours(0)) == ""
    acc.apply_reading("M-1", 0, hours(1))
    acc.apply_reading("M-2", 0, hours(3))
    assert acc.tariff_change_allowed(hours(3)) == ""  # a reading at the change's time bills at the old prices
    why = acc.tariff_change_allowed(hours(2))
    assert "2026-11-10T03:00:00Z is already billed at the current prices" in why
    with pytest.raises(ValueError):
        acc.tariff_change_allowed(dt.datetime(2026, 11, 10))  # naive
    acc.detach_meter("M-1", final_wh=0, at=hours(4))
    acc.detach_meter("M-2", final_wh=0, at=hours(4))
    acc.close(hours(5))
    assert "closed" in acc.tariff_change_allowed(hours(6))


def test_reading_changes_nothing_is_false_when_the_reading_would_switch() -> None:
    acc = account(OLD, TariffChange(hours(5), "new", NEW))
    acc.apply_reading("M-1", 1_000, hours(0))
    acc.apply_reading("M-1", 1_000, hours(1))
    assert acc.reading_changes_nothing("M-1", 1_000, hours(2))
    assert not acc.reading_changes_nothing("M-1", 1_000, hours(6))
    acc.apply_reading("M-1", 1_000, hours(6))
    assert acc.tariff is NEW and acc.reading_changes_nothing("M-1", 1_000, hours(7))


def test_the_state_records_the_switch_and_from_state_honours_it() -> None:
    change = TariffChange(hours(1), "2027", NEW)
    acc = account(OLD, change)
    acc.apply_reading("M-1", 0, hours(0))
    pending = PrepaidAccount.from_state(acc.state_dict(), id="A-1", tariff=OLD, site=SITE, tariff_change=change)
    assert (pending.tariff, pending.tariff_change, pending.tariff_switch) == (OLD, change, None)
    acc.apply_reading("M-1", 1_000, hours(2))
    state = json.loads(json.dumps(acc.state_dict()))
    # the service goes on passing the configured old tariff and the change: the account bills at the new one
    again = PrepaidAccount.from_state(state, id="A-1", tariff=OLD, site=SITE, tariff_change=change)
    assert (again.tariff, again.tariff_change, again.tariff_switch) == (NEW, None, (hours(1), "2027"))
    assert again.state_dict() == acc.state_dict()
    # once the configuration is promoted: the new tariff and no change
    promoted = PrepaidAccount.from_state(state, id="A-1", tariff=NEW, site=SITE)
    assert (promoted.tariff, promoted.tariff_change, promoted.tariff_switch) == (NEW, None, (hours(1), "2027"))
    # another change (another name or time) is pending
    later = TariffChange(hours(9), "2028", OLD)
    other = PrepaidAccount.from_state(state, id="A-1", tariff=NEW, site=SITE, tariff_change=later)
    assert (other.tariff, other.tariff_change) == (NEW, later)


def test_an_old_state_reads_with_the_defaults() -> None:
    acc = account()
    acc.apply_reading("M-1", 0, hours(0))
    acc.apply_reading("M-1", 1_000, hours(1))
    state = acc.state_dict()
    assert state["tariff_switch"] is None and state["closed_at"] is None
    assert "base_wh" not in state["billing"]
    old = {k: v for k, v in state.items() if k not in ("tariff_switch", "closed_at")}
    again = PrepaidAccount.from_state(old, id="A-1", tariff=OLD, site=SITE)
    assert again.state_dict() == state and again.closed_at is None and again.tariff_switch is None
    billing = BillingState.from_dict({"period_start": "2026-11-01", "energy_wh": 5, "charged_fen": 1})
    assert (billing.base_wh, billing.base_rate_wh, billing.base_fen) == (0, {}, 0)
    based = BillingState(dt.date(2026, 11, 1), 5, {"peak": 5}, 3, 2, {"peak": 2}, 1)
    assert BillingState.from_dict(json.loads(json.dumps(based.to_dict()))) == based


def test_a_change_takes_an_aware_time_kept_in_utc() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        TariffChange(dt.datetime(2027, 1, 1), "new", NEW)
    local = dt.datetime(2027, 1, 1, tzinfo=SHANGHAI)
    change = TariffChange(local, "new", NEW)
    assert change.at == dt.datetime(2026, 12, 31, 16, tzinfo=dt.UTC) and change.at.tzinfo is dt.UTC
    assert ev.event_dict(ev.TariffSwitched("A-1", "new", change.at)) == {
        "type": "TariffSwitched", "account_id": "A-1", "name": "new", "at": "2026-12-31T16:00:00Z"}


# --- properties -------------------------------------------------------------------------------------------
PERIODS = {"08:00-11:00": "峰", "11:00-17:00": "平", "17:00-19:00": "峰", "19:00-21:00": "尖", "21:00-22:00": "峰",
           "22:00-24:00": "谷", "00:00-08:00": "谷"}


def _kinds(scale: str) -> dict[str, Tariff]:
    """Monthly tariffs of every kind, prices scaled so that the old and the new differ."""
    k = Decimal(scale)

    def p(price: str) -> str:
        return str((Decimal(price) * k).quantize(Decimal("0.0001")))

    prices = {"尖": p("1.2345"), "峰": p("0.9871"), "平": p("0.6133"), "谷": p("0.3077")}
    tiers = [{"up_to_kwh": 50, "price": p("0.5283")}, {"up_to_kwh": "120.5", "price": p("0.5783")},
             {"price": p("0.8283")}]
    return {name: tariff_from_dict(data) for name, data in {
        "flat": {"kind": "flat", "price": p("0.5283")},
        "tiered": {"kind": "tiered", "period": "monthly", "tiers": tiers},
        "tou": {"kind": "tou", "prices": prices, "periods": PERIODS},
        "tiered_tou": {"kind": "tiered_tou", "period": "monthly", "prices": prices, "periods": PERIODS,
                       "tiers": [{"up_to_kwh": 40, "surcharge": "0"}, {"up_to_kwh": 90, "surcharge": p("0.05")},
                                 {"surcharge": p("0.3")}]},
    }.items()}


OLD_KINDS, NEW_KINDS = _kinds("1"), _kinds("1.37")
# one reading: minutes since the previous one, energy per register (4 registers), registers or not, total skew
steps = st.lists(st.tuples(st.integers(1, 3 * 24 * 60), st.lists(st.integers(0, 900), min_size=4, max_size=4),
                           st.booleans(), st.integers(-3, 3)), min_size=1, max_size=40)


def _cost(tariff: Tariff, energy: int, by_rate: Mapping[str, int]) -> int:
    return tariff.period_cost_fen(energy, {r: wh for r, wh in by_rate.items() if r in tariff.rates})


def _add(into: dict[dt.date, dict[str, int]], energy: Mapping[dt.date, Mapping[str, int]]) -> None:
    for key, by_rate in energy.items():
        for rate, wh in by_rate.items():
            into.setdefault(key, {})
            into[key][rate] = into[key].get(rate, 0) + wh


def _micros(a: dt.datetime, b: dt.datetime) -> int:
    return (b - a) // dt.timedelta(microseconds=1)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(old_kind=st.sampled_from(sorted(OLD_KINDS)), new_kind=st.sampled_from(sorted(NEW_KINDS)),
       change_min=st.integers(-60, 30 * 24 * 60), readings=steps)
def test_each_period_costs_the_old_prices_before_the_switch_and_the_new_ones_after(
        old_kind: str, new_kind: str, change_min: int, readings: list[Any]) -> None:
    """Whatever the two tariffs, the time of the change and the readings (with and without registers): each
    period's charges add up to its cost; the period of the switch costs the old prices of its energy before the
    switch plus the new prices of the rest counted from where the period stood (new cost at the end - new cost
    at the switch). So nothing drifts, however many readings."""
    old, new = OLD_KINDS[old_kind], NEW_KINDS[new_kind]
    at = T0 + dt.timedelta(minutes=change_min)
    acc = account(old, TariffChange(at, "new", new))
    used_old: dict[dt.date, dict[str, int]] = {}
    used_new: dict[dt.date, dict[str, int]] = {}
    registers, total, when, previous = [0, 0, 0, 0], 0, T0, (0, 0, 0, 0)
    acc.apply_reading("M-1", total, when, rates_wh=registers)
    for minutes, per_register, with_registers, skew in readings:
        t0, when = when, when + dt.timedelta(minutes=minutes)
        registers = [r + d for r, d in zip(registers, per_register, strict=True)]
        delta = max(sum(per_register) + skew, 0)
        total += delta
        now_registers = tuple(registers) if with_registers else None
        if when <= at:
            _add(used_old, split_energy(t0, when, delta, old, SHANGHAI, rate_deltas(old, previous, now_registers)))
        elif t0 < at:
            before, after = apportion(delta, [_micros(t0, at), _micros(at, when)])
            _add(used_old, split_energy(t0, at, before, old, SHANGHAI))
            _add(used_new, split_energy(at, when, after, new, SHANGHAI))
        else:
            _add(used_new, split_energy(t0, when, delta, new, SHANGHAI, rate_deltas(new, previous, now_registers)))
        previous = now_registers
        acc.apply_reading("M-1", total, when, rates_wh=now_registers)
    switched = when > at and len(readings) > 0
    assert (acc.tariff is new) == switched and (acc.tariff_change is None) == switched
    switch_period = period_key(at.astimezone(SHANGHAI).date(), "monthly")
    expected: dict[str, int] = defaultdict(int)
    for key in {*used_old, *used_new}:
        o, n = used_old.get(key, {}), used_new.get(key, {})
        e_old, e_new = sum(o.values()), sum(n.values())
        both = {r: o.get(r, 0) + n.get(r, 0) for r in {*o, *n}}
        if key == switch_period and switched:
            cost = _cost(old, e_old, o) + _cost(new, e_old + e_new, both) - _cost(new, e_old, o)
        else:
            assert not (o and n and any(o.values()) and any(n.values()))  # one tariff per other period
            cost = _cost(old, e_old, o) + _cost(new, e_new, n)
        expected[period_label(key, "monthly")] += cost
    charged: dict[str, int] = defaultdict(int)
    for entry in acc.entries:
        assert entry.kind is EntryKind.CHARGE and entry.period is not None and entry.amount_fen <= 0
        charged[entry.period] += -entry.amount_fen
    assert {k: v for k, v in charged.items() if v} == {k: v for k, v in expected.items() if v}
    assert acc.balance_fen == 10**9 - sum(charged.values())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(old_kind=st.sampled_from(["flat", "tiered"]), new_kind=st.sampled_from(["flat", "tiered"]),
       deltas=st.lists(st.integers(0, 700), min_size=1, max_size=400), switch=st.integers(0, 400))
def test_many_small_readings_across_the_change_do_not_drift(old_kind: str, new_kind: str, deltas: list[int],
                                                           switch: int) -> None:
    """Hundreds of readings a minute apart within one period, the change at one of them: the period's charges
    are old cost(energy at the switch) + new cost(energy at the end) - new cost(energy at the switch)."""
    old, new = OLD_KINDS[old_kind], NEW_KINDS[new_kind]
    start = dt.datetime(2026, 11, 2, tzinfo=dt.UTC)
    acc = account(old, TariffChange(start + dt.timedelta(minutes=switch), "new", new))
    acc.apply_reading("M-1", 0, start)
    total = 0
    for minute, delta in enumerate(deltas, start=1):
        total += delta
        acc.apply_reading("M-1", total, start + dt.timedelta(minutes=minute))
    before = sum(deltas[:switch])
    expected = old.period_cost_fen(before) + new.period_cost_fen(total) - new.period_cost_fen(before)
    if switch >= len(deltas):  # no reading after the change: still the old tariff
        expected = old.period_cost_fen(total)
    assert -sum(e.amount_fen for e in acc.entries) == expected == acc.period_charged_fen


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(old_kind=st.sampled_from(sorted(OLD_KINDS)), new_kind=st.sampled_from(sorted(NEW_KINDS)),
       change_min=st.integers(-60, 20 * 24 * 60), readings=steps)
def test_reloading_the_state_at_every_reading_changes_nothing(old_kind: str, new_kind: str, change_min: int,
                                                              readings: list[Any]) -> None:
    """The service reloads the account from its state for every reading, passing the configured old tariff and
    the change: the charges and the state are those of an account never reloaded."""
    old, new = OLD_KINDS[old_kind], NEW_KINDS[new_kind]
    change = TariffChange(T0 + dt.timedelta(minutes=change_min), "new", new)
    kept, reloaded = account(old, change), account(old, change)
    registers, total, when = [0, 0, 0, 0], 0, T0
    for a in (kept, reloaded):
        a.apply_reading("M-1", 0, when, rates_wh=registers)
    for minutes, per_register, with_registers, skew in readings:
        when += dt.timedelta(minutes=minutes)
        registers = [r + d for r, d in zip(registers, per_register, strict=True)]
        total += max(sum(per_register) + skew, 0)
        reloaded = PrepaidAccount.from_state(json.loads(json.dumps(reloaded.state_dict())), id="A-1", tariff=old,
                                             thresholds=reloaded.thresholds, site=SITE, tariff_change=change)
        for a in (kept, reloaded):
            a.apply_reading("M-1", total, when, rates_wh=registers if with_registers else None)
        assert reloaded.state_dict() == kept.state_dict()
        assert reloaded.tariff is kept.tariff and reloaded.tariff_change == kept.tariff_change
    assert reloaded.balance_fen == kept.balance_fen
