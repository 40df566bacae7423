"""The gateway's stop cancels its tasks until they end, even one that lost a cancellation (on Python 3.11 an
``asyncio.wait_for`` inside a library can: python/cpython#86296)."""

from __future__ import annotations

import asyncio

from gateway.bootstrap import _cancelled


async def test_a_task_that_lost_its_cancellation_is_cancelled_again() -> None:
    went_on = asyncio.Event()

    async def stubborn() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            pass  # lost, as asyncio.wait_for loses one that arrives as what it waits for completes
        went_on.set()
        await asyncio.sleep(60)

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    await asyncio.wait_for(_cancelled(task), timeout=10)
    assert went_on.is_set() and task.cancelled()


async def test_a_task_that_ends_at_once_is_waited_for() -> None:
    task = asyncio.create_task(asyncio.sleep(60))
    await asyncio.sleep(0)
    await asyncio.wait_for(_cancelled(task), timeout=5)
    assert task.cancelled()
