"""What the service layer needs from storage, as abstract classes: repositories, the unit of work, and the
``Storage`` that opens units of work and commits the writer's batches (cosmicpython's ports).

``gateway.adapters.sql`` implements them on SQLAlchemy Core for SQLite and PostgreSQL (the default write path);
``gateway.adapters.sqlite_pipeline`` is the optional faster SQLite write of the writer's batches; unit tests use
the fakes in ``tests/fakes.py``, which subclass these. Every SQL statement lives in ``gateway.adapters``.

Rows are handed over as plain values: dicts named by their columns for rows the service makes (ledger entries,
readings, outbox events, audit rows), domain accounts and ``CommandRecord``s for the rest.
"""

from __future__ import annotations

import abc
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Self

from gateway.domain.account import PrepaidAccount
from gateway.domain.relay import Command
from gateway.service.commands import CommandRecord

if TYPE_CHECKING:
    from gateway.service.alarm_port import AlarmRepository
    from gateway.service.fleet_port import FleetRepository

__all__ = ["AccountRepository", "BatchChanges", "CommandRepository", "LedgerRepository", "MeterRepository",
           "MeterState", "NoticeRecord", "NoticeRepository", "OutboxEvent", "OutboxRepository", "PaymentKey",
           "PaymentRepository", "StaleWrite", "Storage", "UnitOfWork"]

PaymentKey = tuple[str, str]  # (source, payment_id)


class StaleWrite(RuntimeError):
    """A row the batch read was changed by somebody else before the batch wrote it (another instance sharing
    the database): nothing was written; the batch is done again from fresh rows."""


@dataclass(slots=True)
class MeterState:
    """A meter's health and relay as the writer needs them."""

    health: str
    relay: str | None
    failures: int
    changed: dict[str, Any] = field(default_factory=dict)  # the columns a batch changes


@dataclass(slots=True)
class BatchChanges:
    """Everything one writer batch writes, in one transaction.

    ``accounts``: each changed account's id, the version of its row as read, and its row as
    ``Storage.account_row`` made it when the batch was prepared (a snapshot: the next batch may change the same
    account in memory while this one commits); the write bumps the version, and a row whose version is no
    longer the one read fails the batch with ``StaleWrite``. ``limiter``: the rate limiter's state as read and as
    it is now, when the batch changed it (the same check).
    """

    now: dt.datetime
    accounts: list[tuple[str, int, dict[str, Any]]] = field(default_factory=list)
    ledger: list[dict[str, Any]] = field(default_factory=list)
    payments: list[dict[str, Any]] = field(default_factory=list)
    reversals: list[dict[str, Any]] = field(default_factory=list)
    readings: list[dict[str, Any]] = field(default_factory=list)
    meters: dict[str, dict[str, Any]] = field(default_factory=dict)
    limiter: tuple[dict[str, Any] | None, dict[str, Any]] | None = None
    outbox: list[dict[str, Any]] = field(default_factory=list)
    audits: list[dict[str, Any]] = field(default_factory=list)
    commands: list[CommandRecord] = field(default_factory=list)


class AccountRepository(abc.ABC):
    @abc.abstractmethod
    async def ids(self) -> set[str]:
        """Every stored account's id."""

    @abc.abstractmethod
    async def states(self, ids: list[str]) -> dict[str, tuple[int, Any]]:
        """(version, stored state) of the accounts among ``ids`` that exist."""

    @abc.abstractmethod
    async def versions(self, ids: list[str]) -> dict[str, int]:
        """The versions of the accounts among ``ids`` that exist."""

    @abc.abstractmethod
    async def lock(self, ids: list[str]) -> None:
        """Lock the accounts' rows until the commit, in id order (PostgreSQL; nothing on SQLite, whose writers
        queue for its one write lock): read after this, they cannot change before this unit of work writes."""

    @abc.abstractmethod
    async def add(self, accounts: list[PrepaidAccount], now: dt.datetime, *, reference: str = "settings") -> set[str]:
        """New accounts, each with its opening balance as its first ledger entry (``reference`` on it); returns
        the ids added (an account another instance added meanwhile is left as it is)."""

    @abc.abstractmethod
    async def deferral_ended(self, now: dt.datetime) -> list[str]:
        """Connected accounts whose deferred disconnect had an end that has passed by ``now``."""


class MeterRepository(abc.ABC):
    @abc.abstractmethod
    async def states(self, ids: list[str]) -> dict[str, MeterState]:
        """Health, relay and consecutive failures of the meters among ``ids`` that exist."""

    @abc.abstractmethod
    async def failed(self, meter_id: str, error: str, *, offline_after: int) -> tuple[str, str]:
        """Count a failed poll: (health before, health after)."""

    @abc.abstractmethod
    async def update(self, meter_id: str, values: dict[str, Any]) -> None:
        """Set some of a meter's columns."""


class PaymentRepository(abc.ABC):
    @abc.abstractmethod
    async def get(self, keys: set[PaymentKey]) -> dict[PaymentKey, dict[str, Any]]:
        """The recorded payments among ``keys``, as records (the columns of the payments table)."""


