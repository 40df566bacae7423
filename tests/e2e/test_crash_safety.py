"""Crash safety: a gateway taking payments (from clients that retry with the same ids) and readings is killed
with SIGKILL at random moments, several times. After each restart every acknowledged payment is present exactly
once and the ledger invariant holds."""

from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from gateway.settings import hash_key
from tests.support import free_port, wait_for_port, wait_until

ROOT = Path(__file__).resolve().parents[2]
KEY = "crash-billing-key"
METERS = 4
CLIENTS = 6
ROUNDS = 4


def write_config(tmp: Path, api_port: int, sim_port: int) -> Path:
    config = {
        "database": {"url": "sqlite:///gw.db"},
        "api": {"host": "127.0.0.1", "port": api_port, "keys": [{"name": "billing", "role": "billing",
                                                                  "sha256": hash_key(KEY)}]},
        "tariffs": {"flat": {"kind": "flat", "price": "0.5600"}},
        "accounts": [{"id": f"A-{i}", "tariff": "flat", "opening_balance": "100.00"} for i in range(1, METERS + 1)],
        "buses": [{"id": "sim", "protocol": "modbus-tcp", "host": "127.0.0.1", "port": sim_port, "timeout_s": 0.5}],
        "meters": [{"id": f"M-{i}", "bus": "sim", "unit_id": i, "account": f"A-{i}", "poll_interval_s": 0.1,
                    "max_power_w": 10_000_000} for i in range(1, METERS + 1)],
    }
    path = tmp / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


class Client(threading.Thread):
    """Pays payment after payment; retries the same id (same content) until it gets a 2xx."""

    def __init__(self, n: int, base: str, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.n, self.base, self.stop_event = n, base, stop
        self.next = 0
        self.acked: dict[str, tuple[str, int]] = {}

    def payment(self) -> dict[str, str]:
        account = f"A-{1 + self.next % METERS}"
        return {"source": f"client{self.n}", "payment_id": f"P-{self.next}", "account_id": account,
                "amount": f"{1 + self.next % 7}.{self.n:02d}"}

    def run(self) -> None:
        with httpx.Client(base_url=self.base, timeout=5, headers={"Authorization": f"Bearer {KEY}"}) as http:
            while not self.stop_event.is_set():
                body = self.payment()
                try:
                    response = http.post("/v1/payments", json=body)
                except httpx.HTTPError:
                    continue  # the gateway is down: retry the same payment
                assert response.status_code in (200, 201), response.text
                fen = int(body["amount"].replace(".", ""))
                self.acked[f"{body['source']}/{body['payment_id']}"] = (body["account_id"], fen)
                self.next += 1


def test_sigkill_loses_no_acknowledged_payment_and_counts_none_twice(tmp_path: Path) -> None:
    api_port, sim_port = free_port(), free_port()
    config = write_config(tmp_path, api_port, sim_port)
    sim = subprocess.Popen([sys.executable, "-m", "gateway.cli", "simulate", "modbus", "--meters", str(METERS),
                            "--port", str(sim_port), "--speed", "600"], cwd=ROOT, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    rng = random.Random(20261123)
    stop = threading.Event()
    clients = [Client(n, f"http://127.0.0.1:{api_port}", stop) for n in range(CLIENTS)]
    try:
        wait_for_port(sim_port)
        for client in clients:
            client.start()
        for round_ in range(ROUNDS + 1):
            gateway = subprocess.Popen([sys.executable, "-m", "gateway.cli", "run", "--config", str(config)],
                                       cwd=ROOT, stdout=subprocess.DEVNULL, stderr=(tmp_path / "gw.log").open("ab"))
            wait_for_port(api_port, timeout=60)
            acked_before = sum(len(c.acked) for c in clients)
            wait_until(lambda: sum(len(c.acked) for c in clients) > acked_before + 20, timeout=30,
                       what="payments to be acknowledged")
            time.sleep(rng.uniform(0.0, 0.5))  # a random moment to kill it, not a synchronisation
            if round_ < ROUNDS:
                gateway.send_signal(signal.SIGKILL)
                gateway.wait(timeout=10)
                check(tmp_path / "gw.db", clients)
            else:
                stop.set()
                for client in clients:
                    client.join(timeout=10)
                gateway.send_signal(signal.SIGTERM)
                assert gateway.wait(timeout=30) == 0
    finally:
        stop.set()
        sim.terminate()
        sim.wait(timeout=10)
    acked, readings = check(tmp_path / "gw.db", clients)
    assert acked > 100 and readings > 0
    result = subprocess.run([sys.executable, "-m", "gateway.cli", "ledger", "verify", "--config", str(config)],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "ledger consistent" in result.stdout


def check(db: Path, clients: list[Client]) -> tuple[int, int]:
    """Every acknowledged payment is there exactly once; balances equal the sum of their entries."""
    conn = sqlite3.connect(db)
    try:
        payments = {f"{s}/{p}": (a, fen) for s, p, a, fen in
                    conn.execute("select source, payment_id, account_id, amount_fen from payments")}
        credits: dict[str, int] = {}
        for (reference,) in conn.execute("select reference from ledger_entries where kind = 'payment'"):
            credits[reference] = credits.get(reference, 0) + 1
        acked = {k: v for c in clients for k, v in list(c.acked.items())}
        for key, value in acked.items():
            assert payments.get(key) == value, f"acknowledged payment {key} is missing or different"
            assert credits.get(key) == 1, f"payment {key} credited {credits.get(key, 0)} times"
        assert all(n == 1 for n in credits.values())
        for account, balance, total in conn.execute(
                "select a.id, a.balance_fen, (select sum(amount_fen) from ledger_entries l where l.account_id = a.id)"
                " from accounts a"):
            assert balance == total, f"{account}: balance {balance} != sum of entries {total}"
        readings = conn.execute("select count(*) from readings").fetchone()[0]
        return len(acked), readings
    finally:
        conn.close()


pytestmark = pytest.mark.slow
