"""A simulated prepaid meter, independent of any protocol: energy, rates, power, relay, balance, tamper flags.

Energy is integrated lazily from the load profile whenever something is read or changed, so a fleet of
thousands of meters needs no task per meter. Time is simulated: a ``SimClock`` runs ``speed`` simulated
seconds per real second (start = the wall clock, so the daily load shape follows the time of day).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from typing import Protocol

from simulators.loadprofile import LoadProfile, unit_random

__all__ = [
    "Clock",
    "ManualClock",
    "RATE_BY_HOUR",
    "SimClock",
    "SimulatedMeter",
]

# Time-of-use rate per local hour, as an index 0..3 = rates 1..4 (sharp 尖, peak 峰, flat 平, valley 谷).
RATE_BY_HOUR: tuple[int, ...] = (
    (3,) * 7  # 00-06 valley
    + (2, 1, 1, 0, 1)  # 07 flat, 08-09 peak, 10 sharp, 11 peak
    + (2,) * 5  # 12-16 flat
    + (1, 1, 0, 0, 1, 2, 3)  # 17-18 peak, 19-20 sharp, 21 peak, 22 flat, 23 valley
)
# How a meter's starting energy is spread over the rates.
_START_SPLIT = (0.1, 0.3, 0.35, 0.25)


class Clock(Protocol):
    """Simulated UNIX time; ``speed`` = simulated seconds per real second."""

    speed: float

    def now(self) -> float: ...


class SimClock:
    """Simulated time starting at ``start`` (default: now) and running ``speed`` times real time."""

    def __init__(
        self,
        *,
        speed: float = 1.0,
        start: float | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.speed = speed
        self._monotonic = monotonic
        self._real0 = monotonic()
        self._sim0 = time.time() if start is None else start

    def now(self) -> float:
        return self._sim0 + (self._monotonic() - self._real0) * self.speed


class ManualClock:
    """A clock that moves only when told to (unit tests)."""

    def __init__(self, start: float = 0.0, *, speed: float = 1.0) -> None:
        self.t = start
        self.speed = speed

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class SimulatedMeter:
    """One simulated meter.

    Args:
        profile: the load profile (watts over simulated time).
        clock: simulated time, shared by a fleet.
        energy_wh: the register value at start.
        relay_closed: the contact state at start.
        trip_delay_s: real seconds between an OPEN command and the contact opening.
        nominal_voltage_v: mains voltage (a small deterministic ripple is added).
    """

    def __init__(
        self,
        profile: LoadProfile,
        *,
        clock: Clock,
        energy_wh: float = 0.0,
        relay_closed: bool = True,
        trip_delay_s: float = 0.0,
        nominal_voltage_v: float = 230.0,
    ) -> None:
        self.profile = profile
        self.clock = clock
        self.trip_delay_s = trip_delay_s
        self.nominal_voltage_v = nominal_voltage_v
        self.frequency_hz = 50.0
        self.balance_fen = 0  # the meter's own prepaid balance, where a model exposes one
        self._t = clock.now()
        self._by_rate = [energy_wh * share for share in _START_SPLIT]
        self._closed = self._commanded = relay_closed
        self._open_at: float | None = None  # simulated time a pending trip takes effect
        self._override_w: float | None = None
        self._power_slot: tuple[int, float] = (-1, 0.0)  # (slot, watts): a server reads power many times a slot
        self._voltage_slot: tuple[int, float] = (-1, 0.0)
        self._frozen = False
        self.tamper: frozenset[str] = frozenset()  # tamper flags of the meter itself (``set_tamper``)
        # tamper flags the fleet's fault plan raises (cover-open...), set by the server before each answer
        self.tamper_injected: frozenset[str] = frozenset()

    # -- state, brought up to date on every read ---------------------------------------------------------
    @property
    def energy_wh(self) -> int:
        """Cumulative import energy (Wh, rounded down like a register)."""
        self._advance()
        return math.floor(sum(self._by_rate))

    @property
    def energy_wh_by_rate(self) -> tuple[int, ...]:
        """Import energy per time-of-use rate 1..4 (Wh)."""
        self._advance()
        return tuple(math.floor(e) for e in self._by_rate)

    def energy_wh_rate(self, rate: int) -> int:
        """Import energy of one time-of-use rate, 1..4 (Wh)."""
        self._advance()
        return math.floor(self._by_rate[rate - 1])

    @property
    def power_w(self) -> float:
        """Active power now (0 while the relay is open)."""
        self._advance()
        if not self._closed:
            return 0.0
        if self._override_w is not None:
            return self._override_w
        slot = math.floor(self._t / self.profile.slot_s)
        if self._power_slot[0] != slot:
            self._power_slot = (slot, self.profile.slot_power_w(slot))
        return self._power_slot[1]

    @property
    def voltage_v(self) -> float:
        slot = math.floor(self._t / 60)
        if self._voltage_slot[0] != slot:
            ripple = 2 * unit_random(self.profile.seed, self.profile.index, -slot) - 1
            self._voltage_slot = (slot, self.nominal_voltage_v * (1 + 0.01 * ripple))
        return self._voltage_slot[1]

    @property
    def current_a(self) -> float:
        return self.power_w / self.voltage_v

    @property
    def relay_closed(self) -> bool:
        """The actual contact state."""
        self._advance()
        return self._closed

    @property
    def tamper_flags(self) -> frozenset[str]:
        """The tamper flags the meter reports (``cover_open``, ``terminal_cover_open``)."""
        return self.tamper | self.tamper_injected if self.tamper_injected else self.tamper

    @property
    def relay_commanded_closed(self) -> bool:
        """The state last commanded (differs from ``relay_closed`` during a trip delay)."""
        return self._commanded

    # -- what a protocol server or a test can do ------------------------------------------------------------
    def set_relay(self, closed: bool) -> None:
        """Command the relay: close at once, open after ``trip_delay_s``."""
        self._advance()
        self._commanded = closed
        if closed:
            self._closed, self._open_at = True, None
        elif not self._closed or self._open_at is not None:
            return
        elif self.trip_delay_s > 0:
            self._open_at = self._t + self.trip_delay_s * self.clock.speed
        else:
            self._closed = False

    def set_tamper(self, flag: str, on: bool = True) -> None:
        """Raise (``on``) or clear one tamper flag, e.g. ``cover_open`` (the cover is opened, then closed)."""
        self.tamper = self.tamper | {flag} if on else self.tamper - {flag}

    def set_power_w(self, watts: float | None) -> None:
        """Hold the load at ``watts`` from now on (None: back to the profile). Negative watts (export) show as
        the power reading but add nothing to the import energy counter, which never runs backwards."""
        self._advance()
        self._override_w = watts

    def set_energy_wh(self, energy_wh: float) -> None:
        """Set the counter (a meter replacement or a counter reset); rates restart in the usual split."""
        self._advance()
        self._by_rate = [energy_wh * share for share in _START_SPLIT]

    # -- a consistent view ----------------------------------------------------------------------------------
    def freeze(self) -> None:
        """Bring the meter up to date and hold its time until ``thaw``: a server answering one request reads
        every register at the same instant (and integrates once instead of once per register)."""
        self._frozen = False
        self._advance()
        self._frozen = True

    def thaw(self) -> None:
        self._frozen = False

    # -- integration ---------------------------------------------------------------------------------------
    def _advance(self) -> None:
        if self._frozen:
            return
        now = self.clock.now()
        if self._open_at is not None and self._open_at <= now:
            self._accumulate(self._t, max(self._t, self._open_at))
            self._t = max(self._t, self._open_at)
            self._closed, self._open_at = False, None
        if now > self._t:
            self._accumulate(self._t, now)
            self._t = now

    def _accumulate(self, t0: float, t1: float) -> None:
        if not self._closed or t1 <= t0:
            return
        offset = self.profile.utc_offset_s
        slot_s = self.profile.slot_s
        slot = math.floor(t0 / slot_s)
        if self._override_w is None and t1 <= (slot + 1) * slot_s:  # the usual case: within one slot
            if self._power_slot[0] != slot:
                self._power_slot = (slot, self.profile.slot_power_w(slot))
            rate = RATE_BY_HOUR[int(((t0 + offset) % 86400) // 3600)]
            self._by_rate[rate] += self._power_slot[1] * (t1 - t0) / 3600
            return
        for start, end, watts in self._pieces(t0, t1):
            rate = RATE_BY_HOUR[int(((start + offset) % 86400) // 3600)]
            self._by_rate[rate] += watts * (end - start) / 3600

    def _pieces(self, t0: float, t1: float) -> Iterator[tuple[float, float, float]]:
        if self._override_w is None:
            yield from self.profile.segments(t0, t1)
            return
        start = t0
        imported = max(0.0, self._override_w)  # export does not count down the import register
        while start < t1:  # split at hour boundaries so that each piece has one rate
            end = min(t1, (math.floor(start / 3600) + 1) * 3600)
            yield start, end, imported
            start = end
