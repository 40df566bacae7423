from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from gateway.api.deps import ServiceDep
from gateway.api.problems import problem, responses

router = APIRouter(tags=["health"])


class Health(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"status": "ok"}]})

    status: Literal["ok", "ready"]


@router.get("/healthz", response_model=Health, responses=responses(), openapi_extra={"security": []})
async def healthz() -> Health:
    """The process is up (no key needed)."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses=responses("unavailable"), openapi_extra={"security": []})
async def readyz(service: ServiceDep) -> Health | JSONResponse:
    """The database answers (no key needed)."""
    try:
        await service.views.ready()
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        return problem("unavailable", f"database: {type(exc).__name__}", headers={"Retry-After": "5"})
    return Health(status="ready")
