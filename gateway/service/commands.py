"""Relay commands as the service keeps them: the record of a command (``CommandRecord``), making a new one, and
the events a command's states publish. Storing them is the ``CommandRepository``'s (``gateway.service.ports``).

Every save is conditional on the state the command had, so a runner never overwrites a state that somebody else
changed meanwhile (a cancel, a newer command). A command that ends confirmed or armed sets its meter's relay and
clears the meter's relay fault; one that fails sets the fault (``disconnect_failed`` or ``reconnect_failed``) and
raises an alarm, in the same transaction.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

from gateway.domain.relay import ACTIVE, FINAL, Action, Command, State

__all__ = ["ACTIVE_STATES", "FAULTS", "FINAL_STATES", "CommandRecord", "command_payload", "new_command",
           "state_payload"]

ACTIVE_STATES = tuple(s.value for s in State if s in ACTIVE)
FINAL_STATES = tuple(s.value for s in State if s in FINAL)
FAULTS = {Action.OPEN: "disconnect_failed", Action.CLOSE: "reconnect_failed"}


@dataclass(frozen=True, slots=True)
class CommandRecord:
    id: str
    meter_id: str
    action: str
    origin: str
    operator: str | None
    reason: str | None
    state: str
    attempts: int
    last_error: str | None
    created_at: dt.datetime
    updated_at: dt.datetime
    expires_at: dt.datetime
    basis_at: dt.datetime | None = None
    sent_at: dt.datetime | None = None
    not_before: dt.datetime | None = None

    def model(self) -> Command:
        """The command as the relay model sees it."""
        return Command(self.id, self.meter_id, Action(self.action), self.origin, State(self.state), self.created_at,
                       self.expires_at, self.basis_at or self.created_at, self.attempts, self.sent_at,
                       self.not_before, self.last_error)


def new_command(*, meter_id: str, action: str, origin: str, now: dt.datetime, expires_at: dt.datetime,
                operator: str | None = None, reason: str | None = None,
                basis_at: dt.datetime | None = None) -> CommandRecord:
    """A new queued command, not stored yet (``CommandRepository.add`` writes it). ``basis_at``: the time of the reading
    an automatic decision rests on (default: now, the time an operator asked)."""
    return CommandRecord(str(uuid.uuid4()), meter_id, action, origin, operator, reason, "queued", 0, None, now, now,
                         expires_at, basis_at or now)


def command_payload(record: CommandRecord) -> dict[str, Any]:
    return state_payload(record.id, record.meter_id, record.action, record.state, record.attempts,
                          record.last_error, record.updated_at)


def state_payload(command_id: str, meter_id: str, action: str, state: str, attempts: int, last_error: str | None,
                   at: dt.datetime) -> dict[str, Any]:
    """The ``commands/<id>`` event of a command in ``state``."""
    return {"type": "CommandState", "id": command_id, "meter_id": meter_id, "action": action, "state": state,
            "attempts": attempts, "last_error": last_error, "at": at}
