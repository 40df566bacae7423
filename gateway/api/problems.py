"""Errors as ``application/problem+json`` (RFC 9457), with stable problem types, mapped in one place.

Routes raise ``Problem`` or let the service's and the domain's errors through; ``install`` maps each kind of
error to its problem type here and nowhere else. ``responses`` declares a route's problems in the API document,
so that the document lists every status a route can answer. The types are listed in docs/api.md.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from gateway.domain.errors import (
    DomainError,
    EmergencyCreditRefused,
    NoQuarantinedReading,
)
from gateway.domain.errors import UnknownMeter as DomainUnknownMeter
from gateway.domain.money import AmountError
from gateway.service.errors import (
    AccountUnreadable,
    CommandNotAllowed,
    CommandNotCancellable,
    GatewayStopping,
    PaymentConflict,
    UnknownAccount,
    UnknownCommand,
    UnknownMeter,
    UnknownNotice,
    NoticeNotRetryable,
    UnknownPayment,
    FleetConflict,
    FleetInvalid,
)
from gateway.service.alarm_desk import AlarmNotOpen, UnknownAlarm
from gateway.service.reports import ReportRefused

__all__ = ["PROBLEM", "PROBLEM_TYPES", "Problem", "ProblemType", "install", "kind_of", "problem", "responses"]

log = logging.getLogger(__name__)

PROBLEM = "application/problem+json"
TYPE_PREFIX = "urn:problem-type:meter-gateway:"


@dataclass(frozen=True, slots=True)
class ProblemType:
    """One kind of problem: a stable ``type`` URI, its HTTP status, a title and what it means."""

    slug: str
    status: int
    title: str
    about: str

    @property
    def uri(self) -> str:
        return TYPE_PREFIX + self.slug


def _types(*types: ProblemType) -> dict[str, ProblemType]:
    return {t.slug: t for t in types}


PROBLEM_TYPES = _types(
    ProblemType("bad-request", 400, "Bad Request", "The request could not be read (e.g. the body broke off)."),
    ProblemType("validation-error", 422, "Unprocessable Content",
                "The request is not well formed: a field is missing, of the wrong type, or outside its documented "
                "form or range (`errors` lists each one). Nothing was changed."),
    ProblemType("authentication-required", 401, "Unauthorized",
                "No API key, or a key this gateway does not know (`Authorization: Bearer KEY`)."),
    ProblemType("forbidden", 403, "Forbidden", "The key's role may not do this."),
    ProblemType("not-allowed", 403, "Forbidden",
                "The action is refused for this account or meter (e.g. a protected account is disconnected by hand "
                "only by an admin with `force`)."),
    ProblemType("authority-exceeded", 403, "Forbidden",
                "More than the key may do: emergency credit above the site's amount or an operator hold longer than "
                "the site allows needs `admin`; a billing key bound to sources posts and reverses only its own."),
    ProblemType("not-found", 404, "Not Found", "No such account, meter, payment, command, group or route."),
    ProblemType("method-not-allowed", 405, "Method Not Allowed", "The route does not take this method."),
    ProblemType("payment-conflict", 409, "Conflict",
                "This (source, payment_id) was recorded before with another account or amount."),
    ProblemType("emergency-credit-refused", 409, "Conflict",
                "Emergency credit was granted this period already, or earlier credit is not repaid yet."),
    ProblemType("nothing-quarantined", 409, "Conflict",
                "The meter has no quarantined reading to accept, or the acceptance does not fit it."),
    ProblemType("command-not-cancellable", 409, "Conflict", "Only a queued command can be cancelled."),
    ProblemType("notice-not-retryable", 409, "Conflict",
                "Only a failed notice (a dead letter) is tried again by hand; a pending one is tried anyway."),
    ProblemType("fleet-conflict", 409, "Conflict",
                "Accounts or meters to provision were refused by the site's rules or the fleet as it is: a row names "
                "what the site does not have (a tariff, bus, meter model, credit class, channel, account), lacks "
                "what its bus's protocol needs (a unit id, an address), or clashes with the fleet (an id in use, a "
                "place on a bus taken by another meter, a closed account, a relay command in progress, a meter that "
                "did not answer); an imported row that is not well formed too. `errors` lists each one with its "
                "row, kind and field. Nothing was changed."),
    ProblemType("report-refused", 409, "Conflict",
                "A report's parameters are well formed but refused: a range that is empty, reversed or longer than "
                "366 days, a day that is not in the calendar, or a cursor that is not one of this report's "
                "(docs/reports.md)."),
    ProblemType("alarm-resolved", 409, "Conflict",
                "The alarm is resolved: it is acknowledged or resolved no more (a new one is raised if its cause "
                "comes back)."),
    ProblemType("conflict", 409, "Conflict",
                "The request is well formed but the state of the account, the meter or the clock does not allow it "
                "now (e.g. a hold that ends in the past, a re-base taken in the future)."),
    ProblemType("account-state-unreadable", 409, "Conflict",
                "The account's stored state cannot be read (written by an older version); an alarm was raised and "
                "the account is left untouched until it is repaired. Other accounts are not affected."),
    ProblemType("content-too-large", 413, "Content Too Large", "The request body is larger than api.max_body_bytes."),
    ProblemType("too-many-failed-authentications", 429, "Too Many Requests",
                "Too many requests with a missing or unknown key from this client: wait `Retry-After` seconds."),
    ProblemType("internal-error", 500, "Internal Server Error",
                "An unexpected error; the request changed nothing. The gateway's log has the details."),
    ProblemType("unavailable", 503, "Service Unavailable",
                "The gateway is stopping, or its database does not answer; retry later."),
)


class Problem(Exception):
    """An error answered as a problem of ``slug`` (one of ``PROBLEM_TYPES``)."""

    def __init__(self, slug: str, detail: str, *, headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.type = PROBLEM_TYPES[slug]
        self.detail, self.headers, self.extra = detail, headers, extra


def problem(slug: str, detail: str | None = None, *, headers: dict[str, str] | None = None,
            **extra: Any) -> JSONResponse:
    """The problem+json response of a problem type."""
    kind = PROBLEM_TYPES[slug]
    body: dict[str, Any] = {"type": kind.uri, "title": kind.title, "status": kind.status}
    if detail:
        body["detail"] = detail
    body.update(extra)
    if kind.status == 401:
        headers = {"WWW-Authenticate": "Bearer", **(headers or {})}
    return JSONResponse(body, status_code=kind.status, media_type=PROBLEM, headers=headers)


# Errors of the service and the domain, by the problem they are (the most specific class wins).
_ERRORS: dict[type[Exception], str] = {
    UnknownAccount: "not-found", UnknownMeter: "not-found", DomainUnknownMeter: "not-found",
    UnknownPayment: "not-found", UnknownCommand: "not-found", UnknownNotice: "not-found",
    UnknownAlarm: "not-found", AlarmNotOpen: "alarm-resolved",
    NoticeNotRetryable: "notice-not-retryable",
    PaymentConflict: "payment-conflict",
    EmergencyCreditRefused: "emergency-credit-refused",
    NoQuarantinedReading: "nothing-quarantined",
    CommandNotCancellable: "command-not-cancellable",
    CommandNotAllowed: "not-allowed",
    AccountUnreadable: "account-state-unreadable",
    ReportRefused: "report-refused",
    AmountError: "validation-error",
    DomainError: "conflict",
    GatewayStopping: "unavailable",
}
_HTTP = {400: "bad-request", 401: "authentication-required", 403: "forbidden", 404: "not-found", 405: "method-not-allowed",
         413: "content-too-large", 422: "validation-error"}


def kind_of(exc: Exception) -> ProblemType | None:
    """The problem an error of the service or the domain (or a ``Problem``) is; None for any other error."""
    if isinstance(exc, Problem):
        return exc.type
    slug = next((_ERRORS[cls] for cls in type(exc).__mro__ if cls in _ERRORS), None)
    return None if slug is None else PROBLEM_TYPES[slug]


def install(app: FastAPI) -> None:
    """Answer every error of ``app`` as a problem."""

    async def mapped(_: Request, exc: Exception) -> JSONResponse:
        kind = kind_of(exc)
        assert kind is not None  # (registered for the classes of _ERRORS only)
        slug = kind.slug
        headers = {"Retry-After": "5"} if slug == "unavailable" else None
        return problem(slug, str(exc), headers=headers)

    for cls in _ERRORS:
        app.add_exception_handler(cls, mapped)
    app.add_middleware(_Unexpected)

    @app.exception_handler(FleetInvalid)
    @app.exception_handler(FleetConflict)
    async def _fleet(_: Request, exc: FleetConflict | FleetInvalid) -> JSONResponse:
        return problem("fleet-conflict", str(exc), errors=[e.as_dict() for e in exc.errors])

    @app.exception_handler(Problem)
    async def _problem(_: Request, exc: Problem) -> JSONResponse:
        return problem(exc.type.slug, exc.detail, headers=exc.headers, **exc.extra)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        slug = _HTTP.get(exc.status_code)
        if exc.status_code == 405:  # every method of the path (Starlette names only its first route's)
            methods = _methods(app, request.url.path)
            if methods:
                exc.headers = {**(exc.headers or {}), "Allow": ", ".join(methods)}
        if slug is None:
            return JSONResponse({"type": "about:blank", "title": str(exc.detail), "status": exc.status_code},
                                status_code=exc.status_code, media_type=PROBLEM)
        return problem(slug, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = []
        for e in exc.errors():
            msg = str(e["msg"]).removeprefix("Value error, ")
            if e.get("type") == "json_invalid" and (ctx := e.get("ctx")):
                msg = f"{msg}: {ctx.get('error')}"
            errors.append({"loc": [_printable(p) for p in e["loc"]], "msg": msg})
        detail = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors)
        return problem("validation-error", detail, errors=errors)



def _methods(app: FastAPI, path: str) -> list[str]:
    """The methods the API document gives a path (several routers may serve one path, a method each)."""
    paths = getattr(app.state, "path_methods", None)
    if paths is None:
        paths = app.state.path_methods = [
            (re.compile("^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template)) + "$"),
             sorted(m.upper() for m in operations))
            for template, operations in app.openapi()["paths"].items()]
    return next((methods for pattern, methods in paths if pattern.match(path)), [])


class _Unexpected:
    """Any other error becomes an ``internal-error`` problem (logged once, here), unless the answer has started.

    A middleware rather than an ``Exception`` handler: Starlette re-raises after such a handler (the server logs
    the error a second time, and an in-process test client raises it)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except ClientDisconnect:  # the client went away (or the server's deadline closed it): nobody to answer
            log.info("%s %s: the client disconnected before the request was read", scope.get("method"),
                     scope.get("path"))
        except Exception as exc:
            log.error("unexpected error answering %s %s", scope.get("method"), scope.get("path"), exc_info=exc)
            if started:
                raise
            await problem("internal-error", "an unexpected error; nothing was changed")(scope, receive, send)


