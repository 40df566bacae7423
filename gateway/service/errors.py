"""The service layer's errors: what a use case refuses and why (the API maps each to a problem type).

    LookupError
     ├── UnknownAccount, UnknownMeter, UnknownPayment, UnknownCommand, UnknownNotice
    PaymentConflict            the same (source, payment_id) with other content
    CommandNotCancellable      only a queued command can be cancelled
    NoticeNotRetryable         only a failed notice (a dead letter) is tried again by hand
    DomainError (gateway.domain.errors)
     └── CommandNotAllowed     a manual command the caller may not give
    AccountUnreadable          the stored state of one account cannot be read (an alarm is raised)
    AuthorityExceeded          more than the caller's key may do
    GatewayStopping            the writer stopped before the job was done
"""

from __future__ import annotations

from gateway.domain.errors import DomainError

__all__ = ["AccountUnreadable", "AuthorityExceeded", "CommandNotAllowed", "CommandNotCancellable", "DuplicateRow",
           "GatewayStopping", "NoticeNotRetryable", "PaymentConflict", "UnknownAccount", "UnknownCommand", "UnknownMeter",
           "UnknownNotice", "UnknownPayment"]


class UnknownAccount(LookupError):
    """No account with that id."""


class UnknownMeter(LookupError):
    """No meter with that id."""


class UnknownPayment(LookupError):
    """A reversal names a payment that was never recorded."""


class UnknownCommand(LookupError):
    """No command with that id."""


class PaymentConflict(Exception):
    """The same (source, payment_id) was already recorded with different content."""


class UnknownNotice(LookupError):
    """No notice with that id."""


class NoticeNotRetryable(Exception):
    """Only a failed notice (a dead letter) can be tried again by hand."""


class CommandNotCancellable(Exception):
    """Only a queued command can be cancelled; one already on the wire is not."""


class CommandNotAllowed(DomainError):
    """A manual command the caller may not give (e.g. a disconnect of a protected account without force)."""


class AuthorityExceeded(Exception):
    """More than the caller's key may do (e.g. emergency credit above the site's amount without admin)."""


class AccountUnreadable(Exception):
    """The account's stored state cannot be converted (a value an older version let in); nothing is done to it."""

    def __init__(self, account_id: str, reason: str) -> None:
        super().__init__(f"account {account_id}: the stored state cannot be read ({reason}); an alarm was raised")
        self.account_id, self.reason = account_id, reason


class GatewayStopping(RuntimeError):
    """The gateway stopped before the job could be done; nothing of it was written."""


class DuplicateRow(Exception):
    """A row another writer made first (the same payment recorded through two instances at once): nothing was
    written; looking again finds it."""
