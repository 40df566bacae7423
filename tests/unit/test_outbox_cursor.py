"""The outbox readers' cursor (gateway.service.outbox_cursor) beyond the keeper's tests in test_alarm_rules.py:
which holes a read looks for, and the same class under its old name."""

from __future__ import annotations

import datetime as dt

from gateway.service import alarm_port
from gateway.service.outbox_cursor import Cursor

T0 = dt.datetime(2026, 12, 3, tzinfo=dt.UTC)
WAIT = dt.timedelta(seconds=60)


def test_a_read_looks_for_the_first_holes_missed_and_at_most_so_many() -> None:
    cursor = Cursor()
    cursor.take([1, 5], T0, holes=True, hole_wait=WAIT)
    cursor.take([9], T0 + dt.timedelta(seconds=1), holes=True, hole_wait=WAIT)
    assert cursor.missing() == [2, 3, 4, 6, 7, 8]
    assert cursor.missing(4) == [2, 3, 4, 6]  # the oldest first: the others wait for a later read
    cursor.take([3, 7], T0 + dt.timedelta(seconds=2), holes=True, hole_wait=WAIT)  # two came late
    assert (cursor.missing(), cursor.high) == ([2, 4, 6, 8], 9)
    cursor.take([], T0 + dt.timedelta(seconds=60), holes=True, hole_wait=WAIT)  # the first ones given up
    assert cursor.missing() == [6, 8]


def test_without_holes_a_reader_only_moves_its_high() -> None:
    cursor = Cursor()
    cursor.take([2, 4], T0, holes=False, hole_wait=WAIT)
    assert (cursor.high, cursor.missing()) == (4, [])


def test_the_keepers_port_still_names_the_cursor() -> None:
    assert alarm_port.Cursor is Cursor
