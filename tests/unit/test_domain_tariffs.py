"""Tariffs from configuration data, their prices, and the splitting of energy between readings."""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from gateway.domain.energy import apportion, rate_deltas, split_energy, split_time
from gateway.domain.tariff_config import parse_day_periods, tariff_from_dict
from gateway.domain.tariffs import (
    FlatTariff,
    TieredTariff,
    TieredTouTariff,
    TouTariff,
    next_period_start,
    period_key,
)

SHANGHAI = ZoneInfo("Asia/Shanghai")
TOU = {"kind": "tou", "prices": {"peak": "1.00", "valley": "0.50"},
       "periods": {"08:00-22:00": "peak", "22:00-08:00": "valley"}}


def test_each_kind_is_built_from_data() -> None:
    assert tariff_from_dict({"kind": "flat", "price": "0.5283"}) == FlatTariff(Decimal("0.5283"))
    tiered = tariff_from_dict({"kind": "tiered", "period": "yearly", "tiers": [
        {"up_to_kwh": 2760, "price": "0.4883"}, {"up_to_kwh": "4800", "price": "0.5383"}, {"price": "0.7883"}]})
    assert isinstance(tiered, TieredTariff) and tiered.period == "yearly"
    assert [t.up_to_wh for t in tiered.tiers] == [2_760_000, 4_800_000, None]
    tou = tariff_from_dict(TOU)
    assert isinstance(tou, TouTariff) and tou.schedule is not None
    assert tou.schedule.spans == ((0, 480, "valley"), (480, 1320, "peak"), (1320, 1440, "valley"))
    combined = tariff_from_dict({**TOU, "kind": "tiered_tou", "tiers": [{"up_to_kwh": 100, "surcharge": "0"},
                                                                       {"surcharge": "0.05"}]})
    assert isinstance(combined, TieredTouTariff) and combined.period == "yearly"  # 阶梯 is usually yearly


def test_costs() -> None:
    tiered = tariff_from_dict({"kind": "tiered", "tiers": [{"up_to_kwh": 10, "price": "1"}, {"price": "2"}]})
    assert tiered.period_cost_fen(10_000) == 1000
    assert tiered.period_cost_fen(10_005) == 1001  # 5 Wh x 2.00 = 1 fen exactly
    assert tiered.period_cost_fen(12_345) == 1000 + 469  # 2.345 kWh x 2 = 4.69
    tou = tariff_from_dict(TOU)
    assert tou.period_cost_fen(3000, {"peak": 1000, "valley": 2000}) == 200
    assert tou.period_cost_fen(0, {}) == 0


def test_rates_may_be_named_in_chinese_and_spans_may_wrap() -> None:
    schedule = parse_day_periods({"22:00-06:00": "谷", "06:00-22:00": "峰"})
    assert schedule.rate_at(23 * 60) == "valley" and schedule.rate_at(7 * 60) == "peak"
    assert parse_day_periods([{"00:00-24:00": "平"}]).spans == ((0, 1440, "flat"),)


