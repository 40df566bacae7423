"""Two gateway processes (``meter-gateway run``, each with its own API port and its own simulated Modbus
meters) on one PostgreSQL database, naming the same accounts: every account has one meter polled by each
instance, and one more meter is polled by both, so both instances write ledger entries for the same accounts
at the same time.

While both poll meters whose energy keeps rising, a billing client posts payments for the same accounts
through both APIs, and posts some payment ids to both instances at the same moment. After both gateways stop:
``meter-gateway ledger verify`` finds nothing; every accepted payment is in the payments table and credited
once (the ids posted twice, once); every balance is opening + payments - charges; both instances' readings
were billed, each meter's energy exactly once (the shared meter's too).

The gateways start at the same moment on the new database: one migrates while the other waits, and an
account's row and opening entry are made once. Instance 2 runs its storage on an event loop of its own
(``database.own_loop``).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import yaml

from drivers.modbus import load_model
from gateway.settings import hash_key
from simulators.modbus import ModbusFleet
from simulators.modbus.fleet import DEFAULT_MODEL_PATH
from tests.support import async_wait_until, free_port

pytestmark = [pytest.mark.tool("postgres"), pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
KEY = "two-instances-billing-key"
ACCOUNTS = 4  # A-0..A-3, named by both instances
OPENING_FEN = 100_000  # 1000.00 yuan: no account comes near a warning or the disconnect point
PAYMENTS = 300  # unique payment ids posted to each instance
CLIENTS = 4  # concurrent requests per instance
TWICE = 30  # payment ids posted to both instances at the same moment (during the load, and again after it)
SHARED = "M-S"  # a meter of A-0 that both instances poll
POLL_S = 0.1
# 10 yuan/kWh is 1 fen per Wh: every Wh billed is one fen, no rounding, so energy and money can be compared
PRICE = "10.0000"


def _cli() -> list[str]:
    """The ``meter-gateway`` command of this checkout (what its console script runs: ``gateway.cli:main``)."""
    return [sys.executable, "-m", "gateway.cli"]


def write_config(tmp_path: Path, n: int, *, db_url: str, api_port: int, sim_port: int, shared_port: int,
                 reading_history_s: float) -> Path:
    """Instance ``n``: all the accounts, its own meters M-n-i (one per account) on its own simulator, and the
    meter both poll (on a simulator of its own)."""
    config = {
        "site": {"name": f"instance-{n}"},
        "database": {"url": db_url, "own_loop": n == 2},  # instance 2's storage on a loop of its own
        "api": {"host": "127.0.0.1", "port": api_port, "keepalive_timeout_s": 60,
                "keys": [{"name": "billing", "role": "billing", "sources": ["billing"],
                          "sha256": hash_key(KEY)}]},
        # instance 1 stores every reading; instance 2 leaves out readings that change nothing for up to a second
        "engine": {"reading_history_s": reading_history_s},
        "policy": {"notice_period": 0, "friendly_windows": []},
        "tariffs": {"flat": {"kind": "flat", "price": PRICE}},
        "accounts": [{"id": f"A-{i}", "tariff": "flat", "opening_balance": f"{OPENING_FEN / 100:.2f}"}
                     for i in range(ACCOUNTS)],
        "buses": [{"id": f"feeder-{n}", "protocol": "modbus-tcp", "host": "127.0.0.1", "port": sim_port,
                   "timeout_s": 0.5},
                  {"id": "shared", "protocol": "modbus-tcp", "host": "127.0.0.1", "port": shared_port,
                   "timeout_s": 0.5}],
        "meters": [*({"id": f"M-{n}-{i}", "bus": f"feeder-{n}", "unit_id": i + 1, "account": f"A-{i}",
                      "poll_interval_s": POLL_S, "max_power_w": 10_000_000} for i in range(ACCOUNTS)),
                   {"id": SHARED, "bus": "shared", "unit_id": 1, "account": "A-0", "poll_interval_s": POLL_S,
                    "max_power_w": 10_000_000}],
    }
    path = tmp_path / f"gateway-{n}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


class Instance:
    """One ``meter-gateway run`` process and an HTTP client for its API."""

    def __init__(self, n: int, config: Path, api_port: int, log: Path) -> None:
        self.n, self.config, self.log = n, config, log
        self.base = f"http://127.0.0.1:{api_port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.http = httpx.AsyncClient(base_url=self.base, timeout=30,
                                      headers={"Authorization": f"Bearer {KEY}"},
                                      limits=httpx.Limits(max_connections=CLIENTS + 2))

    async def start(self) -> None:
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen([*_cli(), "run", "--config", str(self.config)], cwd=ROOT,
                                         stdout=subprocess.DEVNULL, stderr=log)

        async def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                pytest.fail(f"gateway {self.n} exited with {self.proc.returncode}:\n{self.tail()}")
            with contextlib.suppress(httpx.TransportError):
                return (await self.http.get("/healthz")).status_code == 200
            return False

        await async_wait_until(ready, timeout=60, interval=0.1, what=f"gateway {self.n}'s API")

    async def stop(self) -> int | None:
        """SIGTERM, then its exit status (None if it had to be killed)."""
        await self.http.aclose()
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(proc.wait, 30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
                return None
        return proc.returncode

    def tail(self, chars: int = 6000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


class Billing:
    """The billing client: what it posted and what each instance answered."""

    def __init__(self) -> None:
        self.accepted: dict[str, tuple[str, int]] = {}  # payment id -> (account, fen), 2xx from some instance
        self.statuses: Counter[tuple[int, int]] = Counter()  # (instance, status)
        self.failures: list[str] = []
        self.twice: dict[str, list[tuple[int, int, Any]]] = {}  # id sent to both -> (instance, status, body)

    @staticmethod
    def body(payment_id: str, account: str, fen: int) -> dict[str, str]:
        return {"source": "billing", "payment_id": payment_id, "account_id": account,
                "amount": f"{fen // 100}.{fen % 100:02d}", "channel": "cash"}

    async def post(self, instance: Instance, payment_id: str, account: str, fen: int) -> tuple[int, Any]:
        try:
            response = await instance.http.post("/v1/payments", json=self.body(payment_id, account, fen))
        except httpx.HTTPError as exc:  # the outcome is unknown: the test can't account for it
            self.failures.append(f"gateway {instance.n}: {payment_id}: {type(exc).__name__}: {exc}")
            return 0, None
        self.statuses[(instance.n, response.status_code)] += 1
        if response.status_code in (200, 201):
            self.accepted[payment_id] = (account, fen)
            return response.status_code, response.json()
        self.failures.append(f"gateway {instance.n}: {payment_id}: {response.status_code} "
                             f"{response.text[:300]}")
        return response.status_code, None

    async def pay_through(self, instance: Instance) -> None:
        """PAYMENTS unique ids to one instance, CLIENTS at a time, spread over every account."""
        queue: asyncio.Queue[int] = asyncio.Queue()
        for k in range(PAYMENTS):
            queue.put_nowait(k)

        async def worker() -> None:
            while not queue.empty():
                k = queue.get_nowait()
                fen = 100 + (k * 37 + instance.n * 11) % 900  # 1.00 .. 9.99 yuan
                status, _ = await self.post(instance, f"P-{instance.n}-{k}", f"A-{k % ACCOUNTS}", fen)
                if status == 200:
                    self.failures.append(f"gateway {instance.n}: P-{instance.n}-{k}: a new id answered 200")

        await asyncio.gather(*[worker() for _ in range(CLIENTS)])

    async def pay_twice(self, one: Instance, two: Instance, prefix: str) -> None:
        """TWICE ids, each posted to both instances at the same moment (a billing system retrying through the
        other instance), one after the other."""
        for k in range(TWICE):
            payment_id, account, fen = f"{prefix}-{k}", f"A-{k % ACCOUNTS}", 500 + k
            answers = await asyncio.gather(self.post(one, payment_id, account, fen),
                                           self.post(two, payment_id, account, fen))
            self.twice[payment_id] = [(instance.n, status, body) for instance, (status, body)
                                      in zip((one, two), answers, strict=True)]


async def charges_per_meter(conn: asyncpg.Connection, after_id: int = 0) -> Counter[str]:
    rows = await conn.fetch("SELECT meter_id, count(*) AS n FROM ledger_entries "
                            "WHERE kind = 'charge' AND id > $1 GROUP BY meter_id", after_id)
    return Counter({r["meter_id"]: r["n"] for r in rows})


@pytest.fixture
def pg_url(pg_cluster: Any) -> str:
    return str(pg_cluster.create_database())


async def test_two_gateway_processes_share_one_ledger(pg_url: str, tmp_path: Path) -> None:
    accounts = {f"M-{n}-{i}": f"A-{i}" for n in (1, 2) for i in range(ACCOUNTS)} | {SHARED: "A-0"}
    meters = set(accounts)
    sim_ports, api_ports = {n: free_port() for n in (0, 1, 2)}, {n: free_port() for n in (1, 2)}
    configs = {n: write_config(tmp_path, n, db_url=pg_url, api_port=api_ports[n], sim_port=sim_ports[n],
                               shared_port=sim_ports[0], reading_history_s=0 if n == 1 else 1.0)
               for n in (1, 2)}
    instances = {n: Instance(n, configs[n], api_ports[n], tmp_path / f"gateway-{n}.log") for n in (1, 2)}
    billing = Billing()
    model = load_model(DEFAULT_MODEL_PATH)
    exits: dict[int, int | None] = {}
    db = await asyncpg.connect(pg_url)
    try:
        async with ModbusFleet(model, meters=1, host="127.0.0.1", port=sim_ports[0], seed=0) as shared, \
                ModbusFleet(model, meters=ACCOUNTS, host="127.0.0.1", port=sim_ports[1], seed=1) as fleet1, \
                ModbusFleet(model, meters=ACCOUNTS, host="127.0.0.1", port=sim_ports[2], seed=2) as fleet2:
            sims = {f"M-{n}-{unit - 1}": meter for n, fleet in ((1, fleet1), (2, fleet2))
                    for unit, meter in fleet.meters.items()} | {SHARED: shared.meters[1]}
            for k, meter in enumerate(sims.values()):
                meter.set_power_w(36_000 * (1 + k % 4))  # 10 Wh (10 fen) per second per 36 kW: ever rising
            try:
                # at the same moment (see the module's docstring)
                await asyncio.gather(instances[1].start(), instances[2].start())

                # both instances bill their meters before the payments start
                async def all_billed(after_id: int = 0) -> bool:
                    return set(await charges_per_meter(db, after_id)) == meters

                await async_wait_until(all_billed, timeout=20, interval=0.1,
                                       what="a charge from every meter of both instances")

                # payments through both APIs (and the same ids through both) while both keep billing
                await asyncio.wait_for(asyncio.gather(
                    billing.pay_through(instances[1]), billing.pay_through(instances[2]),
                    billing.pay_twice(instances[1], instances[2], "D")), timeout=60)
                # and the same ids through both with no other payment going on (batches of one payment)
                await asyncio.wait_for(billing.pay_twice(instances[1], instances[2], "Q"), timeout=30)

                # both still bill after the load: a charge from every meter after the last payment
                last = await db.fetchval("SELECT max(id) FROM ledger_entries")
                await async_wait_until(lambda: all_billed(last), timeout=20, interval=0.1,
                                       what="a charge from every meter after the payments")
            finally:
                stopped = await asyncio.gather(*[i.stop() for i in instances.values()])
                exits = dict(zip(instances, stopped, strict=True))
            final_energy = {meter_id: meter.energy_wh for meter_id, meter in sims.items()}

        logs = {n: i.log.read_text(errors="replace") for n, i in instances.items()}
        for n, code in exits.items():
            assert code == 0, f"gateway {n} exited with {code}:\n{logs[n][-6000:]}"
        for n, log in logs.items():
            bad = [line for line in log.splitlines()
                   if any(word in line for word in (" ERROR ", " CRITICAL ", "Traceback", "unexpected"))]
            assert not bad, f"gateway {n} logged errors:\n" + "\n".join(bad[:20]) + f"\n...\n{log[-6000:]}"

        # every request answered 2xx; unique ids 201 (a new payment), ids posted to both once 201 and once 200
        assert not billing.failures, (f"{len(billing.failures)} requests failed:\n"
                                      + "\n".join(billing.failures[:30]))
        for payment_id, answers in billing.twice.items():
            assert sorted(status for _, status, _ in answers) == [200, 201], (payment_id, answers)
            first, again = answers[0][2], answers[1][2]
            assert first == again, f"{payment_id}: the two instances answer different records: {answers}"

        # the real CLI's ledger check against the same database
        verify = subprocess.run([*_cli(), "ledger", "verify", "--config", str(configs[1])], cwd=ROOT,
                                capture_output=True, text=True, timeout=60, check=False)
        assert verify.returncode == 0, verify.stdout + verify.stderr
        assert "ledger consistent" in verify.stdout, verify.stdout

        # every accepted payment exactly once in the payments table, with the amount and account posted ...
        assert len(billing.accepted) == 2 * PAYMENTS + 2 * TWICE
        rows = await db.fetch("SELECT source, payment_id, account_id, amount_fen FROM payments")
        stored = Counter((r["source"], r["payment_id"]) for r in rows)
        assert [k for k, c in stored.items() if c != 1] == []
        assert {r["payment_id"]: (r["account_id"], r["amount_fen"]) for r in rows} == billing.accepted
        # ... and credited by exactly one ledger entry
        credits = await db.fetch("SELECT payment_source, payment_id, account_id, amount_fen "
                                 "FROM ledger_entries WHERE kind = 'payment'")
        counted = Counter(r["payment_id"] for r in credits)
        assert {k: c for k, c in counted.items() if c != 1} == {}
        assert {r["payment_id"]: (r["account_id"], r["amount_fen"]) for r in credits} == billing.accepted
        assert {r["payment_source"] for r in credits} == {"billing"}

        # the ledger holds only the openings, the payments and the charges
        kinds = {r["kind"]: r["n"] for r in await db.fetch(
            "SELECT kind, count(*) AS n FROM ledger_entries GROUP BY kind")}
        assert set(kinds) == {"opening", "payment", "charge"}, kinds
        assert kinds["opening"] == ACCOUNTS

        # each balance = opening + what the client paid - the charges = the sum of its ledger
        paid: dict[str, int] = defaultdict(int)
        for account, fen in billing.accepted.values():
            paid[account] += fen
        charged = {r["account_id"]: r["fen"] for r in await db.fetch(
            "SELECT account_id, sum(amount_fen) AS fen FROM ledger_entries WHERE kind = 'charge' "
            "GROUP BY account_id")}
        ledger_sum = {r["account_id"]: r["fen"] for r in await db.fetch(
            "SELECT account_id, sum(amount_fen) AS fen FROM ledger_entries GROUP BY account_id")}
        balances = {r["id"]: r["balance_fen"] for r in await db.fetch("SELECT id, balance_fen FROM accounts")}
        assert set(balances) == {f"A-{i}" for i in range(ACCOUNTS)}
        for account, balance in balances.items():
            assert charged[account] < 0
            assert balance == OPENING_FEN + paid[account] + charged[account] == ledger_sum[account], account

        # both instances' readings were billed: every meter of both has charges, each Wh once (1 fen per Wh),
        # in the order read, and everything read was billed (a reading of the shared meter that reaches the ledger
        # after the other instance's newer one is late: stored unbilled, it bills nothing; none is quarantined)
        charges = await db.fetch("SELECT meter_id, account_id, amount_fen, energy_wh, reading_wh "
                                 "FROM ledger_entries WHERE kind = 'charge' ORDER BY id")
        by_meter: dict[str, list[asyncpg.Record]] = defaultdict(list)
        for row in charges:
            by_meter[row["meter_id"]].append(row)
        assert set(by_meter) == meters
        # the first reading of a meter (its baseline) is always stored
        read = {r["meter_id"]: (r["low"], r["high"]) for r in await db.fetch(
            "SELECT meter_id, min(energy_wh) AS low, max(energy_wh) AS high FROM readings GROUP BY meter_id")}
        quarantined = await db.fetch("SELECT payload FROM outbox WHERE payload::text LIKE '%ReadingQuarantined%'")
        assert quarantined == []
        for meter_id, rows_ in by_meter.items():
            assert {r["account_id"] for r in rows_} == {accounts[meter_id]}, meter_id
            assert all(r["amount_fen"] == -r["energy_wh"] < 0 for r in rows_), meter_id
            marks = [r["reading_wh"] for r in rows_]
            assert marks == sorted(set(marks)), f"{meter_id}: a reading billed twice or out of order"
            low, high = read[meter_id]
            assert sum(r["energy_wh"] for r in rows_) == marks[-1] - low, f"{meter_id}: energy lost or twice"
            assert marks[-1] == high, f"{meter_id}: read up to {high} Wh, billed up to {marks[-1]} Wh"
            assert high <= final_energy[meter_id]
    finally:
        await db.close()
        for instance in instances.values():  # shown when the test fails
            print(f"--- gateway {instance.n}'s log (end) ---\n{instance.tail()}")
        for instance in instances.values():  # a failure before the stop: don't leave processes behind
            if instance.proc is not None and instance.proc.poll() is None:
                instance.proc.kill()
                instance.proc.wait(timeout=10)
