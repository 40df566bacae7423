"""The live event stream (``GET /v1/events``): the outbox's events, as they are committed, to any number of
clients, each resuming where it left off.

One shared reader (``EventStream``) reads the outbox by id, in commit order, while at least one client listens:
when the writer says it committed (``wake``) and at the latest every ``poll_s``; it hands each new event to every
subscription. A subscription first catches up from its own resume point (``after``, the client's
``Last-Event-ID``) up to where the reader stood when it joined, from storage, page by page; then it takes the
reader's events. So a client gets every event once, in order, however it reconnects.

A resume point before the oldest event kept (the outbox is pruned: ``engine.event_retention_s`` without MQTT,
``mqtt.retention_s`` after publishing) or after the newest (another database, or SQLite's ids started again on
an emptied table) is told first, as a ``Gap``, and the stream goes on from the oldest kept event.

Memory stays bounded: each subscription buffers at most ``buffer`` events; one that falls further behind (a slow
client) is dropped, its stream ends, and the client resumes with its ``Last-Event-ID`` (from storage, losing
nothing). ``close`` (the server stopping) ends every stream.
"""

from __future__ import annotations

import abc
import asyncio
import collections
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from gateway.service.clock import wait_event
from gateway.service.ports import OutboxEvent

__all__ = ["EventPage", "EventSource", "EventStream", "Gap", "Heartbeat", "Subscription"]

log = logging.getLogger(__name__)


class EventSource(abc.ABC):
    """The port the event stream reads the outbox through (``gateway.adapters.metric_rows``)."""

    @abc.abstractmethod
    async def after(self, after_id: int, limit: int) -> list[OutboxEvent]:
        """Up to ``limit`` events with an id above ``after_id``, by id."""

    @abc.abstractmethod
    async def bounds(self) -> tuple[int, int]:
        """(the oldest kept event's id, the newest's); (0, 0) for an empty outbox."""


@dataclass(frozen=True, slots=True)
class Gap:
    """Events after ``after`` are no longer kept (or never were here): the stream goes on from ``oldest``."""

    after: int
    oldest: int
    newest: int


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Nothing happened for a while (the route writes an SSE comment: proxies keep the connection)."""


@dataclass(frozen=True, slots=True)
class EventPage:
    events: list[OutboxEvent]
    gap: Gap | None
    next_after: int  # the last event looked at: the next page's ``after``


def matches(event: OutboxEvent, topic: str | None) -> bool:
    return topic is None or event.topic.startswith(topic)


def gap(after: int, oldest: int, newest: int) -> Gap | None:
    """The gap a resume point ``after`` meets (ids are not dense on PostgreSQL: only the oldest kept bounds it)."""
    if after > newest or (oldest and after < oldest - 1):
        return Gap(after, oldest, newest)
    return None


class Subscription:
    """One client's place in the stream: a bounded buffer of events the shared reader hands it."""

    def __init__(self, stream: EventStream, *, after: int | None, start: int, topic: str | None,
                 buffer: int) -> None:
        self.stream, self.after, self.start, self.topic, self.buffer = stream, after, start, topic, buffer
        self.pending: collections.deque[OutboxEvent] = collections.deque()
        self.ready = asyncio.Event()
        self.dropped = self.closed = False

    def push(self, event: OutboxEvent) -> None:
        if self.dropped or self.closed:
            return
        if len(self.pending) >= self.buffer:
            self.dropped = True  # too slow: its stream ends; the client resumes from storage
            self.pending.clear()
            log.info("event stream: a client fell %d events behind and was dropped (it may resume)", self.buffer)
        else:
            self.pending.append(event)
        self.ready.set()

    def close(self) -> None:
        self.closed = True
        self.ready.set()
        self.stream.leave(self)

    async def items(self, *, heartbeat_s: float) -> AsyncIterator[OutboxEvent | Gap | Heartbeat]:
        """Catch-up from storage, then the shared reader's events, until dropped or closed; a ``Heartbeat``
        after ``heartbeat_s`` without one."""
        last = self.start  # the newest event this client has (its resume point may be ahead of the reader)
        try:
            if self.after is not None:
                jumped = False
                async for item in self.stream.backlog(self.after, self.start, self.topic):
                    if self.closed:
                        return
                    jumped = jumped or isinstance(item, Gap)
                    yield item
                if not jumped:
                    last = max(self.after, self.start)
            while not (self.closed or self.dropped):
                if not self.pending:
                    self.ready.clear()
                    if not await wait_event(self.ready, heartbeat_s):
                        yield Heartbeat()
                        continue
                while self.pending and not (self.closed or self.dropped):
                    event = self.pending.popleft()
                    if event.id > last or event.id < self.start:  # (below: the ids started again)
                        last = event.id
                        if matches(event, self.topic):
                            yield event
        finally:
            self.stream.leave(self)


