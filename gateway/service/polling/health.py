"""Each meter's communication health as its bus sees it (online / degraded / offline, stale), what the relay
runner needs of it (``link``: the times of its last success and last failure), and the writing of failures to
the meters table, off the poll path."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from gateway.domain.relay import MeterLink

__all__ = ["FailureWriter", "MeterHealth"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class MeterHealth:
    """Communication health of one meter."""

    meter_id: str
    interval: float
    due: float = 0.0
    failures: int = 0  # in a row
    state: str = "unknown"  # online / degraded / offline
    last_success: float | None = None  # monotonic
    last_success_at: dt.datetime | None = None  # wall time of the last good answer (a poll or a relay read)
    last_failure_at: dt.datetime | None = None  # wall time of the last failure (a poll, a relay read or send)
    last_error: str | None = None
    pending: bool = False  # a reading of it is in the writer
    polls: int = 0
    tries: int = 0  # polls that used the bus (successful or not)
    busy_s: float = 0.0  # time the bus spent on its polls
    last_failure_s: float = 0.0  # how long its last failed poll took (what its next retry may cost)

    def link(self, *, close_allowed: bool = False) -> MeterLink:
        return MeterLink(self.last_success_at, self.last_failure_at, close_allowed)

    def as_dict(self, now: float, stale_after_s: float, started: float) -> dict[str, Any]:
        since = self.last_success if self.last_success is not None else started
        return {
            "meter_id": self.meter_id,
            "state": self.state,
            "stale": now - since > stale_after_s,
            "consecutive_failures": self.failures,
            "last_success_at": self.last_success_at.isoformat() if self.last_success_at else None,
            "last_error": self.last_error,
            "next_poll_in_s": round(max(0.0, self.due - now), 3),
            "polls": self.polls,
            "tries": self.tries,
            "busy_s": round(self.busy_s, 4),
        }


class FailureWriter:
    """Writes the latest failure of each failing meter to the meters table (``record``), off the poll path."""

    def __init__(self, bus_id: str, record: Callable[..., Awaitable[None]]) -> None:
        self.bus_id, self._record = bus_id, record
        self._queue: dict[str, MeterHealth] = {}
        self._ready = asyncio.Event()

    def failed(self, meter: MeterHealth) -> None:
        self._queue[meter.meter_id] = meter
        self._ready.set()

    def answered(self, meter_id: str) -> None:
        self._queue.pop(meter_id, None)

    def forget(self, meter_id: str) -> None:
        """The meter left the bus: its failure, if not written yet, is not written (its row may be gone)."""
        self._queue.pop(meter_id, None)

    async def run(self) -> None:
        while True:
            await self._ready.wait()
            self._ready.clear()
            while self._queue:
                meter_id, meter = next(iter(self._queue.items()))
                del self._queue[meter_id]
                if meter.failures == 0:
                    continue  # it answered again meanwhile
                try:
                    # the runner decides the health; the service writes it (and the outbox event)
                    await self._record(meter_id, meter.last_error or "failed",
                                       offline_after=1 if meter.state == "offline" else 1 << 30)
                except Exception:
                    log.exception("bus %s: could not record the failure of %s", self.bus_id, meter_id)
