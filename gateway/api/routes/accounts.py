from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query

from gateway.api.deps import AdminCaller, AnyCaller, Caller, OperatorCaller, ServiceDep
from gateway.api.fields import Name, RowId
from gateway.api.jsonbody import StrictJsonRoute
from gateway.api.list_schemas import AccountList, BalanceBound, SupplyState, fen
from gateway.api.problems import AUTHENTICATED, Problem, responses
from gateway.api.schemas import (
    AccountPublic,
    AdjustmentCreate,
    EmergencyCreditCreate,
    HoldUpdate,
    LedgerList,
    ProtectionUpdate,
)
from gateway.domain.account import PrepaidAccount
from gateway.domain.money import format_fen, parse_yuan
from gateway.service.facade import Service
from gateway.service.lists import AccountFilter

router = APIRouter(prefix="/v1/accounts", tags=["accounts"], route_class=StrictJsonRoute)
AccountId = Annotated[Name, Path(examples=["A-1"])]
_READ = responses(*AUTHENTICATED, "not-found", "account-state-unreadable")
_CHANGE = responses(*AUTHENTICATED, "not-found", "account-state-unreadable", "content-too-large", "unavailable")


async def _public(service: Service, account_id: str) -> AccountPublic:
    return AccountPublic.model_validate(await service.views.account(account_id))


@router.get("", response_model=AccountList, responses=responses(*AUTHENTICATED))
async def list_accounts(
        service: ServiceDep, caller: AnyCaller,
        state: Annotated[SupplyState | None, Query(description="the supply as the meters confirmed it (as "
                                                               "`GET /v1/accounts/{id}` shows it)")] = None,
        supply: Annotated[Literal["connected", "disconnected"] | None,
                          Query(description="what the engine wants for the supply")] = None,
        status: Annotated[Literal["open", "closed"] | None, Query()] = None,
        balance_min: Annotated[BalanceBound | None, Query(description="yuan, inclusive")] = None,
        balance_max: Annotated[BalanceBound | None, Query(description="yuan, inclusive")] = None,
        credit_class: Annotated[Name | None, Query(examples=["B"])] = None,
        protected: Annotated[bool | None, Query(description="under protection (保电), by configuration or by "
                                                            "an admin")] = None,
        meter_id: Annotated[Name | None, Query(description="the account of this meter", examples=["M-1"])] = None,
        limit: Annotated[int, Query(ge=1, le=1000, examples=[100])] = 100,
        after: Annotated[Name | None, Query(description="page: accounts whose id sorts after this")] = None,
        ) -> AccountList:
    """Accounts by id, filtered: supply state, status, balance range, credit class, protection, meter."""
    which = AccountFilter(state=state, supply=supply, status=status, balance_min_fen=fen(balance_min),
                          balance_max_fen=fen(balance_max), credit_class=credit_class, protected=protected,
                          meter_id=meter_id, after=after, limit=limit)
    return AccountList.model_validate(await service.lists.accounts(which))


@router.get("/{account_id}", response_model=AccountPublic, responses=_READ)
async def get_account(account_id: AccountId, service: ServiceDep, caller: AnyCaller) -> AccountPublic:
    """One account: balance, supply state, credit level, meters, guardrails in force."""
    return await _public(service, account_id)


@router.get("/{account_id}/ledger", response_model=LedgerList, responses=responses(*AUTHENTICATED, "not-found"))
async def ledger(account_id: AccountId, service: ServiceDep, caller: AnyCaller,
                 limit: Annotated[int, Query(ge=1, le=1000, examples=[100])] = 100,
                 before_id: Annotated[RowId | None, Query(description="page: entries older than this id")] = None
                 ) -> LedgerList:
    """The account's ledger, newest first (append-only; the balance is the sum of all entries)."""
    return LedgerList.model_validate(await service.views.ledger(account_id, limit=limit, before_id=before_id))


async def _change(service: Service, account_id: str, apply: Any, caller: Caller, action: str,
                  detail: dict[str, Any]) -> AccountPublic:
    await service.change_account(account_id, apply, actor=caller.name, action=action, detail=detail)
    return await _public(service, account_id)


@router.post("/{account_id}/emergency-credit", response_model=AccountPublic,
             responses=responses(*AUTHENTICATED, "not-found", "authority-exceeded", "emergency-credit-refused",
                                 "conflict", "account-state-unreadable", "content-too-large", "unavailable"))
async def emergency_credit(account_id: AccountId, body: EmergencyCreditCreate, service: ServiceDep,
                           caller: OperatorCaller) -> AccountPublic:
    """Grant emergency credit (once per period; repaid from the next payment). Up to the site's amount for an
    operator; more needs admin."""
    amount = None if body.amount is None else parse_yuan(body.amount, max_fen=service.catalog.max_payment_fen)
    site_amount = service.catalog.site.emergency_credit_fen
    if amount is not None and amount > site_amount and caller.role != "admin":
        raise Problem("authority-exceeded", f"emergency credit above the site's {format_fen(site_amount)} needs "
                                            "the admin role")

    def grant(account: PrepaidAccount, now: dt.datetime) -> int:
        return account.grant_emergency_credit(now, amount_fen=amount, by=caller.name)

    return await _change(service, account_id, grant, caller, "account.emergency_credit",
                         {"amount_fen": amount, "reason": body.reason})


@router.put("/{account_id}/protection", response_model=AccountPublic, responses=_CHANGE)
async def protection(account_id: AccountId, body: ProtectionUpdate, service: ServiceDep,
                     caller: AdminCaller) -> AccountPublic:
    """Put an account under protection (保电: never disconnected automatically) or release it. Admin only."""
    return await _change(service, account_id, lambda a, now: a.set_protected(body.protected, by=caller.name),
                         caller, "account.protection", {"protected": body.protected, "reason": body.reason})


@router.put("/{account_id}/hold", response_model=AccountPublic,
            responses=responses(*AUTHENTICATED, "not-found", "authority-exceeded", "conflict",
                                "account-state-unreadable", "content-too-large", "unavailable"))
async def hold(account_id: AccountId, body: HoldUpdate, service: ServiceDep, caller: OperatorCaller
               ) -> AccountPublic:
    """Hold off automatic disconnects until a time in the future (null releases the hold). An operator may hold
    for up to `api.max_operator_hold`; longer needs admin."""
    longest = dt.timedelta(seconds=service.catalog.max_operator_hold_s)
    if body.until is not None and body.until - service.clock() > longest and caller.role != "admin":
        raise Problem("authority-exceeded", f"a hold longer than {longest} needs the admin role")

    def apply(account: PrepaidAccount, now: dt.datetime) -> None:
        if body.until is None:
            account.release_hold(by=caller.name)
        else:
            account.place_hold(body.until, now=now, by=caller.name)

    return await _change(service, account_id, apply, caller, "account.hold",
                         {"until": body.until.isoformat() if body.until else None, "reason": body.reason})


@router.post("/{account_id}/adjustments", response_model=AccountPublic, responses=_CHANGE)
async def adjustment(account_id: AccountId, body: AdjustmentCreate, service: ServiceDep,
                     caller: AdminCaller) -> AccountPublic:
    """A signed correction of the balance with its reason (a ledger entry of kind adjustment). Admin only."""
    amount = parse_yuan(body.amount, max_fen=service.catalog.max_payment_fen, allow_negative=True)
    return await _change(service, account_id,
                         lambda a, now: a.apply_adjustment(amount, body.reason, reference=f"by {caller.name}"),
                         caller, "account.adjustment", {"amount_fen": amount, "reason": body.reason})
