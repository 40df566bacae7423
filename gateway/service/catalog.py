"""The static part of the site, from the settings: accounts, tariffs, thresholds, meters, buses, site policy.

Dynamic state (balances, engine state, commands) lives in the database; this catalog says how to interpret it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.domain.account import PrepaidAccount, Thresholds
from gateway.domain.notices import Contact, NoticePolicy
from gateway.domain.policy import SitePolicy
from gateway.domain.relay import Limits
from gateway.domain.tariffs import Tariff

__all__ = ["AccountSpec", "Catalog", "MeterSpec"]


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

    @property
    def stale_after_s(self) -> float:
        """How old a meter's last reading may be before it counts as stale (the site policy's limit)."""
        stale = self.site.stale_after
        return stale.total_seconds() if stale is not None else float("inf")

    def group(self, name: str) -> list[str]:
        """The ids of the meters in a group."""
        return [m.id for m in self.meters.values() if name in m.groups]

    def account(self, account_id: str, state: dict[str, Any]) -> PrepaidAccount:
        """The domain account of ``account_id`` from its stored state, with its meters' configuration."""
        spec = self.accounts[account_id]
        account = PrepaidAccount.from_state(state, id=account_id, tariff=spec.tariff, thresholds=spec.thresholds,
                                            site=self.site, credit_class=spec.credit_class,
                                            protected=spec.protected)
        for meter_id in spec.meter_ids:
            account.add_meter(meter_id, max_power_w=self.meters[meter_id].max_power_w)
        return account

    def new_account(self, account_id: str) -> PrepaidAccount:
        """A fresh account with its opening balance (the first ledger entry is written by the caller)."""
        spec = self.accounts[account_id]
        account = PrepaidAccount(account_id, spec.tariff, spec.thresholds, spec.opening_balance_fen,
                                 site=self.site, credit_class=spec.credit_class, protected=spec.protected)
        for meter_id in spec.meter_ids:
            account.add_meter(meter_id, max_power_w=self.meters[meter_id].max_power_w)
        return account
