from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Response

from gateway.api.deps import AnyCaller, OperatorCaller, ServiceDep
from gateway.api.fields import Name, RowId
from gateway.api.jsonbody import StrictJsonRoute
from gateway.api.list_schemas import Health, MeterList, Relay
from gateway.api.problems import AUTHENTICATED, Problem, responses
from gateway.api.routes.commands import to_public
from gateway.api.schemas import (
    CommandAccepted,
    ManualCommandResult,
    MeterPublic,
    QuarantineAction,
    QuarantineResult,
    ReadingList,
    RelayCommandCreate,
)
from gateway.domain.account import PrepaidAccount
from gateway.domain.money import format_fen
from gateway.service.errors import UnknownMeter
from gateway.service.lists import MeterFilter
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


@router.get("", response_model=MeterList, responses=responses(*AUTHENTICATED))
async def list_meters(
        service: ServiceDep, caller: AnyCaller,
        bus: Annotated[Name | None, Query(examples=["feeder-1"])] = None,
        health: Annotated[Health | None, Query()] = None,
        relay: Annotated[Relay | None, Query(description="as last read from the meter")] = None,
        relay_fault: Annotated[Literal["disconnect_failed", "reconnect_failed"] | None,
                               Query(description="the meter's last relay command failed")] = None,
        model: Annotated[Name | None, Query(examples=["generic-prepaid"])] = None,
        account_id: Annotated[Name | None, Query(examples=["A-1"])] = None,
        status: Annotated[Literal["active", "retired"] | None, Query()] = None,
        limit: Annotated[int, Query(ge=1, le=1000, examples=[100])] = 100,
        after: Annotated[Name | None, Query(description="page: meters whose id sorts after this")] = None,
        ) -> MeterList:
    """Meters by id, filtered: bus, health, relay, model, account, status."""
    which = MeterFilter(bus=bus, health=health, relay=relay, relay_fault=relay_fault, model=model,
                        account_id=account_id, status=status, after=after, limit=limit)
    return MeterList.model_validate(await service.lists.meters(which))


@router.get("/{meter_id}", response_model=MeterPublic, responses=responses(*AUTHENTICATED, "not-found"))
async def get_meter(meter_id: MeterId, service: ServiceDep, caller: AnyCaller) -> MeterPublic:
    """One meter: relay, communication health, latest reading, quarantine."""
    return MeterPublic.model_validate(await service.views.meter(meter_id))


@router.get("/{meter_id}/readings", response_model=ReadingList, responses=responses(*AUTHENTICATED, "not-found"))
async def list_readings(meter_id: MeterId, service: ServiceDep, caller: AnyCaller,
                        limit: Annotated[int, Query(ge=1, le=1000, examples=[100])] = 100,
                        before_id: Annotated[RowId | None, Query(description="page: readings older than this id")]
                        = None) -> ReadingList:
    """A meter's reading history, newest first."""
    return ReadingList.model_validate(await service.views.readings(meter_id, limit=limit, before_id=before_id))


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
