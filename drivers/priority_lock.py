"""A lock with two classes of waiters: urgent ones go before normal ones.

On a bus, relay commands are urgent and polls normal.

A driver takes the lock once per transaction, so an urgent caller waits at most for the transaction in flight,
even when a normal caller is in the middle of a multi-request ``read``. Whether the current task is urgent is a
context variable, set with ``urgent()``; the bus scheduler wraps its relay command steps in it. Nothing here is
specific to a protocol (a DL/T 645 driver can use it the same way); the gateway also uses it for SQLite's single
write slot, where short transactions pass ``urgent=True`` explicitly.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections import deque
from collections.abc import Iterator

__all__ = ["PriorityLock", "is_urgent", "urgent"]

_URGENT: contextvars.ContextVar[bool] = contextvars.ContextVar("drivers.urgent", default=False)


@contextlib.contextmanager
def urgent() -> Iterator[None]:
    """Transactions started inside this block (in this task) go ahead of normal ones waiting for the bus."""
    token = _URGENT.set(True)
    try:
        yield
    finally:
        _URGENT.reset(token)


def is_urgent() -> bool:
    """Whether the current task is inside ``urgent()``."""
    return _URGENT.get()


class PriorityLock:
    """An asyncio lock where urgent waiters are served first, then normal ones, each in arrival order."""

    def __init__(self) -> None:
        self._held = False
        self._urgent: deque[asyncio.Future[None]] = deque()
        self._normal: deque[asyncio.Future[None]] = deque()

    @property
    def locked(self) -> bool:
        return self._held

    @property
    def waiting(self) -> int:
        return len(self._urgent) + len(self._normal)

    def try_acquire(self) -> bool:
        """Take the lock if it is free and nobody waits (no await: the common case costs nothing)."""
        if self._held or self._urgent or self._normal:
            return False
        self._held = True
        return True

    async def acquire(self, *, urgent: bool | None = None) -> None:
        """Take the lock; ``urgent`` overrides the task's ``urgent()`` context when given."""
        if not self._held and not self._urgent and not self._normal:
            self._held = True
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self._urgent if (_URGENT.get() if urgent is None else urgent) else self._normal
        queue.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # it was handed to us as we were cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):
                    queue.remove(waiter)
            raise

    def release(self) -> None:
        if not self._held:
            raise RuntimeError("release of an unlocked PriorityLock")
        for queue in (self._urgent, self._normal):
            while queue:
                waiter = queue.popleft()
                if not waiter.done():
                    waiter.set_result(None)  # ownership passes straight to the waiter
                    return
        self._held = False

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()
