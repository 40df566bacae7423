"""The relay runner on a fake clock: a real SQLite ledger and command table, a fake driver whose meters answer,
fail or stick as the test says, and time that moves only when the test advances it (backoffs, confirmation
timeouts, expiries and the rate-limit window are exact; nothing waits on the wall clock but database round
trips)."""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from drivers.base import RelayState
from gateway.adapters import tables as t
from gateway.bootstrap import Gateway
from gateway.domain.messages import CommandQueued, DisconnectWithdrawn, MeterAnswered
from gateway.domain.relay import Limits
from gateway.service.commands import CommandRecord, new_command
from gateway.service.scheduler import BusSetup, Scheduler
from gateway.settings import Settings
from tests.fakes import FakeClock, FakeDriver
from tests.support import async_wait_until

S = dt.timedelta(seconds=1)
LIMITS = Limits(confirm_interval=S, confirm_timeout=10 * S, max_attempts=3, backoff_base=5 * S, backoff_cap=20 * S)


@dataclass
class Rig:
    gateway: Gateway
    scheduler: Scheduler
    clock: FakeClock
    driver: FakeDriver

    async def record(self, command_id: str) -> CommandRecord:
        async with self.gateway.uow(readonly=True) as uow:
            record = await uow.commands.get(command_id)
        assert record is not None
        return record

    async def state_is(self, command_id: str, state: str) -> None:
        async def reached() -> bool:
            return (await self.record(command_id)).state == state

        await async_wait_until(reached, timeout=5, what=f"{command_id} {state}")

    async def queue(self, meter_id: str, action: str, *, origin: str = "operator",
                    basis_at: dt.datetime | None = None) -> str:
        now = self.clock.now()
        record = new_command(meter_id=meter_id, action=action, origin=origin, now=now,
                             expires_at=now + dt.timedelta(minutes=10), basis_at=basis_at)
        async with self.gateway.uow() as uow:
            await uow.commands.add(record)
            await uow.commit()
        self.gateway.messages.publish(CommandQueued(record.model()))
        return record.id

    async def advance(self, seconds: float, *, step: float = 0.5) -> None:
        """Advance in small steps, letting the database round trips of each step finish (real I/O)."""
        for _ in range(int(seconds / step)):
            await self.clock.advance(step)
            await self.quiet()

    async def quiet(self) -> None:
        """Wait for the real I/O of this instant: the runner's step, and the readings of the polls in the writer
        (a poll that waits for its previous reading's commit would otherwise start later in fake time)."""
        runner, writer = self.scheduler.buses[0].runner, self.gateway.service.writer
        await async_wait_until(lambda: not runner.busy and not writer.backlog, timeout=5,
                               what="the runner's step and the writer's batches to finish")


@contextlib.asynccontextmanager
async def rig(tmp_path: Path, *, meters: int = 3, limit: int | None = None, close_allowed: bool = False,
              **policy: Any) -> AsyncIterator[Rig]:
    clock = FakeClock()
    settings = Settings.model_validate({
        "database": {"url": f"sqlite:///{tmp_path / 'gw.db'}"},
        "policy": {"notice_period": 0, "friendly_windows": [], "max_auto_disconnects_per_minute": limit, **policy},
        "tariffs": {"flat": {"kind": "flat", "price": "1.0000"}},
        "accounts": [{"id": f"A-{i}", "tariff": "flat", "opening_balance": "10.00"} for i in range(1, meters + 1)],
        "buses": [{"id": "b", "protocol": "modbus-tcp", "host": "127.0.0.1", "port": 1}],
        "meters": [{"id": f"M-{i}", "bus": "b", "unit_id": i, "account": f"A-{i}", "poll_interval_s": 5}
                   for i in range(1, meters + 1)],
    })
    async with Gateway(settings, base_dir=tmp_path, clock=clock.now, run_buses=False) as gateway:
        driver = FakeDriver(clock)
        scheduler = Scheduler(gateway.service, [BusSetup("b", driver, {f"M-{i}": f"M-{i}"
                                                                       for i in range(1, meters + 1)},
                                                         close_allowed=close_allowed)],
                              clock=clock, publish=gateway.messages.publish, limits=LIMITS)
        gateway.messages.register(CommandQueued, scheduler.route)
        gateway.messages.register(MeterAnswered, scheduler.meter_answered)
        gateway.messages.register(DisconnectWithdrawn, gateway.service.redecide)
        async with scheduler:
            here = Rig(gateway, scheduler, clock, driver)
            await here.advance(5)  # every meter answered its first poll
            yield here


async def test_a_trip_waits_for_a_meter_whose_last_poll_failed(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        r.driver.dead.add("M-1")
        await r.advance(6)  # its next poll fails
        command = await r.queue("M-1", "open")
        await r.advance(20)
        assert (await r.record(command)).state == "queued"
        assert r.driver.calls_of("M-1", "set_relay") == []
        r.driver.dead.clear()
        await r.advance(40)  # the breaker's next try answers: the waiting trip goes at once
        await r.state_is(command, "confirmed")
        [sent] = r.driver.calls_of("M-1", "set_relay")
        assert sent > max(t for t in r.driver.calls_of("M-1") if t < sent)  # after a poll that answered


async def test_an_automatic_trip_decided_before_the_meter_failed_is_withdrawn(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        decided = r.clock.now()
        r.driver.dead.add("M-2")
        await r.advance(6)
        command = await r.queue("M-2", "open", origin="automatic", basis_at=decided)
        await r.state_is(command, "withdrawn")
        assert r.driver.calls_of("M-2", "set_relay") == []
        assert "decides again" in ((await r.record(command)).last_error or "")


async def test_not_confirmed_is_tried_again_with_backoff_then_fails(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        r.driver.stuck.add("M-3")
        start = r.clock.seconds
        command = await r.queue("M-3", "open")
        await r.advance(60)
        await r.state_is(command, "failed")
        sends = [t - start for t in r.driver.calls_of("M-3", "set_relay")]
        # attempt 1 at once, each waits 10 s for the relay, then 5 s and 10 s of backoff
        assert sends == pytest.approx([0.5, 16.0, 36.5], abs=1.0)
        record = await r.record(command)
        assert record.attempts == 3 and "gave up after 3 attempts" in (record.last_error or "")
        async with r.gateway.uow(readonly=True) as uow:
            meter = (await uow.execute(sa.select(t.meters.c.relay, t.meters.c.relay_fault)
                                       .where(t.meters.c.id == "M-3"))).one()
        assert tuple(meter) == ("closed", "disconnect_failed")


async def test_the_rate_limit_counts_automatic_trips_on_the_wire(tmp_path: Path) -> None:
    async with rig(tmp_path, limit=1) as r:
        commands = [await r.queue(f"M-{i}", "open", origin="automatic", basis_at=r.clock.now()) for i in (1, 2, 3)]
        await r.advance(130)
        for command in commands:
            await r.state_is(command, "confirmed")
        sends = sorted(t for i in (1, 2, 3) for t in r.driver.calls_of(f"M-{i}", "set_relay"))
        assert [b - a for a, b in itertools.pairwise(sends)] == pytest.approx([60, 60], abs=1.0)


async def test_a_close_allowed_reconnect_ends_armed(tmp_path: Path) -> None:
    async with rig(tmp_path, close_allowed=True) as r:
        r.driver.relays["M-1"] = RelayState.OPEN
        r.driver.arm.add("M-1")
        command = await r.queue("M-1", "close")
        await r.advance(3)
        await r.state_is(command, "armed")
        assert (await r.record(command)).attempts == 1
