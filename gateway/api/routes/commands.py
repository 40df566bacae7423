from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from fastapi import APIRouter, HTTPException, Query

from gateway.adapters import tables as t
from gateway.api.deps import AnyCaller, OperatorCaller, ServiceDep
from gateway.api.schemas import BulkCommandCreate, BulkCommandResult, CommandList, CommandPublic, ManualCommandResult
from gateway.domain.errors import DomainError
from gateway.service.commands import CommandRecord, get_command
from gateway.service.operator import CommandNotCancellable, UnknownCommand, cancel_command, manual_command

router = APIRouter(prefix="/v1/commands", tags=["commands"])


def to_public(record: CommandRecord) -> CommandPublic:
    return CommandPublic(id=record.id, meter_id=record.meter_id, action=record.action, origin=record.origin,
                         operator=record.operator, reason=record.reason, state=record.state,
                         attempts=record.attempts, last_error=record.last_error, created_at=record.created_at,
                         updated_at=record.updated_at, expires_at=record.expires_at)


@router.get("", response_model=CommandList)
async def list_commands(service: ServiceDep, caller: AnyCaller, meter_id: str | None = None,
                        state: str | None = None, limit: int = Query(100, ge=1, le=1000),
                        before: dt.datetime | None = Query(None, description="page: commands created before this")
                        ) -> CommandList:
    """Relay commands, newest first, optionally of one meter or in one state."""
    query = sa.select(t.commands)
    if meter_id is not None:
        query = query.where(t.commands.c.meter_id == meter_id)
    if state is not None:
        query = query.where(t.commands.c.state == state)
    if before is not None:
        query = query.where(t.commands.c.created_at < before)
    async with service.uow(readonly=True) as uow:
        rows = (await uow.execute(query.order_by(t.commands.c.created_at.desc(), t.commands.c.id).limit(limit))).all()
    data = [to_public(CommandRecord.from_row(r)) for r in rows]
    return CommandList(data=data, next_before=data[-1].created_at.isoformat() if len(data) == limit else None)


@router.post("/bulk", response_model=BulkCommandResult)
async def bulk(body: BulkCommandCreate, service: ServiceDep, caller: OperatorCaller) -> BulkCommandResult:
    """A disconnect or reconnect for a list of meters or a group, with a result per meter; `dry_run` says
    what would happen and why without changing anything."""
    meter_ids = list(dict.fromkeys(body.meter_ids + (service.catalog.group(body.group) if body.group else [])))
    if not meter_ids:
        raise HTTPException(422, "name meters (meter_ids) or a group that has meters")
    action = "open" if body.action == "disconnect" else "close"
    results = []
    for meter_id in meter_ids:
        try:
            outcome = await manual_command(service, meter_id, action, role=caller.role, actor=caller.name,
                                           operator=body.operator or caller.name, reason=body.reason,
                                           force=body.force, dry_run=body.dry_run)
        except LookupError:
            results.append(ManualCommandResult(meter_id=meter_id, action=action, allowed=False, reason="unknown meter",
                                               dry_run=body.dry_run, error="unknown meter"))
            continue
        except DomainError as exc:
            results.append(ManualCommandResult(meter_id=meter_id, action=action, allowed=False, reason=str(exc),
                                               dry_run=body.dry_run, error=str(exc)))
            continue
        results.append(ManualCommandResult(
            meter_id=meter_id, action=action, allowed=outcome.allowed, reason=outcome.reason, dry_run=body.dry_run,
            command_id=outcome.command.id if outcome.command else None,
            state=outcome.command.state if outcome.command else None, hold_until=outcome.hold_until,
            supersedes=list(outcome.supersedes)))
    return BulkCommandResult(dry_run=body.dry_run, results=results)


@router.get("/{command_id}", response_model=CommandPublic)
async def read_command(command_id: str, service: ServiceDep, caller: AnyCaller) -> CommandPublic:
    """One relay command and where it stands."""
    async with service.uow(readonly=True) as uow:
        record = await get_command(uow, command_id)
    if record is None:
        raise HTTPException(404, f"no command {command_id!r}")
    return to_public(record)


@router.post("/{command_id}/cancel", response_model=CommandPublic,
             responses={409: {"description": "the command is no longer queued"}})
async def cancel(command_id: str, service: ServiceDep, caller: OperatorCaller) -> CommandPublic:
    """Cancel a queued command."""
    try:
        return to_public(await cancel_command(service, command_id, actor=caller.name))
    except UnknownCommand:
        raise HTTPException(404, f"no command {command_id!r}") from None
    except CommandNotCancellable as exc:
        raise HTTPException(409, str(exc)) from None
