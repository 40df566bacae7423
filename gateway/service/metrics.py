"""The gateway's figures for Prometheus (``GET /metrics``, docs/metrics.md), read live at each scrape.

A registry of the gateway's own (never prometheus-client's global one: two gateways in one process, as in the
tests, keep their figures apart). At each scrape ``render`` reads what the database holds (``MetricRows``:
accounts and balances, active commands, the notice and outbox backlogs, open alarms, new ledger entries) and what
this instance's buses hold in memory (``Scheduler.stats``: polls, lag, meters' health); both go out through one
collector. What happens between scrapes is counted as it happens: payment requests by outcome (``payment``, from
the API) and the latency of relay commands, observed when the relay runner finishes one (``command_finished``, a
message-bus handler).

Counters count from the start of the process, as Prometheus expects (``rate()`` handles restarts): the ledger's
entries by kind are counted from the newest entry at the start on, by primary-key range, so a scrape never
counts the whole ledger.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from gateway.domain.messages import CommandFinished

__all__ = ["CONTENT_TYPE", "GatewayMetrics", "MetricRows", "StoredFigures"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600, 7200)  # seconds, queued -> final


@dataclass(slots=True)
class StoredFigures:
    """What one scrape reads from the database."""

    accounts_total: int = 0
    balance_total: int = 0  # fen, every account's
    notices: dict[str, int] = field(default_factory=dict)  # pending / failed -> n
    alarms: dict[tuple[str, str, str], int] = field(default_factory=dict)  # (kind, severity, state) -> n
    ledger: dict[str, tuple[int, int]] = field(default_factory=dict)  # kind -> entries, |fen| after ledger_after
    ledger_to: int = 0  # the newest ledger entry's id
    unpublished: int | None = None  # events waiting for MQTT (None: MQTT off)


class MetricRows(abc.ABC):
    """The port the figures are read through (``gateway.adapters.metric_rows``)."""

    @abc.abstractmethod
    async def fleet(self) -> tuple[dict[tuple[str, str], tuple[int, int]], dict[tuple[str, str], int]]:
        """Accounts by (status, supply): (count, balance fen); commands by (state, action): count. One pass over
        each table: read at most every ``fleet_every_s``."""

    @abc.abstractmethod
    async def figures(self, *, ledger_after: int | None, outbox: bool) -> StoredFigures:
        """The stored figures; the ledger's entries after ``ledger_after`` (None: none, only the newest id);
        ``outbox``: count the events not published yet."""

    @abc.abstractmethod
    async def newest_ledger_entry(self) -> int:
        """The newest ledger entry's id (0: none)."""


