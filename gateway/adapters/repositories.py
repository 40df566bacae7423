"""The repositories of the storage ports on SQLAlchemy Core (``gateway.service.ports``): accounts, meters,
payments, relay commands and the ledger's checks, each working inside a unit of work
(``gateway.adapters.sql.SqlUnitOfWork``). What goes out (the outbox, notices) is in ``outbound_rows``; the
fleet's configuration in ``fleet_rows``."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from gateway.adapters import bulk
from gateway.adapters import tables as t
from gateway.adapters.account_rows import account_row
from gateway.domain.account import PrepaidAccount
from gateway.domain.relay import Action, Command, State
from gateway.service import ports
from gateway.service.commands import ACTIVE_STATES, FAULTS, CommandRecord, command_payload, state_payload
from gateway.service.ports import MeterState, PaymentKey

if TYPE_CHECKING:
    from gateway.adapters.sql import SqlUnitOfWork

__all__ = ["Accounts", "Commands", "Ledger", "Meters", "Payments", "Repository", "chunks", "command_record"]

_MAX_PARAMS = 30_000  # within SQLite's (32766) and asyncpg's (32767) limits on bound parameters


def chunks(rows: int, width: int) -> Iterator[tuple[int, int]]:
    """(first row, row count) of each IN list or multi-row statement for ``rows`` rows of ``width`` values, within
    both databases' limits on bound parameters."""
    return bulk.chunks(rows, width, max_params=_MAX_PARAMS)


class Repository:
    """A repository works inside its unit of work."""

    def __init__(self, uow: SqlUnitOfWork) -> None:
        self.uow = uow


class Accounts(Repository, ports.AccountRepository):
    async def ids(self) -> set[str]:
        return set((await self.uow.execute(sa.select(t.accounts.c.id))).scalars())

    async def states(self, ids: list[str]) -> dict[str, tuple[int, Any]]:
        c = t.accounts.c
        out: dict[str, tuple[int, Any]] = {}
        for start, size in chunks(len(ids), 1):
            rows = await self.uow.execute(sa.select(c.id, c.version, c.state).where(c.id.in_(ids[start:start + size])))
            out.update((row.id, (row.version, row.state)) for row in rows)
        return out

    async def versions(self, ids: list[str]) -> dict[str, int]:
        c = t.accounts.c
        out: dict[str, int] = {}
        for start, size in chunks(len(ids), 1):
            rows = await self.uow.execute(sa.select(c.id, c.version).where(c.id.in_(ids[start:start + size])))
            out.update((row.id, row.version) for row in rows)
        return out

    async def lock(self, ids: list[str]) -> None:
        if self.uow.dialect != "sqlite":
            await self.uow.lock(t.accounts, "id", ids, "id")

    async def add(self, accounts: list[PrepaidAccount], now: dt.datetime, *, reference: str = "settings") -> set[str]:
        rows = {a.id: account_row(a, now) | {"id": a.id, "opened_at": now} for a in accounts}
        added = await (self._add_sqlite(rows) if self.uow.dialect == "sqlite" else self._add_returning(rows))
        await self.uow.insert(t.ledger, [dict(
            account_id=a.id, kind="opening", amount_fen=a.balance_fen, balance_after_fen=a.balance_fen,
            created_at=now, reference=reference) for a in accounts if a.id in added])
        return added

    async def _add_returning(self, rows: dict[str, dict[str, Any]]) -> set[str]:
        """Two instances starting together may both add an account: the one whose row goes in writes its
        opening entry (``RETURNING`` says which went in)."""
        added: set[str] = set()
        values = list(rows.values())
        for start, size in chunks(len(values), 9):
            added.update((await self.uow.execute(self.uow.insert_new(t.accounts).values(values[start:start + size])
                                                 .returning(t.accounts.c.id))).scalars())
        return added

    async def _add_sqlite(self, rows: dict[str, dict[str, Any]]) -> set[str]:
        """SQLite has one writer at a time (a catalog change writes its revision first): the rows not there yet go
        in with one ``executemany`` (100,000 accounts: 3 s instead of 10 s of compiling multi-row INSERTs)."""
        ids, there = list(rows), set()
        for start, size in chunks(len(ids), 1):
            there.update((await self.uow.execute(sa.select(t.accounts.c.id).where(
                t.accounts.c.id.in_(ids[start:start + size])))).scalars())
        await self.uow.insert(t.accounts, [row for account_id, row in rows.items() if account_id not in there])
        return set(ids) - there

    async def deferral_ended(self, now: dt.datetime) -> list[str]:
        c = t.accounts.c
        return list((await self.uow.execute(sa.select(c.id).where(
            c.supply == "connected", c.deferred_reason != "", c.deferred_until <= now))).scalars())


