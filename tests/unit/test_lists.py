"""The lists' shaping (``gateway.service.lists.Lists``) over a fake store: the next page's cursor only when a page
follows, the supply state from the active meters, a meter's last success from every source."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace
from typing import Any

from drivers.base import Reading
from gateway.api.list_schemas import AccountList, AuditList, MeterList, fen
from gateway.service.lists import AccountFilter, AuditFilter, ListStore, Lists, MeterFilter

T0 = dt.datetime(2026, 11, 23, tzinfo=dt.UTC)


class FakeListStore(ListStore):
    """Rows kept in lists, filtered by nothing: the store's queries are tested on real databases."""

    def __init__(self) -> None:
        self.account_rows: list[Any] = []
        self.account_meters: dict[str, list[Any]] = {}
        self.meter_rows: list[Any] = []
        self.audit_rows: list[Any] = []
        self.asked: list[int] = []

    async def accounts(self, which: Any, limit: int) -> tuple[list[Any], dict[str, list[Any]]]:
        self.asked.append(limit)
        return self.account_rows[:limit], self.account_meters

    async def meters(self, which: Any, limit: int) -> list[Any]:
        return self.meter_rows[:limit]

    async def commands(self, which: Any, limit: int) -> list[Any]:
        return []

    async def notices(self, which: Any, limit: int) -> list[Any]:
        return []

    async def audit(self, which: Any, limit: int) -> list[Any]:
        return self.audit_rows[:limit]


def _account(account_id: str, supply: str = "connected") -> SimpleNamespace:
    return SimpleNamespace(id=account_id, balance_fen=-320, supply=supply, status="open", tariff="flat",
                           credit_class="", protected=1, deferred_reason="", updated_at=T0)


def _meter(meter_id: str, relay: str = "closed", fault: str = "") -> SimpleNamespace:
    return SimpleNamespace(id=meter_id, relay=relay, relay_fault=fault)


async def test_a_page_has_a_cursor_only_when_more_rows_follow() -> None:
    store = FakeListStore()
    store.account_rows = [_account(f"A-{n}") for n in range(3)]
    lists = Lists(store, {})
    page = AccountList.model_validate(await lists.accounts(AccountFilter(limit=2)))
    assert [r.id for r in page.data] == ["A-0", "A-1"] and page.next_after == "A-1" and store.asked == [3]
    page = AccountList.model_validate(await lists.accounts(AccountFilter(limit=3)))
    assert len(page.data) == 3 and page.next_after is None


async def test_an_account_row_shows_the_supply_its_meters_confirmed() -> None:
    store = FakeListStore()
    store.account_rows = [_account("A-1", "disconnected"), _account("A-2", "disconnected")]
    store.account_meters = {"A-1": [_meter("M-1", "open"), _meter("M-2", "open")],
                            "A-2": [_meter("M-3", "open"), _meter("M-4", "closed", "disconnect_failed")]}
    rows = (await Lists(store, {}).accounts(AccountFilter()))["data"]
    assert [(r["state"], r["meters"]) for r in rows] == [("disconnected", ["M-1", "M-2"]),
                                                         ("disconnect_failed", ["M-3", "M-4"])]
    assert rows[0] | {"state": None} == {
        "id": "A-1", "balance": "-3.20", "state": None, "supply": "disconnected", "status": "open",
        "tariff": "flat", "credit_class": None, "protected": True, "meters": ["M-1", "M-2"],
        "disconnect_deferred_because": None, "updated_at": T0}


async def test_a_meter_last_success_is_the_latest_of_its_row_its_newest_reading_and_the_unstored_one() -> None:
    store = FakeListStore()
    base = dict(account_id="A-1", status="active", bus_id="b", unit_id=1, address=None, model="m", relay="closed",
                relay_fault="", health="online", consecutive_failures=0)
    store.meter_rows = [
        SimpleNamespace(id="M-1", **base, last_success_at=T0, newest_taken_at=T0 + dt.timedelta(minutes=1)),
        SimpleNamespace(id="M-2", **base, last_success_at=T0 + dt.timedelta(minutes=2), newest_taken_at=T0),
        SimpleNamespace(id="M-3", **base, last_success_at=None, newest_taken_at=None),
        SimpleNamespace(id="M-4", **base, last_success_at=None, newest_taken_at=T0)]
    unstored = {"M-4": Reading("M-4", T0 + dt.timedelta(minutes=9), 100)}
    page = MeterList.model_validate(await Lists(store, unstored).meters(MeterFilter()))
    assert [r.last_success_at for r in page.data] == [T0 + dt.timedelta(minutes=1), T0 + dt.timedelta(minutes=2),
                                                      None, T0 + dt.timedelta(minutes=9)]


async def test_audit_rows_keep_their_detail() -> None:
    store = FakeListStore()
    store.audit_rows = [SimpleNamespace(id=n, at=T0, actor="ops", action="account.hold", target="A-1",
                                        detail={"reason": "promised"} if n % 2 else None) for n in (9, 8, 7)]
    page = AuditList.model_validate(await Lists(store, {}).audit(AuditFilter(limit=2)))
    assert [(e.id, e.detail) for e in page.data] == [(9, {"reason": "promised"}), (8, None)]
    assert page.next_before_id == 8


def test_balance_bounds_in_fen() -> None:
    assert [fen(v) for v in ("0", "-0.00", "12.5", "-5", "-0.01", None)] == [0, 0, 1250, -500, -1, None]
