"""A storage on an event loop and thread of its own (``gateway.adapters.own_loop``): each step of a unit of work
runs there, in order, and to its end even when its caller is cancelled; leaving always closes the inner unit of
work (a half-closed one would keep its transaction and row locks)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from gateway.adapters.own_loop import OwnLoopStorage
from tests.fakes import FakeStorage, FakeUnitOfWork
from tests.support import async_wait_until


class SlowStorage(FakeStorage):
    """Units of work whose steps take a while, noting what ran, on which thread, and how many at once."""

    def __init__(self) -> None:
        super().__init__()
        self.steps: list[str] = []
        self.threads: set[int] = set()
        self.running = 0
        self.most = 0

    def __call__(self, *, readonly: bool = False, background: bool = False) -> SlowUnitOfWork:
        return SlowUnitOfWork(self)

    async def noted(self, name: str) -> None:
        self.threads.add(threading.get_ident())
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            await asyncio.sleep(0.05)
            self.steps.append(name)
        finally:
            self.running -= 1


class SlowUnitOfWork(FakeUnitOfWork):
    storage: SlowStorage

    async def __aenter__(self) -> SlowUnitOfWork:
        await self.storage.noted("enter")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.storage.noted("exit")

    async def commit(self) -> None:
        await self.storage.noted("commit")

    async def limiter(self) -> dict[str, Any] | None:
        await self.storage.noted("limiter")
        return None


async def test_a_cancelled_caller_leaves_its_steps_in_order_and_the_unit_closed() -> None:
    storage = OwnLoopStorage(SlowStorage)
    inner: SlowStorage = storage.inner  # type: ignore[assignment]
    started = asyncio.Event()

    async def caller() -> None:
        async with storage() as uow:
            started.set()
            await uow.limiter()
            await uow.commit()

    task = asyncio.create_task(caller())
    await asyncio.wait_for(started.wait(), 5)
    await asyncio.sleep(0.01)  # (not a synchronisation: the cancel lands during `limiter`, whenever it is)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await async_wait_until(lambda: "exit" in inner.steps, timeout=5, what="the unit of work closed")
    assert inner.steps == ["enter", "limiter", "exit"]  # the cancelled step ran to its end, then the exit
    assert inner.most == 1
    assert threading.get_ident() not in inner.threads  # all on the storage's own thread
    await storage.aclose()


async def test_results_and_errors_come_back_to_the_caller() -> None:
    storage = OwnLoopStorage(SlowStorage)
    async with storage() as uow:
        assert await uow.limiter() is None
        assert await uow.accounts.ids() == set()
    assert storage.inner.steps == ["enter", "limiter", "exit"]  # type: ignore[attr-defined]
    await storage.aclose()
