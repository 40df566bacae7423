"""The command path's unsafe cases, through real processes: a `meter-gateway run` gateway polling a DL/T 645
simulator (`meter-gateway simulate dlt645`, driven through its control interface), and the relay as the
simulator saw it (its relay log), never as the gateway says it is.

1. No trip goes to a meter that stopped answering, nor to one that hears but whose replies are lost: not an
   automatic one (the engine decides again once the meter answers), not an operator's (it waits for the meter).
2. A failed disconnect is retried, then shown as `disconnect_failed` on the account and the meter, with an alarm.
3. A close-allowed meter's reconnect ends `armed` (no alarm); the button closes it and the account is connected.
4. The rate limit counts relays opened: never more automatic trips in one window than the limit.
5. A meter's refusal says why: a meter in protect state (保电).
6. Two meters at one address of a bus don't pass `check-config`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import json
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gateway.settings import hash_key
from simulators.control_client import AsyncSimulatorControl
from tests.support import async_wait_until, free_port, stop_process, wait_for_port

ROOT = Path(__file__).resolve().parents[2]
ADMIN = "relay-safety-admin"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
CLI = [sys.executable, "-m", "gateway.cli"]

pytestmark = pytest.mark.slow


@dataclass
class Site:
    api: httpx.AsyncClient
    sim: AsyncSimulatorControl
    db: Path

    async def account(self, account_id: str) -> dict[str, Any]:
        return (await self.api.get(f"/v1/accounts/{account_id}", headers=AUTH)).json()  # type: ignore[no-any-return]

    async def meter(self, meter_id: str) -> dict[str, Any]:
        return (await self.api.get(f"/v1/meters/{meter_id}", headers=AUTH)).json()  # type: ignore[no-any-return]

    async def command(self, command_id: str) -> dict[str, Any]:
        return (await self.api.get(f"/v1/commands/{command_id}", headers=AUTH)).json()  # type: ignore[no-any-return]

    async def operator(self, meter_id: str, action: str) -> str:
        response = await self.api.post(f"/v1/meters/{meter_id}/{action}", json={"reason": "test"}, headers=AUTH)
        assert response.status_code == 202, response.text
        return str(response.json()["command_id"])

    async def settled(self, command_id: str, timeout: float = 20) -> dict[str, Any]:
        async def done() -> bool:
            return (await self.command(command_id))["state"] not in ("queued", "sending", "sent")

        await async_wait_until(done, timeout=timeout, what=f"command {command_id} to settle")
        return await self.command(command_id)

    async def failures(self, meter_id: str, at_least: int) -> None:
        async def failing() -> bool:
            return (await self.meter(meter_id))["consecutive_failures"] >= at_least

        await async_wait_until(failing, timeout=30, what=f"{at_least} failed polls of {meter_id}")

    async def trips(self, index: int) -> list[dict[str, Any]]:
        return [e for e in await self.sim.relay_log(meter=index) if e["asked"] == "trip"]

    def alarms(self) -> list[dict[str, Any]]:
        with contextlib.closing(sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)) as conn:
            rows = conn.execute("SELECT payload FROM outbox WHERE topic = 'alarms'").fetchall()
        return [json.loads(r[0]) for r in rows]


def _config(tmp_path: Path, api_port: int, sim_port: int, **policy: Any) -> Path:
    config = {
        "database": {"url": "sqlite:///gw.db"},
        "api": {"port": api_port, "keys": [{"name": "admin", "role": "admin", "sha256": hash_key(ADMIN)}],
                "max_operator_hold_s": 10**8},
        "engine": {"command_expiry_s": 30, "confirm_interval_s": 0.2, "confirm_timeout_s": 1.0,
                   "command_attempts": 2, "retry_backoff_s": 0.5, "reading_history_s": 0},
        "policy": {"notice_period": 0, "friendly_windows": [], "stale_after": "1h", **policy},
        "tariffs": {"flat": {"kind": "flat", "price": "0.5000"}},
        "accounts": [{"id": f"A-{i}", "tariff": "flat", "opening_balance": "50.00", "overdraft": "0.00",
                      "reconnect_min_topup": "1.00"} for i in range(1, 7)],
        "buses": [{"id": "rs485", "protocol": "dlt645-tcp", "host": "127.0.0.1", "port": sim_port, "timeout_s": 0.3,
                   "retries": 0, "close_command": "allowed", "backoff_s": 0.5, "backoff_cap_s": 1.0}],
        "meters": [{"id": f"M-{i}", "bus": "rs485", "address": str(i), "account": f"A-{i}", "poll_interval_s": 0.5}
                   for i in range(1, 7)],
    }
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@contextlib.contextmanager
def _process(args: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log.open("wb"))
    try:
        yield proc
    finally:
        stop_process(proc)


@contextlib.asynccontextmanager
async def site(tmp_path: Path, **policy: Any) -> AsyncIterator[Site]:
    api_port, sim_port, control_port = free_port(), free_port(), free_port()
    config = _config(tmp_path, api_port, sim_port, **policy)
    simulator = [*CLI, "simulate", "dlt645", "--tcp", f"127.0.0.1:{sim_port}", "--meters", "6", "--close-allowed",
                 "--protect", "4", "--control", f"127.0.0.1:{control_port}"]
    with _process(simulator, tmp_path / "sim.log"), \
            _process([*CLI, "run", "--config", str(config)], tmp_path / "gateway.log"):
        wait_for_port(control_port, timeout=30)
        wait_for_port(api_port, timeout=60)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", timeout=10) as api:
            here = Site(api, AsyncSimulatorControl(f"http://127.0.0.1:{control_port}"), tmp_path / "gw.db")

            async def all_answered() -> bool:
                return all([(await here.meter(f"M-{i}"))["health"] == "online" for i in range(1, 7)])

            await async_wait_until(all_answered, timeout=30, what="every meter to answer")
            yield here


async def test_no_trip_goes_to_a_meter_that_stopped_answering(tmp_path: Path) -> None:
    async with site(tmp_path) as s:
        # an automatic trip: the balance falls below the disconnect point while M-1's replies are lost
        await s.sim.mute(0)
        await s.failures("M-1", 1)
        debit = await s.api.post("/v1/accounts/A-1/adjustments", json={"amount": "-60.00", "reason": "test"},
                                 headers=AUTH)
        assert debit.status_code == 200, debit.text
        # an operator's trip to a meter that does not answer at all
        await s.sim.silence(1)
        await s.failures("M-2", 1)
        manual = await s.operator("M-2", "disconnect")
        await s.failures("M-1", 4)  # failed polls after the decision
        await s.failures("M-2", 4)
        assert await s.trips(0) == [] and await s.trips(1) == []  # nothing went out during the outage
        assert (await s.sim.meter(0))["relay"] == "closed" and (await s.sim.meter(1))["relay"] == "closed"
        account = await s.account("A-1")
        assert (account["state"], account["disconnect_deferred_because"]) == ("connected", "meter_offline")
        assert (await s.command(manual))["state"] == "queued"
        # once they answer again: the engine decides again on a fresh reading, the operator's trip goes
        await s.sim.revive(0)
        await s.sim.revive(1)
        assert (await s.settled(manual))["state"] == "confirmed"

        async def disconnected() -> bool:
            return (await s.account("A-1"))["state"] == "disconnected"

        await async_wait_until(disconnected, timeout=20, what="A-1 disconnected after a fresh reading")
        assert [t["executed"] for t in await s.trips(0)] == [True]
        assert [t["executed"] for t in await s.trips(1)] == [True]


async def test_a_failed_disconnect_is_retried_then_shown_and_alarmed(tmp_path: Path) -> None:
    async with site(tmp_path) as s:
        await s.sim.stick(2)
        command = await s.settled(await s.operator("M-3", "disconnect"))
        assert command["state"] == "failed" and command["attempts"] == 2
        assert "gave up after 2 attempts" in command["last_error"]
        assert len(await s.trips(2)) == 2  # retried once, then given up: engine.command_attempts
        assert (await s.sim.meter(2))["relay"] == "closed"
        account, meter = await s.account("A-3"), await s.meter("M-3")
        assert account["state"] == "disconnect_failed"  # never "disconnected" over a closed relay
        assert (meter["relay"], meter["relay_fault"]) == ("closed", "disconnect_failed")
        assert [(a["fault"], a["command_id"]) for a in s.alarms() if a["type"] == "CommandFailed"] == [
            ("disconnect_failed", command["id"])]


async def test_a_close_allowed_reconnect_ends_armed_and_the_button_closes_it(tmp_path: Path) -> None:
    async with site(tmp_path) as s:
        assert (await s.settled(await s.operator("M-4", "disconnect")))["state"] == "confirmed"
        assert (await s.account("A-4"))["state"] == "disconnected"
        command = await s.settled(await s.operator("M-4", "reconnect"))
        assert command["state"] == "armed"
        assert (await s.sim.meter(3))["awaiting_button"]
        account = await s.account("A-4")
        assert (account["state"], account["relays"]) == ("armed", {"M-4": "armed"})
        assert not [a for a in s.alarms() if a["type"] == "CommandFailed"]
        await s.sim.press_button(3)

        async def connected() -> bool:
            return (await s.account("A-4"))["state"] == "connected"

        await async_wait_until(connected, timeout=10, what="the next poll to read the closed relay")


async def test_never_more_automatic_trips_in_a_window_than_the_limit(tmp_path: Path) -> None:
    async with site(tmp_path, max_auto_disconnects_per_minute=1, rate_window="4s") as s:
        for account_id in ("A-1", "A-2", "A-3"):
            debit = await s.api.post(f"/v1/accounts/{account_id}/adjustments", headers=AUTH,
                                     json={"amount": "-60.00", "reason": "a bad tariff"})
            assert debit.status_code == 200

        async def all_open() -> bool:
            return all([(await s.sim.meter(i))["relay"] == "open" for i in range(3)])

        await async_wait_until(all_open, timeout=30, what="the three relays to open, one window apart")
        trips = sorted([dt.datetime.fromisoformat(t["time"]) for i in range(3) for t in await s.trips(i)])
        assert len(trips) == 3
        gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(trips)]
        assert all(gap >= 3.9 for gap in gaps), gaps  # one trip per 4-second window, on the wire


async def test_a_refusal_names_the_meters_reason(tmp_path: Path) -> None:
    async with site(tmp_path) as s:
        command = await s.settled(await s.operator("M-5", "disconnect"))  # meter 4 is in protect state (保电)
        assert (command["state"], command["attempts"]) == ("failed", 1)
        assert command["last_error"] == "meter refused: meter in protect state (保电)"
        refused = await s.trips(4)
        assert [(t["executed"], t["reason"]) for t in refused] == [(False, "protect")]
        alarm = next(a for a in s.alarms() if a["type"] == "CommandFailed")
        assert "保电" in alarm["error"]
        assert (await s.sim.meter(4))["relay"] == "closed"


def test_two_meters_at_one_address_fail_check_config(tmp_path: Path) -> None:
    config = _config(tmp_path, 8080, 8021)
    data = yaml.safe_load(config.read_text())
    data["meters"][1]["address"] = "000000000001"  # M-2 at M-1's address
    config.write_text(yaml.safe_dump(data))
    run = subprocess.run([*CLI, "check-config", str(config)], cwd=ROOT, capture_output=True, text=True, check=False)
    assert run.returncode == 2
    assert "meters[1].address: 000000000001 is already meters[0]'s on bus 'rs485'" in run.stderr
    assert str(config) in run.stderr
