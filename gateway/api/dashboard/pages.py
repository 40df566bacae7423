"""The dashboard's pages (DESIGN.md §10): sign-in, the overview, the accounts and meters tables, one account, one
meter, the alarms; the language switch and the live event stream the pages update from."""

from __future__ import annotations

import urllib.parse
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response

from gateway.api.dashboard.i18n import LANG_COOKIE, LANGUAGES
from gateway.api.dashboard.session import COOKIE, SessionCodec
from gateway.api.dashboard.web import (PREFIX, SignedOut, page_of, parse_form, redirect, render, safe_next,
                                       same_origin)
from gateway.api.routes.events import SseResponse
from gateway.api.security import FailedAuthLimiter, KeyRing
from gateway.service.dashboard import TableQuery
from gateway.service.event_stream import Gap, Heartbeat
from gateway.service.ports import OutboxEvent
from gateway.service.lists import SUPPLY_STATES, AuditFilter, CommandFilter, NoticeFilter
from gateway.settings import hash_key

router = APIRouter(prefix=PREFIX, include_in_schema=False)

Search = Annotated[str | None, Query(max_length=64)]
SPANS = ("day", "week", "month")
PAGE_ROWS = 50
HEALTHS = ("online", "degraded", "offline", "unknown")


# --- signing in and out ---------------------------------------------------------------------------------------
@router.get("/login", response_class=HTMLResponse)
async def login_form(request: Request, next: Annotated[str | None, Query(max_length=500)] = None,
                     message: Annotated[str | None, Query(max_length=100)] = None) -> Response:
    known = message if message == "Your session has ended; sign in again." else None
    return render(None, "login.html", request=request, next=safe_next(next), error=known)


@router.post("/login")
async def login(request: Request) -> Response:
    form = parse_form(await request.body())
    target = safe_next(form.get("next"))
    if not same_origin(request):  # another site signing the browser in to a session of its choosing
        return render(None, "login.html", request=request, next=target, status=403,
                      error="The form has expired; please try again.")
    limiter: FailedAuthLimiter = request.app.state.auth_limiter
    client = request.client.host if request.client else "?"
    if limiter.retry_after(client) is not None:
        return render(None, "login.html", request=request, next=target, status=429,
                      error="Too many failed sign-ins; try again later.")
    key = form.get("key", "").strip()
    keys: KeyRing = request.app.state.keys
    caller = await keys.lookup(hash_key(key)) if 0 < len(key) <= 200 else None
    if caller is None:
        limiter.failed(client)
        return render(None, "login.html", request=request, next=target, status=401, error="Unknown API key.")
    codec: SessionCodec = request.app.state.sessions
    _, cookie = codec.new(hash_key(key))
    response = redirect(target)
    response.set_cookie(COOKIE, cookie, httponly=True, samesite="strict", path=PREFIX,
                        secure=request.url.scheme == "https", max_age=int(codec.lifetime_s))
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    page = await page_of(request)
    codec: SessionCodec = request.app.state.sessions
    if not codec.csrf_ok(page.session, parse_form(await request.body()).get("csrf")):
        expired = page.locale.text("The form has expired; please try again.")
        return redirect(PREFIX + "/", flash=expired, kind="error")
    response = redirect(PREFIX + "/login")
    response.delete_cookie(COOKIE, path=PREFIX)
    return response


@router.get("/lang/{lang}")
async def language(lang: str, next: Annotated[str | None, Query(max_length=500)] = None) -> Response:
    """Switch the language (remembered for a year in a cookie)."""
    response = redirect(safe_next(next))
    if lang in LANGUAGES:
        response.set_cookie(LANG_COOKIE, lang, max_age=365 * 86400, path=PREFIX, samesite="lax")
    return response


# --- the pages ------------------------------------------------------------------------------------------------
@router.get("/", response_class=HTMLResponse)
async def overview(request: Request) -> Response:
    page = await page_of(request)
    data = await page.service.dashboard.overview()
    return render(page, "overview.html", data=data, states=SUPPLY_STATES)


def _table_query(q: str | None, state: str | None, sort: str, order: str, offset: int, states: tuple[str, ...],
                 sorts: tuple[str, ...]) -> TableQuery:
    return TableQuery(search=(q or "").strip() or None, state=state if state in states else None,
                      sort=sort if sort in sorts else "id", descending=order == "desc", offset=max(offset, 0),
                      limit=PAGE_ROWS)


