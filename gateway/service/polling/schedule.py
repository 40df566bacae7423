"""When each meter of a bus is polled: staggered over its interval, in order of due time, never queued up.

A poll that comes due while the previous one of the same meter has not finished is skipped and counted; a meter
that fell behind skips its missed slots instead of catching up in a burst.
"""

from __future__ import annotations

import heapq

from gateway.service.polling.health import MeterHealth

__all__ = ["PollSchedule"]


class PollSchedule:
    """The due times of one bus's meters (a heap)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, str]] = []

    def stagger(self, meters: list[MeterHealth], start: float) -> None:
        """Spread the first polls of ``meters`` over their interval from ``start``."""
        self._heap.clear()
        n = max(len(meters), 1)
        for i, meter in enumerate(meters):
            meter.due = start + meter.interval * i / n
            self._heap.append((meter.due, meter.meter_id))
        heapq.heapify(self._heap)

    def __bool__(self) -> bool:
        return bool(self._heap)

    def next_due(self) -> tuple[float, str]:
        """The earliest (due time, meter id)."""
        return self._heap[0]

    def pop(self) -> str:
        return heapq.heappop(self._heap)[1]

    def at(self, meter: MeterHealth, due: float) -> None:
        """Poll ``meter`` next at ``due``."""
        meter.due = due
        heapq.heappush(self._heap, (due, meter.meter_id))

    def next_slot(self, meter: MeterHealth, now: float) -> int:
        """Schedule ``meter``'s next regular poll; returns how many slots it missed (skipped, not made up)."""
        due = meter.due + meter.interval
        missed = 0
        if due < now:
            missed = int((now - due) // meter.interval) + 1
            due += missed * meter.interval
        self.at(meter, due)
        return missed
