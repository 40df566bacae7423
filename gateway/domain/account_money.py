"""The account's money movements: payments, reversals, emergency credit and its repayment, adjustments.

A mixin of ``PrepaidAccount`` (kept apart to keep modules small); each movement appends a ledger entry to
``account.entries`` and keeps ``balance_fen`` equal to the sum of the entries. A closed account takes none
(``ClosedAccount``): its balance was settled when it closed.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from gateway.domain import events as ev
from gateway.domain.errors import EmergencyCreditRefused, InvalidAmount
from gateway.domain.ledger import EntryKind, LedgerEntry
from gateway.domain.tariffs import period_key, period_label
from gateway.domain.timeutil import require_aware

if TYPE_CHECKING:
    from gateway.domain.emergency import EmergencyCredit
    from gateway.domain.policy import SitePolicy

__all__ = ["MoneyMixin"]


class MoneyMixin:
    if TYPE_CHECKING:  # provided by PrepaidAccount
        id: str
        site: SitePolicy
        balance_fen: int
        events: list[ev.Event]
        entries: list[LedgerEntry]
        emergency: EmergencyCredit

        def _announce_credit(self) -> None: ...
        def _require_open(self) -> None: ...

    def _post(self, kind: EntryKind, amount_fen: int, reference: str = "", **extra: Any) -> None:
        self.balance_fen += amount_fen
        self.entries.append(LedgerEntry(kind, amount_fen, self.balance_fen, reference, **extra))

    def apply_payment(self, source: str, payment_id: str, amount_fen: int) -> None:
        """Credit a payment (idempotency is the caller's: one call per new (source, payment_id)).

        Outstanding emergency credit is repaid from it first, as a separate ledger entry.
        """
        self._require_open()
        if amount_fen <= 0:
            raise InvalidAmount("a payment must be positive")
        key, label = (source, payment_id), f"{source}/{payment_id}"
        self._post(EntryKind.PAYMENT, amount_fen, label, payment=key)
        self.events.append(ev.PaymentReceived(self.id, source, payment_id, amount_fen, self.balance_fen))
        repaid = self.emergency.repay_from(key, amount_fen)
        if repaid:
            self._post(EntryKind.REPAYMENT, -repaid, label, payment=key, detail="emergency credit")
            self.events.append(ev.EmergencyCreditRepaid(self.id, repaid, self.emergency.outstanding_fen,
                                                        self.balance_fen))
        self._announce_credit()

    def apply_reversal(self, source: str, payment_id: str, amount_fen: int, *, reason: str = "") -> None:
        """Remove the credit of a reversed payment (``amount_fen``: the credit to remove, positive).

        If the payment repaid emergency credit, that repayment is undone too (the debt comes back).
        The balance may fall below the disconnect point: ``evaluate`` then follows the normal disconnect path.
        """
        self._require_open()
        if amount_fen <= 0:
            raise InvalidAmount("a reversal must remove a positive amount")
        key, label = (source, payment_id), f"{source}/{payment_id}"
        self._post(EntryKind.REVERSAL, -amount_fen, label, payment=key, detail=reason)
        self.events.append(ev.PaymentReversed(self.id, source, payment_id, amount_fen, self.balance_fen))
        undone = self.emergency.undo_for_reversal(key, amount_fen)
        if undone:
            self._post(EntryKind.REPAYMENT, undone, label, payment=key, detail="repayment undone by reversal")
            self.events.append(ev.EmergencyCreditRepaid(self.id, -undone, self.emergency.outstanding_fen,
                                                        self.balance_fen))
        self._announce_credit()

    def grant_emergency_credit(self, now: dt.datetime, *, amount_fen: int | None = None, by: str = "") -> int:
        """Grant emergency credit (default: the site's amount) once per period; returns the amount granted."""
        self._require_open()
        require_aware(now, "now")
        site = self.site
        label = period_label(period_key(now.astimezone(site.tz).date(), site.emergency_credit_period),
                             site.emergency_credit_period)
        if self.emergency.outstanding_fen > 0:
            raise EmergencyCreditRefused(self.id, f"{self.emergency.outstanding_fen} fen of earlier emergency "
                                                  "credit not yet repaid")
        if self.emergency.granted_period == label:
            raise EmergencyCreditRefused(self.id, f"already granted in period {label}")
        amount = site.emergency_credit_fen if amount_fen is None else amount_fen
        if amount <= 0:
            raise InvalidAmount("emergency credit must be positive")
        self._post(EntryKind.EMERGENCY_CREDIT, amount, f"emergency/{label}", detail=by)
        self.emergency.outstanding_fen, self.emergency.granted_period, self.emergency.granted_at = amount, label, now
        self.events.append(ev.EmergencyCreditGranted(self.id, amount, self.balance_fen, by))
        self._announce_credit()
        return amount

    def apply_adjustment(self, amount_fen: int, reason: str, *, reference: str = "") -> None:
        """An operator's signed correction of the balance (e.g. energy lost at a meter reset)."""
        self._require_open()
        if amount_fen == 0:
            raise InvalidAmount("an adjustment must not be zero")
        self._post(EntryKind.ADJUSTMENT, amount_fen, reference, detail=reason)
        self.events.append(ev.BalanceAdjusted(self.id, amount_fen, reason, self.balance_fen))
        self._announce_credit()