class Meters(Repository, ports.MeterRepository):
    async def states(self, ids: list[str]) -> dict[str, MeterState]:
        c = t.meters.c
        out: dict[str, MeterState] = {}
        for start, size in chunks(len(ids), 1):
            rows = await self.uow.execute(sa.select(c.id, c.health, c.relay, c.consecutive_failures)
                                          .where(c.id.in_(ids[start:start + size])))
            out.update((row.id, MeterState(row.health, row.relay, row.consecutive_failures)) for row in rows)
        return out

    async def failed(self, meter_id: str, error: str, *, offline_after: int) -> tuple[str, str]:
        c = t.meters.c
        row = (await self.uow.execute(sa.select(c.consecutive_failures, c.health).where(c.id == meter_id)
                                      .with_for_update())).one()
        failures = row.consecutive_failures + 1
        health = "offline" if failures >= offline_after else "degraded"
        await self.uow.execute(sa.update(t.meters).where(c.id == meter_id).values(
            consecutive_failures=failures, health=health, last_error=error[:500]))
        return row.health, health

    async def update(self, meter_id: str, values: dict[str, Any]) -> None:
        await self.uow.execute(sa.update(t.meters).where(t.meters.c.id == meter_id).values(values))


_PAYMENT_COLUMNS = ("source", "payment_id", "account_id", "amount_fen", "paid_at", "channel", "balance_after_fen",
                    "received_at", "reversed_at", "reversal_reason", "recorded_by", "reversed_by")


class Payments(Repository, ports.PaymentRepository):
    async def get(self, keys: set[PaymentKey]) -> dict[PaymentKey, dict[str, Any]]:
        p = t.payments.c
        ordered = sorted(keys)
        out: dict[PaymentKey, dict[str, Any]] = {}
        for start, size in chunks(len(ordered), 2):
            rows = await self.uow.execute(sa.select(t.payments).where(
                sa.tuple_(p.source, p.payment_id).in_(ordered[start:start + size])))
            out.update(((row.source, row.payment_id), {k: getattr(row, k) for k in _PAYMENT_COLUMNS})
                       for row in rows)
        return out


