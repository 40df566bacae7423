"""How far a reader of the outbox has looked at its events: the newest id seen and the ids skipped below it.
Used by every reader that goes through the outbox by id: the alarm keeper (``gateway.service.alarms``), the
outbox relay (``gateway.service.outbox_relay``) and the notice planner (``gateway.service.notices``)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

__all__ = ["HOLE_LOOKUP", "Cursor"]

HOLE_LOOKUP = 500  # the most holes looked for in one read (the query stays one IN list or two)


@dataclass(slots=True)
class Cursor:
    """How far a reader has looked at the outbox: every event up to ``high`` but the ``holes``.

    On PostgreSQL an event's id is taken when it is written, not when its transaction commits: an id below one
    already seen may still come (a transaction in flight), or never (rolled back). Such ids are kept as holes,
    looked for again, and given up ``hole_wait`` after they were first missed. SQLite commits in id order: no
    holes there. ``done``: every event up to it has been looked at (the pruning keeps the events above it).
    """

    high: int = 0
    holes: dict[int, str] = field(default_factory=dict)  # id -> when it was first missed (ISO 8601)

    @classmethod
    def load(cls, state: dict[str, Any] | None) -> Cursor:
        if not state:
            return cls()
        return cls(int(state.get("high", 0)), {int(i): str(at) for i, at in state.get("holes", [])})

    def state(self) -> dict[str, Any]:
        return {"high": self.high, "done": self.done, "holes": [[i, at] for i, at in sorted(self.holes.items())]}

    @property
    def done(self) -> int:
        return min(self.holes) - 1 if self.holes else self.high

    def copy(self) -> Cursor:
        return Cursor(self.high, dict(self.holes))

    def missing(self, most: int = HOLE_LOOKUP) -> list[int]:
        """The holes to look for in the next read: the first ``most`` missed (the others wait for a later read,
        or expire)."""
        return list(self.holes)[:most]

    def take(self, ids: list[int], now: dt.datetime, *, holes: bool, hole_wait: dt.timedelta,
             max_gap: int = 1_000, max_holes: int = 10_000) -> None:
        """The events ``ids`` were looked at (new ones, and holes that came)."""
        for i in ids:
            self.holes.pop(i, None)
        new = sorted(i for i in ids if i > self.high)
        if holes:
            at, previous = now.isoformat(), self.high
            for i in new:
                if 1 < i - previous <= max_gap:  # (a larger gap: pruned long ago, not a transaction in flight)
                    for missing in range(previous + 1, i):
                        self.holes.setdefault(missing, at)
                previous = i
        if new:
            self.high = new[-1]
        oldest = (now - hole_wait).isoformat()
        self.holes = {i: at for i, at in self.holes.items() if at > oldest}
        if len(self.holes) > max_holes:
            self.holes = dict(sorted(self.holes.items())[-max_holes:])
