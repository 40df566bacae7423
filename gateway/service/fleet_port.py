"""The storage port of the fleet's configuration: accounts' and meters' configuration rows, and the revision of
the catalog (``gateway.service.fleet``). Adapters in ``gateway.adapters.fleet_rows``."""

from __future__ import annotations

import abc
import datetime as dt
from dataclasses import dataclass, field

from gateway.service.catalog import AccountConfig, MeterSpec

__all__ = ["FleetRepository", "FleetRows", "PlaceTaken"]


class PlaceTaken(RuntimeError):
    """The database refused a meter's place: another active meter answers at that unit id or address."""


@dataclass(slots=True)
class FleetRows:
    """Configuration rows changed after a revision (all of them after revision -1)."""

    rev: int
    accounts: list[AccountConfig] = field(default_factory=list)  # an empty tariff: a row not configured yet
    meters: list[MeterSpec] = field(default_factory=list)  # active ones (an empty bus: not configured yet)
    retired: list[str] = field(default_factory=list)  # meters retired


class FleetRepository(abc.ABC):
    @abc.abstractmethod
    async def rev(self) -> int:
        """The revision of the last catalog change (0: none yet)."""

    @abc.abstractmethod
    async def next_rev(self) -> int:
        """Take the next revision for a change, holding the catalog's row until the commit (catalog changes of all
        instances go one at a time, in revision order)."""

    @abc.abstractmethod
    async def changed(self, after: int) -> FleetRows:
        """The rows a change after revision ``after`` touched (``after=-1``: every row)."""

    @abc.abstractmethod
    async def put_accounts(self, accounts: list[AccountConfig], rev: int, now: dt.datetime) -> None:
        """Write the configuration of accounts whose row exists (``AccountRepository.add`` makes rows)."""

    @abc.abstractmethod
    async def put_meters(self, meters: list[MeterSpec], rev: int) -> None:
        """Add or change meters (active); ``PlaceTaken`` if one would share a bus's unit id or address."""

    @abc.abstractmethod
    async def retire_meters(self, meter_ids: list[str], rev: int, now: dt.datetime) -> None:
        """Retire meters: kept with their readings, neither polled nor billed any more."""
