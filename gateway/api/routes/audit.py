"""The audit log (docs/api.md, "Lists and the audit log"): every change, who made it (the API key's name) and on
what. Operators and admins only: the details name operators and carry the reasons they gave, which may say
things about customers (a viewer or a billing integration has no need of them)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from gateway.api.deps import OperatorCaller, ServiceDep
from gateway.api.fields import Label, Name, RowId, Timestamp
from gateway.api.jsonbody import StrictJsonRoute
from gateway.api.list_schemas import AuditAction, AuditList
from gateway.api.problems import AUTHENTICATED, responses
from gateway.service.lists import AuditFilter

router = APIRouter(prefix="/v1/audit", tags=["audit"], route_class=StrictJsonRoute)


@router.get("", response_model=AuditList, responses=responses(*AUTHENTICATED))
async def list_audit(
        service: ServiceDep, caller: OperatorCaller,
        actor: Annotated[Label | None, Query(description="the API key's name (`gateway`: the gateway's own "
                                                         "changes)", examples=["ops-desk"])] = None,
        account_id: Annotated[Name | None, Query(description="about the account, its meters or their "
                                                             "commands", examples=["A-1"])] = None,
        meter_id: Annotated[Name | None, Query(description="about the meter or its commands, or its account's "
                                                           "rows that name it", examples=["M-1"])] = None,
        action: Annotated[AuditAction | None, Query(description="an action (`account.hold`), or every action "
                                                                "under a prefix ending with `.` (`command.`)")]
        = None,
        since: Annotated[Timestamp | None, Query(description="at or after this")] = None,
        until: Annotated[Timestamp | None, Query(description="before this")] = None,
        limit: Annotated[int, Query(ge=1, le=1000, examples=[100])] = 100,
        before_id: Annotated[RowId | None, Query(description="page: the entries after this one (the last of the "
                                                             "previous page)")] = None,
        ) -> AuditList:
    """The audit log, newest first (by time, then id), filtered: actor, account, meter, action, time (operator or
    admin)."""
    which = AuditFilter(actor=actor, account_id=account_id, meter_id=meter_id, action=action, since=since,
                        until=until, before_id=before_id, limit=limit)
    return AuditList.model_validate(await service.lists.audit(which))
