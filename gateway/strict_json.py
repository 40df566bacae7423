"""Strict JSON: what the API's request bodies and the fleet's JSON Lines files are decoded with.

Python's ``json`` module takes the last of duplicate keys, accepts ``NaN`` and ``Infinity``, and decodes lone
surrogates (``"\\ud800"``) that no database can store. ``strict_loads`` refuses each of those, and bytes that are
not UTF-8, with a ``json.JSONDecodeError`` saying what was wrong. No web framework here: the CLI's fleet import
and ``check-config`` load this module without FastAPI.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

__all__ = ["strict_loads"]


def strict_loads(body: bytes) -> Any:
    """Decode a JSON document, refusing duplicate keys, NaN/Infinity, lone surrogates and non-UTF-8 bytes.

    Raises ``json.JSONDecodeError`` (which FastAPI turns into a 422 ``json_invalid``).
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise json.JSONDecodeError("the body is not UTF-8", "", exc.start) from None
    value = json.loads(text, object_pairs_hook=lambda pairs: _object(pairs, text), parse_constant=_constant(text))
    _no_surrogates(value, text)
    return value


def _object(pairs: list[tuple[str, Any]], text: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise json.JSONDecodeError(f"duplicate key {key!r}", text, 0)
        out[key] = value
    return out


def _constant(text: str) -> Callable[[str], Any]:
    def refuse(name: str) -> Any:
        raise json.JSONDecodeError(f"{name} is not a JSON number", text, 0)

    return refuse


def _no_surrogates(value: Any, text: str) -> None:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise json.JSONDecodeError("a string holds a lone surrogate (not a Unicode character)", text,
                                           0) from None
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
