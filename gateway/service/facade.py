"""The use cases: payments and reversals, readings, operator actions on accounts, relay commands.

Everything that changes an account goes through the group-commit ``Writer``; each call returns after the
commit. The relay commands a change creates are announced on the message bus after their commit
(``CommandQueued``: the handlers ``bootstrap`` registers wake the command's bus).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from drivers.base import Reading
from gateway.domain.account import PrepaidAccount
from gateway.domain.messages import CommandQueued, DisconnectWithdrawn
from gateway.service.catalog import Catalog
from gateway.service.commands import CommandRecord, new_command
from gateway.service.errors import (
    DuplicateRow,
    NoticeNotRetryable,
    PaymentConflict,
    UnknownAccount,
    UnknownMeter,
    UnknownNotice,
    UnknownPayment,
)
from gateway.service.jobs import AccountJob, PaymentJob, PaymentResult, ReadingJob, ReversalJob
from gateway.service.messagebus import MessageBus
from gateway.service.ports import Storage
from gateway.service.views import ReadStore, Views
from gateway.service.writer import Writer

__all__ = ["PaymentConflict", "PaymentResult", "Service", "UnknownPayment"]

log = logging.getLogger(__name__)


class Service:
    """The gateway's use cases over one database."""

    def __init__(self, storage: Storage, catalog: Catalog, clock: Callable[[], dt.datetime] | None = None, *,
                 reads: ReadStore, bus: MessageBus | None = None) -> None:
        self.uow = storage
        self.catalog = catalog
        self.clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self.bus = bus or MessageBus()  # the reactions to what the service does (handlers: see bootstrap)
        self.writer = Writer(storage, catalog, self.clock, on_commands=self._announce,
                             stored_payments=reads.stored_payments)
        self.views = Views(reads, catalog, self.writer.freshness.latest)  # what the API shows
        # what bootstrap adds for the API (None: that part of the API is not there)
        self.lifecycle: Any = None  # the fleet's changes (gateway.service.lifecycle)
        self.lists: Any = None  # lists and the audit log (gateway.service.lists)
        self.reports: Any = None  # the daily reports (gateway.service.reports)
        self.alarms: Any = None  # alarms: listed, acknowledged, resolved (gateway.service.alarm_desk.AlarmDesk)
        self.dashboard: Any = None  # what the dashboard's pages show (gateway.service.dashboard.Dashboard)

    # --- payments -----------------------------------------------------------------------------------------
    async def record_payment(self, *, source: str, payment_id: str, account_id: str, amount_fen: int,
                             paid_at: dt.datetime | None = None, channel: str | None = None,
                             recorded_by: str | None = None) -> PaymentResult:
        """Credit a payment exactly once; a repeat returns the first result. Returns only after the commit."""
        job = PaymentJob(source, payment_id, account_id, amount_fen, paid_at, channel, recorded_by)
        return await self._retrying(job)  # type: ignore[no-any-return]

    async def reverse_payment(self, *, source: str, payment_id: str, reason: str = "",
                              reversed_by: str | None = None) -> PaymentResult:
        """Remove a payment's credit, once; reversing again returns the first result."""
        job = ReversalJob(source, payment_id, reason, reversed_by)
        return await self._retrying(job)  # type: ignore[no-any-return]

    async def _retrying(self, job: PaymentJob | ReversalJob) -> Any:
        for _ in range(3):
            try:
                return await self.writer.submit(job)
            except DuplicateRow:
                continue  # another instance recorded the same payment id first: look again
        raise RuntimeError("could not record after 3 attempts (concurrent writers)")

    async def stored_keys(self) -> list[tuple[str, str, str, list[str] | None]]:
        """The API keys kept in the database: (sha256, name, role, sources)."""
        async with self.uow(readonly=True) as uow:
            return await uow.api_keys()

    # --- readings -----------------------------------------------------------------------------------------
    async def record_reading(self, reading: Reading) -> list[CommandRecord]:
        """Store a reading, bill it, and decide about the supply. Returns the relay commands it created."""
        commands: list[CommandRecord] = await self.submit_reading(reading)
        return commands

    def submit_reading(self, reading: Reading) -> Awaitable[list[CommandRecord]]:
        """``record_reading`` as the future of the writer's job (queued at once, no task per reading)."""
        return self.writer.submit(ReadingJob(reading))

    def redecide(self, message: DisconnectWithdrawn) -> None:
        """An automatic trip was withdrawn (the meter stopped answering after the decision): the account wants
        its supply again, and the engine decides again on the meter's next reading (guardrails included)."""
        def withdraw(account: PrepaidAccount, now: dt.datetime) -> None:
            account.withdraw_disconnect(message.meter_id, message.reason)

        job = AccountJob(message.account_id, withdraw, origin="automatic", reason="balance",
                         audit=("gateway", "account.disconnect_withdrawn", {"meter_id": message.meter_id,
                                                                           "command_id": message.command_id,
                                                                           "reason": message.reason}),
                         not_answering=(message.meter_id,))
        self.writer.submit(job).add_done_callback(_log_failure)  # type: ignore[attr-defined]

    async def record_failure(self, meter_id: str, error: str, *, offline_after: int = 3) -> None:
        """Note a failed poll: consecutive failures, health degraded, then offline."""
        async with self.uow() as uow:
            before, health = await uow.meters.failed(meter_id, error, offline_after=offline_after)
            if health != before:
                now = self.clock()
                await uow.add_outbox(f"meters/{meter_id}/state", {"type": "MeterHealth", "meter_id": meter_id,
                                                                  "health": health, "error": error,
                                                                  "at": now}, now)
            await uow.commit()
        self.writer.forget_meter(meter_id)

    # --- operator actions on accounts ---------------------------------------------------------------------
    async def change_account(self, account_id: str, apply: Callable[[PrepaidAccount, dt.datetime], Any], *,
                             actor: str, action: str, detail: dict[str, Any] | None = None) -> Any:
        """Apply an operator's change to an account (through the writer), audited; returns ``apply``'s result."""
        if account_id not in self.catalog.accounts:
            raise UnknownAccount(f"no account {account_id!r}")
        return await self.writer.submit(AccountJob(account_id, apply, reason=action, audit=(actor, action, detail)))

    async def final_warning_delivered(self, account_id: str, issued_at: dt.datetime, delivered_at: dt.datetime,
                                      to: str) -> bool:
        """The account's final warning (issued ``issued_at``) reached ``to``: with the site's notice delivery on,
        its notice period starts ``delivered_at``. Returns whether it counted (the current warning, once)."""
        if account_id not in self.catalog.accounts:
            return False

        def apply(account: PrepaidAccount, now: dt.datetime) -> bool:
            return account.final_warning_delivered(issued_at, delivered_at, to)

        detail = {"issued_at": issued_at.isoformat(), "delivered_at": delivered_at.isoformat(), "to": to}
        counted: bool = await self.writer.submit(AccountJob(account_id, apply, origin="automatic", reason="balance",
                                                            audit=("gateway", "notice.final_warning_delivered",
                                                                   detail)))
        return counted

    def decide_again(self, account_id: str, reason: str = "balance") -> Awaitable[Any]:
        """Queue the engine's decision for an account nothing changed but the time or its configuration; the
        future resolves after the commit."""
        return self.writer.submit(AccountJob(account_id, _unchanged, origin="automatic", reason=reason))

    async def evaluate_accounts(self) -> None:
        """Re-run the engine's decision for accounts whose deferred disconnect may go ahead now.

        Only refusals with a known end (friendly window, notice period, hold, rate limit) are re-checked here,
        once that end has passed; the others end with an event that re-evaluates the account anyway (a fresh
        reading, an operator's change).
        """
        async with self.uow(readonly=True) as uow:
            ids = await uow.accounts.deferral_ended(self.clock())
        ids = [i for i in ids if i in self.catalog.accounts]
        jobs = [self.decide_again(i) for i in ids]
        for account_id, outcome in zip(ids, await asyncio.gather(*jobs, return_exceptions=True), strict=True):
            if isinstance(outcome, Exception):  # e.g. an account whose state can't be read: the others go on
                log.warning("account %s: could not re-evaluate: %s", account_id, outcome)

    # --- notices ------------------------------------------------------------------------------------------
    async def retry_notice(self, notice_id: int, *, actor: str) -> None:
        """Put a failed notice (a dead letter) back in the queue: tried again soon, with all its attempts."""
        now = self.clock()
        async with self.uow() as uow:
            notice = await uow.notices.get(notice_id)
            if notice is None:
                raise UnknownNotice(f"no notice {notice_id}")
            if notice.state != "failed":
                raise NoticeNotRetryable(f"notice {notice_id} is {notice.state}; only a failed notice is tried again")
            await uow.notices.finish(notice_id, dict(state="pending", attempts=0, next_attempt_at=None,
                                                     updated_at=now))
            await uow.audit(actor, "notice.retry", notice.account_id, {"notice_id": notice_id, "kind": notice.kind,
                                                                       "attempts_before": notice.attempts}, now)
            await uow.commit()

    # --- relay commands -----------------------------------------------------------------------------------
    async def request_command(self, *, meter_id: str, action: str, origin: str, operator: str | None,
                              reason: str | None, actor: str) -> CommandRecord:
        """Queue an operator's disconnect or reconnect for one meter."""
        if meter_id not in self.catalog.meters:
            raise UnknownMeter(f"no meter {meter_id!r}")
        now = self.clock()
        record = new_command(meter_id=meter_id, action=action, origin=origin, now=now,
                             expires_at=now + dt.timedelta(seconds=self.catalog.command_expiry_s),
                             operator=operator, reason=reason)
        async with self.uow() as uow:
            await uow.commands.add(record, audit=dict(at=now, actor=actor, action=f"command.{action}",
                                                        target=meter_id,
                                                        detail={"command_id": record.id, "reason": reason}))
            await uow.commit()
            self._announce([record])  # durable: wake its bus now, before the connection's cleanup
        return record

    def _announce(self, records: list[CommandRecord]) -> None:
        for record in records:
            self.bus.publish(CommandQueued(record.model()))


def _unchanged(account: PrepaidAccount, now: dt.datetime) -> None:
    return None


def _log_failure(future: Any) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.warning("could not withdraw a disconnect: %r", future.exception())
