"""What a bus reports for metrics and the health endpoint: counters since it started, and figures over the last
few seconds (polls per second, the largest lag, whether polls are being skipped), and the figures of a bus made of
them (``bus_figures``: of the meters on the bus now; the counters go on when meters come and go)."""

from __future__ import annotations

import collections
import logging
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from gateway.service.polling.breaker import Breaker
from gateway.service.polling.health import MeterHealth

__all__ = ["WINDOW_S", "BusStats", "Rates", "bus_figures"]

log = logging.getLogger(__name__)

WINDOW_S = 10  # seconds over which rates, the largest lag and overload are reported


@dataclass(slots=True)
class BusStats:
    """Counters of one bus since it started."""

    polls: int = 0  # successful polls
    failures: int = 0  # failed polls (with or without a transaction on the bus)
    skipped: int = 0  # polls not made because the previous one had not finished in time (overrun)
    commands: int = 0  # relay commands written to the bus
    record_errors: int = 0  # readings the writer could not record
    deferred_retries: int = 0  # retries of failing meters put off to keep within the failure budget


class Rates:
    """Per-second buckets of polls, the lag of polls behind their due time, and overload (skipped polls)."""

    def __init__(self, bus_id: str, started: float) -> None:
        self.bus_id, self.started = bus_id, started
        self._polls: collections.deque[tuple[int, int]] = collections.deque(maxlen=WINDOW_S + 1)
        self._lag_max: collections.deque[tuple[int, float]] = collections.deque(maxlen=WINDOW_S + 1)
        self.lag_ewma = 0.0
        self._last_skip = -1e9
        self._overload_logged = False

    def poll(self, now: float) -> None:
        second = int(now)
        if self._polls and self._polls[-1][0] == second:
            self._polls[-1] = (second, self._polls[-1][1] + 1)
        else:
            self._polls.append((second, 1))

    def per_second(self, now: float) -> float:
        second = int(now)
        if now - self.started >= WINDOW_S:
            return sum(n for s, n in self._polls if second - WINDOW_S <= s < second) / WINDOW_S
        return sum(n for _, n in self._polls) / max(now - self.started, 1e-3)

    def lag(self, lag: float, now: float) -> None:
        lag = max(lag, 0.0)
        self.lag_ewma += 0.05 * (lag - self.lag_ewma)
        second = int(now)
        if self._lag_max and self._lag_max[-1][0] == second:
            if lag > self._lag_max[-1][1]:
                self._lag_max[-1] = (second, lag)
        else:
            self._lag_max.append((second, lag))
        if self._overload_logged and now - self._last_skip >= WINDOW_S:
            log.info("bus %s keeps up again", self.bus_id)
            self._overload_logged = False

    def max_lag(self, now: float) -> float:
        return max((lag for s, lag in self._lag_max if s >= int(now) - WINDOW_S), default=0.0)

    def skip(self, now: float) -> None:
        if now - self._last_skip >= WINDOW_S and not self._overload_logged:
            log.warning("bus %s is overloaded: polls are due faster than the bus answers; skipping, not queueing",
                        self.bus_id)
            self._overload_logged = True
        self._last_skip = now

    def overloaded(self, now: float) -> bool:
        return now - self._last_skip < WINDOW_S


def bus_figures(bus_id: str, meters: Collection[MeterHealth], counters: BusStats, rates: Rates, breaker: Breaker, *,
                pending: int, stale_after_s: float, now: float) -> dict[str, Any]:
    """Counters and gauges of one bus's polling, for metrics and the health endpoint."""
    states = collections.Counter(m.state for m in meters)
    stale = sum(1 for m in meters
                if now - (m.last_success if m.last_success is not None else rates.started) > stale_after_s)
    c = counters
    return {
        "bus": bus_id,
        "state": "down" if breaker.down else "up",
        "last_bus_error": breaker.error or None,
        "meters": len(meters),
        "demand_polls_per_s": round(sum(1 / m.interval for m in meters), 3),
        "polls_per_s": round(rates.per_second(now), 3),
        "polls": c.polls, "failures": c.failures, "skipped": c.skipped, "commands": c.commands,
        "record_errors": c.record_errors, "deferred_retries": c.deferred_retries,
        "failing_share": round(breaker.failing_share(now), 4),
        "overloaded": rates.overloaded(now),
        "lag_s": round(rates.lag_ewma, 4),
        "max_lag_s": round(rates.max_lag(now), 4),
        "pending_readings": pending,
        "online": states.get("online", 0), "degraded": states.get("degraded", 0),
        "offline": states.get("offline", 0), "unknown": states.get("unknown", 0),
        "stale": stale,
    }
