"""What the writer is asked to do (its jobs) and what a payment job answers."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from drivers.base import Reading
from gateway.domain.account import PrepaidAccount

__all__ = ["AccountJob", "Exclusive", "Job", "PaymentJob", "PaymentResult", "ReadingJob", "ReversalJob"]


@dataclass(frozen=True, slots=True)
class PaymentResult:
    created: bool  # False when this repeats an already recorded payment (or reversal)
    record: dict[str, Any]


@dataclass(slots=True)
class PaymentJob:
    source: str
    payment_id: str
    account_id: str
    amount_fen: int
    paid_at: dt.datetime | None = None
    channel: str | None = None
    recorded_by: str | None = None  # the API key that posts it


@dataclass(slots=True)
class ReversalJob:
    source: str
    payment_id: str
    reason: str = ""
    reversed_by: str | None = None  # the API key that reverses it (also the actor of its audit row)


@dataclass(slots=True)
class ReadingJob:
    reading: Reading


@dataclass(slots=True)
class AccountJob:
    """An operator's change to one account (protection, hold, emergency credit, quarantine...).

    ``apply(account, now)`` runs on the loaded account inside the batch; its return value is the job's result.
    """

    account_id: str
    apply: Callable[[PrepaidAccount, dt.datetime], Any]
    origin: str = "operator"
    reason: str = "operator action"
    audit: tuple[str, str, dict[str, Any] | None] | None = None  # (actor, action, detail), written with it
    command: dict[str, Any] | None = None  # a manual relay command to queue with it (new_command's keywords)
    not_answering: tuple[str, ...] = ()  # meters known not to answer now (no automatic disconnect rests on them)


@dataclass(slots=True)
class Exclusive:
    """Work that needs the writer to stand still: a change of the fleet's configuration (``gateway.service.fleet``)
    reads and writes accounts in a transaction of its own. The writer runs it alone, once the batch in flight has
    landed and before it reads the next; its result is the job's."""

    work: Callable[[], Awaitable[Any]]


Job = PaymentJob | ReversalJob | ReadingJob | AccountJob | Exclusive
