from __future__ import annotations

from typing import Literal

import sqlalchemy as sa
from fastapi import APIRouter, HTTPException, Query, Response

from gateway.adapters import tables as t
from gateway.api.deps import AnyCaller, OperatorCaller, ServiceDep
from gateway.api.routes.commands import to_public
from gateway.api.schemas import (CommandAccepted, ManualCommandResult, MeterPublic, QuarantineAction, ReadingList,
                                 ReadingPublic, RelayCommandCreate)
from gateway.domain.errors import DomainError
from gateway.domain.money import format_fen
from gateway.service.accounts import UnknownMeter
from gateway.service.operator import ManualOutcome, manual_command

router = APIRouter(prefix="/v1/meters", tags=["meters"])


def _reading(row: sa.Row) -> ReadingPublic:  # type: ignore[type-arg]
    return ReadingPublic(taken_at=row.taken_at, energy_wh=row.energy_wh, power_w=row.power_w,
                         voltage_v=row.voltage_v, current_a=row.current_a, relay=row.relay, billed=row.billed)


@router.get("/{meter_id}", response_model=MeterPublic)
async def get_meter(meter_id: str, service: ServiceDep, caller: AnyCaller) -> MeterPublic:
    """One meter: relay, communication health, latest reading, quarantine."""
    spec = service.catalog.meters.get(meter_id)
    async with service.uow(readonly=True) as uow:
        row = (await uow.execute(sa.select(t.meters).where(t.meters.c.id == meter_id))).one_or_none()
        last = (await uow.execute(sa.select(t.readings).where(t.readings.c.meter_id == meter_id)
                                  .order_by(t.readings.c.id.desc()).limit(1))).one_or_none()
        state = None if spec is None else (await uow.execute(sa.select(t.accounts.c.state).where(
            t.accounts.c.id == spec.account_id))).scalar_one_or_none()
    if row is None or spec is None:
        raise HTTPException(404, f"no meter {meter_id!r}")
    cursor = (state or {}).get("meters", {}).get(meter_id) or {}
    pending = cursor.get("pending")
    latest = None if last is None else _reading(last)
    last_success_at = row.last_success_at  # written when the health or relay changed; else the newest reading's
    if latest is not None and (last_success_at is None or latest.taken_at > last_success_at):
        last_success_at = latest.taken_at
    absorbed = service.writer.absorbed.get(meter_id)  # newer than the stored one when it changed nothing
    if absorbed is not None and (latest is None or absorbed.taken_at > latest.taken_at):
        latest = ReadingPublic(taken_at=absorbed.taken_at, energy_wh=absorbed.energy_wh, power_w=absorbed.power_w,
                               voltage_v=absorbed.voltage_v, current_a=absorbed.current_a,
                               relay=None if absorbed.relay is None else absorbed.relay.value,
                               billed=service.writer.unbilled(meter_id) is not absorbed)
        if last_success_at is None or absorbed.taken_at > last_success_at:
            last_success_at = absorbed.taken_at
    return MeterPublic(id=row.id, account_id=row.account_id, bus=spec.bus_id, groups=list(spec.groups),
                       relay=row.relay, health=row.health, consecutive_failures=row.consecutive_failures,
                       last_error=row.last_error, last_success_at=last_success_at,
                       last_reading=latest,
                       quarantine=None if pending is None else {"kind": pending.get("kind"),
                                                                "reason": pending.get("reason"),
                                                                "reading": pending.get("reading")})


@router.get("/{meter_id}/readings", response_model=ReadingList)
async def list_readings(meter_id: str, service: ServiceDep, caller: AnyCaller,
                        limit: int = Query(100, ge=1, le=1000),
                        before_id: int | None = Query(None, description="page: readings older than this id")
                        ) -> ReadingList:
    """A meter's reading history, newest first."""
    if meter_id not in service.catalog.meters:
        raise HTTPException(404, f"no meter {meter_id!r}")
    query = sa.select(t.readings).where(t.readings.c.meter_id == meter_id)
    if before_id is not None:
        query = query.where(t.readings.c.id < before_id)
    async with service.uow(readonly=True) as uow:
        rows = (await uow.execute(query.order_by(t.readings.c.id.desc()).limit(limit))).all()
    next_id = rows[-1].id if len(rows) == limit else None
    return ReadingList(data=[_reading(r) for r in rows], next_before_id=next_id)


