"""Strict JSON request bodies: the routes' ``route_class``.

Python's ``json`` module takes the last of duplicate keys, accepts ``NaN`` and ``Infinity``, and decodes lone
surrogates (``"\\ud800"``) that no database can store; a body that is not UTF-8 reaches FastAPI as a 400 with no
detail. Here each of those is a 422 ``json_invalid`` with a message saying what was wrong, raised before any
field is looked at.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

from gateway.strict_json import strict_loads

__all__ = ["StrictJsonRoute", "strict_loads"]  # (strict_loads: gateway.strict_json, the API's decoder)


class _StrictRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_strict_json"):
            self._strict_json = strict_loads(await self.body())
        return self._strict_json


class StrictJsonRoute(APIRoute):
    """An ``APIRoute`` whose request bodies are decoded by ``strict_loads``."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            return await handler(_StrictRequest(request.scope, request.receive))

        return strict
