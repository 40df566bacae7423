"""Meters in the fleet's life (``gateway.service.lifecycle``): add, move or change, retire, replace (换表); and
what every lifecycle operation needs: the readings at the change (given, or read from the meter at once), the
time it happens, and where the meter's relay is left.
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

__all__ = ["RELAY_CHOICES", "MeterLifecycle"]

RELAY_CHOICES = ("follow", "open", "closed", "leave")
METER_FIELDS = ("bus_id", "unit_id", "address", "model", "groups", "poll_interval_s", "max_power_w")


class MeterLifecycle:
    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.catalog = fleet.catalog

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
                         actor: str, reason: str | None = None) -> dict[str, Any]:
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
                                                        "relay": relay, "reason": reason} | _meter_detail(new))
            return {"charged_fen": charged, "final_wh": energy, "initial_wh": start[0], "at": when,
                    "command": command.id if command is not None else None}

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
