from __future__ import annotations

from typing import Literal

import sqlalchemy as sa
from fastapi import APIRouter, HTTPException

from gateway.adapters import tables as t
from gateway.api.deps import AnyCaller, OperatorCaller, ServiceDep
from gateway.api.routes.commands import to_public
from gateway.api.schemas import CommandAccepted, MeterPublic, ReadingPublic, RelayCommandCreate
from gateway.service.accounts import UnknownMeter

router = APIRouter(prefix="/v1/meters", tags=["meters"])


@router.get("/{meter_id}", response_model=MeterPublic)
async def get_meter(meter_id: str, service: ServiceDep, caller: AnyCaller) -> MeterPublic:
    """One meter: relay, communication health, latest reading."""
    spec = service.catalog.meters.get(meter_id)
    async with service.uow(readonly=True) as uow:
        row = (await uow.execute(sa.select(t.meters).where(t.meters.c.id == meter_id))).one_or_none()
        last = (await uow.execute(sa.select(t.readings).where(t.readings.c.meter_id == meter_id)
                                  .order_by(t.readings.c.id.desc()).limit(1))).one_or_none()
    if row is None or spec is None:
        raise HTTPException(404, f"no meter {meter_id!r}")
    reading = None if last is None else ReadingPublic(
        taken_at=last.taken_at, energy_wh=last.energy_wh, power_w=last.power_w, voltage_v=last.voltage_v,
        current_a=last.current_a, relay=last.relay)
    return MeterPublic(id=row.id, account_id=row.account_id, bus=spec.bus_id, relay=row.relay, health=row.health,
                       consecutive_failures=row.consecutive_failures, last_error=row.last_error,
                       last_success_at=row.last_success_at, last_reading=reading)


async def _relay_command(meter_id: str, action: Literal["open", "close"], body: RelayCommandCreate,
                         service: ServiceDep, caller: OperatorCaller) -> CommandAccepted:
    try:
        record = await service.request_command(meter_id=meter_id, action=action, origin="operator",
                                               operator=body.operator or caller.name, reason=body.reason,
                                               actor=caller.name)
    except UnknownMeter:
        raise HTTPException(404, f"no meter {meter_id!r}") from None
    return CommandAccepted(command_id=record.id, state=record.state, command=to_public(record))


@router.post("/{meter_id}/disconnect", status_code=202, response_model=CommandAccepted)
async def disconnect(meter_id: str, body: RelayCommandCreate, service: ServiceDep,
                     caller: OperatorCaller) -> CommandAccepted:
    """Queue a disconnect (relay open); confirmed by reading the relay back."""
    return await _relay_command(meter_id, "open", body, service, caller)


@router.post("/{meter_id}/reconnect", status_code=202, response_model=CommandAccepted)
async def reconnect(meter_id: str, body: RelayCommandCreate, service: ServiceDep,
                    caller: OperatorCaller) -> CommandAccepted:
    """Queue a reconnect (relay close); confirmed by reading the relay back."""
    return await _relay_command(meter_id, "close", body, service, caller)
