"""The balance engine: charges without drift, thresholds, guardrails, disconnect and reconnect decisions."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from gateway.domain import events as ev
from gateway.domain.account import Decision, MeterCursor, PrepaidAccount, Supply, Thresholds
from gateway.domain.money import cost_fen
from gateway.domain.tariffs import FlatTariff

T0 = dt.datetime(2026, 11, 23, 0, 0, tzinfo=dt.UTC)
PRICE = Decimal("0.5283")


def account(balance: int = 10_000, **thresholds: int) -> PrepaidAccount:
    return PrepaidAccount("A-1", FlatTariff(PRICE), Thresholds(**thresholds), balance_fen=balance)


def at(minutes: float) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


def test_first_reading_sets_the_baseline_only() -> None:
    acc, cur = account(), MeterCursor("M-1")
    assert acc.apply_reading(cur, 123_456, at(0)) == 0
    assert (cur.energy_wh, acc.balance_fen) == (123_456, 10_000)


@given(st.lists(st.integers(min_value=0, max_value=500), min_size=1, max_size=200))
def test_charges_never_drift(deltas: list[int]) -> None:
    """The sum of charges equals the tariff applied to the total consumption, however many readings."""
    acc, cur = account(balance=10**9), MeterCursor("M-1")
    acc.apply_reading(cur, 1000, at(0))
    energy = 1000
    for i, delta in enumerate(deltas, start=1):
        energy += delta
        acc.apply_reading(cur, energy, at(i))
    charged = sum(e.amount_fen for e in acc.events if isinstance(e, ev.AccountCharged))
    assert charged == cost_fen(energy - 1000, PRICE)
    assert acc.balance_fen == 10**9 - charged


def test_backwards_and_implausible_readings_are_quarantined() -> None:
    acc, cur = account(), MeterCursor("M-1", max_power_w=10_000)
    acc.apply_reading(cur, 5_000, at(0))
    assert acc.apply_reading(cur, 4_000, at(1)) == 0
    # 10 kW for one minute is ~167 Wh; 100 kWh is not plausible
    assert acc.apply_reading(cur, 105_000, at(2)) == 0
    quarantined = [e for e in acc.events if isinstance(e, ev.ReadingQuarantined)]
    assert [q.energy_wh for q in quarantined] == [4_000, 105_000]
    assert cur.energy_wh == 5_000 and acc.balance_fen == 10_000


def test_one_warning_per_crossing_and_rearm() -> None:
    acc, cur = account(balance=2_100, warning1_fen=2_000, warning2_fen=500), MeterCursor("M-1")
    acc.apply_reading(cur, 0, at(0))
    for i, energy in enumerate((1_000, 2_000, 3_000), start=1):  # each kWh ~ 53 fen: crosses warning 1 once
        acc.apply_reading(cur, energy, at(i * 10))
    assert [e.level for e in acc.events if isinstance(e, ev.CreditLow)] == [1]
    acc.apply_payment("billing", "P-1", 1_000)  # back above warning 1: re-armed
    acc.events.clear()
    acc.apply_reading(cur, 22_000, at(100))  # 19 kWh ~ 10.04 yuan: below warning 1 again
    assert [e.level for e in acc.events if isinstance(e, ev.CreditLow)] == [1]


def test_disconnect_at_the_disconnect_point_and_reconnect_after_payment() -> None:
    acc, cur = account(balance=100, overdraft_fen=50, reconnect_min_topup_fen=100), MeterCursor("M-1")
    acc.apply_reading(cur, 0, at(0))
    acc.apply_reading(cur, 2_000, at(30))  # ~106 fen: balance -6, above -50
    assert acc.evaluate(at(30)) is Decision.NONE
    acc.apply_reading(cur, 3_000, at(60))  # another ~53 fen: -59 <= -50
    assert acc.evaluate(at(60)) is Decision.DISCONNECT
    assert acc.supply is Supply.DISCONNECTED
    assert acc.evaluate(at(61)) is Decision.NONE  # already disconnected: no second command
    acc.apply_payment("billing", "P-1", 100)  # 41 fen: below the reconnect threshold (-50 + 100 = 50)
    assert acc.evaluate(at(62)) is Decision.NONE
    acc.apply_payment("billing", "P-2", 10)
    assert acc.evaluate(at(63)) is Decision.RECONNECT
    assert acc.supply is Supply.CONNECTED


def test_guardrails_defer_a_disconnect_and_record_the_reason_once() -> None:
    acc = account(balance=-10)
    acc.protected = True
    assert acc.evaluate(at(0)) is Decision.NONE
    assert acc.evaluate(at(1)) is Decision.NONE
    deferred = [e for e in acc.events if isinstance(e, ev.DisconnectDeferred)]
    assert [d.reason for d in deferred] == ["protected"]
    acc.protected = False
    acc.hold_until = at(10)
    assert acc.evaluate(at(5)) is Decision.NONE
    assert acc.evaluate(at(6), readings_ok=True) is Decision.NONE
    assert acc.evaluate(at(11), readings_ok=False, why_not_ok="meter M-1 reading stale") is Decision.NONE
    assert [e.reason for e in acc.events if isinstance(e, ev.DisconnectDeferred)] == [
        "protected", "operator hold", "meter M-1 reading stale"]
    assert acc.evaluate(at(12)) is Decision.DISCONNECT  # the reason ended: the disconnect happens
