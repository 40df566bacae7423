"""SQLite's write slot (a ``PriorityLock`` taken with an explicit ``urgent`` flag): urgent transactions go
before the writer's next batch, whatever the task's ``urgent()`` context."""

from __future__ import annotations

import asyncio

from drivers.priority_lock import PriorityLock, urgent


async def test_an_explicit_flag_orders_waiters_and_overrides_the_context() -> None:
    lock = PriorityLock()
    await lock.acquire(urgent=False)  # a batch is being written
    order: list[str] = []

    async def take(name: str, flag: bool) -> None:
        with urgent():  # the context says urgent; the explicit flag decides
            await lock.acquire(urgent=flag)
        order.append(name)
        lock.release()

    tasks = [asyncio.create_task(take("batch-2", False)), asyncio.create_task(take("batch-3", False))]
    await asyncio.sleep(0)
    tasks.append(asyncio.create_task(take("command", True)))
    await asyncio.sleep(0)
    lock.release()
    await asyncio.gather(*tasks)
    assert order == ["command", "batch-2", "batch-3"]
    assert not lock.locked
