"""Emergency credit: a fixed amount granted once per period (monthly or yearly, site-local) and repaid from the
next payment(s). A reversal of a payment that repaid some of it restores what is owed."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.domain.timeutil import from_iso, to_iso

__all__ = ["EmergencyCredit", "PaymentKey"]

_KEEP_REPAYMENTS = 50  # the newest repaying payments remembered (for reversals)


PaymentKey = tuple[str, str]  # (source, payment_id): a payment is named by the pair, never by a joined string


@dataclass(slots=True)
class EmergencyCredit:
    outstanding_fen: int = 0  # granted and not yet repaid
    granted_period: str | None = None  # the period of the last grant ("2026-11" or "2026")
    granted_at: dt.datetime | None = None
    # (source, payment_id) -> [amount paid, amount of it that went to repayment]
    repaid: dict[PaymentKey, list[int]] = field(default_factory=dict)

    def repay_from(self, reference: PaymentKey, paid_fen: int) -> int:
        """Take the repayment out of a payment; returns the amount repaid."""
        repay = min(self.outstanding_fen, paid_fen)
        if repay > 0:
            self.outstanding_fen -= repay
            self.repaid[reference] = [paid_fen, repay]
            for old in list(self.repaid)[:-_KEEP_REPAYMENTS]:
                del self.repaid[old]
        return max(repay, 0)

    def undo_for_reversal(self, reference: PaymentKey, reversed_fen: int) -> int:
        """What a reversal of ``reference`` gives back to the debt (and so to the balance); returns it."""
        record = self.repaid.pop(reference, None)
        if record is None:
            return 0
        paid, repaid = record
        kept = max(paid - reversed_fen, 0)
        still = min(repaid, kept)
        if still:
            self.repaid[reference] = [kept, still]
        undo = repaid - still
        self.outstanding_fen += undo
        return undo

    def repaid_rows(self) -> list[list[Any]]:
        """``repaid`` as JSON-able rows ``[source, payment_id, paid_fen, repaid_fen]``, oldest first."""
        return [[source, payment_id, paid, repaid] for (source, payment_id), (paid, repaid) in self.repaid.items()]

    def to_dict(self) -> dict[str, Any]:
        return {"outstanding_fen": self.outstanding_fen, "granted_period": self.granted_period,
                "granted_at": to_iso(self.granted_at), "repaid": self.repaid_rows()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EmergencyCredit:
        return cls(int(d.get("outstanding_fen", 0)), d.get("granted_period"), from_iso(d.get("granted_at")),
                   _repaid(d.get("repaid")))


def _repaid(data: Any) -> dict[PaymentKey, list[int]]:
    """Rows ``[source, payment_id, paid, repaid]``; a mapping ``{"source/payment_id": [paid, repaid]}`` (before
    payments were keyed by the pair) is read by splitting at the first ``/``."""
    if not data:
        return {}
    if isinstance(data, Mapping):
        data = [[*str(key).partition("/")[::2], *amounts] for key, amounts in data.items()]
    return {(str(source), str(payment_id)): [int(paid), int(repaid)] for source, payment_id, paid, repaid in data}
