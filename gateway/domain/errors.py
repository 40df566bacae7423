"""Business errors of the domain; the API maps them to HTTP status codes in one place.

    DomainError
     ├── EmergencyCreditRefused   (already granted this period, or not yet repaid)      -> 409
     ├── NoQuarantinedReading     (accept or re-base without a pending reading)          -> 409
     ├── UnknownMeter             (a meter that is not one of the account's)             -> 404
     ├── InvalidAmount            (zero or negative payment, reversal or grant)          -> 409
     ├── InvalidTime              (a time the rule can't take: a hold in the past...)    -> 409
     ├── MeterAlreadyAttached     (attach a meter the account already bills)             -> 409
     ├── MetersStillAttached      (close an account that still has meters)               -> 409
     └── ClosedAccount            (anything but a query on a closed account)             -> 409
"""

from __future__ import annotations

__all__ = ["ClosedAccount", "DomainError", "EmergencyCreditRefused", "InvalidAmount", "InvalidTime",
           "MeterAlreadyAttached", "MetersStillAttached", "NoQuarantinedReading", "UnknownMeter"]


class DomainError(Exception):
    """Base of the domain's business errors."""


class EmergencyCreditRefused(DomainError):
    """Emergency credit can't be granted now; ``reason`` says why."""

    def __init__(self, account_id: str, reason: str) -> None:
        super().__init__(f"account {account_id}: emergency credit refused: {reason}")
        self.account_id, self.reason = account_id, reason


class NoQuarantinedReading(DomainError):
    """An operator accepted or re-based a meter that has no quarantined reading."""


class UnknownMeter(DomainError, LookupError):
    """A meter id the account does not know."""


class InvalidAmount(DomainError, ValueError):
    """An amount that must be positive was not."""


class InvalidTime(DomainError, ValueError):
    """A time a rule can't take (a hold that ends in the past, a baseline read in the future)."""


class MeterAlreadyAttached(DomainError):
    """A meter attached to an account that already bills it (it has a baseline there)."""


class MetersStillAttached(DomainError):
    """An account closed while meters are still on it (detach them first: their final readings are billed)."""


class ClosedAccount(DomainError):
    """The account is closed: it takes no payments, readings, credit, holds or meters, and can't close again."""
