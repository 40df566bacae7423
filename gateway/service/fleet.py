"""The fleet as data: accounts and meters live in the database and change while the gateway runs.

The catalog (``gateway.service.catalog``) is the picture of them in memory; ``Fleet`` loads it at the start, and
every change goes the same way: checked against the catalog (``gateway.service.fleet_rules``), written in one
transaction while the writer stands still (its configuration rows, the accounts' engine state, their ledger
entries, an audit row and the events, under the next catalog revision), then applied to the catalog, and
announced on the message bus (``MeterPlaced``, ``MeterRetired``, ``CommandQueued``: the scheduler polls, moves
or drops meters; the relay runner takes the commands). Other instances sharing the database pick changes up by
revision (``refresh``).

The settings file's ``accounts:`` and ``meters:`` are a seed (``seed``): what the database lacks is added;
what it has differently is reported and left as it is. The lifecycle operations (open, meter swap, close,
move-in, tariff change) are in ``gateway.service.lifecycle``; bulk import and export in ``gateway.service.fleet_io``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from gateway.domain.account import PrepaidAccount
from gateway.domain.messages import CommandQueued, MeterPlaced, MeterRetired
from gateway.service.account_cache import drain, load_accounts
from gateway.service.catalog import AccountConfig, Catalog, MeterSpec
from gateway.service.commands import CommandRecord, new_command
from gateway.service.errors import FleetConflict, RowError, UnknownAccount
from gateway.service.fleet_port import FleetRows, PlaceTaken
from gateway.service.fleet_rules import normal_meter
from gateway.service.ports import BatchChanges, UnitOfWork

__all__ = ["Change", "Fleet"]

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class Change:
    """What one catalog change writes, collected in its transaction (``Fleet.transact``)."""

    uow: UnitOfWork
    catalog: Catalog
    rev: int
    now: dt.datetime
    actor: str
    opened: list[PrepaidAccount] = field(default_factory=list)  # new accounts (their rows made here)
    loaded: dict[str, PrepaidAccount] = field(default_factory=dict)  # existing accounts changed
    versions: dict[str, int] = field(default_factory=dict)
    accounts: list[AccountConfig] = field(default_factory=list)  # configuration rows to write
    meters: list[MeterSpec] = field(default_factory=list)
    retired: list[str] = field(default_factory=list)
    commands: list[CommandRecord] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)  # queued commands of the meters changed, cancelled
    outbox: list[dict[str, Any]] = field(default_factory=list)
    audits: list[dict[str, Any]] = field(default_factory=list)

    async def account(self, account_id: str) -> PrepaidAccount:
        """An existing account, read under a row lock, to change in this transaction."""
        if account_id not in self.loaded:
            if account_id not in self.catalog.accounts:
                raise UnknownAccount(f"no account {account_id!r}")
            await self.uow.accounts.lock([account_id])
            found = await load_accounts(self.uow, self.catalog, [account_id], versions=self.versions)
            if account_id not in found:
                raise UnknownAccount(f"no account {account_id!r}")
            self.loaded[account_id] = found[account_id]
        return self.loaded[account_id]

    def open(self, config: AccountConfig) -> PrepaidAccount:
        """A new account of ``config`` with its opening balance (no meters yet)."""
        account = self.catalog.new_account(self.catalog.spec(config))
        self.opened.append(account)
        self.accounts.append(config)
        return account

    def event(self, topic: str, payload: dict[str, Any]) -> None:
        self.outbox.append(dict(topic=topic, payload=payload | {"at": self.now}, created_at=self.now))

    def audit(self, action: str, target: str, detail: dict[str, Any] | None) -> None:
        self.audits.append(dict(at=self.now, actor=self.actor, action=action, target=target, detail=detail))

    def command(self, meter_id: str, action: str, reason: str, expiry_s: float) -> CommandRecord:
        record = new_command(meter_id=meter_id, action=action, origin="operator", operator=self.actor, now=self.now,
                             expires_at=self.now + dt.timedelta(seconds=expiry_s), reason=reason)
        self.commands.append(record)
        return record

    async def stop_commands(self, meter_id: str) -> None:
        """Cancel the meter's queued relay commands; one already on the wire refuses the change (it is confirmed
        or fails on its own within its expiry: then try again)."""
        for record in await self.uow.commands.active(meter_id):
            if record.state != "queued" or not await self.uow.commands.transition(
                    record.id, "queued", "cancelled", self.now, error=f"cancelled: {self.actor} changed the meter"):
                raise FleetConflict([RowError("meter", None, "id", f"meter {meter_id} has a relay command in "
                                              f"progress ({record.action}, {record.state}); wait until it is "
                                              "confirmed or has failed, then try again")])
            self.cancelled.append(record.id)

    async def write(self, storage_row: Callable[[PrepaidAccount, dt.datetime], dict[str, Any]]) -> None:
        uow = self.uow
        if self.opened:
            await uow.accounts.add(self.opened, self.now, reference=f"opened by {self.actor}"[:200])
        self.audits += [dict(at=self.now, actor=self.actor, action="command.cancel", target=command_id,
                             detail={"why": "its meter was changed"}) for command_id in self.cancelled]
        changes = BatchChanges(self.now, audits=self.audits, commands=self.commands)
        for account in [*self.opened, *self.loaded.values()]:
            if account.id in self.loaded:
                changes.accounts.append((account.id, self.versions[account.id], storage_row(account, self.now)))
            entries, events = drain(account, self.now)
            changes.ledger += entries
            changes.outbox += events
        changes.outbox += self.outbox
        # in the order the rows refer to each other: accounts, meters (retired ones let go of their places first),
        # then what refers to meters (commands)
        await uow.fleet.put_accounts(self.accounts, self.rev, self.now)
        await uow.fleet.retire_meters(self.retired, self.rev, self.now)
        try:
            await uow.fleet.put_meters(self.meters, self.rev)
        except PlaceTaken as exc:  # another instance took the place since the catalog was read
            raise FleetConflict([RowError("meter", None, "unit_id", f"the place is taken: {exc}")]) from exc
        await uow.write_batch(changes)


class Fleet:
    """The fleet's configuration: loaded into the catalog, changed through ``transact``."""

    def __init__(self, service: Any, *, read_meter: Callable[[MeterSpec], Awaitable[Any]] | None = None,
                 refresh_s: float = 5.0) -> None:
        self.service = service
        self.catalog: Catalog = service.catalog
        self.read_meter = read_meter  # reads a meter now (a final or initial reading nobody gave)
        self.refresh_s = refresh_s

    # --- the catalog from the database ---------------------------------------------------------------------
    async def load(self) -> None:
        """Every configured account and active meter into the catalog."""
        async with self.service.uow(readonly=True) as uow:
            rows = await uow.fleet.changed(-1)
        self._take(rows)

    async def refresh(self) -> bool:
        """Changes made by other instances since the catalog's revision; whether there were any."""
        async with self.service.uow(readonly=True) as uow:
            if await uow.fleet.rev() <= self.catalog.rev:
                return False
            rows = await uow.fleet.changed(self.catalog.rev)
        self._take(rows)
        return True

    async def run(self) -> None:
        """Refresh every ``refresh_s`` (instances sharing a database see each other's changes)."""
        while True:
            await asyncio.sleep(self.refresh_s)
            try:
                await self.refresh()
            except Exception:
                log.exception("could not refresh the fleet's configuration")

    def _take(self, rows: FleetRows) -> None:
        catalog, writer = self.catalog, self.service.writer
        for config in rows.accounts:
            if not config.tariff:
                continue  # a row of an older version, not configured yet (the seed fills it in)
            try:
                catalog.put_account(config)
            except KeyError as exc:
                log.error("account %s names tariff %s, which the settings no longer have: it is left out until "
                          "the tariff is back or the account is given another", config.id, exc)
                continue
            writer.forget_account(config.id)
        self._retire(rows.retired)
        self._place([m for m in rows.meters if m.bus_id and m.account_id in catalog.accounts])
        catalog.rev = max(catalog.rev, rows.rev)

    def _retire(self, meter_ids: list[str]) -> None:
        """Meters retired: out of the catalog, not polled any more."""
        for meter_id in meter_ids:
            self.catalog.drop_meter(meter_id)
            self.service.writer.forget_meter(meter_id)
            self.service.bus.publish(MeterRetired(meter_id))

    def _place(self, meters: list[MeterSpec]) -> None:
        """Meters added or changed: in the catalog, polled where they now are."""
        writer = self.service.writer
        self.catalog.put_meters(meters)
        for meter in meters:
            writer.forget_meter(meter.id)
            writer.forget_account(meter.account_id)  # its engine state learns of the meter (and its capacity)
            self.service.bus.publish(MeterPlaced(meter.id))

    # --- changes -------------------------------------------------------------------------------------------
    async def transact(self, actor: str, work: Callable[[Change], Awaitable[T]]) -> T:
        """Run ``work`` in one transaction while the writer stands still, write what it collected, then apply it
        to the catalog and announce it. A refusal raised by ``work`` changes nothing."""
        service = self.service

        async def alone() -> tuple[T, Change]:
            async with service.uow() as uow:
                change = Change(uow, self.catalog, await uow.fleet.next_rev(), service.clock(), actor)
                result = await work(change)
                await change.write(service.uow.account_row)
                await uow.commit()
            self._applied(change)
            return result, change

        result, change = await service.writer.alone(alone)
        for account_id in change.loaded:  # a change of thresholds or tariff: the engine decides again
            if not self.catalog.accounts[account_id].closed:
                service.decide_again(account_id, "configuration changed").add_done_callback(  # type: ignore[attr-defined]
                    _log_failure)
        return result

    def _applied(self, change: Change) -> None:
        catalog, writer, bus = self.catalog, self.service.writer, self.service.bus
        for config in change.accounts:
            catalog.put_account(config)
        for account_id in {*change.loaded, *(a.id for a in change.opened)}:
            writer.forget_account(account_id)
        self._retire(change.retired)
        self._place(change.meters)
        if catalog.rev == change.rev - 1:
            catalog.rev = change.rev  # (else another instance changed it meanwhile: the refresh loads both)
        for record in change.commands:
            bus.publish(CommandQueued(record.model()))

    # --- the settings' seed --------------------------------------------------------------------------------
    async def seed(self, accounts: list[AccountConfig], meters: list[MeterSpec]) -> list[str]:
        """Add the accounts and meters of the settings the database does not have (and fill in rows of an older
        version); returns what differs between the two (the database's is kept)."""
        catalog = self.catalog
        conflicts = [f"account {a.id}: the settings' {', '.join(d)} differ from the database's (kept)"
                     for a in accounts if (known := catalog.accounts.get(a.id)) is not None and known.config
                     and (d := known.config.differences(a))]
        new_accounts = [a for a in accounts if a.id not in catalog.accounts]
        new_ids = {a.id for a in new_accounts}
        new_meters = []
        for meter in (normal_meter(catalog, m) for m in meters):
            known_meter = catalog.meters.get(meter.id)
            if known_meter is not None:
                if differs := known_meter.differences(meter):
                    conflicts.append(f"meter {meter.id}: the settings' {', '.join(differs)} differ from the "
                                     "database's (kept)")
            elif meter.id in catalog.retired:
                conflicts.append(f"meter {meter.id}: retired in the database (kept retired)")
            elif meter.account_id in catalog.accounts or meter.account_id in new_ids:
                new_meters.append(meter)
        if new_accounts or new_meters:
            async def work(change: Change) -> None:
                existing = await change.uow.accounts.ids()  # rows of an older version get their configuration
                for config in new_accounts:
                    if config.id in existing:
                        change.accounts.append(config)
                    else:
                        change.open(config)
                change.meters += new_meters
                change.audit("fleet.seed", "settings", {"accounts": len(new_accounts), "meters": len(new_meters)})

            await self.transact("settings", work)
        async with self.service.uow() as uow:
            await uow.ensure_limiter()
            await uow.commit()
        return conflicts


def _log_failure(future: Any) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.warning("could not evaluate an account after its configuration changed: %r", future.exception())

