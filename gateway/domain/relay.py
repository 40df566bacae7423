"""Relay commands as one explicit state machine (DESIGN.md §9): states, transitions and the rules that decide
what a command does next. Pure: no I/O, no clock (``now`` is an argument).

::

    queued ─▶ sending ─▶ sent ─▶ confirmed          (relay read back in the wanted state)
      ▲ │         │  ▲     ├──▶ armed               (close allowed: the meter waits for the customer's button)
      │ │         │  │     └──▶ queued ─▶ …         (not confirmed in time: tried again, with backoff)
      │ │         ▼  │
      │ │       (read back first: the frame may have arrived)
      │ └──▶ superseded / cancelled / expired / withdrawn
      └── not delivered (nothing reached the meter)           failed: refused, or not confirmed after the
                                                              last attempt, or expired once sent

A runner asks ``next_step(command, meter, now, …)`` what to do, does it against the meter, and reports what
happened with ``after_send`` or ``after_read``; each returns the command's next version. The rules:

- **A trip goes on the wire only when the meter's last poll succeeded, and only if the decision rests on a
  reading taken after the meter's last failure.** An automatic trip decided before the meter last failed is
  *withdrawn*: the engine decides again on a fresh reading (guardrails included). An operator's trip waits for
  the meter to answer again.
- **A command that may have reached the meter is never sent again blindly**: its relay is read back first.
- **A command not confirmed in time is tried again** with capped exponential backoff, up to ``max_attempts``;
  after the last it *fails* (an alarm; the meter and the account show ``disconnect_failed`` or
  ``reconnect_failed``). A meter's refusal fails at once, with the meter's reason.
- **"Armed" is a confirmed end of a reconnect** on a meter whose close is "close allowed" (1BH): the contact
  stays open until the customer presses the button.
- **The rate limit counts trips put on the wire** (automatic ones, in a sliding window): the site's
  ``RateLimiter``, given the trips as they go out.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Iterable
from dataclasses import dataclass, replace

from gateway.domain.policy import RateLimiter

__all__ = ["ACTIVE", "Action", "Command", "FINAL", "Limits", "MeterLink", "Outcome", "Plan", "RelayReading",
           "State", "Step", "TRANSITIONS", "after_read", "after_read_failed", "after_send",
           "expire", "next_step", "supersede", "supply_state"]


class Action(str, enum.Enum):
    OPEN = "open"  # trip / disconnect
    CLOSE = "close"  # reconnect


class State(str, enum.Enum):
    QUEUED = "queued"
    SENDING = "sending"  # on the wire, or its outcome unknown: read back before anything else
    SENT = "sent"  # acknowledged by the meter; waiting for the relay to read back as wanted
    CONFIRMED = "confirmed"
    ARMED = "armed"  # a close-allowed reconnect: the meter waits for the customer's button
    FAILED = "failed"
    SUPERSEDED = "superseded"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    WITHDRAWN = "withdrawn"  # an automatic trip whose decision went stale: the engine decides again


ACTIVE = frozenset({State.QUEUED, State.SENDING, State.SENT})
FINAL = frozenset(State) - ACTIVE

TRANSITIONS: dict[State, frozenset[State]] = {
    # queued -> failed: a command tried before (waiting for its next attempt) that expires
    State.QUEUED: frozenset({State.SENDING, State.SUPERSEDED, State.CANCELLED, State.EXPIRED, State.WITHDRAWN,
                             State.FAILED}),
    # sending -> queued: the frame did not reach the meter (or read back not switched): safe to send again
    State.SENDING: frozenset({State.SENT, State.SENDING, State.QUEUED, State.CONFIRMED, State.ARMED, State.FAILED,
                              State.SUPERSEDED}),
    State.SENT: frozenset({State.CONFIRMED, State.ARMED, State.QUEUED, State.FAILED, State.SUPERSEDED}),
    **{final: frozenset() for final in FINAL},
}


class RelayReading(str, enum.Enum):
    """The contact as the meter reports it (DL/T 645 status word 3: bit 4 actual, bit 6 commanded)."""

    OPEN = "open"
    CLOSED = "closed"
    ARMED = "armed"  # close commanded (close allowed), contact still open: waiting for the button
    UNKNOWN = "unknown"


class Outcome(str, enum.Enum):
    """What happened when a command went on the wire."""

    DELIVERED = "delivered"  # the meter acknowledged it
    NOT_DELIVERED = "not_delivered"  # nothing reached the meter (the link could not be opened)
    UNKNOWN = "unknown"  # it may have reached the meter (no answer, a garbled answer)
    REFUSED = "refused"  # the meter refused it (with its reason)


@dataclass(frozen=True, slots=True)
class Limits:
    """How hard a command tries.

    Args:
        confirm_interval: how often a sent command's relay is read back.
        confirm_timeout: how long an attempt waits for the relay to read back as wanted (longer than the
            meters' trip delay).
        max_attempts: attempts (frames on the wire) before a command fails.
        backoff_base: the wait before the second attempt; it doubles for each next one ...
        backoff_cap: ... up to this.
    """

    confirm_interval: dt.timedelta = dt.timedelta(seconds=0.5)
    confirm_timeout: dt.timedelta = dt.timedelta(seconds=120)
    max_attempts: int = 3
    backoff_base: dt.timedelta = dt.timedelta(seconds=5)
    backoff_cap: dt.timedelta = dt.timedelta(minutes=5)

    def backoff(self, attempts: int) -> dt.timedelta:
        return min(self.backoff_base * 2 ** max(attempts - 1, 0), self.backoff_cap)


@dataclass(frozen=True, slots=True)
class MeterLink:
    """What is known of the meter's answers: its last successful poll and its last failure (poll, read-back
    or send without answer)."""

    last_success_at: dt.datetime | None = None
    last_failure_at: dt.datetime | None = None
    close_allowed: bool = False  # a reconnect ends "armed" (DL/T 645 1BH)

    @property
    def answering(self) -> bool:
        """The meter's last exchange succeeded."""
        return self.last_success_at is not None and (
            self.last_failure_at is None or self.last_success_at > self.last_failure_at)

    def failed_since(self, when: dt.datetime) -> bool:
        return self.last_failure_at is not None and self.last_failure_at >= when