@router.get("/accounts", response_class=HTMLResponse)
async def accounts(request: Request, q: Search = None, state: Search = None, sort: Search = "id",
                   order: Search = "asc", offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0) -> Response:
    page = await page_of(request)
    query = _table_query(q, state, sort or "id", order or "asc", offset, SUPPLY_STATES, ("id", "balance", "updated"))
    data = await page.service.dashboard.accounts(query)
    return render(page, "accounts.html", data=data, query=query, states=SUPPLY_STATES,
                  sorts=("id", "balance", "updated"))


@router.get("/meters", response_class=HTMLResponse)
async def meters(request: Request, q: Search = None, state: Search = None, sort: Search = "id",
                 order: Search = "asc", offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0) -> Response:
    page = await page_of(request)
    sorts = ("id", "health", "last_reading", "account")
    query = _table_query(q, state, sort or "id", order or "asc", offset, HEALTHS, sorts)
    data = await page.service.dashboard.meters(query)
    return render(page, "meters.html", data=data, query=query, states=HEALTHS, sorts=sorts)


def _span(span: str | None) -> str:
    return span if span in SPANS else "week"


@router.get("/accounts/{account_id}", response_class=HTMLResponse)
async def account(request: Request, account_id: str, span: Search = None) -> Response:
    page = await page_of(request)
    service = page.service
    view = await service.views.account(account_id)
    meters = view["meters"]
    commands: list[dict[str, Any]] = []
    for meter_id in meters[:10]:
        commands += (await service.lists.commands(CommandFilter(meter_id=meter_id, limit=10)))["data"]
    commands.sort(key=lambda c: c["created_at"], reverse=True)
    return render(page, "account.html", account=view, span=_span(span), spans=SPANS,
                  chart=await service.dashboard.consumption(meters, _span(span)),
                  ledger=(await service.views.ledger(account_id, limit=20, before_id=None))["data"],
                  commands=commands[:20],
                  notices=(await service.lists.notices(NoticeFilter(account_id=account_id, limit=20)))["data"],
                  events=(await service.lists.audit(AuditFilter(account_id=account_id, limit=20)))["data"],
                  alarms=(await service.alarms.page(account_id=account_id, state="unresolved", limit=20))["data"])


@router.get("/meters/{meter_id}", response_class=HTMLResponse)
async def meter(request: Request, meter_id: str, span: Search = None) -> Response:
    page = await page_of(request)
    service = page.service
    view = await service.views.meter(meter_id)
    return render(page, "meter.html", meter=view, span=_span(span), spans=SPANS,
                  chart=await service.dashboard.consumption([meter_id], _span(span)),
                  account=await service.views.account(view["account_id"]),
                  readings=(await service.views.readings(meter_id, limit=20, before_id=None))["data"],
                  commands=(await service.lists.commands(CommandFilter(meter_id=meter_id, limit=20)))["data"],
                  events=(await service.lists.audit(AuditFilter(meter_id=meter_id, limit=20)))["data"],
                  alarms=(await service.alarms.page(meter_id=meter_id, state="unresolved", limit=20))["data"])


@router.get("/alarms", response_class=HTMLResponse)
async def alarms(request: Request, state: Search = "unresolved",
                 before_id: Annotated[int | None, Query(ge=1, le=2**62)] = None) -> Response:
    page = await page_of(request)
    which = state if state in ("unresolved", "open", "acknowledged", "resolved") else None
    data = await page.service.alarms.page(state=which, before_id=before_id, limit=PAGE_ROWS)
    return render(page, "alarms.html", data=data, state=which or "all")


@router.get("/events")
async def events(request: Request) -> Response:
    """The live stream the pages listen to (the session's, as ``GET /v1/events`` is the API keys')."""
    await page_of(request)
    stream = request.app.state.events
    return SseResponse(await stream.subscribe(after=None, topic=None), heartbeat_s=stream.heartbeat_s,
                       encode=_nudge)


def _nudge(item: OutboxEvent | Gap | Heartbeat) -> bytes:
    """An item of the pages' stream: only that something changed, and what (the pages fetch what they show)."""
    if isinstance(item, Heartbeat):
        return b": heartbeat\n\n"
    if isinstance(item, Gap):
        return b'data: {"type":"gap"}\n\n'
    data = orjson.dumps({"type": str(item.payload.get("type", "message")), "topic": item.topic})
    return b"id: %d\ndata: %s\n\n" % (item.id, data)


def signed_out_handler(request: Request, exc: SignedOut) -> Response:
    """A page without a session: to the sign-in page; a stream or a post: 401."""
    if request.method != "GET" or request.url.path == PREFIX + "/events":
        return Response("sign in first", status_code=401, media_type="text/plain")
    query = urllib.parse.urlencode({"next": exc.next_path, **({"message": exc.message} if exc.message else {})})
    return redirect(f"{PREFIX}/login?{query}")
