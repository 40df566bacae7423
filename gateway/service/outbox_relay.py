"""The outbox relay: events leave the outbox after their commit, in commit order, to a ``Publisher``.

Every change writes its events to the outbox table in its own transaction (``gateway.service.batch``,
``gateway.adapters.sql``); this loop reads the ones not published yet in id order (the commit order: per meter,
per account and per command too), hands each to the publisher, and marks them published. While the publisher is
down they wait in the outbox and go out, in order and marked as replayed, once it is back; a crash between a
publish and its mark publishes that event again (at least once: the event id, and the same sequence number,
tell duplicates apart). Each payload carries ``event_id``, ``seq`` (the event's number on its topic: one entity's
stream, counted without gaps across restarts) and ``at`` (the time of the change). Balance and meter state topics
are retained: a new subscriber gets the latest at once. A meter's state topic carries its whole state (health,
relay, newest reading: ``gateway.service.meter_state``), published again when a ``MeterHealth`` event, a stored
reading or a relay command's ``CommandState`` changes it, once per batch; every meter's state at the start.
Published events are deleted after ``retention_s``.

Where instances share a PostgreSQL database, an event's id is taken when it is written and its transaction may
commit after one holding a higher id: the relay's ``Cursor`` keeps the ids it skipped as holes and looks for them
again for ``hole_wait_s`` (such an event goes out late, after higher ids); readings likewise, with a ``Cursor``
of their own. SQLite commits in id order: no holes.

The outbox does not grow without bound while the publisher is down: at ``max_waiting`` events the relay raises
the alarm (a log line) and the writer stops adding events (``full``), keeping the oldest; the number left out is
counted, and an ``OutboxOverflow`` alarm with that count is published once the outbox has room again. The
changes themselves (payments, readings, commands) are all committed: only their events are missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any

from gateway.service.meter_state import MeterStates, is_state_topic, state_topic
from gateway.service.clock import wait_event
from gateway.service.housekeeping import prune_outbox
from gateway.service.outbound import Publisher, PublisherUnavailable
from gateway.service.outbox_cursor import Cursor
from gateway.service.ports import OutboxEvent, Storage

__all__ = ["OutboxRelay"]

log = logging.getLogger(__name__)

RETAINED = ("/balance", "/state")  # topics whose last event a new subscriber gets at once


class OutboxRelay:
    """Publishes the outbox's events until cancelled.

    Args:
        storage: the storage port.
        publisher: where events go.
        clock: aware UTC now.
        batch: events read per query.
        idle_s: how often an idle relay looks for new events.
        retry_s: how long it waits after the publisher was unavailable.
        retention_s: how long published events are kept.
        max_waiting: the most events kept waiting for the publisher.
        lease_s: how long this relay's turn to publish lasts unless renewed (instances sharing a database).
        holes: look again for ids skipped by transactions in flight (PostgreSQL; SQLite commits in id order).
        hole_wait_s: how long a skipped id is looked for.
    """

    def __init__(self, storage: Storage, publisher: Publisher, clock: Callable[[], dt.datetime], *,
                 batch: int = 256, idle_s: float = 0.05, retry_s: float = 1.0, retention_s: float = 86_400,
                 max_waiting: int = 1_000_000, lease_s: float = 15.0, holes: bool = False,
                 hole_wait_s: float = 60.0) -> None:
        self.storage, self.publisher, self.clock = storage, publisher, clock
        self.batch, self.idle_s, self.retry_s = batch, idle_s, retry_s
        self.retention = dt.timedelta(seconds=retention_s)
        self.cursor = Cursor()  # the events published by this relay (in memory: the marks are in storage)
        self.holes, self.hole_wait = holes, dt.timedelta(seconds=hole_wait_s)
        # the readings published by this relay: None until read from storage at the start. Storage keeps only
        # the highest reading id published, so the holes of a previous run are not looked for after a restart
        # (a restart more than hole_wait_s later would have given them up anyway)
        self.readings_cursor: Cursor | None = None
        self.published = 0
        self.max_waiting = max_waiting
        self.full = False  # the outbox holds max_waiting events: the writer adds no more (see ``left_out``)
        self.left_out = 0  # events the writer left out while full, not reported yet
        self._wake = asyncio.Event()
        self._pruned_at: dt.datetime | None = None
        self.keep_unnoticed = False  # notices on: an event is pruned only once the notice planner took it too
        self.states = MeterStates()  # the meters' retained states (seeded from storage at the start)
        self._seeded = False
        self._sequences: dict[str, int] = {}  # each topic's last sequence number, as stored
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"  # this relay, in the lease
        self.lease = dt.timedelta(seconds=lease_s)
        self._leading, self._renew_at = False, 0.0

    @property
    def readings_after(self) -> int | None:
        """The newest reading published (None: not read from storage yet)."""
        return None if self.readings_cursor is None else self.readings_cursor.high

    def wake(self) -> None:
        """New events were committed."""
        self._wake.set()

    async def run(self) -> None:
        replaying = False  # events that waited for the publisher are flagged as replayed
        try:
            while True:
                if not await self._lead():
                    await asyncio.sleep(self.lease.total_seconds() / 3)  # a standby: another instance publishes
                    continue
                replaying = await self._turn(replaying)
        finally:
            await self._release()

    async def _turn(self, replaying: bool) -> bool:
        """One batch of readings and events (or, with none, the idle chores and a wait for new ones)."""
        async with self.storage(readonly=True) as uow:
            if self.readings_cursor is None:
                self.readings_cursor = Cursor(await uow.outbox.readings_published())
            if not self._seeded:
                self.states.seed(*await uow.outbox.meter_snapshot(), at=self.clock())
                self._seeded = True
            events = await uow.outbox.pending(self.cursor.high, self.batch, self.cursor.missing())
            read = self.readings_cursor
            readings = await uow.outbox.readings(read.high, self.batch, read.missing())
        if readings:
            replaying = await self._publish(readings, replaying, readings=True)
        else:
            read.take([], self.clock(), holes=self.holes, hole_wait=self.hole_wait)  # (holes expire)
        if not events:
            self.cursor.take([], self.clock(), holes=self.holes, hole_wait=self.hole_wait)
        if not events and not readings:
            if self.states.dirty:  # changed states not published yet (at the start: every meter's)
                replaying = await self._publish([], replaying)
                if self.states.dirty:
                    return replaying
            if self.full:
                await self._room_again()
            await self._prune()
            self._wake.clear()
            await wait_event(self._wake, self.idle_s)
            return False
        if events:
            replaying = await self._publish(events, replaying)
        return replaying

    async def _lead(self) -> bool:
        """Whether this relay publishes: instances sharing one database take turns by a lease (renewed every
        third of it), so that every event goes out once, numbered once. A relay that takes over starts from
        what storage says (what the other one published and numbered)."""
        if self._leading and time.monotonic() < self._renew_at:
            return True
        now = self.clock()
        async with self.storage(background=True) as uow:
            took = await uow.outbox.lease(self.holder, now, now + self.lease)
            await uow.commit()
        if took and not self._leading:
            self.cursor, self.readings_cursor, self._seeded, self._sequences = Cursor(), None, False, {}
            self.states = MeterStates()
            log.info("outbox: this instance publishes the events (%s)", self.holder)
        elif self._leading and not took:
            log.warning("outbox: another instance publishes the events now")
        self._leading = took
        self._renew_at = time.monotonic() + self.lease.total_seconds() / 3
        return took

    async def _release(self) -> None:
        """A stop: give the lease back, so that another instance takes over at once."""
        if not self._leading:
            return
        self._leading = False
        with contextlib.suppress(Exception):
            now = self.clock()
            async with self.storage(background=True) as uow:
                await uow.outbox.lease(self.holder, now, now)
                await uow.commit()

    async def _publish(self, events: list[OutboxEvent], replaying: bool, *, readings: bool = False) -> bool:
        """Publish in order until the publisher fails; mark what went out. Returns whether events now wait (to
        be flagged as replayed). Then the states of the meters the events changed."""
        states, cursor = self.states, self.readings_cursor if readings else self.cursor
        assert cursor is not None  # (readings: read from storage by ``_turn`` first)
        apply = states.reading if readings else states.event
        for event in events:
            apply(event)
        topics = {event.topic for event in events} | {state_topic(meter) for meter in states.dirty}
        if len(self._sequences) > 100_000:  # (every command is a topic of its own: the cache stays bounded)
            self._sequences.clear()
        missing = topics - self._sequences.keys()  # read from storage once per topic, then kept here
        if missing:
            async with self.storage(readonly=True) as uow:
                stored = await uow.outbox.sequences(missing)
            self._sequences.update({topic: stored.get(topic, 0) for topic in missing})
        sequences = self._sequences
        done: list[int] = []
        numbered: dict[str, int] = {}
        try:
            for event in events:
                if not readings and is_state_topic(event.topic):  # a MeterHealth: in the meter's state, below
                    done.append(event.id)
                    continue
                seq = numbered.get(event.topic, sequences.get(event.topic, 0)) + 1
                payload: dict[str, Any] = {"at": event.created_at, **event.payload, "seq": seq}
                if not readings:
                    payload["event_id"] = event.id
                if replaying:
                    payload["replayed"] = True
                await self.publisher.publish(event.topic, payload, retain=event.topic.endswith(RETAINED))
                done.append(event.id)
                numbered[event.topic] = seq
            for meter in list(states.dirty):
                topic = state_topic(meter)
                seq = numbered.get(topic, sequences.get(topic, 0)) + 1
                payload = {**states.payload(meter), "seq": seq}
                if replaying:
                    payload["replayed"] = True
                await self.publisher.publish(topic, payload, retain=True)
                numbered[topic] = seq
                states.published(meter)
        except PublisherUnavailable:
            replaying = True
            await self._check_room()
            await asyncio.sleep(self.retry_s)
        finally:
            if done or numbered:
                async with self.storage(background=True) as uow:
                    if readings:  # the highest id published: a hole that came late is below it
                        to = max(done[-1], cursor.high)
                        await uow.outbox.published([], self.clock(), numbered, readings_to=to)
                    else:
                        await uow.outbox.published(done, self.clock(), numbered)
                    await uow.commit()
                sequences.update(numbered)
                if done:
                    cursor.take(done, self.clock(), holes=self.holes, hole_wait=self.hole_wait)
                self.published += len(done)
        return replaying

    def leave_out(self, events: int) -> None:
        """The writer left out ``events`` events because the outbox was full."""
        self.left_out += events

    async def _check_room(self) -> None:
        async with self.storage(readonly=True) as uow:
            waiting = await uow.outbox.waiting()
        if waiting >= self.max_waiting and not self.full:
            self.full = True
            log.error("outbox: %d events wait for the publisher, the most kept: new events are left out (counted) "
                      "until it is back", waiting)
        elif self.full and waiting < self.max_waiting:
            await self._room_again()

    async def _room_again(self) -> None:
        self.full = False
        left_out, self.left_out = self.left_out, 0
        async with self.storage(background=True) as uow:
            await uow.add_outbox("alarms", {"type": "OutboxOverflow", "left_out": left_out, "at": self.clock()},
                                 self.clock())
            await uow.commit()
        log.warning("outbox: room again; %d events were left out while it was full", left_out)

    async def _prune(self) -> None:
        now = self.clock()
        if self._pruned_at is not None and now - self._pruned_at < dt.timedelta(minutes=1):
            return
        self._pruned_at = now
        deleted = await prune_outbox(self.storage, now - self.retention, keep_unnoticed=self.keep_unnoticed,
                                     unpublished_too=False)
        if deleted:
            log.info("outbox: %d published events older than %s deleted", deleted, self.retention)
