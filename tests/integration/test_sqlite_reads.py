"""The SQLite fast path for single reads (``database.sqlite_direct_reads``, gateway/adapters/sqlite_reads.py)
gives what the portable read store gives, row for row and view for view, on the same file; and when SQLite is
busy it goes the portable way instead of failing."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from drivers.base import Reading, RelayState
from gateway.adapters.read_store import SqlReadStore
from gateway.adapters.sql import SqlStorage
from gateway.adapters.sqlite_reads import SqliteReadStore
from gateway.bootstrap import Gateway
from gateway.service.views import Views
from tests.integration.api_support import site

T0 = dt.datetime(2026, 11, 23, 8, 0, tzinfo=dt.UTC)


def _fields(row: Any, names: Any = None) -> dict[str, Any] | None:
    """A row's values by column name (by default its own columns: the ones the views use)."""
    if row is None:
        return None
    return {name: getattr(row, name) for name in names or row._fields}


@pytest.fixture
async def gateway(tmp_path: Path) -> Any:
    settings = site(tmp_path)
    settings = settings.model_copy(update={"database": settings.database.model_copy(
        update={"sqlite_direct_reads": True})})
    async with Gateway(settings, base_dir=tmp_path, run_buses=False, clock=lambda: T0) as gw:
        # readings, one with a relay and power, and a payment: rows with times, JSON state and booleans
        await gw.service.record_reading(Reading("M-1", T0, 1_000_000, power_w=1500, voltage_v=229.5,
                                                current_a=6.5, relay=RelayState.CLOSED))
        await gw.service.record_reading(Reading("M-1", T0 + dt.timedelta(minutes=5), 1_002_000))
        await gw.service.record_reading(Reading("M-3", T0, 50_000))
        yield gw


async def test_direct_reads_are_the_portable_reads(gateway: Any, tmp_path: Path) -> None:
    direct = gateway.service.views.store
    assert isinstance(direct, SqliteReadStore)
    portable = SqlReadStore(SqlStorage(gateway.engine))
    for account_id in ("A-1", "A-2", "A-3", "nobody"):
        a, b = await portable.account(account_id), await direct.account(account_id)
        assert _fields(a.account, b.account and b.account._fields) == _fields(b.account)
        assert [_fields(m) for m in b.meters] == [_fields(m) for m in a.meters]
    for meter_id, account_id in (("M-1", "A-1"), ("M-2", "A-2"), ("M-3", "A-3"), ("nothing", "A-1")):
        a, b = await portable.meter(meter_id, account_id), await direct.meter(meter_id, account_id)
        assert _fields(a.meter, b.meter and b.meter._fields) == _fields(b.meter)
        assert _fields(a.newest, b.newest and b.newest._fields) == _fields(b.newest)
        assert b.account_state == a.account_state
    # and so are the views the API shows
    views = (Views(portable, gateway.catalog, gateway.service.writer.freshness.latest), gateway.service.views)
    for account_id in ("A-1", "A-2", "A-3"):
        assert await views[1].account(account_id) == await views[0].account(account_id)
    for meter_id in ("M-1", "M-2", "M-3"):
        assert await views[1].meter(meter_id) == await views[0].meter(meter_id)
    assert (await views[1].account("A-1"))["balance"] != "10.00"  # (the readings were billed: a moved balance)


async def test_a_payment_is_seen_by_the_next_direct_read(gateway: Any) -> None:
    before = await gateway.service.views.account("A-3")
    await gateway.service.record_payment(source="billing", payment_id="P-1", account_id="A-3", amount_fen=500,
                                         paid_at=T0, channel="cash")
    after = await gateway.service.views.account("A-3")
    assert after["balance"] != before["balance"]


async def test_a_direct_read_that_fails_goes_the_portable_way(gateway: Any, tmp_path: Path) -> None:
    direct = gateway.service.views.store
    first = (await direct.account("A-1")).account
    expected = _fields(first)
    # SQLite refuses the direct read (busy, or here: the file can't be opened): the portable read answers
    path, direct.path = direct.path, str(tmp_path / "elsewhere" / "gw.db")
    direct.close()
    assert _fields((await direct.account("A-1")).account, first._fields) == expected
    assert (await direct.meter("M-1", "A-1")).meter is not None and direct.fallbacks == 2
    direct.path = path
    assert _fields((await direct.account("A-1")).account) == expected and direct.fallbacks == 2


async def test_a_database_whose_path_holds_uri_characters_is_read_directly(gateway: Any, tmp_path: Path) -> None:
    odd = tmp_path / "site #1 100% ?"
    odd.mkdir()
    gateway.service.views.store.close()
    for name in ("gw.db", "gw.db-wal", "gw.db-shm"):
        if (tmp_path / name).exists():
            (odd / name).write_bytes((tmp_path / name).read_bytes())
    direct = SqliteReadStore(SqlStorage(gateway.engine), str(odd / "gw.db"))
    try:
        assert (await direct.account("A-1")).account is not None and direct.fallbacks == 0
    finally:
        direct.close()


async def test_the_writers_payment_lookups_are_the_portable_ones(gateway: Any) -> None:
    service = gateway.service
    for n in range(300):  # more than one statement's worth of keys
        await service.record_payment(source="billing", payment_id=f"P-{n}", account_id=f"A-{1 + n % 3}",
                                     amount_fen=100 + n, paid_at=T0 if n % 2 else None, channel="cash")
    await service.reverse_payment(source="billing", payment_id="P-7", reason="bounced", reversed_by="admin-key")
    keys = {("billing", f"P-{n}") for n in range(0, 320, 3)} | {("elsewhere", "P-1")}
    async with service.uow(readonly=True) as uow:
        portable = await uow.payments.get(keys)
    direct = service.views.store.stored_payments(keys)
    assert direct == portable and len(direct) == 100
    assert direct[("billing", "P-3")]["paid_at"] == T0 and direct[("billing", "P-0")]["paid_at"] is None
    assert service.writer.stored_payments is not None  # the writer looks them up so


async def test_a_payment_posted_again_is_found_by_the_direct_lookup(gateway: Any, monkeypatch: Any) -> None:
    service = gateway.service
    first = await service.record_payment(source="billing", payment_id="P-1", account_id="A-1", amount_fen=500)
    looked: list[int] = []
    lookup = service.writer.stored_payments

    def counted(keys: Any) -> Any:
        found = lookup(keys)
        looked.append(len(found))
        return found

    monkeypatch.setattr(service.writer, "stored_payments", counted)
    again = await service.record_payment(source="billing", payment_id="P-1", account_id="A-1", amount_fen=500)
    assert (first.created, again.created, again.record) == (True, False, first.record)
    assert looked == [1]
