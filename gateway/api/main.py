"""The FastAPI application: composes the routers; the service and the keys come from bootstrap."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, HTTPException
from fastapi_offline import FastAPIOffline

from gateway.api import dashboard as dashboard_pages
from gateway.api import problems
from gateway.api.hot_paths import HotPaths
from gateway.api.openapi import install_openapi
from gateway.api.routes import (accounts, alarms, audit, commands, events, fleet, health, meters, metrics, notices,
                                 payments, reports)
from gateway.api.security import Caller, FailedAuthLimiter, KeyRing
from gateway.service.event_stream import EventStream
from gateway.service.facade import Service
from gateway.service.metrics import GatewayMetrics

__all__ = ["create_app"]


def create_app(service: Service, *, static_keys: dict[str, Caller] | None = None, max_body_bytes: int = 1_048_576,
               failed_auth_limit: int = 20, failed_auth_window_s: float = 60.0, key_cache_s: float = 30.0,
               max_import_bytes: int = 67_108_864, event_stream: EventStream | None = None,
               gateway_metrics: GatewayMetrics | None = None, hot_paths: bool = True, dashboard: bool = True,
               session_secret: bytes | None = None, session_s: float = 12 * 3600) -> FastAPI:
    """The API over ``service``; ``static_keys`` maps key SHA-256 → caller for the keys of the settings (the
    database's keys are read through ``service.stored_keys``); ``event_stream``: ``GET /v1/events`` (ended by
    ``app.state.events.close()`` when the server stops); ``gateway_metrics``: ``GET /metrics``; ``hot_paths``: the
    plain reads of one account or meter and plain payments answered before the stack (``gateway.api.hot_paths``;
    False: every request through the routes); ``dashboard``: the pages under ``/ui`` (``gateway.api.dashboard``;
    they need ``service.dashboard`` and ``event_stream``), their sessions signed with ``session_secret``."""
    # The docs pages (/docs, /redoc) load their scripts from the package, never from a CDN.
    # No OpenTelemetry: the gateway's figures are its Prometheus metrics; FastAPI would otherwise ask the
    # OpenTelemetry providers on every request whether it should trace it.
    app = FastAPIOffline(title="meter-gateway", version="0.1.0", static_url="/docs-assets",
                         telemetry={"tracing": False, "metrics": False, "logs": False},
                         description="Remote prepaid and meter-control gateway: payments, accounts, meters, relay "
                                     "commands. Errors are application/problem+json; their types are in docs/api.md.")
    app.state.service = service
    app.state.events, app.state.metrics = event_stream, gateway_metrics

    async def stored() -> dict[str, Caller]:
        return {digest: Caller(name, role, frozenset(sources) if sources is not None else None)
                for digest, name, role, sources in await service.stored_keys()}

    app.state.keys = KeyRing(static_keys or {}, stored, refresh_s=key_cache_s, miss_refresh_s=min(5.0, key_cache_s))
    app.state.auth_limiter = FailedAuthLimiter(limit=failed_auth_limit, window_s=failed_auth_window_s)
    problems.install(app)
    app.add_middleware(_NoStore)
    if gateway_metrics is not None:
        app.add_middleware(metrics.PaymentOutcomes, metrics=gateway_metrics)
    app.add_middleware(_BodyLimit, max_body_bytes=max_body_bytes,
                       larger={fleet.IMPORT_PATH: max_import_bytes})  # a whole fleet's file
    if hot_paths:  # outermost: the plain reads of one account or meter and plain payments, before the stack
        app.add_middleware(HotPaths, service=service, keys=app.state.keys, limiter=app.state.auth_limiter,
                           metrics=gateway_metrics, max_body_bytes=max_body_bytes)
    # the most requested first: a request is matched against the routes in this order
    for module in (health, accounts, meters, payments, commands, fleet, notices, alarms, audit, reports):
        app.include_router(module.router)
    if event_stream is not None:
        app.include_router(events.router)
    if gateway_metrics is not None:
        app.include_router(metrics.router)
    app.include_router(fleet.files)
    if dashboard and event_stream is not None and getattr(service, "dashboard", None) is not None:
        dashboard_pages.install(app, session_secret=session_secret, session_s=session_s)
    install_openapi(app, max_payment_fen=service.catalog.max_payment_fen)
    return app


class _BodyLimit:
    """Request bodies of at most ``max_body_bytes``: one declared larger (``Content-Length``) is refused before
    anything reads it, and the connection closed (its body is never read); one sent without a length is refused
    as soon as it passes the limit. Both answers are ``content-too-large`` problems. ``larger``: paths that take
    more (bulk imports)."""

    def __init__(self, app: Any, *, max_body_bytes: int, larger: dict[str, int] | None = None) -> None:
        self.app, self.max_body_bytes, self.larger = app, max_body_bytes, larger or {}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.larger.get(scope.get("path", ""), self.max_body_bytes)
        detail = f"the body may have at most {limit} bytes"
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), b"")
        if declared.isdigit() and int(declared) > limit:
            answer = problems.problem("content-too-large", detail, headers={"Connection": "close"})
            await answer(scope, receive, send)
            return
        received = 0

        async def counted() -> dict[str, Any]:
            nonlocal received
            message: dict[str, Any] = await receive()
            received += len(message.get("body", b""))
            if received > limit:  # FastAPI passes an HTTPException raised here to its handler
                raise HTTPException(413, detail, headers={"Connection": "close"})
            return message

        await self.app(scope, counted, send)


class _NoStore:
    """``Cache-Control: no-store`` on every answer of the API proper (balances and keys' answers are not for
    caches)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return

        async def no_store(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"cache-control", b"no-store")]
            await send(message)

        await self.app(scope, receive, no_store)
