from __future__ import annotations

import logging
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query

from gateway.api.deps import AnyCaller, OperatorCaller, ServiceDep
from gateway.api.fields import Name, Timestamp
from gateway.api.jsonbody import StrictJsonRoute
from gateway.api.list_schemas import CommandPage, Origin
from gateway.api.problems import AUTHENTICATED, responses
from gateway.api.schemas import (
    BulkCommandCreate,
    BulkCommandResult,
    CommandPublic,
    ManualCommandResult,
)
from gateway.domain.errors import DomainError
from gateway.service.commands import ACTIVE_STATES, FINAL_STATES, CommandRecord
from gateway.service.errors import AccountUnreadable, UnknownMeter
from gateway.service.lists import CommandFilter
from gateway.service.operator import cancel_command, manual_command
from gateway.service.views import command_shape

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/commands", tags=["commands"], route_class=StrictJsonRoute)
CommandId = Annotated[Name, Path(examples=["6f1c2a9e-3b0d-4c55-9a57-0e4b8e1b2f10"])]
CommandState = Literal[ACTIVE_STATES + FINAL_STATES]  # type: ignore[valid-type]


def to_public(record: CommandRecord) -> CommandPublic:
    return CommandPublic.model_validate(command_shape(record))


@router.get("", response_model=CommandPage, responses=responses(*AUTHENTICATED))
async def list_commands(
        service: ServiceDep, caller: AnyCaller,
        meter_id: Annotated[Name | None, Query(examples=["M-1"])] = None,
        state: Annotated[CommandState | None, Query(examples=["queued"])] = None,
        origin: Annotated[Origin | None, Query(examples=["operator"])] = None,
        since: Annotated[Timestamp | None, Query(description="created at or after this")] = None,
        until: Annotated[Timestamp | None, Query(description="created before this")] = None,
        limit: Annotated[int, Query(ge=1, le=1000, examples=[100])] = 100,
        before: Annotated[Timestamp | None, Query(description="page: commands created before this (with "
                                                              "`before_id`: or at it, with a smaller id)")] = None,
        before_id: Annotated[Name | None, Query(description="page: the last command of the previous page")] = None,
        ) -> CommandPage:
    """Relay commands, newest first, filtered: meter, state, origin, time."""
    which = CommandFilter(meter_id=meter_id, state=state, origin=origin, since=since, until=until, before=before,
                          before_id=before_id, limit=limit)
    return CommandPage.model_validate(await service.lists.commands(which))


@router.post("/bulk", response_model=BulkCommandResult,
             responses=responses(*AUTHENTICATED, "not-found", "content-too-large", "unavailable"))
async def bulk(body: BulkCommandCreate, service: ServiceDep, caller: OperatorCaller) -> BulkCommandResult:
    """A disconnect or reconnect for a list of meters or a group, with a result per meter; `dry_run` says
    what would happen and why without changing anything."""
    group = service.catalog.group(body.group) if body.group is not None else []
    if body.group is not None and not group:
        raise UnknownMeter(f"no meters in group {body.group!r}")
    action = "open" if body.action == "disconnect" else "close"
    results = []
    for meter_id in dict.fromkeys(body.meter_ids + group):
        try:
            outcome = await manual_command(service, meter_id, action, role=caller.role, actor=caller.name,
                                           operator=body.operator or caller.name, reason=body.reason,
                                           force=body.force, dry_run=body.dry_run)
        except (LookupError, DomainError, AccountUnreadable) as exc:
            reason = "unknown meter" if isinstance(exc, LookupError) else str(exc)
            results.append(ManualCommandResult(meter_id=meter_id, action=action, allowed=False, reason=reason,
                                               dry_run=body.dry_run, error=reason))
            continue
        except Exception:  # one meter's failure is its own result; the others go ahead
            log.exception("bulk %s: meter %s", action, meter_id)
            reason = "an unexpected error; nothing was changed for this meter"
            results.append(ManualCommandResult(meter_id=meter_id, action=action, allowed=False, reason=reason,
                                               dry_run=body.dry_run, error=reason))
            continue
        results.append(ManualCommandResult(
            meter_id=meter_id, action=action, allowed=outcome.allowed, reason=outcome.reason, dry_run=body.dry_run,
            command_id=outcome.command.id if outcome.command else None,
            state=outcome.command.state if outcome.command else None, hold_until=outcome.hold_until,
            supersedes=list(outcome.supersedes)))
    return BulkCommandResult(dry_run=body.dry_run, results=results)


@router.get("/{command_id}", response_model=CommandPublic, responses=responses(*AUTHENTICATED, "not-found"),
            operation_id="getCommand")
async def read_command(command_id: CommandId, service: ServiceDep, caller: AnyCaller) -> CommandPublic:
    """One relay command and where it stands."""
    return CommandPublic.model_validate(await service.views.command(command_id))


@router.post("/{command_id}/cancel", response_model=CommandPublic,
             responses=responses(*AUTHENTICATED, "not-found", "command-not-cancellable"), operation_id="cancelCommand")
async def cancel(command_id: CommandId, service: ServiceDep, caller: OperatorCaller) -> CommandPublic:
    """Cancel a queued command."""
    return to_public(await cancel_command(service, command_id, actor=caller.name))
