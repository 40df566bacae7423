"""A small message bus (cosmicpython's): handlers registered as data, by message type.

A reaction of the gateway (a new command wakes its bus, a meter answering again lets a waiting trip go, a
withdrawn trip makes the engine decide again) is a handler in the table ``bootstrap`` builds, not an attribute
replaced at run time. Handlers are plain callables; one that raises is logged and the others still run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from gateway.domain.messages import Message

__all__ = ["Handlers", "MessageBus"]

log = logging.getLogger(__name__)

Handlers = Mapping[type[Message], Sequence[Callable[[Any], None]]]


class MessageBus:
    """Routes each published message to the handlers registered for its type."""

    def __init__(self, handlers: Handlers | None = None) -> None:
        self.handlers: dict[type[Message], list[Callable[[Any], None]]] = {
            kind: list(found) for kind, found in (handlers or {}).items()}

    def register(self, kind: type[Message], handler: Callable[[Any], None]) -> None:
        self.handlers.setdefault(kind, []).append(handler)

    def publish(self, message: Message) -> None:
        for handler in self.handlers.get(type(message), ()):
            try:
                handler(message)
            except Exception:  # one reaction failing must not stop the others
                log.exception("handler %s of %s failed", getattr(handler, "__qualname__", handler),
                              type(message).__name__)
