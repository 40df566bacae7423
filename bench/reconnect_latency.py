"""Payment-to-reconnect latency: from `POST /v1/payments` for a disconnected account to the simulated meter's
relay closing, over N payments, while M meters are being polled; next to the same figure with no polling load
(baseline), in the same run.

The simulated fleet runs in this process (on uvloop) so that the moment its relay closes is seen directly; the
gateway runs as a separate process (`meter-gateway run`), as in production.

Usage: python bench/reconnect_latency.py [--meters 1000] [--payments 200] [--poll-interval 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from drivers.modbus import load_model  # noqa: E402
from gateway.bootstrap import default_models_dir  # noqa: E402
from gateway.settings import hash_key  # noqa: E402
from simulators.meter import SimClock  # noqa: E402
from simulators.modbus import ModbusFleet  # noqa: E402
from tests.support import free_port  # noqa: E402

BILLING = "bench-billing-key"
PER_PORT = 200


def config(tmp: Path, *, meters: int, sim_ports: list[int], api_port: int, poll_interval: float) -> Path:
    buses = [{"id": f"feeder-{i}", "protocol": "modbus-tcp", "host": "127.0.0.1", "port": p, "timeout_s": 1.0}
             for i, p in enumerate(sim_ports)]
    data = {
        "database": {"url": "sqlite:///gw.db"},
        "api": {"port": api_port, "keys": [{"name": "billing", "role": "billing", "sha256": hash_key(BILLING)}]},
        "engine": {"command_expiry_s": 60, "confirm_interval_s": 0.05},
        "policy": {"notice_period": 0, "stale_after": "1h", "max_auto_disconnects_per_minute": None},
        "tariffs": {"flat": {"kind": "flat", "price": "0.5000"}},
        # every account starts below its disconnect point: the first reading disconnects it
        "accounts": [{"id": f"A-{i}", "tariff": "flat", "opening_balance": "-1.00", "reconnect_min_topup": "1.00"}
                     for i in range(meters)],
        "buses": buses,
        "meters": [{"id": f"M-{i}", "bus": f"feeder-{i // PER_PORT}", "unit_id": 1 + i % PER_PORT,
                    "account": f"A-{i}", "poll_interval_s": poll_interval, "max_power_w": 1_000_000}
                   for i in range(meters)],
    }
    path = tmp / f"gateway-{poll_interval}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def active_commands(db: Path) -> int:
    """Commands not yet confirmed (so that the measured run does not start with leftovers to recover)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return int(conn.execute("select count(*) from commands where state in ('queued', 'sending', 'sent')")
                   .fetchone()[0])
    finally:
        conn.close()


def start_gateway(cfg: Path, tmp: Path) -> subprocess.Popen[bytes]:
    gateway = subprocess.Popen([sys.executable, "-m", "gateway.cli", "run", "--config", str(cfg), "--log-level",
                                "WARNING"], cwd=tmp, stderr=(tmp / "gw.log").open("ab"))
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{yaml.safe_load(cfg.read_text())['api']['port']}/healthz").is_success:
                return gateway
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or gateway.poll() is not None:
            raise RuntimeError(f"the gateway did not start: {(tmp / 'gw.log').read_text()}")
        time.sleep(0.1)


async def run_case(meters: int, payments: int, poll_interval: float, label: str) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        api_port = free_port()
        sim_ports = [free_port() for _ in range((meters + PER_PORT - 1) // PER_PORT)]
        model = load_model(default_models_dir() / "generic-prepaid.yaml")
        clock = SimClock(speed=1.0)
        fleets = [ModbusFleet(model, meters=min(PER_PORT, meters - n * PER_PORT), port=port, first_index=n * PER_PORT,
                              clock=clock) for n, port in enumerate(sim_ports)]
        closed_at: dict[int, float] = {}
        for n, fleet in enumerate(fleets):
            for unit_id, meter in fleet.meters.items():
                index = n * PER_PORT + unit_id - 1
                original = meter.set_relay

                def watch(closed: bool, *, _i: int = index, _orig=original) -> None:  # type: ignore[no-untyped-def]
                    _orig(closed)
                    if closed:
                        closed_at.setdefault(_i, time.perf_counter())

                meter.set_relay = watch  # type: ignore[method-assign]
            await fleet.start()
        # Preparation: every account (below its disconnect point) is disconnected at its first poll; the poll
        # interval keeps that at about 100 polls/s, within what the buses answer.
        prep = config(tmp, meters=meters, sim_ports=sim_ports, api_port=api_port, poll_interval=max(1.0, meters / 100))
        gateway = start_gateway(prep, tmp)
        try:
            all_meters = [m for f in fleets for m in f.meters.values()]
            deadline = time.monotonic() + 300
            while any(m.relay_closed for m in all_meters) or active_commands(tmp / "gw.db"):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"meters were not disconnected within 300 s: {(tmp / 'gw.log').read_text()}")
                await asyncio.sleep(0.2)
        finally:
            gateway.terminate()
            gateway.wait(timeout=30)
        # Measurement: the same database, restarted with the case's poll interval (3600 s: no polling load).
        cfg = config(tmp, meters=meters, sim_ports=sim_ports, api_port=api_port, poll_interval=poll_interval)
        gateway = start_gateway(cfg, tmp)
        try:
            closed_at.clear()
            latencies = []
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", timeout=10,
                                         headers={"Authorization": f"Bearer {BILLING}"}) as http:
                for i in range(payments):
                    index = (i * 7919) % meters  # spread over buses and unit ids
                    start = time.perf_counter()
                    response = await http.post("/v1/payments", json={"source": "bench", "payment_id": f"P-{i}",
                                                                     "account_id": f"A-{index}", "amount": "20.00"})
                    response.raise_for_status()
                    while index not in closed_at:
                        if time.perf_counter() - start > 30:
                            raise RuntimeError(f"meter {index} did not close within 30 s")
                        await asyncio.sleep(0.001)
                    latencies.append(closed_at[index] - start)
            print(f"{label}: {payments} payments, {meters} meters, poll interval {poll_interval}s "
                  f"(~{meters / poll_interval:,.0f} polls/s asked)", flush=True)
            return latencies
        finally:
            gateway.terminate()
            gateway.wait(timeout=30)
            for fleet in fleets:
                await fleet.stop()


def summary(latencies: list[float]) -> tuple[float, float]:
    ordered = sorted(latencies)
    p50 = statistics.median(ordered)
    p99 = ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]
    return p50 * 1000, p99 * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--meters", type=int, default=1000)
    parser.add_argument("--payments", type=int, default=200)
    parser.add_argument("--poll-interval", type=float, default=2.0)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    idle = asyncio.run(run_case(args.meters, args.payments, 3600.0, "baseline (no polling load)"))
    idle_p50, idle_p99 = summary(idle)
    print(f"baseline: p50 {idle_p50:.1f} ms, p99 {idle_p99:.1f} ms, max {max(idle) * 1000:.1f} ms")
    busy = asyncio.run(run_case(args.meters, args.payments, args.poll_interval, "under polling load"))
    busy_p50, busy_p99 = summary(busy)
    print(f"under load: p50 {busy_p50:.1f} ms, p99 {busy_p99:.1f} ms, max {max(busy) * 1000:.1f} ms")
    print(f"ratio p99 under load / baseline: {busy_p99 / idle_p99:.2f}  (target: p99 under load < 1000 ms)")
    print(f"cpu (this process, incl. simulator): {resource.getrusage(resource.RUSAGE_SELF).ru_utime:.1f} s user; "
          f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
