"""Bad input and hostile clients against running gateways.

- An account whose stored state can't be read (an old database let a year-10000 time in) raises one alarm and
  answers 409; the other meters on its bus are still polled and billed, payments to other accounts still work.
- `meter-gateway run` as a process: TLS from the settings, a warning when it listens beyond loopback in clear
  text, database files readable by the owner only, a 50 MB body refused before it is sent, idle and slow
  connections closed.
"""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from drivers.modbus import load_model
from gateway.bootstrap import default_models_dir
from gateway.settings import Settings, hash_key
from simulators.modbus import ModbusFleet
from tests.e2e.gateway_process import running_gateway
from tests.support import async_wait_until, free_port, require_tool, wait_for_port, wait_until

ROOT = Path(__file__).resolve().parents[2]
KEY = "hardening-admin-key"
BEARER = {"Authorization": f"Bearer {KEY}"}


def _settings(tmp_path: Path, api_port: int, sim_port: int) -> Settings:
    return Settings.model_validate({
        "database": {"url": f"sqlite:///{tmp_path / 'gw.db'}"},
        "api": {"port": api_port, "keys": [{"name": "admin", "role": "admin", "sha256": hash_key(KEY)}]},
        "policy": {"notice_period": 0, "stale_after": "30s"},
        "engine": {"reading_history_s": 0},  # every poll billed and stored
        "tariffs": {"flat": {"kind": "flat", "price": "1.0000"}},
        "accounts": [{"id": "A-1", "tariff": "flat", "opening_balance": "100.00"},
                     {"id": "A-2", "tariff": "flat", "opening_balance": "100.00"}],
        "buses": [{"id": "feeder", "protocol": "modbus-tcp", "host": "127.0.0.1", "port": sim_port,
                   "timeout_s": 0.5}],
        "meters": [{"id": f"M-{i}", "bus": "feeder", "unit_id": i, "account": f"A-{i}", "poll_interval_s": 0.25,
                    "max_power_w": 2_000_000} for i in (1, 2)],
    })


def _poison(db: Path, account_id: str) -> None:
    """Write what an older version let in: a hold until 9999-12-31T23:59:59-14:00 (beyond year 9999 in UTC)."""
    with sqlite3.connect(db) as conn:
        state = json.loads(conn.execute("SELECT state FROM accounts WHERE id = ?", (account_id,)).fetchone()[0])
        state["hold_until"] = "9999-12-31T23:59:59-14:00"
        conn.execute("UPDATE accounts SET state = ?, version = version + 1 WHERE id = ?",
                     (json.dumps(state), account_id))


def _alarms(db: Path) -> list[dict[str, object]]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT payload FROM outbox WHERE topic = 'alarms'").fetchall()
    return [p for p in (json.loads(r[0]) for r in rows) if p["type"] == "AccountUnreadable"]


async def test_an_unreadable_account_raises_one_alarm_and_stops_nothing_else(tmp_path: Path) -> None:
    sim_port, api_port = free_port(), free_port()
    settings = _settings(tmp_path, api_port, sim_port)
    model = load_model(default_models_dir() / "generic-prepaid.yaml")
    async with ModbusFleet(model, meters=2, host="127.0.0.1", port=sim_port, seed=3) as fleet:
        for meter in fleet.meters.values():
            meter.set_power_w(360_000)  # 100 Wh a second
        async with running_gateway(settings, tmp_path):  # first start: the rows exist
            pass
        _poison(tmp_path / "gw.db", "A-1")
        async with running_gateway(settings, tmp_path) as gateway:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", timeout=5) as client:
                async def billed() -> bool:
                    ledger = (await client.get("/v1/accounts/A-2/ledger", headers=BEARER)).json()["data"]
                    return sum(e["kind"] == "charge" for e in ledger) >= 3

                await async_wait_until(billed, timeout=20, what="the healthy account's meter to be billed")
                poisoned = await client.get("/v1/accounts/A-1", headers=BEARER)
                assert poisoned.status_code == 409, poisoned.text
                assert poisoned.json()["type"].endswith(":account-state-unreadable")
                payment = {"source": "billing", "payment_id": "P-1", "account_id": "A-1", "amount": "5.00"}
                refused = await client.post("/v1/payments", json=payment, headers=BEARER)
                assert refused.status_code == 409, refused.text
                fine = await client.post("/v1/payments", json={**payment, "account_id": "A-2"}, headers=BEARER)
                assert fine.status_code == 201, fine.text
                assert (await client.get("/v1/meters/M-1", headers=BEARER)).status_code == 200
                assert gateway.scheduler is not None
            polls = gateway.scheduler.stats()
        assert fleet.meters[1].relay_closed and fleet.meters[2].relay_closed
    alarms = _alarms(tmp_path / "gw.db")
    assert [a["account_id"] for a in alarms] == ["A-1"], alarms  # one alarm, however many polls failed
    assert polls  # the bus kept running
    with sqlite3.connect(tmp_path / "gw.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM payments WHERE account_id = 'A-1'").fetchone()[0] == 0


