from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Response

from gateway.api.deps import BillingCaller, ServiceDep
from gateway.api.schemas import PaymentCreate, PaymentPublic, ReversalCreate
from gateway.domain.money import AmountError, format_fen, parse_yuan
from gateway.service.accounts import UnknownAccount
from gateway.service.handlers import PaymentConflict, UnknownPayment

router = APIRouter(prefix="/v1/payments", tags=["payments"])


def _public(r: dict[str, Any]) -> PaymentPublic:
    return PaymentPublic(source=r["source"], payment_id=r["payment_id"], account_id=r["account_id"],
                         amount=format_fen(r["amount_fen"]), paid_at=r["paid_at"], channel=r["channel"],
                         balance=format_fen(r["balance_after_fen"]), received_at=r["received_at"],
                         reversed_at=r.get("reversed_at"), reversal_reason=r.get("reversal_reason"))


@router.post("", status_code=201, response_model=PaymentPublic,
             responses={200: {"description": "the same payment again: the first result, nothing changed"},
                        409: {"description": "the same payment id with other content"}})
async def create_payment(body: PaymentCreate, response: Response, service: ServiceDep,
                         caller: BillingCaller) -> PaymentPublic:
    """Record a payment exactly once; a 2xx means it is durably committed."""
    try:
        amount_fen = parse_yuan(body.amount, max_fen=service.catalog.max_payment_fen)
    except AmountError as exc:
        raise HTTPException(422, f"amount: {exc}") from None
    try:
        result = await service.record_payment(source=body.source, payment_id=body.payment_id,
                                              account_id=body.account_id, amount_fen=amount_fen,
                                              paid_at=body.paid_at, channel=body.channel)
    except UnknownAccount:
        raise HTTPException(404, f"no account {body.account_id!r}") from None
    except PaymentConflict as exc:
        raise HTTPException(409, str(exc)) from None
    if not result.created:
        response.status_code = 200
    return _public(result.record)


@router.post("/{source}/{payment_id}/reversal", status_code=201, response_model=PaymentPublic,
             responses={200: {"description": "already reversed: the first result, nothing changed"}})
async def reverse_payment(source: str, payment_id: str, body: ReversalCreate, response: Response,
                          service: ServiceDep, caller: BillingCaller) -> PaymentPublic:
    """Reverse a payment once: its credit leaves the balance (which may disconnect the account, guardrails
    permitting)."""
    try:
        result = await service.reverse_payment(source=source, payment_id=payment_id, reason=body.reason)
    except UnknownPayment:
        raise HTTPException(404, f"no payment {source}/{payment_id}") from None
    if not result.created:
        response.status_code = 200
    return _public(result.record)
