"""The account's mutable state as one JSON-able dict (one JSON column), and back.

Configuration (tariff, thresholds, site policy, credit class, protection by configuration) is not in it: the
service passes it to ``PrepaidAccount.from_state`` from its settings. A key may be absent when its value is the
default ``from_state`` takes (the writer's ``state_json`` leaves those out). Schema (version 1)::

    {"version": 1,
     "balance_fen": int, "supply": "connected" | "disconnected", "warned_level": 0..4,
     "operator_protected": bool, "hold_until": iso | null, "manual_disconnect": bool,
     "deferred_reason": str, "deferred_detail": str, "deferred_until": iso | null,
     "final_warning_at": iso | null, "final_warning_delivered_at": iso | null, "final_warning_escalated": bool,
     "billing": {"period_start": "YYYY-MM-DD" | null, "energy_wh": int, "rate_wh": {rate: int}, "charged_fen": int},
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

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from gateway.domain.billing import BillingState
from gateway.domain.emergency import EmergencyCredit
from gateway.domain.metering import MeterCursor
from gateway.domain.timeutil import from_iso, to_iso

if TYPE_CHECKING:
    from gateway.domain.account import PrepaidAccount, Thresholds
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
        "meters": {meter_id: cursor.to_dict() for meter_id, cursor in sorted(account.cursors.items())},
    }


def account_from_state(cls: type[PrepaidAccount], state: Mapping[str, Any], *, id: str, tariff: Tariff,
                       thresholds: Thresholds | None, site: SitePolicy | None, credit_class: str,
                       protected: bool) -> PrepaidAccount:
    version = state.get("version", STATE_VERSION)
    if version != STATE_VERSION:
        raise ValueError(f"account {id}: unsupported state version {version!r}")
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
    )
