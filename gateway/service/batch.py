"""One writer batch in memory: what its jobs need is read (``load``), each job is applied to in-memory accounts
in arrival order (``run``), and what to write comes out at the end (``changes``).

A business refusal (unknown account, payment conflict, a domain error) is that job's result and does not disturb
the others: a refused change leaves its account as it was.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from drivers.base import Reading
from gateway.domain.account import Decision, PrepaidAccount
from gateway.domain.errors import DomainError
from gateway.domain.policy import RateLimiter
from gateway.service.account_cache import AccountCache, drain, load_accounts
from gateway.service.catalog import Catalog
from gateway.service.commands import CommandRecord, new_command
from gateway.service.errors import AccountUnreadable, PaymentConflict, UnknownAccount, UnknownMeter, UnknownPayment
from gateway.service.jobs import AccountJob, Job, PaymentJob, PaymentResult, ReadingJob, ReversalJob
from gateway.service.ports import BatchChanges, MeterState, PaymentKey, UnitOfWork
from gateway.service.tamper import TAMPER_TOPIC, tamper_change, tamper_event

__all__ = ["REFUSALS", "Batch", "Known"]

_UNKNOWN: Any = object()


@dataclass(slots=True)
class Known:
    """What the writer's last commits left in the meters table and the rate limiter's row, when the writer is
    the database's only writer (``Storage.exclusive``) and keeps them between batches; dropped after a failed
    transaction. A meter's row written elsewhere (a failed poll, a confirmed relay) drops that meter."""

    meters: dict[str, tuple[str, str | None, int]] = field(default_factory=dict)  # health, relay, failures
    limiter: Any = _UNKNOWN  # the state dict, None when there is no row yet, _UNKNOWN when not known


