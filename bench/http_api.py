"""The HTTP API under load: a real load generator (wrk, in C) at 50 connections against the running gateway (a
`meter-gateway run` process polling a simulated Modbus fleet in another process), each figure printed next to
`/healthz` measured the same way in the same run.

A Python client on the same two cores would measure itself, not the server (docs/benchmarks.md): wrk it is
(`apt-get install wrk`). Its Lua scripts make every request distinct: a random account or meter per read, a new
payment id per payment.

Targets (issue "The operations surface"): authenticated reads (an account, a meter) at least 0.7 of `/healthz`;
distinct durable payments at least 2,000/s with p99 < 100 ms.

Each figure is measured on three storage configurations, a gateway process of its own each: the shipped defaults
(SQLite, the portable write path, the direct reads of one account or meter: `database.sqlite_direct_reads`), all
portable (the direct reads off too), and the SQLite fast path (`database.sqlite_pipeline` on as well).

Usage: python bench/http_api.py [--accounts 1000] [--seconds 10] [--connections 50] [--only default|portable|fast]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.settings import hash_key  # noqa: E402
from tests.support import free_port, stop_process, wait_for_port  # noqa: E402

VIEWER, BILLING = "bench-viewer-key", "bench-billing-key"
PER_PORT = 200  # meters per simulated bus


STORAGES = {  # name: (what it is, database settings)
    "default": ("shipped defaults (portable writes, direct reads)", {}),
    "portable": ("all portable (sqlite_direct_reads: false)", {"sqlite_direct_reads": False}),
    "fast": ("SQLite fast path (sqlite_pipeline: true, direct reads)", {"sqlite_pipeline": True}),
}


def config(tmp: Path, *, accounts: int, sim_ports: list[int], api_port: int, storage: str = "default") -> Path:
    data = {
        "database": {"url": "sqlite:///gw.db", **STORAGES[storage][1]},
        "api": {"host": "127.0.0.1", "port": api_port, "max_payment": "100000.00",
                "keys": [{"name": "viewer", "role": "viewer", "sha256": hash_key(VIEWER)},
                         {"name": "billing", "role": "billing", "sha256": hash_key(BILLING)}]},
        "policy": {"notice_period": 0, "friendly_windows": []},
        "tariffs": {"flat": {"kind": "flat", "price": "0.5000"}},
        "accounts": [{"id": f"A-{i}", "tariff": "flat", "opening_balance": "100.00"} for i in range(accounts)],
        "buses": [{"id": f"feeder-{i}", "protocol": "modbus-tcp", "host": "127.0.0.1", "port": port, "timeout_s": 1.0}
                  for i, port in enumerate(sim_ports)],
        # the fleet is polled all along (every 10 s each): the API shares the gateway with its buses
        "meters": [{"id": f"M-{i}", "bus": f"feeder-{i // PER_PORT}", "unit_id": 1 + i % PER_PORT,
                    "account": f"A-{i}", "poll_interval_s": 10, "max_power_w": 1_000_000} for i in range(accounts)],
    }
    path = tmp / "gateway.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


READ = """
math.randomseed(os.time() + {seed})
request = function()
  local path = string.format("{path}", math.random(0, {count} - 1))
  return wrk.format("GET", path, {{["Authorization"] = "Bearer {key}"}})
end
"""

PAY = """
local thread_no = 0
local threads = {{}}
setup = function(thread)
  thread_no = thread_no + 1
  thread:set("tid", thread_no)
end
local n = 0
request = function()
  n = n + 1
  local account = math.random(0, {count} - 1)
  local body = string.format('{{"source": "bench", "payment_id": "P-%s-%d-%d", "account_id": "A-%d", '
    .. '"amount": "1.00", "paid_at": "2026-12-01T08:00:00Z", "channel": "bench"}}', "{run}", tid, n, account)
  return wrk.format("POST", "/v1/payments", {{["Authorization"] = "Bearer {key}",
                                              ["Content-Type"] = "application/json"}}, body)
