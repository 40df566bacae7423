"""Dependencies: the container (service, catalog) and API-key authentication with roles."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import sqlalchemy as sa
from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from gateway.adapters import tables as t
from gateway.service.handlers import Service
from gateway.settings import hash_key

__all__ = ["Caller", "ServiceDep", "require"]

_bearer = HTTPBearer(auto_error=False)


@dataclass(frozen=True, slots=True)
class Caller:
    name: str
    role: str


def get_service(request: Request) -> Service:
    return request.app.state.service  # type: ignore[no-any-return]


ServiceDep = Annotated[Service, Depends(get_service)]


async def current_caller(request: Request, service: ServiceDep,
                         creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> Caller:
    if creds is None or creds.scheme.lower() != "bearer" or not creds.credentials:
        raise HTTPException(401, "an API key is required: Authorization: Bearer KEY")
    digest = hash_key(creds.credentials)
    static = request.app.state.static_keys.get(digest)
    if static is not None:
        return Caller(*static)
    async with service.uow(readonly=True) as uow:
        row = (await uow.execute(sa.select(t.api_keys.c.name, t.api_keys.c.role)
                                 .where(t.api_keys.c.sha256 == digest))).one_or_none()
    if row is None:
        raise HTTPException(401, "unknown API key")
    return Caller(row.name, row.role)


def require(*roles: str):  # type: ignore[no-untyped-def]
    """A dependency that lets through callers with one of ``roles`` (admin always)."""
    allowed = set(roles) | {"admin"}

    async def check(caller: Annotated[Caller, Depends(current_caller)]) -> Caller:
        if caller.role not in allowed:
            raise HTTPException(403, f"the role {caller.role!r} may not do this (needs {' or '.join(sorted(allowed))})")
        return caller

    return check


AnyCaller = Annotated[Caller, Depends(require("viewer", "billing", "operator"))]
BillingCaller = Annotated[Caller, Depends(require("billing"))]
OperatorCaller = Annotated[Caller, Depends(require("operator"))]
