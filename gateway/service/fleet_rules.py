"""What makes accounts and meters to provision acceptable: checked against the catalog before anything is written,
as strictly as the settings file is (``gateway.settings``), every error with its row and field.

Two kinds of errors: *invalid* (a row that names what the site does not have: an unknown tariff, bus, model,
credit class, channel or account; a meter without the unit id or address its bus's protocol needs; two rows of
one request in the same place) and *conflicts* (a row that clashes with the fleet as it is: an id in use, a place
on a bus taken by another meter or a relay module, a closed account).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable

from gateway.service.catalog import AccountConfig, Catalog, MeterSpec
from gateway.service.errors import FleetConflict, FleetInvalid, RowError

__all__ = ["Checks", "normal_meter"]

Row = tuple[int | None, AccountConfig]
MeterRow = tuple[int | None, MeterSpec]


def normal_meter(catalog: Catalog, meter: MeterSpec) -> MeterSpec:
    """The meter with its DL/T 645 address in its 12-digit form (as the driver sends it)."""
    if catalog.buses.get(meter.bus_id, "").startswith("dlt645") and meter.address and meter.address.isdigit():
        return dataclasses.replace(meter, address=meter.address.zfill(12))
    return meter


class Checks:
    """Collects the errors of one request; ``raise_if_any`` refuses it (invalid rows first)."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.invalid: list[RowError] = []
        self.conflicts: list[RowError] = []

    def raise_if_any(self) -> None:
        if self.invalid:
            raise FleetInvalid(self.invalid + self.conflicts)
        if self.conflicts:
            raise FleetConflict(self.conflicts)

    def _bad(self, kind: str, row: int | None, name: str, msg: str) -> None:
        self.invalid.append(RowError(kind, row, name, msg))

    def _clash(self, kind: str, row: int | None, name: str, msg: str) -> None:
        self.conflicts.append(RowError(kind, row, name, msg))

    # --- accounts -------------------------------------------------------------------------------------------
    def accounts(self, rows: Iterable[Row], *, new: bool) -> None:
        """``new``: accounts to open (their ids must be free); else changes of open accounts."""
        seen: dict[str, int | None] = {}
        for row, a in rows:
            if a.id in seen:
                self._bad("account", row, "id", f"{a.id!r} is also row {seen[a.id]}")
                continue
            seen[a.id] = row
            known = self.catalog.accounts.get(a.id)
            if new and known is not None:
                self._clash("account", row, "id", f"account {a.id!r} exists already")
            elif not new and known is None:
                self._bad("account", row, "id", f"no account {a.id!r}")
            elif not new and known.closed:
                self._clash("account", row, "id", f"account {a.id!r} is closed")
            self.account(row, a)

    def account(self, row: int | None, a: AccountConfig) -> None:
        """The references and rules of one account's configuration."""
        catalog = self.catalog
        for name in ("tariff", "tariff_next"):
            tariff = getattr(a, name)
            if tariff is not None and tariff not in catalog.tariffs:
                self._bad("account", row, name, f"unknown tariff {tariff!r} (known: {', '.join(sorted(catalog.tariffs))})")
        if (a.tariff_next is None) != (a.tariff_next_at is None):
            self._bad("account", row, "tariff_next_at", "a tariff change needs both the tariff and when it starts")
        if a.credit_class and a.credit_class not in catalog.site.credit_classes:
            self._bad("account", row, "credit_class", f"unknown credit class {a.credit_class!r} "
                                                      f"(known: {', '.join(catalog.site.credit_classes)})")
        if a.warning2_fen > a.warning1_fen:
            self._bad("account", row, "warning2", "the final warning (warning2) is at or below warning1")
        for j, contact in enumerate(a.contacts):
            if contact.channel not in catalog.channels:
                self._bad("account", row, f"contacts[{j}].channel", f"unknown channel {contact.channel!r}"
                          + ("" if catalog.channels else " (no notices section in the settings)"))

    # --- meters ---------------------------------------------------------------------------------------------
    def meters(self, rows: list[MeterRow], *, new: bool, accounts: Collection[str] = (),
               moving: Collection[str] = ()) -> list[MeterSpec]:
        """Meters to add (``new``) or to change; returns them normalised. ``accounts``: accounts opened by the
        same request; ``moving``: other meters of the request whose places change (or that retire)."""
        catalog = self.catalog
        out: list[MeterSpec] = []
        places: dict[tuple[str, object], tuple[int | None, str]] = {}
        changed = {m.id for _, m in rows} | set(moving)
        seen: dict[str, int | None] = {}
        for row, meter in rows:
            meter = normal_meter(catalog, meter)
            out.append(meter)
            if meter.id in seen:
                self._bad("meter", row, "id", f"{meter.id!r} is also row {seen[meter.id]}")
                continue
            seen[meter.id] = row
            known = catalog.meters.get(meter.id)
            if new and (known is not None or meter.id in catalog.retired):
                self._clash("meter", row, "id", f"meter {meter.id!r} exists already"
                            + (" (retired: its readings keep the id)" if known is None else ""))
            elif not new and known is None:
                self._bad("meter", row, "id", f"no active meter {meter.id!r}")
            self._account_of(row, meter, accounts)
            place = self._place(row, meter)
            if place is None:
                continue
            field_ = "unit_id" if isinstance(place[1], int) else "address"
            other = places.setdefault(place, (row, meter.id))
            if other[1] != meter.id:
                self._bad("meter", row, field_, f"{place[1]} on bus {meter.bus_id!r} is also row {other[0]}'s "
                                                f"({other[1]})")
                continue
            taken = catalog.place_of(place)
            if taken is not None and taken != meter.id and taken not in changed:
                self._clash("meter", row, field_, f"{place[1]} on bus {meter.bus_id!r} is {taken}'s: one meter would "
                                                  "be billed and switched for two accounts")
        self._switchable(rows, out, set(moving))
        return out

    def _switchable(self, rows: list[MeterRow], meters: list[MeterSpec], leaving: set[str]) -> None:
        """A prepaid account needs a meter whose supply can be switched (as the settings file requires)."""
        catalog = self.catalog
        by_account: dict[str, list[tuple[int | None, MeterSpec]]] = {}
        for (row, _), meter in zip(rows, meters, strict=True):
            by_account.setdefault(meter.account_id, []).append((row, meter))
        for account_id, mine in by_account.items():
            spec = catalog.accounts.get(account_id)
            others = [catalog.meters[m] for m in (spec.meter_ids if spec is not None else ())
                      if m in catalog.meters and m not in leaving and m not in {x.id for _, x in mine}]
            if not any(catalog.switchable(m) for m in [*others, *(x for _, x in mine)]):
                row, meter = mine[0]
                self._bad("meter", row, "model", f"model {meter.model!r} has no relay and account {account_id!r} "
                                                 "has no other meter that can be switched: use a model with a relay "
                                                 "(or a relay module in the settings)")

    def _account_of(self, row: int | None, meter: MeterSpec, accounts: Collection[str]) -> None:
        spec = self.catalog.accounts.get(meter.account_id)
        if spec is None and meter.account_id not in accounts:
            self._bad("meter", row, "account", f"unknown account {meter.account_id!r}")
        elif spec is not None and spec.closed:
            self._clash("meter", row, "account", f"account {meter.account_id!r} is closed")

    def _place(self, row: int | None, meter: MeterSpec) -> tuple[str, object] | None:
        """Where the meter answers on its bus, or None (with an error) when that is not well given."""
        catalog = self.catalog
        protocol = catalog.buses.get(meter.bus_id)
        if protocol is None:
            self._bad("meter", row, "bus", f"unknown bus {meter.bus_id!r} (known: {', '.join(sorted(catalog.buses))})")
            return None
        if protocol.startswith("modbus"):
            if catalog.models is not None and meter.model not in catalog.models:
                self._bad("meter", row, "model", f"unknown meter model {meter.model!r} "
                                                 f"(known: {', '.join(sorted(catalog.models))})")
            if meter.address is not None:
                self._bad("meter", row, "address", "a meter on a Modbus bus has a unit_id, not an address")
            if meter.unit_id is None or not 1 <= meter.unit_id <= 247:
                self._bad("meter", row, "unit_id", "required on a Modbus bus: 1 to 247")
                return None
            reserved = catalog.reserved.get((meter.bus_id, meter.unit_id))
            if reserved is not None:
                self._clash("meter", row, "unit_id", f"{meter.unit_id} on bus {meter.bus_id!r} is relay module "
                                                     f"{reserved!r}'s")
            return meter.bus_id, meter.unit_id
        if meter.unit_id is not None:
            self._bad("meter", row, "unit_id", "a meter on a DL/T 645 bus has an address, not a unit_id")
        if not (meter.address and meter.address.isdigit() and len(meter.address) == 12):
            self._bad("meter", row, "address", "a DL/T 645 meter needs a numeric address of up to 12 digits")
            return None
        return meter.bus_id, meter.address
