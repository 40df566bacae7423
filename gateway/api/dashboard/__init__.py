"""The operations dashboard (DESIGN.md §10; docs/dashboard.md): server-rendered pages under ``/ui`` over the same
service as the API, signed in with an API key, in Chinese and English, updated live from the event stream."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from starlette.staticfiles import StaticFiles

from gateway.api.dashboard import actions, pages
from gateway.api.dashboard.session import SessionCodec
from gateway.api.dashboard.web import HERE, PREFIX, SignedOut

__all__ = ["install"]


def install(app: FastAPI, *, session_secret: bytes | None = None, session_s: float = 12 * 3600) -> None:
    """Serve the dashboard from ``app`` (which has the API's service, keys and event stream in its state)."""
    app.state.sessions = SessionCodec(session_secret, lifetime_s=session_s)
    app.include_router(pages.router)
    app.include_router(actions.router)
    app.mount(PREFIX + "/static", StaticFiles(directory=HERE / "static"), name="dashboard-static")
    app.add_exception_handler(SignedOut, pages.signed_out_handler)  # type: ignore[arg-type]

    @app.get("/", include_in_schema=False)
    async def home() -> RedirectResponse:
        return RedirectResponse(PREFIX + "/", status_code=307)

    @app.get(PREFIX, include_in_schema=False)
    async def bare() -> RedirectResponse:
        return RedirectResponse(PREFIX + "/", status_code=307)