class EventStream:
    """The shared reader of the outbox and its subscriptions.

    Args:
        source: where events are read.
        poll_s: how often the reader looks for events nobody told it of (other instances' commits).
        batch: events read per query.
        buffer: events buffered per subscription before it is dropped.
        heartbeat_s: how often an idle stream gets a comment line.
    """

    def __init__(self, source: EventSource, *, poll_s: float = 0.25, batch: int = 500, buffer: int = 2000,
                 heartbeat_s: float = 15.0) -> None:
        self.source, self.poll_s, self.batch, self.buffer = source, poll_s, batch, buffer
        self.heartbeat_s = heartbeat_s  # a comment line to each idle stream this often
        self.position = 0  # the newest event the reader handed out
        self.subscriptions: set[Subscription] = set()
        self.closed = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    def wake(self) -> None:
        """New events were committed."""
        self._wake.set()

    async def subscribe(self, *, after: int | None, topic: str | None = None) -> Subscription:
        """A subscription from ``after`` (None: from now)."""
        async with self._lock:
            if self._task is None and not self.closed:
                self.position = (await self.source.bounds())[1]
                self._task = asyncio.create_task(self._read(), name="gateway.events.reader")
            subscription = Subscription(self, after=after, start=self.position, topic=topic, buffer=self.buffer)
            if self.closed:
                subscription.close()
            else:
                self.subscriptions.add(subscription)
        return subscription

    def leave(self, subscription: Subscription) -> None:
        self.subscriptions.discard(subscription)

    async def page(self, *, after: int | None, topic: str | None, limit: int, scan: int = 10_000) -> EventPage:
        """Past events after ``after`` (None: from the oldest kept), at most ``limit`` of them, looking at no
        more than ``scan`` events (a narrow topic); ``next_after`` is where the next page starts."""
        oldest, newest = await self.source.bounds()
        found = gap(after, oldest, newest) if after is not None else None
        position = 0 if after is None or found is not None else after
        events: list[OutboxEvent] = []
        while scan > 0:
            read = await self.source.after(position, min(self.batch, scan))
            scan -= len(read)
            for event in read:
                if matches(event, topic):
                    events.append(event)
                    if len(events) == limit:
                        return EventPage(events, found, event.id)
                position = event.id
            if len(read) < self.batch:
                break
        return EventPage(events, found, position)

    async def backlog(self, after: int, until: int, topic: str | None) -> AsyncIterator[OutboxEvent | Gap]:
        """The events after ``after`` up to ``until`` (where the shared reader stood), from storage."""
        oldest, newest = await self.source.bounds()
        found = gap(after, oldest, newest)
        if found is not None:
            yield found
            after = 0
        while after < until:
            read = await self.source.after(after, self.batch)
            for event in read:
                if event.id > until:
                    return
                if matches(event, topic):
                    yield event
            if len(read) < self.batch:
                return
            after = read[-1].id

    def close(self) -> None:
        """The server stops: every stream ends, the reader stops."""
        self.closed = True
        for subscription in list(self.subscriptions):
            subscription.close()
        self.subscriptions.clear()
        self._wake.set()

    async def aclose(self) -> None:
        self.close()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _read(self) -> None:
        """Hand new events out while anybody listens."""
        idle, failing = 0, False
        try:
            while self.subscriptions and not self.closed:
                self._wake.clear()
                try:
                    events = await self.source.after(self.position, self.batch)
                    if not events:
                        idle += 1
                        if idle % 20 == 0:  # now and then: did the ids start again (an emptied SQLite outbox)?
                            newest = (await self.source.bounds())[1]
                            if newest < self.position:
                                log.warning("event stream: outbox ids start again at 1 (the table was emptied)")
                                self.position = 0
                                continue
                    failing = False
                except Exception:  # the database is unavailable for a moment: the streams wait, and try again
                    if not failing:
                        log.exception("event stream: reading the outbox failed (logged once until it reads again)")
                    failing, events = True, []
                for event in events:
                    for subscription in list(self.subscriptions):
                        subscription.push(event)
                    self.position = event.id
                if len(events) < self.batch:
                    await wait_event(self._wake, self.poll_s)
        finally:
            self._task = None
