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
    FleetInvalid               accounts or meters to provision are not well formed (each error with its row)
    FleetConflict              they are, but clash with the fleet (a meter's place taken, an id in use...)
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.domain.errors import DomainError

__all__ = ["AccountUnreadable", "FleetConflict", "FleetInvalid", "RowError", "AuthorityExceeded", "CommandNotAllowed", "CommandNotCancellable", "DuplicateRow",
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


@dataclass(frozen=True, slots=True)
class RowError:
    """One thing wrong with a row to provision: which row (1-based, of its file or list; None for a single
    request), which field, and what."""

    kind: str  # account | meter
    row: int | None
    field: str
    msg: str

    def as_dict(self) -> dict[str, object]:
        loc: list[object] = [self.kind + "s"] + ([self.row] if self.row is not None else []) + [self.field]
        return {"loc": loc, "row": self.row, "kind": self.kind, "field": self.field, "msg": self.msg}

    def __str__(self) -> str:
        where = f"{self.kind}s row {self.row}" if self.row is not None else self.kind
        return f"{where}: {self.field}: {self.msg}"


class FleetRefused(Exception):
    """Accounts or meters to provision were refused; nothing was changed. ``errors``: each one with its row."""

    def __init__(self, errors: list[RowError]) -> None:
        shown = "; ".join(str(e) for e in errors[:5]) + (f"; and {len(errors) - 5} more" if len(errors) > 5 else "")
        super().__init__(shown)
        self.errors = errors


class FleetInvalid(FleetRefused):
    """Not well formed, or naming what the site does not have (an unknown tariff, bus, model, account)."""


class FleetConflict(FleetRefused):
    """Well formed, but clashing with the fleet as it is: an id in use, a meter's place on its bus taken, a
    closed account, a meter with a relay command in progress."""
