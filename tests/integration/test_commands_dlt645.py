"""Relay commands against a simulated DL/T 645 meter with faults: confirmation by status word 3, a stuck relay,
a meter that refuses, expiry, a command that reaches the meter after its validity end time."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.bootstrap import Gateway
from gateway.settings import Settings
from simulators.dlt645 import Dlt645Simulator, SimulatedDlt645Meter
from simulators.faults import Fault, FaultKind
from tests.integration.command_bench import CommandBench
from tests.support import async_wait_until, free_port

ADDRESS = "000000000001"


@dataclass
class Bench(CommandBench):
    simulator: Dlt645Simulator
    meter: SimulatedDlt645Meter


@pytest.fixture
async def bench(tmp_path: Path) -> AsyncIterator[Bench]:
    port = free_port()
    settings = Settings.model_validate({
        "database": {"url": f"sqlite:///{tmp_path / 'gw.db'}"},
        "engine": {"command_expiry_s": 4, "confirm_interval_s": 0.2},
        "tariffs": {"flat": {"kind": "flat", "price": "0.5000"}},
        "accounts": [{"id": "A-1", "tariff": "flat", "opening_balance": "100.00"}],
        "buses": [{"id": "rs485", "protocol": "dlt645-tcp", "host": "127.0.0.1", "port": port, "timeout_s": 0.5,
                   "retries": 0}],
        "meters": [{"id": "M-1", "bus": "rs485", "address": ADDRESS, "account": "A-1", "poll_interval_s": 1}],
    })
    async with Dlt645Simulator(meters=1, tcp=f"127.0.0.1:{port}") as simulator:
        async with Gateway(settings, base_dir=tmp_path) as gateway:
            yield Bench(gateway, simulator, simulator.meter(ADDRESS))


async def test_trip_and_close_confirmed_by_status_word_3(bench: Bench) -> None:
    record = await bench.settled((await bench.command("open")).id)
    assert (record.state, record.attempts) == ("confirmed", 1)
    assert bench.meter.relay_open
    record = await bench.settled((await bench.command("close")).id)
    assert record.state == "confirmed" and not bench.meter.relay_open


async def test_stuck_relay_fails_with_an_alarm(bench: Bench) -> None:
    bench.simulator.bus.faults.add(Fault(FaultKind.RELAY_STUCK), meters=[0])
    record = await bench.settled((await bench.command("open")).id)
    assert record.state == "failed"
    assert "not confirmed" in (record.last_error or "")
    assert not bench.meter.relay_open  # the meter acknowledged, but its contact never moved
    assert any(a.get("type") == "CommandFailed" and a.get("command_id") == record.id for a in await bench.alarms())


async def test_a_refusal_fails_fast_with_the_meters_reason(bench: Bench) -> None:
    bench.meter.protected = True  # 保电 on the meter itself: it refuses trips with an error reply
    record = await bench.settled((await bench.command("open")).id, timeout=3)
    assert (record.state, record.attempts) == ("failed", 1)
    assert "meter refused" in (record.last_error or "")
    assert not bench.meter.relay_open


async def test_a_command_that_reaches_the_meter_too_late_is_refused_by_the_meter(bench: Bench) -> None:
    # The meter's clock runs an hour ahead: the command's validity end time has passed when it arrives.
    bench.meter.clock_offset = dt.timedelta(hours=1)
    record = await bench.settled((await bench.command("open")).id, timeout=3)
    assert record.state == "failed" and "meter refused" in (record.last_error or "")
    assert bench.meter.refusals and bench.meter.refusals[-1][0] == 0x1A
    assert not bench.meter.relay_open


def _health(bench: Bench) -> Any:
    assert bench.gateway.scheduler is not None
    return bench.gateway.scheduler.buses[0].poller.meters["M-1"]


async def test_replies_lost_after_the_trip_left_fail_the_command_and_never_report_it_done(bench: Bench) -> None:
    # The meter answered its last poll, then acts on the trip but its replies are lost: the gateway can't
    # confirm anything, so the command must end `failed` (not confirmed, alarm raised), never `expired` as if it
    # had not reached the meter.
    await async_wait_until(lambda: _health(bench).polls >= 1 and not _health(bench).failures, timeout=5,
                           what="an answered poll")
    bench.meter.inject("silence")
    record = await bench.settled((await bench.command("open")).id)
    assert record.state == "failed" and record.attempts >= 1
    assert any(a.get("command_id") == record.id for a in await bench.alarms())


async def test_a_trip_never_goes_to_a_meter_whose_last_poll_failed(bench: Bench) -> None:
    bench.meter.inject("silence")
    await async_wait_until(lambda: _health(bench).failures >= 1, timeout=5, what="a failed poll")
    record = await bench.settled((await bench.command("open", answered=False)).id)
    assert record.state == "expired" and record.attempts == 0
    assert not bench.meter.relay_open and not bench.meter.commands


async def test_a_command_queued_while_the_bus_is_down_expires_unsent(bench: Bench) -> None:
    await bench.simulator.stop()  # the converter is gone: nothing reaches the meter
    record = await bench.settled((await bench.command("open", answered=False)).id)
    assert record.state == "expired"
    assert not bench.meter.relay_open


async def test_a_newer_command_supersedes_and_wins(bench: Bench) -> None:
    first = await bench.command("open")
    second = await bench.command("close")
    first_final = await bench.settled(first.id)
    assert first_final.state in ("superseded", "confirmed")
    assert (await bench.settled(second.id)).state == "confirmed"
    assert not bench.meter.relay_open


async def test_a_garbled_answer_is_followed_by_a_read_back_not_a_second_trip(bench: Bench) -> None:
    await async_wait_until(lambda: _health(bench).polls >= 1 and not _health(bench).failures, timeout=5,
                           what="an answered poll")  # a trip goes only to a meter whose last poll succeeded
    bench.meter.inject("bad_checksum", count=1)  # the meter trips, but its acknowledgement arrives corrupted
    record = await bench.settled((await bench.command("open")).id)
    assert record.state == "confirmed"
    assert bench.meter.relay_open
    assert len(bench.meter.commands) == 1  # confirmed by status word 3, not by sending the trip again
