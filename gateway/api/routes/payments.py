from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Response

from gateway.api.deps import BillingCaller, Caller, ServiceDep
from gateway.api.fields import PaymentId, Source
from gateway.api.jsonbody import StrictJsonRoute
from gateway.api.problems import AUTHENTICATED, Problem, responses
from gateway.api.schemas import PaymentCreate, PaymentPublic, ReversalCreate
from gateway.domain.money import format_fen, parse_yuan

__all__ = ["payment_public", "router"]

router = APIRouter(prefix="/v1/payments", tags=["payments"], route_class=StrictJsonRoute)


def payment_public(r: dict[str, Any]) -> PaymentPublic:
    """A payment's record as the API shows it."""
    return PaymentPublic(source=r["source"], payment_id=r["payment_id"], account_id=r["account_id"],
                         amount=format_fen(r["amount_fen"]), paid_at=r["paid_at"], channel=r["channel"],
                         balance=format_fen(r["balance_after_fen"]), received_at=r["received_at"],
                         reversed_at=r.get("reversed_at"), reversal_reason=r.get("reversal_reason"),
                         recorded_by=r.get("recorded_by"), reversed_by=r.get("reversed_by"))


def _own_source(caller: Caller, source: str) -> None:
    if not caller.may_post_for(source):
        raise Problem("authority-exceeded", f"the key {caller.name!r} posts only for the sources "
                                            f"{', '.join(sorted(caller.sources or ()))}, not {source!r}")


@router.post("", status_code=201, response_model=PaymentPublic,
             responses={201: {"description": "recorded", "links": {"ReversePayment": {
                            "operationId": "reversePayment", "parameters": {
                                "source": "$response.body#/source", "payment_id": "$response.body#/payment_id"}}}},
                        200: {"description": "the same payment again: the first result, nothing changed",
                              "model": PaymentPublic},
                        **responses(*AUTHENTICATED, "authority-exceeded", "not-found", "payment-conflict",
                                    "content-too-large", "account-state-unreadable", "unavailable")})
async def create_payment(body: PaymentCreate, response: Response, service: ServiceDep,
                         caller: BillingCaller) -> PaymentPublic:
    """Record a payment exactly once; a 2xx means it is durably committed."""
    _own_source(caller, body.source)
    amount_fen = parse_yuan(body.amount, max_fen=service.catalog.max_payment_fen)
    result = await service.record_payment(source=body.source, payment_id=body.payment_id,
                                          account_id=body.account_id, amount_fen=amount_fen,
                                          paid_at=body.paid_at, channel=body.channel, recorded_by=caller.name)
    if not result.created:
        response.status_code = 200
    return payment_public(result.record)


@router.post("/{source}/{payment_id:path}/reversal", status_code=201, response_model=PaymentPublic,
             operation_id="reversePayment",
             responses={200: {"description": "already reversed: the first result, nothing changed",
                              "model": PaymentPublic},
                        **responses(*AUTHENTICATED, "authority-exceeded", "not-found", "content-too-large",
                                    "account-state-unreadable", "unavailable")})
async def reverse_payment(source: Annotated[Source, Path()], payment_id: Annotated[PaymentId, Path()],
                          body: ReversalCreate, response: Response, service: ServiceDep,
                          caller: BillingCaller) -> PaymentPublic:
    """Reverse a payment once: its credit leaves the balance (which may disconnect the account, guardrails
    permitting). A payment id that contains `/` is written as it is (`/v1/payments/bank/2026/11/0042/reversal`)."""
    _own_source(caller, source)
    result = await service.reverse_payment(source=source, payment_id=payment_id, reason=body.reason,
                                           reversed_by=caller.name)
    if not result.created:
        response.status_code = 200
    return payment_public(result.record)
