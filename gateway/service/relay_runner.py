"""The relay runner of one bus: executes the relay-command model (``gateway.domain.relay``) against the bus's
driver, beside the polls.

For each active command it asks the model what to do (``next_step``), does it (send, read back, expire,
withdraw), reports the outcome to the model (``after_send``, ``after_read``) and saves the command's next version
(``gateway.service.commands.save``). What it learns of the meter (an answer, a failure) goes to the bus's poller,
which keeps each meter's health; the model reads it back as a ``MeterLink``. Each step runs inside the driver's
``urgent()`` block when it has one: the bus lock serves it before any waiting poll.

It wakes when a command is queued or a waiting meter answers again (``offer``, ``meter_answered``: handlers of
the message bus), or when a command's next time comes; nothing polls the database.

A meter leaves the bus while the gateway runs (``forget``: retired, or moved to another bus): its commands leave
the queue at once and go wherever the meter is now (``rehome``: the scheduler offers them to the meter's new bus;
nowhere for a retired meter, whose commands the service cancelled first). A step of one of them already under
way finishes, and the command is handed on when it ends; a command whose meter left is never put on the wire
after its last check (``_send``). Like a cancellation, a frame already handed to the driver may still go out.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
from collections.abc import Callable
from typing import Any


from drivers.base import RelayAction
from drivers.errors import CommandRefused, ConnectError, DriverError
from gateway.domain.messages import CommandFinished, DisconnectWithdrawn, Message
from gateway.domain.policy import RateLimiter
from gateway.domain.relay import (
    FINAL,
    Action,
    Command,
    Limits,
    Outcome,
    Plan,
    RelayReading,
    State,
    Step,
    after_read,
    after_read_failed,
    after_send,
    expire,
    next_step,
)
from gateway.service.clock import Clock
from gateway.service.polling.poller import BusPoller

__all__ = ["RelayRunner"]

log = logging.getLogger(__name__)


class RelayRunner:
    """Runs the relay commands of one bus.

    Args:
        poller: the bus's poller (its driver, meters and their health).
        service: the gateway's use cases (units of work, the writer, the catalog).
        clock: time (a fake one in tests).
        limits: how hard a command tries.
        trips: the site's window of automatic trips put on the wire (shared by the buses).
        close_allowed: the bus's reconnect is "close allowed" (DL/T 645 1BH): a reconnect ends armed.
        publish: where the runner's messages go (``DisconnectWithdrawn``).
        rehome: takes the still active commands of a meter that left this bus (and whether each was found
            queued at a start), to offer them to the meter's new bus.
    """

    def __init__(self, poller: BusPoller, service: Any, *, clock: Clock, limits: Limits, trips: RateLimiter,
                 close_allowed: bool = False, publish: Callable[[Message], None] = lambda message: None,
                 rehome: Callable[[Command, bool], None] = lambda command, recovered: None) -> None:
        self.poller, self.service, self.clock, self.limits, self.trips = poller, service, clock, limits, trips
        self.bus_id, self.driver, self.targets = poller.bus_id, poller.driver, poller.targets
        self.close_allowed, self.publish, self.rehome = close_allowed, publish, rehome
        self.active: dict[str, Command] = {}
        self._current: str | None = None  # the command whose step is running
        self._wake = asyncio.Event()
        self._relays: dict[str, str] = {}  # the relay last written to each meter's row by this runner
        self._recovering: set[str] = set()  # found queued at a start: read back before anything else
        self.busy = False  # a step is running
        urgent = getattr(self.driver, "urgent", None)
        self._urgent: Callable[[], contextlib.AbstractContextManager[Any]] = (
            urgent if callable(urgent) else contextlib.nullcontext)

    # --- reactions (message-bus handlers) -------------------------------------------------------------------
    def offer(self, command: Command, *, recovered: bool = False) -> None:
        """A command for one of this bus's meters, durable. ``recovered``: found active at a start; one found
        ``queued`` may have been sent by the previous run without its ``sending`` record: read back first."""
        if command.meter_id not in self.targets or command.state in FINAL or command.id in self.active:
            return
        for older in [c for c in self.active.values()
                      if c.meter_id == command.meter_id and c.created_at < command.created_at]:
            del self.active[older.id]  # superseded in the database when the newer one was stored
        if recovered and command.state is State.QUEUED:
            self._recovering.add(command.id)
        self.active[command.id] = command
        self._wake.set()

    def meter_answered(self, meter_id: str) -> None:
        if meter_id in self.targets:
            self._wake.set()

    def forget(self, meter_id: str) -> None:
        """The meter left this bus (call after the poller dropped it): its commands leave the queue, never to be
        sent from here; each is handed to ``rehome``, the one whose step is running when that step ends."""
        self._relays.pop(meter_id, None)
        for command in [c for c in self.active.values() if c.meter_id == meter_id]:
            if command.id == self._current:
                del self.active[command.id]  # ``_keep`` hands it on after its step
            else:
                self._keep(command)
        self._wake.set()

    # --- the loop -----------------------------------------------------------------------------------------
    async def run(self) -> None:
        while True:
            self._wake.clear()
            now = self.clock.now()
            due: tuple[Command, Plan] | None = None
            wake_at: dt.datetime | None = None
            for command in sorted(self.active.values(), key=lambda c: c.created_at):
                plan = self._plan(command, now)
                if plan.step is not Step.WAIT:
                    due = command, plan
                    break
                if plan.wait_until is not None and (wake_at is None or plan.wait_until < wake_at):
                    wake_at = plan.wait_until
            if due is not None:
                command, plan = due
                self.busy, self._current = True, command.id
                try:
                    with self._urgent():
                        await self._do(command, plan, now)
                except Exception:  # e.g. the database is unavailable: try the step again later, keep the bus
                    log.exception("command %s: %s failed", command.id, plan.step.value)
                    if command.id in self.active or command.meter_id not in self.targets:
                        self._keep(dataclasses.replace(self.active.get(command.id, command),
                                                       not_before=self.clock.now() + dt.timedelta(seconds=1)))
                finally:
                    self.busy, self._current = False, None
                if self.poller.gap_s:
                    await self.clock.sleep(self.poller.gap_s)
                continue
            timeout = None if wake_at is None else (wake_at - self.clock.now()).total_seconds()
            await self.clock.wait(self._wake, timeout)

    def _plan(self, command: Command, now: dt.datetime) -> Plan:
        if command.id in self._recovering and now < command.expires_at:
            if command.not_before is not None and now < command.not_before:
                return Plan(Step.WAIT, command.not_before)  # its read-back failed: the next one later
            return Plan(Step.READ_BACK)
        link = self.poller.meters[command.meter_id].link(close_allowed=self.close_allowed)
        return next_step(command, link, now, limits=self.limits, trips=self.trips)

    async def _do(self, command: Command, plan: Plan, now: dt.datetime) -> None:
        if plan.step is Step.DONE:
            self.active.pop(command.id, None)
        elif plan.step is Step.EXPIRE:
            self._recovering.discard(command.id)
            await self._save(command, expire(command))
        elif plan.step is Step.WITHDRAW:
            withdrawn = command.to(State.WITHDRAWN, last_error=f"withdrawn: {plan.why}; the engine decides again "
                                                              "on a fresh reading")
            spec = self.service.catalog.meters.get(command.meter_id)
            if await self._save(command, withdrawn) and spec is not None:
                self.publish(DisconnectWithdrawn(spec.account_id, command.meter_id, command.id, plan.why))
        elif plan.step is Step.SEND:
            await self._send(command, now)
        else:
            await self._read_back(command, now)

    async def _send(self, command: Command, now: dt.datetime) -> None:
        # `sending` is committed while the frame goes out, not before: the wire does not wait for the database.
        # A run killed in between leaves the command `queued`, and a restart reads the relay back before sending
        # anything it finds active, so nothing is repeated blindly.
        if not await self._still_queued(command):
            self.active.pop(command.id, None)  # superseded or cancelled meanwhile: never sent
            return
        target = self.targets.get(command.meter_id)
        if target is None or command.id not in self.active:  # its meter left the bus meanwhile: never sent here
            self._keep(command)
            return
        if command.action is Action.OPEN and command.automatic:
            self.trips.record(now)  # the rate limit counts trips on the wire
        sending = command.to(State.SENDING, sent_at=now, not_before=None)
        marked = asyncio.ensure_future(self._save(command, sending))
        self.poller.counters.commands += 1
        outcome, reason = Outcome.DELIVERED, ""
        try:
            await self.driver.set_relay(target, RelayAction(command.action.value), valid_until=command.expires_at)
        except CommandRefused as exc:
            outcome, reason = Outcome.REFUSED, exc.reason
        except ConnectError as exc:  # the link could not be opened: nothing reached the meter
            outcome, reason = Outcome.NOT_DELIVERED, str(exc)
        except DriverError as exc:  # it may have reached the meter (a lost or garbled answer)
            outcome, reason = Outcome.UNKNOWN, str(exc)
        except BaseException:
            await asyncio.shield(marked)
            raise
        if not await marked:
            log.warning("command %s was superseded or cancelled while it was being sent to %s", command.id,
                        command.meter_id)
            return
        if outcome in (Outcome.DELIVERED, Outcome.REFUSED):
            self.poller.answered(command.meter_id)
        else:
            self.poller.failed(command.meter_id, reason)
        await self._save(sending, after_send(sending, outcome, self.clock.now(), limits=self.limits,
                                             reason=reason))

    async def _read_back(self, command: Command, now: dt.datetime) -> None:
        recovering = command.id in self._recovering
        target = self.targets[command.meter_id]
        try:
            state = await self.driver.read_relay(target)
        except DriverError as exc:
            if self.targets.get(command.meter_id) is not target:  # it moved or left meanwhile: ask again there
                self._keep(command)
                return
            self.poller.failed(command.meter_id, str(exc))
            self._keep(after_read_failed(command, self.clock.now(), limits=self.limits,
                                         reason=f"relay read-back: {exc}"))
            return
        if self.targets.get(command.meter_id) is not target:  # the answer may be another meter's
            self._keep(command)
            return
        self.poller.answered(command.meter_id)
        relay = RelayReading(state.value)
        await self._note_relay(command.meter_id, relay)
        if recovering:  # a command found queued at a start: `sending` first, then the model takes over
            self._recovering.discard(command.id)
            sending = command.to(State.SENDING, last_error="after a restart: reading the relay back first")
            if not await self._save(command, sending):
                return
            command = sending
        if self.targets.get(command.meter_id) is not target:  # it moved or left while the relay was noted
            self._keep(command)
            return
        link = self.poller.meters[command.meter_id].link(close_allowed=self.close_allowed)
        after = after_read(command, relay, self.clock.now(), limits=self.limits, meter=link)
        if after.state is command.state:
            self._keep(after)  # still waiting for the contact: nothing to write
        else:
            await self._save(command, after)

    # --- storage --------------------------------------------------------------------------------------------
    async def _save(self, old: Command, new: Command) -> bool:
        """Write the command's next version; it leaves the runner when it is final or was changed elsewhere."""
        async with self.service.uow() as uow:
            saved = await uow.commands.save(old, new, self.clock.now())
            await uow.commit()
        if saved and new.state in FINAL:
            self._forget_meter(new.meter_id)  # its row's relay or relay fault changed
            self.publish(CommandFinished(new, self.clock.now()))  # (its latency, for the metrics)
        if not saved or new.state in FINAL:
            self.active.pop(new.id, None)
        else:
            self._keep(new)
        return saved

    def _keep(self, command: Command) -> None:
        """A command still active after a step: back in the queue if its meter is still on this bus, else handed
        to wherever the meter is now (``rehome``)."""
        if command.meter_id in self.targets:
            self.active[command.id] = command
            return
        self.active.pop(command.id, None)
        recovering = command.id in self._recovering
        self._recovering.discard(command.id)
        self.rehome(command, recovering)

    async def _still_queued(self, command: Command) -> bool:
        """A read (no write lock): is the command still `queued`, not superseded or cancelled?"""
        async with self.service.uow(readonly=True) as uow:
            state = await uow.commands.state(command.id)
        return state == State.QUEUED.value

    async def _note_relay(self, meter_id: str, relay: RelayReading) -> None:
        if self._relays.get(meter_id) == relay.value:
            return
        async with self.service.uow() as uow:
            await uow.meters.update(meter_id, {"relay": relay.value})
            await uow.commit()
        self._relays[meter_id] = relay.value
        self._forget_meter(meter_id)

    def _forget_meter(self, meter_id: str) -> None:
        writer = getattr(self.service, "writer", None)
        if writer is not None:
            writer.forget_meter(meter_id)
