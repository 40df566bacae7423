"""Events the domain records (past tense). Handlers publish them after commit."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "AccountCharged",
    "CreditExhausted",
    "CreditLow",
    "DisconnectDeferred",
    "DisconnectRequired",
    "Event",
    "PaymentReceived",
    "ReadingQuarantined",
    "ReconnectRequired",
]


@dataclass(frozen=True, slots=True)
class Event:
    """Base of domain events."""

    account_id: str


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
class CreditLow(Event):
    level: int  # 1 or 2 (2 is the final warning)
    balance_fen: int


@dataclass(frozen=True, slots=True)
class CreditExhausted(Event):
    balance_fen: int


@dataclass(frozen=True, slots=True)
class DisconnectRequired(Event):
    balance_fen: int


@dataclass(frozen=True, slots=True)
class DisconnectDeferred(Event):
    reason: str
    balance_fen: int


@dataclass(frozen=True, slots=True)
class ReconnectRequired(Event):
    balance_fen: int


@dataclass(frozen=True, slots=True)
class ReadingQuarantined(Event):
    meter_id: str
    energy_wh: int
    previous_wh: int
    reason: str
