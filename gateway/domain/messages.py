"""Messages between the parts of the gateway (events: what happened), as small frozen dataclasses.

The service's message bus (``gateway.service.messagebus``) routes each to the handlers registered for its type.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.domain.relay import Command

__all__ = ["CommandQueued", "DisconnectWithdrawn", "Message", "MeterAnswered"]


class Message:
    """Base of the messages."""


@dataclass(frozen=True, slots=True)
class CommandQueued(Message):
    """A relay command is durable and waits for its bus."""

    command: Command


@dataclass(frozen=True, slots=True)
class MeterAnswered(Message):
    """A meter answered again after failing: commands that waited for it may go on."""

    meter_id: str


@dataclass(frozen=True, slots=True)
class DisconnectWithdrawn(Message):
    """An automatic trip was withdrawn (its decision went stale): the account must be decided again."""

    account_id: str
    meter_id: str
    command_id: str
    reason: str
