"""Where billing of each meter stands, and which readings are not billed blindly.

A reading lower than the meter's last billed one (reset, replacement, rollover) or a jump beyond the plausible
maximum (contract capacity × elapsed time × margin, plus one register step) is quarantined: the cursor keeps its
baseline, the reading waits in ``cursor.pending`` until an operator accepts it or re-bases the meter.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from gateway.domain.timeutil import from_iso, to_iso

__all__ = ["BACKWARDS", "JUMP", "MAX_ENERGY_WH", "MeterCursor", "PendingReading", "Snapshot", "check_plausible"]

BACKWARDS, JUMP = "backwards", "jump"

# The largest cumulative energy taken: a real meter's register stays below 10^11 Wh (DL/T 645: 99999999.99 kWh);
# 10^12 Wh keeps every charge computed from it far inside 63 bits of fen.
MAX_ENERGY_WH = 10**12


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One cumulative reading: total Wh, the meter's per-rate registers (rates 1..4) when it has them, and time."""

    energy_wh: int
    taken_at: dt.datetime
    rates_wh: tuple[int, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"energy_wh": self.energy_wh, "taken_at": to_iso(self.taken_at),
                "rates_wh": list(self.rates_wh) if self.rates_wh is not None else None}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Snapshot:
        rates = d.get("rates_wh")
        taken_at = from_iso(d["taken_at"])
        assert taken_at is not None
        return cls(int(d["energy_wh"]), taken_at, tuple(int(r) for r in rates) if rates is not None else None)


@dataclass(frozen=True, slots=True)
class PendingReading:
    """A quarantined reading: the first one that didn't add up, why, and the latest reading seen since."""

    reading: Snapshot
    kind: str  # BACKWARDS or JUMP
    reason: str
    latest: Snapshot | None = None  # newest reading that arrived while quarantined (also not billed)

    def to_dict(self) -> dict[str, Any]:
        return {"reading": self.reading.to_dict(), "kind": self.kind, "reason": self.reason,
                "latest": self.latest.to_dict() if self.latest is not None else None}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PendingReading:
        latest = d.get("latest")
        return cls(Snapshot.from_dict(d["reading"]), d["kind"], d["reason"],
                   Snapshot.from_dict(latest) if latest else None)


@dataclass(slots=True)
class MeterCursor:
    """Where billing of one meter stands: the last cumulative energy billed, and when it was read.

    ``max_power_w`` (contract capacity), ``margin``, ``resolution_wh`` and ``rollover_wh`` (the register's
    capacity, e.g. 10**9 Wh for 999999.99 kWh) come from the meter's configuration. ``seen_at`` is the time of
    the newest reading received, billed or not (staleness is judged on it).
    """

    meter_id: str
    energy_wh: int | None = None
    taken_at: dt.datetime | None = None
    max_power_w: int = 60_000
    rates_wh: tuple[int, ...] | None = None
    seen_at: dt.datetime | None = None
    pending: PendingReading | None = None
    margin: float = 1.5
    resolution_wh: int = 10
    rollover_wh: int | None = None

    @property
    def quarantined(self) -> bool:
        return self.pending is not None

    def snapshot(self) -> Snapshot | None:
        if self.energy_wh is None or self.taken_at is None:
            return None
        return Snapshot(self.energy_wh, self.taken_at, self.rates_wh)

    def move_to(self, reading: Snapshot) -> None:
        self.energy_wh, self.taken_at, self.rates_wh = reading.energy_wh, reading.taken_at, reading.rates_wh

    def to_dict(self) -> dict[str, Any]:
        return {"energy_wh": self.energy_wh, "taken_at": to_iso(self.taken_at),
                "rates_wh": list(self.rates_wh) if self.rates_wh is not None else None,
                "seen_at": to_iso(self.seen_at), "max_power_w": self.max_power_w, "margin": self.margin,
                "resolution_wh": self.resolution_wh, "rollover_wh": self.rollover_wh,
                "pending": self.pending.to_dict() if self.pending is not None else None}

    @classmethod
    def from_dict(cls, meter_id: str, d: dict[str, Any]) -> MeterCursor:
        rates, pending = d.get("rates_wh"), d.get("pending")
        return cls(meter_id, d.get("energy_wh"), from_iso(d.get("taken_at")), int(d.get("max_power_w", 60_000)),
                   tuple(rates) if rates is not None else None, from_iso(d.get("seen_at")),
                   PendingReading.from_dict(pending) if pending else None, float(d.get("margin", 1.5)),
                   int(d.get("resolution_wh", 10)), d.get("rollover_wh"))


def check_plausible(cursor: MeterCursor, reading: Snapshot) -> tuple[str, str] | None:
    """``(kind, reason)`` when ``reading`` doesn't add up against the cursor's baseline, else None."""
    assert cursor.energy_wh is not None and cursor.taken_at is not None
    delta = reading.energy_wh - cursor.energy_wh
    if delta < 0:
        return BACKWARDS, f"reading {reading.energy_wh} Wh is below the last billed {cursor.energy_wh} Wh"
    elapsed_h = (reading.taken_at - cursor.taken_at).total_seconds() / 3600
    plausible = int(cursor.max_power_w * elapsed_h * cursor.margin) + cursor.resolution_wh
    if delta > plausible:
        return JUMP, f"jump of {delta} Wh exceeds the plausible {plausible} Wh"
    return None