# --- the process -------------------------------------------------------------------------------------------------
def _run(tmp_path: Path, api: dict[str, object], log: Path) -> tuple[subprocess.Popen[bytes], Path]:
    config = {"database": {"url": "sqlite:///data/gateway.db"},
              "api": {"keys": [{"name": "admin", "role": "admin", "sha256": hash_key(KEY)}], **api},
              "tariffs": {"flat": {"kind": "flat", "price": "0.5600"}},
              "accounts": [{"id": "A-1", "tariff": "flat", "opening_balance": "10.00"}]}
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "run", "--config", str(path)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=log.open("wb"))
    return proc, path


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the gateway did not stop on SIGTERM")


def test_tls_from_the_settings(tmp_path: Path) -> None:
    openssl = require_tool("openssl")
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(tmp_path / "key.pem"),
                    "-out", str(tmp_path / "cert.pem")], check=True, capture_output=True)
    port = free_port()
    proc, _ = _run(tmp_path, {"port": port, "tls_certfile": "cert.pem", "tls_keyfile": "key.pem"},
                   tmp_path / "log")
    try:
        wait_for_port(port, timeout=30)
        trust = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
        response = httpx.get(f"https://127.0.0.1:{port}/v1/accounts/A-1", headers=BEARER, verify=trust)
        assert response.status_code == 200 and response.json()["balance"] == "10.00"
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=3)
    finally:
        _stop(proc)
    assert "without TLS" not in (tmp_path / "log").read_text()


def test_clear_text_beyond_loopback_is_warned_about_and_the_files_are_private(tmp_path: Path) -> None:
    port = free_port()
    proc, _ = _run(tmp_path, {"host": "0.0.0.0", "port": port}, tmp_path / "log")
    try:
        wait_for_port(port, timeout=30)
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
        wait_until(lambda: "without TLS" in (tmp_path / "log").read_text(), timeout=5, what="the warning")
        for name in ("gateway.db", "gateway.db-wal", "gateway.db-shm"):
            mode = (tmp_path / "data" / name).stat().st_mode & 0o777
            assert mode == 0o600, f"{name}: {oct(mode)}"
    finally:
        _stop(proc)


def test_oversized_idle_and_slow_clients(tmp_path: Path) -> None:
    port = free_port()
    proc, _ = _run(tmp_path, {"port": port, "request_timeout_s": 1.0, "max_body_bytes": 65_536}, tmp_path / "log")
    try:
        wait_for_port(port, timeout=30)
        # a 50 MB body is refused from its head, before a byte of it is sent (and before the key is checked)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"POST /v1/payments HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 52428800\r\n\r\n")
            answer = b""
            while chunk := sock.recv(4096):  # the answer says Connection: close: read it to the end
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 413"), answer
            assert b"content-too-large" in answer
        # an idle connection and a slow one are closed after about request_timeout_s
        for trickle in (False, True):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                opened, closed = time.monotonic(), False
                for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\n" * 5:
                    if trickle:
                        try:
                            sock.sendall(bytes([byte]))
                        except OSError:
                            closed = True
                            break
                    sock.settimeout(0.2)
                    try:
                        if sock.recv(4096) == b"":
                            closed = True
                            break
                    except TimeoutError:
                        pass
                    except OSError:
                        closed = True
                        break
                    if time.monotonic() - opened > 8:
                        break
                assert closed, "the server kept an idle or slow connection open"
                assert time.monotonic() - opened >= 0.8
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200  # and serves the others
    finally:
        _stop(proc)
