"""The account's state round-trips through a JSON-able dict; ledger entries and events serialise too."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import pytest

from gateway.domain import events as ev
from gateway.domain.account import PrepaidAccount, Supply, Thresholds
from gateway.domain.ledger import EntryKind, LedgerEntry
from gateway.domain.policy import SitePolicy
from gateway.domain.state import STATE_VERSION
from gateway.domain.tariff_config import tariff_from_dict

T0 = dt.datetime(2026, 11, 23, tzinfo=dt.UTC)
TOU = tariff_from_dict({"kind": "tou", "prices": {"peak": "1.00", "valley": "0.50"},
                        "periods": {"08:00-22:00": "peak", "22:00-08:00": "valley"}})
SITE = SitePolicy(notice_period=dt.timedelta(hours=1))


def busy_account() -> PrepaidAccount:
    acc = PrepaidAccount("A-1", TOU, Thresholds(warning1_fen=500, warning2_fen=200), balance_fen=300, site=SITE,
                         credit_class="B")
    acc.add_meter("M-1", max_power_w=2_000, rollover_wh=10**9)
    acc.add_meter("M-2")
    acc.apply_reading("M-1", 1_000, T0, rates_wh=[0, 600, 0, 400])
    acc.apply_reading("M-1", 2_000, T0 + dt.timedelta(hours=1), rates_wh=[0, 1100, 0, 900])
    acc.apply_reading("M-1", 500, T0 + dt.timedelta(hours=2))  # quarantined
    acc.apply_reading("M-1", 600, T0 + dt.timedelta(hours=3))  # kept as the latest
    acc.grant_emergency_credit(T0)
    acc.apply_payment("billing", "P-1", 300)
    acc.set_protected(True)
    acc.place_hold(T0 + dt.timedelta(days=1))
    acc.apply_adjustment(-5_000, "test")
    acc.evaluate(T0 + dt.timedelta(hours=3))
    return acc


def test_state_round_trips_through_json() -> None:
    acc = busy_account()
    state = acc.state_dict()
    assert state["version"] == STATE_VERSION
    assert state["meters"]["M-1"]["pending"]["kind"] == "backwards"
    assert state["meters"]["M-1"]["pending"]["latest"]["energy_wh"] == 600
    assert state["billing"]["rate_wh"] == {"peak": 500, "valley": 500}
    assert state["emergency"] == {"outstanding_fen": 700, "granted_period": "2026-11",
                                  "granted_at": "2026-11-23T00:00:00Z", "repaid": [["billing", "P-1", 300, 300]]}
    assert state["deferred_reason"] == "protected" and state["hold_until"] == "2026-11-24T00:00:00Z"
    text = json.dumps(state)
    again = PrepaidAccount.from_state(json.loads(text), id="A-1", tariff=TOU, thresholds=acc.thresholds, site=SITE,
                                      credit_class="B")
    assert again.state_dict() == state
    assert again.balance_fen == acc.balance_fen and again.supply is Supply.CONNECTED
    assert again.cursors["M-1"].rates_wh == (0, 1100, 0, 900) and again.cursors["M-1"].rollover_wh == 10**9
    assert again.overdraft_fen == 2_000  # class B, from the site's table
    assert again.events == [] and again.entries == []


def test_an_empty_state_is_a_fresh_account() -> None:
    acc = PrepaidAccount.from_state({}, id="A-9", tariff=TOU, protected=True)
    assert (acc.balance_fen, acc.supply, acc.is_protected, acc.cursors) == (0, Supply.CONNECTED, True, {})
    with pytest.raises(ValueError, match="unsupported state version"):
        PrepaidAccount.from_state({"version": 99}, id="A-9", tariff=TOU)


def test_legacy_constructor_keywords_still_work() -> None:
    acc = PrepaidAccount(id="A-1", tariff=TOU, thresholds=Thresholds(), balance_fen=10, supply=Supply.DISCONNECTED,
                         warned_level=3, protected=False, hold_until=None, period_wh=1500, period_charged_fen=99,
                         deferred_reason="")
    assert (acc.period_wh, acc.period_charged_fen, acc.supply) == (1500, 99, Supply.DISCONNECTED)


def test_entries_and_events_serialise() -> None:
    entry = LedgerEntry(EntryKind.CHARGE, -12, 88, "M-1", meter_id="M-1", energy_wh=120, reading_wh=5120,
                        period="2026-11", at=T0)
    assert json.loads(json.dumps(entry.to_dict())) == {
        "kind": "charge", "amount_fen": -12, "balance_after_fen": 88, "reference": "M-1", "payment": None,
        "meter_id": "M-1",
        "energy_wh": 120, "reading_wh": 5120, "period": "2026-11", "at": "2026-11-23T00:00:00Z", "detail": ""}
    event = ev.DisconnectDeferred("A-1", "operator_hold", -5, "until x", T0)
    assert ev.event_dict(event) == {"type": "DisconnectDeferred", "account_id": "A-1", "reason": "operator_hold",
                                    "balance_fen": -5, "detail": "until x", "until": "2026-11-23T00:00:00Z"}
    for account_event in busy_account().events:
        json.dumps(ev.event_dict(account_event))


def test_thresholds_keep_their_old_shape() -> None:
    t = Thresholds(2000, 500, 300, 100)
    assert (t.disconnect_point_fen, t.reconnect_at_fen) == (-300, -200)
    assert Thresholds().disconnect_point_fen == 0  # overdraft None: no overdraft unless a credit class gives one
    assert Decimal("0.5") == TOU.prices["valley"]  # type: ignore[attr-defined]
