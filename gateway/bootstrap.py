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

from drivers.dlt645 import run_time_sync
from gateway.adapters.dashboard_rows import SqlDashboardStore
from gateway.adapters.database import create_engine, migrate
from gateway.adapters.list_store import SqlListStore
from gateway.adapters.metric_rows import SqlEventSource, SqlMetricRows
from gateway.adapters.mqtt import MqttPublisher
from gateway.adapters.notifiers import Channels
from gateway.adapters.own_loop import OwnLoopStorage
from gateway.adapters.read_store import SqlReadStore
from gateway.adapters.reading_days_rows import SqlReadingDays
from gateway.adapters.report_rows import SqlReportStore
from gateway.adapters.sql import SqlStorage
from gateway.adapters.sqlite_pipeline import SqlitePipelineStorage
from gateway.adapters.sqlite_reads import SqliteReadStore
from gateway.api.main import create_app
from gateway.api.security import Caller
from gateway.domain.messages import (CommandFinished, CommandQueued, DisconnectWithdrawn, Message, MeterAnswered,
                                     MeterPlaced, MeterRetired)
from gateway.domain.notices import NoticePolicy
from gateway.service.alarm_desk import AlarmDesk
from gateway.service.alarm_stale import StaleWatch
from gateway.service.alarms import AlarmKeeper
from gateway.service.clock import SystemClock
from gateway.service.dashboard import Dashboard
from gateway.service.event_stream import EventStream
from gateway.service.facade import Service
from gateway.service.fleet import Fleet
from gateway.service.housekeeping import OutboxPruner
from gateway.service.lifecycle import Lifecycle
from gateway.service.lists import Lists
from gateway.service.messagebus import MessageBus
from gateway.service.meter_state import HomeAssistantDiscovery
from gateway.service.metrics import GatewayMetrics
from gateway.service.notices import NoticeService
from gateway.service.outbox_relay import OutboxRelay
from gateway.service.ports import Storage
from gateway.service.reports import Reports
from gateway.service.scheduler import BusSetup, Scheduler
from gateway.settings import Settings
from gateway.site import (build_bus, catalog_from_settings, check_models, default_models_dir, seed_from_settings,
                          site_models)

__all__ = ["Gateway", "build_bus", "check_models", "default_models_dir", "site_models"]

