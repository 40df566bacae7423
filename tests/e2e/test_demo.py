"""`meter-gateway demo` as a user starts it: it comes up, prints where to look and the keys, takes a payment,
stops cleanly on SIGTERM, and a second start reuses the same database."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support import free_port, require_tool, wait_for_port, wait_until

ROOT = Path(__file__).resolve().parents[2]


def start_demo(data_dir: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "gateway.cli", "demo", "--port", str(port), "--data-dir",
                             str(data_dir), "--meters", "3"], cwd=ROOT, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the demo did not stop within 20 s of SIGTERM")


def keys(data_dir: Path) -> dict[str, str]:
    return dict(line.split() for line in (data_dir / "keys.txt").read_text().splitlines())


def test_demo_starts_takes_a_payment_stops_and_resumes(tmp_path: Path) -> None:
    data_dir, port = tmp_path / "demo", free_port()
    proc = start_demo(data_dir, port, tmp_path / "first.log")
    try:
        wait_for_port(port, timeout=60)
        wait_until(lambda: "demo API keys" in (tmp_path / "first.log").read_text(), timeout=10, what="the banner")
        k = keys(data_dir)
        banner = (tmp_path / "first.log").read_text()
        assert f"http://127.0.0.1:{port}" in banner and k["billing"] in banner
        assert oct((data_dir / "keys.txt").stat().st_mode & 0o777) == "0o600"
        base = f"http://127.0.0.1:{port}"
        payment = {"source": "billing", "payment_id": "P-1", "account_id": "A-3", "amount": "5.00"}
        response = httpx.post(f"{base}/v1/payments", json=payment, headers={"Authorization": f"Bearer {k['billing']}"})
        assert response.status_code == 201, response.text
        meter = lambda: httpx.get(f"{base}/v1/meters/M-3", headers={"Authorization": f"Bearer {k['viewer']}"}).json()
        wait_until(lambda: meter()["last_reading"] is not None, timeout=20, what="a first reading")
        # its events go out to the demo's broker: the line the banner prints, for the payment's balance
        require_tool("mosquitto")
        command = next(line for line in banner.splitlines() if "mosquitto_sub" in line).split("events:")[1].split()
        received = subprocess.run([require_tool("mosquitto_sub"), *command[1:5], "-t", "meter-gateway/accounts/A-3/balance", "-C", "1", "-W", "20"],
                                  capture_output=True, text=True, timeout=30)
        assert '"payment_id":"P-1"' in received.stdout, (received.stdout, received.stderr)
    finally:
        code = stop(proc)
    assert code == 0
    assert "gateway stopped" in (tmp_path / "first.log").read_text()
    assert (data_dir / "gateway.db").exists() and (data_dir / "gateway.yaml").exists()

    proc = start_demo(data_dir, port, tmp_path / "second.log")
    try:
        wait_for_port(port, timeout=60)
        again = httpx.post(f"http://127.0.0.1:{port}/v1/payments", json=payment,
                           headers={"Authorization": f"Bearer {k['billing']}"})
        assert again.status_code == 200  # the same database: the payment is already there
        assert again.json() == response.json()
    finally:
        assert stop(proc) == 0


def test_generated_config_passes_check_config(tmp_path: Path) -> None:
    from gateway.demo import write_demo_files

    write_demo_files(tmp_path, port=8080, meters=4)
    result = subprocess.run([sys.executable, "-m", "gateway.cli", "check-config", str(tmp_path / "gateway.yaml")],
                            cwd=ROOT, capture_output=True, text=True, env={**os.environ}, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "4 accounts, 4 meters" in result.stdout
