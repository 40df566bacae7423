"""The account's life: a change of tariff at a given time, meters moving in and out (换表, move-in, move-out),
and closing the account with its balance settled.

A mixin of ``PrepaidAccount`` (kept apart to keep modules small); it relies on the account's attributes.

**A tariff change** (``TariffChange``) takes effect at the first billed reading after its time, of any of the
account's meters: the energy of that reading's interval is split in proportion to time at the change, the part
before is billed at the old prices, then the account switches (``TariffSwitched``), and the rest is billed at
the new ones. The billing period goes on across the switch (``BillingState``'s base): a tiered tariff keeps
counting the period's energy. A change of the period's kind (monthly <-> yearly) closes the period at the switch.
The limit: on an account with several meters, energy of another meter's interval before the change that arrives
after the switch (that meter read late) is billed at the new prices; and a change before a reading already billed
can't be honoured without rebilling (``tariff_change_allowed`` says so, the service refuses it).

**Meters**: ``attach_meter`` starts a meter from a baseline; ``detach_meter`` bills its final reading and removes
it; ``replace_meter`` does both at one time, billing continuously. **Closing** (``close``) settles the balance to
zero with a refund or arrears entry; a closed account refuses everything but queries.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from gateway.domain import events as ev
from gateway.domain.errors import (
    ClosedAccount,
    InvalidAmount,
    InvalidTime,
    MeterAlreadyAttached,
    MetersStillAttached,
)
from gateway.domain.ledger import EntryKind
from gateway.domain.metering import MAX_ENERGY_WH, MeterCursor, Snapshot
from gateway.domain.tariffs import period_key, period_label
from gateway.domain.timeutil import to_iso, utc

if TYPE_CHECKING:
    from gateway.domain.billing import BillingState, TariffChange
    from gateway.domain.emergency import EmergencyCredit
    from gateway.domain.policy import SitePolicy
    from gateway.domain.tariffs import Tariff

__all__ = ["LifecycleMixin"]


class LifecycleMixin:
    if TYPE_CHECKING:  # provided by PrepaidAccount
        id: str
        tariff: Tariff
        tariff_change: TariffChange | None
        tariff_switch: tuple[dt.datetime, str] | None
        closed_at: dt.datetime | None
        site: SitePolicy
        billing: BillingState
        cursors: dict[str, MeterCursor]
        events: list[ev.Event]
        balance_fen: int
        emergency: EmergencyCredit
        hold_until: dt.datetime | None

        def _cursor(self, meter: str | MeterCursor) -> MeterCursor: ...
        def _bill(self, cursor: MeterCursor, reading: Snapshot, delta_wh: int, by_register: Any) -> int: ...
        def _post(self, kind: EntryKind, amount_fen: int, reference: str = "", **extra: Any) -> None: ...
        def _clear_deferral(self) -> None: ...

    @property
    def closed(self) -> bool:
        return self.closed_at is not None

    def _require_open(self) -> None:
        if self.closed_at is not None:
            raise ClosedAccount(f"account {self.id} is closed (since {to_iso(self.closed_at)})")

    # --- tariff change ------------------------------------------------------------------------------------
    def tariff_change_allowed(self, at: dt.datetime) -> str:
        """Why a tariff change at ``at`` can't be honoured ("" when it can): a reading of one of the account's
        meters taken after ``at`` is already billed at the current prices (honouring it would mean rebilling),
        or the account is closed. (A query: nothing changes.)"""
        at = utc(at, "at")
        if self.closed_at is not None:
            return f"the account is closed (since {to_iso(self.closed_at)})"
        billed = [c.taken_at for c in self.cursors.values() if c.taken_at is not None and c.taken_at > at]
        if billed:
            return (f"a reading taken at {to_iso(max(billed))} is already billed at the current prices "
                    f"(the change would be at {to_iso(at)})")
        return ""

    def _switch_tariff(self, change: TariffChange) -> None:
        """Bill at ``change.tariff`` from now on: the period's consumption and charge so far become its base (or,
        when the new tariff's period is of another kind, the period closes at the change)."""
        billing, old = self.billing, self.tariff
        if change.tariff.period != old.period:
            if billing.period_start is not None and (billing.energy_wh or billing.charged_fen):
                self.events.append(ev.BillingPeriodClosed(self.id, period_label(billing.period_start, old.period),
                                                          billing.energy_wh, billing.charged_fen))
            started = billing.period_start is not None
            key = period_key(change.at.astimezone(self.site.tz).date(), change.tariff.period)
            billing.start(key if started else None)
        else:
            billing.set_base()
        self.tariff, self.tariff_change, self.tariff_switch = change.tariff, None, (change.at, change.name)
        self.events.append(ev.TariffSwitched(self.id, change.name, change.at))

    # --- meters moving in and out -------------------------------------------------------------------------
    def attach_meter(self, meter_id: str, *, energy_wh: int, at: dt.datetime, max_power_w: int | None = None,
                     by: str = "") -> None:
        """A meter starts on the account: its reading ``energy_wh`` at ``at`` is the baseline (nothing billed);
        the next reading is billed from it.

        A meter the account already bills (one with a baseline) is refused; one only registered by
        ``add_meter`` (no reading yet) is attached, keeping its configuration.
        """
        self._require_open()
        cursor = self._new_cursor(meter_id, energy_wh, at, max_power_w)
        self.cursors[meter_id] = cursor
        self.events.append(ev.MeterAttached(self.id, meter_id, energy_wh, utc(at, "at"), by))

    def _new_cursor(self, meter_id: str, energy_wh: int, at: dt.datetime, max_power_w: int | None,
                    *, replacing: str | None = None) -> MeterCursor:
        """The cursor of a meter starting at (``energy_wh``, ``at``), checked (a new one, or the one ``add_meter``
        registered without a reading); the caller puts it in ``cursors``."""
        at = utc(at, "at")
        if not 0 <= energy_wh <= MAX_ENERGY_WH:
            raise InvalidAmount(f"meter {meter_id}: a starting reading must be from 0 to {MAX_ENERGY_WH} Wh, "
                                f"got {energy_wh}")
        known = self.cursors.get(meter_id)
        if known is not None and meter_id != replacing and (known.energy_wh is not None or known.pending):
            raise MeterAlreadyAttached(f"meter {meter_id} is already on account {self.id}")
        cursor = MeterCursor(meter_id) if known is None or meter_id == replacing else known
        cursor.pending = None
        if max_power_w is not None:
            cursor.max_power_w = max_power_w
        cursor.move_to(Snapshot(energy_wh, at))
        cursor.seen_at = at
        return cursor

    def detach_meter(self, meter_id: str, *, final_wh: int, at: dt.datetime, by: str = "") -> int:
        """A meter leaves the account (move-out, removal): its final reading ``final_wh`` at ``at`` is billed
        like any reading (across periods, time-of-use rates and a tariff change), then the meter is removed.
        Returns the charge in fen.

        The final reading is given by a person and is explicit: it is not checked against the meter's capacity
        (a jump is billed as given). It must not be below the last billed reading (give the right reading, or
        re-base the meter first) nor taken before it; a quarantined reading is discarded. A meter that has no
        baseline yet is removed with nothing billed.
        """
        self._require_open()
        cursor = self._cursor(meter_id)
        final = self._final_reading(cursor, final_wh, at)
        charge = self._bill_final(cursor, final, by)
        del self.cursors[meter_id]
        self.events.append(ev.MeterDetached(self.id, meter_id, final_wh, final.taken_at, charge, by))
        return charge

    def replace_meter(self, old_id: str, *, final_wh: int, new_id: str, initial_wh: int, at: dt.datetime,
                      max_power_w: int | None = None, by: str = "") -> int:
        """换表: the old meter's final reading ``final_wh`` and the new meter's first one ``initial_wh``, both at
        ``at``. The final reading is billed as by ``detach_meter``; the new meter is billed from ``initial_wh``;
        the billing period is the account's and goes on (a tiered tariff keeps counting). Returns the final
        charge in fen. The new meter takes the old one's contract capacity and margin unless ``max_power_w`` is
        given (its register's resolution and rollover are its own: set them with ``add_meter``). ``new_id`` may
        be ``old_id`` (a meter known by its place). Nothing changes when any of it is refused.
        """
        self._require_open()
        old = self._cursor(old_id)
        final = self._final_reading(old, final_wh, at)
        registered = new_id != old_id and new_id in self.cursors  # by add_meter, with its configuration
        new = self._new_cursor(new_id, initial_wh, final.taken_at, max_power_w, replacing=old_id)
        if not registered:
            new.max_power_w = old.max_power_w if max_power_w is None else max_power_w
            new.margin = old.margin
        charge = self._bill_final(old, final, by)
        del self.cursors[old_id]
        self.cursors[new_id] = new
        self.events.append(ev.MeterReplaced(self.id, old_id, new_id, final_wh, initial_wh, final.taken_at, charge,
                                            by))
        return charge

    def _final_reading(self, cursor: MeterCursor, final_wh: int, at: dt.datetime) -> Snapshot:
        """The meter's final reading, checked against where its billing stands (nothing changes here)."""
        at, meter_id = utc(at, "at"), cursor.meter_id
        if not 0 <= final_wh <= MAX_ENERGY_WH:
            raise InvalidAmount(f"meter {meter_id}: {final_wh} Wh is no meter reading")
        if cursor.energy_wh is not None and cursor.taken_at is not None:
            last = f"the last billed reading ({cursor.energy_wh} Wh at {to_iso(cursor.taken_at)})"
            if at < cursor.taken_at:
                raise InvalidTime(f"meter {meter_id}: the final reading can't be taken before {last}")
            if final_wh < cursor.energy_wh:
                raise InvalidAmount(f"meter {meter_id}: the final reading {final_wh} Wh is below {last}: give the "
                                    "right reading, or re-base the meter first")
            if at == cursor.taken_at and final_wh != cursor.energy_wh:
                raise InvalidTime(f"meter {meter_id}: a final reading taken at the time of {last} must be that "
                                  "reading")
        return Snapshot(final_wh, at)

    def _bill_final(self, cursor: MeterCursor, final: Snapshot, by: str) -> int:
        """Bill a checked final reading (``_final_reading``): a quarantined reading is discarded by it."""
        pending = cursor.pending
        if pending is not None:
            cursor.pending = None
            self.events.append(ev.QuarantineResolved(self.id, cursor.meter_id, "discarded",
                                                     pending.reading.energy_wh, 0, by))
        if cursor.energy_wh is None or cursor.taken_at is None or final.taken_at == cursor.taken_at:
            return 0
        return self._bill(cursor, final, final.energy_wh - cursor.energy_wh, None)

    # --- closing ------------------------------------------------------------------------------------------
    def close(self, now: dt.datetime, *, by: str = "", reason: str = "") -> int:
        """Close the account and settle its balance to zero; returns the settlement's signed amount in fen
        (negative: a refund paid back, positive: arrears owed, 0: none).

        The meters must have been detached first (their final readings billed). Outstanding emergency credit
        is in the balance already (it was credited when granted) but is not the customer's money: it is repaid
        from the balance first (a ``REPAYMENT`` entry), then what is left is refunded (``REFUND``, -balance) or
        owed (``ARREARS``, +|balance|). Deferrals and holds end. The relay is the caller's business. A closed
        account refuses payments, readings, emergency credit, holds and meters (``ClosedAccount``); ``evaluate``
        decides nothing and ``settled()`` is true.
        """
        now = utc(now, "now")
        self._require_open()
        if self.cursors:
            raise MetersStillAttached(f"account {self.id} still has meter(s) {', '.join(sorted(self.cursors))}: "
                                      "detach them first (their final readings are billed)")
        before, repaid = self.balance_fen, self.emergency.outstanding_fen
        if repaid:
            self._post(EntryKind.REPAYMENT, -repaid, "close", detail="emergency credit settled at closing", at=now)
            self.emergency.outstanding_fen = 0
            self.events.append(ev.EmergencyCreditRepaid(self.id, repaid, 0, self.balance_fen))
        settlement = -self.balance_fen
        if settlement < 0:
            self._post(EntryKind.REFUND, settlement, "close", detail=reason, at=now)
        elif settlement > 0:
            self._post(EntryKind.ARREARS, settlement, "close", detail=reason, at=now)
        self.closed_at = now
        self._clear_deferral()
        self.hold_until = None
        self.events.append(ev.AccountClosed(self.id, before, max(-settlement, 0), max(settlement, 0), reason,
                                            repaid, by))
        return settlement
