"""The merge behind each meter's retained state (``MeterStates``), the ids made safe for Home Assistant, and the
discovery configs published at each connection and when Home Assistant comes online (a publisher in memory)."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from collections.abc import Callable
from typing import Any

from gateway.service.meter_state import HomeAssistantDiscovery, MeterStates, safe_id
from gateway.service.outbound import Publisher, PublisherUnavailable
from gateway.service.ports import OutboxEvent
from tests.support import async_wait_until

T0 = dt.datetime(2026, 12, 3, 8, tzinfo=dt.UTC)


def at(minutes: float) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


def reading(reading_id: int, minutes: float, energy_wh: int, *, meter: str = "M-1",
            relay: str | None = None) -> OutboxEvent:
    return OutboxEvent(reading_id, f"meters/{meter}/reading", {
        "type": "Reading", "reading_id": reading_id, "meter_id": meter, "at": at(minutes), "energy_wh": energy_wh,
        "power_w": 100, "voltage_v": 230.0, "current_a": 0.5, "relay": relay, "billed": True}, at(minutes))


def health(event_id: int, minutes: float, value: str, error: str | None = None, meter: str = "M-1") -> OutboxEvent:
    return OutboxEvent(event_id, f"meters/{meter}/state", {"type": "MeterHealth", "meter_id": meter,
                                                           "health": value, "error": error}, at(minutes))


def command(event_id: int, minutes: float, action: str, state: str, meter: str = "M-1") -> OutboxEvent:
    return OutboxEvent(event_id, "commands/C-1", {"type": "CommandState", "id": "C-1", "meter_id": meter,
                                                  "action": action, "state": state, "attempts": 1,
                                                  "last_error": None}, at(minutes))


def seeded(**row: Any) -> MeterStates:
    states = MeterStates()
    states.seed(10, 10, {"M-1": {"health": "online", "error": None, "relay": "closed", "relay_fault": "",
                                 "reading": reading(5, 0, 1_000), **row}}, at(1))
    states.dirty.clear()
    return states


def test_the_seed_is_every_meters_whole_state_to_publish() -> None:
    states = MeterStates()
    states.seed(7, 3, {"M-1": {"health": "degraded", "error": "timeout", "relay": "open",
                               "relay_fault": "disconnect_failed", "reading": reading(3, 0, 1_000)},
                       "M-2": {"health": "unknown", "error": None, "relay": "unknown", "relay_fault": "",
                               "reading": None}}, at(5))
    assert list(states.dirty) == ["M-1", "M-2"]
    assert states.payload("M-1") == {
        "type": "MeterState", "meter_id": "M-1", "health": "degraded", "error": "timeout", "relay": "open",
        "relay_fault": "disconnect_failed", "at": at(5),
        "reading": {"reading_id": 3, "taken_at": at(0), "energy_wh": 1_000, "power_w": 100, "voltage_v": 230.0,
                    "current_a": 0.5, "billed": True}}
    assert states.payload("M-2")["reading"] is None and states.payload("M-2")["relay_fault"] is None


def test_what_the_seed_holds_already_changes_nothing() -> None:
    states = seeded()
    states.reading(reading(9, 2, 1_100, relay="open"))  # read before the seed (id up to 10)
    states.event(health(10, 2, "offline", "x"))
    assert not states.dirty and states.payload("M-1")["reading"]["energy_wh"] == 1_000


def test_a_newer_reading_changes_the_state_a_late_one_does_not_and_many_are_one_publish() -> None:
    states = seeded()
    for n in range(1, 6):
        states.reading(reading(10 + n, n, 1_000 + n, relay="closed"))
    assert list(states.dirty) == ["M-1"]  # one state to publish for five readings
    payload = states.payload("M-1")
    assert payload["reading"]["energy_wh"] == 1_005 and payload["at"] == at(5) and "event_id" not in payload
    states.published("M-1")
    states.reading(reading(20, 3, 990, relay="open"))  # taken before the newest: late
    assert not states.dirty and states.payload("M-1")["relay"] == "closed"


def test_the_relay_follows_the_newest_sighting_of_readings_and_confirmed_commands() -> None:
    states = seeded()
    states.event(command(11, 2, "open", "sent"))  # not confirmed yet: nothing
    assert not states.dirty
    states.event(command(12, 3, "open", "confirmed"))
    assert states.payload("M-1")["relay"] == "open" and states.payload("M-1")["event_id"] == 12
    states.published("M-1")
    states.reading(reading(11, 2, 1_010, relay="closed"))  # taken before the confirmation: only its energy
    assert states.payload("M-1")["relay"] == "open" and states.payload("M-1")["reading"]["energy_wh"] == 1_010
    states.reading(reading(12, 4, 1_020, relay="closed"))  # closed again later (by hand)
    assert states.payload("M-1")["relay"] == "closed"
    states.event(command(13, 5, "close", "armed"))
    assert states.payload("M-1")["relay"] == "armed"
    states.published("M-1")
    states.event(command(14, 6, "open", "failed"))
    assert states.payload("M-1")["relay_fault"] == "disconnect_failed" and list(states.dirty) == ["M-1"]
    states.published("M-1")
    states.event(command(15, 7, "open", "confirmed"))
    assert (states.payload("M-1")["relay"], states.payload("M-1")["relay_fault"]) == ("open", None)


def test_a_health_event_changes_the_state_once() -> None:
    states = seeded()
    states.event(health(11, 2, "online"))  # as it is: nothing to publish
    assert not states.dirty
    states.event(health(12, 3, "degraded", "no answer"))
    payload = states.payload("M-1")
    assert (payload["health"], payload["error"], payload["event_id"], payload["at"]) == (
        "degraded", "no answer", 12, at(3))
    assert payload["reading"]["energy_wh"] == 1_000 and payload["relay"] == "closed"  # the rest kept
    states.event(OutboxEvent(13, "alarms", {"type": "CommandFailed", "meter_id": "M-1"}, at(4)))
    assert payload == states.payload("M-1")


def test_a_reading_puts_the_meter_online_unless_its_health_changed_later() -> None:
    states = seeded(health="degraded", error="no answer")
    states.reading(reading(11, 2, 1_010))
    assert (states.payload("M-1")["health"], states.payload("M-1")["error"]) == ("online", None)
    states.event(health(11, 2, "online"))  # the writer's event of that reading: nothing new
    states.event(health(12, 3, "offline", "timeout"))
    states.reading(reading(12, 2.5, 1_020))  # its newest reading, but taken before the meter went offline
    payload = states.payload("M-1")
    assert (payload["health"], payload["reading"]["energy_wh"]) == ("offline", 1_020)
    states.event(health(13, 2.8, "degraded", "late news"))  # older than the health it would replace
    assert states.payload("M-1")["health"] == "offline"
    states.event(health(14, 4, "online"))
    assert states.payload("M-1")["health"] == "online"


def test_a_meter_unknown_at_the_seed_gets_a_state() -> None:
    states = seeded()
    states.reading(reading(11, 1, 50, meter="M-9", relay="closed"))
    assert states.payload("M-9")["reading"]["energy_wh"] == 50 and states.payload("M-9")["health"] == "online"
    assert states.payload("M-9")["relay"] == "closed" and list(states.dirty) == ["M-9"]


def test_safe_ids() -> None:
    assert safe_id("M-1_a") == "M-1_a"
    assert re.fullmatch(r"[A-Za-z0-9_-]+", safe_id("Zähler 2.b/#+"))
    assert safe_id("a.b") != safe_id("a_b") and safe_id("a.b") != safe_id("a,b")
    assert safe_id("a.b") == safe_id("a.b")


class MemoryPublisher(Publisher):
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any], bool]] = []
        self.up = True
        self.handlers: dict[str, Callable[[str, bytes], None]] = {}
        self.connected: list[Callable[[], None]] = []

    async def publish(self, topic: str, payload: dict[str, Any], *, retain: bool = False) -> None:
        await self.publish_raw(self.topic(topic), payload, retain=retain)

    def topic(self, name: str) -> str:
        return f"pre/{name}"

    async def publish_raw(self, topic: str, payload: dict[str, Any], *, retain: bool = False) -> None:
        if not self.up:
            raise PublisherUnavailable("down")
        self.sent.append((topic, payload, retain))

    def subscribe(self, topic: str, callback: Callable[[str, bytes], None]) -> None:
        self.handlers[topic] = callback

    def on_connect(self, callback: Callable[[], None]) -> None:
        self.connected.append(callback)


async def test_discovery_at_each_connection_and_when_home_assistant_comes_online() -> None:
    publisher = MemoryPublisher()
    discovery = HomeAssistantDiscovery(publisher, [("M-1", "dds666"), ("a.b", "x")], discovery_prefix="ha/",
                                       node="pre/1")
    assert list(publisher.handlers) == ["ha/status"] and len(publisher.connected) == 1
    node, odd = safe_id("pre/1"), safe_id("a.b")
    assert node.startswith("pre_1_") and odd.startswith("a_b_")
    assert [topic for topic, _ in discovery.configs()] == [
        f"ha/sensor/{node}/M-1_energy/config", f"ha/binary_sensor/{node}/M-1_relay/config",
        f"ha/sensor/{node}/{odd}_energy/config", f"ha/binary_sensor/{node}/{odd}_relay/config"]
    energy = discovery.configs()[0][1]
    assert energy["state_topic"] == "pre/meters/M-1/state" and energy["availability_topic"] == "pre/gateway/status"
    task = asyncio.create_task(discovery.run())
    try:
        publisher.connected[0]()  # the connection is made
        await async_wait_until(lambda: len(publisher.sent) == 4, timeout=5, what="the configs")
        assert all(retain for _, _, retain in publisher.sent)
        publisher.handlers["ha/status"]("ha/status", b"offline")
        publisher.handlers["ha/status"]("ha/status", b"online")
        await async_wait_until(lambda: len(publisher.sent) == 8, timeout=5, what="the configs again")
        publisher.up = False
        publisher.handlers["ha/status"]("ha/status", b"online")  # the broker is down: they wait
        await async_wait_until(lambda: not discovery._wanted.is_set(), timeout=5, what="the attempt")
        publisher.up = True
        publisher.connected[0]()  # back: published at the connection
        await async_wait_until(lambda: len(publisher.sent) == 12, timeout=5, what="the configs after the outage")
        assert len(publisher.sent) == 12 == discovery.published
        discovery.place("M-9", "generic-prepaid")  # provisioned while running: announced too
        await async_wait_until(lambda: len(publisher.sent) == 18, timeout=5, what="the configs with the new meter")
        assert {topic for topic, _, _ in publisher.sent[12:]} >= {f"ha/sensor/{node}/M-9_energy/config",
                                                                  f"ha/binary_sensor/{node}/M-9_relay/config"}
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
