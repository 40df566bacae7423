"""Relay commands in the database: creation (with supersession), saving a command's next version from the model
(``gateway.domain.relay``) with its audit row, events and the meter's relay, and queries.

Every save is a conditional UPDATE (``WHERE state = <the state it had>``), so a runner never overwrites a state
that somebody else changed meanwhile (a cancel, a newer command). A command that ends confirmed or armed sets its
meter's relay and clears the meter's relay fault; one that fails sets the fault (``disconnect_failed`` or
``reconnect_failed``) and raises an alarm, in the same transaction.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from gateway.adapters import bulk
from gateway.adapters import tables as t
from gateway.domain.relay import ACTIVE, FINAL, Action, Command, State
from gateway.service.uow import UnitOfWork

__all__ = ["ACTIVE_STATES", "FINAL_STATES", "CommandRecord", "command_payload", "create_command", "get_command",
           "new_command", "save", "store_command", "transition"]

ACTIVE_STATES = tuple(s.value for s in State if s in ACTIVE)
FINAL_STATES = tuple(s.value for s in State if s in FINAL)
_FAULT = {Action.OPEN: "disconnect_failed", Action.CLOSE: "reconnect_failed"}


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

    @classmethod
    def from_row(cls, row: Any) -> CommandRecord:
        return cls(row.id, row.meter_id, row.action, row.origin, row.operator, row.reason, row.state, row.attempts,
                   row.last_error, row.created_at, row.updated_at, row.expires_at, row.basis_at, row.sent_at,
                   row.not_before)

    def model(self) -> Command:
        """The command as the relay model sees it."""
        return Command(self.id, self.meter_id, Action(self.action), self.origin, State(self.state), self.created_at,
                       self.expires_at, self.basis_at or self.created_at, self.attempts, self.sent_at,
                       self.not_before, self.last_error)


def new_command(*, meter_id: str, action: str, origin: str, now: dt.datetime, expires_at: dt.datetime,
                operator: str | None = None, reason: str | None = None,
                basis_at: dt.datetime | None = None) -> CommandRecord:
    """A new queued command, not stored yet (``store_command`` writes it). ``basis_at``: the time of the reading
    an automatic decision rests on (default: now, the time an operator asked)."""
    return CommandRecord(str(uuid.uuid4()), meter_id, action, origin, operator, reason, "queued", 0, None, now, now,
                         expires_at, basis_at or now)


async def store_command(uow: UnitOfWork, record: CommandRecord, *, audit: dict[str, Any] | None = None) -> None:
    """Write a new command (and an ``audit_log`` row with it); any other active command for its meter is
    superseded by it. The rows go to the database in one hand-over (see ``gateway.adapters.bulk``)."""
    now = record.created_at
    older = await bulk.fetch(uow.conn, sa.select(t.commands.c.id, t.commands.c.state).where(
        t.commands.c.meter_id == record.meter_id, t.commands.c.state.in_(ACTIVE_STATES)))
    for command_id, state in older:
        await transition(uow, command_id, state, "superseded", now, error=f"superseded by {record.id}")
    dialect = uow.conn.dialect.name
    statements = bulk.insert_statements(dialect, t.commands, [dict(
        id=record.id, meter_id=record.meter_id, action=record.action, origin=record.origin,
        operator=record.operator, reason=record.reason, state=record.state, attempts=record.attempts,
        created_at=now, updated_at=now, expires_at=record.expires_at, basis_at=record.basis_at)])
    statements += bulk.insert_statements(dialect, t.outbox, [dict(
        topic=f"commands/{record.id}", payload=command_payload(record), created_at=now)])
    if audit is not None:
        statements += bulk.insert_statements(dialect, t.audit_log, [audit])
    await uow.run(statements)


async def create_command(uow: UnitOfWork, *, meter_id: str, action: str, origin: str, now: dt.datetime,
                         expires_at: dt.datetime, operator: str | None = None,
                         reason: str | None = None) -> CommandRecord:
    """Queue a relay command; any other active command for the meter is superseded by it."""
    record = new_command(meter_id=meter_id, action=action, origin=origin, now=now, expires_at=expires_at,
                         operator=operator, reason=reason)
    await store_command(uow, record)
    return record


async def save(uow: UnitOfWork, old: Command, new: Command, now: dt.datetime) -> bool:
    """Write ``new`` (the model's next version of ``old``) if the row is still in ``old``'s state; False (and
    nothing written) if it is not. With it: the audit row and the command's event, and on a final state the
    meter's relay or relay fault and, for a failure, an alarm."""
    error = (new.last_error or "")[:500] or None
    if not await _update(uow, old, new, now, error):
        return False
    statements = _transition_rows(old.id, old.state.value, new.state.value, now, new.last_error, new.meter_id,
                                  new.action.value, new.attempts, new.last_error, dialect=uow.conn.dialect.name)
    meter = _meter_after(new)
    if meter is not None:
        statements += bulk.update_statements(uow.conn.dialect.name, t.meters, "id", [meter | {"id": new.meter_id}])
    await uow.run(statements)
    return True


async def _update(uow: UnitOfWork, old: Command, new: Command, now: dt.datetime, error: str | None) -> bool:
    """The conditional UPDATE of ``save``; on SQLite in one hand-over to the database thread (this runs with the
    write lock held, and on a busy event loop each of SQLAlchemy's cursor steps waits for a turn)."""
    if uow.conn.dialect.name == "sqlite":
        stamp = bulk.sqlite_datetime
        row = await bulk.transition_row(
            uow.conn, "UPDATE commands SET state = ?, updated_at = ?, attempts = ?, last_error = ?, sent_at = ?, "
                      "not_before = ? WHERE id = ? AND state = ?",
            (new.state.value, stamp(now), new.attempts, error, stamp(new.sent_at), stamp(new.not_before), old.id,
             old.state.value), "SELECT id FROM commands WHERE id = ?", (old.id,))
        if row is not bulk.NOT_RUN:
            return row is not None
    result = await uow.execute(sa.update(t.commands).where(
        t.commands.c.id == old.id, t.commands.c.state == old.state.value).values(
        state=new.state.value, updated_at=now, attempts=new.attempts, last_error=error, sent_at=new.sent_at,
        not_before=new.not_before))
    return bool(result.rowcount == 1)


def _meter_after(command: Command) -> dict[str, Any] | None:
    """What a command's final state says about its meter's relay."""
    if command.state is State.CONFIRMED:
        return {"relay": "open" if command.action is Action.OPEN else "closed", "relay_fault": ""}
    if command.state is State.ARMED:
        return {"relay": "armed", "relay_fault": ""}
    if command.state is State.FAILED:
        return {"relay_fault": _FAULT[command.action]}
    return None


async def transition(uow: UnitOfWork, command_id: str, expected: str, new: str, now: dt.datetime, *,
                     error: str | None = None, attempt: bool = False) -> bool:
    """Move a command from ``expected`` to ``new`` (a cancel, a supersession); False (and nothing written) if it is
    no longer ``expected``."""
    if uow.conn.dialect.name == "sqlite":
        # The UPDATE and the read back in one hand-over, the audit and outbox rows in another: this runs with
        # SQLite's write lock held, and on a busy event loop each of SQLAlchemy's cursor steps waits for a turn.
        sets = "state = ?, updated_at = ?" + (", last_error = ?" if error is not None else "") + (
            ", attempts = attempts + 1" if attempt else "")
        params = (new, bulk.sqlite_datetime(now), *((error[:500],) if error is not None else ()), command_id, expected)
        row = await bulk.transition_row(
            uow.conn, f"UPDATE commands SET {sets} WHERE id = ? AND state = ?", params,
            "SELECT meter_id, action, attempts, last_error FROM commands WHERE id = ?", (command_id,))
        if row is not bulk.NOT_RUN:
            if row is None:
                return False
            meter_id, action, attempts, last_error = row  # type: ignore[misc]
            await uow.run(_transition_rows(command_id, expected, new, now, error, meter_id, action, attempts,
                                           last_error))
            return True
    values: dict[str, Any] = {"state": new, "updated_at": now}
    if error is not None:
        values["last_error"] = error[:500]
    if attempt:
        values["attempts"] = t.commands.c.attempts + 1
    result = await uow.execute(sa.update(t.commands).where(
        t.commands.c.id == command_id, t.commands.c.state == expected).values(**values))
    if result.rowcount != 1:
        return False
    record = await get_command(uow, command_id)
    assert record is not None
    await uow.run(_transition_rows(command_id, expected, new, now, error, record.meter_id, record.action,
                                   record.attempts, record.last_error, dialect=uow.conn.dialect.name))
    return True


def _transition_rows(command_id: str, expected: str, new: str, now: dt.datetime, error: str | None, meter_id: str,
                     action: str, attempts: int, last_error: str | None, *, dialect: str = "sqlite"
                     ) -> list[bulk.Statement]:
    """The audit row and the outbox events of a command's transition (``command_payload`` of the new state)."""
    audit = dict(at=now, actor="gateway", action="command." + new, target=command_id,
                 detail={"from": expected, "error": error})
    events = [dict(topic=f"commands/{command_id}", created_at=now,
                   payload=_state_payload(command_id, meter_id, action, new, attempts, last_error, now))]
    if new == "failed":
        events.append(dict(topic="alarms", created_at=now, payload={
            "type": "CommandFailed", "command_id": command_id, "meter_id": meter_id, "action": action,
            "fault": _FAULT[Action(action)], "error": last_error, "at": now}))
    return bulk.insert_statements(dialect, t.audit_log, [audit]) + bulk.insert_statements(dialect, t.outbox, events)


async def get_command(uow: UnitOfWork, command_id: str) -> CommandRecord | None:
    row = (await uow.execute(sa.select(t.commands).where(t.commands.c.id == command_id))).one_or_none()
    return None if row is None else CommandRecord.from_row(row)


async def recent_trips(uow: UnitOfWork, since: dt.datetime) -> list[dt.datetime]:
    """When the automatic trips put on the wire since ``since`` went out (for the site's rate limit)."""
    c = t.commands.c
    rows = await uow.execute(sa.select(c.sent_at).where(c.action == "open", c.origin != "operator",
                                                        c.sent_at.is_not(None), c.sent_at > since))
    return [row.sent_at for row in rows]


def command_payload(record: CommandRecord) -> dict[str, Any]:
    return _state_payload(record.id, record.meter_id, record.action, record.state, record.attempts,
                          record.last_error, record.updated_at)


def _state_payload(command_id: str, meter_id: str, action: str, state: str, attempts: int, last_error: str | None,
                   at: dt.datetime) -> dict[str, Any]:
    """The ``commands/<id>`` event of a command in ``state``."""
    return {"type": "CommandState", "id": command_id, "meter_id": meter_id, "action": action, "state": state,
            "attempts": attempts, "last_error": last_error, "at": at}
