"""The API of a gateway on a real SQLite file, driven in process (httpx's ASGI transport): the site, its keys,
and a snapshot of every table to prove that a request changed nothing."""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from gateway.bootstrap import Gateway
from gateway.settings import Settings, hash_key

KEYS = {"viewer": "k-viewer", "billing": "k-billing", "operator": "k-operator", "admin": "k-admin",
        "provisioning": "k-provisioning",
        "collector": "k-collector"}
TABLES = ("accounts", "meters", "readings", "ledger_entries", "payments", "commands", "outbox", "site_state",
          "api_keys", "audit_log")


def site(tmp_path: Path, **api: Any) -> Settings:
    """Three accounts (A-2 protected, below zero), one meter each on a bus nobody polls; a key per role, and a
    billing key bound to the source "collector"."""
    keys = [{"name": f"{role}-key", "role": role, "sha256": hash_key(key)} for role, key in KEYS.items()
            if role != "collector"]
    keys.append({"name": "collector-key", "role": "billing", "sha256": hash_key(KEYS["collector"]),
                 "sources": ["collector"]})
    return Settings.model_validate({
        "database": {"url": f"sqlite:///{tmp_path / 'gw.db'}"},
        "api": {"keys": keys, "max_payment": "1000.00", **api},
        "policy": {"notice_period": 0, "emergency_credit": {"amount": "10.00"}},
        "tariffs": {"flat": {"kind": "flat", "price": "0.5600"}},
        "accounts": [{"id": "A-1", "tariff": "flat", "opening_balance": "10.00"},
                     {"id": "A-2", "tariff": "flat", "opening_balance": "-5.00", "protected": True},
                     {"id": "A-3", "tariff": "flat", "opening_balance": "1.00"}],
        "buses": [{"id": "b", "protocol": "modbus-tcp", "host": "127.0.0.1", "port": 1}],
        "meters": [{"id": "M-1", "bus": "b", "unit_id": 1, "account": "A-1", "groups": ["feeder-7"]},
                   {"id": "M-2", "bus": "b", "unit_id": 2, "account": "A-2", "groups": ["feeder-7"]},
                   {"id": "M-3", "bus": "b", "unit_id": 3, "account": "A-3"}],
    })


def on_database(settings: Settings, request: Any) -> Settings:
    """``settings`` on the storage of a test parametrised ``"sqlite"`` (its file) or ``"postgresql"`` (a fresh
    database in the throwaway cluster)."""
    if request.param != "postgresql":
        return settings
    url = str(request.getfixturevalue("pg_cluster").create_database())
    return settings.model_copy(update={"database": settings.database.model_copy(update={"url": url})})


@asynccontextmanager
async def api_client(settings: Settings, base_dir: Path, *, clock: Callable[[], dt.datetime] | None = None
                     ) -> AsyncIterator[tuple[httpx.AsyncClient, Gateway]]:
    """An API client of a gateway on ``settings`` (its clock, when given, is ``gateway.test_clock`` too)."""
    # run_buses=False: no bus runner picks commands up, so their states stay where the API left them
    async with Gateway(settings, base_dir=base_dir, run_buses=False, clock=clock) as gw:
        gw.test_clock = clock  # type: ignore[attr-defined]
        transport = httpx.ASGITransport(app=gw.app())
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
            yield c, gw


def auth(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[role]}"}


def snapshot(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, in order."""
    with sqlite3.connect(db) as conn:
        return {table: conn.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall() for table in TABLES}
