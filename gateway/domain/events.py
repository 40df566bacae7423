"""Events the domain records (past tense). Handlers publish them after commit; ``event_dict`` makes them JSON."""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from typing import Any

from gateway.domain.timeutil import to_iso

__all__ = [
    "AccountCharged",
    "AccountClosed",
    "BalanceAdjusted",
    "BillingPeriodClosed",
    "CreditExhausted",
    "CreditLow",
    "DisconnectDeferred",
    "DisconnectRequired",
    "DisconnectWithdrawn",
    "EmergencyCreditGranted",
    "EmergencyCreditRepaid",
    "Event",
    "FinalWarningDelivered",
    "FinalWarningUndelivered",
    "HoldChanged",
    "MeterAttached",
    "MeterDetached",
    "MeterReplaced",
    "PaymentReceived",
    "PaymentReversed",
    "ProtectionChanged",
    "QuarantineResolved",
    "ReadingQuarantined",
    "ReconnectRequired",
    "TariffSwitched",
    "event_dict",
]


@dataclass(frozen=True, slots=True)
class Event:
    """Base of domain events."""

    account_id: str


# --- money ------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class AccountCharged(Event):
    meter_id: str
    energy_wh: int
    amount_fen: int
    balance_fen: int


@dataclass(frozen=True, slots=True)
class PaymentReceived(Event):
    source: str
    payment_id: str
    amount_fen: int
    balance_fen: int


@dataclass(frozen=True, slots=True)
class PaymentReversed(Event):
    source: str
    payment_id: str
    amount_fen: int  # the credit removed (positive)
    balance_fen: int


@dataclass(frozen=True, slots=True)
class EmergencyCreditGranted(Event):
    amount_fen: int
    balance_fen: int
    granted_by: str


@dataclass(frozen=True, slots=True)
class EmergencyCreditRepaid(Event):
    amount_fen: int  # repaid now (negative when a reversal undid a repayment)
    outstanding_fen: int  # still to repay
    balance_fen: int


@dataclass(frozen=True, slots=True)
class BalanceAdjusted(Event):
    amount_fen: int
    reason: str
    balance_fen: int


@dataclass(frozen=True, slots=True)
class BillingPeriodClosed(Event):
    period: str  # "2026-11" (monthly) or "2026" (yearly)
    energy_wh: int
    charged_fen: int


@dataclass(frozen=True, slots=True)
class TariffSwitched(Event):
    """The account bills at the tariff of the change ``name`` from ``at`` on (energy before it at the old one)."""

    name: str
    at: dt.datetime


# --- the account's life: meters moving in and out, closing -------------------------------------------------
@dataclass(frozen=True, slots=True)
class MeterAttached(Event):
    """A meter starts on the account from ``energy_wh`` read at ``at`` (its baseline: nothing billed)."""

    meter_id: str
    energy_wh: int
    at: dt.datetime
    by: str = ""


@dataclass(frozen=True, slots=True)
class MeterDetached(Event):
    """A meter left the account after its final reading ``final_wh`` at ``at`` was billed (``charged_fen``)."""

    meter_id: str
    final_wh: int
    at: dt.datetime
    charged_fen: int
    by: str = ""


@dataclass(frozen=True, slots=True)
class MeterReplaced(Event):
    """换表: the old meter's final reading was billed (``charged_fen``) and the new one starts from
    ``initial_wh``, both at ``at``; the billing period goes on across the change."""

    old_meter_id: str
    new_meter_id: str
    final_wh: int
    initial_wh: int
    at: dt.datetime
    charged_fen: int
    by: str = ""


@dataclass(frozen=True, slots=True)
class AccountClosed(Event):
    """The account is closed and its balance settled to zero: ``refund_fen`` paid back to the customer or
    ``arrears_fen`` owed by them (at most one is non-zero), after ``emergency_repaid_fen`` of outstanding
    emergency credit was repaid from the balance."""

    balance_fen_before: int
    refund_fen: int
    arrears_fen: int
    reason: str = ""
    emergency_repaid_fen: int = 0
    by: str = ""


# --- credit and supply ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class CreditLow(Event):
    level: int  # 1 or 2 (2 is the final warning)
    balance_fen: int


@dataclass(frozen=True, slots=True)
class CreditExhausted(Event):
    balance_fen: int


@dataclass(frozen=True, slots=True)
class FinalWarningDelivered(Event):
    """The final warning reached the customer (or the staff, where the customer has no contact): the notice
    period starts ``delivered_at``."""

    issued_at: dt.datetime
    delivered_at: dt.datetime
    to: str  # the contact's role and name, e.g. "customer:Li Lei"


@dataclass(frozen=True, slots=True)
class FinalWarningUndelivered(Event):
    """The final warning was not delivered within the site's delivery timeout: the staff are told, and the
    automatic disconnect waits for a delivery (or an operator)."""

    issued_at: dt.datetime
    balance_fen: int


@dataclass(frozen=True, slots=True)
class DisconnectRequired(Event):
    balance_fen: int


@dataclass(frozen=True, slots=True)
class DisconnectDeferred(Event):
    """A guardrail refused an automatic disconnect; recorded once per reason. ``until``: when it should end."""

    reason: str  # protected, operator_hold, quarantined_reading, meter_offline, readings_not_ok, stale_reading,
    #             friendly_window, notice_undelivered, notice_period, rate_limit
    balance_fen: int
    detail: str = ""
    until: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class DisconnectWithdrawn(Event):
    """A deferred disconnect is no longer needed: the balance rose above the disconnect point."""

    balance_fen: int


@dataclass(frozen=True, slots=True)
class ReconnectRequired(Event):
    balance_fen: int


@dataclass(frozen=True, slots=True)
class ProtectionChanged(Event):
    protected: bool
    by: str = ""


@dataclass(frozen=True, slots=True)
class HoldChanged(Event):
    until: dt.datetime | None  # None: the hold was released
    by: str = ""


# --- readings ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ReadingQuarantined(Event):
    meter_id: str
    energy_wh: int
    previous_wh: int
    reason: str
    kind: str = ""  # backwards | jump
    taken_at: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class QuarantineResolved(Event):
    meter_id: str
    action: str  # accepted | rebased | discarded (a later plausible reading superseded it)
    energy_wh: int  # the quarantined reading
    billed_wh: int  # energy billed by the resolution (0 for rebased and discarded)
    by: str = ""


def event_dict(event: Event) -> dict[str, Any]:
    """A JSON-able dict of the event with its ``type``; datetimes become ISO 8601 UTC strings."""
    out: dict[str, Any] = {"type": type(event).__name__}
    for f in dataclasses.fields(event):
        value = getattr(event, f.name)
        out[f.name] = to_iso(value) if isinstance(value, dt.datetime) else value
    return out
