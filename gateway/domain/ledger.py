"""Ledger entries the domain asks the service to write, in the same transaction as the account's new state.

The ledger is append-only and the account balance always equals the sum of its entries (the service writes the
opening balance as the first one). The account appends entries to ``account.entries`` as it changes the balance;
the service drains the list (like ``account.events``) and writes one row per entry.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass
from typing import Any

from gateway.domain.timeutil import to_iso

__all__ = ["EntryKind", "LedgerEntry"]


class EntryKind(str, enum.Enum):
    PAYMENT = "payment"  # + amount paid
    REVERSAL = "reversal"  # - the reversed payment's amount
    CHARGE = "charge"  # - the cost of energy
    EMERGENCY_CREDIT = "emergency_credit"  # + credit granted, to be repaid
    REPAYMENT = "repayment"  # - repaid from a payment (+ when a reversal undoes a repayment)
    ADJUSTMENT = "adjustment"  # +/- an operator's correction
    REFUND = "refund"  # - a positive balance paid back to the customer when the account closes
    ARREARS = "arrears"  # + a negative balance turned into a debt of the customer when the account closes


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One signed movement of the balance (fen) and the balance after it."""

    kind: EntryKind
    amount_fen: int
    balance_after_fen: int
    reference: str = ""  # a label: "source/payment_id" for payments, reversals and repayments; meter id for charges
    payment: tuple[str, str] | None = None  # (source, payment_id) of payments, reversals and their repayments
    meter_id: str | None = None  # charges
    energy_wh: int | None = None  # charges: energy billed by this entry
    reading_wh: int | None = None  # charges: the cumulative reading billed up to
    period: str | None = None  # charges: billing period ("2026-11" or "2026")
    at: dt.datetime | None = None  # charges: when the reading was taken; refund and arrears: when it closed
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able row: kind as its string value, ``at`` as ISO 8601 UTC."""
        return {"kind": self.kind.value, "amount_fen": self.amount_fen, "balance_after_fen": self.balance_after_fen,
                "reference": self.reference,
                "payment": list(self.payment) if self.payment is not None else None, "meter_id": self.meter_id, "energy_wh": self.energy_wh,
                "reading_wh": self.reading_wh, "period": self.period, "at": to_iso(self.at), "detail": self.detail}
