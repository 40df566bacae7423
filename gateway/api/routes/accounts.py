from __future__ import annotations

import sqlalchemy as sa
from fastapi import APIRouter, HTTPException

from gateway.adapters import tables as t
from gateway.api.deps import AnyCaller, ServiceDep
from gateway.api.schemas import AccountPublic
from gateway.domain.money import format_fen

router = APIRouter(prefix="/v1/accounts", tags=["accounts"])


@router.get("/{account_id}", response_model=AccountPublic)
async def get_account(account_id: str, service: ServiceDep, caller: AnyCaller) -> AccountPublic:
    """One account: balance, supply state, credit level, meters."""
    spec = service.catalog.accounts.get(account_id)
    async with service.uow(readonly=True) as uow:
        row = (await uow.execute(sa.select(t.accounts).where(t.accounts.c.id == account_id))).one_or_none()
    if row is None or spec is None:
        raise HTTPException(404, f"no account {account_id!r}")
    account = service.catalog.account(row.id, row.state)
    return AccountPublic(id=row.id, balance=format_fen(row.balance_fen), state=row.supply,
                         credit=account.credit_state(), meters=list(spec.meter_ids), protected=account.is_protected,
                         disconnect_deferred_because=row.deferred_reason or None, updated_at=row.updated_at)
