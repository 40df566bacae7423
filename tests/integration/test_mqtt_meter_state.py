"""A meter's retained state on a real mosquitto (real SQLite): health, relay and the newest reading merged into one
message, published again when one of them changes and seeded from storage at a restart; Home Assistant discovery
configs when it is on (none when off), published again when Home Assistant comes online."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from drivers.base import Reading, RelayState
from gateway.bootstrap import Gateway
from gateway.domain.relay import State
from gateway.service.commands import CommandRecord, new_command
from gateway.settings import Settings
from tests import mosquitto
from tests.mosquitto import Broker, mosquitto_broker
from tests.support import async_wait_until

pytestmark = pytest.mark.tool("mosquitto")

ODD = "Zähler 2.b"  # a meter id with characters Home Assistant's ids and discovery topics cannot have


def site(tmp_path: Path, port: int, **mqtt: Any) -> Settings:
    return Settings.model_validate({
        "database": {"url": f"sqlite:///{tmp_path / 'gw.db'}"},
        "mqtt": {"host": "127.0.0.1", "port": port, "prefix": "gw-test", **mqtt},
        "tariffs": {"flat": {"kind": "flat", "price": "1.0000"}},
        "accounts": [{"id": "A-1", "tariff": "flat", "opening_balance": "100.00"}],
        "buses": [{"id": "b", "protocol": "modbus-tcp", "host": "127.0.0.1", "port": 1}],
        "meters": [{"id": "M-1", "bus": "b", "unit_id": 1, "account": "A-1"},
                   {"id": ODD, "bus": "b", "unit_id": 2, "account": "A-1", "model": "generic-prepaid"}],
    })


class Listener(mosquitto.Listener):
    """The topics of this module's tests: meters' states and Home Assistant's configs."""

    def states(self, meter: str = "M-1") -> list[dict[str, Any]]:
        return self.on(f"gw-test/meters/{meter}/state")

    def state(self, meter: str = "M-1") -> dict[str, Any]:
        found = self.states(meter)
        return found[-1] if found else {}

    def configs(self) -> list[tuple[str, Any, bool]]:
        return [m for m in self.messages if m[0].startswith("homeassistant/") and m[0].endswith("/config")]


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Broker]:
    with mosquitto_broker(tmp_path) as running:
        yield running


async def confirmed(gw: Gateway, action: str) -> CommandRecord:
    """A relay command of M-1 taken through its states to confirmed, as the runner writes them after the read-back
    (no bus here)."""
    now = gw.service.clock()
    record = new_command(meter_id="M-1", action=action, origin="operator", now=now,
                         expires_at=now + dt.timedelta(minutes=5), reason="test")
    async with gw.uow() as uow:
        await uow.commands.add(record)
        await uow.commit()
    command = record.model()
    for state in (State.SENDING, State.SENT, State.CONFIRMED):
        new = command.to(state)
        async with gw.uow() as uow:
            assert await uow.commands.save(command, new, gw.service.clock())
            await uow.commit()
        command = new
    return record


async def a_degraded_meter_with_a_reading_and_its_relay_opened(gw: Gateway, sub: Listener, t0: dt.datetime) -> str:
    """A reading (relay closed), a failed poll, a confirmed disconnect; returns the command's id."""
    await gw.service.record_reading(Reading("M-1", t0, 1_000, power_w=500, voltage_v=230.5, current_a=2.2,
                                            relay=RelayState.CLOSED))
    await async_wait_until(lambda: (sub.state().get("reading") or {}).get("energy_wh") == 1_000, timeout=10,
                           what="the state with the reading")
    await gw.service.record_failure("M-1", "no answer")
    await async_wait_until(lambda: sub.state().get("health") == "degraded", timeout=10, what="the degraded state")
    record = await confirmed(gw, "open")
    await async_wait_until(lambda: sub.state().get("relay") == "open", timeout=10, what="the relay opened")
    return record.id


