"""The fleet changed while the gateway runs, through real processes: a `meter-gateway run` gateway polling a Modbus
simulator (`meter-gateway simulate modbus ... --control`), provisioned over its HTTP API (role provisioning) and
with `meter-gateway fleet import` in another process on the same SQLite file.

What the meters saw is asserted on the simulator's side, never taken from the gateway: relays through the control
interface (and its relay log), and the requests that reached each unit id on a Modbus TCP relay between the two
processes (``ModbusWire``: the control interface does not count requests per unit).

1. An account opened with a meter: the meter is polled within one poll interval; its poll interval changed live;
   retired (its final reading read live): no request reaches its unit any more, the final charge is in the ledger.
   A meter added to an account the gateway already bills is polled and billed too.
2. A live meter swap (换表) without readings: both meters read live, the new meter's relay opened on the simulator,
   the old one no longer polled, the billing continuous across the swap; the ledger verifies (CLI). The same swap
   on a disconnected account: the new relay follows the supply (open).
3. A live closing: the settlement (a refund), the relay opened on the simulator, payments refused, the meter polled
   on but its readings not billed. Then a move-in: the relay closed again, the new account charged from the
   move-in reading.
4. A `fleet import` by the CLI while the gateway runs (a new account with its meter, and a meter of an account the
   gateway bills): picked up within the fleet refresh, the new meters polled and billed.

Each test starts its own simulator (4 units drawing 100 Wh per second each) and gateway (polls every 0.5 s).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gateway.runtime import verify
from gateway.settings import hash_key, load_settings
from simulators.control_client import AsyncSimulatorControl
from tests.support import async_wait_until, free_port

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "gateway.cli"]
PROV, VIEWER, BILLING, OPERATOR = "fleet-live-prov", "fleet-live-viewer", "fleet-live-billing", "fleet-live-ops"
POLL_S = 0.5
POWER_W = 360_000  # 100 Wh per real second, 50 Wh a poll: 0.10 yuan per second at 1 yuan/kWh (1 fen = 10 Wh)
SIM_METERS = 4  # unit ids 1..4 on one port

pytestmark = pytest.mark.slow


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


class ModbusWire:
    """A TCP relay between the gateway and the simulator that counts the Modbus TCP requests (MBAP frames) per
    unit id on their way to the simulator."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.requests: collections.Counter[int] = collections.Counter()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> ModbusWire:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            self._tasks.discard(task)
            return
        try:
            await asyncio.gather(self._requests(reader, up_writer), self._pipe(up_reader, writer))
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for w in (writer, up_writer):
                w.close()
            self._tasks.discard(task)

    async def _requests(self, reader: asyncio.StreamReader, upstream: asyncio.StreamWriter) -> None:
        buffered = b""
        while data := await reader.read(65536):
            buffered += data
            while len(buffered) >= 7 and len(buffered) >= 6 + int.from_bytes(buffered[4:6], "big"):
                self.requests[buffered[6]] += 1  # MBAP: transaction, protocol, length, unit id, PDU
                buffered = buffered[6 + int.from_bytes(buffered[4:6], "big"):]
            upstream.write(data)
            await upstream.drain()
        upstream.close()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()


