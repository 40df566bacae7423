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

from gateway.domain.account import PrepaidAccount, Supply
from gateway.service.catalog import AccountConfig, MeterSpec
from gateway.service.errors import FleetConflict, FleetInvalid, RowError, UnknownAccount, UnknownMeter
from gateway.service.fleet import Change, Fleet
from gateway.service.fleet_rules import Checks

__all__ = ["RELAY_CHOICES", "Lifecycle"]

RELAY_CHOICES = ("follow", "open", "closed", "leave")
ACCOUNT_FIELDS = ("warning1_fen", "warning2_fen", "overdraft_fen", "reconnect_min_topup_fen", "credit_class",
                  "protected", "contacts")
METER_FIELDS = ("bus_id", "unit_id", "address", "model", "groups", "poll_interval_s", "max_power_w")


class Lifecycle:
    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.catalog = fleet.catalog

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

    # --- meters --------------------------------------------------------------------------------------------
    async def add_meter(self, meter: MeterSpec, *, initial_wh: int | None = None, at: dt.datetime | None = None,
                        actor: str) -> MeterSpec:
        """A new meter on an open account: polled within one poll interval, billed from ``initial_wh`` (or from
        its first reading)."""
        checks = Checks(self.catalog)
        [meter] = checks.meters([(None, meter)], new=True)
        checks.raise_if_any()
        self._open_spec(meter.account_id)
        when = self._when(at)

        async def work(change: Change) -> None:
            if initial_wh is not None:
                account = await change.account(meter.account_id)
                account.attach_meter(meter.id, energy_wh=initial_wh, at=when,
                                     max_power_w=meter.max_power_w)
            change.meters.append(meter)
            change.event(f"meters/{meter.id}/events", {"type": "MeterAdded", "meter_id": meter.id,
                                                       "account_id": meter.account_id, "bus_id": meter.bus_id})
            change.audit("meter.add", meter.id, _meter_detail(meter) | {"initial_wh": initial_wh})

        await self.fleet.transact(actor, work)
        return meter

    async def update_meter(self, meter_id: str, fields: dict[str, Any], *, actor: str) -> MeterSpec:
        """Move a meter (another bus, unit id or address) or change its model, poll interval, capacity or groups:
        polled at its new place from its next poll, billed on without a gap."""
        current = self._meter(meter_id)
        unknown = set(fields) - set(METER_FIELDS)
        if unknown:
            raise FleetInvalid([RowError("meter", None, name, "not a field that can be changed here (another "
                                         "account: a meter swap or a move-in)") for name in sorted(unknown)])
        checks = Checks(self.catalog)
        [meter] = checks.meters([(None, dataclasses.replace(current, **fields))], new=False)
        checks.raise_if_any()

        async def work(change: Change) -> None:
            if meter.place != current.place:
                await change.stop_commands(meter_id)
            change.meters.append(meter)
            change.event(f"meters/{meter_id}/events", {"type": "MeterChanged", "meter_id": meter_id,
                                                       "fields": current.differences(meter)})
            change.audit("meter.change", meter_id, {k: list(v) if isinstance(v, tuple) else v
                                                    for k, v in fields.items()})

        await self.fleet.transact(actor, work)
        return meter

    async def retire_meter(self, meter_id: str, *, final_wh: int | None = None, at: dt.datetime | None = None,
                           actor: str) -> int:
        """Retire a meter: its final reading billed (if its account is open), no longer polled. Returns the
        final charge in fen."""
        current = self._meter(meter_id)
        owner = self.catalog.accounts[current.account_id]
        readings = await self._readings([meter_id], {meter_id: final_wh} if final_wh is not None else {}, at,
                                        "final_wh") if not owner.closed else {}

        async def work(change: Change) -> int:
            await change.stop_commands(meter_id)
            charged = 0
            if not owner.closed:
                account = await change.account(current.account_id)
                if meter_id in account.cursors:
                    energy, when = readings[meter_id]
                    charged = account.detach_meter(meter_id, final_wh=energy, at=when, by=actor)
            change.retired.append(meter_id)
            change.audit("meter.retire", meter_id, {"final_wh": readings.get(meter_id, (None,))[0],
                                                    "charged_fen": charged})
            return charged

        return await self.fleet.transact(actor, work)

    async def swap_meter(self, old_id: str, new: MeterSpec, *, final_wh: int | None = None,
                         initial_wh: int | None = None, at: dt.datetime | None = None, relay: str = "follow",
                         actor: str) -> dict[str, Any]:
        """换表: the old meter's final reading and the new one's initial reading, billed continuously across the
        swap; the old meter retired, the new one polled in its place (it may take the old one's unit id or
        address); the old meter's queued commands cancelled, the new meter's relay set as ``relay`` says."""
        old = self._meter(old_id)
        self._open_spec(old.account_id)
        new = dataclasses.replace(new, account_id=old.account_id)
        checks = Checks(self.catalog)
        [new] = checks.meters([(None, new)], new=True, moving={old_id})
        checks.raise_if_any()
        final = await self._readings([old_id], {old_id: final_wh} if final_wh is not None else {}, at, "final_wh")
        start = (initial_wh, final[old_id][1]) if initial_wh is not None else (await self._read(new, "initial_wh"))

        async def work(change: Change) -> dict[str, Any]:
            await change.stop_commands(old_id)
            account = await change.account(old.account_id)
            energy, when = final[old_id]
            charged = account.replace_meter(old_id, final_wh=energy, new_id=new.id, initial_wh=start[0],
                                            at=when, max_power_w=new.max_power_w, by=actor)
            change.retired.append(old_id)
            change.meters.append(new)
            command = self._relay(change, new.id, relay, account, f"meter {old_id} replaced by {new.id}")
            change.audit("meter.swap", old.account_id, {"old": old_id, "new": new.id, "final_wh": energy,
                                                        "initial_wh": start[0], "at": when.isoformat(),
                                                        "relay": relay} | _meter_detail(new))
            return {"charged_fen": charged, "final_wh": energy, "initial_wh": start[0], "at": when,
                    "command": command.id if command is not None else None}

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

    # --- helpers -------------------------------------------------------------------------------------------
    def _config(self, account_id: str) -> AccountConfig:
        spec = self._open_spec(account_id)
        assert spec.config is not None
        return spec.config

    def _open_spec(self, account_id: str) -> Any:
        spec = self.catalog.accounts.get(account_id)
        if spec is None or spec.config is None:
            raise UnknownAccount(f"no account {account_id!r}")
        if spec.closed:
            raise FleetConflict([RowError("account", None, "id", f"account {account_id!r} is closed")])
        return spec

    def _meter(self, meter_id: str) -> MeterSpec:
        meter = self.catalog.meters.get(meter_id)
        if meter is None:
            raise UnknownMeter(f"no active meter {meter_id!r}" + (" (retired)" if meter_id in self.catalog.retired
                                                                  else ""))
        return meter

    def _when(self, at: dt.datetime | None) -> dt.datetime:
        now = self.fleet.service.clock()
        if at is None:
            return now
        if at.tzinfo is None:
            raise FleetInvalid([RowError("meter", None, "at", "a time needs its zone (UTC: Z)")])
        if at > now + dt.timedelta(minutes=1):
            raise FleetInvalid([RowError("meter", None, "at", f"{at.isoformat()} is in the future")])
        return at.astimezone(dt.UTC)

    async def _readings(self, meter_ids: Any, given: dict[str, int], at: dt.datetime | None,
                        name: str) -> dict[str, tuple[int, dt.datetime]]:
        """Each meter's reading: as given (at ``at`` or now), or read from the meter now."""
        out = {}
        for meter_id in meter_ids:
            if meter_id in given:
                out[meter_id] = (given[meter_id], self._when(at))
            else:
                out[meter_id] = await self._read(self.catalog.meters[meter_id], name)
        return out

    async def _read(self, meter: MeterSpec, name: str) -> tuple[int, dt.datetime]:
        read = self.fleet.read_meter
        if read is None:
            raise FleetInvalid([RowError("meter", None, name, f"give the reading of meter {meter.id} (this instance "
                                                              "does not poll its bus)")])
        try:
            reading = await read(meter)
        except Exception as exc:  # noqa: BLE001 - a meter that does not answer: the caller gives the reading
            raise FleetConflict([RowError("meter", None, name, f"meter {meter.id} did not answer ({exc}); give "
                                                               "its reading")]) from exc
        return reading.energy_wh, reading.taken_at

    def _relay(self, change: Change, meter_id: str, relay: str, account: PrepaidAccount, reason: str) -> Any:
        if relay not in RELAY_CHOICES:
            raise FleetInvalid([RowError("meter", None, "relay", f"one of {', '.join(RELAY_CHOICES)}")])
        if relay == "leave":
            return None
        action = {"open": "open", "closed": "close"}.get(relay)
        if action is None:
            action = "open" if account.supply is Supply.DISCONNECTED else "close"
        return change.command(meter_id, action, reason, self.catalog.command_expiry_s)


def _meter_detail(meter: MeterSpec) -> dict[str, Any]:
    return {"bus_id": meter.bus_id, "unit_id": meter.unit_id, "address": meter.address, "model": meter.model}
