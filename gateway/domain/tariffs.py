"""Tariffs turn the energy consumed within a billing period into its total cost.

Charges are never computed from one reading's delta alone: the engine asks for the cost of the whole period's
consumption (total, and per time-of-use rate) and charges the difference to what it already charged, so rounding
never accumulates. Every tariff rounds once, ROUND_HALF_UP to the fen, over the exact Decimal cost.

Kinds: flat, tiered (阶梯, by consumption within a monthly or yearly period), time of use (峰谷, up to four rates
尖/峰/平/谷 by time of day) and tiered time of use (TOU prices plus a per-tier surcharge, 阶梯加价). The factory
from configuration data is ``tariff_config.tariff_from_dict``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal

from gateway.domain.money import round_fen

__all__ = [
    "ANY_RATE",
    "PERIODS",
    "RATES",
    "DaySchedule",
    "FlatTariff",
    "Tariff",
    "Tier",
    "TieredTariff",
    "TieredTouTariff",
    "TouTariff",
    "next_period_start",
    "period_key",
    "period_label",
]

# Time-of-use rates in the order of a meter's per-rate registers (DL/T 645 费率1..4 = 尖, 峰, 平, 谷).
RATES = ("sharp", "peak", "flat", "valley")
ANY_RATE = "all"  # the one "rate" of a tariff without time of use
PERIODS = ("monthly", "yearly")
_KWH = Decimal(1000)
_DAY_MIN = 24 * 60


def period_key(day: dt.date, period: str) -> dt.date:
    """The first day of the billing period that contains ``day`` (a local date)."""
    return day.replace(day=1) if period == "monthly" else day.replace(month=1, day=1)


def next_period_start(key: dt.date, period: str) -> dt.date:
    if period == "yearly":
        return key.replace(year=key.year + 1)
    return key.replace(year=key.year + 1, month=1) if key.month == 12 else key.replace(month=key.month + 1)


def period_label(key: dt.date, period: str) -> str:
    """"2026-11" for a monthly period, "2026" for a yearly one."""
    return f"{key.year:04d}-{key.month:02d}" if period == "monthly" else f"{key.year:04d}"


@dataclass(frozen=True, slots=True)
class DaySchedule:
    """Which time-of-use rate applies at each minute of the local day.

    ``spans`` are ``(start_minute, end_minute, rate)`` with ``0 <= start < end <= 1440``, sorted, covering the whole
    day without overlap (the factory checks it).
    """

    spans: tuple[tuple[int, int, str], ...]

    def rate_at(self, minute: int) -> str:
        for start, end, rate in self.spans:
            if start <= minute < end:
                return rate
        raise ValueError(f"minute {minute} is not covered by the schedule")

    def next_change(self, minute: int) -> int:
        """The first span start after ``minute`` (1440 when the next change is the next midnight)."""
        for start, end, _ in self.spans:
            if start <= minute < end:
                return end
        return _DAY_MIN

    @property
    def rates(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(rate for _, _, rate in self.spans))


class Tariff:
    """Base of all tariffs: the cost of one billing period's consumption."""

    period: str = "monthly"
    schedule: DaySchedule | None = None  # time of use; None for a tariff without rates
    registers: tuple[str | None, ...] = RATES  # the tariff rate of each meter per-rate register (1..4)

    def exact_cost(self, energy_wh: int, rate_wh: Mapping[str, int]) -> Decimal:
        """Exact cost in yuan (not rounded) of ``energy_wh`` consumed in one period, ``rate_wh`` by rate."""
        raise NotImplementedError

    def period_cost_fen(self, period_wh: int, rate_wh: Mapping[str, int] | None = None) -> int:
        """Total cost of one billing period, rounded once, ROUND_HALF_UP to the fen."""
        return round_fen(self.exact_cost(period_wh, rate_wh or {}))

    @property
    def rates(self) -> tuple[str, ...]:
        return self.schedule.rates if self.schedule is not None else (ANY_RATE,)


@dataclass(frozen=True, slots=True)
class FlatTariff(Tariff):
    """One price per kWh at all times."""

    price_per_kwh: Decimal
    period: str = "monthly"

    def exact_cost(self, energy_wh: int, rate_wh: Mapping[str, int]) -> Decimal:
        return Decimal(energy_wh) / _KWH * self.price_per_kwh


@dataclass(frozen=True, slots=True)
class Tier:
    """One step of a tiered tariff: up to ``up_to_wh`` of the period's consumption (None: no upper bound)."""

    up_to_wh: int | None
    price_per_kwh: Decimal  # the price (tiered) or the surcharge added to the TOU price (tiered TOU)


def _tiered_cost(energy_wh: int, tiers: tuple[Tier, ...]) -> Decimal:
    total, lower = Decimal(0), 0
    for tier in tiers:
        upper = energy_wh if tier.up_to_wh is None else min(energy_wh, tier.up_to_wh)
        if upper > lower:
            total += Decimal(upper - lower) / _KWH * tier.price_per_kwh
        if tier.up_to_wh is None or energy_wh <= tier.up_to_wh:
            break
        lower = tier.up_to_wh
    return total


@dataclass(frozen=True, slots=True)
class TieredTariff(Tariff):
    """阶梯电价: consumption within the billing period is priced tier by tier."""

    tiers: tuple[Tier, ...]
    period: str = "monthly"

    def exact_cost(self, energy_wh: int, rate_wh: Mapping[str, int]) -> Decimal:
        return _tiered_cost(energy_wh, self.tiers)


def _tou_cost(rate_wh: Mapping[str, int], prices: Mapping[str, Decimal]) -> Decimal:
    return sum((Decimal(wh) / _KWH * prices[rate] for rate, wh in rate_wh.items() if wh), Decimal(0))


@dataclass(frozen=True, slots=True)
class TouTariff(Tariff):
    """峰谷电价: each rate has its price; energy is assigned to rates by the meter's registers or by time."""

    prices: Mapping[str, Decimal]
    schedule: DaySchedule | None = None
    period: str = "monthly"
    registers: tuple[str | None, ...] = RATES

    def exact_cost(self, energy_wh: int, rate_wh: Mapping[str, int]) -> Decimal:
        return _tou_cost(rate_wh, self.prices)


@dataclass(frozen=True, slots=True)
class TieredTouTariff(Tariff):
    """Time of use with a tiered surcharge: each kWh costs its rate's price plus the surcharge of the tier it
    falls in (阶梯 over the period's total). The two parts are independent of the order of consumption, so the
    period's cost is a function of its totals alone."""

    prices: Mapping[str, Decimal]
    tiers: tuple[Tier, ...]
    schedule: DaySchedule | None = None
    period: str = "yearly"
    registers: tuple[str | None, ...] = field(default=RATES)

    def exact_cost(self, energy_wh: int, rate_wh: Mapping[str, int]) -> Decimal:
        return _tou_cost(rate_wh, self.prices) + _tiered_cost(energy_wh, self.tiers)
