"""The API document: FastAPI's, with the problem schema and the exact amount patterns of this site.

Amount fields are declared with a generic decimal pattern (``gateway.api.fields``); the document carries the
pattern of the site's own maximum per payment instead (``amount_pattern``), so that a client generating requests
from the document never produces an amount the gateway refuses for its size.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from gateway.api.deps import BEARER
from gateway.api.problems import PROBLEM_SCHEMA
from gateway.domain.money import amount_pattern

__all__ = ["install_openapi"]


def install_openapi(app: FastAPI, *, max_payment_fen: int) -> None:
    """Make ``app.openapi()`` build (once) the gateway's document."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes, tags=app.openapi_tags)
            schema.setdefault("components", {}).setdefault("schemas", {})["Problem"] = PROBLEM_SCHEMA
            _security(schema)
            patterns = {"positive": amount_pattern(max_payment_fen),
                        "signed": amount_pattern(max_payment_fen, allow_negative=True)}
            _amounts(schema, patterns)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _security(schema: dict[str, Any]) -> None:
    """Every operation needs a key (``Authorization: Bearer``) unless it says otherwise (``security: []``)."""
    schema["components"]["securitySchemes"] = dict(BEARER)
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            if isinstance(operation, dict):
                operation.setdefault("security", [{name: []} for name in BEARER])


def _amounts(node: Any, patterns: dict[str, str]) -> None:
    if isinstance(node, dict):
        kind = node.pop("x-amount", None)
        if kind is not None:
            node["pattern"] = patterns[kind]
        for value in node.values():
            _amounts(value, patterns)
    elif isinstance(node, list):
        for value in node:
            _amounts(value, patterns)
