"""``GET /metrics``: the gateway's figures in the Prometheus text format (docs/metrics.md), for any API key
(Prometheus sends one as a bearer token: ``authorization: {credentials_file: ...}``); and the count of payment
requests by outcome, taken from their answers (``PaymentOutcomes``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from gateway.api.deps import AnyCaller
from gateway.api.problems import AUTHENTICATED, responses
from gateway.service.metrics import CONTENT_TYPE, GatewayMetrics

router = APIRouter(tags=["metrics"])

_EXAMPLE = ('# HELP gateway_polls_total Polls since the start, by bus and outcome\n# TYPE gateway_polls_total counter\n'
            'gateway_polls_total{bus="feeder-1",outcome="ok"} 4711.0\n')


@router.get("/metrics", response_class=Response,  # in the document (and so fuzzed), answering text: docs/metrics.md
            responses={200: {"description": "the Prometheus text format (version 0.0.4)",
                             "content": {"text/plain": {"schema": {"type": "string"}, "example": _EXAMPLE}}},
                       **responses(*AUTHENTICATED)})
async def metrics(request: Request, caller: AnyCaller) -> Response:
    """The gateway's figures for Prometheus (any role)."""
    gateway_metrics: GatewayMetrics = request.app.state.metrics
    return Response(await gateway_metrics.render(), media_type=CONTENT_TYPE)


def outcome(status: int) -> str:
    """What a payment request's answer says happened."""
    if status == 201:
        return "recorded"
    if status == 200:
        return "duplicate"  # the same payment again: the first result
    if status == 409:
        return "conflict"  # the same id with other content
    return "refused" if status < 500 else "failed"


class PaymentOutcomes:
    """Counts each ``POST /v1/payments`` and ``POST /v1/payments/.../reversal`` by the status of its answer."""

    def __init__(self, app: Any, *, metrics: GatewayMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or scope.get("method") != "POST" or not path.startswith("/v1/payments"):
            await self.app(scope, receive, send)
            return
        if path in ("/v1/payments", "/v1/payments/"):
            operation = "payment"
        elif path.endswith("/reversal"):
            operation = "reversal"
        else:
            await self.app(scope, receive, send)
            return
        status = 500  # no answer at all: the request failed

        async def noted(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, noted)
        finally:
            self.metrics.payment(operation, outcome(status))
