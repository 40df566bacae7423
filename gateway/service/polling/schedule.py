"""When each meter of a bus is polled: staggered over its interval, in order of due time, never queued up.

A poll that comes due while the previous one of the same meter has not finished is skipped and counted; a meter
that fell behind skips its missed slots instead of catching up in a burst.

Meters join and leave while the bus runs. A meter that joins is placed in its interval by a low-discrepancy
sequence (``join``): the first one at once, the next ones in the widest gaps left, so that meters added in bulk
are spread over the interval instead of polled in bursts. A meter that leaves (or is rescheduled) leaves its old
entry in the heap: an entry counts only while its meter is still on the bus with that very due time, and a stale
one is dropped when it comes to the top (lazy deletion), so a change costs O(log n), never a rebuild of the heap.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping

from gateway.service.polling.health import MeterHealth

__all__ = ["PollSchedule"]

_GOLDEN = 0.6180339887498949  # (sqrt(5) - 1) / 2: each new point falls in the widest gap of the earlier ones


class PollSchedule:
    """The due times of the meters on one bus (``meters``, kept by the bus: the meters on it now, by id), a heap
    of (due, meter id) with stale entries dropped lazily."""

    def __init__(self, meters: Mapping[str, MeterHealth]) -> None:
        self.meters = meters
        self._heap: list[tuple[float, str]] = []
        self._joined = 0  # meters placed by ``join`` (the index in the low-discrepancy sequence)

    def stagger(self, meters: list[MeterHealth], start: float) -> None:
        """Spread the first polls of ``meters`` over their interval from ``start``."""
        self._heap.clear()
        n = max(len(meters), 1)
        for i, meter in enumerate(meters):
            meter.due = start + meter.interval * i / n
            self._heap.append((meter.due, meter.meter_id))
        heapq.heapify(self._heap)

    def join(self, meter: MeterHealth, now: float) -> None:
        """Place a meter that joins the running bus: its first poll within one interval from ``now``."""
        offset = (self._joined * _GOLDEN) % 1.0
        self._joined += 1
        self.at(meter, now + meter.interval * offset)

    def __len__(self) -> int:
        """Entries in the heap, stale ones included."""
        return len(self._heap)

    def next_due(self) -> tuple[float, str] | None:
        """The earliest (due time, meter id) of the meters on the bus, or None when there are none; stale entries
        on top (a meter that left, or whose due time changed since) are dropped on the way."""
        heap = self._heap
        while heap:
            if _live(heap[0], self.meters):
                return heap[0]
            heapq.heappop(heap)
        return None

    def pop(self) -> str:
        return heapq.heappop(self._heap)[1]

    def at(self, meter: MeterHealth, due: float) -> None:
        """Poll ``meter`` next at ``due`` (an earlier entry of it becomes stale)."""
        meter.due = due
        heapq.heappush(self._heap, (due, meter.meter_id))
        if len(self._heap) > 2 * len(self.meters) + 64:  # mostly stale: compact once (amortised over the changes)
            self._heap = [entry for entry in self._heap if _live(entry, self.meters)]
            heapq.heapify(self._heap)

    def next_slot(self, meter: MeterHealth, now: float) -> int:
        """Schedule ``meter``'s next regular poll; returns how many slots it missed (skipped, not made up)."""
        due = meter.due + meter.interval
        missed = 0
        if due < now:
            missed = int((now - due) // meter.interval) + 1
            due += missed * meter.interval
        self.at(meter, due)
        return missed


def _live(entry: tuple[float, str], meters: Mapping[str, MeterHealth]) -> bool:
    """An entry counts while its meter is on the bus and due at exactly that time."""
    meter = meters.get(entry[1])
    return meter is not None and meter.due == entry[0]
