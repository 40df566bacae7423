"""The relay-command model (gateway.domain.relay): each rule on its own, then a property test that drives
commands through random sequences of meter answers, failures, outcomes and read-backs and checks every rule on
every step."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.domain.policy import RateLimiter
from gateway.domain.relay import (
    ACTIVE,
    FINAL,
    TRANSITIONS,
    Action,
    Command,
    Limits,
    MeterLink,
    Outcome,
    RelayReading,
    State,
    Step,
    after_read,
    after_read_failed,
    after_send,
    expire,
    next_step,
    supersede,
)

T0 = dt.datetime(2026, 11, 23, 8, tzinfo=dt.UTC)
S = dt.timedelta(seconds=1)
LIMITS = Limits(confirm_interval=S, confirm_timeout=10 * S, max_attempts=3, backoff_base=5 * S,
                backoff_cap=20 * S)


def command(action: Action = Action.OPEN, origin: str = "automatic", *, basis: dt.datetime = T0,
            expires: dt.datetime = T0 + 600 * S) -> Command:
    return Command("c1", "M-1", action, origin, State.QUEUED, created_at=basis, expires_at=expires, basis_at=basis)


ANSWERING = MeterLink(last_success_at=T0, last_failure_at=T0 - 60 * S)


# --- the rules, one by one ---------------------------------------------------------------------------------------
def test_a_trip_goes_out_only_while_the_meter_answers() -> None:
    assert next_step(command(), ANSWERING, T0 + S, limits=LIMITS).step is Step.SEND
    never = MeterLink()
    assert next_step(command(), never, T0 + S, limits=LIMITS).step is Step.WAIT
    failing = MeterLink(last_success_at=T0 - 10 * S, last_failure_at=T0 - 5 * S)
    assert next_step(command(basis=T0 - 20 * S), failing, T0, limits=LIMITS).step is Step.WITHDRAW


def test_an_automatic_trip_decided_before_the_meter_failed_is_withdrawn() -> None:
    """Even once the meter answers again: the engine must decide again on a fresh reading."""
    back = MeterLink(last_success_at=T0 + 30 * S, last_failure_at=T0 + 10 * S)
    assert next_step(command(basis=T0), back, T0 + 31 * S, limits=LIMITS).step is Step.WITHDRAW
    withdrawn = command(basis=T0).to(State.WITHDRAWN)
    assert withdrawn.state in FINAL


def test_an_operators_trip_waits_for_the_meter_to_answer_again() -> None:
    down = MeterLink(last_success_at=T0 - 30 * S, last_failure_at=T0 + 10 * S)
    manual = command(origin="operator", basis=T0)
    assert next_step(manual, down, T0 + 20 * S, limits=LIMITS).step is Step.WAIT
    back = MeterLink(last_success_at=T0 + 30 * S, last_failure_at=T0 + 10 * S)
    assert next_step(manual, back, T0 + 31 * S, limits=LIMITS).step is Step.SEND


def test_a_reconnect_needs_no_answering_meter() -> None:
    down = MeterLink(last_success_at=T0 - 30 * S, last_failure_at=T0)
    assert next_step(command(Action.CLOSE), down, T0 + S, limits=LIMITS).step is Step.SEND


def test_an_unanswered_send_is_read_back_before_anything_else() -> None:
    sending = command().to(State.SENDING)
    unknown = after_send(sending, Outcome.UNKNOWN, T0, limits=LIMITS, reason="timeout")
    assert unknown.state is State.SENDING and unknown.attempts == 1
    assert next_step(unknown, ANSWERING, T0 + 2 * S, limits=LIMITS).step is Step.READ_BACK
    not_switched = after_read(unknown, RelayReading.CLOSED, T0 + 2 * S, limits=LIMITS, meter=ANSWERING)
    assert not_switched.state is State.QUEUED  # now it may go out again (if its decision still stands)
    switched = after_read(unknown, RelayReading.OPEN, T0 + 2 * S, limits=LIMITS, meter=ANSWERING)
    assert switched.state is State.CONFIRMED


def test_not_confirmed_in_time_is_tried_again_with_backoff_then_fails() -> None:
    c = command(origin="operator")
    for attempt in range(1, LIMITS.max_attempts + 1):
        now = T0 + attempt * 100 * S
        c = after_send(c.to(State.SENDING), Outcome.DELIVERED, now, limits=LIMITS)
        assert (c.state, c.attempts) == (State.SENT, attempt)
        c = after_read(c, RelayReading.CLOSED, now + 3 * S, limits=LIMITS, meter=ANSWERING)
        assert c.state is State.SENT  # not yet
        c = after_read(c, RelayReading.CLOSED, now + LIMITS.confirm_timeout, limits=LIMITS, meter=ANSWERING)
        if attempt < LIMITS.max_attempts:
            assert c.state is State.QUEUED
            assert c.not_before == now + LIMITS.confirm_timeout + LIMITS.backoff(attempt)
    assert c.state is State.FAILED and "gave up after 3 attempts" in (c.last_error or "")


def test_backoff_is_capped() -> None:
    assert [LIMITS.backoff(n).total_seconds() for n in range(1, 6)] == [5, 10, 20, 20, 20]


def test_a_refusal_fails_at_once_with_the_meters_reason() -> None:
    c = after_send(command().to(State.SENDING), Outcome.REFUSED, T0, limits=LIMITS,
                   reason="meter in protect state (保电)")
    assert c.state is State.FAILED and c.last_error == "meter refused: meter in protect state (保电)"


def test_armed_ends_a_reconnect_only_on_close_allowed_meters() -> None:
    sent = after_send(command(Action.CLOSE).to(State.SENDING), Outcome.DELIVERED, T0, limits=LIMITS)
    close_allowed = MeterLink(T0, None, close_allowed=True)
    assert after_read(sent, RelayReading.ARMED, T0 + S, limits=LIMITS, meter=close_allowed).state is State.ARMED
    assert after_read(sent, RelayReading.ARMED, T0 + S, limits=LIMITS, meter=ANSWERING).state is State.SENT
    trip = after_send(command().to(State.SENDING), Outcome.DELIVERED, T0, limits=LIMITS)
    assert after_read(trip, RelayReading.ARMED, T0 + S, limits=LIMITS, meter=close_allowed).state is State.SENT


def test_not_delivered_goes_back_to_the_queue() -> None:
    c = after_send(command(Action.CLOSE).to(State.SENDING), Outcome.NOT_DELIVERED, T0, limits=LIMITS,
                   reason="connection refused")
    assert c.state is State.QUEUED and c.not_before == T0 + LIMITS.backoff(1)
    assert next_step(c, ANSWERING, T0 + S, limits=LIMITS).step is Step.WAIT


def test_expiry() -> None:
    assert expire(command()).state is State.EXPIRED
    sent = after_send(command().to(State.SENDING), Outcome.DELIVERED, T0, limits=LIMITS)
    assert expire(sent).state is State.FAILED
    assert next_step(sent, ANSWERING, T0 + 600 * S, limits=LIMITS).step is Step.EXPIRE
    read_failed = after_read_failed(sent, T0 + S, limits=LIMITS, reason="timeout")
    assert read_failed.state is State.SENT and read_failed.not_before == T0 + 2 * S


def test_the_rate_limit_counts_trips_on_the_wire() -> None:
    trips = RateLimiter(2, 60 * S, [T0, T0 + 10 * S])
    assert next_step(command(basis=T0 + 20 * S), ANSWERING, T0 + 20 * S, limits=LIMITS, trips=trips) == \
        next_step(command(basis=T0 + 20 * S), ANSWERING, T0 + 20 * S, limits=LIMITS, trips=trips)
    decision = next_step(command(basis=T0 + 20 * S), MeterLink(T0 + 20 * S), T0 + 20 * S, limits=LIMITS,
                         trips=trips)
    assert (decision.step, decision.wait_until) == (Step.WAIT, T0 + 60 * S)
    manual = command(origin="operator", basis=T0 + 20 * S)
    assert next_step(manual, MeterLink(T0 + 20 * S), T0 + 20 * S, limits=LIMITS, trips=trips).step is Step.SEND
    assert trips.allows(T0 + 60 * S)


def test_transitions_are_closed() -> None:
    with pytest.raises(ValueError, match="no transition"):
        command().to(State.CONFIRMED)
    assert all(not TRANSITIONS[s] for s in FINAL)
    assert supersede(command(), "c2").last_error == "superseded by c2"


# --- random sequences ----------------------------------------------------------------------------------------------
EVENTS = st.lists(st.tuples(
    st.sampled_from(["poll_ok", "poll_fail", "step", "step", "step", "tick"]),
    st.sampled_from(list(Outcome)),
    st.sampled_from(list(RelayReading)),
    st.booleans(),  # the read-back itself fails
    st.integers(min_value=0, max_value=30),  # seconds that pass
), min_size=1, max_size=60)


STARTS = st.sampled_from([(T0, None), (None, None), (T0 - 20 * S, T0 - 10 * S), (T0 - 20 * S, T0 - 30 * S)])


@settings(max_examples=400, deadline=None)
@given(EVENTS, st.sampled_from(list(Action)), st.sampled_from(["automatic", "operator"]), st.booleans(),
       st.integers(min_value=0, max_value=3), STARTS)
def test_random_sequences_keep_every_rule(events, action, origin, close_allowed, limit, start) -> None:  # type: ignore[no-untyped-def]
    now = T0
    link = MeterLink(last_success_at=start[0], last_failure_at=start[1], close_allowed=close_allowed)
    cmd = Command("c1", "M-1", action, origin, State.QUEUED, T0, T0 + 300 * S, basis_at=T0)
    trips = RateLimiter(limit, 60 * S)
    wire: list[tuple[dt.datetime, str]] = []  # what went on the wire, in order
    unread_unknown = False  # an UNKNOWN outcome not yet followed by a read-back
    for kind, outcome, relay, read_fails, seconds in events:
        now += seconds * S
        if kind == "poll_ok":
            link = MeterLink(now, link.last_failure_at, close_allowed)
        elif kind == "poll_fail":
            link = MeterLink(link.last_success_at, now, close_allowed)
        elif kind == "step":
            before = cmd.state
            decision = next_step(cmd, link, now, limits=LIMITS, trips=trips)
            if decision.step is Step.SEND:
                assert not unread_unknown, "sent again without reading back first"
                assert now < cmd.expires_at
                if action is Action.OPEN:
                    assert link.answering, "a trip went out to a meter whose last poll failed"
                    assert origin == "operator" or not link.failed_since(cmd.basis_at), \
                        "an automatic trip went out on a decision older than the meter's last failure"
                    if origin != "operator":
                        assert trips.allows(now)
                        trips.record(now)
                wire.append((now, "send"))
                cmd, before = cmd.to(State.SENDING), State.SENDING
                cmd = after_send(cmd, outcome, now, limits=LIMITS, reason="x")
                unread_unknown = outcome is Outcome.UNKNOWN
                if outcome in (Outcome.UNKNOWN, Outcome.NOT_DELIVERED):
                    link = MeterLink(link.last_success_at, now, close_allowed)
            elif decision.step is Step.READ_BACK:
                wire.append((now, "read"))
                if read_fails:
                    cmd = after_read_failed(cmd, now, limits=LIMITS, reason="timeout")
                    link = MeterLink(link.last_success_at, now, close_allowed)
                else:
                    unread_unknown = False
                    link = MeterLink(now, link.last_failure_at, close_allowed)
                    cmd = after_read(cmd, relay, now, limits=LIMITS, meter=link)
            elif decision.step is Step.EXPIRE:
                cmd = expire(cmd)
            elif decision.step is Step.WITHDRAW:
                assert action is Action.OPEN and origin != "operator"
                cmd = cmd.to(State.WITHDRAWN)
            elif decision.step is Step.WAIT:
                assert decision.wait_until is None or decision.wait_until > now
            if cmd.state is not before:
                assert cmd.state in TRANSITIONS[before]
                if cmd.state is State.ARMED:
                    assert action is Action.CLOSE and close_allowed and relay is RelayReading.ARMED
                if cmd.state is State.CONFIRMED:
                    assert relay is (RelayReading.OPEN if action is Action.OPEN else RelayReading.CLOSED)
                if cmd.state is State.EXPIRED:
                    assert not any(kind == "send" for _, kind in wire)
            if before in FINAL:
                assert cmd.state is before and decision.step is Step.DONE
        assert cmd.attempts <= LIMITS.max_attempts
    sends = [t for t, kind in wire if kind == "send"]
    if action is Action.OPEN and origin != "operator" and limit is not None:
        for t in sends:  # never more than `limit` trips in any window
            assert sum(1 for u in sends if t - 60 * S < u <= t) <= limit
    assert cmd.state in ACTIVE or cmd.state in FINAL


@pytest.mark.parametrize(("wanted", "meters", "state"), [
    ("disconnected", [("open", "")], "disconnected"),
    ("disconnected", [("closed", "")], "disconnecting"),
    ("disconnected", [("unknown", "")], "disconnecting"),
    ("disconnected", [("open", ""), ("closed", "")], "disconnecting"),
    ("disconnected", [("closed", "disconnect_failed")], "disconnect_failed"),  # never "disconnected" over it
    ("connected", [("closed", "")], "connected"),
    ("connected", [("unknown", "")], "connected"),
    ("connected", [("open", "")], "reconnecting"),
    ("connected", [("armed", "")], "armed"),
    ("connected", [("open", "reconnect_failed")], "reconnect_failed"),
    ("connected", [("closed", "disconnect_failed")], "connected"),  # a paid account: the old fault is moot
])
def test_the_accounts_supply_is_what_its_meters_confirmed(wanted: str, meters: list[tuple[str, str]],
                                                          state: str) -> None:
    from gateway.domain.relay import supply_state

    assert supply_state(wanted, meters) == state
