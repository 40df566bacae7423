"""Typed settings: one YAML file validated by pydantic, with GATEWAY_* environment overrides for secrets.

Only ``bootstrap`` and ``cli`` read settings; the domain gets plain values.

Environment overrides: ``GATEWAY_<KEY>__<KEY>...`` sets a nested key before validation, e.g.
``GATEWAY_DATABASE__URL=postgresql://...`` or ``GATEWAY_MQTT__PASSWORD=...``. List items are addressed by index
(``GATEWAY_API__KEYS__0__SHA256``). Values are taken as strings and converted by the field's type.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator

from gateway.domain.policy import SitePolicy
from gateway.domain.policy_config import site_policy_from_dict
from gateway.domain.tariff_config import tariff_from_dict
from gateway.settings.common import Yuan, _Strict, _yuan
from gateway.settings.fleet import AccountSettings, MeterSettings, RelayModuleSettings
from gateway.settings.outbound import MqttSettings, NoticesSettings

__all__ = ["AccountSettings", "BusSettings", "ConfigError", "MeterSettings", "MqttSettings", "RelayModuleSettings",
           "Settings", "hash_key", "load_settings"]

ENV_PREFIX = "GATEWAY_"


class ConfigError(Exception):
    """A configuration file that can't be used. The message names the file, the key path and the problem."""


class SiteSettings(_Strict):
    name: str = "site"
    timezone: str = "Asia/Shanghai"
    currency: str = "CNY"

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value


class DatabaseSettings(_Strict):
    url: str = "sqlite:///var/gateway.db"
    own_loop: bool = Field(False, description=(
        "Run the storage on an event loop and thread of its own: a unit of work's steps no longer wait for turns "
        "of a busy event loop, which keeps relay commands fast while buses are polled flat out, at the cost of "
        "poll throughput (see docs/benchmarks.md). The SQLite pipeline always runs so."))
    sqlite_pipeline: bool = Field(False, description=(
        "SQLite only: write the writer's batches through a connection and thread of their own, statements and "
        "commit in one hand-over (faster under load; see docs/benchmarks.md). Off: the portable path."))
    sqlite_direct_reads: bool = Field(True, description=(
        "SQLite only: the API's reads of one account or one meter straight from a read-only sqlite3 connection "
        "on the event loop (microseconds), not through aiosqlite's thread (about 10 times the reads per second, "
        "see docs/benchmarks.md); the portable way when SQLite is busy. Off: always the portable path."))
    switch_interval_ms: float = Field(0.5, ge=0, le=5, description=(
        "With sqlite_pipeline only: the Python switch interval the gateway sets for its process (ms; 0 leaves "
        "it alone). Shorter lets the database thread take the GIL back sooner from a busy event loop."))

    @field_validator("url")
    @classmethod
    def _supported(cls, value: str) -> str:
        if not value.startswith(("sqlite:///", "sqlite+aiosqlite:///", "postgresql://", "postgresql+asyncpg://")):
            raise ValueError("database url must start with sqlite:/// or postgresql://")
        return value


class ApiKeySettings(_Strict):
    name: str = Field(min_length=1, max_length=100)
    role: Literal["viewer", "billing", "operator", "provisioning", "admin"]
    sha256: str = Field(description="hex SHA-256 of the key; the key itself never goes in the file")
    sources: list[str] | None = Field(None, description="payment sources this key may post and reverse for "
                                                         "(a billing system's own); absent: any")

    @field_validator("sha256")
    @classmethod
    def _hex(cls, value: str) -> str:
        value = value.lower()
        if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
            raise ValueError("sha256 must be 64 hex digits (see `meter-gateway keys create`)")
        return value