log = logging.getLogger(__name__)

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
        self.service = Service(self.uow, self.catalog, clock or self.clock.now, reads=self._reads(), bus=self.messages)
        self.fleet = Fleet(self.service)
        self.service.lifecycle = Lifecycle(self.fleet)  # the fleet's changes, for the API
        self.service.reports = Reports(SqlReportStore(SqlStorage(self.engine)), self.catalog,
                                       self.service.clock)  # the daily reports, for the API
        self.service.lists = Lists(SqlListStore(SqlStorage(self.engine)), self.service.writer.freshness.latest)
        self.scheduler: Scheduler | None = None
        self.relay: Any = None  # the outbox relay, when events go out over MQTT
        self.discovery: Any = None  # Home Assistant discovery, when mqtt.home_assistant
        self.notices: Any = None  # the notice planner and dispatcher, when notices are on
        self.pruner: Any = None  # without MQTT: deletes old events from the outbox
        self.service.alarms = AlarmDesk(self.uow, self.service.clock)  # for the API
        self.service.dashboard = Dashboard(SqlDashboardStore(SqlStorage(self.engine)), self.service.lists,
                                           self.service.alarms, self.service.reports, self.catalog,
                                           self.service.clock)  # the dashboard's pages
        self.alarms: Any = None  # the alarm keeper (and ``stale``, the stale-data watch of this instance's meters)
        self.stale: Any = None
        self.events = EventStream(SqlEventSource(SqlStorage(self.engine)))  # GET /v1/events
        self.metrics = GatewayMetrics(SqlMetricRows(SqlStorage(self.engine)), publishing=settings.mqtt is not None)
        self.metrics.events = self.events
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

    def _reads(self) -> SqlReadStore:
        """The read models' store: portable, or on SQLite with ``database.sqlite_direct_reads`` the direct one."""
        if self.settings.database.sqlite_direct_reads and self.engine.dialect.name == "sqlite":
            return SqliteReadStore(SqlStorage(self.engine), self.engine.url.database or "")
        return SqlReadStore(SqlStorage(self.engine))

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

    def app(self, *, hot_paths: bool = True) -> FastAPI:
        api = self.settings.api
        return create_app(self.service, static_keys=self.static_keys(), max_body_bytes=api.max_body_bytes,
                          failed_auth_limit=api.failed_auth_limit, failed_auth_window_s=api.failed_auth_window_s,
                          key_cache_s=api.key_cache_s, event_stream=self.events, gateway_metrics=self.metrics,
                          hot_paths=hot_paths, dashboard=api.dashboard,
                          session_secret=(api.session_secret.get_secret_value().encode()
                                          if api.session_secret is not None else None),
                          session_s=api.session_hours * 3600)

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
        if isinstance(self.service.views.store, SqliteReadStore):
            self._stack.callback(self.service.views.store.close)
        await self.prepare_fleet()
        self._task("gateway.fleet.refresh", self.fleet.run())  # changes made by other instances
        if self.settings.mqtt is not None:
            await self._publish(self.settings.mqtt)
        if self.settings.notices is not None and self.catalog.notices is not None:
            self._notify(self.settings.notices, self.catalog.notices)
        if self.settings.mqtt is None:
            self._prune_outbox()
        self._keep_alarms()
        await self._seed_tamper()
        await self._operations()
        buses = []
        models = site_models(self.settings, base_dir=self.base_dir)
        on_bus: dict[str, list[Any]] = {}
        for meter in self.catalog.meters.values():
            on_bus.setdefault(meter.bus_id, []).append(meter)
        for bus in self.settings.buses if self.run_buses else []:
            meters = on_bus.get(bus.id, [])
            driver, make_target = build_bus(bus, models, timezone=self.settings.site.timezone,
                                            relay_modules=[r for r in self.settings.relay_modules if r.bus == bus.id])
            buses.append(BusSetup(bus.id, driver, {m.id: make_target(m) for m in meters}, gap_s=bus.gap_ms / 1000,
                                  close_allowed=bus.protocol.startswith("dlt645") and bus.close_command == "allowed",
                                  breaker={"backoff_base_s": bus.backoff_s, "backoff_cap_s": bus.backoff_cap_s},
                                  make_target=make_target, poll_time_s=bus.timeout_s * (1 + bus.retries)))
        scheduler = Scheduler(self.service, buses, clock=self.clock, publish=self.messages.publish,
                              limits=self.catalog.relay_limits, evaluate_every_s=self.catalog.evaluate_every_s,
                              reading_days=SqlReadingDays(self.uow, self.engine.dialect.name))
        self.fleet.read_meter = scheduler.read_now if buses else None
        catalog = self.catalog
        # The gateway's reactions, as data: who handles each message.
        handlers: dict[type[Message], list[Callable[[Any], None]]] = {
            CommandQueued: [scheduler.route],  # a durable command wakes its bus
            MeterAnswered: [scheduler.meter_answered],  # a meter answering again lets its waiting trip go
            DisconnectWithdrawn: [self.service.redecide],  # a withdrawn trip: the engine decides again
            MeterPlaced: [lambda m: scheduler.move_meter(catalog.meters[m.meter_id]),  # polled where it now is
                          *([lambda m: self.discovery.place(m.meter_id, catalog.meters[m.meter_id].model)]
                            if self.discovery is not None else [])],  # Home Assistant told
            MeterRetired: [lambda m: scheduler.remove_meter(m.meter_id)],  # polled no more
            CommandFinished: [self.metrics.command_finished],  # its latency
        }
        for kind, found in handlers.items():
            for handler in found:
                self.messages.register(kind, handler)
        self.scheduler = await self._stack.enter_async_context(scheduler)
        if buses:
            self._watch_stale(scheduler)
        self.metrics.scheduler = scheduler  # the buses' figures, at each scrape
        # Started after the scheduler so that they stop before it closes the drivers they use.
        for setup, bus in zip(buses, self.settings.buses if self.run_buses else [], strict=True):
            if bus.time_sync_s and bus.protocol.startswith("dlt645"):
                self._time_sync(bus.id, setup.driver, bus.time_sync_s)
        return self

    async def prepare_fleet(self) -> list[str]:
        """The fleet from the database, seeded with the settings' accounts and meters; returns (and logs) where
        the settings differ from the database (whose values are kept)."""
        await self.fleet.load()
        conflicts = await self.fleet.seed(*seed_from_settings(self.settings))
        for conflict in conflicts:
            log.warning("settings: %s: change it through the API or `meter-gateway fleet` (the settings' accounts "
                        "and meters only seed the database)", conflict)
        return conflicts

    async def _publish(self, mqtt: Any) -> None:
        """Events out: the MQTT connection, and the outbox relay that feeds it (stopped before the writer)."""
        publisher = MqttPublisher(host=mqtt.host, port=mqtt.port, prefix=mqtt.prefix, username=mqtt.username,
                                  password=mqtt.password, tls_ca=self._path(mqtt.tls_ca), identifier=mqtt.client_id)
        self.relay = OutboxRelay(self.uow, publisher, self.service.clock, retention_s=mqtt.retention_s,
                                 max_waiting=mqtt.max_waiting, holes=not self.uow.exclusive)
        stop_waking = self.service.writer.listen(self.relay.wake)
        self.service.writer.outbox_full = self.relay
        discovery, self.discovery = None, None
        if mqtt.home_assistant:  # registered before the connection: its subscription is made at each one
            self.discovery = HomeAssistantDiscovery(
                publisher, [(m.id, m.model) for m in self.catalog.meters.values()],
                discovery_prefix=mqtt.discovery_prefix, node=mqtt.prefix)
            discovery = asyncio.create_task(self.discovery.run(), name="gateway.mqtt.discovery")
        connection = asyncio.create_task(publisher.run(), name="gateway.mqtt")
        relay = asyncio.create_task(self.relay.run(), name="gateway.outbox")

        async def stop() -> None:
            stop_waking()
            self.service.writer.outbox_full = None
            for task in (relay, discovery):
                if task is not None:
                    await _cancelled(task)
            publisher.stop()
            await connection

        self._stack.push_async_callback(stop)

    def _notify(self, settings: Any, policy: NoticePolicy) -> None:
        """Notices out: the planner and dispatcher (stopped before the writer), and their channels."""
        channels = Channels.from_settings(settings.channels)
        self.notices = NoticeService(self.uow, self.catalog, policy, channels, self.service.clock,
                                     self.service.final_warning_delivered, holes=not self.uow.exclusive)
        if self.relay is not None:
            self.relay.keep_unnoticed = True  # an event waits for the planner too before it is pruned
        # at the stop, in this order: the loops, the writer's listener, the channels' connections
        self._stack.push_async_callback(channels.aclose)
        self._stack.callback(self.service.writer.listen(self.notices.wake))
        self._task("gateway.notices", self.notices.run())

    def _keep_alarms(self) -> None:
        """Alarms as records: the keeper raises and resolves them from the outbox's events (every instance runs
        one; they take turns on its cursor), woken by the writer's commits."""
        catalog = self.catalog

        def account_of(meter_id: str) -> str | None:
            meter = catalog.meters.get(meter_id)
            return meter.account_id if meter is not None else None

        self.alarms = AlarmKeeper(self.uow, account_of, self.service.clock, holes=not self.uow.exclusive)
        self._stack.callback(self.service.writer.listen(self.alarms.wake))
        self._task("gateway.alarms", self.alarms.run())

    async def _seed_tamper(self) -> None:
        """Meters whose tamper alarm is still open from before the start: their next reading raises or clears it
        even without flags (gateway.service.tamper)."""
        async with self.uow(readonly=True) as uow:
            self.service.writer.tamper.seed(dict.fromkeys(await uow.alarms.subjects("tamper")))

    def _watch_stale(self, scheduler: Scheduler) -> None:
        """Stale data: MeterStale / MeterFresh events for the meters this instance polls."""
        catalog = self.catalog

        def last_answers() -> Any:
            return ((m.meter_id, m.last_success_at) for bus in scheduler.buses for m in bus.poller.meters.values())

        self.stale = StaleWatch(self.uow, last_answers, lambda: catalog.stale_after_s, self.service.clock,
                                lambda meter_id: getattr(catalog.meters.get(meter_id), "account_id", None),
                                every_s=min(30.0, max(1.0, catalog.stale_after_s / 4)))
        self._task("gateway.alarms.stale", self.stale.run())

    def _prune_outbox(self) -> None:
        """Without MQTT, events are deleted by age (``engine.event_retention_s``): the outbox stays bounded."""
        self.pruner = OutboxPruner(self.uow, self.service.clock, retention_s=self.settings.engine.event_retention_s,
                                   keep_unnoticed=self.notices is not None)
        self._task("gateway.outbox.prune", self.pruner.run())

    async def _operations(self) -> None:
        """GET /metrics counts the ledger's entries from now on; GET /v1/events: the shared reader wakes at each
        commit (it also looks every 0.25 s: other instances'), and stops with the gateway (the API server ends
        the streams first: ``ApiServer.shutdown``)."""
        await self.metrics.start()
        self._stack.callback(self.service.writer.listen(self.events.wake))
        self._stack.push_async_callback(self.events.aclose)

    def _task(self, name: str, work: Any) -> None:
        """Run ``work`` until the gateway stops (cancelled before the writer closes)."""
        task = asyncio.create_task(work, name=name)

        self._stack.push_async_callback(_cancelled, task)

    def _path(self, name: str | None) -> str | None:
        return None if name is None else str((self.base_dir / name).resolve())

    def _time_sync(self, bus_id: str, driver: Any, interval: float) -> None:

        self._task(f"gateway[{bus_id}].timesync", run_time_sync(driver, interval=interval))

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            await self._stack.aclose()
        finally:
            await self.engine.dispose()


async def _cancelled(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait for its end, cancelling again until it ends: on Python 3.11 a cancellation that
    arrives as an ``asyncio.wait_for`` inside a library completes is lost (python/cpython#86296; aiomqtt waits
    for a publish's acknowledgement so), and the task would go on as if never cancelled: the gateway would not
    stop (seen: the demo hanging after SIGTERM once in about eight stops)."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=1.0)
    if not task.cancelled() and task.exception() is not None:
        log.error("%s ended with an error while stopping: %r", task.get_name(), task.exception())
