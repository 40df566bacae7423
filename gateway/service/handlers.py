"""The use cases: record a payment, record a reading, request a relay command.

Each runs in one unit of work and returns what the caller needs; the relay commands it creates are handed to
``on_command`` (the bus scheduler's wake-up) after the commit.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from drivers.base import Reading
from gateway.adapters import tables as t
from gateway.domain.account import Decision, PrepaidAccount
from gateway.service import accounts as repo
from gateway.service.catalog import Catalog
from gateway.service.commands import CommandRecord, create_command
from gateway.service.uow import UnitOfWork, UnitOfWorkFactory

__all__ = ["PaymentConflict", "PaymentResult", "Service"]


class PaymentConflict(Exception):
    """The same (source, payment_id) was already recorded with different content."""


@dataclass(frozen=True, slots=True)
class PaymentResult:
    created: bool  # False when this repeats an already recorded payment
    record: dict[str, Any]


class Service:
    """The gateway's use cases over one database."""

    def __init__(self, uow_factory: UnitOfWorkFactory, catalog: Catalog,
                 clock: Callable[[], dt.datetime] | None = None) -> None:
        self.uow = uow_factory
        self.catalog = catalog
        self.clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self.on_command: Callable[[CommandRecord], None] = lambda record: None

    # --- payments -----------------------------------------------------------------------------------------
    async def record_payment(self, *, source: str, payment_id: str, account_id: str, amount_fen: int,
                             paid_at: dt.datetime | None = None, channel: str | None = None) -> PaymentResult:
        """Credit a payment exactly once; a repeat returns the first result. Returns only after the commit."""
        for _ in range(3):
            try:
                return await self._record_payment(source, payment_id, account_id, amount_fen, paid_at, channel)
            except IntegrityError:
                continue  # another writer recorded the same payment id first: look again
        raise RuntimeError("payment could not be recorded after 3 attempts")

    async def _record_payment(self, source: str, payment_id: str, account_id: str, amount_fen: int,
                              paid_at: dt.datetime | None, channel: str | None) -> PaymentResult:
        now = self.clock()
        created: list[CommandRecord] = []
        async with self.uow() as uow:
            account = await repo.load_account(uow, self.catalog, account_id)
            existing = (await uow.execute(sa.select(t.payments).where(
                t.payments.c.source == source, t.payments.c.payment_id == payment_id))).one_or_none()
            if existing is not None:
                if (existing.account_id, existing.amount_fen) != (account_id, amount_fen):
                    raise PaymentConflict(f"payment {source}/{payment_id} was recorded with other content")
                return PaymentResult(False, _payment_record(existing))
            account.apply_payment(source, payment_id, amount_fen)
            created = await self._decide(uow, account, now, origin="billing",
                                         reason=f"payment {source}/{payment_id}")
            [entry_id] = await repo.save_account(uow, account, now, [dict(
                kind="payment", amount_fen=amount_fen, balance_after_fen=account.balance_fen,
                reference=f"{source}/{payment_id}")])
            values = dict(source=source, payment_id=payment_id, account_id=account_id, amount_fen=amount_fen,
                          paid_at=paid_at, channel=channel, ledger_entry_id=entry_id,
                          balance_after_fen=account.balance_fen, received_at=now)
            await uow.execute(sa.insert(t.payments).values(**values))
            await uow.commit()
        self._announce(created)
        return PaymentResult(True, values)

    # --- readings -----------------------------------------------------------------------------------------
    async def record_reading(self, reading: Reading) -> list[CommandRecord]:
        """Store a reading, bill it, and decide about the supply. Returns the relay commands it created."""
        now = self.clock()
        spec = self.catalog.meters[reading.meter_id]
        async with self.uow() as uow:
            account = await repo.load_account(uow, self.catalog, spec.account_id)
            cursor = await repo.load_cursor(uow, self.catalog, reading.meter_id)
            events_before = len(account.events)
            charge = account.apply_reading(cursor, reading.energy_wh, reading.taken_at)
            quarantined = any(type(e).__name__ == "ReadingQuarantined" for e in account.events[events_before:])
            await repo.save_cursor(uow, cursor)
            relay = reading.relay.value if reading.relay is not None else None
            await uow.execute(sa.insert(t.readings).values(
                meter_id=reading.meter_id, taken_at=reading.taken_at, energy_wh=reading.energy_wh,
                power_w=reading.power_w, voltage_v=reading.voltage_v, current_a=reading.current_a, relay=relay,
                billed=not quarantined))
            meter_values: dict[str, Any] = {"last_success_at": reading.taken_at, "consecutive_failures": 0,
                                            "health": "online", "last_error": None}
            if relay is not None:
                meter_values["relay"] = relay
            await uow.execute(sa.update(t.meters).where(t.meters.c.id == reading.meter_id).values(**meter_values))
            readings_ok, why = await self._readings_ok(uow, account.id, now)
            if quarantined:
                readings_ok, why = False, "quarantined reading"
            created = await self._decide(uow, account, now, origin="automatic", reason="balance",
                                         readings_ok=readings_ok, why_not_ok=why)
            entries = []
            if charge:
                entries.append(dict(kind="charge", amount_fen=-charge, balance_after_fen=account.balance_fen,
                                    reference=reading.meter_id, energy_wh=reading.energy_wh))
            await repo.save_account(uow, account, now, entries)
            await uow.add_outbox(f"meters/{reading.meter_id}/reading", {
                "type": "Reading", "meter_id": reading.meter_id, "taken_at": reading.taken_at.isoformat(),
                "energy_wh": reading.energy_wh, "power_w": reading.power_w, "relay": relay}, now)
            await uow.commit()
        self._announce(created)
        return created

    async def record_failure(self, meter_id: str, error: str, *, offline_after: int = 3) -> None:
        """Note a failed poll: consecutive failures, health degraded, then offline."""
        async with self.uow() as uow:
            row = (await uow.execute(sa.select(t.meters.c.consecutive_failures, t.meters.c.health)
                                     .where(t.meters.c.id == meter_id))).one()
            failures = row.consecutive_failures + 1
            health = "offline" if failures >= offline_after else "degraded"
            await uow.execute(sa.update(t.meters).where(t.meters.c.id == meter_id).values(
                consecutive_failures=failures, health=health, last_error=error[:500]))
            if health != row.health:
                now = self.clock()
                await uow.add_outbox(f"meters/{meter_id}/state", {"type": "MeterHealth", "meter_id": meter_id,
                                                                  "health": health, "error": error,
                                                                  "at": now.isoformat()}, now)
            await uow.commit()

    async def evaluate_accounts(self) -> list[CommandRecord]:
        """Re-run the engine's decision for accounts whose guardrail may have ended (hold expired...)."""
        now = self.clock()
        created: list[CommandRecord] = []
        async with self.uow(readonly=True) as uow:
            ids = list((await uow.execute(sa.select(t.accounts.c.id).where(
                t.accounts.c.supply == "connected", t.accounts.c.deferred_reason != ""))).scalars())
        for account_id in ids:
            if account_id not in self.catalog.accounts:
                continue
            async with self.uow() as uow:
                account = await repo.load_account(uow, self.catalog, account_id)
                readings_ok, why = await self._readings_ok(uow, account_id, now)
                made = await self._decide(uow, account, now, origin="automatic", reason="balance",
                                          readings_ok=readings_ok, why_not_ok=why)
                await repo.save_account(uow, account, now)
                await uow.commit()
            created += made
        self._announce(created)
        return created

    # --- relay commands -----------------------------------------------------------------------------------
    async def request_command(self, *, meter_id: str, action: str, origin: str, operator: str | None,
                              reason: str | None, actor: str) -> CommandRecord:
        """Queue an operator's disconnect or reconnect for one meter."""
        if meter_id not in self.catalog.meters:
            raise repo.UnknownMeter(meter_id)
        now = self.clock()
        async with self.uow() as uow:
            record = await create_command(uow, meter_id=meter_id, action=action, origin=origin, now=now,
                                          expires_at=now + dt.timedelta(seconds=self.catalog.command_expiry_s),
                                          operator=operator, reason=reason)
            await uow.audit(actor, f"command.{action}", meter_id, {"command_id": record.id, "reason": reason}, now)
            await uow.commit()
        self._announce([record])
        return record

    async def _decide(self, uow: UnitOfWork, account: PrepaidAccount, now: dt.datetime, *, origin: str,
                      reason: str, readings_ok: bool = True, why_not_ok: str = "") -> list[CommandRecord]:
        decision = account.evaluate(now, readings_ok=readings_ok, why_not_ok=why_not_ok)
        if decision is Decision.NONE:
            return []
        action = "open" if decision is Decision.DISCONNECT else "close"
        spec = self.catalog.accounts[account.id]
        expires = now + dt.timedelta(seconds=self.catalog.command_expiry_s)
        return [await create_command(uow, meter_id=m, action=action, origin=origin, now=now, expires_at=expires,
                                     reason=reason) for m in spec.meter_ids]

    async def _readings_ok(self, uow: UnitOfWork, account_id: str, now: dt.datetime) -> tuple[bool, str]:
        rows = (await uow.execute(sa.select(t.meters.c.id, t.meters.c.last_success_at, t.meters.c.health)
                                  .where(t.meters.c.account_id == account_id))).all()
        limit = now - dt.timedelta(seconds=self.catalog.stale_after_s)
        for row in rows:
            if row.health == "offline":
                return False, f"meter {row.id} offline"
            if row.last_success_at is None or row.last_success_at < limit:
                return False, f"meter {row.id} reading stale"
        return True, ""

    def _announce(self, records: list[CommandRecord]) -> None:
        for record in records:
            self.on_command(record)


def _payment_record(row: Any) -> dict[str, Any]:
    return {k: getattr(row, k) for k in ("source", "payment_id", "account_id", "amount_fen", "paid_at", "channel",
                                         "ledger_entry_id", "balance_after_fen", "received_at")}
