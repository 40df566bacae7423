"""Relay commands: creation (with supersession), state transitions with an audit trail, and queries.

Lifecycle (DESIGN.md §9)::

    queued ─▶ sending ─▶ sent ─▶ confirmed
       │          │         └──▶ failed
       └──────────┴──▶ superseded / cancelled / expired

Every transition is a conditional UPDATE (``WHERE state = <expected>``), so a runner never overwrites a state
that somebody else changed meanwhile (a cancel, a newer command).
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from gateway.adapters import bulk
from gateway.adapters import tables as t
from gateway.service.uow import UnitOfWork

__all__ = ["ACTIVE_STATES", "CommandRecord", "create_command", "get_command", "new_command", "store_command",
           "transition"]

ACTIVE_STATES = ("queued", "sending", "sent")
FINAL_STATES = ("confirmed", "failed", "superseded", "cancelled", "expired")


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

    @classmethod
    def from_row(cls, row: Any) -> CommandRecord:
        return cls(row.id, row.meter_id, row.action, row.origin, row.operator, row.reason, row.state, row.attempts,
                   row.last_error, row.created_at, row.updated_at, row.expires_at)


def new_command(*, meter_id: str, action: str, origin: str, now: dt.datetime, expires_at: dt.datetime,
                operator: str | None = None, reason: str | None = None) -> CommandRecord:
    """A new queued command, not stored yet (``store_command`` writes it)."""
    return CommandRecord(str(uuid.uuid4()), meter_id, action, origin, operator, reason, "queued", 0, None, now, now,
                         expires_at)


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
        created_at=now, updated_at=now, expires_at=record.expires_at)])
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


async def transition(uow: UnitOfWork, command_id: str, expected: str, new: str, now: dt.datetime, *,
                     error: str | None = None, attempt: bool = False) -> bool:
    """Move a command from ``expected`` to ``new``; False (and nothing written) if it is no longer ``expected``."""
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
            "error": last_error, "at": now}))
    return bulk.insert_statements(dialect, t.audit_log, [audit]) + bulk.insert_statements(dialect, t.outbox, events)


async def get_command(uow: UnitOfWork, command_id: str) -> CommandRecord | None:
    row = (await uow.execute(sa.select(t.commands).where(t.commands.c.id == command_id))).one_or_none()
    return None if row is None else CommandRecord.from_row(row)


def command_payload(record: CommandRecord) -> dict[str, Any]:
    return _state_payload(record.id, record.meter_id, record.action, record.state, record.attempts,
                          record.last_error, record.updated_at)


def _state_payload(command_id: str, meter_id: str, action: str, state: str, attempts: int, last_error: str | None,
                   at: dt.datetime) -> dict[str, Any]:
    """The ``commands/<id>`` event of a command in ``state``."""
    return {"type": "CommandState", "id": command_id, "meter_id": meter_id, "action": action, "state": state,
            "attempts": attempts, "last_error": last_error, "at": at}
