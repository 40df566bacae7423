"""The prepaid account and its balance engine.

``PrepaidAccount`` is pure: its methods change the account, return what they decided and append events to
``account.events``; they do no I/O. The service layer loads an account, calls them, and saves the account with
its ledger entries and the events in one transaction.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass, field

from gateway.domain import events as ev
from gateway.domain.tariffs import Tariff

__all__ = ["Decision", "MeterCursor", "PrepaidAccount", "Supply", "Thresholds"]


class Supply(str, enum.Enum):
    """The supply the engine wants for the account (the relay's confirmed state lives with the meter)."""

    CONNECTED = "connected"
    DISCONNECTED = "disconnected"


class Decision(str, enum.Enum):
    NONE = "none"
    DISCONNECT = "disconnect"
    RECONNECT = "reconnect"


# Credit levels, in order of severity.
OK, WARNING_1, WARNING_2, EXHAUSTED, DISCONNECT_POINT = range(5)


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Balance thresholds in fen.

    Warning 1 and 2 are balances at or below which a low-credit warning goes out (2 is the final one).
    The disconnect point is ``-overdraft_fen``. Reconnect happens at or above the disconnect point plus
    ``reconnect_min_topup_fen`` (and never below zero unless overdraft is allowed).
    """

    warning1_fen: int = 2000
    warning2_fen: int = 500
    overdraft_fen: int = 0
    reconnect_min_topup_fen: int = 100

    @property
    def disconnect_point_fen(self) -> int:
        return -self.overdraft_fen

    @property
    def reconnect_at_fen(self) -> int:
        return self.disconnect_point_fen + self.reconnect_min_topup_fen


@dataclass(slots=True)
class MeterCursor:
    """Where billing of one meter stands: the last cumulative energy billed, and when it was read."""

    meter_id: str
    energy_wh: int | None = None
    taken_at: dt.datetime | None = None
    max_power_w: int = 60_000  # contract capacity used for the plausibility check


@dataclass(slots=True)
class PrepaidAccount:
    id: str
    tariff: Tariff
    thresholds: Thresholds = field(default_factory=Thresholds)
    balance_fen: int = 0
    supply: Supply = Supply.CONNECTED
    warned_level: int = OK
    protected: bool = False
    hold_until: dt.datetime | None = None
    period_wh: int = 0
    period_charged_fen: int = 0
    deferred_reason: str = ""  # why the pending disconnect is held back (recorded once per reason)
    events: list[ev.Event] = field(default_factory=list)

    # --- credit -------------------------------------------------------------------------------------------
    def credit_level(self) -> int:
        t, b = self.thresholds, self.balance_fen
        if b <= t.disconnect_point_fen:
            return DISCONNECT_POINT
        if b <= 0:
            return EXHAUSTED
        if b <= t.warning2_fen:
            return WARNING_2
        if b <= t.warning1_fen:
            return WARNING_1
        return OK

    def credit_state(self) -> str:
        return ("ok", "warning1", "warning2", "exhausted", "disconnect_point")[self.credit_level()]

    # --- readings -----------------------------------------------------------------------------------------
    def apply_reading(self, cursor: MeterCursor, energy_wh: int, taken_at: dt.datetime, *,
                      margin: float = 1.5, resolution_wh: int = 10) -> int:
        """Bill a cumulative reading of one of the account's meters; returns the charge in fen.

        The first reading of a meter only sets its baseline. A reading lower than the last one, or a jump larger
        than the meter's capacity over the elapsed time allows, is quarantined: not billed, baseline unchanged.
        """
        if cursor.energy_wh is None or cursor.taken_at is None:
            cursor.energy_wh, cursor.taken_at = energy_wh, taken_at
            return 0
        if taken_at <= cursor.taken_at:
            return 0  # an old or duplicate reading: nothing new to bill
        delta = energy_wh - cursor.energy_wh
        elapsed_h = (taken_at - cursor.taken_at).total_seconds() / 3600
        plausible = cursor.max_power_w * elapsed_h * margin + resolution_wh
        if delta < 0 or delta > plausible:
            reason = "went backwards" if delta < 0 else f"jump of {delta} Wh exceeds plausible {int(plausible)} Wh"
            self.events.append(ev.ReadingQuarantined(self.id, cursor.meter_id, energy_wh, cursor.energy_wh, reason))
            return 0
        cursor.energy_wh, cursor.taken_at = energy_wh, taken_at
        if delta == 0:
            return 0
        self.period_wh += delta
        period_cost = self.tariff.period_cost_fen(self.period_wh)
        charge = period_cost - self.period_charged_fen
        self.period_charged_fen = period_cost
        self.balance_fen -= charge
        self.events.append(ev.AccountCharged(self.id, cursor.meter_id, delta, charge, self.balance_fen))
        self._announce_credit()
        return charge

    # --- payments -----------------------------------------------------------------------------------------
    def apply_payment(self, source: str, payment_id: str, amount_fen: int) -> None:
        if amount_fen <= 0:
            raise ValueError("a payment must be positive")
        self.balance_fen += amount_fen
        self.events.append(ev.PaymentReceived(self.id, source, payment_id, amount_fen, self.balance_fen))
        self._announce_credit()

    def _announce_credit(self) -> None:
        """One warning per crossing downwards; crossing back up re-arms it."""
        level = self.credit_level()
        if level < self.warned_level:
            self.warned_level = level
            return
        for crossed in range(self.warned_level + 1, level + 1):
            if crossed in (WARNING_1, WARNING_2):
                self.events.append(ev.CreditLow(self.id, crossed, self.balance_fen))
            elif crossed == EXHAUSTED:
                self.events.append(ev.CreditExhausted(self.id, self.balance_fen))
        self.warned_level = level

    # --- decisions ----------------------------------------------------------------------------------------
    def evaluate(self, now: dt.datetime, *, readings_ok: bool = True, why_not_ok: str = "") -> Decision:
        """Decide whether the supply must change. Guardrails may defer a disconnect; reconnects always go."""
        if self.supply is Supply.DISCONNECTED:
            if self.balance_fen >= self.thresholds.reconnect_at_fen:
                self.supply = Supply.CONNECTED
                self.events.append(ev.ReconnectRequired(self.id, self.balance_fen))
                return Decision.RECONNECT
            return Decision.NONE
        if self.balance_fen > self.thresholds.disconnect_point_fen:
            self.deferred_reason = ""
            return Decision.NONE
        reason = self.disconnect_blocked_by(now, readings_ok=readings_ok, why_not_ok=why_not_ok)
        if reason:
            if reason != self.deferred_reason:
                self.deferred_reason = reason
                self.events.append(ev.DisconnectDeferred(self.id, reason, self.balance_fen))
            return Decision.NONE
        self.deferred_reason = ""
        self.supply = Supply.DISCONNECTED
        self.events.append(ev.DisconnectRequired(self.id, self.balance_fen))
        return Decision.DISCONNECT

    def disconnect_blocked_by(self, now: dt.datetime, *, readings_ok: bool, why_not_ok: str = "") -> str:
        """The guardrail that forbids an automatic disconnect now, or "" when none does."""
        if self.protected:
            return "protected"
        if self.hold_until is not None and now < self.hold_until:
            return "operator hold"
        if not readings_ok:
            return why_not_ok or "reading not usable"
        return ""
