"""The daily reports (docs/reports.md), as JSON pages or as one streamed CSV; any role may read them."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from gateway.api.deps import AnyCaller, ServiceDep
from gateway.api.fields import Name, Timestamp
from gateway.api.jsonbody import StrictJsonRoute
from gateway.api.problems import AUTHENTICATED, responses
from gateway.api.report_schemas import (
    ArrearsReport,
    ArrearsRow,
    ConsumptionReport,
    ConsumptionRow,
    DisconnectionReport,
    DisconnectionRow,
    PaymentReport,
    PaymentRow,
    TimelinessReport,
    TimelinessRow,
)
from gateway.service.facade import Service
from gateway.service.reports import Page, Reports

router = APIRouter(prefix="/v1/reports", tags=["reports"], route_class=StrictJsonRoute)

_DAY = r"^20[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$"
Format = Annotated[Literal["json", "csv"], Query(description="json: a page (`limit`, `cursor`); csv: the whole "
                                                             "report (from `cursor` on), streamed")]
Limit = Annotated[int, Query(ge=1, le=10_000, description="json: rows per page")]
Cursor = Annotated[str | None, Query(min_length=1, max_length=400, pattern=r"^[A-Za-z0-9_-]+$",
                                     description="the previous page's `next_cursor`")]
Day = Annotated[str, Query(pattern=_DAY, description="a site-local day, YYYY-MM-DD (inclusive)",
                           examples=["2026-11-22"])]
Since = Annotated[Timestamp, Query(description="from (inclusive); at most 366 days before `until`")]
Until = Annotated[Timestamp | None, Query(description="to (exclusive); default now")]
Threshold = Annotated[str, Query(pattern=r"^-?(0|[1-9][0-9]{0,9})(\.[0-9]{1,2})?$", max_length=14,
                                 description="yuan: accounts whose balance is below this", examples=["0.00"])]
Period = Annotated[str | None, Query(pattern=r"^20[0-9]{2}(-(0[1-9]|1[0-2]))?$", examples=["2026-11"],
                                     description="a billing period: 2026-11 (monthly) or 2026 (yearly)")]
_REFUSED = responses(*AUTHENTICATED, "report-refused")


def _csv_doc(model: type[BaseModel]) -> dict[str, Any]:
    header = ",".join(model.model_fields)
    return {"responses": {"200": {"content": {"text/csv": {"schema": {"type": "string"}, "example": header}}}}}


def reports(service: Service) -> Reports:
    return service.reports  # type: ignore[no-any-return]  (set by bootstrap)


@router.get("/arrears", response_model=ArrearsReport, responses=_REFUSED, openapi_extra=_csv_doc(ArrearsRow))
async def arrears(service: ServiceDep, caller: AnyCaller, below: Threshold = "0.00", format: Format = "json",
                  limit: Limit = 1000, cursor: Cursor = None) -> Any:
    """Open accounts whose balance is below `below`: since when, how many days, their last payment."""
    params = dict(below_fen=int(Decimal(below) * 100))
    return await _answer(reports(service).arrears, params, format, limit, cursor, ArrearsRow, "arrears")


@router.get("/disconnections", response_model=DisconnectionReport, responses=_REFUSED,
            openapi_extra=_csv_doc(DisconnectionRow))
async def disconnections(service: ServiceDep, caller: AnyCaller, since: Since, until: Until = None,
                         format: Format = "json", limit: Limit = 1000, cursor: Cursor = None) -> Any:
    """Confirmed disconnects in the range: origin, reason, operator, reconnection and duration."""
    return await _answer(reports(service).disconnections, dict(since=since, until=until), format, limit, cursor,
                         DisconnectionRow, "disconnections")


@router.get("/payments", response_model=PaymentReport, responses=_REFUSED, openapi_extra=_csv_doc(PaymentRow))
async def payments(service: ServiceDep, caller: AnyCaller, since: Day, until: Day, format: Format = "json",
                   limit: Limit = 1000, cursor: Cursor = None) -> Any:
    """Payments per site-local day, source and channel: count, total, reversed, net."""
    return await _answer(reports(service).payments, dict(first=since, last=until), format, limit, cursor,
                         PaymentRow, "payments")


@router.get("/reading-timeliness", response_model=TimelinessReport, responses=_REFUSED,
            openapi_extra=_csv_doc(TimelinessRow))
async def reading_timeliness(service: ServiceDep, caller: AnyCaller, since: Day, until: Day,
                             bus: Annotated[Name | None, Query(examples=["feeder-1"])] = None,
                             format: Format = "json", limit: Limit = 1000, cursor: Cursor = None) -> Any:
    """Per bus and site-local day: meters, the share read (抄表成功率), the share read on time, polls."""
    return await _answer(reports(service).timeliness, dict(first=since, last=until, bus=bus), format, limit, cursor,
                         TimelinessRow, "reading-timeliness")


@router.get("/consumption", response_model=ConsumptionReport, responses=_REFUSED,
            openapi_extra=_csv_doc(ConsumptionRow))
async def consumption(service: ServiceDep, caller: AnyCaller,
                      account_id: Annotated[Name | None, Query(examples=["A-1"])] = None, period: Period = None,
                      since: Annotated[Timestamp | None, Query(description="charges from (inclusive)")] = None,
                      until: Annotated[Timestamp | None, Query(description="charges to (exclusive)")] = None,
                      format: Format = "json", limit: Limit = 1000, cursor: Cursor = None) -> Any:
    """Energy (Wh) and charges per account and billing period, from the ledger's charges."""
    params = dict(account_id=account_id, period=period, since=since, until=until)
    return await _answer(reports(service).consumption, params, format, limit, cursor, ConsumptionRow, "consumption")


