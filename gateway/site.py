"""The site as the settings describe it, for the service: the catalog (tariffs, buses, site policy, engine limits),
the fleet's seed (the settings' accounts and meters), and the driver of each bus. With bootstrap and the CLI, the
only place that reads the settings."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

from drivers.base import MeterDriver
from gateway.domain.notices import DEFAULT_TEMPLATES, KINDS, Contact, NoticePolicy, QuietHours
from gateway.domain.relay import Limits
from gateway.domain.tariff_config import tariff_from_dict
from gateway.service.catalog import AccountConfig, Catalog, MeterSpec
from gateway.fleet_files import account_config, meter_spec
from gateway.settings import BusSettings, Settings

__all__ = ["build_bus", "catalog_from_settings", "check_models", "default_models_dir", "notice_policy",
           "seed_from_settings", "site_models"]

REPO_CONFIG = Path(__file__).resolve().parent.parent / "config"


def catalog_from_settings(settings: Settings, *, base_dir: Path | None = None) -> Catalog:
    """The service's view of the site (tariffs, buses, policy, engine limits) from the settings; its accounts and
    meters come from the database (``gateway.service.fleet``: ``seed_from_settings`` seeds it)."""
    tariffs = {name: tariff_from_dict(t, where=f"tariffs.{name}") for name, t in settings.tariffs.items()}
    engine = settings.engine
    site = settings.site_policy(base_dir=base_dir)
    models = site_models(settings, base_dir=base_dir or Path.cwd()) if base_dir is not None else None
    return Catalog({}, {}, site, settings.api.max_payment,
                   engine.command_expiry_s, engine.confirm_interval_s, engine.manual_hold_s, engine.evaluate_every_s,
                   engine.reading_history_s, settings.api.max_operator_hold_s,
                   Limits(confirm_interval=dt.timedelta(seconds=engine.confirm_interval_s),
                          confirm_timeout=dt.timedelta(seconds=engine.confirm_timeout_s),
                          max_attempts=engine.command_attempts,
                          backoff_base=dt.timedelta(seconds=engine.retry_backoff_s),
                          backoff_cap=dt.timedelta(seconds=engine.retry_backoff_cap_s)),
                   notices=notice_policy(settings, site.tz), tariffs=tariffs,
                   buses={b.id: b.protocol for b in settings.buses},
                   models=frozenset(models) if models else None,
                   relayless=frozenset(name for name, model in (models or {}).items() if model.relay is None),
                   relay_modules=frozenset(r.meter for r in settings.relay_modules),
                   channels=frozenset(settings.notices.channels) if settings.notices is not None else frozenset(),
                   reserved={(r.bus, r.unit_id): r.id for r in settings.relay_modules})


def seed_from_settings(settings: Settings) -> tuple[list[AccountConfig], list[MeterSpec]]:
    """The settings' ``accounts:`` and ``meters:``: the fleet's seed."""
    return [account_config(a) for a in settings.accounts], [meter_spec(m) for m in settings.meters]


def notice_policy(settings: Settings, tz: Any) -> NoticePolicy | None:
    """The site's notice policy from ``notices`` (None: no notices), the built-in templates completed."""
    notices = settings.notices
    if notices is None:
        return None
    templates = {kind: {**DEFAULT_TEMPLATES.get(kind, {}), **notices.templates.get(kind, {})}  # type: ignore[call-overload]
                 for kind in KINDS}
    quiet = notices.quiet_hours
    return NoticePolicy(templates, settings.site.name, tz, tuple(_contact(c) for c in notices.staff),
                        QuietHours(quiet.start, quiet.end, frozenset(quiet.kinds)) if quiet is not None else None,
                        notices.max_attempts, dt.timedelta(seconds=notices.retry_backoff_s),
                        dt.timedelta(seconds=notices.retry_backoff_cap_s),
                        dt.timedelta(seconds=notices.max_event_age_s), subjects=notices.subjects)


def _contact(c: Any) -> Contact:
    return c.domain()  # type: ignore[no-any-return]

def default_models_dir() -> Path:
    return REPO_CONFIG / "meters"