@pytest.mark.parametrize(("data", "message"), [
    ({"kind": "spot"}, "unknown tariff kind"),
    ({"kind": "flat"}, "tariff.price: required"),
    ({"kind": "flat", "price": 0.5}, "decimal strings"),
    ({"kind": "flat", "price": "0.12345"}, "more than 4 decimal places"),
    ({"kind": "flat", "price": "-1"}, "non-negative"),
    ({"kind": "flat", "price": "1", "tiers": []}, "unknown key"),
    ({"kind": "flat", "price": "1", "period": "weekly"}, "monthly or yearly"),
    ({"kind": "tiered", "tiers": []}, "non-empty list"),
    ({"kind": "tiered", "tiers": [{"up_to_kwh": 10, "price": "1"}]}, "last tier must have no upper bound"),
    ({"kind": "tiered", "tiers": [{"price": "1"}, {"price": "2"}]}, "tiers[0].up_to_kwh: required"),
    ({"kind": "tiered", "tiers": [{"up_to_kwh": 10, "price": "1"}, {"up_to_kwh": 5, "price": "1"}, {"price": "1"}]},
     "greater than the previous"),
    ({"kind": "tiered", "tiers": [{"up_to_kwh": "1.0001", "price": "1"}, {"price": "1"}]}, "at most 3 decimals"),
    ({"kind": "tiered", "tiers": [{"up_to_kwh": 10, "cost": "1"}, {"price": "1"}]}, "unknown key"),
    ({**TOU, "periods": {"08:00-22:00": "peak"}}, "uncovered"),
    ({**TOU, "periods": {"08:00-22:00": "peak", "21:00-08:00": "valley"}}, "overlaps"),
    ({**TOU, "periods": {"8-22": "peak"}}, "not a time of day"),
    ({**TOU, "periods": {"08:00-08:00": "peak"}}, "empty period"),
    ({**TOU, "periods": {"08:00-22:00": "peak", "22:00-08:00": "shoulder"}}, "unknown rate"),
    ({**TOU, "prices": {"peak": "1"}}, "no price for rate"),
    ({**TOU, "prices": {"peak": "1", "valley": "1", "flat": "1"}}, "never in effect"),
    ({**TOU, "prices": {"peak": "1", "峰": "1", "valley": "1"}}, "given twice"),
    ({**TOU, "registers": [1, 2]}, "unknown rate"),
    ({**TOU, "kind": "tiered_tou"}, "tiers: required"),
    ("flat", "must be a mapping"),
])
def test_bad_tariff_data_is_refused_with_the_key_path(data: Any, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        tariff_from_dict(data)


def test_billing_periods() -> None:
    assert period_key(dt.date(2026, 11, 23), "monthly") == dt.date(2026, 11, 1)
    assert period_key(dt.date(2026, 11, 23), "yearly") == dt.date(2026, 1, 1)
    assert next_period_start(dt.date(2026, 12, 1), "monthly") == dt.date(2027, 1, 1)
    assert next_period_start(dt.date(2026, 1, 1), "yearly") == dt.date(2027, 1, 1)


def test_split_by_time_and_by_registers() -> None:
    tou = tariff_from_dict(TOU)
    t0 = dt.datetime(2026, 11, 30, 13, 0, tzinfo=dt.UTC)  # 21:00 local
    t1 = dt.datetime(2026, 12, 1, 1, 0, tzinfo=dt.UTC)  # 09:00 local
    assert [(p.period.month, p.rate) for p in split_time(t0, t1, tou, SHANGHAI)] == [
        (11, "peak"), (11, "valley"), (12, "valley"), (12, "peak")]
    assert split_energy(t0, t1, 12_000, tou, SHANGHAI) == {
        dt.date(2026, 11, 1): {"peak": 1000, "valley": 2000}, dt.date(2026, 12, 1): {"valley": 8000, "peak": 1000}}
    assert split_energy(t0, t1, 12_000, tou, SHANGHAI, {"peak": 100, "valley": 50}) == {
        dt.date(2026, 11, 1): {"peak": 2000, "valley": 1000}, dt.date(2026, 12, 1): {"peak": 6000, "valley": 3000}}


def test_register_deltas() -> None:
    tou = tariff_from_dict(TOU)
    assert rate_deltas(tou, (0, 10, 0, 10), (0, 15, 0, 12)) == {"peak": 5, "valley": 2}
    assert rate_deltas(tou, (0, 10, 0, 10), (0, 15, 0, 9)) is None  # a register went backwards
    assert rate_deltas(tou, (0, 10, 0, 10), (1, 15, 0, 10)) is None  # energy in 尖, which the tariff lacks
    assert rate_deltas(tou, None, (0, 15, 0, 12)) is None
    assert rate_deltas(tou, (0, 10, 0, 10), (0, 10, 0, 10)) is None  # nothing to go by
    assert rate_deltas(FlatTariff(Decimal(1)), (0, 1), (0, 2)) is None


def test_apportion() -> None:
    assert apportion(10, [1, 1, 1]) == [4, 3, 3]
    assert apportion(7, [0, 0]) == [7, 0]
    assert apportion(0, [5, 5]) == [0, 0]
    with pytest.raises(ValueError):
        apportion(-1, [1])
