"""The circuit breaker of a bus: how long a failing meter waits before it is tried again, the share of the bus's
time that retries of failing meters may take (the failure budget), and a bus that fails as a whole.

A meter that fails backs off: after the k-th failure in a row it is tried again after
``min(base * 2 ** (k - 1), cap)`` with ``base = max(poll interval, backoff_base_s)``, so a dead meter costs its
bus at most one timeout per backoff period. Retries of failing meters share a budget: at most
``failure_budget`` of the bus's time over the last minute; a retry beyond it is deferred. A bus that fails as a
whole (the endpoint refuses connections, or several meters in a row stop answering) is down: one probe per bus
backoff period (0.5 s doubling up to ``bus_backoff_cap_s``); the first answer brings it back.
"""

from __future__ import annotations

import collections
import logging

from drivers.errors import ConnectError, DriverError, TransportError

__all__ = ["BUDGET_WINDOW_S", "Breaker"]

log = logging.getLogger(__name__)

BUDGET_WINDOW_S = 60  # the failure budget is a share of the bus's time over this window
_BUS_DOWN_AFTER = 5  # distinct meters failing in a row (no answer in between) that mean the bus is down


class Breaker:
    """Backoff of failing meters, the failure budget and the bus's own state, for one bus of ``meters`` meters."""

    def __init__(self, bus_id: str, *, meters: int, backoff_base_s: float = 10.0, backoff_cap_s: float = 300.0,
                 bus_backoff_cap_s: float = 30.0, failure_budget: float = 0.05) -> None:
        self.bus_id, self.meters = bus_id, meters
        self.backoff_base_s, self.backoff_cap_s = backoff_base_s, backoff_cap_s
        self.bus_backoff_cap_s, self.failure_budget = bus_backoff_cap_s, failure_budget
        self.down = False
        self.error = ""
        self._bus_failures = 0
        self._retry_at = 0.0
        self._failing: set[str] = set()  # meters that failed since the bus last answered
        self._failed_time: collections.deque[tuple[int, float]] = collections.deque()  # (second, seconds)
        self._failed_total = 0.0

    # --- meters ---------------------------------------------------------------------------------------------
    def resize(self, meters: int) -> None:
        """The bus now has ``meters`` meters (one joined or left while it runs)."""
        self.meters = meters

    def forget(self, meter_id: str) -> None:
        """A meter left the bus: its failures no longer say anything about the bus."""
        self._failing.discard(meter_id)

    def backoff(self, interval: float, failures: int) -> float:
        """How long a meter polled every ``interval`` waits after its ``failures``-th failure in a row."""
        base = max(interval, self.backoff_base_s)
        return min(base * 2 ** min(failures - 1, 30), max(self.backoff_cap_s, interval))

    def spend(self, seconds: float, now: float) -> None:
        """A failed poll took ``seconds`` of the bus."""
        second = int(now)
        if self._failed_time and self._failed_time[-1][0] == second:
            self._failed_time[-1] = (second, self._failed_time[-1][1] + seconds)
        else:
            self._failed_time.append((second, seconds))
        self._failed_total += seconds

    def failing_share(self, now: float) -> float:
        """Share of the bus's time that failed polls took over the budget window."""
        horizon = int(now) - BUDGET_WINDOW_S
        while self._failed_time and self._failed_time[0][0] <= horizon:
            self._failed_total -= self._failed_time.popleft()[1]
        return max(self._failed_total, 0.0) / BUDGET_WINDOW_S

    def within_budget(self, retry_cost_s: float, now: float) -> bool:
        """Whether a retry that may cost ``retry_cost_s`` fits in the failure budget."""
        return self.failing_share(now) + retry_cost_s / BUDGET_WINDOW_S <= self.failure_budget

    # --- the bus --------------------------------------------------------------------------------------------
    def waiting(self, now: float) -> bool:
        """The bus is down and not due for a probe: polls fail without touching it."""
        return self.down and now < self._retry_at

    def answered(self) -> None:
        """A meter answered: the bus works."""
        self._failing.clear()
        if self.down:
            log.info("bus %s is back", self.bus_id)
        self.down, self._bus_failures, self.error = False, 0, ""

    def failed(self, meter_id: str, exc: DriverError, now: float) -> None:
        """A poll of ``meter_id`` failed with ``exc``: is the whole bus failing?"""
        if not isinstance(exc, TransportError):
            self._failing.clear()  # the meter answered (an error): the bus works
            return
        self._failing.add(meter_id)
        whole_bus = isinstance(exc, ConnectError) or (
            self.meters > 1 and len(self._failing) >= min(_BUS_DOWN_AFTER, self.meters))
        if not whole_bus:
            return
        if not self.down:
            log.warning("bus %s is down: %s", self.bus_id, exc)
        self.down = True
        self._bus_failures += 1
        self.error = str(exc)
        self._retry_at = now + min(0.5 * 2 ** min(self._bus_failures - 1, 30), self.bus_backoff_cap_s)
