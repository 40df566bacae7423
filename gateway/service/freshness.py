"""Which readings to store: a reading that changes nothing is not written.

A meter polled every minute mostly repeats itself (no energy used, the relay where it was). Such a reading is
not stored as a row and goes through no transaction: it only shows as the meter's latest reading. It must be
the same (energy, per-rate registers, relay, tamper flags) as the meter's last stored reading and taken within
``reading_history_s`` of it, and its account must take it without any change but the meter's time
(``PrepaidAccount.reading_changes_nothing``: nothing to decide, same billing period). So a meter's newest stored
reading is never older than ``reading_history_s`` while it answers, and the settings keep that shorter than
``policy.stale_after``: every decision still rests on a reading the staleness guardrail accepts.
"""

from __future__ import annotations

import datetime as dt
from drivers.base import Reading, RelayState
from gateway.domain.account import PrepaidAccount

__all__ = ["Freshness"]


class Freshness:
    """The meters' last stored readings, and the newer ones that changed nothing (``latest``, for the API)."""

    def __init__(self, history_s: float) -> None:
        self.history = dt.timedelta(seconds=history_s)
        # per meter: taken at, energy, per-rate registers, relay, tamper flags (None: the meter could not tell)
        self._stored: dict[str, tuple[dt.datetime, int, tuple[int, ...] | None, RelayState | None,
                                      tuple[str, ...] | None]] = {}
        self.latest: dict[str, Reading] = {}  # the newest reading taken without storing it, per meter
        self.skipped = 0  # readings taken without storing them

    def takes(self, reading: Reading, account: PrepaidAccount | None) -> bool:
        """True (and the reading is the meter's latest) when it changes nothing and need not be stored.
        ``account``: the meter's account as the writer holds it (None when it holds none: store the reading)."""
        last = self._stored.get(reading.meter_id)
        if last is None or account is None:
            return False
        taken_at, energy, rates, relay, tamper = last
        registers = tuple(reading.energy_wh_by_rate) if reading.energy_wh_by_rate is not None else None
        if (reading.energy_wh != energy or registers != rates or reading.relay is not relay
                or reading.extra.get("tamper") != tamper  # a change of tamper flags is an event to write
                or not taken_at < reading.taken_at < taken_at + self.history
                or not account.reading_changes_nothing(reading.meter_id, reading.energy_wh, reading.taken_at,
                                                       registers)):
            return False
        self.latest[reading.meter_id] = reading
        self.skipped += 1
        return True

    def stored(self, readings: list[Reading]) -> None:
        """Readings a commit wrote."""
        for reading in readings:
            registers = tuple(reading.energy_wh_by_rate) if reading.energy_wh_by_rate is not None else None
            self._stored[reading.meter_id] = (reading.taken_at, reading.energy_wh, registers, reading.relay,
                                              reading.extra.get("tamper"))

    def forget(self, meter_id: str | None = None) -> None:
        """Store the meter's next reading (all meters' with None): its row was written elsewhere, or a commit
        failed."""
        if meter_id is None:
            self._stored.clear()
        else:
            self._stored.pop(meter_id, None)