def _result(outcome: ManualOutcome, *, dry_run: bool) -> ManualCommandResult:
    return ManualCommandResult(
        meter_id=outcome.meter_id, action=outcome.action, allowed=outcome.allowed, reason=outcome.reason,
        dry_run=dry_run, command_id=outcome.command.id if outcome.command else None,
        state=outcome.command.state if outcome.command else None, hold_until=outcome.hold_until,
        supersedes=list(outcome.supersedes))


async def _relay_command(meter_id: str, action: Literal["open", "close"], body: RelayCommandCreate,
                         response: Response, service: ServiceDep, caller: OperatorCaller
                         ) -> CommandAccepted | ManualCommandResult:
    try:
        outcome = await manual_command(service, meter_id, action, role=caller.role, actor=caller.name,
                                       operator=body.operator or caller.name, reason=body.reason,
                                       force=body.force, dry_run=body.dry_run)
    except UnknownMeter:
        raise HTTPException(404, f"no meter {meter_id!r}") from None
    except DomainError as exc:
        raise HTTPException(403, str(exc)) from None
    if not outcome.allowed:
        raise HTTPException(403, outcome.reason)
    if body.dry_run or outcome.command is None:
        response.status_code = 200
        return _result(outcome, dry_run=True)
    return CommandAccepted(command_id=outcome.command.id, state=outcome.command.state,
                           command=to_public(outcome.command), hold_until=outcome.hold_until, note=outcome.reason)


@router.post("/{meter_id}/disconnect", status_code=202, response_model=CommandAccepted | ManualCommandResult,
             responses={200: {"description": "dry run: what would happen and why"},
                        403: {"description": "not allowed (e.g. a protected account without admin + force)"}})
async def disconnect(meter_id: str, body: RelayCommandCreate, response: Response, service: ServiceDep,
                     caller: OperatorCaller) -> CommandAccepted | ManualCommandResult:
    """Queue a disconnect (relay open); confirmed by reading the relay back."""
    return await _relay_command(meter_id, "open", body, response, service, caller)


@router.post("/{meter_id}/reconnect", status_code=202, response_model=CommandAccepted | ManualCommandResult,
             responses={200: {"description": "dry run: what would happen and why"}})
async def reconnect(meter_id: str, body: RelayCommandCreate, response: Response, service: ServiceDep,
                    caller: OperatorCaller) -> CommandAccepted | ManualCommandResult:
    """Queue a reconnect (relay close); below the disconnect point it also places an operator hold."""
    return await _relay_command(meter_id, "close", body, response, service, caller)


@router.post("/{meter_id}/quarantine/{decision}", response_model=dict)
async def resolve_quarantine(meter_id: str, decision: Literal["accept", "rebase"], body: QuarantineAction,
                             service: ServiceDep, caller: OperatorCaller) -> dict[str, object]:
    """Bill a quarantined reading as read (accept) or start afresh from a new baseline (rebase)."""
    spec = service.catalog.meters.get(meter_id)
    if spec is None:
        raise HTTPException(404, f"no meter {meter_id!r}")

    def resolve(account, now):  # type: ignore[no-untyped-def]
        if decision == "accept":
            return account.accept_reading(meter_id, energy_wh=body.energy_wh, by=caller.name)
        return account.rebase_meter(meter_id, energy_wh=body.energy_wh, taken_at=body.taken_at or
                                    (now if body.energy_wh is not None else None), by=caller.name)

    try:
        charge = await service.change_account(spec.account_id, resolve, actor=caller.name,
                                               action=f"quarantine.{decision}",
                                               detail={"meter_id": meter_id, "reason": body.reason,
                                                       "energy_wh": body.energy_wh})
    except DomainError as exc:
        raise HTTPException(409, str(exc)) from None
    return {"meter_id": meter_id, "decision": decision, "charged": format_fen(int(charge or 0))}
