"""What a utility does to its fleet, each in one transaction with its ledger entries, audit row and events
(``gateway.service.fleet``): open an account, change one, change its tariff from a given time, add, change and
retire a meter, replace a meter (换表), close an account, move a customer in on a meter (move-out of the previous
one).

A final or initial reading nobody gave is read from the meter at once (``Fleet.read_meter``); a meter that does
not answer refuses the change (give the reading). A meter with a relay command on the wire refuses it too: its
queued commands are cancelled, one being sent is left to finish. Where a change leaves a meter's relay is stated
by the caller: ``follow`` (the account's supply: connected or disconnected), ``open``, ``closed`` or ``leave``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from gateway.service.catalog import AccountConfig, MeterSpec
from gateway.service.errors import FleetConflict, FleetInvalid, RowError
from gateway.service.fleet import Change
from gateway.service.fleet_rules import Checks
from gateway.service.meter_lifecycle import RELAY_CHOICES, MeterLifecycle

__all__ = ["RELAY_CHOICES", "Lifecycle"]

ACCOUNT_FIELDS = ("warning1_fen", "warning2_fen", "overdraft_fen", "reconnect_min_topup_fen", "credit_class",
                  "protected", "contacts")


class Lifecycle(MeterLifecycle):
    """The fleet's changes: accounts here, meters in ``MeterLifecycle``."""

    # --- accounts ------------------------------------------------------------------------------------------
    async def open_account(self, config: AccountConfig, *, meters: list[MeterSpec] = (), actor: str) -> None:  # type: ignore[assignment]
        """A new account with its opening balance (a ledger entry), contacts, credit class, protection, and
        optionally its meters (each billed from its first reading)."""
        checks = Checks(self.catalog)
        checks.accounts([(None, config)], new=True)
        meters = checks.meters([(None, m) for m in meters], new=True, accounts={config.id})
        checks.raise_if_any()

        async def work(change: Change) -> None:
            change.open(dataclasses.replace(config, status="open"))
            change.meters += meters
            change.event(f"accounts/{config.id}/events", {"type": "AccountOpened", "account_id": config.id,
                                                          "balance_fen": config.opening_balance_fen,
                                                          "meters": [m.id for m in meters]})
            change.audit("account.open", config.id, {"tariff": config.tariff, "meters": [m.id for m in meters],
                                                     "opening_balance_fen": config.opening_balance_fen})

        await self.fleet.transact(actor, work)

    async def update_account(self, account_id: str, fields: dict[str, Any], *, actor: str) -> AccountConfig:
        """Change an account's thresholds, credit class, protection or contacts (the engine decides again)."""
        current = self._config(account_id)
        unknown = set(fields) - set(ACCOUNT_FIELDS)
        if unknown:
            raise FleetInvalid([RowError("account", None, name, "not a field that can be changed here")
                                for name in sorted(unknown)])
        config = dataclasses.replace(current, **fields)
        checks = Checks(self.catalog)
        checks.accounts([(None, config)], new=False)
        checks.raise_if_any()

        async def work(change: Change) -> None:
            await change.account(account_id)  # locked, and written back (re-evaluated after the change)
            change.accounts.append(config)
            shown = {k: v for k, v in fields.items() if k != "contacts"} | (
                {"contacts": len(config.contacts)} if "contacts" in fields else {})
            change.event(f"accounts/{account_id}/events", {"type": "AccountChanged", "account_id": account_id,
                                                           "fields": sorted(fields)})
            change.audit("account.change", account_id, shown)

        await self.fleet.transact(actor, work)
        return config

    async def change_tariff(self, account_id: str, tariff: str, at: dt.datetime, *, actor: str) -> AccountConfig:
        """From ``at`` on, the account's energy is priced at ``tariff`` (before it, at the current one)."""
        current = self._config(account_id)
        checks = Checks(self.catalog)
        config = dataclasses.replace(current, tariff_next=tariff, tariff_next_at=at)
        checks.accounts([(None, config)], new=False)
        checks.raise_if_any()

        async def work(change: Change) -> AccountConfig:
            account = await change.account(account_id)
            promoted = current
            if account.tariff_switch is not None:  # the previous change took effect: it is the tariff now
                promoted = dataclasses.replace(current, tariff=account.tariff_switch[1])
            new = dataclasses.replace(promoted, tariff_next=tariff, tariff_next_at=at)
            reason = account.tariff_change_allowed(at)
            if reason:
                raise FleetConflict([RowError("account", None, "at", reason)])
            change.accounts.append(new)
            change.event(f"accounts/{account_id}/events", {"type": "TariffChangeScheduled", "account_id": account_id,
                                                           "tariff": tariff, "effective_at": at})
            change.audit("account.tariff", account_id, {"tariff": tariff, "effective_at": at.isoformat(),
                                                        "previous": promoted.tariff})
            return new

        return await self.fleet.transact(actor, work)

    async def close_account(self, account_id: str, *, final_wh: dict[str, int] | None = None,
                            at: dt.datetime | None = None, relay: str = "open", reason: str = "",
                            actor: str) -> dict[str, Any]:
        """Close an account: each meter's final reading billed, the remaining balance settled as a refund or an
        arrears entry, its meters left in the stated relay state (they stay on the closed account, polled but
        not billed, until a move-in)."""
        spec = self._open_spec(account_id)
        readings = await self._readings(spec.meter_ids, final_wh or {}, at, "final_wh")

        async def work(change: Change) -> dict[str, Any]:
            account = await change.account(account_id)
            charged = 0
            for meter_id in spec.meter_ids:
                await change.stop_commands(meter_id)
                energy, when = readings[meter_id]
                if meter_id in account.cursors:
                    charged += account.detach_meter(meter_id, final_wh=energy, at=when, by=actor)
            settled = account.close(change.now, by=actor, reason=reason)
            change.accounts.append(dataclasses.replace(spec.config, status="closed"))  # type: ignore[arg-type]
            commands = [self._relay(change, m, relay, account, f"account {account_id} closed")
                        for m in spec.meter_ids]
            change.audit("account.close", account_id, {"final_wh": {m: r[0] for m, r in readings.items()},
                                                        "settled_fen": settled, "relay": relay, "reason": reason})
            return {"charged_fen": charged, "settled_fen": settled,
                    "commands": [c.id for c in commands if c is not None]}

        return await self.fleet.transact(actor, work)

    async def move_in(self, meter_id: str, config: AccountConfig, *, reading_wh: int | None = None,
                      at: dt.datetime | None = None, close_previous: bool = True, relay: str = "follow",
                      actor: str) -> dict[str, Any]:
        """A new customer on the same meter: the previous account's final reading (move-out; the account closed
        if ``close_previous`` and it has no other meter), a new account billed from that reading on."""
        meter = self._meter(meter_id)
        previous = self.catalog.accounts[meter.account_id]
        checks = Checks(self.catalog)
        checks.accounts([(None, config)], new=True)
        checks.raise_if_any()
        readings = await self._readings([meter_id], {meter_id: reading_wh} if reading_wh is not None else {}, at,
                                        "reading_wh")
        energy, when = readings[meter_id]

        async def work(change: Change) -> dict[str, Any]:
            await change.stop_commands(meter_id)
            out: dict[str, Any] = {"previous_account": previous.id, "reading_wh": energy, "at": when}
            if not previous.closed:
                old = await change.account(previous.id)
                if meter_id in old.cursors:
                    out["charged_fen"] = old.detach_meter(meter_id, final_wh=energy, at=when, by=actor)
                if close_previous and set(previous.meter_ids) == {meter_id}:
                    out["settled_fen"] = old.close(change.now, by=actor, reason=f"moved out of meter {meter_id}")
                    change.accounts.append(dataclasses.replace(previous.config, status="closed"))  # type: ignore[arg-type]
            account = change.open(dataclasses.replace(config, status="open"))
            account.attach_meter(meter_id, energy_wh=energy, at=when, max_power_w=meter.max_power_w)
            change.meters.append(dataclasses.replace(meter, account_id=config.id))
            command = self._relay(change, meter_id, relay, account, f"account {config.id} moved in")
            change.event(f"accounts/{config.id}/events", {"type": "AccountOpened", "account_id": config.id,
                                                          "balance_fen": config.opening_balance_fen,
                                                          "meters": [meter_id]})
            change.audit("meter.move_in", meter_id, {"account": config.id, "previous": previous.id,
                                                     "reading_wh": energy, "at": when.isoformat()})
            out["command"] = command.id if command is not None else None
            return out

        return await self.fleet.transact(actor, work)
