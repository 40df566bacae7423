"""Loading and saving prepaid accounts, and writing what they recorded (ledger entries, outbox events)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import sqlalchemy as sa

from gateway.adapters import tables as t
from gateway.domain import events as ev
from gateway.domain.account import MeterCursor, PrepaidAccount, Supply
from gateway.service.catalog import AccountSpec, Catalog
from gateway.service.uow import UnitOfWork

__all__ = ["UnknownAccount", "UnknownMeter", "ensure_catalog_rows", "load_account", "load_accounts", "save_account",
           "save_accounts"]


class UnknownAccount(LookupError):
    """No account with that id."""


class UnknownMeter(LookupError):
    """No meter with that id."""


async def ensure_catalog_rows(uow: UnitOfWork, catalog: Catalog, now: dt.datetime) -> None:
    """Create database rows for accounts and meters the settings name and the database does not have yet.

    A new account starts with its opening balance as the first ledger entry; existing ones are left alone.
    """
    existing = set((await uow.execute(sa.select(t.accounts.c.id))).scalars())
    new = [spec for spec in catalog.accounts.values() if spec.id not in existing]
    if new:
        await uow.execute(sa.insert(t.accounts), [dict(
            id=spec.id, balance_fen=spec.opening_balance_fen, supply=Supply.CONNECTED.value, warned_level=0,
            deferred_reason="", period_wh=0, period_charged_fen=0, updated_at=now) for spec in new])
        await uow.execute(sa.insert(t.ledger), [dict(
            account_id=spec.id, kind="opening", amount_fen=spec.opening_balance_fen,
            balance_after_fen=spec.opening_balance_fen, created_at=now, reference="settings") for spec in new])
    known = {row.id: row.account_id for row in await uow.execute(sa.select(t.meters.c.id, t.meters.c.account_id))}
    new_meters = [dict(id=m.id, account_id=m.account_id) for m in catalog.meters.values() if m.id not in known]
    if new_meters:
        await uow.execute(sa.insert(t.meters), new_meters)
    for meter in catalog.meters.values():
        if meter.id in known and known[meter.id] != meter.account_id:
            await uow.execute(sa.update(t.meters).where(t.meters.c.id == meter.id).values(
                account_id=meter.account_id, billed_wh=None, billed_at=None))


def _spec(catalog: Catalog, account_id: str) -> AccountSpec:
    spec = catalog.accounts.get(account_id)
    if spec is None:
        raise UnknownAccount(account_id)
    return spec


async def load_account(uow: UnitOfWork, catalog: Catalog, account_id: str) -> PrepaidAccount:
    """Load an account for change (row-locked on PostgreSQL)."""
    _spec(catalog, account_id)
    accounts = await load_accounts(uow, catalog, [account_id])
    if account_id not in accounts:
        raise UnknownAccount(account_id)
    return accounts[account_id]


async def load_accounts(uow: UnitOfWork, catalog: Catalog, account_ids: list[str]) -> dict[str, PrepaidAccount]:
    """Load accounts for change, row-locked on PostgreSQL (in id order, so that writers never deadlock)."""
    if not account_ids:
        return {}
    rows = await uow.execute(sa.select(t.accounts).where(t.accounts.c.id.in_(sorted(account_ids)))
                             .order_by(t.accounts.c.id).with_for_update())
    return {row.id: _account(catalog, row) for row in rows if row.id in catalog.accounts}


def _account(catalog: Catalog, row: Any) -> PrepaidAccount:
    spec = catalog.accounts[row.id]
    return PrepaidAccount(
        id=row.id, tariff=spec.tariff, thresholds=spec.thresholds, balance_fen=row.balance_fen,
        supply=Supply(row.supply), warned_level=row.warned_level, protected=spec.protected,
        hold_until=row.hold_until, period_wh=row.period_wh, period_charged_fen=row.period_charged_fen,
        deferred_reason=row.deferred_reason)


async def load_cursor(uow: UnitOfWork, catalog: Catalog, meter_id: str) -> MeterCursor:
    row = (await uow.execute(sa.select(t.meters.c.billed_wh, t.meters.c.billed_at)
                             .where(t.meters.c.id == meter_id))).one_or_none()
    spec = catalog.meters.get(meter_id)
    if row is None or spec is None:
        raise UnknownMeter(meter_id)
    return MeterCursor(meter_id, row.billed_wh, row.billed_at, spec.max_power_w)


async def save_cursor(uow: UnitOfWork, cursor: MeterCursor) -> None:
    await uow.execute(sa.update(t.meters).where(t.meters.c.id == cursor.meter_id)
                      .values(billed_wh=cursor.energy_wh, billed_at=cursor.taken_at))


async def save_accounts(uow: UnitOfWork, accounts: list[PrepaidAccount], now: dt.datetime) -> None:
    """Write the state of several accounts in one executemany (their events and entries are the caller's)."""
    if not accounts:
        return
    b = sa.bindparam
    statement = sa.update(t.accounts).where(t.accounts.c.id == b("_id")).values(
        balance_fen=b("balance_fen"), supply=b("supply"), warned_level=b("warned_level"),
        deferred_reason=b("deferred_reason"), hold_until=b("hold_until"), period_wh=b("period_wh"),
        period_charged_fen=b("period_charged_fen"), updated_at=b("updated_at"))
    await uow.execute(statement, [_state(a, now) | {"_id": a.id} for a in accounts])


def _state(account: PrepaidAccount, now: dt.datetime) -> dict[str, Any]:
    return dict(balance_fen=account.balance_fen, supply=account.supply.value, warned_level=account.warned_level,
                deferred_reason=account.deferred_reason, hold_until=account.hold_until, period_wh=account.period_wh,
                period_charged_fen=account.period_charged_fen, updated_at=now)


async def save_account(uow: UnitOfWork, account: PrepaidAccount, now: dt.datetime,
                       entries: list[dict[str, Any]] = ()) -> list[int]:  # type: ignore[assignment]
    """Write the account's state, its new ledger entries and its events (to the outbox) in the open transaction.

    Returns the ids of the ledger entries written.
    """
    await uow.execute(sa.update(t.accounts).where(t.accounts.c.id == account.id).values(**_state(account, now)))
    ids = []
    for entry in entries:
        result = await uow.execute(sa.insert(t.ledger).values(account_id=account.id, created_at=now, **entry)
                                   .returning(t.ledger.c.id))
        ids.append(result.scalar_one())
    for event in account.events:
        await uow.add_outbox(event_topic(event), event_payload(event, now), now)
    account.events.clear()
    return ids


def event_topic(event: ev.Event) -> str:
    if isinstance(event, ev.AccountCharged | ev.PaymentReceived):
        return f"accounts/{event.account_id}/balance"
    if isinstance(event, ev.ReadingQuarantined | ev.DisconnectDeferred):
        return "alarms"
    return f"accounts/{event.account_id}/events"


def event_payload(event: ev.Event, now: dt.datetime) -> dict[str, Any]:
    """The JSON payload of an event: its fields (shallow: events hold plain values), type and time."""
    names = _FIELDS.get(type(event))
    if names is None:
        names = _FIELDS[type(event)] = tuple(f.name for f in dataclasses.fields(event))
    payload = {name: _plain(getattr(event, name)) for name in names}
    payload["type"] = type(event).__name__
    payload["at"] = now.isoformat()
    return payload


_FIELDS: dict[type, tuple[str, ...]] = {}


def _plain(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if hasattr(value, "value") and not isinstance(value, int | str | float):  # enums
        return value.value
    return value
