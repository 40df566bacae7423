"""The most requested calls, answered before FastAPI's per-route machinery: one account, one meter, a payment.

``GET /v1/accounts/{id}`` and ``GET /v1/meters/{id}`` are what billing systems and operations centres poll;
``POST /v1/payments`` is what a bank's collection pushes by the thousand. Through FastAPI each pays for the
middleware stack, route matching, dependency solving (each dependency ~20 µs even when it does nothing), the
path parameter and the response's wrappers: about as much as the work itself (docs/benchmarks.md, "The HTTP API
under load"). Here the plain case is answered directly, by the same code the routes call (``Views``,
``Service.record_payment``), through the same schemas, serialised as FastAPI serialises them.

Only the plain success is answered here. Everything else goes on to the documented route, which answers it: a
query string, a root path, a missing or unknown key (so the failed-authentication limit counts it once, there),
a client under that limit, a key the cache would have to refresh, a role that may not, an id the catalog does
not know, a state that can't be read, a body that is not exactly what the route takes, any exception. A payment
that fails is handed on with its body and done again there: a failed payment changes nothing, and a payment is
recorded once whatever number of times it is posted. Errors, the API document and the audit of failed keys stay
in one place. ``tests/integration/test_hot_paths.py`` compares both answers byte for byte.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel

from gateway.api.deps import BILLING_ROLES, READ_ROLES
from gateway.strict_json import strict_loads
from gateway.api.routes.metrics import outcome
from gateway.api.routes.payments import payment_public
from gateway.api.schemas import AccountPublic, MeterPublic, PaymentCreate
from gateway.api.security import Caller, FailedAuthLimiter, KeyRing
from gateway.domain.money import parse_yuan
from gateway.service.facade import Service
from gateway.service.metrics import GatewayMetrics
from gateway.settings import hash_key

__all__ = ["HotPaths"]

Read = Callable[[Service, str], Awaitable[dict[str, Any]]]
_READS: tuple[tuple[str, type[BaseModel], Read], ...] = (
    ("/v1/accounts/", AccountPublic, lambda service, id_: service.views.account(id_)),
    ("/v1/meters/", MeterPublic, lambda service, id_: service.views.meter(id_)),
)
_PAYMENTS = "/v1/payments"
_MAX_BODY = 4096  # a payment's body is a few hundred bytes; a larger one goes to the route (and its limits)
_JSON = (b"content-type", b"application/json")
_NO_STORE = (b"cache-control", b"no-store")  # as gateway.api.main._NoStore adds to every /v1/ answer


class HotPaths:
    """ASGI middleware: answers a plain, authorised read of a known account or meter, or a plain payment; passes
    on the rest."""

    def __init__(self, app: Any, *, service: Service, keys: KeyRing, limiter: FailedAuthLimiter,
                 metrics: GatewayMetrics | None = None, max_body_bytes: int = _MAX_BODY) -> None:
        self.app, self.service, self.keys, self.limiter, self.metrics = app, service, keys, limiter, metrics
        self.max_body = min(_MAX_BODY, max_body_bytes)  # never more than the route would take (api.max_body_bytes)
        self.answered = 0  # requests answered here (tests check the path was taken)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and not scope["query_string"] and not scope.get("root_path"):
            if scope["method"] == "GET":
                body = await self._read(scope)
                if body is not None:
                    await self._send(send, 200, body)
                    return
            elif scope["method"] == "POST" and scope["path"] == _PAYMENTS:
                receive = await self._payment(scope, receive, send)
                if receive is None:
                    return
        await self.app(scope, receive, send)

    async def _send(self, send: Any, status: int, body: bytes) -> None:
        self.answered += 1
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-length", str(len(body)).encode()), _JSON, _NO_STORE]})
        await send({"type": "http.response.body", "body": body})

    async def _read(self, scope: dict[str, Any]) -> bytes | None:
        """The body of a read's answer, or None when the documented route must answer."""
        path: str = scope["path"]
        for prefix, schema, read in _READS:
            if path.startswith(prefix):
                break
        else:
            return None
        name = path[len(prefix):]
        head = _head(scope)
        if head is None or head[1] is not None or self._caller(scope, head[0], READ_ROLES) is None:
            return None  # (a GET with a body: the route and its size limit decide)
        catalog = self.service.catalog
        if name not in (catalog.accounts if schema is AccountPublic else catalog.meters):
            return None
        try:
            view = await read(self.service, name)
            return schema.model_validate(view).model_dump_json(by_alias=True).encode()
        except Exception:  # noqa: BLE001 - the route answers it (a problem, or a 500 it logs)
            return None

    async def _payment(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        """Record a plain payment and answer it (None); else what the route receives its request from (the body
        read here, handed on)."""
        head = _head(scope)
        if head is None or head[1] is None or not 0 < head[1] <= self.max_body or head[2] != b"application/json":
            return receive
        caller = self._caller(scope, head[0], BILLING_ROLES)
        if caller is None:
            return receive
        body, receive = await _body(receive)
        if body is None:
            return receive
        try:
            payment = PaymentCreate.model_validate(strict_loads(body))
            if not caller.may_post_for(payment.source):
                return receive
            amount_fen = parse_yuan(payment.amount, max_fen=self.service.catalog.max_payment_fen)
            result = await self.service.record_payment(
                source=payment.source, payment_id=payment.payment_id, account_id=payment.account_id,
                amount_fen=amount_fen, paid_at=payment.paid_at, channel=payment.channel, recorded_by=caller.name)
            answer = payment_public(result.record).model_dump_json(by_alias=True).encode()
        except Exception:  # noqa: BLE001 - the route refuses it, or records it (once) and answers
            return receive
        status = 201 if result.created else 200
        await self._send(send, status, answer)
        if self.metrics is not None:  # as gateway.api.routes.metrics.PaymentOutcomes counts the route's
            self.metrics.payment("payment", outcome(status))
        return None

    def _caller(self, scope: dict[str, Any], authorization: bytes | None, roles: frozenset[str]) -> Caller | None:
        """The caller of a key the cache knows, with one of ``roles``, from a client the limit lets through (the
        key read as ``gateway.api.deps.current_caller`` reads it); None: the route decides."""
        if authorization is None:
            return None
        scheme, _, key = authorization.decode("latin-1").partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            return None
        client = scope.get("client")
        if self.limiter.retry_after(client[0] if client else "?") is not None:
            return None
        caller = self.keys.cached(hash_key(key))
        return caller if caller is not None and caller.role in roles else None


def _head(scope: dict[str, Any]) -> tuple[bytes | None, int | None, bytes | None] | None:
    """The request's (first) Authorization, its body's declared length (None: no body) and content type; None
    when the body's length is not plainly declared."""
    authorization = length = kind = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            authorization = value if authorization is None else authorization  # the first, as Starlette's
        elif name == b"content-length":
            if length is not None or not value.isdigit():
                return None
            length = int(value)
        elif name == b"content-type":
            kind = value if kind is None else b""
        elif name == b"transfer-encoding":
            return None
    return authorization, length or None, kind


async def _body(receive: Any) -> tuple[bytes | None, Any]:
    """The request's whole body (None if the client went away first), and a ``receive`` that gives the same
    messages again (to the route, should it answer), then the rest."""
    messages: list[dict[str, Any]] = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            break  # (the client went away: the route sees the same)
        if not message.get("more_body", False):
            break
    complete = messages[-1]["type"] == "http.request"
    body = b"".join(m.get("body", b"") for m in messages) if complete else None

    async def again() -> dict[str, Any]:
        return messages.pop(0) if messages else await receive()

    return body, again
