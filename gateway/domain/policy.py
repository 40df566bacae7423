"""Site-wide policy for the balance engine, and the site's automatic-disconnect rate limiter.

``SitePolicy`` is static configuration (time zone, friendly windows, holidays, notice period, staleness limit,
overdraft by credit class, emergency credit). ``RateLimiter`` is the one piece of site-wide *state* the engine
needs: the times of the recent automatic disconnects. The service either persists ``limiter.state_dict()`` (one
row per site, locked while accounts are evaluated) or rebuilds it for each evaluation from the automatic
disconnect decisions of the last window (``RateLimiter(limit, recent=[...])``); both are equivalent.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from gateway.domain.calendar import FriendlyWindow, HolidayCalendar
from gateway.domain.timeutil import from_iso, to_iso

__all__ = ["CREDIT_CLASSES", "DEFAULT_CREDIT_CLASSES", "RateLimiter", "SitePolicy"]

CREDIT_CLASSES = ("AAA", "AA", "A", "B", "C", "D")
# Overdraft allowed (fen) by credit class: the disconnect point is -overdraft. Configurable per site.
DEFAULT_CREDIT_CLASSES: Mapping[str, int] = {"AAA": 20_000, "AA": 10_000, "A": 5_000, "B": 2_000, "C": 0, "D": 0}


@dataclass(frozen=True, slots=True)
class SitePolicy:
    """What the engine needs to know about the site. Defaults follow DESIGN.md §7."""

    tz: ZoneInfo = field(default_factory=lambda: ZoneInfo("Asia/Shanghai"))
    friendly_windows: tuple[FriendlyWindow, ...] = ()
    holidays: HolidayCalendar = field(default_factory=HolidayCalendar)
    notice_period: dt.timedelta = dt.timedelta(hours=24)  # after the final warning; zero disables
    # The notice period runs from the final warning's delivery (notices on): no automatic disconnect before it
    # was delivered; past ``notice_delivery_timeout`` without delivery the staff are told (and it still waits).
    notice_delivery: bool = False
    notice_delivery_timeout: dt.timedelta = dt.timedelta(hours=1)
    stale_after: dt.timedelta | None = dt.timedelta(minutes=5)  # None: staleness is judged by the caller only
    max_auto_disconnects_per_minute: int | None = 10  # None: no limit
    rate_window: dt.timedelta = dt.timedelta(minutes=1)
    credit_classes: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_CREDIT_CLASSES))
    emergency_credit_fen: int = 1_000
    emergency_credit_period: str = "monthly"  # once per monthly | yearly period (site's local calendar)

    def overdraft_for(self, credit_class: str) -> int:
        """The overdraft allowed for a credit class ("" means none); an unknown class is an error."""
        if not credit_class:
            return 0
        try:
            return self.credit_classes[credit_class]
        except KeyError:
            raise ValueError(f"unknown credit class {credit_class!r} "
                             f"(known: {', '.join(self.credit_classes)})") from None

    def limiter(self, state: Mapping[str, Any] | None = None) -> RateLimiter:
        """A rate limiter for this site, from its persisted state (or empty)."""
        return RateLimiter.from_state(state or {}, limit=self.max_auto_disconnects_per_minute,
                                      window=self.rate_window)


@dataclass(slots=True)
class RateLimiter:
    """At most ``limit`` automatic disconnects per ``window`` per site (a sliding window)."""

    limit: int | None
    window: dt.timedelta = dt.timedelta(minutes=1)
    recent: list[dt.datetime] = field(default_factory=list)

    def _prune(self, now: dt.datetime) -> None:
        self.recent = sorted(t for t in self.recent if now - self.window < t <= now)

    def allows(self, now: dt.datetime) -> bool:
        self._prune(now)
        return self.limit is None or len(self.recent) < self.limit

    def record(self, now: dt.datetime) -> None:
        self.recent.append(now)

    def free_at(self, now: dt.datetime) -> dt.datetime | None:
        """When the next automatic disconnect will be allowed (None: now, or never when the limit is 0)."""
        if self.allows(now):
            return None
        assert self.limit is not None
        if self.limit == 0:
            return None  # automatic disconnects are switched off at this site
        return self.recent[len(self.recent) - self.limit] + self.window

    def state_dict(self) -> dict[str, Any]:
        return {"recent": [to_iso(t) for t in self.recent]}

    @classmethod
    def from_state(cls, state: Mapping[str, Any], *, limit: int | None,
                   window: dt.timedelta = dt.timedelta(minutes=1)) -> RateLimiter:
        recent = [from_iso(t) for t in state.get("recent", [])]
        return cls(limit, window, [t for t in recent if t is not None])
