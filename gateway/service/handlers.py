"""The use cases: record a payment, record a reading, request a relay command.

Each runs in one unit of work and returns what the caller needs; the relay commands it creates are handed to
``on_command`` (the bus scheduler's wake-up) after the commit.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from drivers.base import Reading
from gateway.adapters import tables as t
from gateway.domain.account import Decision, PrepaidAccount
from gateway.service import accounts as repo
from gateway.service.catalog import Catalog
from gateway.service.commands import CommandRecord, create_command
from gateway.service.uow import UnitOfWork, UnitOfWorkFactory
from gateway.service.writer import PaymentConflict, PaymentJob, PaymentResult, ReadingJob, Writer

__all__ = ["PaymentConflict", "PaymentResult", "Service"]


class Service:
    """The gateway's use cases over one database."""

    def __init__(self, uow_factory: UnitOfWorkFactory, catalog: Catalog,
                 clock: Callable[[], dt.datetime] | None = None) -> None:
        self.uow = uow_factory
        self.catalog = catalog
        self.clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self.on_command: Callable[[CommandRecord], None] = lambda record: None
        self.writer = Writer(uow_factory, catalog, self.clock, on_commands=self._announce)

    # --- payments and readings go through the group-commit writer ------------------------------------------
    async def record_payment(self, *, source: str, payment_id: str, account_id: str, amount_fen: int,
                             paid_at: dt.datetime | None = None, channel: str | None = None) -> PaymentResult:
        """Credit a payment exactly once; a repeat returns the first result. Returns only after the commit."""
        for _ in range(3):
            try:
                result: PaymentResult = await self.writer.submit(
                    PaymentJob(source, payment_id, account_id, amount_fen, paid_at, channel))
                return result
            except IntegrityError:
                continue  # another instance recorded the same payment id first: look again
        raise RuntimeError("payment could not be recorded after 3 attempts")

    async def record_reading(self, reading: Reading) -> list[CommandRecord]:
        """Store a reading, bill it, and decide about the supply. Returns the relay commands it created."""
        commands: list[CommandRecord] = await self.writer.submit(ReadingJob(reading))
        return commands

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


