"""The shared reader of the live event stream (``gateway.service.event_stream``) over an in-memory outbox: a slow
client is dropped with its buffer bounded, an idle stream gets heartbeats, a resume point ahead of the reader
gets nothing twice, ids that start again are followed, and ``close`` ends every stream."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator

from gateway.service.event_stream import EventSource, EventStream, Gap, Heartbeat, gap
from gateway.service.ports import OutboxEvent

AT = dt.datetime(2026, 12, 3, 8, 0, tzinfo=dt.UTC)


class MemoryOutbox(EventSource):
    def __init__(self) -> None:
        self.events: list[OutboxEvent] = []
        self.next_id = 1

    def add(self, topic: str = "accounts/A-1/balance") -> int:
        self.events.append(OutboxEvent(self.next_id, topic, {"type": "PaymentReceived"}, AT))
        self.next_id += 1
        return self.next_id - 1

    async def after(self, after_id: int, limit: int) -> list[OutboxEvent]:
        return [e for e in self.events if e.id > after_id][:limit]

    async def bounds(self) -> tuple[int, int]:
        ids = [e.id for e in self.events]
        return (min(ids), max(ids)) if ids else (0, 0)


async def take(items: AsyncIterator[object], n: int, timeout: float = 5.0) -> list[object]:
    out: list[object] = []
    async with asyncio.timeout(timeout):
        async for item in items:
            out.append(item)
            if len(out) == n:
                break
    return out


def ids(items: list[object]) -> list[int]:
    return [item.id for item in items if isinstance(item, OutboxEvent)]


def test_gap_rules() -> None:
    assert gap(5, 6, 9) is None  # the next one is kept
    assert gap(4, 6, 9) == Gap(4, 6, 9)  # 5 is gone
    assert gap(12, 6, 9) == Gap(12, 6, 9)  # ahead of the newest: another database, or ids started again
    assert gap(0, 0, 0) is None and gap(3, 0, 0) == Gap(3, 0, 0)


async def test_a_slow_client_is_dropped_its_buffer_bounded_and_others_go_on() -> None:
    outbox = MemoryOutbox()
    stream = EventStream(outbox, poll_s=0.01, buffer=3)
    slow = await stream.subscribe(after=None)
    fast = await stream.subscribe(after=None)
    fast_items = fast.items(heartbeat_s=10)
    for n in range(1, 6):  # the fast one reads each event as it comes; the slow one none
        outbox.add()
        stream.wake()
        assert ids(await take(fast_items, 1)) == [n]
        assert slow.dropped is (n > 3)
    assert slow.dropped and len(slow.pending) == 0  # (never more than 3 held)
    assert await take(slow.items(heartbeat_s=10), 1, timeout=1) == []  # its stream ends at once
    assert slow not in stream.subscriptions and fast in stream.subscriptions
    await stream.aclose()


async def test_an_idle_stream_gets_heartbeats_and_close_ends_it() -> None:
    stream = EventStream(MemoryOutbox(), poll_s=0.01)
    subscription = await stream.subscribe(after=None)
    items = subscription.items(heartbeat_s=0.05)
    assert await take(items, 2) == [Heartbeat(), Heartbeat()]
    stream.close()
    assert await take(items, 1) == []
    closed = await stream.subscribe(after=0)  # after close: an empty stream
    assert await take(closed.items(heartbeat_s=10), 1, timeout=1) == []
    await stream.aclose()


async def test_catch_up_then_live_each_once_even_with_a_resume_point_ahead_of_the_reader() -> None:
    outbox = MemoryOutbox()
    for _ in range(4):
        outbox.add()
    stream = EventStream(outbox, poll_s=10, batch=2)  # (pages of two: the catch-up reads several)
    first = await stream.subscribe(after=None)  # the reader starts at 4
    outbox.add()  # 5, 6: committed, the reader not woken yet
    outbox.add()
    ahead = await stream.subscribe(after=5)  # a client that saw 5 (from another instance's stream)
    behind = await stream.subscribe(after=1)
    stream.wake()
    assert ids(await take(first.items(heartbeat_s=10), 2)) == [5, 6]
    assert ids(await take(ahead.items(heartbeat_s=10), 1)) == [6]
    assert ids(await take(behind.items(heartbeat_s=10), 5)) == [2, 3, 4, 5, 6]
    await stream.aclose()


async def test_ids_that_start_again_are_followed() -> None:
    outbox = MemoryOutbox()
    for _ in range(3):
        outbox.add()
    stream = EventStream(outbox, poll_s=0.005)
    subscription = await stream.subscribe(after=None)
    items = subscription.items(heartbeat_s=10)
    outbox.events.clear()  # the outbox emptied (pruned) and SQLite numbers from 1 again
    outbox.next_id = 1
    await asyncio.sleep(0.2)  # (lets the reader see it idle: it looks at the bounds every 20 idle rounds)
    outbox.add()
    outbox.add()
    assert ids(await take(items, 2)) == [1, 2]
    await stream.aclose()


async def test_a_page_starts_at_the_oldest_kept_and_bounds_its_scan() -> None:
    outbox = MemoryOutbox()
    for n in range(10):
        outbox.add("accounts/A-2/balance" if n % 5 == 4 else "accounts/A-1/balance")
    stream = EventStream(outbox, batch=3)
    everything = await stream.page(after=None, topic=None, limit=100)
    assert [e.id for e in everything.events] == list(range(1, 11)) and everything.gap is None
    assert everything.next_after == 10
    narrow = await stream.page(after=None, topic="accounts/A-2/", limit=1)
    assert [e.id for e in narrow.events] == [5] and narrow.next_after == 5
    scanned = await stream.page(after=5, topic="accounts/A-2/", limit=10, scan=3)  # 6, 7, 8: none matches
    assert scanned.events == [] and scanned.next_after == 8
    del outbox.events[:3]
    pruned = await stream.page(after=1, topic=None, limit=2)
    assert pruned.gap == Gap(1, 4, 10) and [e.id for e in pruned.events] == [4, 5]