@dataclass(frozen=True, slots=True)
class Command:
    """One relay command as the model sees it.

    ``basis_at``: what the decision rests on: the time of the reading an automatic decision was made on, or the
    time an operator asked. ``not_before``: nothing before then (a retry's backoff, the next read-back).
    ``sent_at``: when the current attempt went out.
    """

    id: str
    meter_id: str
    action: Action
    origin: str  # "automatic", "operator", "billing"
    state: State
    created_at: dt.datetime
    expires_at: dt.datetime
    basis_at: dt.datetime
    attempts: int = 0
    sent_at: dt.datetime | None = None
    not_before: dt.datetime | None = None
    last_error: str | None = None

    @property
    def automatic(self) -> bool:
        return self.origin != "operator"

    def to(self, state: State, **changes: object) -> Command:
        """This command in ``state`` (a transition of ``TRANSITIONS``; anything else is a bug)."""
        if state not in TRANSITIONS[self.state]:
            raise ValueError(f"command {self.id}: no transition {self.state.value} -> {state.value}")
        return replace(self, state=state, **changes)  # type: ignore[arg-type]


class Step(str, enum.Enum):
    """What a runner does next with a command."""

    SEND = "send"  # put it on the wire (queued -> sending first)
    READ_BACK = "read_back"  # read the relay
    WAIT = "wait"  # nothing until ``wait_until`` (or until the meter answers again)
    EXPIRE = "expire"  # past its expiry: ``expire(command)``
    WITHDRAW = "withdraw"  # an automatic trip whose basis is older than the meter's last failure
    DONE = "done"  # final


@dataclass(frozen=True, slots=True)
class Plan:
    step: Step
    wait_until: dt.datetime | None = None  # WAIT: until then at the latest (the meter answering again may be sooner)
    why: str = ""


def next_step(command: Command, meter: MeterLink, now: dt.datetime, *, limits: Limits,
              trips: RateLimiter | None = None) -> Plan:
    """What to do with ``command`` at ``now``."""
    if command.state in FINAL:
        return Plan(Step.DONE)
    if now >= command.expires_at:
        return Plan(Step.EXPIRE)
    if command.not_before is not None and now < command.not_before:
        return Plan(Step.WAIT, command.not_before, "backoff" if command.state is State.QUEUED else "")
    if command.state is not State.QUEUED:
        return Plan(Step.READ_BACK)
    if command.action is Action.OPEN:
        if meter.failed_since(command.basis_at):
            if command.automatic:
                return Plan(Step.WITHDRAW, why="the meter stopped answering after the decision")
            if not meter.answering:
                return Plan(Step.WAIT, command.expires_at, "the meter is not answering: a trip waits for it")
        elif not meter.answering:
            return Plan(Step.WAIT, command.expires_at, "the meter's last poll did not succeed")
        if command.automatic and trips is not None and not trips.allows(now):
            return Plan(Step.WAIT, min(trips.free_at(now) or command.expires_at, command.expires_at),
                        "rate limit: trips on the wire")
    return Plan(Step.SEND)