class CommandRepository(abc.ABC):
    @abc.abstractmethod
    async def get(self, command_id: str) -> CommandRecord | None: ...

    @abc.abstractmethod
    async def state(self, command_id: str) -> str | None:
        """Just the command's state (the relay runner checks it before each step)."""

    @abc.abstractmethod
    async def active(self, meter_id: str | None = None) -> list[CommandRecord]:
        """Commands not in a final state (of one meter, or all), oldest first."""

    @abc.abstractmethod
    async def add(self, record: CommandRecord, *, audit: dict[str, Any] | None = None) -> None:
        """Write a new command, its event and ``audit``; any other active command of its meter is superseded."""

    @abc.abstractmethod
    async def transition(self, command_id: str, expected: str, new: str, now: dt.datetime, *,
                         error: str | None = None, attempt: bool = False) -> bool:
        """Move a command from ``expected`` to ``new`` (a cancel, a supersession) with its audit row and event;
        False (nothing written) if it is no longer ``expected``. ``attempt``: count one more attempt."""

    @abc.abstractmethod
    async def save(self, old: Command, new: Command, now: dt.datetime) -> bool:
        """Write ``new`` (the relay model's next version of ``old``) if the row is still in ``old``'s state, with
        its audit row, event and, on a final state, the meter's relay or fault; False if it is not."""

    @abc.abstractmethod
    async def recent_trips(self, since: dt.datetime) -> list[dt.datetime]:
        """When the automatic trips put on the wire since ``since`` went out."""


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    """An event written with the change it reports (the outbox table), in commit order of its id."""

    id: int
    topic: str
    payload: dict[str, Any]
    created_at: dt.datetime


class OutboxRepository(abc.ABC):
    @abc.abstractmethod
    async def pending(self, after_id: int, limit: int, holes: Sequence[int] = ()) -> list[OutboxEvent]:
        """Up to ``limit`` events not published yet with an id above ``after_id``, and those of ``holes`` (ids
        skipped below it: ``gateway.service.outbox_cursor``) not published yet, all in id order."""

    @abc.abstractmethod
    async def waiting(self) -> int:
        """How many events are not published yet."""

    @abc.abstractmethod
    async def readings(self, after_id: int, limit: int, holes: Sequence[int] = ()) -> list[OutboxEvent]:
        """Up to ``limit`` stored readings above ``after_id``, and those of ``holes`` (ids skipped below it:
        ``gateway.service.outbox_cursor``) stored since, all in id order, as events (``meters/{meter}/reading``):
        readings are published from their table, not written to the outbox twice."""

    @abc.abstractmethod
    async def readings_published(self) -> int:
        """The id of the last reading published; where none ever was, the newest stored (readings go out from
        the moment events are first published, not the whole history)."""

    @abc.abstractmethod
    async def sequences(self, topics: set[str]) -> dict[str, int]:
        """The sequence number of the last event published on each of ``topics`` that had one."""

    @abc.abstractmethod
    async def published(self, ids: list[int], at: dt.datetime, sequences: dict[str, int], *,
                        readings_to: int | None = None) -> None:
        """Mark events as published, and keep each topic's sequence number as of them (and with
        ``readings_to``, the id of the last reading published)."""

    @abc.abstractmethod
    async def prune(self, before: dt.datetime, *, keep_unnoticed: bool = False, unpublished_too: bool = False,
                    limit: int = 10_000) -> int:
        """Delete up to ``limit`` of the events published before ``before`` (``unpublished_too``: made before
        ``before``, published or not: no MQTT); with ``keep_unnoticed``, only those the notice planner has looked
        at too. Returns how many."""

    async def meter_snapshot(self) -> tuple[int, int, dict[str, dict[str, Any]]]:
        """Where the meters' retained states start (``gateway.service.meter_state``): the id of the newest outbox
        event and of the newest reading, then every meter's ``health``, ``error``, ``relay`` and ``relay_fault``
        (the meters table) and ``reading``, its newest reading by the time it was taken (as ``readings`` gives
        it), or None. The ids are read first: what is committed meanwhile is in the snapshot and above them."""
        raise NotImplementedError

    @abc.abstractmethod
    async def lease(self, holder: str, now: dt.datetime, until: dt.datetime) -> bool:
        """Take or renew the right to publish (one relay per database: instances sharing one would publish every
        event twice, numbered apart) until ``until``; False while another holder's lease runs. ``until <= now``
        by the holder gives it back."""

    # The notice planner is a destination of its own: it marks the events it has looked at apart from MQTT.
    @abc.abstractmethod
    async def unnoticed(self, after_id: int, limit: int, holes: Sequence[int] = ()) -> list[OutboxEvent]:
        """Up to ``limit`` events the notice planner has not looked at with an id above ``after_id``, and those
        of ``holes`` it has not looked at, all in id order."""

    @abc.abstractmethod
    async def noticed(self, ids: list[int], at: dt.datetime) -> None:
        """Mark events as looked at by the notice planner."""


