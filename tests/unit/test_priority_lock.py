"""SQLite's write slot: urgent transactions go before the writer's next batch; cancellation never leaks it."""

from __future__ import annotations

import asyncio

import pytest

from gateway.service.uow import PriorityLock


async def test_urgent_waiters_go_first_and_ownership_passes_on() -> None:
    lock = PriorityLock()
    await lock.acquire(urgent=False)  # a batch is being written
    order: list[str] = []

    async def take(name: str, urgent: bool) -> None:
        await lock.acquire(urgent=urgent)
        order.append(name)
        lock.release()

    tasks = [asyncio.create_task(take("batch-2", False)), asyncio.create_task(take("batch-3", False))]
    await asyncio.sleep(0)
    tasks.append(asyncio.create_task(take("command", True)))
    await asyncio.sleep(0)
    lock.release()
    await asyncio.gather(*tasks)
    assert order == ["command", "batch-2", "batch-3"]
    await asyncio.wait_for(lock.acquire(), timeout=1)  # free again


async def test_a_cancelled_waiter_does_not_keep_the_lock() -> None:
    lock = PriorityLock()
    await lock.acquire()
    waiter = asyncio.create_task(lock.acquire())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    lock.release()
    await asyncio.wait_for(lock.acquire(urgent=False), timeout=1)
