"""Group commit: payments and readings are applied in batches, one transaction (one fsync) per batch.

Callers ``await`` their own item; the writer answers only after the batch's commit, so a 2xx on a payment still
means it is durable. Batching is natural: while one batch commits, new items queue up and form the next batch;
an idle gateway commits each item alone with no added delay.

Within a batch every statement is a bulk statement (one SELECT for all accounts, one executemany for all ledger
entries...), so the per-item cost is the domain work in Python. Items are applied in arrival order to in-memory
accounts; a business refusal (unknown account, payment conflict) is that item's result and does not disturb the
others. A database error fails the batch, which is then retried item by item so that one bad item cannot sink
the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from drivers.base import Reading
from gateway.adapters import tables as t
from gateway.domain import events as ev
from gateway.domain.account import Decision, MeterCursor, PrepaidAccount
from gateway.service import accounts as repo
from gateway.service.catalog import Catalog
from gateway.service.commands import CommandRecord, create_command
from gateway.service.uow import UnitOfWork, UnitOfWorkFactory

__all__ = ["PaymentConflict", "PaymentJob", "PaymentResult", "ReadingJob", "Writer"]

log = logging.getLogger(__name__)


class PaymentConflict(Exception):
    """The same (source, payment_id) was already recorded with different content."""


@dataclass(frozen=True, slots=True)
class PaymentResult:
    created: bool  # False when this repeats an already recorded payment
    record: dict[str, Any]


@dataclass(slots=True)
class PaymentJob:
    source: str
    payment_id: str
    account_id: str
    amount_fen: int
    paid_at: dt.datetime | None = None
    channel: str | None = None
    future: asyncio.Future[Any] | None = None


@dataclass(slots=True)
class ReadingJob:
    reading: Reading
    future: asyncio.Future[Any] | None = None


Job = PaymentJob | ReadingJob


@dataclass(slots=True)
class _MeterState:
    cursor: MeterCursor
    health: str
    last_success_at: dt.datetime | None
    changed: dict[str, Any] = field(default_factory=dict)


class _Batch:
    """The in-memory picture of one batch: accounts, meters, and the rows to write at the end."""

    def __init__(self, uow: UnitOfWork, catalog: Catalog, now: dt.datetime) -> None:
        self.uow, self.catalog, self.now = uow, catalog, now
        self.accounts: dict[str, PrepaidAccount] = {}
        self.meters: dict[str, _MeterState] = {}
        self.payments: dict[tuple[str, str], dict[str, Any]] = {}
        self.new_payments: list[dict[str, Any]] = []
        self.entries: list[dict[str, Any]] = []  # ledger rows, in order
        self.readings: list[dict[str, Any]] = []
        self.outbox: list[dict[str, Any]] = []
        self.commands: list[CommandRecord] = []

    async def load(self, jobs: list[Job]) -> None:
        account_ids: set[str] = set()
        meter_ids: set[str] = set()
        payment_keys: set[tuple[str, str]] = set()
        for job in jobs:
            if isinstance(job, PaymentJob):
                account_ids.add(job.account_id)
                payment_keys.add((job.source, job.payment_id))
            else:
                spec = self.catalog.meters.get(job.reading.meter_id)
                if spec is not None:
                    account_ids.add(spec.account_id)
        account_ids &= set(self.catalog.accounts)
        for account_id in account_ids:
            meter_ids.update(self.catalog.accounts[account_id].meter_ids)
        self.accounts = await repo.load_accounts(self.uow, self.catalog, sorted(account_ids))
        if meter_ids:
            rows = await self.uow.execute(sa.select(
                t.meters.c.id, t.meters.c.billed_wh, t.meters.c.billed_at, t.meters.c.health,
                t.meters.c.last_success_at).where(t.meters.c.id.in_(sorted(meter_ids))))
            for row in rows:
                spec = self.catalog.meters.get(row.id)
                if spec is not None:
                    cursor = MeterCursor(row.id, row.billed_wh, row.billed_at, spec.max_power_w)
                    self.meters[row.id] = _MeterState(cursor, row.health, row.last_success_at)
        if payment_keys:
            rows = await self.uow.execute(sa.select(t.payments).where(
                sa.tuple_(t.payments.c.source, t.payments.c.payment_id).in_(sorted(payment_keys))))
            self.payments = {(r.source, r.payment_id): _payment_record(r) for r in rows}

    # --- items --------------------------------------------------------------------------------------------
    async def payment(self, job: PaymentJob) -> PaymentResult:
        key = (job.source, job.payment_id)
        existing = self.payments.get(key)
        if existing is not None:
            if (existing["account_id"], existing["amount_fen"]) != (job.account_id, job.amount_fen):
                raise PaymentConflict(f"payment {job.source}/{job.payment_id} was recorded with other content")
            return PaymentResult(False, existing)
        account = self.accounts.get(job.account_id)
        if account is None:
            raise repo.UnknownAccount(job.account_id)
        account.apply_payment(job.source, job.payment_id, job.amount_fen)
        self._entry(account, "payment", job.amount_fen, reference=payment_reference(job.source, job.payment_id))
        record = dict(source=job.source, payment_id=job.payment_id, account_id=job.account_id,
                      amount_fen=job.amount_fen, paid_at=job.paid_at, channel=job.channel,
                      balance_after_fen=account.balance_fen, received_at=self.now)
        self.payments[key] = record
        self.new_payments.append(record)
        await self._decide(account, origin="billing", reason=f"payment {job.source}/{job.payment_id}")
        return PaymentResult(True, record)

    async def reading(self, job: ReadingJob) -> list[CommandRecord]:
        reading = job.reading
        spec = self.catalog.meters.get(reading.meter_id)
        if spec is None or reading.meter_id not in self.meters:
            raise repo.UnknownMeter(reading.meter_id)
        account = self.accounts[spec.account_id]
        meter = self.meters[reading.meter_id]
        events_before = len(account.events)
        charge = account.apply_reading(meter.cursor, reading.energy_wh, reading.taken_at)
        quarantined = any(isinstance(e, ev.ReadingQuarantined) for e in account.events[events_before:])
        relay = reading.relay.value if reading.relay is not None else None
        self.readings.append(dict(meter_id=reading.meter_id, taken_at=reading.taken_at, energy_wh=reading.energy_wh,
                                  power_w=reading.power_w, voltage_v=reading.voltage_v,
                                  current_a=reading.current_a, relay=relay, billed=not quarantined))
        if meter.health != "online":
            self._outbox(f"meters/{reading.meter_id}/state", {"type": "MeterHealth", "meter_id": reading.meter_id,
                                                               "health": "online", "error": None})
        meter.health, meter.last_success_at = "online", reading.taken_at
        meter.changed.update(last_success_at=reading.taken_at, consecutive_failures=0, health="online",
                             last_error=None, billed_wh=meter.cursor.energy_wh, billed_at=meter.cursor.taken_at)
        if relay is not None:
            meter.changed["relay"] = relay
        if charge:
            self._entry(account, "charge", -charge, reference=reading.meter_id, energy_wh=reading.energy_wh)
        self._outbox(f"meters/{reading.meter_id}/reading", {
            "type": "Reading", "meter_id": reading.meter_id, "taken_at": reading.taken_at.isoformat(),
            "energy_wh": reading.energy_wh, "power_w": reading.power_w, "relay": relay})
        ok, why = (False, "quarantined reading") if quarantined else self._readings_ok(account.id)
        return await self._decide(account, origin="automatic", reason="balance", readings_ok=ok, why_not_ok=why)

    def _entry(self, account: PrepaidAccount, kind: str, amount_fen: int, *, reference: str | None = None,
               energy_wh: int | None = None) -> dict[str, Any]:
        row = dict(account_id=account.id, kind=kind, amount_fen=amount_fen, balance_after_fen=account.balance_fen,
                   created_at=self.now, reference=reference, energy_wh=energy_wh)
        self.entries.append(row)
        return row

    def _outbox(self, topic: str, payload: dict[str, Any]) -> None:
        payload.setdefault("at", self.now.isoformat())
        self.outbox.append(dict(topic=topic, payload=payload, created_at=self.now))

    def _readings_ok(self, account_id: str) -> tuple[bool, str]:
        limit = self.now - dt.timedelta(seconds=self.catalog.stale_after_s)
        for meter_id in self.catalog.accounts[account_id].meter_ids:
            meter = self.meters.get(meter_id)
            if meter is None or meter.last_success_at is None or meter.last_success_at < limit:
                return False, f"meter {meter_id} reading stale"
            if meter.health == "offline":
                return False, f"meter {meter_id} offline"
        return True, ""

    async def _decide(self, account: PrepaidAccount, *, origin: str, reason: str, readings_ok: bool = True,
                      why_not_ok: str = "") -> list[CommandRecord]:
        decision = account.evaluate(self.now, readings_ok=readings_ok, why_not_ok=why_not_ok)
        if decision is Decision.NONE:
            return []
        action = "open" if decision is Decision.DISCONNECT else "close"
        expires = self.now + dt.timedelta(seconds=self.catalog.command_expiry_s)
        made = [await create_command(self.uow, meter_id=m, action=action, origin=origin, now=self.now,
                                     expires_at=expires, reason=reason)
                for m in self.catalog.accounts[account.id].meter_ids]
        self.commands += made
        return made

    # --- flush --------------------------------------------------------------------------------------------
    async def flush(self) -> None:
        uow = self.uow
        if self.entries:
            await uow.execute(sa.insert(t.ledger), self.entries)
        if self.new_payments:
            await uow.execute(sa.insert(t.payments), self.new_payments)
        if self.readings:
            await uow.execute(sa.insert(t.readings), self.readings)
        for meter_id, meter in self.meters.items():
            if meter.changed:
                await uow.execute(sa.update(t.meters).where(t.meters.c.id == meter_id).values(**meter.changed))
        for account in self.accounts.values():
            for event in account.events:
                self.outbox.append(dict(topic=repo.event_topic(event), payload=repo.event_payload(event, self.now),
                                        created_at=self.now))
            account.events.clear()
        await repo.save_accounts(uow, list(self.accounts.values()), self.now)
        if self.outbox:
            await uow.execute(sa.insert(t.outbox), self.outbox)


def _payment_record(row: Any) -> dict[str, Any]:
    return {k: getattr(row, k) for k in ("source", "payment_id", "account_id", "amount_fen", "paid_at", "channel",
                                         "balance_after_fen", "received_at")}


def payment_reference(source: str, payment_id: str) -> str:
    """How a payment's ledger entry refers to it."""
    return f"{source}/{payment_id}"


