"""The two most requested reads, answered before FastAPI's per-route machinery: one account, one meter.

``GET /v1/accounts/{id}`` and ``GET /v1/meters/{id}`` are what billing systems and operations centres poll. Through
FastAPI each pays for the middleware stack, route matching, dependency solving (each dependency ~20 µs even when
it does nothing), the path parameter and the response's wrappers: about twice the read itself
(docs/benchmarks.md, "The HTTP API under load"). Here a plain request for an account or meter that exists, with a
key whose role may read it, is answered directly from the same read models (``Views``) through the same response
schemas (``AccountPublic``, ``MeterPublic``), serialised as FastAPI serialises them.

Only that plain success is answered here. Everything else goes on to the documented route, which answers it: a
query string, a body, a root path, a missing or unknown key (so the failed-authentication limit counts it once,
there), a client under that limit, a key the cache would have to refresh, an id the catalog does not know, a
state that can't be read, any exception. Errors, the API document and the audit of failed keys stay in one place.
``tests/unit/test_hot_reads.py`` compares both answers byte for byte.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel

from gateway.api.deps import READ_ROLES
from gateway.api.schemas import AccountPublic, MeterPublic
from gateway.api.security import FailedAuthLimiter, KeyRing
from gateway.service.facade import Service
from gateway.settings import hash_key

__all__ = ["HotReads"]

_ROUTES: tuple[tuple[str, type[BaseModel], Callable[[Service, str], Awaitable[dict[str, Any]]]], ...] = (
    ("/v1/accounts/", AccountPublic, lambda service, id_: service.views.account(id_)),
    ("/v1/meters/", MeterPublic, lambda service, id_: service.views.meter(id_)),
)
_JSON = (b"content-type", b"application/json")
_NO_STORE = (b"cache-control", b"no-store")  # as gateway.api.main._NoStore adds to every /v1/ answer


class HotReads:
    """ASGI middleware: answers a plain, authorised read of a known account or meter; passes on the rest."""

    def __init__(self, app: Any, *, service: Service, keys: KeyRing, limiter: FailedAuthLimiter) -> None:
        self.app, self.service, self.keys, self.limiter = app, service, keys, limiter
        self.answered = 0  # requests answered here (tests check the path was taken)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            body = await self._answer(scope)
            if body is not None:
                self.answered += 1
                await send({"type": "http.response.start", "status": 200,
                            "headers": [(b"content-length", str(len(body)).encode()), _JSON, _NO_STORE]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)

    async def _answer(self, scope: dict[str, Any]) -> bytes | None:
        """The answer's body, or None when the documented route must answer."""
        if scope["query_string"] or scope.get("root_path"):
            return None
        path: str = scope["path"]
        for prefix, schema, read in _ROUTES:
            if path.startswith(prefix):
                break
        else:
            return None
        name = path[len(prefix):]
        if not self._allowed(scope):
            return None
        catalog = self.service.catalog
        if name not in (catalog.accounts if schema is AccountPublic else catalog.meters):
            return None
        try:
            view = await read(self.service, name)
            return schema.model_validate(view).model_dump_json(by_alias=True).encode()
        except Exception:  # noqa: BLE001 - the route answers it (a problem, or a 500 it logs)
            return None

    def _allowed(self, scope: dict[str, Any]) -> bool:
        """A key the cache knows, with a role that may read, no body, and a client the limit lets through (the
        key read as ``gateway.api.deps.current_caller`` reads it)."""
        authorization = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value if authorization is None else authorization  # the first, as Starlette's
            elif name in (b"content-length", b"transfer-encoding") and value != b"0":
                return False  # a body: the route (and its size limit) decides
        if authorization is None:
            return False
        scheme, _, key = authorization.decode("latin-1").partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            return False
        client = scope.get("client")
        if self.limiter.retry_after(client[0] if client else "?") is not None:
            return False
        caller = self.keys.cached(hash_key(key))
        return caller is not None and caller.role in READ_ROLES