def build_bus(bus: BusSettings, models: dict[str, Any], *, timezone: str = "Asia/Shanghai",
              relay_modules: list[Any] = ()) -> tuple[MeterDriver[Any], Callable[[Any], Any]]:
    """The driver of one bus, and the function that gives the driver's own description of a meter on it
    (a ``MeterSpec``: its id, unit id or address, model)."""
    if bus.protocol.startswith("modbus"):
        from drivers.modbus import ModbusMeter, ModbusRtuDriver, ModbusTcpDriver

        driver: MeterDriver[Any]
        if bus.protocol == "modbus-tcp":
            driver = ModbusTcpDriver(bus.host, bus.port, timeout=bus.timeout_s, retries=bus.retries)
        else:
            port = bus.device if bus.protocol == "modbus-rtu" else f"socket://{bus.host}:{bus.port}"
            baudrate, parity = bus.line
            driver = ModbusRtuDriver(port, baudrate=baudrate, parity=parity, stopbits=bus.stopbits,
                                     timeout=bus.timeout_s, retries=bus.retries)
        modules = {r.meter: r for r in relay_modules}

        def modbus_meter(m: Any) -> Any:
            module = modules.get(m.id)
            breaker = (ModbusMeter(module.id, module.unit_id, _model(models, module.model, m.id))
                       if module is not None else None)
            return ModbusMeter(m.id, m.unit_id, _model(models, m.model, m.id), breaker=breaker)

        return driver, modbus_meter
    from drivers.dlt645 import Dlt645Driver, Dlt645Meter, RemoteCommand
    from drivers.transports import ByteTransport, SerialTransport, TcpTransport

    transport: ByteTransport
    if bus.protocol == "dlt645-serial":
        baudrate, parity = bus.line
        transport = SerialTransport(bus.device, baudrate=baudrate, parity=parity, stopbits=bus.stopbits)
    else:
        transport = TcpTransport(bus.host, bus.port)
    close = RemoteCommand.DIRECT_CLOSE if bus.close_command == "direct" else RemoteCommand.CLOSE_ALLOWED
    driver = Dlt645Driver(transport, timeout=bus.timeout_s, retries=bus.retries, password_level=bus.password_level,
                          password=bus.password, operator_code=bus.operator_code, close_command=close,
                          meter_timezone=timezone)
    return driver, lambda m: Dlt645Meter(m.id, m.address.zfill(12))


def _model(models: dict[str, Any], name: str, meter_id: str) -> Any:
    if name not in models:
        raise ValueError(f"meter {meter_id}: unknown meter model {name!r} (known: {', '.join(sorted(models))})")
    return models[name]


def site_models(settings: Settings, *, base_dir: Path) -> dict[str, Any]:
    """The Modbus meter models of the site (none when it has no Modbus bus)."""
    if not any(b.protocol.startswith("modbus") for b in settings.buses):
        return {}
    from drivers.modbus import load_models

    models_dir = Path(settings.models_dir) if settings.models_dir else default_models_dir()
    return load_models(models_dir if models_dir.is_absolute() else base_dir / models_dir)


def check_models(settings: Settings, *, base_dir: Path) -> None:
    """Load the meter model files the settings refer to; raise ValueError naming a missing or bad one, a relay
    module without a relay, or a prepaid account none of whose meters can be switched."""
    models = site_models(settings, base_dir=base_dir)
    buses = {b.id: b for b in settings.buses}
    for i, meter in enumerate(settings.meters):
        if buses[meter.bus].protocol.startswith("modbus") and meter.model not in models:
            raise ValueError(f"meters[{i}].model: unknown meter model {meter.model!r} "
                             f"(known: {', '.join(sorted(models))})")
    for i, module in enumerate(settings.relay_modules):
        model = models.get(module.model)
        if model is None or model.relay is None:
            raise ValueError(f"relay_modules[{i}].model: {module.model!r} is not a model with a relay "
                             f"(known: {', '.join(sorted(models))})")
    switched = {r.meter for r in settings.relay_modules}
    for i, account in enumerate(settings.accounts):
        mine = [(j, m) for j, m in enumerate(settings.meters) if m.account == account.id]
        if mine and not any(m.id in switched or buses[m.bus].protocol.startswith("dlt645")
                            or models[m.model].relay is not None for _, m in mine):
            j, meter = mine[0]
            raise ValueError(f"accounts[{i}]: no meter of the prepaid account {account.id!r} has a relay "
                             f"(meters[{j}].model {meter.model!r} has none): add a relay module (relay_modules) "
                             "or use a model with a relay")
