"""Small helpers for aware UTC timestamps and durations in state dicts and configuration data."""

from __future__ import annotations

import datetime as dt
import re

__all__ = ["from_iso", "parse_duration", "require_aware", "to_iso", "utc"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|min|h|d)?\s*$")
_UNITS = {"s": 1, None: 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


def require_aware(when: dt.datetime, what: str = "time") -> dt.datetime:
    if when.tzinfo is dt.UTC:
        return when
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware (UTC), got {when!r}")
    return when


def utc(when: dt.datetime, what: str = "time") -> dt.datetime:
    """An aware datetime in UTC; ValueError for a naive one or one that is not representable in UTC."""
    require_aware(when, what)
    if when.tzinfo is dt.UTC:
        return when
    try:
        return when.astimezone(dt.UTC)
    except OverflowError:
        raise ValueError(f"{what} is out of range: {when!r}") from None


def to_iso(when: dt.datetime | None) -> str | None:
    """Aware datetime -> ISO 8601 in UTC ("2026-11-23T08:00:00Z"), None stays None."""
    if when is None:
        return None
    if when.tzinfo is dt.UTC:  # the common case, without the conversions
        return when.isoformat()[:-6] + "Z"
    return require_aware(when).astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def from_iso(text: str | dt.datetime | None) -> dt.datetime | None:
    """ISO 8601 with an offset or "Z" -> aware UTC datetime. A naive timestamp is refused."""
    if text is None or isinstance(text, dt.datetime):
        return require_aware(text).astimezone(dt.UTC) if text is not None else None
    when = dt.datetime.fromisoformat(text.strip())
    return require_aware(when, f"timestamp {text!r}").astimezone(dt.UTC)


def parse_duration(value: str | float, what: str = "duration") -> dt.timedelta:
    """"90s", "15m", "24h", "2d" or a number of seconds -> timedelta."""
    if isinstance(value, bool):
        raise ValueError(f"{what}: not a duration: {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"{what}: not a duration: {value!r} (use e.g. \"90s\", \"15m\", \"24h\", \"2d\")")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds < 0:
        raise ValueError(f"{what}: must not be negative: {value!r}")
    return dt.timedelta(seconds=seconds)