class Commands(Repository, ports.CommandRepository):
    async def get(self, command_id: str) -> CommandRecord | None:
        row = (await self.uow.execute(sa.select(t.commands).where(t.commands.c.id == command_id))).one_or_none()
        return None if row is None else command_record(row)

    async def state(self, command_id: str) -> str | None:
        return (await self.uow.execute(sa.select(t.commands.c.state).where(t.commands.c.id == command_id))  # type: ignore[no-any-return]
                ).scalar_one_or_none()

    async def active(self, meter_id: str | None = None) -> list[CommandRecord]:
        c = t.commands.c
        statement = sa.select(t.commands).where(c.state.in_(ACTIVE_STATES)).order_by(c.created_at, c.id)
        if meter_id is not None:
            statement = statement.where(c.meter_id == meter_id)
        return [command_record(row) for row in await self.uow.execute(statement)]

    async def add(self, record: CommandRecord, *, audit: dict[str, Any] | None = None) -> None:
        now = record.created_at
        c = t.commands.c
        older = (await self.uow.execute(sa.select(c.id, c.state).where(
            c.meter_id == record.meter_id, c.state.in_(ACTIVE_STATES)))).all()
        for command_id, state in older:
            await self.transition(command_id, state, "superseded", now, error=f"superseded by {record.id}")
        await self.uow.execute(sa.insert(t.commands).values(
            id=record.id, meter_id=record.meter_id, action=record.action, origin=record.origin,
            operator=record.operator, reason=record.reason, state=record.state, attempts=record.attempts,
            created_at=now, updated_at=now, expires_at=record.expires_at, basis_at=record.basis_at))
        await self.uow.add_outbox(f"commands/{record.id}", command_payload(record), now)
        if audit is not None:
            await self.uow.insert(t.audit_log, [audit])

    async def transition(self, command_id: str, expected: str, new: str, now: dt.datetime, *,
                         error: str | None = None, attempt: bool = False) -> bool:
        values: dict[str, Any] = {"state": new, "updated_at": now}
        if error is not None:
            values["last_error"] = error[:500]
        if attempt:
            values["attempts"] = t.commands.c.attempts + 1
        c = t.commands.c
        row = (await self.uow.execute(sa.update(t.commands).where(c.id == command_id, c.state == expected)
                                      .values(values).returning(c.meter_id, c.action, c.attempts, c.last_error))
               ).one_or_none()
        if row is None:
            return False
        await self._rows(command_id, expected, new, now, error, *row)
        return True

    async def save(self, old: Command, new: Command, now: dt.datetime) -> bool:
        c = t.commands.c
        error = (new.last_error or "")[:500] or None
        result = await self.uow.execute(sa.update(t.commands).where(c.id == old.id, c.state == old.state.value)
                                        .values(state=new.state.value, updated_at=now, attempts=new.attempts,
                                                last_error=error, sent_at=new.sent_at, not_before=new.not_before))
        if result.rowcount != 1:
            return False
        await self._rows(old.id, old.state.value, new.state.value, now, new.last_error, new.meter_id,
                         new.action.value, new.attempts, new.last_error)
        meter = _meter_after(new)
        if meter is not None:
            await self.uow.meters.update(new.meter_id, meter)
        return True

    async def _rows(self, command_id: str, expected: str, new: str, now: dt.datetime, error: str | None,
                    meter_id: str, action: str, attempts: int, last_error: str | None) -> None:
        """The audit row and the events of a command's transition."""
        audit = dict(at=now, actor="gateway", action="command." + new, target=command_id,
                     detail={"from": expected, "error": error})
        events = [dict(topic=f"commands/{command_id}", created_at=now,
                       payload=state_payload(command_id, meter_id, action, new, attempts, last_error, now))]
        if new == "failed":
            events.append(dict(topic="alarms", created_at=now, payload={
                "type": "CommandFailed", "command_id": command_id, "meter_id": meter_id, "action": action,
                "fault": FAULTS[Action(action)], "error": last_error, "at": now}))
        await self.uow.insert(t.audit_log, [audit])
        await self.uow.insert(t.outbox, events)

    async def recent_trips(self, since: dt.datetime) -> list[dt.datetime]:
        c = t.commands.c
        rows = await self.uow.execute(sa.select(c.sent_at).where(c.action == "open", c.origin != "operator",
                                                                 c.sent_at.is_not(None), c.sent_at > since))
        return [row.sent_at for row in rows]


def command_record(row: Any) -> CommandRecord:
    return CommandRecord(row.id, row.meter_id, row.action, row.origin, row.operator, row.reason, row.state,
                         row.attempts, row.last_error, row.created_at, row.updated_at, row.expires_at, row.basis_at,
                         row.sent_at, row.not_before)


def _meter_after(command: Command) -> dict[str, Any] | None:
    """What a command's final state says about its meter's relay."""
    if command.state is State.CONFIRMED:
        return {"relay": "open" if command.action is Action.OPEN else "closed", "relay_fault": ""}
    if command.state is State.ARMED:
        return {"relay": "armed", "relay_fault": ""}
    if command.state is State.FAILED:
        return {"relay_fault": FAULTS[command.action]}
    return None


class Ledger(Repository, ports.LedgerRepository):
    async def balances(self) -> dict[str, int]:
        rows = await self.uow.execute(sa.select(t.accounts.c.id, t.accounts.c.balance_fen))
        return {row.id: row.balance_fen for row in rows}

    async def entries(self) -> list[tuple[int, str, int, int]]:
        c = t.ledger.c
        rows = await self.uow.execute(sa.select(c.id, c.account_id, c.amount_fen, c.balance_after_fen).order_by(c.id))
        return [tuple(row) for row in rows]  # type: ignore[misc]

    async def payment_credits(self) -> list[tuple[PaymentKey, int]]:
        c = t.ledger.c
        rows = await self.uow.execute(sa.select(c.payment_source, c.payment_id, c.amount_fen)
                                      .where(c.kind == "payment"))
        return [((row.payment_source, row.payment_id), row.amount_fen) for row in rows]

    async def payments(self) -> list[tuple[PaymentKey, int]]:
        c = t.payments.c
        rows = await self.uow.execute(sa.select(c.source, c.payment_id, c.amount_fen))
        return [((row.source, row.payment_id), row.amount_fen) for row in rows]
