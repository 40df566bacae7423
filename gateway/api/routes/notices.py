"""Notices to customers and staff (docs/notices.md): their delivery states, the dead letters, a retry."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query

from gateway.api.deps import AnyCaller, OperatorCaller, ServiceDep
from gateway.api.fields import Name, RowId, Timestamp
from gateway.api.jsonbody import StrictJsonRoute
from gateway.api.problems import AUTHENTICATED, responses
from gateway.api.schemas import NoticeList, NoticePublic
from gateway.domain.notices import KINDS
from gateway.service.lists import NoticeFilter

router = APIRouter(prefix="/v1/notices", tags=["notices"], route_class=StrictJsonRoute)
NoticeId = Annotated[RowId, Path(examples=[12])]
NoticeState = Literal["pending", "delivered", "failed"]
NoticeKind = Literal[KINDS]  # type: ignore[valid-type]


@router.get("", response_model=NoticeList, responses=responses(*AUTHENTICATED))
async def list_notices(service: ServiceDep, caller: AnyCaller,
                       state: Annotated[NoticeState | None, Query(description="failed: the dead letters")] = None,
                       account_id: Annotated[Name | None, Query(examples=["A-1"])] = None,
                       kind: Annotated[NoticeKind | None, Query(examples=["low_balance_2"])] = None,
                       since: Annotated[Timestamp | None, Query(description="created at or after this")] = None,
                       until: Annotated[Timestamp | None, Query(description="created before this")] = None,
                       limit: Annotated[int, Query(ge=1, le=1000, examples=[100])] = 100,
                       before_id: Annotated[RowId | None, Query(description="page: notices before this id")] = None,
                       ) -> NoticeList:
    """Notices, newest first, filtered: delivery state (`failed`: the dead letters), account, kind, time."""
    which = NoticeFilter(state=state, account_id=account_id, kind=kind, since=since, until=until,
                         before_id=before_id, limit=limit)
    return NoticeList.model_validate(await service.lists.notices(which))


@router.get("/{notice_id}", response_model=NoticePublic, responses=responses(*AUTHENTICATED, "not-found"))
async def get_notice(notice_id: NoticeId, service: ServiceDep, caller: AnyCaller) -> NoticePublic:
    """One notice and its delivery state."""
    return NoticePublic.model_validate(await service.views.notice(notice_id))


@router.post("/{notice_id}/retry", response_model=NoticePublic,
             responses=responses(*AUTHENTICATED, "not-found", "notice-not-retryable"))
async def retry_notice(notice_id: NoticeId, service: ServiceDep, caller: OperatorCaller) -> NoticePublic:
    """Try a failed notice (a dead letter) again, with all its attempts (operator)."""
    await service.retry_notice(notice_id, actor=caller.name)
    return NoticePublic.model_validate(await service.views.notice(notice_id))
