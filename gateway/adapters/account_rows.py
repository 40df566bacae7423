"""How a prepaid account is stored: one row keeps the engine's whole state as a JSON document
(``gateway.domain.state``) plus a few columns for queries (balance, supply, deferral), written together."""

from __future__ import annotations

import datetime as dt
from typing import Any

from gateway.adapters.bulk import RawJson, dumps_json
from gateway.domain.account import PrepaidAccount
from gateway.domain.metering import MeterCursor
from gateway.domain.state import STATE_VERSION

__all__ = ["account_row", "state_json"]


def account_row(account: PrepaidAccount, now: dt.datetime) -> dict[str, Any]:
    """The columns of an account's row: the state document and the columns kept for queries."""
    return dict(balance_fen=account.balance_fen, supply=account.supply.value, deferred_reason=account.deferred_reason,
                deferred_until=account.deferred_until, state=state_json(account), updated_at=now)


def state_json(account: PrepaidAccount) -> RawJson:
    """``account.state_dict()`` as JSON text, encoded by orjson from plain dicts (the writer's hot path: orjson
    takes several times longer over a dataclass than over a dict of its fields).

    Values that ``PrepaidAccount.from_state`` takes by default (no hold, no deferral, no emergency credit, a
    meter's default configuration, nothing quarantined...) are left out: the row stays small, and a smaller row
    is fewer pages for SQLite to write. It reads back to the same state."""
    a, b, e = account, account.billing, account.emergency
    document: dict[str, Any] = {"version": STATE_VERSION, "balance_fen": a.balance_fen, "supply": a.supply.value}
    if a.warned_level:
        document["warned_level"] = a.warned_level
    for name in _OPTIONAL:
        value = getattr(a, name)
        if value:  # False, "" and None are the defaults
            document[name] = value
    billing: dict[str, Any] = {"period_start": b.period_start, "energy_wh": b.energy_wh, "charged_fen": b.charged_fen}
    if b.rate_wh:
        billing["rate_wh"] = b.rate_wh
    if b.base_wh or b.base_rate_wh or b.base_fen:  # a tariff change within the period (gateway.domain.billing)
        billing.update(base_wh=b.base_wh, base_rate_wh=b.base_rate_wh, base_fen=b.base_fen)
    document["billing"] = billing
    if a.tariff_switch is not None:
        document["tariff_switch"] = {"at": a.tariff_switch[0], "name": a.tariff_switch[1]}
    if a.closed_at is not None:
        document["closed_at"] = a.closed_at
    if e.outstanding_fen or e.granted_period is not None or e.granted_at is not None or e.repaid:
        document["emergency"] = {"outstanding_fen": e.outstanding_fen, "granted_period": e.granted_period,
                                 "granted_at": e.granted_at, "repaid": e.repaid_rows()}
    meters = document["meters"] = {}
    for meter_id, c in a.cursors.items():
        cursor: dict[str, Any] = {"energy_wh": c.energy_wh, "taken_at": c.taken_at, "seen_at": c.seen_at}
        if c.rates_wh is not None:
            cursor["rates_wh"] = c.rates_wh
        if c.pending is not None:
            cursor["pending"] = c.pending
        if c.max_power_w != _METER.max_power_w:
            cursor["max_power_w"] = c.max_power_w
        if c.margin != _METER.margin:
            cursor["margin"] = c.margin
        if c.resolution_wh != _METER.resolution_wh:
            cursor["resolution_wh"] = c.resolution_wh
        if c.rollover_wh is not None:
            cursor["rollover_wh"] = c.rollover_wh
        meters[meter_id] = cursor
    return RawJson(dumps_json(document))


_OPTIONAL = ("operator_protected", "hold_until", "manual_disconnect", "deferred_reason", "deferred_detail",
             "deferred_until", "final_warning_at", "final_warning_delivered_at", "final_warning_escalated")
_METER = MeterCursor("")  # a meter's default configuration, as MeterCursor.from_dict takes it
