"""Wires everything together; with cli.py the only place that reads settings.

``Gateway`` is an async context manager: it opens the database (migrating it), syncs the catalog, opens one
driver per bus, starts the bus scheduler, and serves the API when asked to.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from drivers.base import MeterDriver
from gateway.adapters.database import create_engine, migrate
from gateway.adapters.read_store import SqlReadStore
from gateway.adapters.own_loop import OwnLoopStorage
from gateway.adapters.sql import SqlStorage
from gateway.adapters.sqlite_pipeline import SqlitePipelineStorage
from gateway.service.ports import Storage
from gateway.api.main import create_app
from gateway.api.security import Caller
from gateway.domain.account import Thresholds
from gateway.domain.messages import CommandQueued, DisconnectWithdrawn, Message, MeterAnswered
from gateway.domain.relay import Limits
from gateway.domain.tariff_config import tariff_from_dict
from gateway.domain.notices import DEFAULT_TEMPLATES, KINDS, Contact, NoticePolicy, QuietHours
from gateway.service.catalog import AccountSpec, Catalog, MeterSpec
from gateway.service.clock import SystemClock
from gateway.service.facade import Service
from gateway.service.messagebus import MessageBus
from gateway.service.scheduler import BusSetup, Scheduler
from gateway.settings import BusSettings, Settings

__all__ = ["Gateway", "build_bus", "check_models", "default_models_dir", "site_models"]

log = logging.getLogger(__name__)

REPO_CONFIG = Path(__file__).resolve().parent.parent / "config"



def catalog_from_settings(settings: Settings, *, base_dir: Path | None = None) -> Catalog:
    """The service's view of the site (accounts, meters, tariffs, policy, engine limits) from the settings."""
    tariffs = {name: tariff_from_dict(t, where=f"tariffs.{name}") for name, t in settings.tariffs.items()}
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
            credit_class=a.credit_class,
            meter_ids=tuple(meter_ids.get(a.id, ())),
            contacts=tuple(_contact(c) for c in a.contacts),
        )
        for a in settings.accounts
    }
    meters = {
        m.id: MeterSpec(m.id, m.account, m.bus, m.poll_interval_s, m.max_power_w, m.unit_id, m.address, m.model,
                        tuple(m.groups))
        for m in settings.meters
    }
    engine = settings.engine
    site = settings.site_policy(base_dir=base_dir)
    return Catalog(accounts, meters, site, settings.api.max_payment,
                   engine.command_expiry_s, engine.confirm_interval_s, engine.manual_hold_s, engine.evaluate_every_s,
                   engine.reading_history_s, settings.api.max_operator_hold_s,
                   Limits(confirm_interval=dt.timedelta(seconds=engine.confirm_interval_s),
                          confirm_timeout=dt.timedelta(seconds=engine.confirm_timeout_s),
                          max_attempts=engine.command_attempts,
                          backoff_base=dt.timedelta(seconds=engine.retry_backoff_s),
                          backoff_cap=dt.timedelta(seconds=engine.retry_backoff_cap_s)),
                   notices=notice_policy(settings, site.tz))


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
    return Contact(c.name, c.role, c.channel, c.to, c.language, frozenset(c.opt_out))

def default_models_dir() -> Path:
    return REPO_CONFIG / "meters"


def build_bus(bus: BusSettings, meters: list[Any], models: dict[str, Any], *, timezone: str = "Asia/Shanghai",
              relay_modules: list[Any] = ()) -> tuple[MeterDriver[Any], dict[str, Any]]:
    """The driver of one bus and, for each meter on it, the driver's own meter description."""
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
        targets = {m.id: ModbusMeter(m.id, m.unit_id, _model(models, m.model, m.id), breaker=(
            ModbusMeter(modules[m.id].id, modules[m.id].unit_id, _model(models, modules[m.id].model, m.id))
            if m.id in modules else None)) for m in meters}
        return driver, targets
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
    return driver, {m.id: Dlt645Meter(m.id, m.address.zfill(12)) for m in meters}


def _model(models: dict[str, Any], name: str, meter_id: str) -> Any:
    if name not in models:
        raise ValueError(f"meter {meter_id}: unknown meter model {name!r} (known: {', '.join(sorted(models))})")
    return models[name]


