"""Values the domain refuses before they change anything: times it can't hold, energies no meter shows; and the
emergency-credit repayments named by the payment pair, read from either stored form."""

from __future__ import annotations

import datetime as dt

import pytest

from gateway.domain.account import PrepaidAccount
from gateway.domain.emergency import EmergencyCredit
from gateway.domain.errors import InvalidAmount, InvalidTime
from gateway.domain.metering import MAX_ENERGY_WH
from gateway.domain.tariff_config import tariff_from_dict

T0 = dt.datetime(2026, 11, 23, 8, tzinfo=dt.UTC)
FLAT = tariff_from_dict({"kind": "flat", "price": "1.00"})


def account() -> PrepaidAccount:
    acc = PrepaidAccount("A-1", FLAT, balance_fen=10_000)
    acc.add_meter("M-1")
    acc.apply_reading("M-1", 1_000, T0)
    return acc


def test_a_hold_is_stored_in_utc_and_must_end_after_now() -> None:
    acc = account()
    acc.place_hold(dt.datetime(2026, 11, 24, 16, tzinfo=dt.timezone(dt.timedelta(hours=8))), now=T0)
    assert acc.hold_until == dt.datetime(2026, 11, 24, 8, tzinfo=dt.UTC) and acc.hold_until.tzinfo is dt.UTC
    state = acc.state_dict()
    with pytest.raises(InvalidTime):
        acc.place_hold(T0 - dt.timedelta(seconds=1), now=T0)
    with pytest.raises(ValueError, match="out of range"):
        acc.place_hold(dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.timezone(dt.timedelta(hours=-14))), now=T0)
    assert acc.state_dict() == state


def test_a_baseline_is_not_read_in_the_future_nor_beyond_any_register() -> None:
    acc = account()
    state = acc.state_dict()
    with pytest.raises(InvalidTime):
        acc.rebase_meter("M-1", energy_wh=0, taken_at=T0 + dt.timedelta(minutes=1), now=T0)
    with pytest.raises(InvalidAmount):
        acc.rebase_meter("M-1", energy_wh=MAX_ENERGY_WH + 1, taken_at=T0, now=T0)
    assert acc.state_dict() == state
    acc.rebase_meter("M-1", energy_wh=0, taken_at=T0, now=T0)
    assert acc.cursors["M-1"].energy_wh == 0


@pytest.mark.parametrize("energy", [-1, MAX_ENERGY_WH + 1, 2**63])
def test_a_reading_no_meter_can_show_is_refused(energy: int) -> None:
    acc = account()
    state = acc.state_dict()
    with pytest.raises(InvalidAmount):
        acc.apply_reading("M-1", energy, T0 + dt.timedelta(minutes=1))
    assert acc.state_dict() == state and not acc.entries


def test_repayments_are_named_by_the_pair() -> None:
    credit = EmergencyCredit(outstanding_fen=1_000)
    credit.repay_from(("col/x", "y"), 600)
    credit.repay_from(("col", "x/y"), 600)
    assert credit.repaid == {("col/x", "y"): [600, 600], ("col", "x/y"): [600, 400]}
    assert credit.undo_for_reversal(("col", "x/y"), 600) == 400  # not the other payment's 600
    round_trip = EmergencyCredit.from_dict(credit.to_dict())
    assert round_trip == credit


def test_repayments_stored_before_the_pair_are_read() -> None:
    old = EmergencyCredit.from_dict({"outstanding_fen": 0, "repaid": {"bank/2026/11/7": [500, 200]}})
    assert old.repaid == {("bank", "2026/11/7"): [500, 200]}
