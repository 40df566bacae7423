"""The prepaid account and its balance engine.

``PrepaidAccount`` is pure: its methods change the account, return what they decided, append events to
``account.events`` and ledger entries to ``account.entries``; they do no I/O and never read the clock. The
service layer loads an account (``PrepaidAccount.from_state``), calls them, and saves ``account.state_dict()``
with the drained entries and events in one transaction.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.domain import events as ev
from gateway.domain.account_money import MoneyMixin
from gateway.domain.account_readings import ReadingsMixin
from gateway.domain.billing import BillingState, TariffChange
from gateway.domain.emergency import EmergencyCredit
from gateway.domain.errors import InvalidTime
from gateway.domain.guardrails import disconnect_refusal
from gateway.domain.ledger import LedgerEntry
from gateway.domain.lifecycle import LifecycleMixin
from gateway.domain.metering import MeterCursor
from gateway.domain.policy import RateLimiter, SitePolicy
from gateway.domain.state import account_from_state, account_state
from gateway.domain.tariffs import Tariff
from gateway.domain.timeutil import require_aware, utc

__all__ = ["Decision", "MeterCursor", "PrepaidAccount", "Supply", "TariffChange", "Thresholds"]


class Supply(str, enum.Enum):
    """The supply the engine wants for the account (the relay's confirmed state lives with the meter)."""

    CONNECTED = "connected"
    DISCONNECTED = "disconnected"


class Decision(str, enum.Enum):
    NONE = "none"
    DISCONNECT = "disconnect"
    RECONNECT = "reconnect"


# Credit levels, in order of severity.
OK, WARNING_1, WARNING_2, EXHAUSTED, DISCONNECT_POINT = range(5)
CREDIT_STATES = ("ok", "warning1", "warning2", "exhausted", "disconnect_point")


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Balance thresholds in fen.

    Warning 1 and 2 are balances at or below which a low-credit warning goes out (2 is the final one, which
    starts the notice period). The disconnect point is ``-overdraft``; ``overdraft_fen=None`` takes the
    overdraft from the account's credit class (``SitePolicy.credit_classes``). Reconnect happens at or above
    the disconnect point plus ``reconnect_min_topup_fen``.
    """

    warning1_fen: int = 2000
    warning2_fen: int = 500
    overdraft_fen: int | None = None
    reconnect_min_topup_fen: int = 100

    @property
    def disconnect_point_fen(self) -> int:
        return -(self.overdraft_fen or 0)

    @property
    def reconnect_at_fen(self) -> int:
        return self.disconnect_point_fen + self.reconnect_min_topup_fen


class PrepaidAccount(ReadingsMixin, MoneyMixin, LifecycleMixin):
    """One prepaid account: balance, tariff, thresholds, meters' cursors, and the engine's state.

    ``tariff_change``: the tariff from a given time on (``gateway.domain.lifecycle``); ``tariff_switch``: the
    ``(at, name)`` of the last change the account switched to; ``closed_at``: when it was closed.
    """

    def __init__(self, id: str, tariff: Tariff, thresholds: Thresholds | None = None, balance_fen: int = 0,
                 supply: Supply = Supply.CONNECTED, warned_level: int = OK, protected: bool = False,
                 hold_until: dt.datetime | None = None, period_wh: int = 0, period_charged_fen: int = 0,
                 deferred_reason: str = "", *, site: SitePolicy | None = None, credit_class: str = "",
                 operator_protected: bool = False, deferred_detail: str = "",
                 deferred_until: dt.datetime | None = None, final_warning_at: dt.datetime | None = None,
                 billing: BillingState | None = None, emergency: EmergencyCredit | None = None,
                 cursors: Mapping[str, MeterCursor] | None = None, manual_disconnect: bool = False,
                 final_warning_delivered_at: dt.datetime | None = None, final_warning_escalated: bool = False,
                 tariff_change: TariffChange | None = None, tariff_switch: tuple[dt.datetime, str] | None = None,
                 closed_at: dt.datetime | None = None) -> None:
        self.id, self.tariff, self.tariff_change, self.tariff_switch = id, tariff, tariff_change, tariff_switch
        self.closed_at = closed_at
        self.thresholds = thresholds or Thresholds()
        self.site = site or SitePolicy()
        self.credit_class = credit_class
        self.balance_fen, self.supply, self.warned_level = balance_fen, Supply(supply), warned_level
        self.protected = protected  # by configuration (hospital, school, life support)
        self.operator_protected = operator_protected  # by an operator (admin) through the API
        self.hold_until = hold_until
        self.manual_disconnect = manual_disconnect  # an operator cut the supply: no automatic reconnect
        self.deferred_reason, self.deferred_detail, self.deferred_until = deferred_reason, deferred_detail, deferred_until
        self.final_warning_at = final_warning_at  # when the final warning was issued
        # when it reached the customer (or the staff): with the site's notice_delivery, this starts the notice period
        self.final_warning_delivered_at = final_warning_delivered_at
        self.final_warning_escalated = final_warning_escalated  # the staff were told it could not be delivered
        self.billing = billing or BillingState(energy_wh=period_wh, charged_fen=period_charged_fen)
        self.emergency = emergency or EmergencyCredit()
        self.cursors: dict[str, MeterCursor] = dict(cursors or {})
        self.events: list[ev.Event] = []
        self.entries: list[LedgerEntry] = []

    # --- state (state_dict / from_state live in gateway.domain.state) ---------------------------------------
    period_wh = property(lambda self: self.billing.energy_wh)
    period_charged_fen = property(lambda self: self.billing.charged_fen)

    def state_dict(self) -> dict[str, Any]:
        """All mutable state as a JSON-able dict (schema in ``gateway.domain.state``)."""
        return account_state(self)

    @classmethod
    def from_state(cls, state: Mapping[str, Any], *, id: str, tariff: Tariff, thresholds: Thresholds | None = None,
                   site: SitePolicy | None = None, credit_class: str = "", protected: bool = False,
                   tariff_change: TariffChange | None = None) -> PrepaidAccount:
        """Rebuild an account from ``state_dict()`` output and its configuration (``tariff_change``: see
        ``account_from_state``)."""
        return account_from_state(cls, state, id=id, tariff=tariff, thresholds=thresholds, site=site,
                                  credit_class=credit_class, protected=protected, tariff_change=tariff_change)

    # --- credit -------------------------------------------------------------------------------------------
    @property
    def is_protected(self) -> bool:
        return self.protected or self.operator_protected

    @property
    def overdraft_fen(self) -> int:
        if self.thresholds.overdraft_fen is not None:
            return self.thresholds.overdraft_fen
        return self.site.overdraft_for(self.credit_class)

    @property
    def disconnect_point_fen(self) -> int:
        return -self.overdraft_fen

    @property
    def reconnect_at_fen(self) -> int:
        return self.disconnect_point_fen + self.thresholds.reconnect_min_topup_fen

    def credit_level(self) -> int:
        t, b = self.thresholds, self.balance_fen
        if b <= self.disconnect_point_fen:
            return DISCONNECT_POINT
        if b <= 0:
            return EXHAUSTED
        if b <= t.warning2_fen:
            return WARNING_2
        if b <= t.warning1_fen:
            return WARNING_1
        return OK

    def credit_state(self) -> str:
        return CREDIT_STATES[self.credit_level()]

    def settled(self) -> bool:
        """Whether ``evaluate`` would decide nothing and record nothing now, whatever the time.

        True when the warnings match the balance and the supply is where the balance wants it: connected above
        the disconnect point with no deferred disconnect, or disconnected below the reconnect threshold (or by an
        operator). Only time-dependent guardrails could change a decision, and they apply only below the
        disconnect point. A closed account is settled.
        """
        if self.closed_at is not None:
            return True
        level = self.credit_level()
        if level != self.warned_level or (self.final_warning_at is None) == (level >= WARNING_2):
            return False
        if (self.site.notice_delivery and self.final_warning_at is not None
                and self.final_warning_delivered_at is None and not self.final_warning_escalated):
            return False  # the staff are to be told once the warning is overdue (a time-dependent event)
        if self.supply is Supply.DISCONNECTED:
            return self.manual_disconnect or self.balance_fen < self.reconnect_at_fen
        return self.balance_fen > self.disconnect_point_fen and not self.deferred_reason

    def _announce_credit(self) -> None:
        """One warning per crossing downwards; crossing back up re-arms it (and the notice period)."""
        level = self.credit_level()
        if level < WARNING_2:
            self.final_warning_at, self.final_warning_delivered_at, self.final_warning_escalated = None, None, False
        if level < self.warned_level:
            self.warned_level = level
            return
        for crossed in range(self.warned_level + 1, level + 1):
            if crossed in (WARNING_1, WARNING_2):
                self.events.append(ev.CreditLow(self.id, crossed, self.balance_fen))
            elif crossed == EXHAUSTED:
                self.events.append(ev.CreditExhausted(self.id, self.balance_fen))
        self.warned_level = level


    def final_warning_delivered(self, issued_at: dt.datetime, delivered_at: dt.datetime, to: str = "") -> bool:
        """The final warning issued at ``issued_at`` reached ``to`` at ``delivered_at``. Counts only for the
        current warning (one issued since the balance last fell to the final level) and only once; returns
        whether it counted."""
        issued_at, delivered_at = utc(issued_at, "issued_at"), utc(delivered_at, "delivered_at")
        if self.final_warning_at is None or issued_at < self.final_warning_at or self.final_warning_delivered_at:
            return False
        self.final_warning_delivered_at = delivered_at
        self.events.append(ev.FinalWarningDelivered(self.id, self.final_warning_at, delivered_at, to))
        return True

    # --- operator flags -----------------------------------------------------------------------------------
    def set_protected(self, protected: bool, *, by: str = "") -> None:
        self._require_open()
        if protected != self.operator_protected:
            self.operator_protected = protected
            self.events.append(ev.ProtectionChanged(self.id, protected, by))

    def place_hold(self, until: dt.datetime, *, now: dt.datetime | None = None, by: str = "") -> None:
        """No automatic disconnect before ``until`` (e.g. after a manual reconnect below the disconnect point);
        with ``now``, a hold that ends by then is refused."""
        self._require_open()
        until = utc(until, "until")
        if now is not None and until <= now:
            raise InvalidTime(f"the hold must end in the future (it ends {until.isoformat()})")
        self.hold_until = until
        self.events.append(ev.HoldChanged(self.id, until, by))

    def release_hold(self, *, by: str = "") -> None:
        if self.hold_until is not None:
            self.hold_until = None
            self.events.append(ev.HoldChanged(self.id, None, by))

    def manual_switch(self, action: str, now: dt.datetime, *, hold: dt.timedelta | None = None,
                      by: str = "") -> dt.datetime | None:
        """An operator disconnected ("open") or reconnected ("close") the supply by hand.

        A manual disconnect is not undone automatically (a payment does not reconnect it); an operator's
        reconnect ends that. A manual reconnect of an account at or below its disconnect point places an
        operator hold for ``hold`` so the engine does not cut it off again at once; returns the hold's end.
        """
        require_aware(now, "now")
        if action == "open":
            self.manual_disconnect = True
            self.supply = Supply.DISCONNECTED
            self._clear_deferral()
            return None
        if action != "close":
            raise ValueError(f"unknown relay action {action!r}")
        self.manual_disconnect = False
        self.supply = Supply.CONNECTED
        if self.balance_fen <= self.disconnect_point_fen and hold is not None:
            until = now + hold
            self.place_hold(until, by=by)
            return until
        return None

    def withdraw_disconnect(self, meter_id: str, why: str) -> None:
        """An automatic disconnect whose trip was withdrawn before it went out (the meter stopped answering after
        the decision): the supply is wanted again, and the disconnect deferred until the engine decides again on a
        fresh reading of ``meter_id`` (``evaluate`` with the meter among the ``offline`` ones refuses it until
        then)."""
        if self.supply is not Supply.DISCONNECTED or self.manual_disconnect or self.closed_at is not None:
            return
        self.supply = Supply.CONNECTED
        self.deferred_reason, self.deferred_detail, self.deferred_until = "meter_offline", meter_id, None
        self.events.append(ev.DisconnectDeferred(self.id, "meter_offline", self.balance_fen, f"{meter_id}: {why}"))

    # --- decisions ----------------------------------------------------------------------------------------
    def evaluate(self, now: dt.datetime, *, readings_ok: bool = True, why_not_ok: str = "",
                 offline: Collection[str] = (), limiter: RateLimiter | None = None) -> Decision:
        """Decide whether the supply must change. Guardrails may defer a disconnect; reconnects always go.

        ``offline``: ids of the account's meters the scheduler reports offline. ``readings_ok=False`` with
        ``why_not_ok`` lets the caller block for reasons of its own. ``limiter``: the site's rate limiter (a
        disconnect decided here is recorded in it). A refusal is recorded once per reason; its detail and
        ``deferred_until`` are kept up to date silently. A closed account decides nothing and records nothing.
        """
        require_aware(now, "now")
        if self.closed_at is not None:
            return Decision.NONE
        self._announce_credit()  # a level reached without a movement (opening balance, new thresholds) warns too
        if self.warned_level >= WARNING_2 and self.final_warning_at is None:
            self.final_warning_at = now  # the final warning goes out with this transaction: notice starts
        if self._warning_overdue(now):  # not delivered in time: the staff are told, once (whatever the balance)
            self.final_warning_escalated = True
            assert self.final_warning_at is not None
            self.events.append(ev.FinalWarningUndelivered(self.id, self.final_warning_at, self.balance_fen))
        if self.supply is Supply.DISCONNECTED:
            if self.balance_fen >= self.reconnect_at_fen and not self.manual_disconnect:
                self.supply = Supply.CONNECTED
                self._clear_deferral()
                self.events.append(ev.ReconnectRequired(self.id, self.balance_fen))
                return Decision.RECONNECT
            return Decision.NONE
        if self.balance_fen > self.disconnect_point_fen:
            if self.deferred_reason:
                self._clear_deferral()
                self.events.append(ev.DisconnectWithdrawn(self.id, self.balance_fen))
            return Decision.NONE
        refusal = disconnect_refusal(self, now, readings_ok=readings_ok, why_not_ok=why_not_ok, offline=offline,
                                     limiter=limiter)
        if refusal is not None:
            if refusal.reason != self.deferred_reason:  # recorded once per reason, not once per evaluation
                self.events.append(ev.DisconnectDeferred(self.id, refusal.reason, self.balance_fen, refusal.detail,
                                                         refusal.until))
            self.deferred_reason, self.deferred_detail, self.deferred_until = (refusal.reason, refusal.detail,
                                                                               refusal.until)
            return Decision.NONE
        if limiter is not None:
            limiter.record(now)
        self._clear_deferral()
        self.supply = Supply.DISCONNECTED
        self.events.append(ev.DisconnectRequired(self.id, self.balance_fen))
        return Decision.DISCONNECT

    def _warning_overdue(self, now: dt.datetime) -> bool:
        """The final warning is not delivered within the site's delivery timeout, and the staff not told yet."""
        issued = self.final_warning_at
        return (self.site.notice_delivery and issued is not None and self.final_warning_delivered_at is None
                and not self.final_warning_escalated and now >= issued + self.site.notice_delivery_timeout)

    def disconnect_blocked_by(self, now: dt.datetime, *, readings_ok: bool = True, why_not_ok: str = "") -> str:
        """The reason code of the guardrail that forbids an automatic disconnect now, or "" when none does."""
        refusal = disconnect_refusal(self, now, readings_ok=readings_ok, why_not_ok=why_not_ok)
        return refusal.reason if refusal is not None else ""

    def _clear_deferral(self) -> None:
        self.deferred_reason, self.deferred_detail, self.deferred_until = "", "", None
