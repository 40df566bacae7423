"""Dependencies of the routes: the service, and the caller behind the API key with its role.

Each dependency costs every request that uses it (FastAPI solves them one by one), so a route has two: the
service, and its role check, which reads the key itself. The API document declares the bearer scheme for every
route but the health checks (``gateway.api.openapi``).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security.utils import get_authorization_scheme_param

from gateway.api.problems import Problem
from gateway.api.security import Caller, FailedAuthLimiter, KeyRing
from gateway.service.facade import Service
from gateway.settings import hash_key

__all__ = ["BEARER", "BILLING_ROLES", "READ_ROLES", "AdminCaller", "AnyCaller", "BillingCaller", "Caller",
           "OperatorCaller", "ProvisioningCaller", "ServiceDep", "current_caller", "require"]

BEARER = {"HTTPBearer": {"type": "http", "scheme": "bearer",
                         "description": "an API key: `Authorization: Bearer KEY`"}}  # the document's scheme


async def get_service(request: Request) -> Service:
    # (async: FastAPI runs a plain ``def`` dependency in a worker thread, a hand-over on every request)
    return request.app.state.service  # type: ignore[no-any-return]


ServiceDep = Annotated[Service, Depends(get_service)]


async def current_caller(request: Request) -> Caller:
    """The caller behind the request's ``Authorization: Bearer KEY``."""
    keys: KeyRing = request.app.state.keys
    limiter: FailedAuthLimiter = request.app.state.auth_limiter
    client = request.client.host if request.client else "?"
    wait = limiter.retry_after(client)
    if wait is not None:
        raise Problem("too-many-failed-authentications",
                      f"too many failed authentications from this client; retry in {wait} s",
                      headers={"Retry-After": str(wait)})
    scheme, credentials = get_authorization_scheme_param(request.headers.get("authorization"))
    if scheme.lower() != "bearer" or not credentials:
        limiter.failed(client)
        raise Problem("authentication-required", "an API key is required: Authorization: Bearer KEY")
    caller = await keys.lookup(hash_key(credentials))
    if caller is None:
        limiter.failed(client)
        raise Problem("authentication-required", "unknown API key")
    return caller


def require(*roles: str):  # type: ignore[no-untyped-def]
    """A dependency that lets through callers with one of ``roles`` (admin always)."""
    allowed = set(roles) | {"admin"}

    async def check(request: Request) -> Caller:
        caller = await current_caller(request)
        if caller.role not in allowed:
            raise Problem("forbidden",
                          f"the role {caller.role!r} may not do this (needs {' or '.join(sorted(allowed))})")
        return caller

    return check


READ_ROLES = frozenset({"viewer", "billing", "operator", "provisioning", "admin"})  # who may read (every role)
AnyCaller = Annotated[Caller, Depends(require(*READ_ROLES))]
BILLING_ROLES = frozenset({"billing", "admin"})  # who may post payments
BillingCaller = Annotated[Caller, Depends(require(*BILLING_ROLES))]
OperatorCaller = Annotated[Caller, Depends(require("operator"))]
AdminCaller = Annotated[Caller, Depends(require("admin"))]
ProvisioningCaller = Annotated[Caller, Depends(require("provisioning"))]  # accounts and meters (billing systems, CIS)