async def test_the_state_merges_health_relay_and_reading_and_stays_retained(broker: Broker, tmp_path: Path) -> None:
    t0 = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(minutes=10)
    async with Gateway(site(tmp_path, broker.port), run_buses=False, base_dir=tmp_path) as gw, \
            Listener(broker.port, "gw-test/#") as sub:
        await async_wait_until(lambda: sub.states(), timeout=10, what="the state published at the start")
        assert {k: sub.states()[0][k] for k in ("type", "meter_id", "health", "relay", "reading")} == {
            "type": "MeterState", "meter_id": "M-1", "health": "unknown", "relay": "unknown", "reading": None}

        await gw.service.record_reading(Reading("M-1", t0, 1_000, power_w=500, voltage_v=230.5, current_a=2.2,
                                                relay=RelayState.CLOSED))
        await async_wait_until(lambda: (sub.state().get("reading") or {}).get("energy_wh") == 1_000, timeout=10,
                               what="the state with the reading")
        state = sub.state()
        assert (state["health"], state["error"], state["relay"]) == ("online", None, "closed")
        assert {k: state["reading"][k] for k in ("energy_wh", "power_w", "voltage_v", "current_a", "billed")} == {
            "energy_wh": 1_000, "power_w": 500, "voltage_v": 230.5, "current_a": 2.2, "billed": True}
        assert state["reading"]["taken_at"] == t0.isoformat().replace("+00:00", "Z")
        [reading] = sub.on("gw-test/meters/M-1/reading")  # the reading topic as it was
        assert reading["type"] == "Reading" and reading["energy_wh"] == 1_000 and reading["relay"] == "closed"
        assert state["reading"]["reading_id"] == reading["reading_id"]

        await gw.service.record_failure("M-1", "no answer")
        await async_wait_until(lambda: sub.state().get("health") == "degraded", timeout=10, what="degraded")
        state = sub.state()
        assert state["error"] == "no answer" and state["relay"] == "closed" and state["reading"]["energy_wh"] == 1_000
        assert isinstance(state["event_id"], int)

        command_id = (await confirmed(gw, "open")).id
        await async_wait_until(lambda: sub.state().get("relay") == "open", timeout=10, what="the relay opened")
        state = sub.state()
        [confirmation] = [p for p in sub.on(f"gw-test/commands/{command_id}") if p["state"] == "confirmed"]
        assert state["event_id"] == confirmation["event_id"]  # the read-back's event changed it
        assert (state["health"], state["error"], state["reading"]["energy_wh"]) == ("degraded", "no answer", 1_000)
        assert [p["state"] for p in sub.on(f"gw-test/commands/{command_id}")] == ["queued", "sending", "sent",
                                                                                   "confirmed"]

        # a late reading (taken before the newest) goes out on its topic but is not the meter's latest
        await gw.service.record_reading(Reading("M-1", t0 - dt.timedelta(minutes=1), 990))
        await gw.service.record_reading(Reading("M-1", t0 + dt.timedelta(minutes=1), 1_010))
        await async_wait_until(lambda: (sub.state().get("reading") or {}).get("energy_wh") == 1_010, timeout=10,
                               what="the next reading")
        assert [r["energy_wh"] for r in sub.on("gw-test/meters/M-1/reading")] == [1_000, 990, 1_010]
        assert 990 not in [(s["reading"] or {}).get("energy_wh") for s in sub.states()]
        state = sub.state()
        assert (state["health"], state["relay"]) == ("online", "open")  # the relay stays as confirmed
        seqs = [s["seq"] for s in sub.states()]
        assert seqs == list(range(1, len(seqs) + 1))  # numbered on the topic without gaps
        assert not any(s.get("replayed") for s in sub.states())
    async with Listener(broker.port, "gw-test/meters/+/state") as late:  # retained: a new subscriber gets it
        await async_wait_until(lambda: late.state(), timeout=10, what="the retained state")
        [(_, retained, flag)] = [m for m in late.messages if m[0] == "gw-test/meters/M-1/state"]
        assert flag and retained == state


async def test_a_restarted_gateway_publishes_the_state_seeded_from_storage(broker: Broker, tmp_path: Path) -> None:
    t0 = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(minutes=10)
    async with Gateway(site(tmp_path, broker.port), run_buses=False, base_dir=tmp_path) as gw, \
            Listener(broker.port, "gw-test/#") as sub:
        await async_wait_until(lambda: sub.states(), timeout=10, what="the first state")
        await a_degraded_meter_with_a_reading_and_its_relay_opened(gw, sub, t0)
        before = sub.state()

        async def numbered() -> bool:  # the relay has kept the topic's number (stopped before, it publishes again)
            async with gw.uow(readonly=True) as uow:
                return await uow.outbox.sequences({"meters/M-1/state"}) == {"meters/M-1/state": before["seq"]}

        await async_wait_until(numbered, timeout=10, what="the state's number kept")
    broker.stop()  # without persistence: its retained messages are gone
    broker.start()
    async with Gateway(site(tmp_path, broker.port), run_buses=False, base_dir=tmp_path) as gw, \
            Listener(broker.port, "gw-test/#") as sub:
        await async_wait_until(lambda: sub.states(), timeout=10, what="the state after the restart")
        state = sub.states()[0]
        assert (state["health"], state["error"], state["relay"], state["relay_fault"]) == (
            "degraded", "no answer", "open", None)
        assert state["reading"] == before["reading"]  # the newest reading, from the readings table
        assert state["seq"] == before["seq"] + 1  # the topic's numbers go on
        await gw.service.record_failure("M-1", "still no answer")
        await gw.service.record_failure("M-1", "still no answer")
        await async_wait_until(lambda: sub.state().get("health") == "offline", timeout=10, what="offline")
        state = sub.state()
        assert state["relay"] == "open" and state["reading"]["energy_wh"] == 1_000  # not a half-empty state
        assert state["seq"] == before["seq"] + 2
        assert [s["meter_id"] for s in sub.states(ODD)] == [ODD]  # every meter's state at the start


