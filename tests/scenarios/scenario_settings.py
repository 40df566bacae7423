"""The gateway's settings for a scenario file: its site policy, holiday calendar, tariffs, accounts and meters.

The meters are put on one Modbus TCP bus that the scenarios never poll (``Gateway(..., run_buses=False)``); a
meter takes the options ``MeterSettings`` has (``max_power_w``). Thresholds default as the settings do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway.domain.money import parse_yuan
from gateway.settings import Settings

__all__ = ["BUS", "settings_for", "yuan"]

BUS = "bus-1"
SPEC_ACCOUNT_KEYS = {"tariff", "balance", "thresholds", "credit_class", "protected", "meters"}
THRESHOLD_KEYS = {"warning1", "warning2", "overdraft", "reconnect_min_topup"}
METER_OPTIONS = {"max_power_w"}  # what MeterSettings lets a site configure per meter


def yuan(value: Any, *, allow_negative: bool = False) -> int:
    """A YAML amount in yuan ("12.34", or an integer) -> fen."""
    return parse_yuan(str(value), allow_zero=True, allow_negative=allow_negative)


def settings_for(spec: dict[str, Any], base_dir: Path, db_url: str) -> Settings:
    """The gateway's settings for a scenario: its site policy, tariffs, accounts and meters."""
    policy = dict(spec.get("site") or {})
    timezone = policy.pop("timezone", "Asia/Shanghai")
    accounts: list[dict[str, Any]] = []
    meters: list[dict[str, Any]] = []
    for account_id, a in spec["accounts"].items():
        unknown = set(a) - SPEC_ACCOUNT_KEYS
        assert not unknown, f"accounts.{account_id}: unknown key(s) {unknown}"
        th = a.get("thresholds") or {}
        unknown = set(th) - THRESHOLD_KEYS
        assert not unknown, f"accounts.{account_id}.thresholds: unknown key(s) {unknown}"
        overdraft = th.get("overdraft")
        accounts.append({
            "id": account_id, "tariff": a["tariff"], "opening_balance": str(a.get("balance", "0")),
            "warning1": str(th.get("warning1", "20.00")), "warning2": str(th.get("warning2", "5.00")),
            "overdraft": None if overdraft is None else str(overdraft),
            "reconnect_min_topup": str(th.get("reconnect_min_topup", "1.00")),
            "credit_class": a.get("credit_class", ""), "protected": bool(a.get("protected", False))})
        for meter_id, options in (a.get("meters") or {}).items():
            options = dict(options or {})
            assert not set(options) - METER_OPTIONS, \
                f"meter {meter_id}: {sorted(set(options) - METER_OPTIONS)} can't be configured in the settings"
            meters.append({"id": meter_id, "bus": BUS, "unit_id": len(meters) + 1, "account": account_id, **options})
    data: dict[str, Any] = {
        "site": {"timezone": timezone},
        "database": {"url": db_url},
        # every reading is stored (the scheduler's in-memory shortcut is not used here); the periodic
        # re-evaluation is the scenario's ``tick``, never a timer of its own
        "engine": {"reading_history_s": 0, "evaluate_every_s": 86_400},
        "policy": policy,
        "tariffs": spec["tariffs"],
        "accounts": accounts,
        "buses": [{"id": BUS, "protocol": "modbus-tcp", "host": "127.0.0.1", "port": 1}],
        "meters": meters,
    }
    if "holidays_file" in spec:
        data["holidays_file"] = str((base_dir / spec["holidays_file"]).resolve())
    return Settings.model_validate(data)