async def _answer(report: Any, params: dict[str, Any], format: str, limit: int, cursor: str | None,
                  row: type[BaseModel], name: str) -> Any:
    if format == "json":
        page: Page = await report(**params, limit=limit, cursor=cursor)
        return {"data": page.rows, "totals": page.totals, "next_cursor": page.next_cursor}
    rows = Reports.rows(report, cursor=cursor, **params).__aiter__()
    first = await anext(rows, None)  # a refused report is refused before the answer starts
    return StreamingResponse(_csv(list(row.model_fields), first, rows), media_type="text/csv; charset=utf-8",
                             headers={"Content-Disposition": f'attachment; filename="{name}.csv"'})


async def _csv(columns: list[str], first: dict[str, Any] | None,
               rest: AsyncIterator[dict[str, Any]]) -> AsyncIterator[str]:
    """The header, then the rows (RFC 4180, CRLF), in chunks of about 64 KiB."""
    chunk = [_line(columns)]
    size = 0
    if first is not None:
        chunk.append(_line([_cell(first[c]) for c in columns]))
        async for data in rest:
            line = _line([_cell(data[c]) for c in columns])
            chunk.append(line)
            size += len(line)
            if size > 65_536:
                yield "".join(chunk)
                chunk, size = [], 0
    yield "".join(chunk)


_SPECIAL = re.compile(r'[,"\r\n]')


def _line(cells: list[str]) -> str:
    if _SPECIAL.search("".join(cells)) is None:  # most rows: nothing to quote
        return ",".join(cells) + "\r\n"
    return ",".join('"' + c.replace('"', '""') + '"' if _SPECIAL.search(c) else c for c in cells) + "\r\n"


_FORMULA = re.compile(r"[=+\-@\t\r]")  # what a spreadsheet takes for the start of a formula
_NUMBER = re.compile(r"[+-]?[0-9]+(\.[0-9]+)?")  # an amount ("-12.34") stays a number


def _cell(value: Any) -> str:
    if value.__class__ is str:
        if _FORMULA.match(value) and _NUMBER.fullmatch(value) is None:
            return "'" + value  # text that a spreadsheet would run (CSV injection): shown as the text it is
        return value  # type: ignore[no-any-return]
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    return str(value)