class Gateway:
    """The running gateway of one settings file."""

    def __init__(self, settings: Settings, *, clock: Callable[[], dt.datetime] | None = None,
                 base_dir: Path | None = None, run_buses: bool = True) -> None:
        self.settings = settings
        self.base_dir = base_dir or Path.cwd()
        self.run_buses = run_buses  # False: an API-only instance (or a test) that polls no bus
        self.catalog = catalog_from_settings(settings, base_dir=self.base_dir)
        self.engine = create_engine(self._db_url())
        self.pipeline = settings.database.sqlite_pipeline and self.engine.dialect.name == "sqlite"
        self.uow = self._storage()
        self.clock = SystemClock()
        self.messages = MessageBus()
        self.service = Service(self.uow, self.catalog, clock or self.clock.now, reads=SqlReadStore(SqlStorage(self.engine)),
                               bus=self.messages)
        self.scheduler: Scheduler | None = None
        self.relay: Any = None  # the outbox relay, when events go out over MQTT
        self.notices: Any = None  # the notice planner and dispatcher, when notices are on
        self.pruner: Any = None  # without MQTT: deletes old events from the outbox
        self._stack = contextlib.AsyncExitStack()

    def _storage(self) -> Storage:
        """The portable storage, or on SQLite with ``database.sqlite_pipeline`` the pipeline: the faster write of
        batches, on an event loop and thread of its own (with an engine of its own)."""
        url = self._db_url()
        if self.pipeline:
            return OwnLoopStorage(lambda: SqlitePipelineStorage(create_engine(url)))
        if self.settings.database.own_loop:
            return OwnLoopStorage(lambda: SqlStorage(create_engine(url)))
        return SqlStorage(self.engine)

    def _db_url(self) -> str:
        url = self.settings.database.url
        if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
            relative = url.removeprefix("sqlite:///")
            if relative != ":memory:":
                return "sqlite:///" + str((self.base_dir / relative).resolve())
        return url

    def static_keys(self) -> dict[str, Caller]:
        return {k.sha256: Caller(k.name, k.role, frozenset(k.sources) if k.sources is not None else None)
                for k in self.settings.api.keys}

    def app(self) -> FastAPI:
        api = self.settings.api
        return create_app(self.service, static_keys=self.static_keys(), max_body_bytes=api.max_body_bytes,
                          failed_auth_limit=api.failed_auth_limit, failed_auth_window_s=api.failed_auth_window_s,
                          key_cache_s=api.key_cache_s)

    async def __aenter__(self) -> Gateway:
        if self.pipeline and self.settings.database.switch_interval_ms:
            # The pipeline's database thread needs the GIL back after every SQLite step; with CPython's default
            # switch interval (5 ms) each of those waits up to 5 ms for a busy event loop, while SQLite's write
            # lock is held. Process-wide: only with the pipeline, and only if the setting asks.
            previous = sys.getswitchinterval()
            sys.setswitchinterval(min(previous, self.settings.database.switch_interval_ms / 1000))
            self._stack.callback(sys.setswitchinterval, previous)
        for warning in self.settings.warnings():
            log.warning("settings: %s", warning)
        await migrate(self.engine)
        self.service.writer.start()
        self._stack.push_async_callback(self.service.writer.aclose)
        await self.service.sync_catalog()
        if self.settings.mqtt is not None:
            await self._publish(self.settings.mqtt)
        if self.settings.notices is not None and self.catalog.notices is not None:
            self._notify(self.settings.notices, self.catalog.notices)
        if self.settings.mqtt is None:
            self._prune_outbox()
        buses = []
        models = site_models(self.settings, base_dir=self.base_dir)
        for bus in self.settings.buses if self.run_buses else []:
            meters = [m for m in self.settings.meters if m.bus == bus.id]
            driver, targets = build_bus(bus, meters, models, timezone=self.settings.site.timezone,
                                        relay_modules=[r for r in self.settings.relay_modules if r.bus == bus.id])
            buses.append(BusSetup(bus.id, driver, targets, gap_s=bus.gap_ms / 1000,
                                  close_allowed=bus.protocol.startswith("dlt645") and bus.close_command == "allowed",
                                  breaker={"backoff_base_s": bus.backoff_s, "backoff_cap_s": bus.backoff_cap_s}))
        scheduler = Scheduler(self.service, buses, clock=self.clock, publish=self.messages.publish,
                              limits=self.catalog.relay_limits, evaluate_every_s=self.catalog.evaluate_every_s)
        # The gateway's reactions, as data: who handles each message.
        handlers: dict[type[Message], list[Callable[[Any], None]]] = {
            CommandQueued: [scheduler.route],  # a durable command wakes its bus
            MeterAnswered: [scheduler.meter_answered],  # a meter answering again lets its waiting trip go
            DisconnectWithdrawn: [self.service.redecide],  # a withdrawn trip: the engine decides again
        }
        for kind, found in handlers.items():
            for handler in found:
                self.messages.register(kind, handler)
        self.scheduler = await self._stack.enter_async_context(scheduler)
        # Started after the scheduler so that they stop before it closes the drivers they use.
        for setup, bus in zip(buses, self.settings.buses if self.run_buses else [], strict=True):
            if bus.time_sync_s and bus.protocol.startswith("dlt645"):
                self._time_sync(bus.id, setup.driver, bus.time_sync_s)
        return self

    async def _publish(self, mqtt: Any) -> None:
        """Events out: the MQTT connection, and the outbox relay that feeds it (stopped before the writer)."""
        from gateway.adapters.mqtt import MqttPublisher
        from gateway.service.outbox_relay import OutboxRelay

        publisher = MqttPublisher(host=mqtt.host, port=mqtt.port, prefix=mqtt.prefix, username=mqtt.username,
                                  password=mqtt.password, tls_ca=self._path(mqtt.tls_ca), identifier=mqtt.client_id)
        self.relay = OutboxRelay(self.uow, publisher, self.service.clock, retention_s=mqtt.retention_s,
                                 max_waiting=mqtt.max_waiting)
        self.service.writer.on_commit = self.relay.wake
        self.service.writer.outbox_full = self.relay
        discovery, self.discovery = None, None
        if mqtt.home_assistant:  # registered before the connection: its subscription is made at each one
            from gateway.service.meter_state import HomeAssistantDiscovery

            self.discovery = HomeAssistantDiscovery(
                publisher, [(m.id, m.model) for m in self.catalog.meters.values()],
                discovery_prefix=mqtt.discovery_prefix, node=mqtt.prefix)
            discovery = asyncio.create_task(self.discovery.run(), name="gateway.mqtt.discovery")
        connection = asyncio.create_task(publisher.run(), name="gateway.mqtt")
        relay = asyncio.create_task(self.relay.run(), name="gateway.outbox")

        async def stop() -> None:
            self.service.writer.on_commit = lambda: None
            self.service.writer.outbox_full = None
            for task in (relay, discovery):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            publisher.stop()
            await connection

        self._stack.push_async_callback(stop)

    def _notify(self, settings: Any, policy: NoticePolicy) -> None:
        """Notices out: the planner and dispatcher (stopped before the writer), and their channels."""
        from gateway.adapters.notifiers import Channels
        from gateway.service.notices import NoticeService

        channels = Channels.from_settings(settings.channels)
        self.notices = NoticeService(self.uow, self.catalog, policy, channels, self.service.clock,
                                     self.service.final_warning_delivered)
        writer = self.service.writer
        published = writer.on_commit
        writer.on_commit = lambda: (published(), self.notices.wake())  # type: ignore[func-returns-value]
        if self.relay is not None:
            self.relay.keep_unnoticed = True  # an event waits for the planner too before it is pruned
        # at the stop, in this order: the loops, the writer's hook, the channels' connections
        self._stack.push_async_callback(channels.aclose)
        self._stack.callback(setattr, writer, "on_commit", published)
        self._task("gateway.notices", self.notices.run())

    def _prune_outbox(self) -> None:
        """Without MQTT, events are deleted by age (``engine.event_retention_s``): the outbox stays bounded."""
        from gateway.service.housekeeping import OutboxPruner

        self.pruner = OutboxPruner(self.uow, self.service.clock, retention_s=self.settings.engine.event_retention_s,
                                   keep_unnoticed=self.notices is not None)
        self._task("gateway.outbox.prune", self.pruner.run())

    def _task(self, name: str, work: Any) -> None:
        """Run ``work`` until the gateway stops (cancelled before the writer closes)."""
        task = asyncio.create_task(work, name=name)

        async def stop() -> None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        self._stack.push_async_callback(stop)

    def _path(self, name: str | None) -> str | None:
        return None if name is None else str((self.base_dir / name).resolve())

    def _time_sync(self, bus_id: str, driver: Any, interval: float) -> None:
        from drivers.dlt645 import run_time_sync

        self._task(f"gateway[{bus_id}].timesync", run_time_sync(driver, interval=interval))

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            await self._stack.aclose()
        finally:
            await self.engine.dispose()



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
