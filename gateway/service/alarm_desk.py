"""What an operator does with alarms (docs/alarms.md): list them, acknowledge one with a reason, resolve one by
hand; each change with its audit row and event. The keeper that raises and resolves them from the outbox's
events: ``gateway.service.alarms``."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from gateway.service.alarm_port import AlarmRecord
from gateway.service.alarms import UNRESOLVED, alarm_event, close_alarm
from gateway.service.ports import Storage, UnitOfWork

__all__ = ["AlarmDesk", "AlarmNotOpen", "UnknownAlarm", "alarm_shape"]


class UnknownAlarm(LookupError):
    """No alarm with that id."""


class AlarmNotOpen(Exception):
    """The alarm is resolved: it is acknowledged or resolved no more."""


async def _unresolved(uow: UnitOfWork, alarm_id: int, resolved: str) -> AlarmRecord:
    """The alarm ``alarm_id``, locked for a change by hand: ``UnknownAlarm``, or ``AlarmNotOpen`` when it is resolved
    (``resolved``: how the refusal says so)."""
    alarm = await uow.alarms.get(alarm_id, lock=True)
    if alarm is None:
        raise UnknownAlarm(f"no alarm {alarm_id}")
    if alarm.state == "resolved":
        raise AlarmNotOpen(f"alarm {alarm_id} {resolved}")
    return alarm


class AlarmDesk:
    """The alarms as the API shows them, and what an operator does with them (each change audited, with its
    event)."""

    def __init__(self, storage: Storage, clock: Callable[[], dt.datetime]) -> None:
        self.storage, self.clock = storage, clock

    async def acknowledge(self, alarm_id: int, *, actor: str, reason: str) -> dict[str, Any]:
        """Acknowledge an alarm (it stays until resolved). An acknowledged one is left as it is (the first
        acknowledgement counts); a resolved one: ``AlarmNotOpen``."""
        now = self.clock()
        async with self.storage() as uow:
            alarm = await _unresolved(uow, alarm_id, "is resolved")
            if alarm.state == "open":
                await uow.alarms.change(alarm.id, ("open",), dict(state="acknowledged", acknowledged_at=now,
                                                                  acknowledged_by=actor, ack_reason=reason,
                                                                  updated_at=now))
                await uow.add_outbox("alarms", alarm_event("AlarmAcknowledged", alarm, "acknowledged", now, by=actor,
                                                      reason=reason), now)
                await uow.audit(actor, "alarm.acknowledge", alarm.subject,
                                {"alarm_id": alarm.id, "kind": alarm.kind, "reason": reason}, now)
                await uow.commit()
            return alarm_shape(await self._found(uow, alarm_id))

    async def resolve(self, alarm_id: int, *, actor: str, reason: str) -> dict[str, Any]:
        """Resolve an alarm by hand; a resolved one: ``AlarmNotOpen``. Should its cause go on, the next event that
        tells of it raises a new alarm."""
        now = self.clock()
        async with self.storage() as uow:
            alarm = await _unresolved(uow, alarm_id, "is resolved already")
            await close_alarm(uow, alarm, actor, reason, now)
            await uow.commit()
            return alarm_shape(await self._found(uow, alarm_id))

    async def get(self, alarm_id: int) -> dict[str, Any]:
        async with self.storage(readonly=True) as uow:
            return alarm_shape(await self._found(uow, alarm_id))

    async def page(self, *, state: str | None = None, kind: str | None = None, severity: str | None = None,
                   meter_id: str | None = None, account_id: str | None = None, before_id: int | None = None,
                   limit: int = 100) -> dict[str, Any]:
        """A page of alarms, newest first; ``state="unresolved"``: open and acknowledged ones."""
        states = UNRESOLVED if state == "unresolved" else (state,) if state is not None else None
        async with self.storage(readonly=True) as uow:
            found = await uow.alarms.page(states=states, kind=kind, severity=severity, meter_id=meter_id,
                                          account_id=account_id, before_id=before_id, limit=limit)
        data = [alarm_shape(a) for a in found]
        return {"data": data, "next_before_id": data[-1]["id"] if len(data) == limit else None}

    @staticmethod
    async def _found(uow: UnitOfWork, alarm_id: int) -> AlarmRecord:
        alarm = await uow.alarms.get(alarm_id)
        if alarm is None:
            raise UnknownAlarm(f"no alarm {alarm_id}")
        return alarm


def alarm_shape(alarm: AlarmRecord) -> dict[str, Any]:
    """An alarm as the API shows it."""
    return {name: getattr(alarm, name) for name in AlarmRecord.__dataclass_fields__ if name != "event_id"}

