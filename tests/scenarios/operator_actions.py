"""Operator actions on an account, made as the API's routes make them (``gateway/api/routes/accounts.py`` and
``meters.py``): the same function of the account through ``service.change_account``, the same audit action and
detail, the caller's key name as the actor and as the events' ``by``. Amounts are parsed as the API parses them;
the caller's role is not checked here (the API's own tests do that).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from gateway.domain.account import PrepaidAccount
from gateway.domain.money import parse_yuan
from gateway.domain.timeutil import from_iso, parse_duration
from gateway.service.facade import Service

__all__ = ["OPERATOR", "OPERATOR_ACTIONS", "amount_fen", "operator_action"]

OPERATOR = "operator"  # the name of the API key operator actions are taken under
OPERATOR_ACTIONS = ("protect", "unprotect", "hold", "release_hold", "accept", "rebase", "emergency_credit", "adjust")


def amount_fen(service: Service, value: Any, *, allow_negative: bool = False) -> int:
    """An amount as the API parses it (a decimal string in yuan, at most the site's maximum)."""
    return parse_yuan(str(value), max_fen=service.catalog.max_payment_fen, allow_negative=allow_negative)


async def operator_action(service: Service, action: str, account_id: str, params: dict[str, Any],
                          now: dt.datetime) -> Any:
    """Perform one operator action; returns what the route's change returned (a charge for accept/rebase)."""
    reason = str(params.get("reason", "scenario"))

    async def change(apply: Any, audit: str, detail: dict[str, Any]) -> Any:
        return await service.change_account(account_id, apply, actor=OPERATOR, action=audit, detail=detail)

    if action in ("protect", "unprotect"):  # PUT /v1/accounts/{id}/protection
        protected = action == "protect"
        return await change(lambda a, now: a.set_protected(protected, by=OPERATOR), "account.protection",
                            {"protected": protected, "reason": reason})
    if action in ("hold", "release_hold"):  # PUT /v1/accounts/{id}/hold
        until: dt.datetime | None = None
        if action == "hold":
            until = (from_iso(params["until"]) if "until" in params
                     else now + parse_duration(params["for"], "for"))

        def hold(account: PrepaidAccount, now: dt.datetime) -> None:
            if until is None:
                account.release_hold(by=OPERATOR)
            else:
                account.place_hold(until, now=now, by=OPERATOR)

        return await change(hold, "account.hold",
                            {"until": until.isoformat() if until else None, "reason": reason})
    if action == "emergency_credit":  # POST /v1/accounts/{id}/emergency-credit
        amount = amount_fen(service, params["amount"]) if "amount" in params else None
        return await change(lambda a, now: a.grant_emergency_credit(now, amount_fen=amount, by=OPERATOR),
                            "account.emergency_credit", {"amount_fen": amount, "reason": reason})
    if action == "adjust":  # POST /v1/accounts/{id}/adjustments
        amount = amount_fen(service, params["amount"], allow_negative=True)
        why = str(params["reason"])
        return await change(lambda a, now: a.apply_adjustment(amount, why, reference=f"by {OPERATOR}"),
                            "account.adjustment", {"amount_fen": amount, "reason": why})
    if action in ("accept", "rebase"):  # POST /v1/meters/{id}/quarantine/{accept|rebase}
        meter_id = str(params["meter"])
        energy_wh = params.get("energy_wh")

        def resolve(account: PrepaidAccount, now: dt.datetime) -> int:
            if action == "accept":
                return account.accept_reading(meter_id, energy_wh=energy_wh, by=OPERATOR)
            taken_at = now if energy_wh is not None else None
            return account.rebase_meter(meter_id, energy_wh=energy_wh, taken_at=taken_at, now=now, by=OPERATOR)

        charge = await change(resolve, f"quarantine.{action}", {"meter_id": meter_id, "reason": reason,
                                                                "energy_wh": energy_wh, "taken_at": None})
        return int(charge or 0)
    raise AssertionError(f"unknown action {action}")
