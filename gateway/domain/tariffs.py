"""Tariffs turn the energy consumed within a billing period into its total cost.

Charges are never computed from one reading's delta alone: the engine asks for the cost of the whole period's
consumption and charges the difference to what it already charged, so rounding never accumulates.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from gateway.domain.money import cost_fen

__all__ = ["FlatTariff", "Tariff"]


class Tariff:
    """Base of all tariffs."""

    def period_cost_fen(self, period_wh: int) -> int:
        """Total cost of ``period_wh`` consumed within one billing period."""
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class FlatTariff(Tariff):
    """One price per kWh at all times."""

    price_per_kwh: Decimal

    def period_cost_fen(self, period_wh: int) -> int:
        return cost_fen(period_wh, self.price_per_kwh)