class GatewayMetrics:
    """The registry and its collectors.

    Args:
        rows: the stored figures.
        publishing: whether events go out over MQTT (then the outbox backlog is a figure).
        fleet_every_s: how often the accounts by status and supply and the active commands are counted (a pass
            over both tables: 0.2 s at 100,000 accounts); the other figures are read at every scrape.
    """

    def __init__(self, rows: MetricRows, *, publishing: bool = False, fleet_every_s: float = 30.0) -> None:
        self.rows, self.publishing, self.fleet_every_s = rows, publishing, fleet_every_s
        self.scheduler: Any = None  # this instance's buses (``Scheduler``), once they run
        self.events: Any = None  # the live event stream (its clients)
        self.registry = CollectorRegistry(auto_describe=False)
        self.payments = Counter("gateway_payments", "Payment and reversal requests by outcome",
                                ["operation", "outcome"], registry=self.registry)
        self.command_latency = Histogram(
            "gateway_command_latency_seconds", "Relay commands from queued to their final state (the relay runner's)",
            ["action", "state"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self._ledger_from: int | None = None  # entries are counted after this id (the newest at the start)
        self._ledger: dict[str, list[int]] = {}  # kind -> [entries, |fen|]
        self._stored = StoredFigures()
        self._accounts: dict[tuple[str, str], tuple[int, int]] = {}
        self._commands: dict[tuple[str, str], int] = {}
        self._fleet_at = -1e18
        self.database_up = True
        self._scrape_s = 0.0
        self._lock = asyncio.Lock()
        self.registry.register(_Live(self))

    async def start(self) -> None:
        """The ledger's entries are counted from here on."""
        self._ledger_from = await self.rows.newest_ledger_entry()

    # --- what happens between scrapes -------------------------------------------------------------------------
    def payment(self, operation: str, outcome: str) -> None:
        """A payment (or reversal) request ended: recorded, duplicate, refused or failed."""
        self.payments.labels(operation, outcome).inc()

    def command_finished(self, message: CommandFinished) -> None:
        """A message-bus handler: a relay command reached its final state."""
        command = message.command
        latency = max((message.at - command.created_at).total_seconds(), 0.0)
        self.command_latency.labels(command.action.value, command.state.value).observe(latency)

    # --- a scrape ---------------------------------------------------------------------------------------------
    async def _read(self) -> None:
        stored = await self.rows.figures(ledger_after=self._ledger_from, outbox=self.publishing)
        if time.monotonic() - self._fleet_at >= self.fleet_every_s:
            self._accounts, self._commands = await self.rows.fleet()
            self._fleet_at = time.monotonic()
        if self._ledger_from is not None:
            for kind, (entries, fen) in stored.ledger.items():
                tally = self._ledger.setdefault(kind, [0, 0])
                tally[0] += entries
                tally[1] += fen
        self._ledger_from = stored.ledger_to
        self._stored = stored

    async def render(self) -> bytes:
        """The figures in the Prometheus text format."""
        async with self._lock:  # one scrape at a time: each reads the ledger from where the last one ended
            started = time.perf_counter()
            try:
                await self._read()
                self.database_up = True
            except Exception:  # the database is unavailable: the buses' figures still go out, the stored ones
                log.exception("metrics: reading the database failed")  # as last read, and database_up 0
                self.database_up = False
            body = generate_latest(self.registry)
            self._scrape_s = time.perf_counter() - started
            return body


class _Live(Collector):
    """The figures read at the scrape: the stored ones (just read by ``render``) and the buses' (from memory)."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Any:
        m, s = self.metrics, self.metrics._stored
        yield from self._buses(m.scheduler)
        yield GaugeMetricFamily("gateway_accounts_total_count", "Accounts stored (open and closed)",
                                value=s.accounts_total)
        yield GaugeMetricFamily("gateway_balance_total_fen", "Sum of every account's balance (fen)",
                                value=s.balance_total)
        accounts = GaugeMetricFamily("gateway_accounts", "Accounts by status and the supply the engine wants "
                                     "(recounted every 30 s)", labels=["status", "supply"])
        balance = GaugeMetricFamily("gateway_balance_fen", "Sum of the balances by account status and supply (fen, "
                                    "recounted every 30 s)", labels=["status", "supply"])
        for (status, supply), (n, fen) in sorted(m._accounts.items()):
            accounts.add_metric([status, supply], n)
            balance.add_metric([status, supply], fen)
        yield accounts
        yield balance
        entries = CounterMetricFamily("gateway_ledger_entries", "Ledger entries written since the start, by kind",
                                      labels=["kind"])
        amounts = CounterMetricFamily("gateway_ledger_amount_fen", "Amounts of the ledger entries written since the "
                                      "start, without their sign (fen), by kind", labels=["kind"])
        for kind, (n, fen) in sorted(m._ledger.items()):
            entries.add_metric([kind], n)
            amounts.add_metric([kind], fen)
        yield entries
        yield amounts
        commands = GaugeMetricFamily("gateway_commands_active", "Relay commands not final yet, by state and action "
                                     "(recounted every 30 s)", labels=["state", "action"])
        for state in ("queued", "sending", "sent"):
            for action in ("open", "close"):
                commands.add_metric([state, action], m._commands.get((state, action), 0))
        yield commands
        stored = GaugeMetricFamily("gateway_commands", "Relay commands stored, by state and action (recounted "
                                   "every 30 s)", labels=["state", "action"])
        for (state, action), n in sorted(m._commands.items()):
            stored.add_metric([state, action], n)
        yield stored
        notices = GaugeMetricFamily("gateway_notices", "Notices waiting (pending) and dead letters (failed)",
                                    labels=["state"])
        for state in ("pending", "failed"):
            notices.add_metric([state], s.notices.get(state, 0))
        yield notices
        alarms = GaugeMetricFamily("gateway_alarms", "Alarms not resolved, by kind, severity and state",
                                   labels=["kind", "severity", "state"])
        for (kind, severity, state), n in sorted(s.alarms.items()):
            alarms.add_metric([kind, severity, state], n)
        yield alarms
        if s.unpublished is not None:
            yield GaugeMetricFamily("gateway_outbox_unpublished", "Events waiting to be published over MQTT",
                                    value=s.unpublished)
        if m.events is not None:
            yield GaugeMetricFamily("gateway_event_stream_clients", "Clients of the live event stream (GET /v1/events)",
                                    value=len(m.events.subscriptions))
        yield GaugeMetricFamily("gateway_scrape_duration_seconds", "How long the previous scrape took",
                                value=m._scrape_s)
        yield GaugeMetricFamily("gateway_database_up", "1 when this scrape read the database; 0: the stored "
                                "figures are the last ones read", value=1 if m.database_up else 0)

    @staticmethod
    def _buses(scheduler: Any) -> Any:
        """The polling figures of this instance's buses (none on an API-only instance)."""
        buses = [] if scheduler is None else scheduler.buses
        stats = {} if scheduler is None else scheduler.stats()["buses"]
        polls = CounterMetricFamily("gateway_polls", "Polls since the start, by bus and outcome",
                                    labels=["bus", "outcome"])
        busy = CounterMetricFamily("gateway_bus_busy_seconds", "Time the bus spent on the polls of its meters",
                                   labels=["bus"])
        gauges: dict[str, tuple[str, Callable[[dict[str, Any]], float]]] = {
            "gateway_bus_up": ("1 when the bus answers, 0 when its breaker holds it down",
                               lambda f: f["state"] == "up"),
            "gateway_bus_utilisation": ("Share of the bus's time its polls need: demand polls/s x (mean poll time "
                                        "+ gap); above 1 it cannot keep up", lambda f: f["_utilisation"]),
            "gateway_bus_polls_per_second": ("Polls per second over the last 10 s", lambda f: f["polls_per_s"]),
            "gateway_bus_demand_polls_per_second": ("Polls per second the meters' intervals ask for",
                                                    lambda f: f["demand_polls_per_s"]),
            "gateway_poll_lag_seconds": ("Polls behind their due time (moving average)", lambda f: f["lag_s"]),
            "gateway_poll_lag_max_seconds": ("Largest lag of a poll over the last 10 s", lambda f: f["max_lag_s"]),
            "gateway_bus_pending_readings": ("Readings of the bus waiting for the writer",
                                             lambda f: f["pending_readings"]),
            "gateway_bus_active_commands": ("Relay commands the bus's runner holds", lambda f: f["active_commands"]),
        }
        families = {name: GaugeMetricFamily(name, doc, labels=["bus"]) for name, (doc, _) in gauges.items()}
        meters = GaugeMetricFamily("gateway_meters", "Meters polled by this instance, by bus and health",
                                   labels=["bus", "health"])
        stale = GaugeMetricFamily("gateway_meters_stale", "Meters without a good reading for longer than the "
                                  "staleness limit", labels=["bus"])
        for bus in buses:
            name = bus.poller.bus_id
            figures = stats.get(name)
            if figures is None:
                continue
            health = list(bus.poller.meters.values())
            busy_s, tries = sum(h.busy_s for h in health), sum(h.tries for h in health)
            mean = busy_s / tries if tries else 0.0
            demand = figures["demand_polls_per_s"]
            figures["_utilisation"] = round(demand * (mean + bus.poller.gap_s), 4) if tries else 0.0
            polls.add_metric([name, "ok"], figures["polls"])
            polls.add_metric([name, "failed"], figures["failures"])
            polls.add_metric([name, "skipped"], figures["skipped"])
            busy.add_metric([name], busy_s)
            for family, (_, value) in zip(families.values(), gauges.values(), strict=True):
                family.add_metric([name], float(value(figures)))
            for state in ("online", "degraded", "offline", "unknown"):
                meters.add_metric([name, state], figures[state])
            stale.add_metric([name], figures["stale"])
        yield polls
        yield busy
        yield from families.values()
        yield meters
        yield stale
