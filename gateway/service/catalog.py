"""The configuration of the site in memory: accounts, tariffs, thresholds, meters, buses, site policy.

Tariffs, buses and the site policy come from the settings; accounts and meters from their rows in the database
(``gateway.service.fleet`` loads them and keeps them up to date as they are provisioned). Dynamic state
(balances, engine state, commands) lives in the database; this catalog says how to interpret it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from gateway.domain.account import PrepaidAccount, Thresholds
from gateway.domain.billing import TariffChange
from gateway.domain.notices import Contact, NoticePolicy
from gateway.domain.policy import SitePolicy
from gateway.domain.relay import Limits
from gateway.domain.tariffs import Tariff

__all__ = ["AccountConfig", "AccountSpec", "Catalog", "MeterSpec"]


@dataclass(frozen=True, slots=True)
class AccountConfig:
    """An account's configuration as stored: names (of its tariff), amounts in fen; no engine state."""

    id: str
    tariff: str
    opening_balance_fen: int = 0
    warning1_fen: int = 2000
    warning2_fen: int = 500
    overdraft_fen: int | None = None  # None: the credit class's
    reconnect_min_topup_fen: int = 100
    credit_class: str = ""
    protected: bool = False
    contacts: tuple[Contact, ...] = ()
    tariff_next: str | None = None  # a tariff change: ``tariff_next`` from ``tariff_next_at`` on
    tariff_next_at: dt.datetime | None = None
    status: str = "open"  # open | closed

    @property
    def thresholds(self) -> Thresholds:
        return Thresholds(self.warning1_fen, self.warning2_fen, self.overdraft_fen, self.reconnect_min_topup_fen)

    def differences(self, other: AccountConfig) -> list[str]:
        """The names of the fields (but the status) in which ``other`` differs."""
        return [f.name for f in dataclasses.fields(self)
                if f.name != "status" and getattr(self, f.name) != getattr(other, f.name)]


@dataclass(frozen=True, slots=True)
class AccountSpec:
    id: str
    tariff: Tariff
    thresholds: Thresholds
    opening_balance_fen: int = 0
    protected: bool = False
    credit_class: str = ""
    meter_ids: tuple[str, ...] = ()
    contacts: tuple[Contact, ...] = ()  # who is told (notices)
    tariff_change: Any = None  # gateway.domain TariffChange: the tariff from a given time on
    config: AccountConfig | None = None  # as stored (None: made by hand, in tests)

    @property
    def closed(self) -> bool:
        return self.config is not None and self.config.status == "closed"


@dataclass(frozen=True, slots=True)
class MeterSpec:
    id: str
    account_id: str
    bus_id: str
    poll_interval_s: float = 60.0
    max_power_w: int = 60_000
    unit_id: int | None = None
    address: str | None = None
    model: str = "generic-prepaid"
    groups: tuple[str, ...] = ()

    def differences(self, other: MeterSpec) -> list[str]:
        """The names of the fields in which ``other`` differs."""
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) != getattr(other, f.name)]

    @property
    def place(self) -> tuple[str, int | None, str | None]:
        """Where it answers: (bus, unit id, address)."""
        return self.bus_id, self.unit_id, self.address


