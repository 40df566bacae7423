"""Alarms (docs/alarms.md): listed, one read, acknowledged and resolved by an operator with a reason."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from gateway.api.alarm_schemas import (AlarmAction, AlarmKind, AlarmList, AlarmPublic, AlarmSeverity,
                                       AlarmStateFilter)
from gateway.api.deps import AnyCaller, OperatorCaller, ServiceDep
from gateway.api.fields import Name, RowId
from gateway.api.jsonbody import StrictJsonRoute
from gateway.api.problems import AUTHENTICATED, responses
from gateway.service.alarm_desk import AlarmDesk
from gateway.service.facade import Service

router = APIRouter(prefix="/v1/alarms", tags=["alarms"], route_class=StrictJsonRoute)
AlarmId = Annotated[RowId, Path(examples=[42])]


def desk(service: Service) -> AlarmDesk:
    """The alarms' desk (``bootstrap`` sets it on the service)."""
    return service.alarms  # type: ignore[no-any-return]


@router.get("", response_model=AlarmList, responses=responses(*AUTHENTICATED))
async def list_alarms(service: ServiceDep, caller: AnyCaller,
                      state: Annotated[AlarmStateFilter | None,
                                       Query(description="`unresolved`: open and acknowledged")] = None,
                      kind: Annotated[AlarmKind | None, Query(examples=["meter_offline"])] = None,
                      severity: Annotated[AlarmSeverity | None, Query(examples=["critical"])] = None,
                      meter_id: Annotated[Name | None, Query(examples=["M-1"])] = None,
                      account_id: Annotated[Name | None, Query(examples=["A-1"])] = None,
                      limit: Annotated[int, Query(ge=1, le=1000, examples=[100])] = 100,
                      before_id: Annotated[RowId | None, Query(description="page: alarms before this id")] = None,
                      ) -> AlarmList:
    """Alarms, newest first, filtered: state, kind, severity, meter, account."""
    return AlarmList.model_validate(await desk(service).page(
        state=state, kind=kind, severity=severity, meter_id=meter_id, account_id=account_id,
        before_id=before_id, limit=limit))


@router.get("/{alarm_id}", response_model=AlarmPublic, responses=responses(*AUTHENTICATED, "not-found"))
async def get_alarm(alarm_id: AlarmId, service: ServiceDep, caller: AnyCaller) -> AlarmPublic:
    """One alarm."""
    return AlarmPublic.model_validate(await desk(service).get(alarm_id))


@router.post("/{alarm_id}/acknowledge", response_model=AlarmPublic,
             responses=responses(*AUTHENTICATED, "not-found", "alarm-resolved", "content-too-large"))
async def acknowledge(alarm_id: AlarmId, body: AlarmAction, service: ServiceDep,
                      caller: OperatorCaller) -> AlarmPublic:
    """Acknowledge an alarm with a reason (operator): it stays until resolved; acknowledging it again changes
    nothing."""
    return AlarmPublic.model_validate(await desk(service).acknowledge(alarm_id, actor=caller.name,
                                                                      reason=body.reason))


@router.post("/{alarm_id}/resolve", response_model=AlarmPublic,
             responses=responses(*AUTHENTICATED, "not-found", "alarm-resolved", "content-too-large"))
async def resolve(alarm_id: AlarmId, body: AlarmAction, service: ServiceDep, caller: OperatorCaller) -> AlarmPublic:
    """Resolve an alarm by hand with a reason (operator); if its cause goes on, the next event that tells of it
    raises a new one."""
    return AlarmPublic.model_validate(await desk(service).resolve(alarm_id, actor=caller.name, reason=body.reason))
