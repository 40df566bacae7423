"""Billing-period accounting: what one account consumed and was charged in its current period.

A charge is always ``tariff cost of the period's consumption so far - what the period was already charged``,
so the charges of a period add up exactly to the tariff applied to the period's total, however many readings
it took. A period closes at the first energy (or reading) that falls in a later one.

A tariff that changes within a period (``TariffChange``) leaves a *base* in the period: the energy and the
charge at the switch. From then on the period's cost is ``base_fen + new cost(energy) - new cost(base energy)``:
what the old prices charged before the switch, plus the new prices of what came after, counted from where the
period stood (a tiered 阶梯 tariff goes on from the tier the period has reached). Still no drift: each charge is
that cost minus what was already charged.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.domain.tariffs import Tariff, period_label
from gateway.domain.timeutil import utc

__all__ = ["BillingState", "ClosedPeriod", "PeriodCharge", "TariffChange", "bill"]


@dataclass(frozen=True, slots=True)
class TariffChange:
    """The account's tariff becomes ``tariff`` at ``at`` (aware; kept in UTC); ``name`` names the change (the
    state records the switch by ``(at, name)``). Energy up to ``at`` is billed at the old prices, after it at
    the new ones (``PrepaidAccount`` switches at the first billed reading after ``at``, of any of its meters).
    The limit: with several meters, energy of another meter's interval before ``at`` that arrives after the
    switch is billed at the new prices (see ``gateway.domain.lifecycle``)."""

    at: dt.datetime
    name: str
    tariff: Tariff

    def __post_init__(self) -> None:
        object.__setattr__(self, "at", utc(self.at, "at"))


@dataclass(slots=True)
class BillingState:
    period_start: dt.date | None = None  # first local day of the current period
    energy_wh: int = 0
    rate_wh: dict[str, int] = field(default_factory=dict)  # time-of-use tariffs only
    charged_fen: int = 0
    # where the period stood when the tariff last changed within it (all 0: no change in this period)
    base_wh: int = 0
    base_rate_wh: dict[str, int] = field(default_factory=dict)
    base_fen: int = 0

    @property
    def has_base(self) -> bool:
        return bool(self.base_wh or self.base_fen or self.base_rate_wh)

    def cost_fen(self, tariff: Tariff) -> int:
        """The period's cost so far: ``tariff``'s cost of its consumption, or after a change of tariff within the
        period, ``base_fen + tariff cost(now) - tariff cost(base)`` (rates the tariff does not price, left by the
        old one, are left out of both: they cancel)."""
        if not self.has_base:
            return tariff.period_cost_fen(self.energy_wh, self.rate_wh)
        rates = tariff.rates
        now = {r: wh for r, wh in self.rate_wh.items() if r in rates}
        base = {r: wh for r, wh in self.base_rate_wh.items() if r in rates}
        return (self.base_fen + tariff.period_cost_fen(self.energy_wh, now)
                - tariff.period_cost_fen(self.base_wh, base))

    def set_base(self) -> None:
        """The tariff changes now: the period's consumption and charge so far become its base."""
        self.base_wh, self.base_rate_wh, self.base_fen = self.energy_wh, dict(self.rate_wh), self.charged_fen

    def start(self, key: dt.date | None) -> None:
        """A new period starts on local day ``key``: nothing consumed or charged in it, no base."""
        self.period_start, self.energy_wh, self.rate_wh, self.charged_fen = key, 0, {}, 0
        self.base_wh, self.base_rate_wh, self.base_fen = 0, {}, 0

    def to_dict(self) -> dict[str, Any]:
        """The state's ``billing``; the base only when there is one (a state without it reads the same)."""
        d = {"period_start": self.period_start.isoformat() if self.period_start else None,
             "energy_wh": self.energy_wh, "rate_wh": dict(self.rate_wh), "charged_fen": self.charged_fen}
        if self.has_base:
            d.update(base_wh=self.base_wh, base_rate_wh=dict(self.base_rate_wh), base_fen=self.base_fen)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BillingState:
        start = d.get("period_start")
        return cls(dt.date.fromisoformat(start) if start else None, int(d.get("energy_wh", 0)),
                   {str(k): int(v) for k, v in (d.get("rate_wh") or {}).items()}, int(d.get("charged_fen", 0)),
                   int(d.get("base_wh", 0)), {str(k): int(v) for k, v in (d.get("base_rate_wh") or {}).items()},
                   int(d.get("base_fen", 0)))


@dataclass(frozen=True, slots=True)
class PeriodCharge:
    period: str
    energy_wh: int
    amount_fen: int  # to subtract from the balance


@dataclass(frozen=True, slots=True)
class ClosedPeriod:
    period: str
    energy_wh: int
    charged_fen: int


def bill(state: BillingState, tariff: Tariff, energy: Mapping[dt.date, Mapping[str, int]],
         latest: dt.date) -> tuple[list[PeriodCharge], list[ClosedPeriod]]:
    """Add energy (by period start and rate) to the account's periods and price it.

    ``latest`` is the period of the newest reading: the current period moves there even without energy.
    Energy of a period older than the current one (a late reading of another meter) goes to the current one.
    """
    charges: list[PeriodCharge] = []
    closed: list[ClosedPeriod] = []
    for key in sorted({*energy, latest}):
        if state.period_start is None:
            state.period_start = key
        elif key > state.period_start:
            closed.append(ClosedPeriod(period_label(state.period_start, tariff.period), state.energy_wh,
                                       state.charged_fen))
            state.start(key)
        by_rate = energy.get(key)
        if not by_rate:
            continue
        added = sum(by_rate.values())
        state.energy_wh += added
        if tariff.schedule is not None:
            for rate, wh in by_rate.items():
                state.rate_wh[rate] = state.rate_wh.get(rate, 0) + wh
        cost = state.cost_fen(tariff)
        charges.append(PeriodCharge(period_label(state.period_start, tariff.period), added,
                                    cost - state.charged_fen))
        state.charged_fen = cost
    return charges, closed