@dataclass(slots=True)
class Catalog:
    accounts: dict[str, AccountSpec] = field(default_factory=dict)
    meters: dict[str, MeterSpec] = field(default_factory=dict)
    site: SitePolicy = field(default_factory=SitePolicy)
    max_payment_fen: int = 1_000_000
    command_expiry_s: float = 600.0
    confirm_interval_s: float = 0.5
    manual_hold_s: float = 86_400.0
    evaluate_every_s: float = 5.0
    reading_history_s: float = 60.0
    max_operator_hold_s: float = 7 * 86_400.0
    relay_limits: Limits = field(default_factory=Limits)
    notices: NoticePolicy | None = None  # None: no notices are sent
    tariffs: dict[str, Tariff] = field(default_factory=dict)  # by name (the settings')
    buses: dict[str, str] = field(default_factory=dict)  # bus id -> protocol (the settings')
    models: frozenset[str] | None = None  # the Modbus meter models known (None: not checked)
    relayless: frozenset[str] = frozenset()  # of those, the models without a relay
    relay_modules: frozenset[str] = frozenset()  # meters switched by a relay module of their own
    channels: frozenset[str] = frozenset()  # the notice channels contacts may name
    reserved: dict[tuple[str, int], str] = field(default_factory=dict)  # (bus, unit id) -> its relay module
    rev: int = 0  # the revision of the last catalog change applied (gateway.service.fleet)
    retired: set[str] = field(default_factory=set)  # ids of retired meters (not to be used again)
    # (bus, unit id or address) -> the active meter there; kept by put_meters and drop_meter
    _places: dict[tuple[str, object], str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._places = {_where(m): m.id for m in self.meters.values()}

    def switchable(self, meter: MeterSpec) -> bool:
        """Whether the meter's supply can be switched: a DL/T 645 meter, a Modbus model with a relay, or a meter
        with a relay module."""
        return (not self.buses.get(meter.bus_id, "").startswith("modbus") or meter.model not in self.relayless
                or meter.id in self.relay_modules)

    def place_of(self, place: tuple[str, object]) -> str | None:
        """The active meter at (bus, unit id or address), if any."""
        return self._places.get(place)

    @property
    def stale_after_s(self) -> float:
        """How old a meter's last reading may be before it counts as stale (the site policy's limit)."""
        stale = self.site.stale_after
        return stale.total_seconds() if stale is not None else float("inf")

    def group(self, name: str) -> list[str]:
        """The ids of the meters in a group."""
        return [m.id for m in self.meters.values() if name in m.groups]

    # --- changes (gateway.service.fleet applies them after their commit) ------------------------------------
    def spec(self, config: AccountConfig) -> AccountSpec:
        """The account of ``config`` with its tariffs resolved (its meters as the catalog has them)."""
        change = None
        if config.tariff_next is not None and config.tariff_next_at is not None:
            change = TariffChange(config.tariff_next_at, config.tariff_next, self.tariffs[config.tariff_next])
        known = self.accounts.get(config.id)
        return AccountSpec(config.id, self.tariffs[config.tariff], _shared(config.thresholds),
                           config.opening_balance_fen, config.protected, config.credit_class,
                           known.meter_ids if known is not None else (), config.contacts, change, config)

    def put_account(self, config: AccountConfig) -> None:
        self.accounts[config.id] = self.spec(config)

    def put_meter(self, meter: MeterSpec) -> None:
        """Add or change a meter (moved to another account: its ids on both)."""
        self.put_meters([meter])

    def put_meters(self, meters: Iterable[MeterSpec]) -> None:
        """Add or change meters (a meter moved to another account: its ids on both); each account's meter ids are
        changed once, however many of its meters come (a load of 100,000)."""
        joining: dict[str, dict[str, None]] = {}
        for meter in meters:
            old = self.meters.get(meter.id)
            if old is not None:
                self._places.pop(_where(old), None)
                if old.account_id != meter.account_id:
                    self._meter_ids(old.account_id, tuple(m for m in self.accounts[old.account_id].meter_ids
                                                          if m != meter.id))
            self._places[_where(meter)] = meter.id
            self.meters[meter.id] = meter
            if meter.id not in self.accounts[meter.account_id].meter_ids:
                joining.setdefault(meter.account_id, {})[meter.id] = None
        for account_id, ids in joining.items():
            self._meter_ids(account_id, (*self.accounts[account_id].meter_ids, *ids))

    def drop_meter(self, meter_id: str) -> None:
        """A retired meter: neither polled nor billed any more."""
        old = self.meters.pop(meter_id, None)
        self.retired.add(meter_id)
        if old is not None:
            self._places.pop(_where(old), None)
        if old is not None and old.account_id in self.accounts:
            self._meter_ids(old.account_id, tuple(m for m in self.accounts[old.account_id].meter_ids
                                                  if m != meter_id))

    def _meter_ids(self, account_id: str, ids: tuple[str, ...]) -> None:
        self.accounts[account_id] = dataclasses.replace(self.accounts[account_id], meter_ids=ids)

    def account(self, account_id: str, state: dict[str, Any]) -> PrepaidAccount:
        """The domain account of ``account_id`` from its stored state, with its meters' configuration."""
        spec = self.accounts[account_id]
        account = PrepaidAccount.from_state(state, id=account_id, tariff=spec.tariff, thresholds=spec.thresholds,
                                            site=self.site, credit_class=spec.credit_class,
                                            protected=spec.protected, tariff_change=spec.tariff_change)
        for meter_id in spec.meter_ids:
            account.add_meter(meter_id, max_power_w=self.meters[meter_id].max_power_w)
        return account

    def new_account(self, spec: AccountSpec) -> PrepaidAccount:
        """A fresh account of ``spec`` (``spec(config)`` for one not in the catalog yet) with its opening balance
        (the first ledger entry is written by the caller)."""
        account = PrepaidAccount(spec.id, spec.tariff, spec.thresholds, spec.opening_balance_fen,
                                 site=self.site, credit_class=spec.credit_class, protected=spec.protected,
                                 tariff_change=spec.tariff_change)
        for meter_id in spec.meter_ids:
            account.add_meter(meter_id, max_power_w=self.meters[meter_id].max_power_w)
        return account


_THRESHOLDS: dict[Thresholds, Thresholds] = {}


def _shared(thresholds: Thresholds) -> Thresholds:
    """One object per distinct set of thresholds (100,000 accounts mostly share a handful)."""
    return _THRESHOLDS.setdefault(thresholds, thresholds)


def _where(meter: MeterSpec) -> tuple[str, object]:
    return (meter.bus_id, meter.unit_id if meter.unit_id is not None else meter.address)
