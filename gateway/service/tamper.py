"""Tamper flags: which ones each meter reported last, and the event when they change.

A driver puts a meter's tamper flags in ``Reading.extra["tamper"]`` (a sorted tuple of names such as
``cover_open``, ``terminal_cover_open``; empty when the meter says none; absent when it cannot tell). When a
meter's flags differ from the last ones the gateway saw, the writer's batch writes a ``MeterTamper`` event on the
topic ``alarms`` in the reading's transaction: ``{"type": "MeterTamper", "meter_id", "account_id", "flags",
"at"}`` (``at``: when the meter was read), ``"flags": []`` when they clear.

What the gateway saw is kept in memory, as committed: the first reading after a start that has flags raises them;
one without flags raises nothing, except for a meter whose tamper alarm is still open from before the start (the
gateway ``seed``s those at its start: a cover shut while it was stopped clears the alarm). A reading without
tamper information changes nothing, and neither does a late one (taken before the meter's newest reading).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

__all__ = ["TAMPER_TOPIC", "TamperFlags", "tamper_change", "tamper_event"]

TAMPER_TOPIC = "alarms"
_UNKNOWN = ("?",)  # seeded: raised before the start, flags unknown; any reading differs from it


class TamperFlags:
    """The tamper flags each meter reported last, as committed (``seen``); the writer's batches compare with it."""

    def __init__(self) -> None:
        self.seen: dict[str, tuple[str, ...]] = {}

    def seed(self, meters: Mapping[str, tuple[str, ...] | None]) -> None:
        """Meters whose tamper alarm is still open from before the start (flags, or None when unknown): their
        next reading raises or clears it, even when it has no flags."""
        for meter_id, flags in meters.items():
            self.seen.setdefault(meter_id, _UNKNOWN if flags is None else tuple(flags))

    def committed(self, changes: Mapping[str, tuple[str, ...]]) -> None:
        """A batch's flags after its commit."""
        if changes:
            self.seen.update(changes)


def tamper_change(known: tuple[str, ...] | None, flags: tuple[str, ...]) -> bool:
    """Whether ``flags`` (a meter's new reading) make an event, given the last ones seen (None: none since the
    start)."""
    return flags != known and (known is not None or bool(flags))


def tamper_event(meter_id: str, account_id: str | None, flags: tuple[str, ...], at: dt.datetime) -> dict[str, Any]:
    """The payload of the ``MeterTamper`` event."""
    return {"type": "MeterTamper", "meter_id": meter_id, "account_id": account_id, "flags": list(flags), "at": at}
