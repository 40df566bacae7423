"""Fuzzing the running gateway against its own API document with schemathesis (every check, at least 100
examples per operation, with an admin key): no 5xx, no answer outside its documented schema, no undocumented
status code, no accepted invalid input and no refused valid input. Then the ledger is still consistent.

The gateway runs as a real process (``meter-gateway run``) polling simulated Modbus meters (another process),
so requests meet a ledger and relays that are moving.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gateway.settings import hash_key
from tests.support import free_port, stop_process, wait_for_port

ROOT = Path(__file__).resolve().parents[2]
ADMIN = "fuzz-admin-key"
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "100"))

# slow: a run takes ~50 s on 2 CPUs (more under load), twice when the fuzzer itself fails (below)
pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]


def _config(tmp_path: Path, api_port: int, sim_port: int) -> Path:
    config = {
        "database": {"url": "sqlite:///gateway.db"},
        "api": {"host": "127.0.0.1", "port": api_port, "max_payment": "5000.00",
                "keys": [{"name": "fuzzer", "role": "admin", "sha256": hash_key(ADMIN)}],
                # the fuzzer sends requests without a key on purpose (ignored_auth): don't lock it out
                "failed_auth_limit": 1_000_000},
        "engine": {"command_expiry_s": 30},
        "policy": {"notice_period": 0, "friendly_windows": []},
        "tariffs": {"flat": {"kind": "flat", "price": "0.5600"}},
        "accounts": [{"id": "A-1", "tariff": "flat", "opening_balance": "10.00"},
                     {"id": "A-2", "tariff": "flat", "opening_balance": "0.50", "protected": True},
                     {"id": "A-3", "tariff": "flat", "opening_balance": "100.00", "credit_class": "B"}],
        "buses": [{"id": "feeder-1", "protocol": "modbus-tcp", "host": "127.0.0.1", "port": sim_port,
                   "timeout_s": 0.5}],
        "meters": [{"id": f"M-{i}", "bus": "feeder-1", "unit_id": i, "account": f"A-{i}", "poll_interval_s": 1,
                    "groups": ["street-1"], "max_power_w": 100_000} for i in (1, 2, 3)],
    }
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_schemathesis_finds_nothing(tmp_path: Path) -> None:
    api_port, sim_port = free_port(), free_port()
    config = _config(tmp_path, api_port, sim_port)
    cli = [sys.executable, "-m", "gateway.cli"]
    sim = subprocess.Popen([*cli, "simulate", "modbus", "--meters", "3", "--port", str(sim_port), "--speed", "60"],
                           cwd=ROOT, stdout=subprocess.DEVNULL, stderr=(tmp_path / "sim.log").open("wb"))
    gateway = subprocess.Popen([*cli, "run", "--config", str(config), "--log-level", "WARNING"], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=(tmp_path / "gateway.log").open("wb"))
    try:
        wait_for_port(sim_port, timeout=30)
        wait_for_port(api_port, timeout=60)
        base = f"http://127.0.0.1:{api_port}"
        for _ in range(2):
            run = subprocess.run(
                [str(Path(sys.executable).with_name("schemathesis")), "--no-color", "run", f"{base}/openapi.json",
                 "--checks", "all", "--max-examples", str(EXAMPLES), "--header", f"Authorization: Bearer {ADMIN}",
                 "--request-timeout", "10", "--workers", "1", "--output-sanitize", "true",
                 "--suppress-health-check", "too_slow"],
                cwd=tmp_path, capture_output=True, text=True, timeout=1200, check=False)
            report = run.stdout[-20_000:] + run.stderr[-5_000:]
            # CPython 3.11's ast module can fail spuriously in the fuzzer's own code (cpython#106905: hypothesis
            # parses the source of schemathesis's lambdas to name them); that is no finding about the API: once more
            if run.returncode == 0 or "AST constructor recursion depth mismatch" not in run.stdout + run.stderr:
                break
        assert run.returncode == 0, f"schemathesis found problems:\n{report}"
        assert gateway.poll() is None, "the gateway died under fuzzing"
    finally:
        stop_process(gateway)
        stop_process(sim)
    log = (tmp_path / "gateway.log").read_text()
    assert "unexpected error" not in log, log[-5_000:]
    verify = subprocess.run([*cli, "ledger", "verify", "--config", str(config)], cwd=ROOT, capture_output=True,
                            text=True, timeout=60, check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr
