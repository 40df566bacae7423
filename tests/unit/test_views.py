"""The read models (``gateway.service.views``) on stored rows from a fake store: what the API shows."""

from __future__ import annotations

import dataclasses
import datetime as dt
from decimal import Decimal
from types import SimpleNamespace

import pytest

from drivers.base import Reading, RelayState
from gateway.api.schemas import AccountPublic, LedgerList, MeterPublic, ReadingList
from gateway.domain.account import Thresholds
from gateway.domain.tariffs import FlatTariff
from gateway.service.catalog import AccountSpec, Catalog, MeterSpec
from gateway.service.commands import CommandRecord
from gateway.service.errors import AccountUnreadable, UnknownAccount, UnknownCommand, UnknownMeter
from gateway.service.views import Views
from tests.fakes import T0, FakeReadStore


def Held() -> dict[str, Reading]:  # noqa: N802 - the readings the writer did not store, per meter
    return {}


def catalog() -> Catalog:
    tariff = FlatTariff(Decimal("0.56"))
    return Catalog(
        accounts={"A-1": AccountSpec("A-1", tariff, Thresholds(2000, 500, 0, 100), meter_ids=("M-1", "M-2"))},
        meters={"M-1": MeterSpec("M-1", "A-1", "bus1", groups=("street-1",)), "M-2": MeterSpec("M-2", "A-1", "bus1")})


def meter_row(meter_id: str, relay: str = "closed", fault: str = "", last_success_at: dt.datetime | None = None
              ) -> SimpleNamespace:
    return SimpleNamespace(id=meter_id, account_id="A-1", relay=relay, relay_fault=fault, health="online",
                           consecutive_failures=0, last_error=None, last_success_at=last_success_at)


def reading_row(row_id: int, taken_at: dt.datetime, energy_wh: int, meter_id: str = "M-1") -> SimpleNamespace:
    return SimpleNamespace(id=row_id, meter_id=meter_id, taken_at=taken_at, energy_wh=energy_wh, power_w=100,
                           voltage_v=230.0, current_a=0.5, relay="closed", billed=True)


def store_with_account(state: dict[str, object] | None = None, *, supply: str = "connected") -> FakeReadStore:
    store = FakeReadStore()
    store.accounts["A-1"] = SimpleNamespace(id="A-1", balance_fen=1234, supply=supply, deferred_reason="",
                                            updated_at=T0, state=state if state is not None else {"balance_fen": 1234})
    store.meters = {"M-1": meter_row("M-1"), "M-2": meter_row("M-2")}
    return store


async def test_account_shows_balance_relays_and_the_confirmed_state() -> None:
    store = store_with_account(supply="disconnected")
    store.meters["M-2"] = meter_row("M-2", relay="open")
    view = await Views(store, catalog(), Held()).account("A-1")
    shown = AccountPublic.model_validate(view)  # the API's shape
    assert shown.balance == "12.34"
    assert shown.relays == {"M-1": "closed", "M-2": "open"}
    assert shown.supply == "disconnected"
    assert shown.state == "disconnecting"  # never disconnected over a contact not read back open
    store.meters["M-1"] = meter_row("M-1", relay="open")
    assert (await Views(store, catalog(), Held()).account("A-1"))["state"] == "disconnected"


async def test_unknown_and_unreadable_accounts() -> None:
    views = Views(FakeReadStore(), catalog(), Held())
    with pytest.raises(UnknownAccount):
        await views.account("A-1")  # in the catalog, no row yet
    with pytest.raises(UnknownAccount):
        await views.account("A-9")
    with pytest.raises(UnknownAccount):
        await views.ledger("A-9", limit=10, before_id=None)
    broken = store_with_account({"balance_fen": 1234, "hold_until": "99999-01-01T00:00:00+00:00"})
    with pytest.raises(AccountUnreadable):
        await Views(broken, catalog(), Held()).account("A-1")


async def test_meter_shows_the_newest_reading_whether_stored_or_held_in_memory() -> None:
    store = store_with_account()
    store.reading_rows = [reading_row(1, T0, 1000), reading_row(2, T0 + dt.timedelta(seconds=60), 1010)]
    held = Held()
    views = Views(store, catalog(), held)

    view = MeterPublic.model_validate(await views.meter("M-1"))
    assert view.last_reading is not None and view.last_reading.energy_wh == 1010
    assert view.last_success_at == T0 + dt.timedelta(seconds=60)  # the row's is older (None): the reading's
    assert view.groups == ["street-1"] and view.bus == "bus1"

    later = Reading("M-1", T0 + dt.timedelta(seconds=90), 1010, relay=RelayState.CLOSED)
    held["M-1"] = later  # the same energy: not stored
    view = MeterPublic.model_validate(await views.meter("M-1"))
    assert view.last_reading is not None
    assert (view.last_reading.taken_at, view.last_reading.billed, view.last_reading.relay) == (
        later.taken_at, True, "closed")
    assert view.last_success_at == later.taken_at

    store.reading_rows.append(reading_row(3, T0 + dt.timedelta(seconds=120), 1020))  # stored after the held one
    assert (await views.meter("M-1"))["last_reading"]["energy_wh"] == 1020


async def test_meter_shows_its_quarantined_reading() -> None:
    pending = {"kind": "backwards", "reason": "energy went down", "reading": {"energy_wh": 5}}
    store = store_with_account({"balance_fen": 1234, "meters": {"M-1": {"pending": pending}}})
    view = MeterPublic.model_validate(await Views(store, catalog(), Held()).meter("M-1"))
    assert view.quarantine is not None and view.quarantine["kind"] == "backwards"
    assert (await Views(store, catalog(), Held()).meter("M-2"))["quarantine"] is None


async def test_unknown_meters() -> None:
    store = store_with_account()
    del store.meters["M-2"]
    views = Views(store, catalog(), Held())
    for meter_id in ("M-9", "M-2"):  # not configured; configured without a row
        with pytest.raises(UnknownMeter):
            await views.meter(meter_id)
    with pytest.raises(UnknownMeter):
        await views.readings("M-9", limit=10, before_id=None)


async def test_pages_point_to_the_next_one_only_when_full() -> None:
    store = store_with_account()
    store.reading_rows = [reading_row(i, T0 + dt.timedelta(minutes=i), 1000 + i) for i in range(1, 6)]
    store.ledger_rows = [SimpleNamespace(id=i, account_id="A-1", kind="payment", amount_fen=100 * i,
                                         balance_after_fen=100 * i, created_at=T0, reference=f"billing/P-{i}",
                                         payment_source="billing", payment_id=f"P-{i}", meter_id=None,
                                         energy_wh=None, period=None, detail=None) for i in range(1, 4)]
    views = Views(store, catalog(), Held())

    page = ReadingList.model_validate(await views.readings("M-1", limit=2, before_id=None))
    assert [r.energy_wh for r in page.data] == [1005, 1004] and page.next_before_id == 4
    page = ReadingList.model_validate(await views.readings("M-1", limit=2, before_id=2))
    assert [r.energy_wh for r in page.data] == [1001] and page.next_before_id is None

    ledger = LedgerList.model_validate(await views.ledger("A-1", limit=3, before_id=None))
    assert [e.amount for e in ledger.data] == ["3.00", "2.00", "1.00"] and ledger.next_before_id == 1


async def test_one_command() -> None:
    store = FakeReadStore()
    for i in range(3):
        at = T0 + dt.timedelta(minutes=i)
        store.command_records.append(CommandRecord(f"c{i}", "M-1", "open", "automatic", None, None, "confirmed", 1,
                                                   None, at, at, at + dt.timedelta(minutes=10)))
    views = Views(store, catalog(), Held())
    assert (await views.command("c0"))["created_at"] == T0
    with pytest.raises(UnknownCommand):
        await views.command("nope")