@dataclass
class Site:
    api: httpx.AsyncClient
    sim: AsyncSimulatorControl
    wire: ModbusWire
    sim_port: int
    config: Path

    def unit(self, unit_id: int) -> str:
        """The simulator's name of a unit (``PORT/UNIT``)."""
        return f"{self.sim_port}/{unit_id}"

    async def get(self, path: str, **params: Any) -> Any:
        answer = await self.api.get(path, params=params, headers=auth(VIEWER))
        assert answer.status_code == 200, answer.text
        return answer.json()

    async def post(self, path: str, body: dict[str, Any], key: str = PROV, status: int = 200) -> Any:
        answer = await self.api.post(path, json=body, headers=auth(key))
        assert answer.status_code == status, answer.text
        return answer.json()

    async def sim_energy(self, unit_id: int) -> int:
        return int((await self.sim.meter(self.unit(unit_id)))["energy_wh"])

    async def sim_relay(self, unit_id: int) -> str:
        return str((await self.sim.meter(self.unit(unit_id)))["relay"])

    async def polled(self, meter_id: str, timeout: float) -> dict[str, Any]:
        """Wait until the gateway shows a reading of the meter and calls it online; its view."""
        async def answered() -> bool:
            answer = await self.api.get(f"/v1/meters/{meter_id}", headers=auth(VIEWER))
            return answer.status_code == 200 and answer.json()["last_reading"] is not None \
                and answer.json()["health"] == "online"

        await async_wait_until(answered, timeout=timeout, interval=0.05, what=f"{meter_id} to be polled")
        return await self.get(f"/v1/meters/{meter_id}")  # type: ignore[no-any-return]

    async def confirmed(self, command_id: str, timeout: float = 10) -> dict[str, Any]:
        async def settled() -> bool:
            return (await self.get(f"/v1/commands/{command_id}"))["state"] not in ("queued", "sending", "sent")

        await async_wait_until(settled, timeout=timeout, what=f"command {command_id} to settle")
        command = await self.get(f"/v1/commands/{command_id}")
        assert command["state"] == "confirmed", command
        return command  # type: ignore[no-any-return]

    async def ledger(self, account_id: str) -> list[dict[str, Any]]:
        """The account's ledger, oldest first."""
        return list(reversed((await self.get(f"/v1/accounts/{account_id}/ledger", limit=1000))["data"]))

    async def readings(self, meter_id: str) -> list[dict[str, Any]]:
        """The meter's stored readings, oldest first."""
        return list(reversed((await self.get(f"/v1/meters/{meter_id}/readings", limit=1000))["data"]))

    async def not_polled(self, unit_id: int, *, while_unit: int, polls: int = 3) -> None:
        """No request reaches ``unit_id`` while ``polls`` requests reach another unit of the same bus (several
        poll intervals of the same poller)."""
        before, other = self.wire.requests[unit_id], self.wire.requests[while_unit]
        await async_wait_until(lambda: self.wire.requests[while_unit] >= other + polls, timeout=polls * POLL_S + 5,
                               what=f"{polls} polls of unit {while_unit}")
        assert self.wire.requests[unit_id] == before, f"unit {unit_id} still polled"

    async def run_cli(self, *args: str) -> str:
        """A CLI command in another process (the test's event loop keeps relaying the bus meanwhile)."""
        proc = await asyncio.create_subprocess_exec(*CLI, *args, cwd=ROOT, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
        assert proc.returncode == 0, f"{args}: {proc.returncode}\n{out.decode()}\n{err.decode()}"
        return out.decode()

    async def ledger_verifies(self, *, cli: bool = False) -> None:
        """The ledger invariant on the gateway's database (``cli``: by `meter-gateway ledger verify`)."""
        if cli:
            out = await self.run_cli("ledger", "verify", "--config", str(self.config))
            assert "ledger consistent" in out, out
            return
        problems, _, _ = await verify(load_settings(self.config), base_dir=self.config.parent)
        assert problems == []


def _config(tmp_path: Path, api_port: int, bus_port: int) -> Path:
    config = {
        "database": {"url": "sqlite:///gw.db"},
        "api": {"port": api_port, "keys": [
            {"name": "prov", "role": "provisioning", "sha256": hash_key(PROV)},
            {"name": "viewer", "role": "viewer", "sha256": hash_key(VIEWER)},
            {"name": "billing", "role": "billing", "sha256": hash_key(BILLING)},
            {"name": "ops", "role": "operator", "sha256": hash_key(OPERATOR)}]},
        "engine": {"command_expiry_s": 30, "confirm_interval_s": 0.2, "confirm_timeout_s": 3, "retry_backoff_s": 0.5,
                   "reading_history_s": 0},
        "policy": {"notice_period": 0, "friendly_windows": [], "stale_after": "1h"},
        "tariffs": {"flat": {"kind": "flat", "price": "1.0000"}},
        "accounts": [{"id": "A-1", "tariff": "flat", "opening_balance": "50.00"}],
        "buses": [{"id": "feeder", "protocol": "modbus-tcp", "host": "127.0.0.1", "port": bus_port,
                   "timeout_s": 0.5, "backoff_s": 0.5, "backoff_cap_s": 1.0}],
        "meters": [{"id": "M-1", "bus": "feeder", "unit_id": 1, "account": "A-1", "poll_interval_s": POLL_S,
                    "max_power_w": 2_000_000}],
    }
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@contextlib.asynccontextmanager
async def _process(args: list[str], log: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    with log.open("wb") as stderr:
        proc = await asyncio.create_subprocess_exec(*args, cwd=ROOT, stdout=asyncio.subprocess.DEVNULL,
                                                    stderr=stderr)
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), timeout=20)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def _at_least(value: Any, limit: int) -> bool:
    return bool(await value >= limit)


