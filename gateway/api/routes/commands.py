from __future__ import annotations

from fastapi import APIRouter, HTTPException

from gateway.api.deps import AnyCaller, ServiceDep
from gateway.api.schemas import CommandPublic
from gateway.service.commands import CommandRecord, get_command

router = APIRouter(prefix="/v1/commands", tags=["commands"])


def to_public(record: CommandRecord) -> CommandPublic:
    return CommandPublic(id=record.id, meter_id=record.meter_id, action=record.action, origin=record.origin,
                         operator=record.operator, reason=record.reason, state=record.state,
                         attempts=record.attempts, last_error=record.last_error, created_at=record.created_at,
                         updated_at=record.updated_at, expires_at=record.expires_at)


@router.get("/{command_id}", response_model=CommandPublic)
async def read_command(command_id: str, service: ServiceDep, caller: AnyCaller) -> CommandPublic:
    """One relay command and where it stands."""
    async with service.uow(readonly=True) as uow:
        record = await get_command(uow, command_id)
    if record is None:
        raise HTTPException(404, f"no command {command_id!r}")
    return to_public(record)
