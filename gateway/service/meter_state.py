"""Each meter's state as one retained message, and Home Assistant MQTT discovery.

``MeterStates`` keeps, in memory, what ``meters/{meter}/state`` says about each meter: its communication health
(with the last error), its relay (with a failed command's fault) and its newest reading. The outbox relay feeds it
the events it publishes (``MeterHealth`` and ``CommandState`` events, stored readings) and publishes the state of
every meter it marks as changed, once per batch however many of its events the batch holds: O(1) per event.

It starts from storage (``OutboxRepository.meter_snapshot``): the meters table and each meter's newest reading,
as of the newest event and reading committed then. Events and readings up to those ids are already in it (they
still go out on their own topics, but change nothing here); every meter's state is published once at the start,
whole, so a restart never publishes a half-empty state and a broker that lost its retained messages gets them
again.

``HomeAssistantDiscovery`` publishes, retained, a discovery config per meter for Home Assistant (its energy as a
sensor, its relay as a binary sensor, both read from the meter's state topic) at every connection and whenever
Home Assistant announces itself on ``{discovery_prefix}/status``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from gateway.domain.relay import Action
from gateway.service.commands import FAULTS
from gateway.service.outbound import Publisher, PublisherUnavailable
from gateway.service.ports import OutboxEvent

__all__ = ["HomeAssistantDiscovery", "MeterStates", "is_state_topic", "safe_id", "state_topic"]

log = logging.getLogger(__name__)

RELAY_AFTER = {"confirmed": {"open": "open", "close": "closed"}, "armed": {"open": "armed", "close": "armed"}}


def state_topic(meter_id: str) -> str:
    return f"meters/{meter_id}/state"


def is_state_topic(topic: str) -> bool:
    """An outbox event of a meter's state topic (``MeterHealth``): merged into the state, not published as is."""
    return topic.startswith("meters/") and topic.endswith("/state")


@dataclass(slots=True)
class _Meter:
    health: str = "unknown"
    error: str | None = None
    health_at: dt.datetime | None = None  # when the health last changed (None: as the meters table had it)
    relay: str = "unknown"
    relay_fault: str = ""
    relay_at: dt.datetime | None = None  # when the relay was last seen (None: as the meters table had it)
    reading: dict[str, Any] | None = None
    taken_at: dt.datetime | None = None
    at: dt.datetime | None = None  # the time of the last change
    event_id: int | None = None  # the outbox event of the last change, if it was one


class MeterStates:
    """What each meter's retained state says, and which meters' states changed since they were published."""

    def __init__(self) -> None:
        self.meters: dict[str, _Meter] = {}
        self.dirty: dict[str, None] = {}  # meters whose state changed and was not published yet, in order
        self.events_to = 0  # outbox events up to this id are in the snapshot the states started from
        self.readings_to = 0  # readings up to this id, likewise

    def seed(self, events_to: int, readings_to: int, meters: dict[str, dict[str, Any]], at: dt.datetime) -> None:
        """Start from storage: ``meters`` as ``OutboxRepository.meter_snapshot`` gives them. Every meter is to
        be published."""
        self.events_to, self.readings_to = events_to, readings_to
        for meter_id, row in meters.items():
            meter = self.meters.setdefault(meter_id, _Meter())
            meter.health, meter.error = row.get("health") or "unknown", row.get("error")
            meter.relay, meter.relay_fault = row.get("relay") or "unknown", row.get("relay_fault") or ""
            reading: OutboxEvent | None = row.get("reading")
            if reading is not None:
                meter.reading, meter.taken_at = _reading(reading), reading.created_at
            meter.at, meter.event_id = at, None
            self.dirty[meter_id] = None

    def reading(self, event: OutboxEvent) -> None:
        """A stored reading (``OutboxRepository.readings``): the meter's newest unless one taken later is known
        (a late reading changes nothing); the meter answered, so it is online unless its health changed later
        (the writer's ``MeterHealth`` online event then changes nothing); its relay, if it read one, unless the
        relay was seen later."""
        if event.id <= self.readings_to:
            return
        payload = event.payload
        meter_id, taken_at = payload["meter_id"], event.created_at
        meter = self.meters.get(meter_id)
        if meter is None:
            meter = self.meters[meter_id] = _Meter()
        if meter.taken_at is not None and taken_at <= meter.taken_at:
            return
        meter.reading, meter.taken_at = _reading(event), taken_at
        if meter.health != "online" and (meter.health_at is None or taken_at > meter.health_at):
            meter.health, meter.error, meter.health_at = "online", None, taken_at
        relay = payload.get("relay")
        if relay is not None and (meter.relay_at is None or taken_at >= meter.relay_at):
            meter.relay, meter.relay_at = relay, taken_at
        meter.at, meter.event_id = taken_at, None
        self.dirty[meter_id] = None

    def event(self, event: OutboxEvent) -> None:
        """An outbox event: a ``MeterHealth`` changes the health, a ``CommandState`` that confirms (or arms) a
        relay command the relay, one that fails it the relay's fault; others change nothing."""
        if event.id <= self.events_to:
            return
        payload = event.payload
        kind = payload.get("type")
        if kind == "MeterHealth":
            meter = self._meter(payload["meter_id"])
            if (meter.health, meter.error) == (payload.get("health"), payload.get("error")) or (
                    meter.health_at is not None and event.created_at < meter.health_at):
                return  # as it is, or older than what a newer reading said
            meter.health, meter.error = payload.get("health") or "unknown", payload.get("error")
            meter.health_at = event.created_at
        elif kind == "CommandState":
            state, action = payload.get("state"), payload.get("action")
            meter = self._meter(payload["meter_id"])
            if state in RELAY_AFTER:
                relay = RELAY_AFTER[state].get(action)
                if relay is None or (meter.relay_at is not None and event.created_at < meter.relay_at):
                    return
                if (meter.relay, meter.relay_fault) == (relay, ""):
                    meter.relay_at = event.created_at
                    return
                meter.relay, meter.relay_fault, meter.relay_at = relay, "", event.created_at
            elif state == "failed" and action in ("open", "close"):
                fault = FAULTS[Action(action)]
                if meter.relay_fault == fault:
                    return
                meter.relay_fault = fault
            else:
                return
        else:
            return
        meter.at, meter.event_id = event.created_at, event.id
        self.dirty[payload["meter_id"]] = None

    def _meter(self, meter_id: str) -> _Meter:
        meter = self.meters.get(meter_id)
        if meter is None:
            meter = self.meters[meter_id] = _Meter()
        return meter

    def payload(self, meter_id: str) -> dict[str, Any]:
        """The meter's state as it is published (without ``seq``)."""
        meter = self.meters[meter_id]
        out: dict[str, Any] = {"type": "MeterState", "meter_id": meter_id, "health": meter.health,
                               "error": meter.error, "relay": meter.relay, "relay_fault": meter.relay_fault or None,
                               "reading": meter.reading, "at": meter.at}
        if meter.event_id is not None:
            out["event_id"] = meter.event_id
        return out

    def published(self, meter_id: str) -> None:
        self.dirty.pop(meter_id, None)


