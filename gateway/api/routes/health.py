from __future__ import annotations

import sqlalchemy as sa
from fastapi import APIRouter

from gateway.api.deps import ServiceDep
from gateway.api.problems import problem

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz", response_model=None)
async def readyz(service: ServiceDep):  # type: ignore[no-untyped-def]
    """The database answers."""
    try:
        async with service.uow(readonly=True) as uow:
            await uow.execute(sa.text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        return problem(503, "Service Unavailable", f"database: {type(exc).__name__}")
    return {"status": "ready"}