def _printable(part: Any) -> str | int:
    """A location part as it can go back to the client (a key may be any string the client sent)."""
    if isinstance(part, int):
        return part
    return str(part).encode("utf-8", "backslashreplace").decode("utf-8")[:100]


# --- the API document ----------------------------------------------------------------------------------------
PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "type": "object",
    "description": "RFC 9457 problem details; `type` is one of the problem types of docs/api.md.",
    "required": ["type", "title", "status"],
    "properties": {
        "type": {"type": "string", "description": "the problem type's URI", "examples": [TYPE_PREFIX + "not-found"]},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "errors": {"type": "array", "description": "validation-error: one entry per field",
                   "items": {"type": "object", "properties": {
                       "loc": {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]}},
                       "msg": {"type": "string"}}}},
    },
}

_EXAMPLES = {
    "bad-request": "There was an error parsing the body",
    "validation-error": "body.amount: String should match pattern …",
    "authentication-required": "an API key is required: Authorization: Bearer KEY",
    "forbidden": "the role 'viewer' may not do this (needs admin or operator)",
    "not-allowed": "the account is protected (保电): a disconnect needs the admin role and force",
    "authority-exceeded": "emergency credit above the site's 10.00 needs the admin role",
    "not-found": "no account 'A-404'",
    "payment-conflict": "payment billing/P-1001 was recorded with other content",
    "emergency-credit-refused": "account A-1: emergency credit refused: already granted in period 2026-11",
    "nothing-quarantined": "meter M-1 has no quarantined reading",
    "command-not-cancellable": "command 6f1c… is sent; only a queued command can be cancelled",
    "notice-not-retryable": "notice 12 is delivered; only a failed notice is tried again",
    "fleet-conflict": "meters row 3: unit_id: 12 on bus 'feeder-1' is M-0012's",
    "report-refused": "the range is longer than 366 days; ask for several",
    "alarm-resolved": "alarm 42 is resolved already",
    "conflict": "the hold must end in the future",
    "account-state-unreadable": "account A-7: the stored state cannot be read (hold_until); an alarm was raised",
    "content-too-large": "Content Too Large",
    "too-many-failed-authentications": "too many failed authentications from this client; retry in 60 s",
    "internal-error": "an unexpected error; nothing was changed",
    "unavailable": "the gateway is stopping",
}


def responses(*slugs: str) -> dict[int | str, dict[str, Any]]:
    """The ``responses`` of a route for the problems it can answer (``internal-error`` is always added)."""
    out: dict[int | str, dict[str, Any]] = {}
    for slug in (*slugs, "internal-error"):
        kind = PROBLEM_TYPES[slug]
        entry = out.setdefault(kind.status, {"description": "", "content": {PROBLEM: {
            "schema": {"$ref": "#/components/schemas/Problem"}, "examples": {}}}})
        entry["description"] = " ".join(filter(None, (entry["description"], f"`{slug}`: {kind.about}")))
        entry["content"][PROBLEM]["examples"][slug] = {"summary": slug, "value": {
            "type": kind.uri, "title": kind.title, "status": kind.status, "detail": _EXAMPLES[slug]}}
        if kind.status == 429:
            entry["headers"] = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds to wait"}}
    return out


AUTHENTICATED = ("authentication-required", "forbidden", "too-many-failed-authentications", "validation-error")
"""What every route behind an API key can answer (every /v1 route has parameters or a body to validate)."""
