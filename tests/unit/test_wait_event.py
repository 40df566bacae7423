"""The gateway's loops wait for "new work or a timeout" with ``wait_event``; stopping the gateway cancels them.
A cancellation that arrives just as the event is set must not be lost (``asyncio.wait_for`` loses it on Python
3.11: the loop went on and the gateway's stop hung)."""

from __future__ import annotations

import asyncio

import pytest

from gateway.service.clock import SystemClock, wait_event


async def _loop(event: asyncio.Event, inside: asyncio.Event, wait: object) -> None:
    while True:
        inside.set()
        await wait(event, 10)  # type: ignore[operator]
        event.clear()


@pytest.mark.parametrize("wait", [wait_event, SystemClock().wait], ids=["wait_event", "SystemClock.wait"])
async def test_a_cancellation_arriving_with_the_event_stops_the_loop(wait: object) -> None:
    for _ in range(20):
        event, inside = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(_loop(event, inside, wait))
        await inside.wait()  # the loop is now suspended in its wait
        event.set()
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=2)
        assert done, "the loop went on after its cancellation"
        assert task.cancelled()


async def test_it_says_whether_the_event_was_set() -> None:
    event = asyncio.Event()
    assert await wait_event(event, 0.01) is False
    event.set()
    assert await wait_event(event, 10) is True