async def _accepting(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    return True


@contextlib.asynccontextmanager
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    """A simulator of 4 Modbus units (all drawing POWER_W), the wire relay, and a gateway polling M-1 (unit 1,
    account A-1, 50.00) through it; yields once M-1 answers."""
    sim_port, control_port, api_port = free_port(), free_port(), free_port()
    simulator = [*CLI, "simulate", "modbus", "--meters", str(SIM_METERS), "--port", str(sim_port),
                 "--control", f"127.0.0.1:{control_port}", "--seed", "3"]
    async with _process(simulator, tmp_path / "sim.log"):
        await async_wait_until(lambda: _accepting(control_port), timeout=30, what="the simulator's control port")
        sim = AsyncSimulatorControl(f"http://127.0.0.1:{control_port}")
        for unit in range(1, SIM_METERS + 1):
            await sim.set_power(f"{sim_port}/{unit}", POWER_W)
        async with ModbusWire(sim_port) as wire:
            config = _config(tmp_path, api_port, wire.port)
            async with _process([*CLI, "run", "--config", str(config)], tmp_path / "gateway.log"), \
                    httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", timeout=10) as api:
                await async_wait_until(lambda: _accepting(api_port), timeout=60, what="the gateway's API")
                here = Site(api, sim, wire, sim_port, config)
                await here.polled("M-1", timeout=20)
                yield here


def _fen(energy_wh: int) -> int:
    """What ``energy_wh`` costs at 1.0000 yuan/kWh, in fen (rounded half up, as the billing period is)."""
    return int((Decimal(energy_wh) / 10).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _charges(entries: list[dict[str, Any]], meter_id: str | None = None) -> list[dict[str, Any]]:
    return [e for e in entries if e["kind"] == "charge" and meter_id in (None, e["meter_id"])]


def _charged_fen(entries: list[dict[str, Any]], meter_id: str | None = None) -> int:
    return -sum(int(Decimal(e["amount"]) * 100) for e in _charges(entries, meter_id))


async def _charged_on(s: Site, account_id: str, meter_id: str, at_least: int = 1) -> None:
    async def charged() -> bool:
        return len(_charges(await s.ledger(account_id), meter_id)) >= at_least

    await async_wait_until(charged, timeout=15, what=f"{at_least} charges of {account_id} on {meter_id}")


async def _billed_continuously(s: Site, account_id: str, meter_id: str, energy_before: int, start_wh: int) -> None:
    """The account's charges are the energy it was billed for before (``energy_before``) and the meter's from
    ``start_wh`` to its latest billed reading, to the fen: a billing period's energy is priced as a whole, so
    the charges are its cost rounded once (one fen more or less only if a month ended meanwhile). Readings keep
    coming: checked again until one look sees both at the same point (a gap or double billing never agrees)."""
    seen: list[tuple[int, int]] = []

    async def agree() -> bool:
        billed = [r for r in await s.readings(meter_id) if r["billed"]]
        ledger = await s.ledger(account_id)
        if billed != [r for r in await s.readings(meter_id) if r["billed"]]:
            return False  # a reading came in between
        charged, expected = _charged_fen(ledger), _fen(energy_before + billed[-1]["energy_wh"] - start_wh)
        seen.append((charged, expected))
        periods = {e["period"] for e in _charges(ledger)}
        return abs(charged - expected) <= len(periods) - 1

    await async_wait_until(agree, timeout=10, what=f"{account_id}'s charges to match its energy: {seen[-3:]}")


# --- 1. a meter added to the running gateway, then retired --------------------------------------------------
async def test_a_new_meter_is_polled_within_one_poll_interval_and_a_retired_one_no_more(tmp_path: Path) -> None:
    async with site(tmp_path) as s:
        assert s.wire.requests[2] == 0  # the gateway has never asked unit 2 anything
        started = time.monotonic()
        opened = await s.post("/v1/accounts", {
            "id": "A-2", "tariff": "flat", "opening_balance": "20.00",
            "meters": [{"id": "M-2", "bus": "feeder", "unit_id": 2, "poll_interval_s": POLL_S,
                        "max_power_w": 2_000_000}]}, status=201)
        assert (opened["meters"], opened["balance"]) == (["M-2"], "20.00")
        meter = await s.polled("M-2", timeout=POLL_S + 3)
        first_poll_s = time.monotonic() - started
        assert first_poll_s < POLL_S + 1.5, f"the first poll of M-2 came {first_poll_s:.2f}s after it was added"
        assert s.wire.requests[2] >= 1  # ... on the wire to the simulator's unit 2
        assert meter["last_reading"]["energy_wh"] <= await s.sim_energy(2)
        await _charged_on(s, "A-2", "M-2", at_least=2)  # billed from its first reading on
        first = (await s.readings("M-2"))[0]["energy_wh"]
        await _billed_continuously(s, "A-2", "M-2", 0, first)

        # polled once an hour from now (a change of the meter, live): no request reaches unit 2 meanwhile
        changed = await s.api.patch("/v1/meters/M-2", json={"poll_interval_s": 3600}, headers=auth(PROV))
        assert changed.status_code == 200 and changed.json()["poll_interval_s"] == 3600, changed.text
        await s.not_polled(2, while_unit=1)
        last = (await s.readings("M-2"))[-1]["energy_wh"]
        await async_wait_until(lambda: _at_least(s.sim_energy(2), last + 100), timeout=10,
                               what="unit 2 to use 100 Wh since its last poll")

        before = await s.sim_energy(2)
        retired = await s.post("/v1/meters/M-2/retire", {})  # the final reading read live
        after = await s.sim_energy(2)
        # the final charge is in the ledger: from the last poll's reading to one the simulator's counter passed
        # through during the call
        ledger = await s.ledger("A-2")
        final = ledger[-1]
        assert (final["kind"], final["meter_id"], final["amount"]) == ("charge", "M-2", f"-{retired['charged']}")
        assert before <= last + final["energy_wh"] <= after, (before, last, final, after)
        assert Decimal(retired["charged"]) >= Decimal("0.10")
        assert _charged_fen(ledger) == _fen(last + final["energy_wh"] - first)
        account = await s.get("/v1/accounts/A-2")
        assert (account["meters"], account["balance"]) == ([], final["balance_after"])
        # nothing reaches unit 2 any more, while the bus goes on polling unit 1
        await s.not_polled(2, while_unit=1)
        await s.ledger_verifies()


async def test_a_meter_added_to_an_open_account_is_polled_and_billed(tmp_path: Path) -> None:
    """POST /v1/meters on an account the gateway already bills (no initial reading: billed from its first)."""
    async with site(tmp_path) as s:
        await _charged_on(s, "A-1", "M-1")
        added = await s.post("/v1/meters", {"id": "M-3", "account": "A-1", "bus": "feeder", "unit_id": 3,
                                            "poll_interval_s": POLL_S, "max_power_w": 2_000_000}, status=201)
        assert (added["account_id"], added["unit_id"]) == ("A-1", 3)
        await s.polled("M-3", timeout=POLL_S + 3)
        assert s.wire.requests[3] >= 1
        assert (await s.get("/v1/accounts/A-1"))["meters"] == ["M-1", "M-3"]
        await _charged_on(s, "A-1", "M-3", at_least=2)  # its readings are billed to A-1, M-1's too
        billed = [r for r in await s.readings("M-3") if r["billed"]]
        assert len(billed) >= 3
        await s.ledger_verifies()


# --- 2. 换表 while the gateway runs ----------------------------------------------------------------------------
async def test_a_live_meter_swap_reads_both_meters_and_sets_the_new_relay(tmp_path: Path) -> None:
    async with site(tmp_path) as s:
        await _charged_on(s, "A-1", "M-1")
        assert await s.sim_relay(2) == "closed"
        first_m1 = (await s.readings("M-1"))[0]["energy_wh"]
        old_before, new_before = await s.sim_energy(1), await s.sim_energy(2)
        swap = await s.post("/v1/meters/M-1/swap", {
            "new_meter": {"id": "M-1B", "bus": "feeder", "unit_id": 2, "poll_interval_s": POLL_S,
                          "max_power_w": 2_000_000}, "relay": "open"})
        old_after, new_after = await s.sim_energy(1), await s.sim_energy(2)
        # both readings taken live: what the simulator's counters showed during the call
        assert old_before <= swap["final_wh"] <= old_after, (old_before, swap["final_wh"], old_after)
        assert new_before <= swap["initial_wh"] <= new_after, (new_before, swap["initial_wh"], new_after)
        assert (swap["meter"]["id"], swap["meter"]["account_id"], swap["account"]["meters"]) == (
            "M-1B", "A-1", ["M-1B"])
        # the new meter's relay opened on the simulator, confirmed by reading it back
        assert swap["command_id"] is not None
        command = await s.confirmed(swap["command_id"])
        assert (command["meter_id"], command["action"]) == ("M-1B", "open")
        assert await s.sim_relay(2) == "open"
        assert [(e["asked"], e["executed"]) for e in await s.sim.relay_log(meter=s.unit(2))] == [("trip", True)]
        assert await s.sim.relay_log(meter=s.unit(1)) == []  # nothing was sent to the old meter
        # the old meter is not polled any more; the new one is
        await s.not_polled(1, while_unit=2)
        # billed continuously: the old meter up to its final reading, the new one from its initial reading (it
        # drew a little until its relay opened)
        await _billed_continuously(s, "A-1", "M-1B", swap["final_wh"] - first_m1, swap["initial_wh"])
        # charges go on from the new meter's initial reading once its relay is closed again (energy flows)
        reconnect = await s.post("/v1/meters/M-1B/reconnect", {"reason": "customer ready"}, key=OPERATOR,
                                 status=202)
        await s.confirmed(reconnect["command_id"])
        assert await s.sim_relay(2) == "closed"
        await _charged_on(s, "A-1", "M-1B", at_least=2)
        await _billed_continuously(s, "A-1", "M-1B", swap["final_wh"] - first_m1, swap["initial_wh"])
        await s.ledger_verifies(cli=True)


async def test_a_swap_on_a_disconnected_account_follows_its_supply(tmp_path: Path) -> None:
    async with site(tmp_path) as s:
        disconnect = await s.post("/v1/meters/M-1/disconnect", {"reason": "meter inspection"}, key=OPERATOR,
                                  status=202)
        await s.confirmed(disconnect["command_id"])
        assert await s.sim_relay(1) == "open"
        swap = await s.post("/v1/meters/M-1/swap", {
            "new_meter": {"id": "M-1B", "bus": "feeder", "unit_id": 2, "poll_interval_s": POLL_S,
                          "max_power_w": 2_000_000}, "relay": "follow"})
        assert swap["final_wh"] == await s.sim_energy(1)  # its relay open: the counter stands still
        command = await s.confirmed(swap["command_id"])
        assert (command["meter_id"], command["action"]) == ("M-1B", "open")  # the account's supply: disconnected
        assert await s.sim_relay(2) == "open"
        assert (await s.get("/v1/accounts/A-1"))["supply"] == "disconnected"
        reconnect = await s.post("/v1/meters/M-1B/reconnect", {"reason": "inspected"}, key=OPERATOR, status=202)
        await s.confirmed(reconnect["command_id"])
        assert await s.sim_relay(2) == "closed"
        await _charged_on(s, "A-1", "M-1B")
        account = await s.get("/v1/accounts/A-1")
        assert (account["supply"], account["meters"]) == ("connected", ["M-1B"])
        assert account["relays"] == {"M-1B": "closed"}  # the retired M-1's last relay (open) no longer counts
        assert account["state"] == "connected"


# --- 3. closing an account live, then a move-in on its meter ----------------------------------------------------
async def test_a_live_closing_then_a_move_in(tmp_path: Path) -> None:
    async with site(tmp_path) as s:
        await _charged_on(s, "A-1", "M-1")
        first = (await s.readings("M-1"))[0]["energy_wh"]
        before = await s.sim_energy(1)
        closed = await s.post("/v1/accounts/A-1/close", {"relay": "open", "reason": "moved away"})
        after = await s.sim_energy(1)
        account = closed["account"]
        assert (account["status"], account["balance"]) == ("closed", "0.00")
        ledger = await s.ledger("A-1")
        refund = ledger[-1]
        assert (refund["kind"], refund["amount"], refund["balance_after"]) == ("refund", closed["settled"], "0.00")
        assert Decimal(closed["settled"]) < 0
        assert Decimal(ledger[-2]["balance_after"]) == -Decimal(closed["settled"])  # the whole remaining balance
        assert _fen(before - first) <= _charged_fen(ledger) <= _fen(after - first)  # final reading: read live
        [command_id] = closed["commands"]
        command = await s.confirmed(command_id)
        assert (command["meter_id"], command["action"]) == ("M-1", "open")
        assert await s.sim_relay(1) == "open"
        assert (await s.get("/v1/accounts/A-1"))["status"] == "closed"
        paid = await s.api.post("/v1/payments", headers=auth(BILLING), json={
            "source": "billing", "payment_id": "P-1", "account_id": "A-1", "amount": "5.00",
            "paid_at": "2026-11-23T08:00:00Z", "channel": "cash"})
        assert paid.status_code == 409, paid.text
        # the meter is polled on; its readings are stored, not billed
        stored = len(await s.readings("M-1"))

        async def unbilled_readings() -> bool:
            newer = (await s.readings("M-1"))[stored:]
            return len(newer) >= 2 and not any(r["billed"] for r in newer)

        await async_wait_until(unbilled_readings, timeout=10, what="unbilled readings of M-1")
        assert await s.ledger("A-1") == ledger

        # a new customer moves in: the relay closed again, the new account charged from the move-in reading
        energy = await s.sim_energy(1)  # constant while the relay is open
        moved = await s.post("/v1/meters/M-1/move-in", {
            "account": {"id": "A-7", "tariff": "flat", "opening_balance": "30.00"}, "relay": "follow"})
        assert (moved["previous_account"], moved["reading_wh"], moved["account"]["meters"]) == ("A-1", energy, ["M-1"])
        assert moved["command_id"] is not None
        command = await s.confirmed(moved["command_id"])
        assert (command["meter_id"], command["action"]) == ("M-1", "close")
        assert await s.sim_relay(1) == "closed"
        assert [e["asked"] for e in await s.sim.relay_log(meter=s.unit(1))] == ["trip", "close"]
        await _charged_on(s, "A-7", "M-1", at_least=2)
        await _billed_continuously(s, "A-7", "M-1", 0, energy)
        assert (await s.ledger("A-7"))[0]["kind"] == "opening"
        assert await s.ledger("A-1") == ledger  # the closed account is left as it was
        await s.ledger_verifies()


# --- 4. the CLI's import, picked up by the running gateway -----------------------------------------------------
async def test_a_cli_import_is_picked_up_by_the_running_gateway(tmp_path: Path) -> None:
    async with site(tmp_path) as s:
        accounts, meters = tmp_path / "a.csv", tmp_path / "m.csv"
        accounts.write_text("id,tariff,opening_balance\nA-5,flat,15.00\n")
        meters.write_text("id,account,bus,unit_id,poll_interval_s,max_power_w\n"
                          f"M-5,A-5,feeder,3,{POLL_S},2000000\n"
                          f"M-6,A-1,feeder,4,{POLL_S},2000000\n")  # a second meter of the account it bills
        assert s.wire.requests[3] == s.wire.requests[4] == 0
        out = await s.run_cli("fleet", "import", "--config", str(s.config), "--accounts", str(accounts),
                              "--meters", str(meters))
        assert "imported 1 accounts and 2 meters" in out, out
        imported = time.monotonic()
        await s.polled("M-5", timeout=5 + POLL_S + 3)  # the fleet refresh (5 s), then one poll interval
        await s.polled("M-6", timeout=POLL_S + 1)
        picked_up_s = time.monotonic() - imported
        assert s.wire.requests[3] >= 1 and s.wire.requests[4] >= 1
        assert picked_up_s < 5 + POLL_S + 2, picked_up_s
        await _charged_on(s, "A-5", "M-5", at_least=2)
        await _charged_on(s, "A-1", "M-6", at_least=2)
        assert (await s.get("/v1/accounts/A-5"))["meters"] == ["M-5"]
        assert (await s.get("/v1/accounts/A-1"))["meters"] == ["M-1", "M-6"]
        await s.ledger_verifies()