def after_send(command: Command, outcome: Outcome, now: dt.datetime, *, limits: Limits,
               reason: str = "") -> Command:
    """The command after it was put on the wire (it was ``sending``) with ``outcome``."""
    attempts = command.attempts + 1
    if outcome is Outcome.DELIVERED:
        return command.to(State.SENT, attempts=attempts, sent_at=now, not_before=None, last_error=None)
    if outcome is Outcome.REFUSED:
        return command.to(State.FAILED, attempts=attempts, last_error=f"meter refused: {reason}")
    if outcome is Outcome.NOT_DELIVERED:
        return _retry(replace(command, attempts=attempts), now, limits, reason or "not delivered")
    # It may have reached the meter: never repeat it blindly, read the relay back first.
    return command.to(State.SENDING, attempts=attempts, sent_at=now, not_before=now + limits.confirm_interval,
                      last_error=f"{reason or 'no answer'}; reading the relay back")


def after_read(command: Command, relay: RelayReading, now: dt.datetime, *, limits: Limits,
               meter: MeterLink) -> Command:
    """The command after its relay was read back as ``relay`` (it was ``sending`` or ``sent``)."""
    wanted = RelayReading.OPEN if command.action is Action.OPEN else RelayReading.CLOSED
    if relay is wanted:
        return command.to(State.CONFIRMED, last_error=None)
    if relay is RelayReading.ARMED and command.action is Action.CLOSE and meter.close_allowed:
        return command.to(State.ARMED, last_error=None)
    if command.state is State.SENDING:
        # The frame may not have arrived; now that the relay is read, it is safe to send it again (at once when
        # this run never sent it: a command found after a restart).
        if command.attempts == 0:
            return command.to(State.QUEUED, not_before=None, last_error=f"relay read back {relay.value}")
        return _retry(command, now, limits, f"relay read back {relay.value} after an unanswered command")
    if command.sent_at is not None and now - command.sent_at >= limits.confirm_timeout:
        return _retry(command, now, limits, f"relay still {relay.value} {limits.confirm_timeout} after the command")
    return replace(command, not_before=now + limits.confirm_interval)


def after_read_failed(command: Command, now: dt.datetime, *, limits: Limits, reason: str) -> Command:
    """The relay could not be read back: try again after ``confirm_interval`` (until the command expires)."""
    return replace(command, not_before=now + limits.confirm_interval,
                   last_error=_join(reason, "reading the relay back again"))


def expire(command: Command) -> Command:
    """A command past its expiry: never sent, ``expired``; once on the wire, ``failed`` (it was not confirmed)."""
    if command.state is State.QUEUED and command.attempts == 0:
        return command.to(State.EXPIRED, last_error="expired before it was sent")
    return command.to(State.FAILED, last_error=_join(command.last_error, "not confirmed before it expired"))


def supersede(command: Command, by: str) -> Command:
    """A newer command for the same meter replaces this one."""
    return command.to(State.SUPERSEDED, last_error=f"superseded by {by}")


def _retry(command: Command, now: dt.datetime, limits: Limits, why: str) -> Command:
    if command.attempts >= limits.max_attempts:
        return command.to(State.FAILED, last_error=f"{why}; gave up after {command.attempts} attempts")
    wait = limits.backoff(command.attempts)
    return command.to(State.QUEUED, not_before=now + wait, sent_at=None,
                      last_error=f"{why}; attempt {command.attempts + 1} of {limits.max_attempts} in "
                                 f"{wait.total_seconds():g} s")


def _join(*parts: str | None) -> str:
    return "; ".join(p for p in parts if p)


def supply_state(wanted: str, meters: Iterable[tuple[str, str]]) -> str:
    """The account's supply as its meters last confirmed it, given what the engine wants (``connected`` or
    ``disconnected``) and each meter's (relay, relay fault): ``connected``, ``disconnected``, ``disconnecting``,
    ``reconnecting``, ``armed`` (waiting for the customer's button), ``disconnect_failed`` or
    ``reconnect_failed``. An account is never ``disconnected`` over a contact that was not read back open."""
    meters = list(meters)
    faults = {fault for _, fault in meters if fault}
    relays = {relay for relay, _ in meters}
    if wanted == "disconnected":
        if "disconnect_failed" in faults:
            return "disconnect_failed"
        return "disconnected" if relays and relays <= {"open"} else "disconnecting"
    if "reconnect_failed" in faults:
        return "reconnect_failed"
    if "open" in relays:
        return "reconnecting"
    return "armed" if "armed" in relays else "connected"