def _reading(event: OutboxEvent) -> dict[str, Any]:
    payload = event.payload
    return {"reading_id": event.id, "taken_at": event.created_at, "energy_wh": payload.get("energy_wh"),
            "power_w": payload.get("power_w"), "voltage_v": payload.get("voltage_v"),
            "current_a": payload.get("current_a"), "billed": payload.get("billed")}


_UNSAFE = re.compile(r"[^a-zA-Z0-9_-]")


def safe_id(text: str) -> str:
    """``text`` fit for a topic segment or a unique id: only ``[a-zA-Z0-9_-]``; an id that had other characters
    gets a short hash of itself, so that two ids that differ only there stay apart."""
    safe = _UNSAFE.sub("_", text)
    if safe != text or not safe:
        safe += "_" + hashlib.sha256(text.encode()).hexdigest()[:8]
    return safe


class HomeAssistantDiscovery:
    """Home Assistant's MQTT discovery configs of the meters, published retained at every connection and again
    when Home Assistant comes online.

    Args:
        publisher: where they go (the same connection as the events).
        meters: (meter id, model) of each meter.
        discovery_prefix: Home Assistant's discovery prefix.
        node: the gateway's node id (made safe with ``safe_id``).
    """

    def __init__(self, publisher: Publisher, meters: Iterable[tuple[str, str]], *,
                 discovery_prefix: str = "homeassistant", node: str = "meter-gateway") -> None:
        self.publisher = publisher
        self.meters = list(meters)
        self.discovery_prefix = discovery_prefix.rstrip("/")
        self.node = safe_id(node)
        self.published = 0  # configs published so far
        self._wanted = asyncio.Event()
        publisher.subscribe(f"{self.discovery_prefix}/status", self._status)
        publisher.on_connect(self._wanted.set)

    def _status(self, topic: str, payload: bytes) -> None:
        if payload.strip() == b"online":
            log.info("Home Assistant is online: its discovery configs are published again")
            self._wanted.set()

    def place(self, meter_id: str, model: str) -> None:
        """A meter provisioned (or changed) while the gateway runs: the configs are published again, its too."""
        self.meters = [(m, x) for m, x in self.meters if m != meter_id] + [(meter_id, model)]
        self._wanted.set()

    def configs(self) -> list[tuple[str, dict[str, Any]]]:
        """(topic, config) of every meter's energy sensor and relay binary sensor."""
        status = self.publisher.topic("gateway/status")
        out: list[tuple[str, dict[str, Any]]] = []
        for meter_id, model in self.meters:
            key = safe_id(meter_id)
            common = {"state_topic": self.publisher.topic(state_topic(meter_id)), "availability_topic": status,
                      "payload_available": "online", "payload_not_available": "offline",
                      "device": {"identifiers": [f"{self.node}_{key}"], "name": f"Meter {meter_id}",
                                 "model": model}}
            out.append((f"{self.discovery_prefix}/sensor/{self.node}/{key}_energy/config", {
                "name": "Energy", "unique_id": f"{self.node}_{key}_energy", "device_class": "energy",
                "state_class": "total_increasing", "unit_of_measurement": "Wh",
                "value_template": "{{ value_json.reading.energy_wh if value_json.reading else none }}", **common}))
            out.append((f"{self.discovery_prefix}/binary_sensor/{self.node}/{key}_relay/config", {
                "name": "Relay", "unique_id": f"{self.node}_{key}_relay", "device_class": "power",
                "payload_on": "closed", "payload_off": "open",
                "value_template": "{{ 'closed' if value_json.relay == 'closed' else 'open' "
                                  "if value_json.relay in ('open', 'armed') else none }}", **common}))
        return out

    async def run(self) -> None:
        """Publish the configs whenever they are wanted, until cancelled."""
        while True:
            await self._wanted.wait()
            self._wanted.clear()
            try:
                for topic, config in self.configs():
                    await self.publisher.publish_raw(topic, config, retain=True)
                    self.published += 1
            except PublisherUnavailable:
                pass  # published again at the next connection
