"""Seeded household load profiles: power in W as a function of simulated time. Pure: no clock, no I/O.

A profile is a base load plus a daily shape (a morning and an evening peak, in local time) times a noise
factor. Power is constant within a slot (60 s by default) so energy integrates exactly and cheaply, and the
same ``(seed, index)`` gives the same watts in every process and on every run.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["LoadProfile", "unit_random"]

_MASK = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def unit_random(*keys: int) -> float:
    """A deterministic number in [0, 1) from integer keys (a hash, not a generator: no state)."""
    x = 0
    for key in keys:
        x = _splitmix64(x ^ (key & _MASK))
    return (x >> 11) / float(1 << 53)


def _bump(hour: float, centre: float, width: float) -> float:
    distance = min(abs(hour - centre), 24 - abs(hour - centre))  # the day wraps around
    return math.exp(-0.5 * (distance / width) ** 2)


@dataclass(frozen=True, slots=True)
class LoadProfile:
    """Power over time for one simulated meter.

    Args:
        base_w: load that is always on (fridge, standby).
        peak_w: extra load at the evening peak.
        noise: relative noise, power is multiplied by a factor in [1 - noise, 1 + noise].
        seed, index: select the noise sequence (fleet seed and meter index).
        shift_h: hours the daily shape is shifted by (households differ).
        slot_s: seconds of constant power; divides 3600 so that a slot never spans two hours.
        utc_offset_s: local time of the daily shape (default UTC+8, Asia/Shanghai).
    """

    base_w: float = 200.0
    peak_w: float = 1500.0
    noise: float = 0.2
    seed: int = 0
    index: int = 0
    shift_h: float = 0.0
    slot_s: int = 60
    utc_offset_s: int = 8 * 3600

    def __post_init__(self) -> None:
        if self.slot_s <= 0 or 3600 % self.slot_s:
            raise ValueError("slot_s must divide 3600")
        if not 0 <= self.noise < 1 or self.base_w < 0 or self.peak_w < 0:
            raise ValueError("noise must be in [0, 1) and loads not negative")

    @classmethod
    def seeded(cls, seed: int, index: int) -> LoadProfile:
        """A household drawn from ``(seed, index)``: 80-400 W base, 0.4-3 kW peak, shifted up to +-1.5 h."""
        return cls(
            base_w=80 + 320 * unit_random(seed, index, 1),
            peak_w=400 + 2600 * unit_random(seed, index, 2),
            shift_h=3 * unit_random(seed, index, 3) - 1.5,
            seed=seed,
            index=index,
        )

    def shape(self, hour: float) -> float:
        """Daily shape in [0, 1] at a local hour of day."""
        hour = (hour - self.shift_h) % 24
        return min(1.0, 0.5 * _bump(hour, 7.5, 1.2) + _bump(hour, 19.5, 1.8) + 0.1 * _bump(hour, 12.5, 1.5))

    def slot_power_w(self, slot: int) -> float:
        """Power during slot number ``slot`` (slot k covers [k * slot_s, (k + 1) * slot_s) UNIX seconds)."""
        middle = (slot + 0.5) * self.slot_s + self.utc_offset_s
        hour = (middle % 86400) / 3600
        factor = 1 + self.noise * (2 * unit_random(self.seed, self.index, slot) - 1)
        return (self.base_w + self.peak_w * self.shape(hour)) * factor

    def power_w(self, t: float) -> float:
        """Power at UNIX time ``t`` (simulated)."""
        return self.slot_power_w(math.floor(t / self.slot_s))

    def segments(self, t0: float, t1: float) -> Iterator[tuple[float, float, float]]:
        """``(start, end, watts)`` pieces of constant power covering [t0, t1)."""
        start = t0
        while start < t1:
            slot = math.floor(start / self.slot_s)
            end = min(t1, (slot + 1) * self.slot_s)
            if end <= start:  # float rounding at a slot edge
                end = min(t1, start + self.slot_s)
            yield start, end, self.slot_power_w(slot)
            start = end
