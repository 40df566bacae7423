from __future__ import annotations

from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Depends, HTTPException, Query

from gateway.adapters import tables as t
from gateway.api.deps import AnyCaller, Caller, OperatorCaller, ServiceDep, require
from gateway.api.schemas import (AccountPublic, AdjustmentCreate, EmergencyCreditCreate, HoldUpdate,
                                 LedgerEntryPublic, LedgerList, ProtectionUpdate)
from gateway.domain.account import PrepaidAccount
from gateway.domain.errors import DomainError
from gateway.domain.money import AmountError, format_fen, parse_yuan
from gateway.service.accounts import UnknownAccount
from gateway.service.handlers import Service

router = APIRouter(prefix="/v1/accounts", tags=["accounts"])
AdminCaller = Annotated[Caller, Depends(require("admin"))]


async def _public(service: Service, account_id: str) -> AccountPublic:
    spec = service.catalog.accounts.get(account_id)
    async with service.uow(readonly=True) as uow:
        row = (await uow.execute(sa.select(t.accounts).where(t.accounts.c.id == account_id))).one_or_none()
    if row is None or spec is None:
        raise HTTPException(404, f"no account {account_id!r}")
    account = service.catalog.account(row.id, row.state)
    return AccountPublic(
        id=row.id, balance=format_fen(row.balance_fen), state=row.supply, credit=account.credit_state(),
        meters=list(spec.meter_ids), protected=account.is_protected,
        disconnect_deferred_because=row.deferred_reason or None, updated_at=row.updated_at,
        deferred_detail=account.deferred_detail or None, deferred_until=account.deferred_until,
        hold_until=account.hold_until, manual_disconnect=account.manual_disconnect,
        credit_class=account.credit_class or None, disconnect_point=format_fen(account.disconnect_point_fen),
        reconnect_at=format_fen(account.reconnect_at_fen),
        emergency_credit_outstanding=format_fen(account.emergency.outstanding_fen))


@router.get("/{account_id}", response_model=AccountPublic)
async def get_account(account_id: str, service: ServiceDep, caller: AnyCaller) -> AccountPublic:
    """One account: balance, supply state, credit level, meters, guardrails in force."""
    return await _public(service, account_id)


@router.get("/{account_id}/ledger", response_model=LedgerList)
async def ledger(account_id: str, service: ServiceDep, caller: AnyCaller, limit: int = Query(100, ge=1, le=1000),
                 before_id: int | None = Query(None, description="page: entries older than this id")) -> LedgerList:
    """The account's ledger, newest first (append-only; the balance is the sum of all entries)."""
    if account_id not in service.catalog.accounts:
        raise HTTPException(404, f"no account {account_id!r}")
    query = sa.select(t.ledger).where(t.ledger.c.account_id == account_id)
    if before_id is not None:
        query = query.where(t.ledger.c.id < before_id)
    async with service.uow(readonly=True) as uow:
        rows = (await uow.execute(query.order_by(t.ledger.c.id.desc()).limit(limit))).all()
    data = [LedgerEntryPublic(id=r.id, kind=r.kind, amount=format_fen(r.amount_fen),
                              balance_after=format_fen(r.balance_after_fen), created_at=r.created_at,
                              reference=r.reference, meter_id=r.meter_id, energy_wh=r.energy_wh, period=r.period,
                              detail=r.detail) for r in rows]
    return LedgerList(data=data, next_before_id=data[-1].id if len(data) == limit else None)


async def _change(service: Service, account_id: str, apply: Any, caller: Caller, action: str,
                  detail: dict[str, Any]) -> AccountPublic:
    try:
        await service.change_account(account_id, apply, actor=caller.name, action=action, detail=detail)
    except UnknownAccount:
        raise HTTPException(404, f"no account {account_id!r}") from None
    except DomainError as exc:
        raise HTTPException(409, str(exc)) from None
    return await _public(service, account_id)


@router.post("/{account_id}/emergency-credit", response_model=AccountPublic,
             responses={409: {"description": "already granted this period, or earlier credit not repaid"}})
async def emergency_credit(account_id: str, body: EmergencyCreditCreate, service: ServiceDep,
                           caller: OperatorCaller) -> AccountPublic:
    """Grant emergency credit (once per period; repaid from the next payment)."""
    try:
        amount = None if body.amount is None else parse_yuan(body.amount, max_fen=service.catalog.max_payment_fen)
    except AmountError as exc:
        raise HTTPException(422, f"amount: {exc}") from None

    def grant(account: PrepaidAccount, now: Any) -> int:
        return account.grant_emergency_credit(now, amount_fen=amount, by=caller.name)

    return await _change(service, account_id, grant, caller, "account.emergency_credit",
                         {"amount_fen": amount, "reason": body.reason})


@router.put("/{account_id}/protection", response_model=AccountPublic)
async def protection(account_id: str, body: ProtectionUpdate, service: ServiceDep,
                     caller: AdminCaller) -> AccountPublic:
    """Put an account under protection (保电: never disconnected automatically) or release it. Admin only."""
    return await _change(service, account_id, lambda a, now: a.set_protected(body.protected, by=caller.name),
                         caller, "account.protection", {"protected": body.protected, "reason": body.reason})


@router.put("/{account_id}/hold", response_model=AccountPublic)
async def hold(account_id: str, body: HoldUpdate, service: ServiceDep, caller: OperatorCaller) -> AccountPublic:
    """Hold off automatic disconnects until a time (null releases the hold)."""
    if body.until is not None and body.until.tzinfo is None:
        raise HTTPException(422, "until needs a time zone (use UTC, e.g. 2026-11-24T08:00:00Z)")

    def apply(account: PrepaidAccount, now: Any) -> None:
        if body.until is None:
            account.release_hold(by=caller.name)
        else:
            account.place_hold(body.until, by=caller.name)

    return await _change(service, account_id, apply, caller, "account.hold",
                         {"until": body.until.isoformat() if body.until else None, "reason": body.reason})


@router.post("/{account_id}/adjustments", response_model=AccountPublic)
async def adjustment(account_id: str, body: AdjustmentCreate, service: ServiceDep,
                     caller: AdminCaller) -> AccountPublic:
    """A signed correction of the balance with its reason (a ledger entry of kind adjustment). Admin only."""
    try:
        amount = parse_yuan(body.amount, max_fen=service.catalog.max_payment_fen, allow_negative=True)
    except AmountError as exc:
        raise HTTPException(422, f"amount: {exc}") from None
    return await _change(service, account_id,
                         lambda a, now: a.apply_adjustment(amount, body.reason, reference=f"by {caller.name}"),
                         caller, "account.adjustment", {"amount_fen": amount, "reason": body.reason})
