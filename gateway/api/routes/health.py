from __future__ import annotations

import sqlalchemy as sa
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from gateway.api.deps import ServiceDep
from gateway.api.problems import problem, responses

router = APIRouter(tags=["health"])


@router.get("/healthz", responses=responses(), openapi_extra={"security": []})
async def healthz() -> dict[str, str]:
    """The process is up (no key needed)."""
    return {"status": "ok"}


@router.get("/readyz", response_model=dict[str, str], responses=responses("unavailable"),
            openapi_extra={"security": []})
async def readyz(service: ServiceDep) -> dict[str, str] | JSONResponse:
    """The database answers (no key needed)."""
    try:
        async with service.uow(readonly=True) as uow:
            await uow.execute(sa.text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        return problem("unavailable", f"database: {type(exc).__name__}", headers={"Retry-After": "5"})
    return {"status": "ready"}
