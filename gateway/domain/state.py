"""The account's mutable state as one JSON-able dict (one JSON column), and back.

Configuration (tariff, thresholds, site policy, credit class, protection by configuration) is not in it: the
service passes it to ``PrepaidAccount.from_state`` from its settings. A key may be absent when its value is the
default ``from_state`` takes (the writer's ``state_json`` leaves those out), so a state written before a key
existed reads as its default. Schema (version 1)::

    {"version": 1,
     "balance_fen": int, "supply": "connected" | "disconnected", "warned_level": 0..4,
     "operator_protected": bool, "hold_until": iso | null, "manual_disconnect": bool,
     "deferred_reason": str, "deferred_detail": str, "deferred_until": iso | null,
     "final_warning_at": iso | null, "final_warning_delivered_at": iso | null, "final_warning_escalated": bool,
     "billing": {"period_start": "YYYY-MM-DD" | null, "energy_wh": int, "rate_wh": {rate: int}, "charged_fen": int,
                 # only after a tariff change within the period: where the period stood at the switch
                 "base_wh": int, "base_rate_wh": {rate: int}, "base_fen": int},
     "tariff_switch": null | {"at": iso, "name": str},   # the last tariff change the account switched to
     "closed_at": iso | null,                             # when the account was closed
     "emergency": {"outstanding_fen": int, "granted_period": str | null, "granted_at": iso | null,
                   "repaid": [[source, payment_id, paid_fen, repaid_fen], ...]},
     "meters": {meter_id: {"energy_wh": int | null, "taken_at": iso | null, "rates_wh": [int] | null,
                           "seen_at": iso | null, "max_power_w": int, "margin": float, "resolution_wh": int,
                           "rollover_wh": int | null,
                           "pending": null | {"reading": {"energy_wh", "taken_at", "rates_wh"},
                                              "kind": "backwards" | "jump", "reason": str,
                                              "latest": null | {"energy_wh", "taken_at", "rates_wh"}}}}}
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from gateway.domain.billing import BillingState
from gateway.domain.emergency import EmergencyCredit
from gateway.domain.metering import MeterCursor
from gateway.domain.timeutil import from_iso, to_iso

if TYPE_CHECKING:
    from gateway.domain.account import PrepaidAccount, Thresholds
    from gateway.domain.billing import TariffChange
    from gateway.domain.policy import SitePolicy
    from gateway.domain.tariffs import Tariff

__all__ = ["STATE_VERSION", "account_from_state", "account_state"]

STATE_VERSION = 1


def account_state(account: PrepaidAccount) -> dict[str, Any]:
    return {
        "version": STATE_VERSION,
        "balance_fen": account.balance_fen,
        "supply": account.supply.value,
        "warned_level": account.warned_level,
        "operator_protected": account.operator_protected,
        "hold_until": to_iso(account.hold_until),
        "manual_disconnect": account.manual_disconnect,
        "deferred_reason": account.deferred_reason,
        "deferred_detail": account.deferred_detail,
        "deferred_until": to_iso(account.deferred_until),
        "final_warning_at": to_iso(account.final_warning_at),
        "final_warning_delivered_at": to_iso(account.final_warning_delivered_at),
        "final_warning_escalated": account.final_warning_escalated,
        "billing": account.billing.to_dict(),
        "emergency": account.emergency.to_dict(),
        "tariff_switch": ({"at": to_iso(account.tariff_switch[0]), "name": account.tariff_switch[1]}
                          if account.tariff_switch is not None else None),
        "closed_at": to_iso(account.closed_at),
        "meters": {meter_id: cursor.to_dict() for meter_id, cursor in sorted(account.cursors.items())},
    }


def account_from_state(cls: type[PrepaidAccount], state: Mapping[str, Any], *, id: str, tariff: Tariff,
                       thresholds: Thresholds | None, site: SitePolicy | None, credit_class: str,
                       protected: bool, tariff_change: TariffChange | None = None) -> PrepaidAccount:
    """The account of ``state`` with its configuration. ``tariff`` and ``tariff_change`` are the configured
    tariff and its pending change: when the state records the switch to that very change (``tariff_switch``
    equal to its time and name), the account bills at the change's tariff with nothing pending (the service
    may go on passing both until it promotes its configuration)."""
    version = state.get("version", STATE_VERSION)
    if version != STATE_VERSION:
        raise ValueError(f"account {id}: unsupported state version {version!r}")
    switched = _switch(state.get("tariff_switch"))
    if tariff_change is not None and switched == (tariff_change.at, tariff_change.name):
        tariff, tariff_change = tariff_change.tariff, None
    return cls(
        id, tariff, thresholds,
        balance_fen=int(state.get("balance_fen", 0)),
        supply=state.get("supply", "connected"),
        warned_level=int(state.get("warned_level", 0)),
        protected=protected,
        hold_until=from_iso(state.get("hold_until")),
        deferred_reason=state.get("deferred_reason", ""),
        site=site,
        credit_class=credit_class,
        operator_protected=bool(state.get("operator_protected", False)),
        deferred_detail=state.get("deferred_detail", ""),
        deferred_until=from_iso(state.get("deferred_until")),
        final_warning_at=from_iso(state.get("final_warning_at")),
        final_warning_delivered_at=from_iso(state.get("final_warning_delivered_at")),
        final_warning_escalated=bool(state.get("final_warning_escalated", False)),
        billing=BillingState.from_dict(state.get("billing") or {}),
        emergency=EmergencyCredit.from_dict(state.get("emergency") or {}),
        cursors={str(m): MeterCursor.from_dict(str(m), d) for m, d in (state.get("meters") or {}).items()},
        manual_disconnect=bool(state.get("manual_disconnect", False)),
        tariff_change=tariff_change,
        tariff_switch=switched,
        closed_at=from_iso(state.get("closed_at")),
    )


def _switch(data: Mapping[str, Any] | None) -> tuple[dt.datetime, str] | None:
    """``{"at": iso, "name": str}`` -> ``(at, name)``."""
    if not data:
        return None
    at = from_iso(data["at"])
    if at is None:
        raise ValueError(f"tariff_switch without a time: {data!r}")
    return at, str(data["name"])