class Writer:
    """The single writer of payments and readings; batches items into group commits.

    Args:
        uow: the unit-of-work factory.
        catalog: the site's static catalog.
        clock: returns aware UTC now.
        on_commands: called with the relay commands a batch created, after its commit.
        max_batch: the most items one transaction takes.
    """

    def __init__(self, uow: UnitOfWorkFactory, catalog: Catalog, clock: Callable[[], dt.datetime], *,
                 on_commands: Callable[[list[CommandRecord]], None], max_batch: int = 512) -> None:
        self.uow, self.catalog, self.clock = uow, catalog, clock
        self.on_commands = on_commands
        self.max_batch = max_batch
        self._queue: list[Job] = []
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.items = 0

    async def submit(self, job: Job) -> Any:
        """Queue an item and wait for its result (after the commit of its batch)."""
        job.future = asyncio.get_running_loop().create_future()
        self._queue.append(job)
        self._ready.set()
        if self._task is None:
            self.start()
        return await job.future

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="gateway.writer")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for job in self._queue:
            if job.future is not None and not job.future.done():
                job.future.set_exception(RuntimeError("the gateway is stopping"))
        self._queue.clear()

    async def _run(self) -> None:
        while True:
            await self._ready.wait()
            batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch:]
            if not self._queue:
                self._ready.clear()
            if not batch:
                continue
            try:
                await self._commit(batch)
            except Exception as exc:  # a database error: retry one by one so one bad item can't sink the rest
                if len(batch) == 1:
                    _fail(batch[0], exc)
                    continue
                log.warning("a batch of %d failed (%s); retrying its items one by one", len(batch), exc)
                for job in batch:
                    try:
                        await self._commit([job])
                    except Exception as one:  # noqa: BLE001 - the item's own failure is its answer
                        _fail(job, one)

    async def _commit(self, jobs: list[Job]) -> None:
        results: list[tuple[Job, bool, Any]] = []
        async with self.uow() as uow:
            batch = _Batch(uow, self.catalog, self.clock())
            await batch.load(jobs)
            for job in jobs:
                try:
                    value = await (batch.payment(job) if isinstance(job, PaymentJob) else batch.reading(job))
                    results.append((job, True, value))
                except (PaymentConflict, repo.UnknownAccount, repo.UnknownMeter) as exc:
                    results.append((job, False, exc))
            await batch.flush()
            await uow.commit()
        self.batches += 1
        self.items += len(jobs)
        for job, ok, value in results:
            if job.future is not None and not job.future.done():
                if ok:
                    job.future.set_result(value)
                else:
                    job.future.set_exception(value)
        if batch.commands:
            self.on_commands(batch.commands)


def _fail(job: Job, exc: BaseException) -> None:
    if job.future is not None and not job.future.done():
        job.future.set_exception(exc)
