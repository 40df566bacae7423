"""Time for the service layer, passed in: wall time in UTC, a monotonic reading, and waiting.

The scheduler, the relay runner and the writer take a ``Clock``; the gateway gives them ``SystemClock``, tests a
fake one (``tests/fakes.py``) that moves only when the test says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time

__all__ = ["Clock", "SystemClock", "wait_event"]


class Clock:
    """The port: what the service layer needs of time."""

    def now(self) -> dt.datetime:
        """Aware UTC now."""
        raise NotImplementedError("The 'now' method must be implemented.")

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (for intervals and deadlines)."""
        raise NotImplementedError("The 'monotonic' method must be implemented.")

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of this clock."""
        raise NotImplementedError("The 'sleep' method must be implemented.")

    async def wait(self, event: asyncio.Event, timeout: float | None) -> bool:
        """Wait until ``event`` is set (True) or ``timeout`` seconds of this clock have passed (False)."""
        raise NotImplementedError("The 'wait' method must be implemented.")


class SystemClock(Clock):
    """The real clock."""

    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        # at least 1 ms: event loops with a millisecond clock (uvloop) would wake up early and spin
        await asyncio.sleep(max(seconds, 0.001))

    async def wait(self, event: asyncio.Event, timeout: float | None) -> bool:
        if timeout is None:
            await event.wait()
            return True
        return await wait_event(event, max(timeout, 0.001))


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait until ``event`` is set or ``timeout`` seconds pass; returns whether it is set.

    Not ``asyncio.wait_for``: on Python 3.11 it loses a cancellation that arrives as the event is set (it
    returns the result instead, python/cpython#86296), and a loop waiting so would never stop.
    ``asyncio.timeout`` keeps it."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()
    return event.is_set()
