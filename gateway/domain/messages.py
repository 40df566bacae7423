"""Messages between the parts of the gateway (events: what happened), as small frozen dataclasses.

The service's message bus (``gateway.service.messagebus``) routes each to the handlers registered for its type.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from gateway.domain.relay import Command

__all__ = ["CommandFinished", "CommandQueued", "DisconnectWithdrawn", "Message", "MeterAnswered", "MeterPlaced",
           "MeterRetired"]


class Message:
    """Base of the messages."""


@dataclass(frozen=True, slots=True)
class CommandQueued(Message):
    """A relay command is durable and waits for its bus."""

    command: Command


@dataclass(frozen=True, slots=True)
class CommandFinished(Message):
    """The relay runner saved a command in a final state (confirmed, armed, failed, expired, withdrawn) at ``at``."""

    command: Command
    at: dt.datetime


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


@dataclass(frozen=True, slots=True)
class MeterPlaced(Message):
    """A meter was added or changed (its bus, unit id, address, model or poll interval): poll it as the catalog
    now says."""

    meter_id: str


@dataclass(frozen=True, slots=True)
class MeterRetired(Message):
    """A meter was retired: poll it no more, and drop what waits for it."""

    meter_id: str
