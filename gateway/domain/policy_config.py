"""Building a ``SitePolicy`` from configuration data (the shape of a YAML settings file). Pure; raises ValueError.

    timezone: Asia/Shanghai                  # tariffs, billing periods and friendly windows use local time
    notice_period: 24h                       # after the final warning; "0" disables
    stale_after: 5m                          # a meter not heard from for longer blocks automatic disconnects
    max_auto_disconnects_per_minute: 10      # per site; null: no limit; 0: no automatic disconnects
    rate_window: 1m                          # ... counted in a sliding window this long (trips on the wire)
    friendly_windows:
      - {name: night, hours: "20:00-08:00"}                 # every night
      - {name: weekend, days: [weekend]}                    # Sat/Sun, except make-up workdays
      - {name: holiday, days: [holiday]}                    # days in the holiday calendar
    holidays: ["2026-10-01..2026-10-07 国庆节"]             # inline calendar lines (the file format)
    credit_classes: {AAA: "200.00", AA: "100.00", A: "50.00", B: "20.00", C: "0", D: "0"}
    emergency_credit: {amount: "10.00", period: monthly}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from gateway.domain.calendar import DAY_NAMES, FriendlyWindow, HolidayCalendar, parse_holidays
from gateway.domain.money import AmountError, parse_yuan
from gateway.domain.policy import DEFAULT_CREDIT_CLASSES, SitePolicy
from gateway.domain.timeutil import parse_duration

__all__ = ["friendly_window_from_dict", "site_policy_from_dict"]

_KEYS = {"timezone", "notice_period", "stale_after", "max_auto_disconnects_per_minute", "rate_window",
         "friendly_windows", "holidays", "credit_classes", "emergency_credit"}


def site_policy_from_dict(data: Mapping[str, Any] | None, *, holidays_text: str | None = None,
                          holidays_source: str = "holidays", where: str = "site") -> SitePolicy:
    """A site policy from plain data; ``holidays_text`` is the content of a holiday calendar file, if any."""
    data = data or {}
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}: must be a mapping")
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown key(s): {', '.join(map(str, unknown))}")
    kwargs: dict[str, Any] = {}
    if "timezone" in data:
        try:
            kwargs["tz"] = ZoneInfo(str(data["timezone"]))
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{where}.timezone: unknown time zone {data['timezone']!r}") from None
    if "notice_period" in data:
        kwargs["notice_period"] = parse_duration(data["notice_period"], f"{where}.notice_period")
    if "stale_after" in data:
        raw = data["stale_after"]
        kwargs["stale_after"] = None if raw is None else parse_duration(raw, f"{where}.stale_after")
    if "max_auto_disconnects_per_minute" in data:
        limit = data["max_auto_disconnects_per_minute"]
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            raise ValueError(f"{where}.max_auto_disconnects_per_minute: a non-negative integer or null")
        kwargs["max_auto_disconnects_per_minute"] = limit
    if "rate_window" in data:
        window = parse_duration(data["rate_window"], f"{where}.rate_window")
        if not window:
            raise ValueError(f"{where}.rate_window: must be longer than zero")
        kwargs["rate_window"] = window
    windows = data.get("friendly_windows") or []
    if not isinstance(windows, list):
        raise ValueError(f"{where}.friendly_windows: must be a list")
    kwargs["friendly_windows"] = tuple(friendly_window_from_dict(w, where=f"{where}.friendly_windows[{i}]")
                                       for i, w in enumerate(windows))
    calendar = HolidayCalendar()
    if holidays_text is not None:
        calendar = parse_holidays(holidays_text, source=holidays_source)
    inline = data.get("holidays")
    if inline is not None:
        if not isinstance(inline, list):
            raise ValueError(f"{where}.holidays: must be a list of calendar lines")
        calendar = calendar.merged(parse_holidays("\n".join(map(str, inline)), source=f"{where}.holidays"))
    kwargs["holidays"] = calendar
    if "credit_classes" in data:
        kwargs["credit_classes"] = _credit_classes(data["credit_classes"], f"{where}.credit_classes")
    if "emergency_credit" in data:
        kwargs.update(_emergency(data["emergency_credit"], f"{where}.emergency_credit"))
    return SitePolicy(**kwargs)


def friendly_window_from_dict(data: Any, *, where: str = "friendly_window") -> FriendlyWindow:
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}: must be a mapping with name, and hours and/or days")
    unknown = sorted(set(data) - {"name", "hours", "days"})
    if unknown:
        raise ValueError(f"{where}: unknown key(s): {', '.join(map(str, unknown))}")
    name = str(data.get("name") or "").strip()
    if not name:
        raise ValueError(f"{where}.name: required")
    days_raw = data.get("days", ["all"])
    days = [days_raw] if isinstance(days_raw, str) else days_raw
    if not isinstance(days, list) or not days:
        raise ValueError(f"{where}.days: must be a non-empty list of day names")
    names = frozenset(str(d).strip().lower() for d in days)
    bad = sorted(names - DAY_NAMES)
    if bad:
        raise ValueError(f"{where}.days: unknown day name(s) {', '.join(bad)} (use {', '.join(sorted(DAY_NAMES))})")
    if "hours" not in data:
        if names == {"all"}:
            raise ValueError(f"{where}: a window with neither hours nor days would cover all time")
        return FriendlyWindow(name, names)
    start, end = _hours(data["hours"], f"{where}.hours")
    return FriendlyWindow(name, names, start, end)


def _hours(text: Any, where: str) -> tuple[int, int]:
    parts = str(text).replace(" ", "").split("-")
    if len(parts) != 2:
        raise ValueError(f"{where}: write hours as \"HH:MM-HH:MM\"")
    minutes = []
    for part in parts:
        try:
            h, m = (int(x) for x in part.split(":"))
        except ValueError:
            raise ValueError(f"{where}: not a time of day: {part!r}") from None
        if not (0 <= h <= 24 and 0 <= m < 60) or (h == 24 and m):
            raise ValueError(f"{where}: not a time of day: {part!r}")
        minutes.append(h * 60 + m)
    start, end = minutes
    if start >= 1440 or start == end:
        raise ValueError(f"{where}: empty window {text!r}")
    return start, end


def _credit_classes(data: Any, where: str) -> dict[str, int]:
    if not isinstance(data, Mapping) or not data:
        raise ValueError(f"{where}: must map credit classes (AAA … D) to overdraft amounts")
    out = dict(DEFAULT_CREDIT_CLASSES)
    for name, amount in data.items():
        try:
            out[str(name)] = parse_yuan(amount if not isinstance(amount, int) else str(amount), allow_zero=True)
        except AmountError as exc:
            raise ValueError(f"{where}.{name}: {exc}") from None
    return out


def _emergency(data: Any, where: str) -> dict[str, Any]:
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}: must be a mapping with amount and period")
    unknown = sorted(set(data) - {"amount", "period"})
    if unknown:
        raise ValueError(f"{where}: unknown key(s): {', '.join(map(str, unknown))}")
    out: dict[str, Any] = {}
    if "amount" in data:
        try:
            out["emergency_credit_fen"] = parse_yuan(str(data["amount"]))
        except AmountError as exc:
            raise ValueError(f"{where}.amount: {exc}") from None
    period = data.get("period", "monthly")
    if period not in ("monthly", "yearly"):
        raise ValueError(f"{where}.period: must be monthly or yearly, got {period!r}")
    out["emergency_credit_period"] = period
    return out