@dataclass(frozen=True, slots=True)
class NoticeRecord:
    """A stored notice (table ``notices``)."""

    id: int
    dedup_key: str
    event_id: int
    kind: str
    account_id: str
    contact: str
    role: str
    channel: str
    recipient: str
    language: str
    subject: str
    text: str
    final: bool
    state: str  # pending | delivered | failed
    attempts: int
    next_attempt_at: dt.datetime | None
    last_error: str | None
    issued_at: dt.datetime
    created_at: dt.datetime
    updated_at: dt.datetime
    delivered_at: dt.datetime | None


class NoticeRepository(abc.ABC):
    @abc.abstractmethod
    async def add(self, rows: list[dict[str, Any]]) -> int:
        """Store new notices (``NoticeRecord``'s fields but ``id``); one whose dedup key is there already is left
        out. Returns how many were stored."""

    @abc.abstractmethod
    async def due(self, now: dt.datetime, limit: int) -> list[NoticeRecord]:
        """Pending notices whose next attempt is due, oldest first."""

    @abc.abstractmethod
    async def claim(self, notice: NoticeRecord, now: dt.datetime, lease_until: dt.datetime) -> bool:
        """Take ``notice`` for one attempt (its attempts counted, not due again before ``lease_until``); False when
        another instance took it first."""

    @abc.abstractmethod
    async def finish(self, notice_id: int, values: dict[str, Any]) -> None:
        """Record the outcome of an attempt (state, delivered_at, last_error, next_attempt_at, updated_at)."""

    @abc.abstractmethod
    async def get(self, notice_id: int) -> NoticeRecord | None: ...


class LedgerRepository(abc.ABC):
    @abc.abstractmethod
    async def balances(self) -> dict[str, int]:
        """Every account's balance column."""

    @abc.abstractmethod
    async def entries(self) -> list[tuple[int, str, int, int]]:
        """(id, account, amount, balance after) of every ledger entry, in id order."""

    @abc.abstractmethod
    async def payment_credits(self) -> list[tuple[PaymentKey, int]]:
        """(payment key, amount) of every ledger entry of a payment."""

    @abc.abstractmethod
    async def payments(self) -> list[tuple[PaymentKey, int]]:
        """(payment key, amount) of every recorded payment."""


class UnitOfWork(abc.ABC):
    """One transaction: ``async with`` opens it, ``commit()`` makes it durable, leaving without a commit rolls
    back. The repositories work inside it."""

    accounts: AccountRepository
    meters: MeterRepository
    payments: PaymentRepository
    commands: CommandRepository
    ledger: LedgerRepository
    outbox: OutboxRepository
    notices: NoticeRepository
    fleet: FleetRepository
    alarms: AlarmRepository

    @abc.abstractmethod
    async def __aenter__(self) -> Self: ...

    @abc.abstractmethod
    async def __aexit__(self, *exc_info: object) -> None: ...

    @abc.abstractmethod
    async def commit(self) -> None: ...

    @abc.abstractmethod
    async def limiter(self) -> dict[str, Any] | None:
        """The site rate limiter's stored state (None: no row)."""

    @abc.abstractmethod
    async def ensure_limiter(self) -> None:
        """Create the rate limiter's row if it is missing (two instances never race to insert it)."""

    @abc.abstractmethod
    async def add_outbox(self, topic: str, payload: dict[str, Any], now: dt.datetime) -> None: ...

    @abc.abstractmethod
    async def audit(self, actor: str, action: str, target: str | None, detail: dict[str, Any] | None,
                    now: dt.datetime) -> None: ...

    @abc.abstractmethod
    async def api_keys(self) -> list[tuple[str, str, str, list[str] | None]]:
        """The API keys kept in the database: (sha256, name, role, sources)."""

    @abc.abstractmethod
    async def put_api_key(self, name: str, sha256: str, role: str, sources: list[str] | None,
                          now: dt.datetime) -> None:
        """Keep an API key (its digest) under ``name``, replacing the one of that name."""

    @abc.abstractmethod
    async def write_batch(self, changes: BatchChanges) -> None:
        """Write a writer batch in this transaction; ``StaleWrite`` (and nothing written) if a row it changes was
        changed since it was read."""


class Storage(abc.ABC):
    """Opens units of work and commits the writer's batches.

    ``exclusive``: this process is the database's only writer (SQLite): what the writer's last commit left (its
    accounts, meters, rate limiter) can be trusted without reading it again, and the writer prepares its next
    batch while one commits.
    """

    exclusive: bool = False

    @abc.abstractmethod
    def account_row(self, account: PrepaidAccount, now: dt.datetime) -> dict[str, Any]:
        """What the account's row stores (its state and the columns kept for queries), for ``BatchChanges``."""

    @abc.abstractmethod
    def __call__(self, *, readonly: bool = False, background: bool = False) -> UnitOfWork:
        """A unit of work; ``readonly`` ones never write; ``background`` ones (the writer's batches) let short
        transactions (relay commands) go first where writers queue."""

    async def commit_batch(self, changes: BatchChanges, *, background: bool = False) -> None:
        """Write a writer batch in a transaction of its own and commit it."""
        async with self(background=background) as uow:
            await uow.write_batch(changes)
            await uow.commit()

    async def aclose(self) -> None:
        """Release what the storage kept open (the writer calls it when it stops)."""
