"""Bulk import and export of accounts and meters (the rows of ``gateway.fleet_files``: CSV or JSON Lines).

An import is checked whole before anything is written (``gateway.service.fleet_rules``), every error with its
row and field. By default it is all or nothing: one bad row refuses the file. ``partial`` imports the good rows
and reports the others (a meter whose account row failed fails too). A row equal to what the fleet has is left
as it is, so importing a file twice changes nothing; a row that differs from it is a conflict, unless the import
is an ``update``: then it changes what the API's PATCH may change (thresholds, credit class, protection and
contacts of an account; where a meter answers, its model, poll interval, capacity and groups), one audit row for
the file. A tariff change, a meter on another account, a closing are the lifecycle's operations, one at a time. New accounts start with their opening balance as a ledger
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
    accounts_changed: int = 0
    accounts_unchanged: int = 0
    meters_created: int = 0
    meters_changed: int = 0
    meters_unchanged: int = 0
    dry_run: bool = False
    errors: list[RowError] = field(default_factory=list)  # the rows left out (``partial``)

    def as_dict(self) -> dict[str, Any]:
        return {"accounts": {"created": self.accounts_created, "changed": self.accounts_changed,
                             "unchanged": self.accounts_unchanged},
                "meters": {"created": self.meters_created, "changed": self.meters_changed,
                           "unchanged": self.meters_unchanged},
                "dry_run": self.dry_run, "errors": [e.as_dict() for e in self.errors]}


Rows = list[tuple[int, Any]]


async def import_fleet(fleet: Fleet, accounts: list[tuple[int, AccountConfig]], meters: list[tuple[int, MeterSpec]],
                       *, actor: str, partial: bool = False, dry_run: bool = False, update: bool = False,
                       errors: list[RowError] = ()) -> ImportReport:  # type: ignore[assignment]
    """Import rows (each with its row number); ``errors``: rows that could not even be read (their numbers are
    reported with the others). ``update``: a row that differs from the fleet changes it (what the API's PATCH
    may change: an account's thresholds, credit class, protection, contacts; a meter's place, model, poll interval,
    capacity, groups), else it is a conflict."""
    catalog = fleet.catalog
    report = ImportReport(dry_run=dry_run)
    checks = Checks(catalog)
    checks.invalid += errors
    new_accounts, changed_accounts = _sort(catalog.accounts, accounts, checks, report, "account", update)
    checks.accounts(new_accounts, new=True)
    checks.accounts(changed_accounts, new=False)
    new_ids = {config.id for _, config in new_accounts}
    normal = [(row, normal_meter(catalog, meter)) for row, meter in meters]
    new_meters, changed_meters = _sort(catalog.meters, normal, checks, report, "meter", update)
    moving = {meter.id for _, meter in changed_meters}
    new_meters = list(zip([r for r, _ in new_meters], checks.meters(new_meters, new=True, accounts=new_ids,
                                                                     moving=moving), strict=True))
    checks.meters(changed_meters, new=False, moving=moving)
    bad = checks.invalid + checks.conflicts
    if bad and not partial:
        checks.raise_if_any()
    report.errors = sorted(bad, key=lambda e: (e.kind, e.row or 0))
    failed_accounts = {config.id for row, config in new_accounts if _has(bad, "account", row)}
    good_accounts = [config for row, config in new_accounts if config.id not in failed_accounts]
    good_changes = [config for row, config in changed_accounts if not _has(bad, "account", row)]
    good_meters = []
    for row, meter in new_meters:
        if _has(bad, "meter", row):
            continue
        if meter.account_id in failed_accounts:
            report.errors.append(RowError("meter", row, "account", f"account {meter.account_id}'s row was refused"))
            continue
        good_meters.append(meter)
    moved = [meter for row, meter in changed_meters if not _has(bad, "meter", row)]
    report.accounts_created, report.meters_created = len(good_accounts), len(good_meters)
    report.accounts_changed, report.meters_changed = len(good_changes), len(moved)
    if dry_run or not (good_accounts or good_meters or good_changes or moved):
        return report

    async def work(change: Change) -> None:
        for config in good_accounts:
            change.open(dataclasses.replace(config, status="open"))
        for config in good_changes:
            await change.account(config.id)  # written back, and decided again after the change
            change.accounts.append(config)
        for meter in moved:
            if meter.place != catalog.meters[meter.id].place:
                await change.stop_commands(meter.id)
        change.meters += good_meters + moved
        counts = {"accounts": len(good_accounts), "meters": len(good_meters), "accounts_changed": len(good_changes),
                  "meters_changed": len(moved)}
        change.event("fleet/events", {"type": "FleetImported", **counts, "by": actor})
        change.audit("fleet.import", "fleet", {**counts, "rows_refused": len(report.errors)})

    await fleet.transact(actor, work)
    return report


# what an import with ``update`` may change (the rest goes through the lifecycle's operations)
_CHANGEABLE = {"account": {"warning1_fen", "warning2_fen", "overdraft_fen", "reconnect_min_topup_fen", "credit_class",
                           "protected", "contacts"},
               "meter": {"bus_id", "unit_id", "address", "model", "groups", "poll_interval_s", "max_power_w"}}
_HOW = {"account": "PATCH /v1/accounts, or a tariff change (POST /v1/accounts/{id}/tariff-change)",
        "meter": "PATCH /v1/meters; another account: a meter swap or a move-in"}


def _sort(known: Any, rows: Rows, checks: Checks, report: ImportReport, kind: str,
          update: bool) -> tuple[Rows, Rows]:
    """The rows of ``kind`` that are new, and those that change what the fleet has (``update``); equal rows are
    counted, other differences are conflicts."""
    new, changed = [], []
    for row, item in rows:
        found = known.get(item.id)
        current = found.config if kind == "account" and found is not None else found
        if current is None:
            new.append((row, item))
            continue
        if kind == "account":
            item = dataclasses.replace(item, opening_balance_fen=current.opening_balance_fen, status=current.status)
        differs = current.differences(item)
        if not differs:
            setattr(report, f"{kind}s_unchanged", getattr(report, f"{kind}s_unchanged") + 1)
        elif update and set(differs) <= _CHANGEABLE[kind]:
            changed.append((row, item))
        else:
            fixed = [d for d in differs if not update or d not in _CHANGEABLE[kind]]
            checks.conflicts.append(RowError(kind, row, fixed[0], f"{kind} {item.id} differs from the fleet in "
                                             f"{', '.join(fixed)}: " + (f"change it with {_HOW[kind]}" if update else
                                                                        "import with update, or change it with "
                                                                        f"{_HOW[kind]}")))
    return new, changed


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

