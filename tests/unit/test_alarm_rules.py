"""The alarm rules (gateway.domain.alarms): which event raises which alarm, which ends one; the keeper's cursor
over the outbox (gateway.service.alarm_port.Cursor)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.domain.alarms import (ACCOUNT_KINDS, KINDS, METER_KINDS, OWN_EVENTS, SEVERITIES, Raise, Resolve,
                                   Unresolved, alarm_changes, severity)
from gateway.service.alarm_port import Cursor

RAISES: list[tuple[str, dict[str, Any], tuple[str, str, str | None, str | None]]] = [
    # (topic, payload) -> (kind, subject, meter, account)
    ("meters/M-1/state", {"type": "MeterHealth", "meter_id": "M-1", "health": "offline", "error": "timeout"},
     ("meter_offline", "M-1", "M-1", None)),
    ("meters/M-1/events", {"type": "MeterStale", "meter_id": "M-1", "account_id": "A-1"},
     ("meter_stale", "M-1", "M-1", "A-1")),
    ("alarms", {"type": "MeterTamper", "meter_id": "M-1", "account_id": "A-1", "flags": ["cover_open"]},
     ("tamper", "M-1", "M-1", "A-1")),
    ("alarms", {"type": "CommandFailed", "command_id": "c", "meter_id": "M-1", "action": "open", "error": "x"},
     ("command_failed", "M-1", "M-1", None)),
    ("alarms", {"type": "ReadingQuarantined", "account_id": "A-1", "meter_id": "M-1", "energy_wh": 1,
                "previous_wh": 9, "reason": "backwards"}, ("reading_quarantined", "M-1", "M-1", "A-1")),
    ("alarms", {"type": "DisconnectDeferred", "account_id": "A-1", "reason": "protected", "balance_fen": -1},
     ("disconnect_refused", "A-1", None, "A-1")),
    ("alarms", {"type": "NoticeFailed", "account_id": "A-1", "contact": "Li", "channel": "sms", "notice_id": 1},
     ("notice_failed", "A-1/Li/sms", None, "A-1")),
    ("accounts/A-1/events", {"type": "FinalWarningUndelivered", "account_id": "A-1", "balance_fen": -10},
     ("notice_failed", "A-1/final_warning", None, "A-1")),
    ("alarms", {"type": "AccountUnreadable", "account_id": "A-1", "error": "x"},
     ("account_unreadable", "A-1", None, "A-1")),
    ("alarms", {"type": "OutboxOverflow", "left_out": 3}, ("outbox_overflow", "outbox", None, None)),
]

RESOLVES: list[tuple[str, dict[str, Any], tuple[tuple[str, ...], str | None, str | None, str | None]]] = [
    # (topic, payload) -> (kinds, subject, meter, account)
    ("meters/M-1/state", {"type": "MeterHealth", "meter_id": "M-1", "health": "online"},
     (("meter_offline",), "M-1", None, None)),
    ("meters/M-1/events", {"type": "MeterFresh", "meter_id": "M-1"}, (("meter_stale",), "M-1", None, None)),
    ("alarms", {"type": "MeterTamper", "meter_id": "M-1", "flags": []}, (("tamper",), "M-1", None, None)),
    ("commands/c", {"type": "CommandState", "id": "c", "meter_id": "M-1", "state": "confirmed"},
     (("command_failed",), "M-1", None, None)),
    ("commands/c", {"type": "CommandState", "id": "c", "meter_id": "M-1", "state": "armed"},
     (("command_failed",), "M-1", None, None)),
    ("accounts/A-1/events", {"type": "QuarantineResolved", "account_id": "A-1", "meter_id": "M-1",
                             "action": "accepted"}, (("reading_quarantined",), "M-1", None, None)),
    ("accounts/A-1/events", {"type": "DisconnectRequired", "account_id": "A-1"},
     (("disconnect_refused",), "A-1", None, None)),
    ("accounts/A-1/events", {"type": "DisconnectWithdrawn", "account_id": "A-1"},
     (("disconnect_refused",), "A-1", None, None)),
    ("accounts/A-1/notices", {"type": "NoticeState", "account_id": "A-1", "contact": "Li", "channel": "sms",
                              "state": "delivered"}, (("notice_failed",), "A-1/Li/sms", None, None)),
    ("accounts/A-1/events", {"type": "FinalWarningDelivered", "account_id": "A-1", "to": "customer:Li"},
     (("notice_failed",), "A-1/final_warning", None, None)),
    ("accounts/A-1/events", {"type": "MeterDetached", "account_id": "A-1", "meter_id": "M-1"},
     (METER_KINDS, None, "M-1", None)),
    ("accounts/A-1/events", {"type": "MeterReplaced", "account_id": "A-1", "old_meter_id": "M-1",
                             "new_meter_id": "M-9"}, (METER_KINDS, None, "M-1", None)),
    ("accounts/A-1/events", {"type": "AccountClosed", "account_id": "A-1"}, (ACCOUNT_KINDS, None, None, "A-1")),
]


@pytest.mark.parametrize(("topic", "payload", "expected"), RAISES, ids=[p["type"] for _, p, _ in RAISES])
def test_an_event_raises_its_alarm(topic: str, payload: dict[str, Any], expected: tuple[Any, ...]) -> None:
    changes = alarm_changes(topic, payload)
    [raised] = changes.raises
    assert not changes.resolves
    assert (raised.kind, raised.subject, raised.meter_id, raised.account_id) == expected
    assert raised.severity == severity(raised.kind) in SEVERITIES


@pytest.mark.parametrize(("topic", "payload", "expected"), RESOLVES,
                         ids=[f"{p['type']}-{p.get('state', '')}" for _, p, _ in RESOLVES])
def test_an_event_ends_its_alarm(topic: str, payload: dict[str, Any], expected: tuple[Any, ...]) -> None:
    changes = alarm_changes(topic, payload)
    [ended] = changes.resolves
    assert not changes.raises and ended.reason
    assert (ended.kinds, ended.subject, ended.meter_id, ended.account_id) == expected


def test_severities_and_kinds() -> None:
    assert {k: severity(k) for k in ("tamper", "account_unreadable", "meter_offline", "meter_stale")} == {
        "tamper": "critical", "account_unreadable": "critical", "meter_offline": "major", "meter_stale": "minor"}
    assert set(METER_KINDS) | set(ACCOUNT_KINDS) | {"outbox_overflow"} == set(KINDS)
    assert {r[2][0] for r in RAISES} == set(KINDS)  # every kind has its event


@pytest.mark.parametrize(("topic", "payload"), [
    ("meters/M-1/state", {"type": "MeterHealth", "meter_id": "M-1", "health": "degraded"}),  # answering, at times
    ("commands/c", {"type": "CommandState", "id": "c", "meter_id": "M-1", "state": "sending"}),
    ("accounts/A-1/notices", {"type": "NoticeState", "account_id": "A-1", "contact": "Li", "channel": "sms",
                              "state": "pending"}),
    ("alarms", {"type": "MeterTamper", "meter_id": "M-1"}),  # no flags: no information
    ("alarms", {"type": "CommandFailed", "command_id": "c"}),  # no meter: no subject
    ("alarms", {"type": "AlarmRaised", "kind": "tamper", "subject": "M-1", "meter_id": "M-1"}),  # the keeper's own
    ("accounts/A-1/balance", {"type": "PaymentReceived", "account_id": "A-1"}),
    ("alarms", {"type": 7}),
    ("alarms", {}),
])
def test_events_that_change_no_alarm(topic: str, payload: dict[str, Any]) -> None:
    assert not alarm_changes(topic, payload)


def test_a_long_text_is_cut_and_missing_values_left_out() -> None:
    [raised] = alarm_changes("alarms", {"type": "CommandFailed", "meter_id": "M-1", "error": "e" * 5000}).raises
    assert raised.detail == {"error": "e" * 500}


_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                       lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                  max_size=3), max_leaves=8)


@given(kind=st.sampled_from(["MeterHealth", "MeterStale", "MeterFresh", "MeterTamper", "CommandFailed",
                             "CommandState", "ReadingQuarantined", "QuarantineResolved", "DisconnectDeferred",
                             "DisconnectRequired", "DisconnectWithdrawn", "NoticeFailed", "NoticeState",
                             "AccountUnreadable", "OutboxOverflow", "MeterDetached", "MeterReplaced",
                             "AccountClosed", "FinalWarningUndelivered", "FinalWarningDelivered", *OWN_EVENTS]),
       topic=st.text(max_size=30), payload=st.dictionaries(st.text(max_size=15), _VALUES, max_size=8))
def test_any_payload_gives_well_formed_changes(kind: str, topic: str, payload: dict[str, Any]) -> None:
    """Whatever an event carries (a malformed one too), the rules never fail, and what they give names a known
    kind, a subject, and ends something specific (never every alarm of a kind)."""
    changes = alarm_changes(topic, {**payload, "type": kind})
    for raised in changes.raises:
        assert isinstance(raised, Raise) and raised.kind in KINDS and raised.subject and isinstance(raised.subject, str)
    for ended in changes.resolves:
        assert isinstance(ended, Resolve) and set(ended.kinds) <= set(KINDS)
        assert ended.subject or ended.meter_id or ended.account_id
    if kind in OWN_EVENTS:
        assert not changes


T0 = dt.datetime(2026, 12, 3, tzinfo=dt.UTC)
WAIT = dt.timedelta(seconds=60)


def test_cursor_keeps_holes_until_they_come_or_expire() -> None:
    cursor = Cursor()
    cursor.take([1, 2, 5, 6], T0, holes=True, hole_wait=WAIT)
    assert (cursor.high, sorted(cursor.holes), cursor.done) == (6, [3, 4], 2)
    cursor.take([4, 7], T0 + dt.timedelta(seconds=30), holes=True, hole_wait=WAIT)  # 4 came late
    assert (cursor.high, sorted(cursor.holes), cursor.done) == (7, [3], 2)
    cursor.take([], T0 + dt.timedelta(seconds=61), holes=True, hole_wait=WAIT)  # 3 never will (rolled back)
    assert (cursor.holes, cursor.done) == ({}, 7)
    assert Cursor.load(cursor.state()) == cursor


def test_cursor_without_holes_and_large_gaps() -> None:
    sqlite = Cursor()
    sqlite.take([1, 3], T0, holes=False, hole_wait=WAIT)  # SQLite commits in id order
    assert (sqlite.high, sqlite.holes) == (3, {})
    first = Cursor()
    first.take([5000, 5002], T0, holes=True, hole_wait=WAIT)  # ids pruned long ago are no transaction in flight
    assert sorted(first.holes) == [5001] and first.done == 5000


@given(st.lists(st.integers(min_value=1, max_value=300), unique=True, max_size=60))
def test_cursor_done_never_passes_an_event_not_looked_at(ids: list[int]) -> None:
    cursor = Cursor()
    seen: set[int] = set()
    for start in range(0, len(ids), 7):
        batch = ids[start:start + 7]
        cursor.take(batch, T0, holes=True, hole_wait=WAIT)
        seen.update(batch)
        assert all(i in seen for i in range(1, cursor.done + 1) if i in ids)
        assert all(i not in seen for i in cursor.holes)


_names = st.sampled_from(["M-1", "M-2", "A-1", "A-2", "x"])
_keys = st.tuples(st.sampled_from(["meter_offline", "tamper", "disconnect_refused"]), _names,
                  st.none() | _names, st.none() | _names)
_resolutions = st.builds(Resolve, kinds=st.lists(st.sampled_from(["meter_offline", "tamper", "disconnect_refused"]),
                                                 min_size=1, max_size=2).map(tuple),
                         reason=st.just("why"), subject=st.none() | _names, meter_id=st.none() | _names,
                         account_id=st.none() | _names)


@given(keys=st.sets(_keys, max_size=12), gone=st.sets(_keys, max_size=4),
       resolutions=st.lists(_resolutions, max_size=8))
def test_the_index_of_unresolved_alarms_ends_what_matching_them_one_by_one_ends(
        keys: set[Any], gone: set[Any], resolutions: list[Resolve]) -> None:
    index = Unresolved(keys)
    for key in gone:  # resolved meanwhile
        index.discard(key)
    left = keys - gone
    for resolution in resolutions:
        assert index.ends(resolution) == any(resolution.ends(key) for key in left), resolution
    for key in gone:  # raised again
        index.add(key)
    for resolution in resolutions:
        assert index.ends(resolution) == any(resolution.ends(key) for key in keys | gone), resolution


def test_a_resolution_ends_an_alarm_matching_each_field_it_gives() -> None:
    key = ("meter_offline", "M-1", "M-1", "A-1")
    assert Resolve(("meter_offline",), "up", subject="M-1").ends(key)
    assert Resolve(("meter_offline", "tamper"), "up", meter_id="M-1", account_id="A-1").ends(key)
    assert not Resolve(("tamper",), "up", subject="M-1").ends(key)
    assert not Resolve(("meter_offline",), "up", subject="M-1", account_id="A-2").ends(key)
    assert Resolve(("meter_offline",), "up").ends(key)  # nothing given: every one of its kinds
