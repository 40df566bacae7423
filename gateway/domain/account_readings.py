"""The account's meter readings: billing cumulative readings, quarantine, acceptance and re-basing.

A mixin of ``PrepaidAccount`` (kept apart to keep modules small); it relies on the account's attributes. A
pending tariff change is applied here, at the first billed reading after its time (``gateway.domain.lifecycle``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from gateway.domain import events as ev
from gateway.domain.billing import PeriodCharge, bill
from gateway.domain.energy import apportion, period_bounds, rate_deltas, split_energy
from gateway.domain.errors import InvalidAmount, InvalidTime, NoQuarantinedReading, UnknownMeter
from gateway.domain.ledger import EntryKind
from gateway.domain.metering import (
    BACKWARDS,
    MAX_ENERGY_WH,
    MeterCursor,
    PendingReading,
    Snapshot,
    check_plausible,
)
from gateway.domain.tariffs import period_key, period_label
from gateway.domain.timeutil import require_aware, utc

if TYPE_CHECKING:
    from gateway.domain.billing import BillingState, TariffChange
    from gateway.domain.policy import SitePolicy
    from gateway.domain.tariffs import Tariff

__all__ = ["ReadingsMixin"]


def _within(key: dt.date, period: str, tz: ZoneInfo, t0: dt.datetime, t1: dt.datetime) -> bool:
    """Whether ``[t0, t1]`` lies in the billing period that starts on local day ``key`` (``t1`` before its end)."""
    begin, end = period_bounds(key, period, tz)
    return begin <= t0 and t1 < end


def _micros(t0: dt.datetime, t1: dt.datetime) -> int:
    return (t1 - t0) // dt.timedelta(microseconds=1)


class ReadingsMixin:
    if TYPE_CHECKING:  # provided by PrepaidAccount
        id: str
        tariff: Tariff
        tariff_change: TariffChange | None
        site: SitePolicy
        cursors: dict[str, MeterCursor]
        events: list[ev.Event]
        billing: BillingState
        balance_fen: int

        def _announce_credit(self) -> None: ...
        def _require_open(self) -> None: ...
        def _switch_tariff(self, change: TariffChange) -> None: ...
        def settled(self) -> bool: ...
        def _post(self, kind: EntryKind, amount_fen: int, reference: str = "", **extra: Any) -> None: ...

    def add_meter(self, meter_id: str, *, max_power_w: int | None = None, margin: float | None = None,
                  resolution_wh: int | None = None, rollover_wh: int | None = None) -> MeterCursor:
        """Register one of the account's meters (or update its configuration); returns its cursor. (Configuration:
        not refused on a closed account; its readings are.)"""
        cursor = self.cursors.setdefault(meter_id, MeterCursor(meter_id))
        for name, value in (("max_power_w", max_power_w), ("margin", margin), ("resolution_wh", resolution_wh),
                            ("rollover_wh", rollover_wh)):
            if value is not None:
                setattr(cursor, name, value)
        return cursor

    def _cursor(self, meter: str | MeterCursor) -> MeterCursor:
        if isinstance(meter, MeterCursor):
            self.cursors[meter.meter_id] = meter  # a cursor handed in by the caller is adopted
            return meter
        if meter not in self.cursors:
            raise UnknownMeter(f"account {self.id} has no meter {meter!r} (add_meter first)")
        return self.cursors[meter]

    def apply_reading(self, meter: str | MeterCursor, energy_wh: int, taken_at: dt.datetime, *,
                      rates_wh: Sequence[int] | None = None, margin: float | None = None,
                      resolution_wh: int | None = None) -> int:
        """Bill a cumulative reading of one of the account's meters; returns the charge in fen.

        ``rates_wh`` are the meter's per-rate registers (rates 1..4) when it has them. The first reading of a
        meter only sets its baseline. A reading lower than the last one, or a jump larger than the meter's
        capacity over the elapsed time allows, is quarantined: not billed, baseline unchanged, alarm raised once.
        A later reading that is plausible against the baseline bills normally and discards the quarantined one.
        A cumulative energy outside 0..``MAX_ENERGY_WH`` is no reading of a meter: refused, nothing changes.
        """
        self._require_open()
        if not 0 <= energy_wh <= MAX_ENERGY_WH:
            raise InvalidAmount(f"meter {getattr(meter, 'meter_id', meter)}: {energy_wh} Wh is no meter reading")
        cursor = self._cursor(meter)
        require_aware(taken_at, "taken_at")
        if margin is not None:
            cursor.margin = margin
        if resolution_wh is not None:
            cursor.resolution_wh = resolution_wh
        reading = Snapshot(energy_wh, taken_at, tuple(rates_wh) if rates_wh is not None else None)
        if cursor.seen_at is None or taken_at > cursor.seen_at:
            cursor.seen_at = taken_at
        return self._take(cursor, reading)

    def reading_changes_nothing(self, meter_id: str, energy_wh: int, taken_at: dt.datetime,
                                rates_wh: Sequence[int] | None = None) -> bool:
        """Whether ``apply_reading`` of this reading followed by ``evaluate`` would change nothing but the
        meter's time, whatever the time: the same energy (and per-rate registers) as the meter was last billed
        at, newer, in the current billing period, with no quarantined reading on the meter, and an account that
        is ``settled()``. (A query: nothing changes.)"""
        cursor, change = self.cursors.get(meter_id), self.tariff_change
        if change is not None and taken_at > change.at:
            return False  # the tariff would switch
        if (cursor is None or cursor.energy_wh != energy_wh or cursor.pending is not None or cursor.taken_at is None
                or taken_at <= cursor.taken_at
                or (tuple(rates_wh) if rates_wh is not None else None) != cursor.rates_wh):
            return False
        start = self.billing.period_start
        if start is None or not _within(start, self.tariff.period, self.site.tz, taken_at, taken_at):
            return False
        return self.settled()

    def _take(self, cursor: MeterCursor, reading: Snapshot) -> int:
        if cursor.energy_wh is None or cursor.taken_at is None:
            cursor.move_to(reading)
            return 0
        if reading.taken_at <= cursor.taken_at:
            return 0  # an old or duplicate reading: nothing new to bill
        verdict = check_plausible(cursor, reading)
        pending = cursor.pending
        if verdict is None:
            if pending is not None:
                cursor.pending = None
                self.events.append(ev.QuarantineResolved(self.id, cursor.meter_id, "discarded",
                                                         pending.reading.energy_wh, 0))
            return self._bill(cursor, reading, reading.energy_wh - cursor.energy_wh,
                              self._by_register(cursor, reading))
        if pending is None:
            kind, reason = verdict
            cursor.pending = PendingReading(reading, kind, reason)
            self.events.append(ev.ReadingQuarantined(self.id, cursor.meter_id, reading.energy_wh, cursor.energy_wh,
                                                     reason, kind, reading.taken_at))
        elif reading.taken_at > (pending.latest or pending.reading).taken_at:
            cursor.pending = PendingReading(pending.reading, pending.kind, pending.reason, reading)
        return 0

    def _by_register(self, cursor: MeterCursor, reading: Snapshot) -> dict[str, int] | None:
        """Energy per rate from the meter's registers, mapped by the tariff the interval will be billed at (the
        new one when it starts at or after a pending change's time; an interval across it ignores them)."""
        change, tariff = self.tariff_change, self.tariff
        if change is not None and cursor.taken_at is not None and cursor.taken_at >= change.at:
            tariff = change.tariff
        return rate_deltas(tariff, cursor.rates_wh, reading.rates_wh)

    def _bill(self, cursor: MeterCursor, reading: Snapshot, delta_wh: int,
              by_register: Mapping[str, int] | None) -> int:
        """Bill ``delta_wh`` consumed from the cursor's reading to ``reading``, then move the cursor there.

        With a pending tariff change and ``reading`` after its time, the tariff switches now: the energy of an
        interval that spans the change is split in proportion to time (the meter's registers are not used for
        it), the part up to the change billed at the old prices and the rest at the new ones.
        """
        assert cursor.taken_at is not None and delta_wh >= 0
        t0, t1 = cursor.taken_at, reading.taken_at
        cursor.move_to(reading)
        change, total, rest = self.tariff_change, 0, delta_wh
        if change is not None and t1 > change.at:
            if t0 < change.at:
                first, rest = apportion(delta_wh, [_micros(t0, change.at), _micros(change.at, t1)])
                total += self._price(cursor.meter_id, reading, t0, change.at, first, None)
                t0, by_register = change.at, None
            self._switch_tariff(change)
        total += self._price(cursor.meter_id, reading, t0, t1, rest, by_register)
        if delta_wh:
            self.events.append(ev.AccountCharged(self.id, cursor.meter_id, delta_wh, total, self.balance_fen))
            self._announce_credit()
        return total

    def _price(self, meter_id: str, reading: Snapshot, t0: dt.datetime, t1: dt.datetime, delta_wh: int,
               by_register: Mapping[str, int] | None) -> int:
        """Price the energy of ``[t0, t1)`` at the current tariff and post the charges; returns them in fen."""
        tz, tariff, billing = self.site.tz, self.tariff, self.billing
        if (tariff.schedule is None and billing.period_start is not None
                and _within(billing.period_start, tariff.period, tz, t0, t1)):
            # The common case, no time-of-use rates and both readings in the current period: what ``bill``
            # would do with ``split_energy``'s one part, without the walk over periods.
            charges, closed = [], []
            if delta_wh:
                billing.energy_wh += delta_wh
                cost = billing.cost_fen(tariff)
                charges.append(PeriodCharge(period_label(billing.period_start, tariff.period), delta_wh,
                                            cost - billing.charged_fen))
                billing.charged_fen = cost
        else:
            energy = split_energy(t0, t1, delta_wh, tariff, tz, by_register) if delta_wh else {}
            charges, closed = bill(billing, tariff, energy, period_key(t1.astimezone(tz).date(), tariff.period))
        for period in closed:
            self.events.append(ev.BillingPeriodClosed(self.id, period.period, period.energy_wh, period.charged_fen))
        total = 0
        for charge in charges:
            if charge.amount_fen:
                self._post(EntryKind.CHARGE, -charge.amount_fen, meter_id, meter_id=meter_id,
                           energy_wh=charge.energy_wh, reading_wh=reading.energy_wh, period=charge.period,
                           at=reading.taken_at)
                total += charge.amount_fen
        return total

    def accept_reading(self, meter_id: str, *, energy_wh: int | None = None, by: str = "") -> int:
        """An operator accepts the meter's quarantined reading; returns the charge in fen.

        A jump is billed as read. A backwards reading is billed as a rollover of the register (``rollover_wh``
        of the meter) or as ``energy_wh`` given by the operator; otherwise re-base the meter instead.
        Readings that arrived while quarantined are then billed from the accepted one.
        """
        self._require_open()
        cursor = self._cursor(meter_id)
        pending = cursor.pending
        if pending is None or cursor.energy_wh is None:
            raise NoQuarantinedReading(f"meter {meter_id} has no quarantined reading")
        reading, by_register = pending.reading, None
        if energy_wh is not None:
            delta = energy_wh
        elif pending.kind == BACKWARDS:
            if cursor.rollover_wh is None:
                raise NoQuarantinedReading(f"meter {meter_id}: a backwards reading is accepted with the energy to "
                                           "bill (or the meter's rollover_wh); otherwise re-base the meter")
            delta = cursor.rollover_wh - cursor.energy_wh + reading.energy_wh
        else:
            delta = reading.energy_wh - cursor.energy_wh
            by_register = self._by_register(cursor, reading)
        if delta < 0:
            raise InvalidAmount(f"energy to bill must not be negative, got {delta}")
        cursor.pending = None
        self.events.append(ev.QuarantineResolved(self.id, meter_id, "accepted", reading.energy_wh, delta, by))
        charge = self._bill(cursor, reading, delta, by_register)
        return charge + (self._take(cursor, pending.latest) if pending.latest is not None else 0)

    def rebase_meter(self, meter_id: str, *, energy_wh: int | None = None, taken_at: dt.datetime | None = None,
                     now: dt.datetime | None = None, by: str = "") -> int:
        """Start billing the meter afresh from a new baseline without billing the gap (reset, replacement).

        The baseline is the quarantined reading, or ``energy_wh`` at ``taken_at`` (default: the newest reading
        seen). Readings that arrived while quarantined are then billed from it; returns that charge in fen.
        With ``now``, a baseline read after it is refused (no reading before that time would ever be billed).
        """
        if taken_at is not None:
            taken_at = utc(taken_at, "taken_at")
            if now is not None and taken_at > now:
                raise InvalidTime(f"the baseline can't be read in the future ({taken_at.isoformat()})")
        self._require_open()
        if energy_wh is not None and not 0 <= energy_wh <= MAX_ENERGY_WH:
            raise InvalidAmount(f"a baseline must be from 0 to {MAX_ENERGY_WH} Wh, got {energy_wh}")
        cursor = self._cursor(meter_id)
        pending = cursor.pending
        if energy_wh is None:
            if pending is None:
                raise NoQuarantinedReading(f"meter {meter_id}: nothing quarantined; give the new baseline energy_wh")
            base = pending.reading
        else:
            when = taken_at or cursor.seen_at or cursor.taken_at
            if when is None:
                raise NoQuarantinedReading(f"meter {meter_id}: give taken_at for the new baseline")
            base = Snapshot(energy_wh, require_aware(when, "taken_at"))
        cursor.pending = None
        cursor.move_to(base)
        self.events.append(ev.QuarantineResolved(self.id, meter_id, "rebased", base.energy_wh, 0, by))
        latest = pending.latest if pending is not None else None
        return self._take(cursor, latest) if latest is not None and latest.taken_at > base.taken_at else 0

