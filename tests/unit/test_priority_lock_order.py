"""The bus lock: urgent waiters (relay commands) are served before normal ones (polls), in arrival order."""

from __future__ import annotations

import asyncio

import pytest

from drivers.priority_lock import PriorityLock, is_urgent, urgent


async def test_urgent_waiters_go_first_then_normal_ones_in_order() -> None:
    lock = PriorityLock()
    order: list[str] = []

    async def take(name: str, *, hurry: bool = False) -> None:
        if hurry:
            with urgent():
                await lock.acquire()
        else:
            await lock.acquire()
        order.append(name)
        await asyncio.sleep(0)
        lock.release()

    await lock.acquire()  # a transaction in flight
    tasks = [asyncio.create_task(take("poll-1")), asyncio.create_task(take("poll-2"))]
    await asyncio.sleep(0)
    tasks += [asyncio.create_task(take("cmd-1", hurry=True)), asyncio.create_task(take("cmd-2", hurry=True))]
    await asyncio.sleep(0)
    assert lock.waiting == 4
    lock.release()
    await asyncio.gather(*tasks)
    assert order == ["cmd-1", "cmd-2", "poll-1", "poll-2"]
    assert not lock.locked


async def test_an_uncontended_lock_is_taken_at_once() -> None:
    lock = PriorityLock()
    async with lock:
        assert lock.locked
    assert not lock.locked
    with pytest.raises(RuntimeError):
        lock.release()


async def test_a_cancelled_waiter_does_not_keep_the_lock() -> None:
    lock = PriorityLock()
    await lock.acquire()
    waiter = asyncio.create_task(lock.acquire())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    lock.release()
    assert not lock.locked and lock.waiting == 0


async def test_a_waiter_cancelled_as_it_is_handed_the_lock_passes_it_on() -> None:
    lock = PriorityLock()
    await lock.acquire()
    first = asyncio.create_task(lock.acquire())
    second = asyncio.create_task(lock.acquire())
    await asyncio.sleep(0)
    lock.release()  # hands it to `first`...
    first.cancel()  # ...which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.wait_for(second, 1)  # so it went on to `second`
    assert lock.locked
    lock.release()


async def test_urgency_is_per_task() -> None:
    seen: list[bool] = []

    async def other() -> None:
        seen.append(is_urgent())

    with urgent():
        assert is_urgent()
        task = asyncio.create_task(other())  # a task copies the context: urgent too
    await task
    assert seen == [True]
    assert not is_urgent()
