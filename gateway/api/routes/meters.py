from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

import sqlalchemy as sa
from fastapi import APIRouter, Path, Query, Response

from gateway.adapters import tables as t
from gateway.api.deps import AnyCaller, OperatorCaller, ServiceDep
from gateway.api.fields import Name, RowId
from gateway.api.jsonbody import StrictJsonRoute
from gateway.api.problems import AUTHENTICATED, Problem, responses
from gateway.api.routes.commands import to_public
from gateway.api.schemas import (
    CommandAccepted,
    ManualCommandResult,
    MeterPublic,
    QuarantineAction,
    QuarantineResult,
    ReadingList,
    ReadingPublic,
    RelayCommandCreate,
)
from gateway.domain.account import PrepaidAccount
from gateway.domain.money import format_fen
from gateway.service.errors import UnknownMeter
from gateway.service.operator import ManualOutcome, manual_command

router = APIRouter(prefix="/v1/meters", tags=["meters"], route_class=StrictJsonRoute)
MeterId = Annotated[Name, Path(examples=["M-1"])]
_COMMAND = {
    202: {"description": "queued", "links": {
        name: {"operationId": operation, "parameters": {"command_id": "$response.body#/command_id"}}
        for name, operation in (("GetCommand", "getCommand"), ("CancelCommand", "cancelCommand"))}},
    200: {"description": "dry run: what would happen and why", "model": ManualCommandResult},
    **responses(*AUTHENTICATED, "not-found", "not-allowed", "account-state-unreadable", "content-too-large",
                "unavailable")}


def _reading(row: sa.Row) -> ReadingPublic:  # type: ignore[type-arg]
    return ReadingPublic(taken_at=row.taken_at, energy_wh=row.energy_wh, power_w=row.power_w,
                         voltage_v=row.voltage_v, current_a=row.current_a, relay=row.relay, billed=row.billed)


@router.get("/{meter_id}", response_model=MeterPublic, responses=responses(*AUTHENTICATED, "not-found"))
async def get_meter(meter_id: MeterId, service: ServiceDep, caller: AnyCaller) -> MeterPublic:
    """One meter: relay, communication health, latest reading, quarantine."""
    spec = service.catalog.meters.get(meter_id)
    async with service.uow(readonly=True) as uow:
        row = (await uow.execute(sa.select(t.meters).where(t.meters.c.id == meter_id))).one_or_none()
        last = (await uow.execute(sa.select(t.readings).where(t.readings.c.meter_id == meter_id)
                                  .order_by(t.readings.c.id.desc()).limit(1))).one_or_none()
        state = None if spec is None else (await uow.execute(sa.select(t.accounts.c.state).where(
            t.accounts.c.id == spec.account_id))).scalar_one_or_none()
    if row is None or spec is None:
        raise UnknownMeter(f"no meter {meter_id!r}")
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
                       relay=row.relay, relay_fault=row.relay_fault, health=row.health, consecutive_failures=row.consecutive_failures,
                       last_error=row.last_error, last_success_at=last_success_at,
                       last_reading=latest,
                       quarantine=None if pending is None else {"kind": pending.get("kind"),
                                                                "reason": pending.get("reason"),
                                                                "reading": pending.get("reading")})


@router.get("/{meter_id}/readings", response_model=ReadingList, responses=responses(*AUTHENTICATED, "not-found"))
async def list_readings(meter_id: MeterId, service: ServiceDep, caller: AnyCaller,
                        limit: Annotated[int, Query(ge=1, le=1000, examples=[100])] = 100,
                        before_id: Annotated[RowId | None, Query(description="page: readings older than this id")]
                        = None) -> ReadingList:
    """A meter's reading history, newest first."""
    if meter_id not in service.catalog.meters:
        raise UnknownMeter(f"no meter {meter_id!r}")
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
    outcome = await manual_command(service, meter_id, action, role=caller.role, actor=caller.name,
                                   operator=body.operator or caller.name, reason=body.reason,
                                   force=body.force, dry_run=body.dry_run)
    if not outcome.allowed:
        raise Problem("not-allowed", outcome.reason)
    if body.dry_run or outcome.command is None:
        response.status_code = 200
        return _result(outcome, dry_run=True)
    return CommandAccepted(command_id=outcome.command.id, state=outcome.command.state,
                           command=to_public(outcome.command), hold_until=outcome.hold_until, note=outcome.reason)


@router.post("/{meter_id}/disconnect", status_code=202, response_model=CommandAccepted | ManualCommandResult,
             responses=_COMMAND)
async def disconnect(meter_id: MeterId, body: RelayCommandCreate, response: Response, service: ServiceDep,
                     caller: OperatorCaller) -> CommandAccepted | ManualCommandResult:
    """Queue a disconnect (relay open); confirmed by reading the relay back."""
    return await _relay_command(meter_id, "open", body, response, service, caller)


@router.post("/{meter_id}/reconnect", status_code=202, response_model=CommandAccepted | ManualCommandResult,
             responses=_COMMAND)
async def reconnect(meter_id: MeterId, body: RelayCommandCreate, response: Response, service: ServiceDep,
                    caller: OperatorCaller) -> CommandAccepted | ManualCommandResult:
    """Queue a reconnect (relay close); below the disconnect point it also places an operator hold."""
    return await _relay_command(meter_id, "close", body, response, service, caller)


@router.post("/{meter_id}/quarantine/{decision}", response_model=QuarantineResult,
             responses=responses(*AUTHENTICATED, "not-found", "nothing-quarantined", "conflict",
                                 "account-state-unreadable", "content-too-large", "unavailable"))
async def resolve_quarantine(meter_id: MeterId, decision: Annotated[Literal["accept", "rebase"], Path()],
                             body: QuarantineAction, service: ServiceDep, caller: OperatorCaller) -> QuarantineResult:
    """Bill a quarantined reading as read (accept) or start afresh from a new baseline (rebase)."""
    spec = service.catalog.meters.get(meter_id)
    if spec is None:
        raise UnknownMeter(f"no meter {meter_id!r}")

    def resolve(account: PrepaidAccount, now: dt.datetime) -> int:
        if decision == "accept":
            return account.accept_reading(meter_id, energy_wh=body.energy_wh, by=caller.name)
        taken_at = body.taken_at or (now if body.energy_wh is not None else None)
        return account.rebase_meter(meter_id, energy_wh=body.energy_wh, taken_at=taken_at, now=now, by=caller.name)

    charge = await service.change_account(spec.account_id, resolve, actor=caller.name,
                                          action=f"quarantine.{decision}",
                                          detail={"meter_id": meter_id, "reason": body.reason,
                                                  "energy_wh": body.energy_wh,
                                                  "taken_at": body.taken_at.isoformat() if body.taken_at else None})
    return QuarantineResult(meter_id=meter_id, decision=decision, charged=format_fen(int(charge or 0)))