end
"""


def wrk(url: str, seconds: int, connections: int, script: Path | None) -> dict[str, float]:
    """Run wrk; its requests/s, latency percentiles (ms) and the count of non-2xx answers."""
    cmd = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "5s"]
    if script is not None:
        cmd += ["-s", str(script)]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
    figures = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
               "bad": float(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0.0,
               "errors": sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))}
    for pct in ("50", "99"):
        value, unit = re.search(rf"\s{pct}%\s+([\d.]+)(us|ms|s)\b", out).groups()  # type: ignore[union-attr]
        figures[f"p{pct}"] = float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    return figures


def measure(args: argparse.Namespace, *, storage: str) -> list[tuple[str, dict[str, float]]]:
    """Start a simulated fleet and a gateway, drive wrk against it; the figures of each route."""
    buses = -(-args.accounts // PER_PORT)
    sim_ports, api_port = [free_port() for _ in range(buses)], free_port()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        cfg = config(tmp, accounts=args.accounts, sim_ports=sim_ports, api_port=api_port, storage=storage)
        cli = [sys.executable, "-m", "gateway.cli"]
        procs = [subprocess.Popen([*cli, "simulate", "modbus", "--meters", str(PER_PORT), "--port", str(port)],
                                  cwd=tmp, stdout=subprocess.DEVNULL, stderr=(tmp / f"sim{port}.log").open("wb"))
                 for port in sim_ports]
        gateway = subprocess.Popen([*cli, "run", "--config", str(cfg), "--log-level", "WARNING"], cwd=tmp,
                                   stdout=subprocess.DEVNULL, stderr=(tmp / "gateway.log").open("wb"))
        procs.append(gateway)
        try:
            for port in sim_ports:
                wait_for_port(port, timeout=30)
            wait_for_port(api_port, timeout=120)
            base = f"http://127.0.0.1:{api_port}"
            answer = httpx.get(f"{base}/v1/accounts/A-0", headers={"Authorization": f"Bearer {VIEWER}"})
            answer.raise_for_status()
            scripts = {
                "account": READ.format(seed=1, path="/v1/accounts/A-%d", count=args.accounts, key=VIEWER),
                "meter": READ.format(seed=2, path="/v1/meters/M-%d", count=args.accounts, key=VIEWER),
                "payment": PAY.format(count=args.accounts, key=BILLING, run=tmp.name[-6:]),
            }
            for label, text in scripts.items():
                (tmp / f"{label}.lua").write_text(textwrap.dedent(text))
            wrk(f"{base}/healthz", 2, args.connections, None)  # warm up
            rows = [("GET /healthz (baseline)", wrk(f"{base}/healthz", args.seconds, args.connections, None))]
            rows.append(("GET /v1/accounts/{id}", wrk(base, args.seconds, args.connections, tmp / "account.lua")))
            rows.append(("GET /v1/meters/{id}", wrk(base, args.seconds, args.connections, tmp / "meter.lua")))
            rows.append(("POST /v1/payments (distinct)",
                         wrk(base, args.seconds, args.connections, tmp / "payment.lua")))
            if gateway.poll() is not None:
                sys.exit("the gateway died under load: " + (tmp / "gateway.log").read_text()[-2000:])
        finally:
            for proc in procs:
                stop_process(proc)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accounts", type=int, default=1000, help="accounts, one polled meter each")
    parser.add_argument("--seconds", type=int, default=10, help="each wrk run")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--only", choices=tuple(STORAGES), help="measure one storage configuration only")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (apt-get install wrk)")
    print(f"wrk, {args.connections} connections, {args.seconds} s each; {args.accounts} accounts and meters, "
          "polled every 10 s")
    targets = {"GET /v1/accounts/{id}": "ratio >= 0.70", "GET /v1/meters/{id}": "ratio >= 0.70",
               "POST /v1/payments (distinct)": ">= 2000/s, p99 < 100 ms"}
    for storage, (what, _) in STORAGES.items():
        if args.only is not None and args.only != storage:
            continue
        rows = measure(args, storage=storage)
        healthz = rows[0][1]["rps"]
        print(f"\n{what}")
        print(f"{'':32} {'req/s':>8} {'ratio':>6} {'p50 ms':>7} {'p99 ms':>7} {'non-2xx':>8}  target")
        for label, fig in rows:
            print(f"{label:32} {fig['rps']:8.0f} {fig['rps'] / healthz:6.2f} {fig['p50']:7.1f} {fig['p99']:7.1f} "
                  f"{fig['bad'] + fig['errors']:8.0f}  {targets.get(label, '')}")


if __name__ == "__main__":
    main()
