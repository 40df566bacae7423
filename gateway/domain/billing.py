"""Billing-period accounting: what one account consumed and was charged in its current period.

A charge is always ``tariff cost of the period's consumption so far - what the period was already charged``,
so the charges of a period add up exactly to the tariff applied to the period's total, however many readings
it took. A period closes at the first energy (or reading) that falls in a later one.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.domain.tariffs import Tariff, period_label

__all__ = ["BillingState", "ClosedPeriod", "PeriodCharge", "bill"]


@dataclass(slots=True)
class BillingState:
    period_start: dt.date | None = None  # first local day of the current period
    energy_wh: int = 0
    rate_wh: dict[str, int] = field(default_factory=dict)  # time-of-use tariffs only
    charged_fen: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"period_start": self.period_start.isoformat() if self.period_start else None,
                "energy_wh": self.energy_wh, "rate_wh": dict(self.rate_wh), "charged_fen": self.charged_fen}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BillingState:
        start = d.get("period_start")
        return cls(dt.date.fromisoformat(start) if start else None, int(d.get("energy_wh", 0)),
                   {str(k): int(v) for k, v in (d.get("rate_wh") or {}).items()}, int(d.get("charged_fen", 0)))


@dataclass(frozen=True, slots=True)
class PeriodCharge:
    period: str
    energy_wh: int
    amount_fen: int  # to subtract from the balance (negative only if the tariff changed mid-period)


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
            state.period_start, state.energy_wh, state.rate_wh, state.charged_fen = key, 0, {}, 0
        by_rate = energy.get(key)
        if not by_rate:
            continue
        added = sum(by_rate.values())
        state.energy_wh += added
        if tariff.schedule is not None:
            for rate, wh in by_rate.items():
                state.rate_wh[rate] = state.rate_wh.get(rate, 0) + wh
        cost = tariff.period_cost_fen(state.energy_wh, state.rate_wh)
        charges.append(PeriodCharge(period_label(state.period_start, tariff.period), added,
                                    cost - state.charged_fen))
        state.charged_fen = cost
    return charges, closed