class ApiSettings(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    keys: list[ApiKeySettings] = []
    max_payment: Yuan = 1_000_000  # 10,000.00 yuan
    max_operator_hold_s: float = Field(7 * 86_400, gt=0, description="the longest hold an operator may place; "
                                                                    "longer needs admin")
    tls_certfile: str | None = Field(None, description="PEM certificate (chain): the API speaks HTTPS")
    tls_keyfile: str | None = Field(None, description="its private key (PEM)")
    max_body_bytes: int = Field(1_048_576, ge=1024, description="larger request bodies are refused (413) unread")
    max_header_bytes: int = Field(16_384, ge=1024, description="a larger request head is refused")
    request_timeout_s: float = Field(10, gt=0, description="a request must arrive whole within this, counted from "
                                                           "the connection or the previous answer")
    keepalive_timeout_s: float = Field(5, gt=0, description="an idle keep-alive connection is closed after this")
    failed_auth_limit: int = Field(20, ge=1, description="missing or unknown keys from one client within "
                                                         "failed_auth_window_s before it gets 429")
    failed_auth_window_s: float = Field(60, gt=0)
    key_cache_s: float = Field(30, gt=0, description="keys created in the database are seen within this")
    dashboard: bool = Field(True, description="serve the operations dashboard under /ui")
    session_secret: SecretStr | None = Field(None, min_length=32, description=(
        "signs the dashboard's session cookies; set the same one on every instance behind a load balancer "
        "(default: a random one per start, so a restart signs everyone out)"))
    session_hours: float = Field(12, gt=0, le=24 * 30, description="a dashboard session ends so long after login")

    _max = field_validator("max_payment", mode="before")(classmethod(lambda cls, v: _yuan(v)))

    @model_validator(mode="after")
    def _tls_pair(self) -> ApiSettings:
        if (self.tls_certfile is None) != (self.tls_keyfile is None):
            raise ValueError("tls_certfile and tls_keyfile go together")
        return self


class EngineSettings(_Strict):
    command_expiry_s: float = Field(600, gt=0)
    confirm_interval_s: float = Field(0.5, gt=0, description="how often a sent command's relay is read back")
    confirm_timeout_s: float = Field(120, gt=0, description="how long one attempt of a command waits for its relay "
                                                            "to read back as wanted (longer than the meters' trip "
                                                            "delay); then it is tried again")
    command_attempts: int = Field(3, ge=1, le=20, description="attempts of a relay command before it fails "
                                                              "(disconnect_failed / reconnect_failed, an alarm)")
    retry_backoff_s: float = Field(5, gt=0, description="the wait before a command's second attempt; it doubles "
                                                        "for each next one")
    retry_backoff_cap_s: float = Field(300, gt=0, description="the longest wait between two attempts")
    manual_hold_s: float = Field(86_400, gt=0, description="hold set by a manual reconnect below the disconnect point")
    evaluate_every_s: float = Field(5, gt=0, description="re-check deferred disconnects this often")
    event_retention_s: float = Field(86_400, gt=0, description=(
        "without mqtt: how long events stay in the outbox (with notices on, once the notice planner took them); "
        "with mqtt, mqtt.retention_s counts from their publication"))
    reading_history_s: float = Field(
        60, ge=0, description="a poll that changes nothing (same energy and relay, nothing to decide), or only a "
        "small charge far from any threshold, is kept in memory; each meter's reading is stored (and billed) at "
        "least this often; 0 stores every reading")


# Ids travel in URL paths and API bodies: no control characters, no "/", no surrounding spaces.
# MQTT topics (``accounts/{id}/...``, ``meters/{id}/...``): no "+" or "#", its wildcards, which no topic may hold.
class BusSettings(_Strict):
    id: str
    protocol: Literal["modbus-tcp", "modbus-rtu", "modbus-rtu-tcp", "dlt645-serial", "dlt645-tcp"]
    host: str | None = None
    port: int | None = Field(None, ge=1, le=65535)
    device: str | None = Field(None, description="serial device path (or socket://host:port)")
    baudrate: int | None = Field(None, description="default: 2400 for DL/T 645, 9600 for Modbus RTU")
    parity: Literal["N", "E", "O"] | None = Field(None, description="default: E for DL/T 645, N for Modbus RTU")
    stopbits: Literal[1, 2] = 1
    timeout_s: float = Field(1.0, gt=0)
    retries: int = Field(0, ge=0, le=5)
    gap_ms: float = Field(0, ge=0, description="inter-frame gap between transactions")
    backoff_s: float = Field(10, ge=0, description="a meter that stops answering is tried again after this (never "
                                                   "sooner than its poll interval), doubling up to backoff_cap_s")
    backoff_cap_s: float = Field(300, gt=0, description="the longest wait between two tries of a failing meter")
    # DL/T 645 remote control (1CH): the password and operator code never appear in logs; set the password
    # from the environment (GATEWAY_BUSES__<n>__PASSWORD) rather than in the file.
    password_level: int = Field(2, ge=0, le=0xFF, description="DL/T 645 password level (02H/04H plaintext)")
    password: str = Field("000000", repr=False, pattern=r"^[0-9]{6}$")
    operator_code: str = Field("00000000", pattern=r"^[0-9]{8}$")
    close_command: Literal["direct", "allowed"] = Field(
        "direct", description="DL/T 645 reconnect: direct close (1CH) or close allowed (1BH, customer presses)")
    time_sync_s: float | None = Field(None, gt=0, description="DL/T 645 broadcast time sync every N seconds")

    @property
    def line(self) -> tuple[int, str]:
        """Baud rate and parity, with the protocol's defaults."""
        dlt = self.protocol.startswith("dlt645")
        return self.baudrate or (2400 if dlt else 9600), self.parity or ("E" if dlt else "N")

    @model_validator(mode="after")
    def _endpoint(self) -> BusSettings:
        if self.protocol.endswith("tcp") and (self.host is None or self.port is None):
            raise ValueError(f"a {self.protocol} bus needs host and port")
        if self.protocol in ("modbus-rtu", "dlt645-serial") and not self.device:
            raise ValueError(f"a {self.protocol} bus needs device")
        return self


class Settings(_Strict):
    """The whole gateway configuration (see config/gateway.example.yaml)."""

    site: SiteSettings = SiteSettings()
    database: DatabaseSettings = DatabaseSettings()
    api: ApiSettings = ApiSettings()
    mqtt: MqttSettings | None = None
    notices: NoticesSettings | None = None
    engine: EngineSettings = EngineSettings()
    models_dir: str | None = Field(None, description="meter model files; default: the shipped config/meters")
    policy: dict[str, Any] = Field(default_factory=dict, description="guardrails: see docs/balance-engine.md")
    holidays_file: str | None = Field(None, description="public holiday calendar (one date or range per line)")
    tariffs: dict[str, dict[str, Any]] = {}
    accounts: list[AccountSettings] = []
    buses: list[BusSettings] = []
    meters: list[MeterSettings] = []
    relay_modules: list[RelayModuleSettings] = []

    @model_validator(mode="after")
    def _references(self) -> Settings:
        for name, tariff in self.tariffs.items():
            tariff_from_dict(tariff, where=f"tariffs.{name}")
        policy = self.site_policy(check_only=True)
        history = dt.timedelta(seconds=self.engine.reading_history_s)
        if policy.stale_after is not None and history >= policy.stale_after:
            # a meter polled on time would look stale to the engine whenever its account is read from storage
            raise ValueError(f"engine.reading_history_s: {self.engine.reading_history_s:g} s is not shorter than "
                             f"policy.stale_after ({policy.stale_after.total_seconds():g} s): a meter polled on "
                             "time could count as stale and block disconnects")
        _unique("accounts", [a.id for a in self.accounts])
        _unique("buses", [b.id for b in self.buses])
        _unique("meters", [m.id for m in self.meters])
        for i, account in enumerate(self.accounts):
            if account.tariff not in self.tariffs:
                raise ValueError(f"accounts[{i}].tariff: unknown tariff {account.tariff!r}")
            if account.credit_class and account.credit_class not in policy.credit_classes:
                raise ValueError(f"accounts[{i}].credit_class: unknown credit class {account.credit_class!r} "
                                 f"(known: {', '.join(policy.credit_classes)})")
            channels = self.notices.channels if self.notices is not None else {}
            for j, contact in enumerate(account.contacts):
                if contact.channel not in channels:
                    raise ValueError(f"accounts[{i}].contacts[{j}].channel: unknown channel {contact.channel!r}"
                                     + ("" if channels else " (no notices section)"))
        account_ids = {a.id for a in self.accounts}
        buses = {b.id: b for b in self.buses}
        for i, meter in enumerate(self.meters):
            if meter.account not in account_ids:
                raise ValueError(f"meters[{i}].account: unknown account {meter.account!r}")
            bus = buses.get(meter.bus)
            if bus is None:
                raise ValueError(f"meters[{i}].bus: unknown bus {meter.bus!r}")
            if bus.protocol.startswith("modbus") and meter.unit_id is None:
                raise ValueError(f"meters[{i}].unit_id: required on a Modbus bus")
            if bus.protocol.startswith("dlt645") and not (meter.address and meter.address.isdigit()
                                                          and len(meter.address) <= 12):
                raise ValueError(f"meters[{i}].address: a DL/T 645 meter needs a numeric address of up to 12 digits")
        self._relay_modules(buses)
        self._one_meter_per_address(buses)
        return self

    def _relay_modules(self, buses: dict[str, BusSettings]) -> None:
        _unique("relay_modules", [r.id for r in self.relay_modules])
        meters = {m.id: m for m in self.meters}
        switched: set[str] = set()
        for i, module in enumerate(self.relay_modules):
            meter = meters.get(module.meter)
            if meter is None:
                raise ValueError(f"relay_modules[{i}].meter: unknown meter {module.meter!r}")
            if module.bus not in buses or not buses[module.bus].protocol.startswith("modbus"):
                raise ValueError(f"relay_modules[{i}].bus: {module.bus!r} is not a Modbus bus of the settings")
            if module.bus != meter.bus:
                raise ValueError(f"relay_modules[{i}].bus: a relay module is on the bus of the meter it switches "
                                 f"({meter.bus!r})")
            if module.meter in switched:
                raise ValueError(f"relay_modules[{i}].meter: meter {module.meter!r} already has a relay module")
            switched.add(module.meter)

    def _one_meter_per_address(self, buses: dict[str, BusSettings]) -> None:
        """Two meters (or a meter and a relay module) at one unit id or address of a bus would be one physical
        meter billed and switched for two accounts."""
        seen: dict[tuple[str, object], str] = {}
        places = [(f"meters[{i}]", m.bus, m.unit_id, m.address) for i, m in enumerate(self.meters)]
        places += [(f"relay_modules[{i}]", r.bus, r.unit_id, None) for i, r in enumerate(self.relay_modules)]
        for where, bus, unit_id, address in places:
            dlt = buses[bus].protocol.startswith("dlt645")
            field, value = ("address", (address or "").zfill(12)) if dlt else ("unit_id", unit_id)
            other = seen.setdefault((bus, value), where)
            if other != where:
                raise ValueError(f"{where}.{field}: {value} is already {other}'s on bus {bus!r}: one meter would be "
                                 "billed and switched for two accounts")


    def warnings(self) -> list[str]:
        """What is valid but probably not meant (``check-config`` prints these, the gateway logs them)."""
        out = []
        notices = self.notices
        if notices is not None and notices.require_delivered_warning and not notices.staff:
            for i, account in enumerate(self.accounts):
                wanted = [c for c in account.contacts if "low_balance_2" not in c.opt_out]
                if not wanted and not account.protected:
                    out.append(f"accounts[{i}] ({account.id}): nobody takes its final warning (no contact, no "
                               "notices.staff): with notices.require_delivered_warning it is never disconnected "
                               "automatically")
        return out

    def site_policy(self, *, base_dir: Path | None = None, check_only: bool = False) -> SitePolicy:
        """The engine's site policy: ``policy`` plus the site's time zone and the holiday calendar file."""
        data = {"timezone": self.site.timezone, **self.policy}
        text, source = None, "holidays"
        if self.holidays_file and not check_only:
            path = Path(self.holidays_file)
            if not path.is_absolute() and base_dir is not None:
                path = base_dir / path
            try:
                text, source = path.read_text(encoding="utf-8"), str(path)
            except OSError as exc:
                raise ValueError(f"holidays_file: cannot read {path}: {exc.strerror or exc}") from None
        policy = site_policy_from_dict(data, holidays_text=text, holidays_source=source, where="policy")
        if self.notices is not None and self.notices.require_delivered_warning:
            policy = dataclasses.replace(policy, notice_delivery=True, notice_delivery_timeout=dt.timedelta(
                seconds=self.notices.delivery_timeout_s))
        return policy


def _unique(what: str, ids: list[str]) -> None:
    seen: set[str] = set()
    for value in ids:
        if value in seen:
            raise ValueError(f"{what}: duplicate id {value!r}")
        seen.add(value)


def hash_key(key: str) -> str:
    """The SHA-256 hex digest under which an API key is stored."""
    return hashlib.sha256(key.encode()).hexdigest()


def _apply_env(data: dict[str, Any], environ: dict[str, str]) -> None:
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX):].split("__") if p]
        if not path or path[0] not in Settings.model_fields:
            continue  # other GATEWAY_* variables are not settings
        value = raw  # a string: pydantic converts "5020", "1.5", "true" where the field wants a number or flag,
        # and a secret such as a password "000123" stays exactly as written
        node: Any = data
        for key in path[:-1]:
            if isinstance(node, list):
                node = node[int(key)] if key.isdigit() and int(key) < len(node) else None
            else:
                node = node.setdefault(key, {}) if isinstance(node, dict) else None
            if node is None:
                break
        else:
            last = path[-1]
            if isinstance(node, list) and last.isdigit() and int(last) < len(node):
                node[int(last)] = value
            elif isinstance(node, dict):
                node[last] = value


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def load_settings(path: str | Path, *, environ: dict[str, str] | None = None) -> Settings:
    """Read, override from the environment and validate a settings file; raise ConfigError with a clear message."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys")
    _apply_env(data, dict(os.environ if environ is None else environ))
    try:
        settings = Settings.model_validate(data)
        settings.site_policy(base_dir=path.parent)  # reads and checks the holiday calendar file
        return settings
    except ValueError as exc:
        if not isinstance(exc, ValidationError):
            raise ConfigError(f"{path}: {exc}") from None
        problems = []
        for err in exc.errors():
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            where = f"{_loc(tuple(err['loc']))}: " if err["loc"] else ""
            problems.append(f"{path}: {where}{msg}")
        raise ConfigError("\n".join(problems)) from None
