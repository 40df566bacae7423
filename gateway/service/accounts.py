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

__all__ = ["UnknownAccount", "UnknownMeter", "ensure_catalog_rows", "load_account", "save_account"]


class UnknownAccount(LookupError):
    """No account with that id."""


class UnknownMeter(LookupError):
    """No meter with that id."""


async def ensure_catalog_rows(uow: UnitOfWork, catalog: Catalog, now: dt.datetime) -> None:
    """Create database rows for accounts and meters the settings name and the database does not have yet.

    A new account starts with its opening balance as the first ledger entry; existing ones are left alone.
    """
    existing = set((await uow.execute(sa.select(t.accounts.c.id))).scalars())
    for spec in catalog.accounts.values():
        if spec.id in existing:
            continue
        await uow.execute(sa.insert(t.accounts).values(
            id=spec.id, balance_fen=spec.opening_balance_fen, supply=Supply.CONNECTED.value, warned_level=0,
            deferred_reason="", period_wh=0, period_charged_fen=0, updated_at=now))
        await uow.execute(sa.insert(t.ledger).values(
            account_id=spec.id, kind="opening", amount_fen=spec.opening_balance_fen,
            balance_after_fen=spec.opening_balance_fen, created_at=now, reference="settings"))
    known = {row.id: row.account_id for row in await uow.execute(sa.select(t.meters.c.id, t.meters.c.account_id))}
    for meter in catalog.meters.values():
        if meter.id not in known:
            await uow.execute(sa.insert(t.meters).values(id=meter.id, account_id=meter.account_id))
        elif known[meter.id] != meter.account_id:
            await uow.execute(sa.update(t.meters).where(t.meters.c.id == meter.id).values(
                account_id=meter.account_id, billed_wh=None, billed_at=None))


def _spec(catalog: Catalog, account_id: str) -> AccountSpec:
    spec = catalog.accounts.get(account_id)
    if spec is None:
        raise UnknownAccount(account_id)
    return spec


async def load_account(uow: UnitOfWork, catalog: Catalog, account_id: str) -> PrepaidAccount:
    """Load an account for change (row-locked on PostgreSQL)."""
    spec = _spec(catalog, account_id)
    row = (await uow.execute(
        sa.select(t.accounts).where(t.accounts.c.id == account_id).with_for_update())).one_or_none()
    if row is None:
        raise UnknownAccount(account_id)
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


async def save_account(uow: UnitOfWork, account: PrepaidAccount, now: dt.datetime,
                       entries: list[dict[str, Any]] = ()) -> list[int]:  # type: ignore[assignment]
    """Write the account's state, its new ledger entries and its events (to the outbox) in the open transaction.

    Returns the ids of the ledger entries written.
    """
    await uow.execute(sa.update(t.accounts).where(t.accounts.c.id == account.id).values(
        balance_fen=account.balance_fen, supply=account.supply.value, warned_level=account.warned_level,
        deferred_reason=account.deferred_reason, hold_until=account.hold_until, period_wh=account.period_wh,
        period_charged_fen=account.period_charged_fen, updated_at=now))
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
    payload = dataclasses.asdict(event)
    payload["type"] = type(event).__name__
    payload["at"] = now.isoformat()
    return payload
