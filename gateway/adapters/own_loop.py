"""A storage that runs on an event loop and a thread of its own (the SQLite pipeline's, ``database.sqlite_pipeline``).

Every database call through aiosqlite is several hand-overs between the event loop and the database thread (a
cursor, the statement, its rows, closing it), and on a busy event loop (buses polled flat out) each hand-over waits
for a turn of the loop, while SQLite's write lock is held. Here the storage (the very same adapter code) lives on
a loop that does nothing else: the gateway's loop hands it one call per unit-of-work step (enter, a repository
method, commit, leave) or per writer batch, and the hand-overs inside that step are quick. Only public asyncio
(``run_coroutine_threadsafe``) is used; the storage's engine is made and used on its own loop only.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Self, TypeVar

from gateway.domain.account import PrepaidAccount
from gateway.service import ports
from gateway.service.ports import BatchChanges

__all__ = ["OwnLoopStorage"]

T = TypeVar("T")


class OwnLoopStorage(ports.Storage):
    """The storage ``make()`` returns, made and run on a loop and thread of its own.

    ``make`` is called on that loop (it makes its engine there). ``inner`` is the storage itself (its engine:
    ``inner.engine``), to be used on that loop only.
    """

    def __init__(self, make: Callable[[], ports.Storage]) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="gateway.storage", daemon=True)
        self._thread.start()

        async def made() -> ports.Storage:
            return make()

        self.inner = asyncio.run_coroutine_threadsafe(made(), self._loop).result()
        self.exclusive = self.inner.exclusive

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def run(self, coroutine: Coroutine[Any, Any, T]) -> Awaitable[T]:
        """``coroutine`` run on the storage's loop, awaited from the caller's (cancelling the caller cancels it)."""
        return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coroutine, self._loop))

    def account_row(self, account: PrepaidAccount, now: dt.datetime) -> dict[str, Any]:
        return self.inner.account_row(account, now)

    def __call__(self, *, readonly: bool = False, background: bool = False) -> OwnLoopUnitOfWork:
        return OwnLoopUnitOfWork(self, self.inner(readonly=readonly, background=background))

    async def commit_batch(self, changes: BatchChanges, *, background: bool = False) -> None:
        await self.run(self.inner.commit_batch(changes, background=background))

    async def aclose(self) -> None:
        """Close the storage and its engine, then stop its loop and thread."""
        async def close() -> None:
            await self.inner.aclose()
            engine = getattr(self.inner, "engine", None)
            if engine is not None:
                await engine.dispose()

        if self._thread.is_alive():
            await self.run(close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            await asyncio.to_thread(self._thread.join)
            self._loop.close()


class _Forward:
    """A repository of the inner unit of work: each method call is a step of the unit of work."""

    def __init__(self, uow: OwnLoopUnitOfWork, target: object) -> None:
        self._uow, self._target = uow, target

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        method = getattr(self._target, name)

        def call(*args: Any, **kwargs: Any) -> Awaitable[Any]:
            return self._uow.step(method(*args, **kwargs))

        return call


class OwnLoopUnitOfWork(ports.UnitOfWork):
    """The inner unit of work, one step (enter, a repository method, commit, leave) per hand-over.

    The steps run in order and each to its end on the storage's loop, even when the caller stops waiting (it is
    cancelled: a gateway stopping): a database connection is never used by two steps at once, and leaving
    always closes the transaction (else it would keep its row locks).
    """

    def __init__(self, storage: OwnLoopStorage, inner: ports.UnitOfWork) -> None:
        self._storage, self._inner = storage, inner
        self._last: concurrent.futures.Future[Any] | None = None
        # the repositories
        for name in ("accounts", "meters", "payments", "commands", "ledger", "outbox", "notices", "fleet", "alarms"):
            setattr(self, name, _Forward(self, getattr(inner, name, None)))

    def step(self, coroutine: Coroutine[Any, Any, T]) -> Awaitable[T]:
        previous = self._last

        async def in_order() -> T:
            if previous is not None:
                with contextlib.suppress(BaseException):  # (its own caller had its outcome)
                    await asyncio.wrap_future(previous)
            return await coroutine

        self._last = asyncio.run_coroutine_threadsafe(in_order(), self._storage.loop)
        return asyncio.shield(asyncio.wrap_future(self._last))

    async def __aenter__(self) -> Self:
        await self.step(self._inner.__aenter__())
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.step(self._inner.__aexit__(*exc_info))

    async def commit(self) -> None:
        await self.step(self._inner.commit())

    async def execute(self, statement: Any, params: Any = None) -> Any:
        """A statement of the inner (SQLAlchemy) unit of work; its result is buffered (for tests and tools)."""
        return await self.step(self._inner.execute(statement, params))  # type: ignore[attr-defined]

    async def limiter(self) -> dict[str, Any] | None:
        return await self.step(self._inner.limiter())

    async def ensure_limiter(self) -> None:
        await self.step(self._inner.ensure_limiter())

    async def add_outbox(self, topic: str, payload: dict[str, Any], now: dt.datetime) -> None:
        await self.step(self._inner.add_outbox(topic, payload, now))

    async def audit(self, actor: str, action: str, target: str | None, detail: dict[str, Any] | None,
                    now: dt.datetime) -> None:
        await self.step(self._inner.audit(actor, action, target, detail, now))

    async def api_keys(self) -> list[tuple[str, str, str, list[str] | None]]:
        return await self.step(self._inner.api_keys())

    async def put_api_key(self, name: str, sha256: str, role: str, sources: list[str] | None,
                          now: dt.datetime) -> None:
        await self.step(self._inner.put_api_key(name, sha256, role, sources, now))

    async def write_batch(self, changes: BatchChanges) -> None:
        await self.step(self._inner.write_batch(changes))
