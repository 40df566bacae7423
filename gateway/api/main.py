"""The FastAPI application: composes the routers; the service comes from bootstrap via ``app.state``."""

from __future__ import annotations

from fastapi import FastAPI

from gateway.api import problems
from gateway.api.routes import accounts, commands, health, meters, payments
from gateway.service.handlers import Service


def create_app(service: Service, *, static_keys: dict[str, tuple[str, str]] | None = None) -> FastAPI:
    """The API over ``service``; ``static_keys`` maps key SHA-256 → (name, role) for keys from the settings."""
    app = FastAPI(title="meter-gateway", version="0.1.0",
                  description="Remote prepaid and meter-control gateway: payments, accounts, meters, relay commands.")
    app.state.service = service
    app.state.static_keys = dict(static_keys or {})
    problems.install(app)
    for module in (health, payments, accounts, meters, commands):
        app.include_router(module.router)
    return app
