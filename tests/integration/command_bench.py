"""Helpers for relay-command tests: issue a manual command, wait for it to settle, read the alarms."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from gateway.adapters import tables as t
from gateway.bootstrap import Gateway
from gateway.service.commands import ACTIVE_STATES, CommandRecord
from gateway.service.operator import manual_command
from tests.support import async_wait_until


@dataclass
class CommandBench:
    gateway: Gateway

    async def command(self, action: str, *, meter_id: str = "M-1", reason: str = "test",
                      answered: bool = True) -> CommandRecord:
        """An operator's command, once the meter has answered a poll (a trip goes only to a meter whose last
        poll succeeded; ``answered=False``: at once)."""
        scheduler = self.gateway.scheduler
        if answered and scheduler is not None and scheduler.meter_health(meter_id) is not None:
            await async_wait_until(lambda: scheduler.meter_health(meter_id)["polls"] >= 1,  # type: ignore[index]
                                   timeout=10, what=f"a first answer of {meter_id}")
        outcome = await manual_command(self.gateway.service, meter_id, action, role="operator", actor="tester",
                                       operator="tester", reason=reason)
        assert outcome.command is not None
        return outcome.command

    async def record(self, command_id: str) -> CommandRecord:
        async with self.gateway.uow(readonly=True) as uow:
            record = await uow.commands.get(command_id)
        assert record is not None
        return record

    async def settled(self, command_id: str, *, timeout: float = 15) -> CommandRecord:
        async def done() -> bool:
            return (await self.record(command_id)).state not in ACTIVE_STATES

        await async_wait_until(done, timeout=timeout, what=f"command {command_id} to settle")
        return await self.record(command_id)

    async def alarms(self) -> list[dict[str, object]]:
        async with self.gateway.uow(readonly=True) as uow:
            rows = await uow.execute(sa.select(t.outbox.c.payload).where(t.outbox.c.topic == "alarms"))
            return [row.payload for row in rows]
