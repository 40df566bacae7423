"""The static part of the site, from the settings: which accounts, tariffs, thresholds, meters and buses exist.

Dynamic state (balances, cursors, commands) lives in the database; this catalog says how to interpret it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.domain.account import Thresholds
from gateway.domain.tariffs import FlatTariff, Tariff

__all__ = ["AccountSpec", "Catalog", "MeterSpec"]


@dataclass(frozen=True, slots=True)
class AccountSpec:
    id: str
    tariff: Tariff
    thresholds: Thresholds
    opening_balance_fen: int = 0
    protected: bool = False
    meter_ids: tuple[str, ...] = ()


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


@dataclass(slots=True)
class Catalog:
    accounts: dict[str, AccountSpec] = field(default_factory=dict)
    meters: dict[str, MeterSpec] = field(default_factory=dict)
    max_payment_fen: int = 1_000_000
    stale_after_s: float = 300.0
    command_expiry_s: float = 600.0
    confirm_interval_s: float = 0.5

    @classmethod
    def from_settings(cls, settings: object) -> Catalog:
        from gateway.settings import Settings

        assert isinstance(settings, Settings)
        tariffs: dict[str, Tariff] = {name: FlatTariff(t.price) for name, t in settings.tariffs.items()}
        meter_ids: dict[str, list[str]] = {}
        for m in settings.meters:
            meter_ids.setdefault(m.account, []).append(m.id)
        accounts = {
            a.id: AccountSpec(
                id=a.id,
                tariff=tariffs[a.tariff],
                thresholds=Thresholds(a.warning1, a.warning2, a.overdraft, a.reconnect_min_topup),
                opening_balance_fen=a.opening_balance,
                protected=a.protected,
                meter_ids=tuple(meter_ids.get(a.id, ())),
            )
            for a in settings.accounts
        }
        meters = {
            m.id: MeterSpec(m.id, m.account, m.bus, m.poll_interval_s, m.max_power_w, m.unit_id, m.address, m.model)
            for m in settings.meters
        }
        return cls(accounts, meters, settings.api.max_payment, settings.engine.stale_after_s,
                   settings.engine.command_expiry_s, settings.engine.confirm_interval_s)
