"""Bulk import and export of accounts and meters (the rows of ``gateway.fleet_files``: CSV or JSON Lines).

An import is checked whole before anything is written (``gateway.service.fleet_rules``), every error with its
row and field. By default it is all or nothing: one bad row refuses the file. ``partial`` imports the good rows
and reports the others (a meter whose account row failed fails too). A row equal to what the fleet has is left
as it is, so importing a file twice changes nothing; a row that differs from it is a conflict (changes go
through the API's PATCH, where each one is audited). New accounts start with their opening balance as a ledger
entry; new meters are polled within one poll interval, billed from their first reading.

An export gives the same shapes, with each open account's current balance as its opening balance: imported into
another instance, the site carries on from there (the ledger's history stays where it was).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from gateway.service.catalog import AccountConfig, MeterSpec
from gateway.service.errors import RowError
from gateway.service.fleet import Change, Fleet
from gateway.service.fleet_rules import Checks, normal_meter

__all__ = ["ImportReport", "export_fleet", "import_fleet"]


@dataclass(slots=True)
class ImportReport:
    accounts_created: int = 0
    accounts_unchanged: int = 0
    meters_created: int = 0
    meters_unchanged: int = 0
    dry_run: bool = False
    errors: list[RowError] = field(default_factory=list)  # the rows left out (``partial``)

    def as_dict(self) -> dict[str, Any]:
        return {"accounts": {"created": self.accounts_created, "unchanged": self.accounts_unchanged},
                "meters": {"created": self.meters_created, "unchanged": self.meters_unchanged},
                "dry_run": self.dry_run, "errors": [e.as_dict() for e in self.errors]}


async def import_fleet(fleet: Fleet, accounts: list[tuple[int, AccountConfig]], meters: list[tuple[int, MeterSpec]],
                       *, actor: str, partial: bool = False, dry_run: bool = False,
                       errors: list[RowError] = ()) -> ImportReport:  # type: ignore[assignment]
    """Import rows (each with its row number); ``errors``: rows that could not even be read (their numbers are
    reported with the others)."""
    catalog = fleet.catalog
    report = ImportReport(dry_run=dry_run)
    checks = Checks(catalog)
    checks.invalid += errors
    new_accounts = []
    for row, config in accounts:
        known = catalog.accounts.get(config.id)
        if known is None or known.config is None:
            new_accounts.append((row, config))
            continue
        differs = [d for d in known.config.differences(config) if d != "opening_balance_fen"]
        if differs:
            checks.conflicts.append(RowError("account", row, differs[0], f"account {config.id} differs from the "
                                             f"fleet in {', '.join(differs)}: change it with PATCH /v1/accounts"))
        else:
            report.accounts_unchanged += 1
    checks.accounts(new_accounts, new=True)
    new_ids = {config.id for _, config in new_accounts}
    new_meters = []
    for row, meter in meters:
        meter = normal_meter(catalog, meter)
        known_meter = catalog.meters.get(meter.id)
        if known_meter is None:
            new_meters.append((row, meter))
        elif differs := known_meter.differences(meter):
            checks.conflicts.append(RowError("meter", row, differs[0], f"meter {meter.id} differs from the fleet "
                                             f"in {', '.join(differs)}: change it with PATCH /v1/meters"))
        else:
            report.meters_unchanged += 1
    checks.meters(new_meters, new=True, accounts=new_ids)
    bad = checks.invalid + checks.conflicts
    if bad and not partial:
        checks.raise_if_any()
    report.errors = sorted(bad, key=lambda e: (e.kind, e.row or 0))
    failed_accounts = {config.id for row, config in new_accounts if _has(bad, "account", row)}
    good_accounts = [config for row, config in new_accounts if config.id not in failed_accounts]
    good_meters = []
    for row, meter in new_meters:
        if _has(bad, "meter", row):
            continue
        if meter.account_id in failed_accounts:
            report.errors.append(RowError("meter", row, "account", f"account {meter.account_id}'s row was refused"))
            continue
        good_meters.append(meter)
    report.accounts_created, report.meters_created = len(good_accounts), len(good_meters)
    if dry_run or not (good_accounts or good_meters):
        return report

    async def work(change: Change) -> None:
        for config in good_accounts:
            change.open(dataclasses.replace(config, status="open"))
        change.meters += good_meters
        change.event("fleet/events", {"type": "FleetImported", "accounts": len(good_accounts),
                                      "meters": len(good_meters), "by": actor})
        change.audit("fleet.import", "fleet", {"accounts": len(good_accounts), "meters": len(good_meters),
                                               "rows_refused": len(report.errors)})

    await fleet.transact(actor, work)
    return report


def _has(errors: list[RowError], kind: str, row: int | None) -> bool:
    return any(e.kind == kind and e.row == row for e in errors)


async def export_fleet(fleet: Fleet) -> tuple[list[AccountConfig], list[MeterSpec]]:
    """The open accounts (their current balance as the opening balance) and their active meters, by id."""
    catalog = fleet.catalog
    async with fleet.service.uow(readonly=True) as uow:
        balances = await uow.ledger.balances()
    accounts = [dataclasses.replace(spec.config, opening_balance_fen=balances.get(spec.id, 0))
                for spec in sorted(catalog.accounts.values(), key=lambda s: s.id)
                if spec.config is not None and not spec.closed]
    open_ids = {a.id for a in accounts}
    meters = sorted((m for m in catalog.meters.values() if m.account_id in open_ids), key=lambda m: m.id)
    return accounts, meters