class Batch:
    """The in-memory picture of one writer batch: accounts, meters, and what to write at the end.

    ``load`` reads what the jobs need, ``run`` applies each job in memory, ``changes`` gives what to write (no
    I/O); the storage writes it (``Storage.commit_batch``).
    """

    def __init__(self, catalog: Catalog, now: dt.datetime, cache: AccountCache | None = None, *,
                 trust_cache: bool = False, tamper_seen: Mapping[str, tuple[str, ...]] | None = None) -> None:
        self.catalog, self.now, self.cache, self.trust_cache = catalog, now, cache, trust_cache
        # the meters' tamper flags as committed (and as the batch in flight leaves them), and this batch's changes
        self.tamper_seen: Mapping[str, tuple[str, ...]] = {} if tamper_seen is None else tamper_seen
        self.tamper: dict[str, tuple[str, ...]] = {}
        self.accounts: dict[str, PrepaidAccount] = {}
        self.versions: dict[str, int] = {}  # of the accounts, as read
        self.meters: dict[str, MeterState] = {}
        self.offline: set[str] = set()  # meters reported offline (and not read since)
        self.payments: dict[PaymentKey, dict[str, Any]] = {}
        self.new_payments: list[dict[str, Any]] = []
        self.reversed: list[dict[str, Any]] = []
        self.readings: list[dict[str, Any]] = []
        self.stored: list[Reading] = []  # the readings written, in order
        self.outbox: list[dict[str, Any]] = []
        self.commands: list[CommandRecord] = []
        self.audits: list[dict[str, Any]] = []
        self.limiter: RateLimiter | None = None
        self._limiter_state: dict[str, Any] | None = None
        self.unreadable: dict[str, AccountUnreadable] = {}  # accounts whose stored state can't be read
        self.alarms: list[str] = []  # of those, the ones this batch raises an alarm for
        self.changed: set[str] = set()  # accounts a job changed: only these are written

    async def load(self, reader: Callable[[], Awaitable[UnitOfWork]], jobs: list[Job],
                   known: Known | None = None, *,
                   in_flight: dict[PaymentKey, dict[str, Any]] | None = None, lock: bool = False,
                   stored_payments: Callable[[set[PaymentKey]], dict[PaymentKey, Any] | None] | None = None
                   ) -> None:
        """Read what the jobs need; ``reader()`` opens the unit of work to read with, only if something must be
        read. ``known``: meters and the rate limiter as the writer's last batch left them (SQLite only).
        ``in_flight``: payments of the batch being committed (not readable yet). ``stored_payments``: reads the
        stored payments at once when it can (``ReadStore.stored_payments``; None: it can't)."""
        payment_keys = {(j.source, j.payment_id) for j in jobs if isinstance(j, PaymentJob | ReversalJob)}
        if payment_keys:
            found = None if stored_payments is None else stored_payments(payment_keys)
            self.payments = found if found is not None else await (await reader()).payments.get(payment_keys)
            for key in payment_keys & (in_flight or {}).keys():
                self.payments.setdefault(key, dict(in_flight[key]))  # type: ignore[index]
        account_ids: set[str] = set()
        vacant: set[str] = set()  # meters of closed accounts: their readings are stored, not billed
        for job in jobs:
            if isinstance(job, PaymentJob | AccountJob):
                account_ids.add(job.account_id)
            elif isinstance(job, ReversalJob):
                record = self.payments.get((job.source, job.payment_id))
                if record is not None:
                    account_ids.add(record["account_id"])
            elif isinstance(job, ReadingJob):
                spec = self.catalog.meters.get(job.reading.meter_id)
                if spec is not None and self.catalog.accounts[spec.account_id].closed:
                    vacant.add(spec.id)
                elif spec is not None:
                    account_ids.add(spec.account_id)
        if lock:  # read under row locks, in the transaction that writes (see Writer._commit_locked)
            await (await reader()).accounts.lock(sorted(account_ids & set(self.catalog.accounts)))
        self.accounts = await load_accounts(reader, self.catalog, sorted(account_ids), cache=self.cache,
                                                 versions=self.versions, trust_cache=self.trust_cache,
                                                 unreadable=self.unreadable)
        meter_ids = sorted({m for a in self.accounts for m in self.catalog.accounts[a].meter_ids} | vacant)
        missing = meter_ids
        if known is not None:
            missing = []
            for meter_id in meter_ids:
                state = known.meters.get(meter_id)
                if state is None:
                    missing.append(meter_id)
                else:
                    self.meters[meter_id] = MeterState(*state)
        if missing:
            self.meters.update(await (await reader()).meters.states(missing))
        # meters offline or whose last poll failed: no automatic disconnect may rest on them
        self.offline = {meter_id for meter_id, meter in self.meters.items()
                        if meter.health == "offline" or meter.failures}
        if known is not None and known.limiter is not _UNKNOWN:
            self._limiter_state = known.limiter
        else:
            # Read without a lock: only a batch that counts a trip locks the row, when it writes.
            self._limiter_state = await (await reader()).limiter()
        self.limiter = self.catalog.site.limiter(self._limiter_state)

    def alarm_unreadable(self, alarmed: set[str]) -> None:
        """An alarm, written with the batch, for each account whose state can't be read and that has not had one
        since the gateway started (``Writer._done`` adds them to ``alarmed``)."""
        for account_id, error in self.unreadable.items():
            if account_id not in alarmed:
                self.alarms.append(account_id)
                self._outbox("alarms", {"type": "AccountUnreadable", "account_id": account_id,
                                        "error": error.reason})

    def remember(self, known: Known) -> None:
        """Once prepared: the meters' and the rate limiter's state as this batch writes them, for the next batch
        (the writer drops it if the batch fails)."""
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
        account = None if self.catalog.accounts[spec.account_id].closed else self._account(spec.account_id)
        late = quarantined = False
        if account is not None:
            cursor = account.cursors.get(reading.meter_id)
            # a reading that arrives after a newer one: stored as it was taken, billing nothing, changing no relay
            late = cursor is not None and cursor.taken_at is not None and reading.taken_at <= cursor.taken_at
            account.apply_reading(reading.meter_id, reading.energy_wh, reading.taken_at,
                                  rates_wh=reading.energy_wh_by_rate)
            quarantined = account.cursors[reading.meter_id].pending is not None
        relay = reading.relay.value if reading.relay is not None else None
        self.stored.append(reading)
        self.readings.append(dict(meter_id=reading.meter_id, taken_at=reading.taken_at, energy_wh=reading.energy_wh,
                                  power_w=reading.power_w, voltage_v=reading.voltage_v,
                                  current_a=reading.current_a, relay=relay,
                                  billed=account is not None and not quarantined and not late))
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
        if relay is not None and relay != meter.relay and not late:
            meter.relay = relay
            meter.changed.update(relay=relay, last_success_at=reading.taken_at)
        if reading.extra and (flags := reading.extra.get("tamper")) is not None and not late:
            self._tamper(reading, spec.account_id, flags)
        if account is None:  # a meter of a closed account (until a move-in): nothing to bill or decide
            return []
        return self._decide(account, origin="automatic", reason="balance")

    def _tamper(self, reading: Reading, account_id: str, flags: tuple[str, ...]) -> None:
        """A MeterTamper event when the meter's tamper flags changed (``gateway.service.tamper``)."""
        meter_id = reading.meter_id
        known = self.tamper.get(meter_id)
        if known is None:
            known = self.tamper_seen.get(meter_id)
        flags = tuple(flags)
        if flags == known:
            return
        self.tamper[meter_id] = flags
        if tamper_change(known, flags):
            self._outbox(TAMPER_TOPIC, tamper_event(meter_id, account_id, flags, reading.taken_at))

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

    # --- what to write ------------------------------------------------------------------------------------
    def changes(self, row: Callable[[PrepaidAccount, dt.datetime], dict[str, Any]]) -> BatchChanges:
        """What the batch writes: the accounts a job changed (with their versions as read), their ledger entries
        and events, and the other rows its jobs made; ``row`` makes an account's row (``Storage.account_row``).
        Pure Python, done before taking any lock."""
        out = BatchChanges(self.now, payments=self.new_payments, readings=self.readings, audits=self.audits,
                           commands=self.commands)
        for account in self.accounts.values():
            if account.id not in self.changed:  # read, but no job changed it (a refusal, a repeated payment)
                if self.cache is not None and account.id in self.cache.entries:
                    self.cache.entries[account.id] = (self.versions[account.id], account)  # as stored
                continue
            out.accounts.append((account.id, self.versions[account.id], row(account, self.now)))
            entries, events = drain(account, self.now)
            out.ledger += entries
            self.outbox += events
        out.reversals = [record for record in self.reversed if record not in self.new_payments]
        out.meters = {meter_id: meter.changed for meter_id, meter in self.meters.items() if meter.changed}
        if self.limiter is not None:
            state = self.limiter.state_dict()
            if state != self._limiter_state:  # this batch counted an automatic disconnect
                out.limiter = (self._limiter_state, state)
        out.outbox = self.outbox
        return out


REFUSALS = (PaymentConflict, UnknownPayment, UnknownAccount, UnknownMeter, AccountUnreadable, DomainError)
