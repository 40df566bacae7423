"""The bus scheduler in a running gateway, against the Modbus simulator over real sockets and serial ptys.

A dead meter costs its bus no more than its backoff budget; RTU on a pty end to end with a relay command that
does not wait behind the polls; an endpoint and a serial port that go away and come back; the relay command
lifecycle (restart recovery of `sending`, refusals fail fast, transport errors retry until expiry).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from drivers.modbus import load_model
from gateway.adapters import tables as t
from gateway.bootstrap import Gateway
from gateway.service import commands as cmds
from gateway.service.polling.poller import BusPoller
from gateway.service.verify import verify_ledger
from gateway.settings import Settings, hash_key
from simulators.faults import Fault, FaultKind
from simulators.modbus import DEFAULT_MODEL_PATH, ModbusFleet, ModbusSerialFleet
from tests.support import async_wait_until, free_port, socat_pty_pair

GENERIC = load_model(DEFAULT_MODEL_PATH)


def site(tmp_path: Path, bus: dict[str, Any], meters: int, *, interval: float, expiry_s: float = 30,
         **extra: Any) -> Settings:
    return Settings.model_validate({
        **extra,
        "database": {"url": f"sqlite:///{tmp_path / 'gw.db'}"},
        "engine": {"command_expiry_s": expiry_s, "confirm_interval_s": 0.1, "retry_backoff_s": 0.2},
        "tariffs": {"flat": {"kind": "flat", "price": "1.0000"}},
        "accounts": [{"id": f"A-{i}", "tariff": "flat", "opening_balance": "1000.00"} for i in range(1, meters + 1)],
        "buses": [{"id": "bus", **bus}],
        "meters": [{"id": f"M-{i}", "bus": "bus", "unit_id": i, "account": f"A-{i}", "poll_interval_s": interval}
                   for i in range(1, meters + 1)],
    })


@contextlib.asynccontextmanager
async def gateway(settings: Settings, tmp_path: Path) -> AsyncIterator[tuple[Gateway, BusPoller]]:
    async with Gateway(settings, base_dir=tmp_path) as gw:
        assert gw.scheduler is not None
        yield gw, gw.scheduler.buses[0].poller


async def db_health(gw: Gateway, meter_id: str) -> str:
    async with gw.uow(readonly=True) as uow:
        return str((await uow.execute(sa.select(t.meters.c.health).where(t.meters.c.id == meter_id))).scalar_one())


async def command(gw: Gateway, command_id: str) -> cmds.CommandRecord:
    async with gw.uow(readonly=True) as uow:
        record = await uow.commands.get(command_id)
    assert record is not None
    return record


async def test_a_dead_meter_costs_its_bus_no_more_than_its_backoff_budget(tmp_path: Path) -> None:
    timeout, interval, window = 0.1, 0.1, 3.0
    async with ModbusFleet(GENERIC, meters=5, port=free_port()) as fleet:
        fleet.faults.add(Fault(FaultKind.NO_ANSWER), meters=[fleet.index_of(5)])
        bus = {"protocol": "modbus-tcp", "host": "127.0.0.1", "port": fleet.port, "timeout_s": timeout}
        async with gateway(site(tmp_path, bus, 5, interval=interval), tmp_path) as (gw, runner):
            runner.breaker.backoff_base_s = 0.0  # back off from the interval (before M-5's first try ends)
            start = time.monotonic()
            await async_wait_until(lambda: time.monotonic() - start >= window, timeout=10, what="the window")
            health = runner.meter_health()
            stats = runner.stats()
            elapsed = time.monotonic() - start
            await async_wait_until(lambda: _is(db_health(gw, "M-5"), "offline"), timeout=5, what="M-5 offline")
            assert await db_health(gw, "M-1") == "online"
    dead = health["M-5"]
    # the most tries the backoff allows in the window: a try every timeout + min(interval * 2 ** (k - 1), cap)
    allowed, at, k = 0, interval * 4 / 5, 0  # M-5's first poll is staggered to 4/5 of the interval
    while at <= elapsed:
        allowed, k = allowed + 1, k + 1
        at += timeout + min(interval * 2 ** (k - 1), runner.breaker.backoff_cap_s)
    assert 1 <= dead["tries"] <= allowed, (dead, allowed)
    assert dead["busy_s"] <= dead["tries"] * (timeout + 0.05)  # each try costs the bus one timeout
    assert dead["state"] == "offline" and dead["polls"] == 0
    for meter_id in ("M-1", "M-2", "M-3", "M-4"):  # the others keep their rate: at most one slot lost per try
        assert health[meter_id]["polls"] >= elapsed / interval - dead["tries"] - 3, health[meter_id]
        assert health[meter_id]["state"] == "online"
    assert stats["failures"] == dead["tries"]


async def test_the_gateway_polls_and_switches_meters_over_rtu_on_a_pty(tmp_path: Path, pty_pair) -> None:
    gateway_end, simulator_end = pty_pair
    writes: list[tuple[float, int, int]] = []
    fleet = ModbusSerialFleet(GENERIC, meters=4, port=simulator_end, baudrate=19200, pace=True,
                              on_write=lambda unit, fc, address, values: writes.append((time.monotonic(), unit,
                                                                                        values[0])))
    bus = {"protocol": "modbus-rtu", "device": gateway_end, "baudrate": 19200, "timeout_s": 0.5}
    async with fleet, gateway(site(tmp_path, bus, 4, interval=0.05), tmp_path) as (gw, runner):
        # 4 meters every 50 ms ask for 80 polls/s; a paced 19200-baud line does about 25: the bus is saturated
        await async_wait_until(lambda: all(h["polls"] >= 2 for h in runner.meter_health().values()), timeout=10,
                               what="every meter polled over RTU")
        created = time.monotonic()
        record = await gw.service.request_command(meter_id="M-2", action="open", origin="operator",
                                                  operator="test", reason="rtu test", actor="test")
        await async_wait_until(lambda: bool(writes), timeout=5, what="the relay write on the line")
        latency = writes[0][0] - created
        await async_wait_until(lambda: _is(_state(gw, record.id), "confirmed"), timeout=5, what="confirmation")
        stats = runner.stats()
    assert writes[0][1:] == (2, 0)  # coil 0 of unit 2 := 0 (open)
    assert not fleet.meters[2].relay_closed and fleet.meters[1].relay_closed
    # one transaction on this line is about 25 ms; the rest is the command's own database work
    assert latency < 0.25, latency
    assert stats["skipped"] > 0 and stats["overloaded"]  # saturated: skipped, never queued


async def test_polls_that_change_nothing_are_not_stored_and_still_shown_as_the_latest_reading(tmp_path: Path
                                                                                             ) -> None:
    """Meters polled every 50 ms advance by a Wh every few seconds: most polls change nothing, are not stored
    (no transaction), and the API shows the newest one; every Wh is still billed."""
    fleet = ModbusFleet(GENERIC, meters=2, port=free_port())
    bus = {"protocol": "modbus-tcp", "host": "127.0.0.1", "port": fleet.port, "timeout_s": 0.5}
    settings = site(tmp_path, bus, 2, interval=0.05,
                    api={"keys": [{"name": "viewer", "role": "viewer", "sha256": hash_key("k")}]})
    async with fleet, gateway(settings, tmp_path) as (gw, runner):
        writer = gw.service.writer
        await async_wait_until(lambda: writer.freshness.skipped >= 20, timeout=20, what="unchanged polls skipped")
        absorbed_count, absorbed = writer.freshness.skipped, writer.freshness.latest["M-1"]  # polls go on
        async with gw.uow(readonly=True) as uow:
            rows = (await uow.execute(sa.select(sa.func.count()).select_from(t.readings))).scalar_one()
            energy = (await uow.execute(sa.select(t.readings.c.meter_id, sa.func.min(t.readings.c.energy_wh),
                                                  sa.func.max(t.readings.c.energy_wh))
                                        .group_by(t.readings.c.meter_id))).all()
            charged = (await uow.execute(sa.select(sa.func.sum(t.ledger.c.amount_fen))
                                         .where(t.ledger.c.kind == "charge"))).scalar_one() or 0
            assert await verify_ledger(uow) == []
        polls = runner.stats()["polls"]
        transport = httpx.ASGITransport(app=gw.app())
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            shown = (await client.get("/v1/meters/M-1", headers={"Authorization": "Bearer k"})).json()
    assert rows + absorbed_count <= polls and rows < polls / 2, (rows, absorbed_count, polls)
    assert shown["last_reading"]["taken_at"] >= absorbed.taken_at.isoformat().replace("+00:00", "Z")
    assert shown["last_reading"]["energy_wh"] >= absorbed.energy_wh
    # every Wh counted since each meter's first reading is billed, stored polls or not
    tariff = gw.catalog.accounts["A-1"].tariff
    assert -charged == sum(tariff.period_cost_fen(last - first, {}) for _, first, last in energy)


async def test_an_endpoint_that_goes_away_and_comes_back_is_polled_again(tmp_path: Path) -> None:
    fleet = ModbusFleet(GENERIC, meters=3, port=free_port())
    bus = {"protocol": "modbus-tcp", "host": "127.0.0.1", "port": fleet.port, "timeout_s": 0.2}
    async with fleet, gateway(site(tmp_path, bus, 3, interval=0.1), tmp_path) as (gw, runner):
        await async_wait_until(lambda: runner.stats()["online"] == 3, timeout=10, what="every meter online")
        await fleet.stop()
        await async_wait_until(lambda: runner.stats()["offline"] == 3, timeout=10, what="every meter offline")
        assert runner.stats()["state"] == "down"
        await async_wait_until(lambda: _is(db_health(gw, "M-1"), "offline"), timeout=5, what="the meters table")
        await fleet.start()
        back = time.monotonic()
        await async_wait_until(lambda: runner.stats()["online"] == 3, timeout=10, what="every meter back")
        assert time.monotonic() - back < 3.0
        await async_wait_until(lambda: _is(db_health(gw, "M-1"), "online"), timeout=5, what="online again")


async def test_a_serial_port_that_goes_away_and_comes_back_is_polled_again(tmp_path: Path) -> None:
    ptys = tmp_path / "ptys"
    ptys.mkdir()
    cable = contextlib.ExitStack()
    gateway_end, simulator_end = cable.enter_context(socat_pty_pair(ptys))
    try:
        fleet = ModbusSerialFleet(GENERIC, meters=2, port=simulator_end, baudrate=19200)
        bus = {"protocol": "modbus-rtu", "device": gateway_end, "baudrate": 19200, "timeout_s": 0.2}
        await fleet.start()  # (answering before the bus opens: started after, the bus could be backing off then)
        async with gateway(site(tmp_path, bus, 2, interval=0.1), tmp_path) as (_, runner):
            await async_wait_until(lambda: runner.stats()["online"] == 2, timeout=10, what="every meter online")
            await fleet.stop()
            cable.close()  # the cable is pulled: socat and its ptys go away...
            await async_wait_until(lambda: runner.stats()["offline"] == 2, timeout=10, what="meters offline")
            with socat_pty_pair(ptys) as (_, simulator_end):  # ...and come back under the same names
                async with ModbusSerialFleet(GENERIC, meters=2, port=simulator_end, baudrate=19200):
                    back = time.monotonic()
                    await async_wait_until(lambda: runner.stats()["online"] == 2, timeout=15,
                                           what="every meter back on the new pty")
                    assert time.monotonic() - back < 10
    finally:
        cable.close()


async def test_a_command_left_sending_is_checked_by_reading_the_relay_first(tmp_path: Path) -> None:
    writes: list[tuple[int, int]] = []
    fleet = ModbusFleet(GENERIC, meters=2, port=free_port(), on_write=lambda u, fc, a, v: writes.append((u, v[0])))
    bus = {"protocol": "modbus-tcp", "host": "127.0.0.1", "port": fleet.port, "timeout_s": 0.3}
    settings = site(tmp_path, bus, 2, interval=60)
    async with fleet:
        async with gateway(settings, tmp_path) as (gw, _):
            ids = []
            async with gw.uow() as uow:  # a previous run crashed between `sending` and the write
                now = dt.datetime.now(dt.UTC)
                for meter_id in ("M-1", "M-2"):
                    record = cmds.new_command(meter_id=meter_id, action="open", origin="operator", now=now,
                                              expires_at=now + dt.timedelta(seconds=30))
                    await uow.commands.add(record)
                    assert await uow.commands.transition(record.id, "queued", "sending", now, attempt=True)
                    ids.append(record.id)
                await uow.commit()
        fleet.meters[1].set_relay(False)  # M-1's command did reach the meter before the crash
        async with gateway(settings, tmp_path) as (gw, _):
            await async_wait_until(lambda: _all_confirmed(gw, ids), timeout=10, what="both commands confirmed")
            first, second = await command(gw, ids[0]), await command(gw, ids[1])
    assert writes == [(2, 0)]  # M-1 was only read back, never written again; M-2 was sent once
    assert first.attempts == 1 and second.attempts == 2
    assert not fleet.meters[2].relay_closed


async def test_no_trip_goes_to_a_meter_whose_polls_fail(tmp_path: Path) -> None:
    """A meter that answers every request with an exception, and one that does not answer: neither is sent a trip
    (their last poll failed), both commands expire unsent; a reconnect is sent anyway (a customer who paid must
    get power: sending it is harmless) and, unanswered, read back rather than sent again."""
    writes: list[tuple[int, int]] = []
    fleet = ModbusFleet(GENERIC, meters=3, port=free_port(), on_write=lambda u, fc, a, v: writes.append((u, v[0])))
    fleet.faults.add(Fault(FaultKind.EXCEPTION, code=4), meters=[fleet.index_of(1)])
    fleet.faults.add(Fault(FaultKind.NO_ANSWER), meters=[fleet.index_of(2), fleet.index_of(3)])
    bus = {"protocol": "modbus-tcp", "host": "127.0.0.1", "port": fleet.port, "timeout_s": 0.1}
    async with fleet, gateway(site(tmp_path, bus, 3, interval=3, expiry_s=2.5), tmp_path) as (gw, poller):
        await async_wait_until(lambda: all(m.failures for m in poller.meters.values()), timeout=5,
                               what="every meter's first poll to fail")
        ids = [(await gw.service.request_command(meter_id=m, action=a, origin="operator", operator="test",
                                                 reason="test", actor="test")).id
               for m, a in (("M-1", "open"), ("M-2", "open"), ("M-3", "close"))]
        await async_wait_until(lambda: _all_final(gw, ids), timeout=10, what="the expiries")
        trip1, trip2, close = [await command(gw, i) for i in ids]
    assert (trip1.state, trip1.attempts, trip2.state, trip2.attempts) == ("expired", 0, "expired", 0)
    assert close.state == "failed" and close.attempts == 1  # sent once, then only read back until expiry
    assert [w for w in writes if w[0] in (1, 2)] == []


async def _state(gw: Gateway, command_id: str) -> str:
    return (await command(gw, command_id)).state


async def _all_confirmed(gw: Gateway, ids: list[str]) -> bool:
    return all([await _state(gw, i) == "confirmed" for i in ids])


async def _all_final(gw: Gateway, ids: list[str]) -> bool:
    return all([await _state(gw, i) not in cmds.ACTIVE_STATES for i in ids])


async def _is(value: Any, expected: str) -> bool:
    return await value == expected

