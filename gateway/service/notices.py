"""Notices out: the outbox's events become notices to the accounts' contacts, delivered through a ``Notifier``.

Two loops (``NoticeService.run``):

- **planner**: reads the events it has not looked at yet (the outbox's ``noticed_at``, a destination apart from
  MQTT's), asks the site's ``NoticePolicy`` which notices each makes (low balance, exhausted, disconnected,
  reconnected, payment received, final warning undelivered), and stores them with the events' mark in one
  transaction. A notice's dedup key (event, kind, contact) is unique: an event looked at twice (a crash before the
  mark) makes its notices once. Where ids may commit out of order (PostgreSQL: instances sharing the database),
  the ids it skipped are looked for again for a while (``gateway.service.outbox_cursor``).
- **dispatcher**: takes the notices that are due, one attempt each (claimed first, so two instances never send
  one notice at once; a crash during the attempt leaves it due again after a lease; one recipient's notices in
  the order of their events, different recipients at once), and records the outcome:
  ``delivered``; ``pending`` again after a backoff; ``failed`` (a dead letter, listed in the API) after the last
  attempt or a refusal. Quiet hours hold non-urgent kinds without counting an attempt. Every state change is an
  event (``accounts/{account}/notices``; a dead letter also on ``alarms``).

A delivered final warning (``NoticePolicy``: to the customer, or the staff where the customer has no contact) is
reported to the account (``final_warning_delivered``), through the writer, before the notice is marked delivered:
with ``SitePolicy.notice_delivery`` its notice period starts then.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from gateway.domain.notices import NoticePolicy, PlannedNotice, notice_kind
from gateway.service.catalog import AccountSpec, Catalog
from gateway.service.clock import wait_event
from gateway.service.outbound import DeliveryFailed, Notifier
from gateway.service.outbox_cursor import Cursor
from gateway.service.ports import NoticeRecord, OutboxEvent, Storage, UnitOfWork

__all__ = ["FinalWarningDelivered", "NoticeService"]

log = logging.getLogger(__name__)

# (account id, issued at, delivered at, to whom) -> the account has recorded it
FinalWarningDelivered = Callable[[str, dt.datetime, dt.datetime, str], Awaitable[Any]]


class NoticeService:
    """Plans and delivers notices until cancelled.

    Args:
        storage: the storage port.
        catalog: the site (accounts, their contacts, meters).
        policy: the site's notice policy.
        notifier: where notices go (the channels).
        clock: aware UTC now.
        final_warning_delivered: tells the account its final warning was delivered.
        batch: events or notices read per query.
        idle_s: how often an idle loop looks for work.
        lease_s: how long a notice being tried is not due again (a crash during the attempt).
        concurrency: notices tried at once.
        holes: the planner looks again for ids skipped by transactions in flight (PostgreSQL; SQLite commits in
            id order).
        hole_wait_s: how long a skipped id is looked for.
    """

    def __init__(self, storage: Storage, catalog: Catalog, policy: NoticePolicy, notifier: Notifier,
                 clock: Callable[[], dt.datetime], final_warning_delivered: FinalWarningDelivered, *,
                 batch: int = 256, idle_s: float = 0.2, lease_s: float = 300, concurrency: int = 8,
                 holes: bool = False, hole_wait_s: float = 60.0) -> None:
        self.storage, self.catalog, self.policy, self.notifier, self.clock = storage, catalog, policy, notifier, clock
        self.final_warning_delivered = final_warning_delivered
        self.batch, self.idle_s, self.lease = batch, idle_s, dt.timedelta(seconds=lease_s)
        self._slots = asyncio.Semaphore(concurrency)
        self._wake = asyncio.Event()
        self._due = asyncio.Event()
        self.cursor = Cursor()  # the events looked at by this planner (in memory: the marks are in storage)
        self.holes, self.hole_wait = holes, dt.timedelta(seconds=hole_wait_s)
        self.planned = self.delivered = self.failed = self.too_old = 0

    @property
    def after_id(self) -> int:
        """The newest event looked at by this planner (its cursor's ``high``: the name callers that move the
        planner by hand, the tests, use)."""
        return self.cursor.high

    @after_id.setter
    def after_id(self, value: int) -> None:
        """Look at the events above ``value`` from now on (and at no skipped id below it)."""
        self.cursor = Cursor(value)

    def wake(self) -> None:
        """New events were committed."""
        self._wake.set()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._loop(self.plan, self._wake), name="gateway.notices.plan")
            tasks.create_task(self._loop(self.dispatch, self._due), name="gateway.notices.send")

    async def _loop(self, step: Callable[[], Awaitable[int]], wake: asyncio.Event) -> None:
        while True:
            try:
                done = await step()
            except Exception:  # a database hiccup: logged, tried again (the loop must not die)
                log.exception("notices: %s failed; trying again", getattr(step, "__name__", "step"))
                done = 0
            if done:
                continue
            wake.clear()
            await wait_event(wake, self.idle_s)

    # --- planner ------------------------------------------------------------------------------------------
    async def plan(self) -> int:
        """Look at the next events; store the notices they make. Returns how many events were looked at."""
        async with self.storage(readonly=True) as uow:
            events = await uow.outbox.unnoticed(self.cursor.high, self.batch, self.cursor.missing())
            telling = [(event, spec) for event in events if (spec := self._account_of(event)) is not None]
            balances = await self._balances(uow, {spec.id for event, spec in telling
                                                  if "balance_fen" not in event.payload})
        now = self.clock()
        if not events:
            self.cursor.take([], now, holes=self.holes, hole_wait=self.hole_wait)  # (holes expire)
            return 0
        planned: list[PlannedNotice] = []
        for event, spec in telling:
            if now - event.created_at > self.policy.max_event_age:
                self.too_old += 1  # e.g. events from before notices were switched on
                continue
            planned += self.policy.plan(event.id, event.topic, event.payload, event.created_at, spec.id,
                                        spec.contacts, balance_fen=balances.get(spec.id))
        async with self.storage(background=True) as uow:
            stored = await uow.notices.add([_row(n, now) for n in planned])
            await uow.outbox.noticed([e.id for e in events], now)
            await uow.commit()
        self.cursor.take([e.id for e in events], now, holes=self.holes, hole_wait=self.hole_wait)
        self.planned += stored
        if stored:
            self._due.set()
        return len(events)

    def _account_of(self, event: OutboxEvent) -> AccountSpec | None:
        """The account an event tells its contacts about, or None (most events make no notice)."""
        payload = event.payload
        if notice_kind(event.topic, payload) is None:
            return None
        if payload.get("type") == "CommandState":
            meter = self.catalog.meters.get(payload.get("meter_id", ""))
            account_id = meter.account_id if meter is not None else None
        else:
            account_id = payload.get("account_id")
        return self.catalog.accounts.get(account_id or "")

    @staticmethod
    async def _balances(uow: UnitOfWork, ids: set[str]) -> dict[str, int]:
        """The balances of accounts whose event carries none (a relay switched)."""
        if not ids:
            return {}
        states = await uow.accounts.states(sorted(ids))
        return {account_id: int(state.get("balance_fen", 0)) for account_id, (_, state) in states.items()}

    # --- dispatcher ---------------------------------------------------------------------------------------
    async def dispatch(self) -> int:
        """Try the notices that are due. Returns how many were looked at."""
        now = self.clock()
        async with self.storage(readonly=True) as uow:
            due = await uow.notices.due(now, self.batch)
        if not due:
            return 0
        # one recipient's notices one after another, in the order of their events (a reminder never arrives
        # after the final warning it preceded); different recipients at once
        queues: dict[tuple[str, str, str], list[NoticeRecord]] = {}
        for notice in due:
            queues.setdefault((notice.channel, notice.recipient, notice.contact), []).append(notice)
        await asyncio.gather(*(self._in_turn(queue) for queue in queues.values()))
        return len(due)

    async def _in_turn(self, notices: list[NoticeRecord]) -> None:
        for notice in notices:
            await self._attempt(notice)

    async def _attempt(self, notice: NoticeRecord) -> None:
        async with self._slots:
            now = self.clock()
            held = self.policy.hold_until(notice.kind, now)
            if held is not None:
                async with self.storage(background=True) as uow:
                    await uow.notices.finish(notice.id, dict(next_attempt_at=held, updated_at=now,
                                                             last_error=f"quiet hours until {held.isoformat()}"))
                    await uow.commit()
                return
            async with self.storage(background=True) as uow:
                taken = await uow.notices.claim(notice, now, now + self.lease)
                await uow.commit()
            if not taken:
                return  # another instance is trying it
            try:
                await self.notifier.send(notice)
            except DeliveryFailed as exc:
                await self._failed(notice, str(exc), permanent=exc.permanent)
                return
            except Exception as exc:  # a bug in a channel must not stop the others: counted as a failed attempt
                # (no traceback: an HTTP library's message may quote a channel URL holding credentials)
                log.error("notice %d: the channel %r raised %s", notice.id, notice.channel, type(exc).__name__)
                await self._failed(notice, f"{type(exc).__name__}", permanent=False)
                return
            await self._delivered(notice)

    async def _delivered(self, notice: NoticeRecord) -> None:
        at = self.clock()
        if notice.final:
            # before the notice is marked delivered: a crash between the two tries the notice again (the
            # receiver sees the same Idempotency-Key), and the account takes a second report as a no-op
            await self.final_warning_delivered(notice.account_id, notice.issued_at, at,
                                               f"{notice.role}:{notice.contact}")
        async with self.storage(background=True) as uow:
            await uow.notices.finish(notice.id, dict(state="delivered", delivered_at=at, updated_at=at,
                                                     next_attempt_at=None, last_error=None))
            await self._event(uow, notice, "delivered", notice.attempts + 1, None, at)
            await uow.commit()
        self.delivered += 1

    async def _failed(self, notice: NoticeRecord, reason: str, *, permanent: bool) -> None:
        at = self.clock()
        attempts = notice.attempts + 1
        retry = None if permanent else self.policy.retry_at(attempts, at)
        state = "pending" if retry is not None else "failed"
        async with self.storage(background=True) as uow:
            await uow.notices.finish(notice.id, dict(state=state, next_attempt_at=retry, last_error=reason[:500],
                                                     updated_at=at))
            await self._event(uow, notice, state, attempts, reason, at)
            if state == "failed":
                await uow.add_outbox("alarms", {"type": "NoticeFailed", "notice_id": notice.id,
                                                "account_id": notice.account_id, "kind": notice.kind,
                                                "contact": notice.contact, "channel": notice.channel,
                                                "attempts": attempts, "error": reason[:500], "at": at}, at)
            await uow.commit()
        if state == "failed":
            self.failed += 1
            log.warning("notice %d (%s to %s %s of account %s) failed after %d attempt(s): %s", notice.id,
                        notice.kind, notice.role, notice.contact, notice.account_id, attempts, reason)

    @staticmethod
    async def _event(uow: UnitOfWork, notice: NoticeRecord, state: str, attempts: int, error: str | None,
                     at: dt.datetime) -> None:
        await uow.add_outbox(f"accounts/{notice.account_id}/notices", {
            "type": "NoticeState", "notice_id": notice.id, "account_id": notice.account_id, "kind": notice.kind,
            "contact": notice.contact, "role": notice.role, "channel": notice.channel, "state": state,
            "attempts": attempts, "error": error, "at": at}, at)


def _row(notice: PlannedNotice, now: dt.datetime) -> dict[str, Any]:
    c = notice.contact
    return dict(dedup_key=notice.dedup_key, event_id=notice.event_id, kind=notice.kind, account_id=notice.account_id,
                contact=c.name, role=c.role, channel=c.channel, recipient=c.to, language=c.language,
                subject=notice.subject, text=notice.text, final=notice.final, state="pending", attempts=0,
                next_attempt_at=None, last_error=None, issued_at=notice.issued_at, created_at=now, updated_at=now,
                delivered_at=None)
