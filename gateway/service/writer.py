"""Group commit: everything that changes an account goes through one writer, in batches, one transaction (one
fsync) per batch.

Callers ``await`` their own job; the writer answers only after the batch's commit, so a 2xx on a payment still
means it is durable. Batching is natural: while one batch commits, new jobs queue up and form the next batch;
an idle gateway commits each job alone with no added delay.

Within a batch every statement is a bulk statement (one SELECT for all accounts, one executemany for all ledger
entries...), so the per-job cost is the domain work in Python. Jobs are applied in arrival order to in-memory
accounts; a business refusal (unknown account, payment conflict, a domain error) is that job's result and does
not disturb the others. A database error fails the batch, which is then retried job by job so that one bad job
cannot sink the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from drivers.base import Reading, RelayState
from gateway.adapters import bulk
from gateway.adapters import tables as t
from gateway.domain.account import Decision, PrepaidAccount
from gateway.domain.errors import DomainError
from gateway.domain.policy import RateLimiter
from gateway.service import accounts as repo
from gateway.service.catalog import Catalog
from gateway.service.commands import CommandRecord, new_command, store_command
from gateway.service.errors import (
    AccountUnreadable,
    GatewayStopping,
    PaymentConflict,
    UnknownAccount,
    UnknownMeter,
    UnknownPayment,
)
from gateway.service.uow import UnitOfWork, UnitOfWorkFactory

__all__ = ["AccountJob", "PaymentConflict", "PaymentJob", "PaymentResult", "ReadingJob", "ReversalJob", "Writer"]

log = logging.getLogger(__name__)

LIMITER = repo.LIMITER


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


Job = PaymentJob | ReversalJob | ReadingJob | AccountJob


_UNKNOWN: Any = object()


@dataclass(slots=True)
class _Flight:
    """A batch whose statements and commit are running (SQLite's pipeline)."""

    task: asyncio.Future[None]
    batch: _Batch
    items: list[tuple[Job, asyncio.Future[Any]]]


@dataclass(slots=True)
class _Known:
    """What the writer's last commits left in the meters table and the rate limiter's row (SQLite, where the
    writer keeps them between batches); dropped after a failed transaction. Writes to a meter's row made
    elsewhere (a failed poll, a confirmed relay) drop that meter (``Writer.forget_meter``)."""

    meters: dict[str, tuple[str, str | None, int]] = field(default_factory=dict)  # health, relay, failures
    limiter: Any = _UNKNOWN  # the state dict, None when there is no row yet, _UNKNOWN when not known


@dataclass(slots=True)
class _MeterState:
    health: str
    relay: str | None
    failures: int
    changed: dict[str, Any] = field(default_factory=dict)


class _Batch:
    """The in-memory picture of one batch: accounts, meters, and the rows to write at the end.

    ``load`` reads what the jobs need, ``run`` applies each job in memory and ``prepare`` makes the statements
    (no I/O), ``write`` executes them.
    """

    def __init__(self, catalog: Catalog, now: dt.datetime, cache: repo.AccountCache | None = None, *,
                 trust_cache: bool = False) -> None:
        self.catalog, self.now, self.cache, self.trust_cache = catalog, now, cache, trust_cache
        self.accounts: dict[str, PrepaidAccount] = {}
        self.versions: dict[str, int] = {}  # of the accounts, as read
        self.meters: dict[str, _MeterState] = {}
        self.offline: set[str] = set()  # meters reported offline (and not read since)
        self.payments: dict[tuple[str, str], dict[str, Any]] = {}
        self.new_payments: list[dict[str, Any]] = []
        self.reversed: list[dict[str, Any]] = []
        self.readings: list[dict[str, Any]] = []
        self.stored: list[Reading] = []  # the readings written, in order
        self.outbox: list[dict[str, Any]] = []
        self.commands: list[CommandRecord] = []
        self.audits: list[dict[str, Any]] = []
        self.statements: list[bulk.Statement] = []
        self.limiter: RateLimiter | None = None
        self._limiter_state: dict[str, Any] | None = None
        self.limiter_changed = False  # this batch counted an automatic disconnect
        self.unreadable: dict[str, AccountUnreadable] = {}  # accounts whose stored state can't be read
        self.alarms: list[str] = []  # of those, the ones this batch raises an alarm for
        self.changed: set[str] = set()  # accounts a job changed: only these are written

    async def load(self, reader: Callable[[], Awaitable[UnitOfWork]], jobs: list[Job],
                   known: _Known | None = None, *,
                   in_flight: dict[tuple[str, str], dict[str, Any]] | None = None) -> None:
        """Read what the jobs need; ``reader()`` opens the unit of work to read with, only if something must be
        read. ``known``: meters and the rate limiter as the writer's last batch left them (SQLite only).
        ``in_flight``: payments of the batch being committed (not readable yet)."""
        payment_keys = {(j.source, j.payment_id) for j in jobs if isinstance(j, PaymentJob | ReversalJob)}
        if payment_keys:
            uow = await reader()
            rows = await uow.execute(sa.select(t.payments).where(
                sa.tuple_(t.payments.c.source, t.payments.c.payment_id).in_(sorted(payment_keys))))
            self.payments = {(r.source, r.payment_id): _payment_record(r) for r in rows}
            for key in payment_keys & (in_flight or {}).keys():
                self.payments.setdefault(key, dict(in_flight[key]))  # type: ignore[index]
        account_ids: set[str] = set()
        for job in jobs:
            if isinstance(job, PaymentJob | AccountJob):
                account_ids.add(job.account_id)
            elif isinstance(job, ReversalJob):
                record = self.payments.get((job.source, job.payment_id))
                if record is not None:
                    account_ids.add(record["account_id"])
            else:
                spec = self.catalog.meters.get(job.reading.meter_id)
                if spec is not None:
                    account_ids.add(spec.account_id)
        self.accounts = await repo.load_accounts(reader, self.catalog, sorted(account_ids), cache=self.cache,
                                                 versions=self.versions, trust_cache=self.trust_cache,
                                                 unreadable=self.unreadable)
        meter_ids = sorted({m for a in self.accounts for m in self.catalog.accounts[a].meter_ids})
        missing = meter_ids
        if known is not None:
            missing = []
            for meter_id in meter_ids:
                state = known.meters.get(meter_id)
                if state is None:
                    missing.append(meter_id)
                else:
                    self.meters[meter_id] = _MeterState(*state)
        if missing:
            uow = await reader()
            rows = await uow.select_in(t.meters, ("id", "health", "relay", "consecutive_failures"), "id", missing)
            self.meters.update({row.id: _MeterState(row.health, row.relay, row.consecutive_failures)
                                for row in rows})
        # meters offline or whose last poll failed: no automatic disconnect may rest on them
        self.offline = {meter_id for meter_id, meter in self.meters.items()
                        if meter.health == "offline" or meter.failures}
        if known is not None and known.limiter is not _UNKNOWN:
            self._limiter_state = known.limiter
        else:
            # Read without a lock: only a batch that counts a trip locks the row, when it writes (``write``).
            uow = await reader()
            row = (await uow.execute(sa.select(t.site_state.c.state).where(t.site_state.c.name == LIMITER))
                   ).one_or_none()
            self._limiter_state = None if row is None else row.state
        self.limiter = self.catalog.site.limiter(self._limiter_state)

    def alarm_unreadable(self, alarmed: set[str]) -> None:
        """An alarm, written with the batch, for each account whose state can't be read and that has not had one
        since the gateway started (``Writer._done`` adds them to ``alarmed``)."""
        for account_id, error in self.unreadable.items():
            if account_id not in alarmed:
                self.alarms.append(account_id)
                self._outbox("alarms", {"type": "AccountUnreadable", "account_id": account_id,
                                        "error": error.reason})

    def remember(self, known: _Known) -> None:
        """Once prepared: the meters' and the rate limiter's state as this batch writes them, for the next batch
        (``Writer._forget`` drops it if the batch fails)."""
        for meter_id, meter in self.meters.items():
            known.meters[meter_id] = (meter.health, meter.relay, meter.failures)
        known.limiter = self.limiter.state_dict() if self.limiter is not None else _UNKNOWN

    # --- jobs ---------------------------------------------------------------------------------------------
    def run(self, job: Job) -> Any:
        if isinstance(job, ReadingJob):
            return self.reading(job)
        if isinstance(job, PaymentJob):
            return self.payment(job)
        if isinstance(job, ReversalJob):
            return self.reversal(job)
        account = self._account(job.account_id)
        saved = account.state_dict(), len(account.entries), len(account.events)
        try:
            result = job.apply(account, self.now)
        except REFUSALS:
            self._restore(account, *saved)  # a refused change leaves the account as it was
            raise
        if job.audit is not None:
            actor, action, detail = job.audit
            self.audits.append(dict(at=self.now, actor=actor, action=action, target=job.account_id, detail=detail))
        self.offline.update(job.not_answering)
        if job.command is not None:
            expires = self.now + dt.timedelta(seconds=self.catalog.command_expiry_s)
            record = new_command(now=self.now, expires_at=expires, **job.command)
            self.commands.append(record)
            result = (result, record)
        self._decide(account, origin="automatic", reason=job.reason)
        return result

    def _account(self, account_id: str) -> PrepaidAccount:
        account = self.accounts.get(account_id)
        if account is None:
            raise self.unreadable.get(account_id) or UnknownAccount(f"no account {account_id!r}")
        return account

    def _restore(self, account: PrepaidAccount, state: dict[str, Any], entries: int, events: int) -> None:
        """Put back an account as it was before a refused job (in the batch and in the writer's cache)."""
        restored = self.catalog.account(account.id, state)
        restored.entries, restored.events = account.entries[:entries], account.events[:events]
        self.accounts[account.id] = restored
        if self.cache is not None and account.id in self.cache.entries:
            self.cache.entries[account.id] = (self.cache.entries[account.id][0], restored)

    def payment(self, job: PaymentJob) -> PaymentResult:
        key = (job.source, job.payment_id)
        existing = self.payments.get(key)
        if existing is not None:
            if (existing["account_id"], existing["amount_fen"]) != (job.account_id, job.amount_fen):
                raise PaymentConflict(f"payment {job.source}/{job.payment_id} was recorded with other content")
            return PaymentResult(False, existing)
        account = self._account(job.account_id)
        account.apply_payment(job.source, job.payment_id, job.amount_fen)
        record = dict(source=job.source, payment_id=job.payment_id, account_id=job.account_id,
                      amount_fen=job.amount_fen, paid_at=job.paid_at, channel=job.channel,
                      balance_after_fen=account.balance_fen, received_at=self.now, reversed_at=None,
                      reversal_reason=None, recorded_by=job.recorded_by, reversed_by=None)
        self.payments[key] = record
        self.new_payments.append(record)
        self._decide(account, origin="billing", reason=f"payment {job.source}/{job.payment_id}")
        return PaymentResult(True, record)

    def reversal(self, job: ReversalJob) -> PaymentResult:
        record = self.payments.get((job.source, job.payment_id))
        if record is None:
            raise UnknownPayment(f"no payment {job.source}/{job.payment_id}")
        if record["reversed_at"] is not None:
            return PaymentResult(False, record)  # reversing twice changes nothing
        account = self._account(record["account_id"])
        account.apply_reversal(job.source, job.payment_id, record["amount_fen"], reason=job.reason)
        record.update(reversed_at=self.now, reversal_reason=job.reason or None, reversed_by=job.reversed_by)
        self.audits.append(dict(at=self.now, actor=job.reversed_by or "gateway", action="payment.reverse",
                                target=record["account_id"], detail={"source": job.source,
                                                                    "payment_id": job.payment_id,
                                                                    "amount_fen": record["amount_fen"],
                                                                    "reason": job.reason}))
        self.reversed.append(record)
        self._decide(account, origin="automatic", reason=f"reversal of {job.source}/{job.payment_id}")
        return PaymentResult(True, record | {"balance_after_fen": account.balance_fen})

    def reading(self, job: ReadingJob) -> list[CommandRecord]:
        reading = job.reading
        spec = self.catalog.meters.get(reading.meter_id)
        if spec is None or reading.meter_id not in self.meters:
            raise UnknownMeter(f"no meter {reading.meter_id!r}")
        account = self._account(spec.account_id)
        account.apply_reading(reading.meter_id, reading.energy_wh, reading.taken_at,
                              rates_wh=reading.energy_wh_by_rate)
        quarantined = account.cursors[reading.meter_id].pending is not None
        relay = reading.relay.value if reading.relay is not None else None
        self.stored.append(reading)
        self.readings.append(dict(meter_id=reading.meter_id, taken_at=reading.taken_at, energy_wh=reading.energy_wh,
                                  power_w=reading.power_w, voltage_v=reading.voltage_v,
                                  current_a=reading.current_a, relay=relay, billed=not quarantined))
        # The meter's row changes only when its health or relay does: the time of its last success is that of
        # its newest reading (the readings table is also what publishes readings: no outbox event per reading).
        meter = self.meters[reading.meter_id]
        if meter.health != "online" or meter.failures:
            if meter.health != "online":
                self._outbox(f"meters/{reading.meter_id}/state", {
                    "type": "MeterHealth", "meter_id": reading.meter_id, "health": "online", "error": None})
            meter.health, meter.failures = "online", 0
            self.offline.discard(reading.meter_id)
            meter.changed.update(last_success_at=reading.taken_at, consecutive_failures=0, health="online",
                                 last_error=None)
        if relay is not None and relay != meter.relay:
            meter.relay = relay
            meter.changed.update(relay=relay, last_success_at=reading.taken_at)
        return self._decide(account, origin="automatic", reason="balance")

    def _outbox(self, topic: str, payload: dict[str, Any]) -> None:
        """Queue an event; datetimes in ``payload`` are written as ISO 8601 UTC by the JSON column."""
        payload.setdefault("at", self.now)
        self.outbox.append(dict(topic=topic, payload=payload, created_at=self.now))

    def _decide(self, account: PrepaidAccount, *, origin: str, reason: str) -> list[CommandRecord]:
        """After a job changed ``account``: the engine's decision (and the account is to be written)."""
        self.changed.add(account.id)
        offline = self.offline.intersection(self.catalog.accounts[account.id].meter_ids) if self.offline else ()
        decision = account.evaluate(self.now, offline=offline, limiter=self.limiter)
        if decision is Decision.NONE:
            return []
        action = "open" if decision is Decision.DISCONNECT else "close"
        expires = self.now + dt.timedelta(seconds=self.catalog.command_expiry_s)
        # what the decision rests on: each meter's newest reading (a trip goes out only if the meter has not
        # failed since: gateway.domain.relay)
        made = [new_command(meter_id=m, action=action, origin=origin, now=self.now, expires_at=expires,
                            reason=reason, basis_at=account.cursors[m].seen_at if m in account.cursors else None)
                for m in self.catalog.accounts[account.id].meter_ids]
        self.commands += made
        return made

    # --- flush --------------------------------------------------------------------------------------------
    def prepare(self, dialect: str) -> None:
        """Turn the batch's changes into prepared statements: pure Python, done before taking the write lock."""
        entries: list[dict[str, Any]] = []
        changed = []
        for account in self.accounts.values():
            if account.id not in self.changed:  # read, but no job changed it (a refusal, a repeated payment)
                if self.cache is not None and account.id in self.cache.entries:
                    self.cache.entries[account.id] = (self.versions[account.id], account)  # as stored
                continue
            changed.append(account)
            rows, events = repo.drain(account, self.now)
            entries += rows
            self.outbox += events
        out = self.statements
        out += bulk.insert_statements(dialect, t.ledger, entries)
        out += bulk.insert_statements(dialect, t.payments, self.new_payments)
        for record in self.reversed:
            if record not in self.new_payments:
                out.append(bulk.Statement(sa.update(t.payments).where(
                    t.payments.c.source == record["source"], t.payments.c.payment_id == record["payment_id"])
                    .values(reversed_at=record["reversed_at"], reversal_reason=record["reversal_reason"],
                            reversed_by=record["reversed_by"]), []))
        out += bulk.insert_statements(dialect, t.readings, self.readings)
        out += bulk.update_statements(dialect, t.meters, "id", [meter.changed | {"id": meter_id}
                                                               for meter_id, meter in self.meters.items()
                                                               if meter.changed])
        out += repo.account_statements(dialect, changed, self.now, self.versions if self.cache is not None else None)
        self.limiter_changed = False
        if self.limiter is not None:
            state = self.limiter.state_dict()
            if state != self._limiter_state:
                self.limiter_changed = True
                if self._limiter_state is None:
                    out.append(bulk.Statement(sa.insert(t.site_state).values(name=LIMITER, state=state), []))
                else:
                    out.append(bulk.Statement(sa.update(t.site_state).where(t.site_state.c.name == LIMITER)
                                              .values(state=state), []))
        out += bulk.insert_statements(dialect, t.outbox, self.outbox)
        out += bulk.insert_statements(dialect, t.audit_log, self.audits)

    async def write(self, uow: UnitOfWork) -> None:
        """Write the prepared statements (and the new relay commands) in the unit of work's transaction."""
        if self.limiter_changed and uow.conn.dialect.name != "sqlite":
            # Another instance may have counted a trip since this batch read the limiter: lock the row now
            # (until the commit) and do the batch again from fresh rows if it changed. Batches that count no trip
            # never lock it, so payments and readings of several instances go on side by side.
            row = (await uow.execute(sa.select(t.site_state.c.state).where(t.site_state.c.name == LIMITER)
                                     .with_for_update())).one_or_none()
            if (None if row is None else row.state) != self._limiter_state:
                raise bulk.StaleWrite("the rate limiter changed since it was read")
        for record in self.commands:
            await store_command(uow, record)
        await uow.run(self.statements)


def _payment_record(row: Any) -> dict[str, Any]:
    return {k: getattr(row, k) for k in ("source", "payment_id", "account_id", "amount_fen", "paid_at", "channel",
                                         "balance_after_fen", "received_at", "reversed_at", "reversal_reason",
                                         "recorded_by", "reversed_by")}


REFUSALS = (PaymentConflict, UnknownPayment, UnknownAccount, UnknownMeter, AccountUnreadable, DomainError)


class Writer:
    """The single writer of account changes; batches jobs into group commits.

    Args:
        uow: the unit-of-work factory.
        catalog: the site's static catalog.
        clock: returns aware UTC now.
        on_commands: called with the relay commands a batch created, after its commit.
        max_batch: the most jobs one transaction takes.
    """

    def __init__(self, uow: UnitOfWorkFactory, catalog: Catalog, clock: Callable[[], dt.datetime], *,
                 on_commands: Callable[[list[CommandRecord]], None], max_batch: int = 512,
                 max_readings: int = 256) -> None:
        self.uow, self.catalog, self.clock = uow, catalog, clock
        self._dialect = uow.engine.dialect.name
        self.on_commands = on_commands
        self.max_batch = max_batch
        # Readings per batch: a batch holds SQLite's write lock while its statements run and commit, and a
        # relay command's short transaction waits for at most that.
        self.max_readings = max_readings
        # Payments and operator changes go ahead of readings, so a reading backlog never delays a reconnect.
        self._urgent: list[tuple[Job, asyncio.Future[Any]]] = []
        self._queue: list[tuple[Job, asyncio.Future[Any]]] = []
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.items = 0
        self.cache = repo.AccountCache()
        # Unchanged readings (see ``absorb``): the last stored reading of each meter (time, relay), how often an
        # unchanged one is stored anyway, and the newest one absorbed (shown by the API as the latest reading).
        self.history = dt.timedelta(seconds=catalog.reading_history_s)
        self._stored: dict[str, tuple[dt.datetime, RelayState | None]] = {}
        self.absorbed: dict[str, Reading] = {}
        self.absorbed_count = 0
        self._deferred: dict[str, Reading] = {}  # the newest absorbed reading whose energy is not billed yet
        self._known = _Known()
        self._flying = 0  # jobs of the batch in flight (SQLite's pipeline)
        self.alarmed: set[str] = set()  # accounts whose unreadable state has had its alarm

    def absorb(self, reading: Reading) -> bool:
        """Take a reading that changes nothing durable in memory, with no transaction; False when it must be
        submitted.

        That is a reading of a meter whose previous reading is committed, read within ``reading_history_s`` of
        the last one stored, with the same relay state, and that the account takes without any change but the
        meter's freshness (``PrepaidAccount.absorb_reading`` with ``defer``: same billing period, nothing to
        decide, and either the same energy or more energy whose charge crosses no threshold of a tariff without
        time-of-use rates). The caller makes sure no other reading of the meter is in flight and that the meter
        was online. It is not stored as a row. The newest absorbed reading with unbilled energy is billed (and
        stored) just before the meter's next submitted reading, which comes at the latest ``reading_history_s``
        after the last stored one, or when the writer stops: energy waits at most that long to be billed.
        """
        stored = self._stored.get(reading.meter_id)
        if stored is None or reading.relay is not stored[1] or reading.taken_at - stored[0] >= self.history:
            return False
        hit = self.cache.entries.get(self.catalog.meters[reading.meter_id].account_id)
        if hit is None:
            return False
        cursor = hit[1].cursors.get(reading.meter_id)
        if cursor is None or not hit[1].absorb_reading(reading.meter_id, reading.energy_wh, reading.taken_at,
                                                       reading.energy_wh_by_rate, defer=True):
            return False
        if cursor.energy_wh != reading.energy_wh:
            self._deferred[reading.meter_id] = reading  # its energy is billed later, this reading first
        self.absorbed[reading.meter_id] = reading
        self.absorbed_count += 1
        return True

    def unbilled(self, meter_id: str) -> Reading | None:
        """The meter's newest absorbed reading whose energy is not billed yet (see ``absorb``)."""
        return self._deferred.get(meter_id)

    def _forget(self) -> None:
        """After a failed transaction: in-memory accounts may hold changes that were rolled back."""
        self.cache.clear()
        self._stored.clear()
        self._known = _Known()

    def forget_meter(self, meter_id: str) -> None:
        """The meter's row was written outside the writer (a failed poll, a confirmed relay): read it again."""
        self._known.meters.pop(meter_id, None)
        self._stored.pop(meter_id, None)

    def submit(self, job: Job) -> Awaitable[Any]:
        """Queue a job; the returned future resolves to its result after the commit of its batch.

        The job is queued at once (before the caller awaits), so jobs keep the order they were submitted in.
        """
        loop = asyncio.get_running_loop()
        if self._deferred and type(job) is ReadingJob:
            held = self._deferred.pop(job.reading.meter_id, None)
            if held is not None and held.taken_at < job.reading.taken_at:
                self._hold_over(held, loop)  # billed first, at its own time
        future: asyncio.Future[Any] = loop.create_future()
        self._enqueue(self._queue if isinstance(job, ReadingJob) else self._urgent, job, future)
        return future

    def _hold_over(self, reading: Reading, loop: asyncio.AbstractEventLoop) -> None:
        """Queue a deferred reading (see ``absorb``); nobody waits for its result."""
        future: asyncio.Future[Any] = loop.create_future()
        future.add_done_callback(_no_result)
        self._enqueue(self._queue, ReadingJob(reading), future)

    def _enqueue(self, queue: list[tuple[Job, asyncio.Future[Any]]], job: Job, future: asyncio.Future[Any]) -> None:
        queue.append((job, future))
        self._ready.set()
        if self._task is None:
            self.start()

    @property
    def backlog(self) -> int:
        return len(self._queue) + len(self._urgent) + self._flying

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="gateway.writer")

    async def aclose(self) -> None:
        """Finish what is queued (deferred readings included), then stop."""
        if self._deferred:
            loop = asyncio.get_running_loop()
            for reading in self._deferred.values():
                self._hold_over(reading, loop)
            self._deferred.clear()
        while self.backlog and self._task is not None and not self._task.done():
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for _, future in self._urgent + self._queue:
            if not future.done():
                future.set_exception(GatewayStopping("the gateway is stopping"))
        self._urgent.clear()
        self._queue.clear()
        await self.uow.aclose()  # the connection its commits kept (UnitOfWorkFactory.commit_statements)

    def _take(self) -> list[tuple[Job, asyncio.Future[Any]]]:
        batch, self._urgent = self._urgent[: self.max_batch], self._urgent[self.max_batch:]
        room = min(self.max_batch - len(batch), self.max_readings)
        batch, self._queue = batch + self._queue[:room], self._queue[room:]
        if not self._queue and not self._urgent:
            self._ready.clear()
        return batch

    async def _run(self) -> None:
        # On SQLite, batches are pipelined: the next batch is read, applied and prepared while the previous one's
        # statements and commit run in the database thread. It builds on the previous batch's changes in memory
        # (cached accounts, meters, rate limiter, payments); if that batch fails, the next one is dropped and
        # done again from the database after the failed one's jobs were retried one by one.
        pipelined = self._dialect == "sqlite"
        flight: _Flight | None = None
        try:
            while True:
                if not self._queue and not self._urgent:
                    if flight is not None:
                        await self._land(flight)
                        flight = None
                        continue
                    await self._ready.wait()
                items = self._take()
                if not items:
                    continue
                if not pipelined:
                    await self._commit_or_retry(items)
                    continue
                prepared: tuple[_Batch, list[tuple[asyncio.Future[Any], bool, Any]]] | None
                try:
                    prepared = await self._prepare(items, after=flight.batch if flight is not None else None)
                except Exception:  # noqa: BLE001 - done again below, once the batch in flight has landed
                    prepared = None
                if flight is not None:
                    landed = await self._land(flight)
                    flight = None
                    if not landed:
                        prepared = None  # it was built on changes that were rolled back
                if prepared is None:
                    self._forget()
                    await self._commit_or_retry(items)
                else:
                    self._flying = len(items)
                    flight = _Flight(asyncio.ensure_future(self._write(*prepared, items)), prepared[0], items)
        except asyncio.CancelledError:
            if flight is not None:  # stopping with a batch in flight: its callers must not hang
                flight.task.cancel()
                for _, future in flight.items:
                    _fail(future, GatewayStopping("the gateway is stopping"))
            raise

    async def _land(self, flight: _Flight) -> bool:
        """Wait for the batch in flight; False if it failed (its jobs are then retried one by one)."""
        try:
            await flight.task
            return True
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - handled like a failed batch
            await self._retry(flight.items, exc)
            return False
        finally:
            self._flying = 0

    async def _commit_or_retry(self, batch: list[tuple[Job, asyncio.Future[Any]]]) -> None:
        try:
            await self._commit(batch)
        except asyncio.CancelledError:  # stopping in the middle of a batch: its callers must not hang
            for _, future in batch:
                _fail(future, GatewayStopping("the gateway is stopping"))
            raise
        except Exception as exc:  # noqa: BLE001 - a database error: retried one by one
            await self._retry(batch, exc)

    async def _retry(self, batch: list[tuple[Job, asyncio.Future[Any]]], exc: Exception) -> None:
        """A batch failed: retry its jobs one by one so that one bad job can't sink the rest."""
        self._forget()
        if len(batch) == 1 and not isinstance(exc, bulk.StaleWrite):  # stale: done again from the row
            _fail(batch[0][1], exc)
            return
        log.warning("a batch of %d failed (%s); retrying its jobs one by one", len(batch), exc)
        for item in batch:
            try:
                await self._commit([item])
            except asyncio.CancelledError:
                _fail(item[1], GatewayStopping("the gateway is stopping"))
                raise
            except Exception as one:  # noqa: BLE001 - the job's own failure is its answer
                self._forget()
                _fail(item[1], one)

    @staticmethod
    def _has_urgent(items: list[tuple[Job, asyncio.Future[Any]]]) -> bool:
        return any(not isinstance(job, ReadingJob) for job, _ in items)

    async def _commit(self, items: list[tuple[Job, asyncio.Future[Any]]]) -> None:
        if self._dialect == "sqlite":
            await self._write(*await self._prepare(items), items)
            return
        # PostgreSQL: the accounts are read row-locked (FOR UPDATE) in the transaction that writes them.
        batch = _Batch(self.catalog, self.clock(), self.cache)
        async with self.uow(background=not self._has_urgent(items)) as uow:
            async def reader() -> UnitOfWork:
                return uow

            await batch.load(reader, [job for job, _ in items])
            batch.alarm_unreadable(self.alarmed)
            results = await self._apply(batch, items)
            batch.prepare(self._dialect)
            await batch.write(uow)
            await uow.commit()
        self._done(batch, items, results)

    async def _prepare(self, items: list[tuple[Job, asyncio.Future[Any]]], *, after: _Batch | None = None
                       ) -> tuple[_Batch, list[tuple[asyncio.Future[Any], bool, Any]]]:
        """SQLite: read and apply the jobs and prepare the statements, outside the write lock (a short
        transaction, a relay command, then waits for at most one flush, not for a whole batch's work).
        ``after``: the batch in flight, whose changes this one builds on. Accounts changed meanwhile by another
        writer fail the batch (StaleWrite) instead of being lost."""
        batch = _Batch(self.catalog, self.clock(), self.cache, trust_cache=True)
        async with contextlib.AsyncExitStack() as stack:
            opened: list[UnitOfWork] = []

            async def reader() -> UnitOfWork:  # opened only if something is not known already
                if not opened:
                    opened.append(await stack.enter_async_context(self.uow(readonly=True)))
                return opened[0]

            await batch.load(reader, [job for job, _ in items], self._known,
                             in_flight=after.payments if after is not None else None)
        batch.alarm_unreadable(self.alarmed)
        results = await self._apply(batch, items, pause_every=32)
        batch.prepare("sqlite")
        batch.remember(self._known)  # what the next batch builds on (forgotten if this one fails)
        return batch, results

    async def _write(self, batch: _Batch, results: list[tuple[asyncio.Future[Any], bool, Any]],
                     items: list[tuple[Job, asyncio.Future[Any]]]) -> None:
        background = not self._has_urgent(items)
        # SQLite: statements and commit in one hand-over to the database thread. A batch that makes relay
        # commands (which read before they write) goes through a unit of work.
        if batch.commands or not await self.uow.commit_statements(batch.statements, background=background):
            async with self.uow(background=background) as uow:
                await batch.write(uow)
                await uow.commit()
        self._done(batch, items, results)

    def _done(self, batch: _Batch, items: list[tuple[Job, asyncio.Future[Any]]],
              results: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
        """After the commit: answer the callers, hand over the relay commands."""
        self.batches += 1
        self.items += len(items)
        self.alarmed.update(batch.alarms)
        for reading in batch.stored:
            self._stored[reading.meter_id] = (reading.taken_at, reading.relay)
        for future, ok, value in results:
            if not future.done():
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)
        if batch.commands:
            self.on_commands(batch.commands)

    @staticmethod
    async def _apply(batch: _Batch, items: list[tuple[Job, asyncio.Future[Any]]], *, pause_every: int = 0
                     ) -> list[tuple[asyncio.Future[Any], bool, Any]]:
        """Apply the jobs in memory; with ``pause_every``, let the event loop run between groups of that many
        (on SQLite, where no lock is held meanwhile: a relay command must not wait for a whole batch's work)."""
        results: list[tuple[asyncio.Future[Any], bool, Any]] = []
        for n, (job, future) in enumerate(items):
            if pause_every and n and not n % pause_every:
                await asyncio.sleep(0)
            try:
                results.append((future, True, batch.run(job)))
            except REFUSALS as exc:
                results.append((future, False, exc))
        return results


def _no_result(future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.warning("a deferred reading could not be recorded: %r", future.exception())


def _fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
