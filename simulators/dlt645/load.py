"""A minimal load model for the DL/T 645 simulator: power from a seeded daily profile, energy per tariff rate.

Internal stand-in: the shared protocol-independent meter model (simulators/meter.py, simulators/loadprofile.py)
was not available when this was written. It only needs ``power_w(now)`` and ``rate(now)``.
"""

from __future__ import annotations

import datetime as dt
import math
import random
from dataclasses import dataclass

__all__ = ["DailyLoad", "tou_rate"]

# 尖 1, 峰 2, 平 3, 谷 4 by local hour: a typical Chinese time-of-use split (illustrative, not a tariff).
_RATE_BY_HOUR = (4,) * 8 + (2,) * 3 + (3,) * 6 + (2,) * 2 + (1,) * 2 + (2,) + (3,) + (4,)


def tou_rate(local: dt.datetime) -> int:
    """Tariff rate 1..4 for a local wall time."""
    return _RATE_BY_HOUR[local.hour]


@dataclass
class DailyLoad:
    """Household-like load: base + evening peak + seeded jitter, in watts. Deterministic for a seed."""

    base_w: float = 300.0
    peak_w: float = 1500.0
    jitter: float = 0.1
    seed: int = 0

    @classmethod
    def seeded(cls, seed: int) -> DailyLoad:
        rng = random.Random(seed)
        return cls(base_w=rng.uniform(150, 600), peak_w=rng.uniform(500, 2500), jitter=0.1, seed=seed)

    def power_w(self, local: dt.datetime) -> float:
        hours = local.hour + local.minute / 60
        evening = math.exp(-(((hours - 19.5) / 2.5) ** 2))  # bell around 19:30
        # deterministic jitter per minute, so repeated reads within a minute agree
        rng = random.Random(hash((self.seed, local.toordinal(), local.hour, local.minute)))
        return max(0.0, (self.base_w + self.peak_w * evening) * (1 + rng.uniform(-self.jitter, self.jitter)))