async def test_home_assistant_discovery_configs_retained_and_published_again_when_it_comes_online(
        broker: Broker, tmp_path: Path) -> None:
    settings = site(tmp_path, broker.port, home_assistant=True)
    async with Gateway(settings, run_buses=False, base_dir=tmp_path), \
            Listener(broker.port, "homeassistant/#", "gw-test/#") as sub:
        await async_wait_until(lambda: len(sub.configs()) == 4, timeout=10, what="4 discovery configs")
        configs = {topic: payload for topic, payload, _ in sub.configs()}
        energy = configs["homeassistant/sensor/gw-test/M-1_energy/config"]
        assert {k: energy[k] for k in ("device_class", "state_class", "unit_of_measurement", "state_topic",
                                       "availability_topic", "payload_available", "payload_not_available",
                                       "unique_id")} == {
            "device_class": "energy", "state_class": "total_increasing", "unit_of_measurement": "Wh",
            "state_topic": "gw-test/meters/M-1/state", "availability_topic": "gw-test/gateway/status",
            "payload_available": "online", "payload_not_available": "offline", "unique_id": "gw-test_M-1_energy"}
        assert "value_json.reading.energy_wh" in energy["value_template"]
        assert energy["device"] == {"identifiers": ["gw-test_M-1"], "name": "Meter M-1", "model": "generic-prepaid"}
        relay = configs["homeassistant/binary_sensor/gw-test/M-1_relay/config"]
        assert (relay["device_class"], relay["payload_on"], relay["payload_off"]) == ("power", "closed", "open")
        assert "value_json.relay" in relay["value_template"] and relay["state_topic"] == "gw-test/meters/M-1/state"
        assert relay["availability_topic"] == "gw-test/gateway/status" and relay["unique_id"] == "gw-test_M-1_relay"
        [odd] = [p for t, p in configs.items() if t.startswith("homeassistant/sensor/") and "M-1" not in t]
        assert odd["state_topic"] == f"gw-test/meters/{ODD}/state"  # where its state really is
        for topic, payload in configs.items():  # safe topic segments and ids, all different
            assert re.fullmatch(r"homeassistant/(sensor|binary_sensor)/gw-test/[A-Za-z0-9_-]+/config", topic)
            assert re.fullmatch(r"[A-Za-z0-9_-]+", payload["unique_id"])
        assert len({p["unique_id"] for p in configs.values()}) == 4
        # what the templates read is in the published state
        await async_wait_until(lambda: sub.states(), timeout=10, what="the state")
        assert {"reading", "relay"} <= set(sub.state())

        async with Listener(broker.port, "homeassistant/#") as late:  # retained
            await async_wait_until(lambda: len(late.configs()) == 4, timeout=10, what="the retained configs")
            assert all(retained for _, _, retained in late.configs())
            assert {t: p for t, p, _ in late.configs()} == configs

        await sub.publish("homeassistant/status", b"online")  # Home Assistant (re)starts
        await async_wait_until(lambda: len(sub.configs()) == 8, timeout=10, what="the configs published again")
        assert {t: p for t, p, _ in sub.configs()[4:]} == configs


async def test_no_discovery_configs_when_home_assistant_is_off(broker: Broker, tmp_path: Path) -> None:
    async with Gateway(site(tmp_path, broker.port), run_buses=False, base_dir=tmp_path) as gw, \
            Listener(broker.port, "homeassistant/#", "gw-test/#") as sub:
        assert gw.discovery is None
        await async_wait_until(lambda: sub.states() and sub.states(ODD), timeout=10, what="the states")
        await sub.publish("homeassistant/status", b"online")
        await sub.publish("homeassistant/marker", b"end")  # after anything published before it
        await async_wait_until(lambda: "end" in sub.on("homeassistant/marker"), timeout=10, what="the marker")
        assert sub.configs() == []


async def test_a_meter_provisioned_while_running_is_announced_to_home_assistant(broker: Broker, tmp_path: Path) -> None:
    from gateway.service.catalog import MeterSpec

    settings = site(tmp_path, broker.port, home_assistant=True)
    async with Gateway(settings, run_buses=False, base_dir=tmp_path) as gw, \
            Listener(broker.port, "homeassistant/#") as sub:
        await async_wait_until(lambda: len(sub.configs()) == 4, timeout=10, what="the first configs")
        await gw.service.lifecycle.add_meter(MeterSpec("M-3", "A-1", "b", unit_id=3), actor="test")
        await async_wait_until(lambda: any("/M-3_energy/" in t for t, _, _ in sub.configs()), timeout=10,
                               what="the new meter's config")
        [config] = [p for t, p, _ in sub.configs() if t == "homeassistant/sensor/gw-test/M-3_energy/config"]
        assert config["state_topic"] == "gw-test/meters/M-3/state"
