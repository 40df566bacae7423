"""The gateway with a large fleet: import, start, first readings, memory, check-config (DESIGN.md §12).

A simulated Modbus fleet of ``--meters`` meters (default 100,000), one account per meter, polled every 60 s,
spread over Modbus TCP buses of 247 unit ids each (≈405 buses for 100,000 meters) on consecutive ports served by
``--sims`` simulator processes (bench/modbus_sim.py on uvloop; default one per 100 ports). Every gateway is a
process of its own, run as a utility would run it (``meter-gateway ...`` of this venv), SQLite in a temporary
directory. Each figure is printed with its target, ``OK`` or ``OVER``:

1. **import**: wall time of ``meter-gateway fleet import --config FILE --accounts accounts.csv --meters
   meters.csv`` into a fresh database (the file does not exist yet: migrations included); the process's peak
   RSS and CPU beside. Also, unless ``--no-api``, the same files through ``POST /v1/fleet/import`` (text/csv,
   accounts then meters) of a gateway started on another fresh database (its buses point at the same
   simulators; it is stopped as soon as the import is answered).
2. **start → /healthz**: ``meter-gateway run --config FILE`` on the imported database, spawn to the first 200
   of ``GET /healthz``.
3. **every meter read**: from the first 200 of /healthz until every meter's row says ``health = 'online'`` (the
   batch that stores a meter's first reading writes it: a meter's first reading is always stored); the database
   is read (read-only, WAL) every second. Polls/s = meters / that time. The schedule staggers the first polls
   over the poll interval, so the reference is the interval itself: OK up to 1.25 × interval.
4. **steady memory**: VmRSS of that gateway ``--settle`` s after every meter was read, minus the VmRSS of an
   empty gateway (same settings, an empty database: no accounts, no meters) measured at the start of the run,
   per meter. Absolute figures printed too. ``--extra-rounds N``: then N more poll intervals, the RSS and CPU
   printed after each (is it steady?).
5. **check-config** of config/gateway.example.yaml: median wall time of 5 runs.

The simulators' RSS and CPU are printed, to show that they are not the limit. Everything runs in a temporary
directory (``--keep``: kept, and printed); every process started is stopped at the end, also on failure or
SIGTERM/Ctrl-C.

Usage: python bench/fleet_scale.py [--meters 100000] [--interval 60] [--sims N] [--settle 10] [--extra-rounds N]
                                   [--no-api] [--keep] [--timeout S]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PER_PORT = 247  # Modbus unit ids 1..247: one bus per TCP port
GATEWAY = str(Path(sys.executable).with_name("meter-gateway"))
KEY = "bench-fleet-scale-provisioning-key"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


# --- processes ------------------------------------------------------------------------------------------------
def conditions() -> str:
    load = os.getloadavg()
    return f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def free_port_block(n: int, start: int = 20000) -> int:
    """A port P such that P .. P + n - 1 are free now."""
    base = start
    while base + n < 60000:
        for port in range(base, base + n):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    base = port + 1
                    break
        else:
            return base
    raise RuntimeError(f"no block of {n} free ports")


class Procs:
    """Every process this bench starts; ``stop_all`` ends them (SIGTERM, then SIGKILL), in reverse order."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, args: list[str], **kwargs: object) -> subprocess.Popen[str]:
        proc = subprocess.Popen(args, text=True, **kwargs)  # type: ignore[call-overload]
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[str], timeout: float = 30) -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                print(f"  (pid {proc.pid} did not stop within {timeout:g} s of SIGTERM: killed)")
                proc.kill()
                proc.wait()
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs)):
            with contextlib.suppress(Exception):
                self.stop(proc, timeout=15)


class Simulators:
    """``meters`` simulated meters on ports port.. (247 per port), over ``n`` processes of bench/modbus_sim.py."""

    def __init__(self, procs: Procs, *, meters: int, port: int, n: int) -> None:
        ports = -(-meters // PER_PORT)
        n = max(1, min(n, ports))
        self.procs: list[subprocess.Popen[str]] = []
        first = 0
        for i in range(n):
            nports = ports // n + (i < ports % n)
            count = min(nports * PER_PORT, meters - first)
            args = [sys.executable, str(ROOT / "bench" / "modbus_sim.py"), "--meters", str(count), "--per-port",
                    str(PER_PORT), "--port", str(port + first // PER_PORT), "--seed", str(i + 1)]
            self.procs.append(procs.start(args, stdout=subprocess.PIPE, bufsize=1))
            first += count
        assert first == meters

    def wait_ready(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            assert proc.stdout is not None
            while True:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("a simulator did not start")
                if proc.stdout.readline().strip() == "ready":
                    break

    def cpu(self) -> float:
        return sum(cpu_seconds(p.pid) for p in self.procs)

    def rss_mb(self) -> list[float]:
        return [status_kb(p.pid, "VmRSS") / 1024 for p in self.procs]


def wait_child(proc: subprocess.Popen[str]) -> tuple[int, float, float]:
    """Wait for a child: (exit status, its CPU seconds, its peak RSS in MB)."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def get(url: str, timeout: float = 2.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except (urllib.error.URLError, OSError):
        return 0


def wait_healthz(proc: subprocess.Popen[str], api: str, timeout: float) -> float | None:
    """Seconds from now until /healthz answers 200 (None: the process died or the timeout passed)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc.poll() is not None:
            return None
        if get(f"{api}/healthz", timeout=1.0) == 200:
            return time.monotonic() - start
        time.sleep(0.02)
    return None


# --- files ----------------------------------------------------------------------------------------------------
def write_settings(path: Path, *, db: str, api_port: int, sim_port: int, meters: int) -> None:
    """The gateway's settings: SQLite, the API with a provisioning key, one modbus-tcp bus per simulator port,
    no accounts nor meters (they are imported). JSON is YAML."""
    from gateway.settings import hash_key

    buses = [{"id": f"bus{i}", "protocol": "modbus-tcp", "host": "127.0.0.1", "port": sim_port + i}
             for i in range(-(-meters // PER_PORT))]
    settings = {
        "site": {"name": "fleet-scale"},
        "database": {"url": f"sqlite:///{db}"},
        "api": {"host": "127.0.0.1", "port": api_port,
                "keys": [{"name": "bench", "role": "provisioning", "sha256": hash_key(KEY)}]},
        "tariffs": {"flat": {"kind": "flat", "price": "0.5600"}},
        "buses": buses,
    }
    path.write_text(json.dumps(settings, indent=1))


def write_fleet(work: Path, meters: int, interval: float) -> tuple[Path, Path]:
    accounts, meter_file = work / "accounts.csv", work / "meters.csv"
    with accounts.open("w", newline="") as f:
        out = csv.writer(f, lineterminator="\n")
        out.writerow(["id", "tariff", "opening_balance"])
        out.writerows((f"A-{n}", "flat", "1000.00") for n in range(meters))
    with meter_file.open("w", newline="") as f:
        out = csv.writer(f, lineterminator="\n")
        out.writerow(["id", "account", "bus", "unit_id", "model", "poll_interval_s"])
        out.writerows((f"M-{n}", f"A-{n}", f"bus{n // PER_PORT}", n % PER_PORT + 1, "generic-prepaid", f"{interval:g}")
                      for n in range(meters))
    return accounts, meter_file


# --- figures --------------------------------------------------------------------------------------------------
class Report:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.over = 0

    def figure(self, name: str, value: str, target: str, ok: bool | None) -> None:
        verdict = "" if ok is None else (" OK" if ok else " OVER")
        self.over += ok is False
        line = f"{name}: {value} (target {target}){verdict}"
        self.lines.append(line)
        print(line, flush=True)


def online(db: Path) -> int:
    """Meters whose row says they answered (written with their first stored reading)."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)) as con:
        return con.execute("SELECT count(*) FROM meters WHERE health = 'online' AND status = 'active'").fetchone()[0]


def db_counts(db: Path) -> tuple[int, int, int]:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)) as con:
        accounts = con.execute("SELECT count(*) FROM accounts").fetchone()[0]
        meters = con.execute("SELECT count(*) FROM meters WHERE status = 'active'").fetchone()[0]
        read = con.execute("SELECT count(DISTINCT meter_id) FROM readings").fetchone()[0]
    return accounts, meters, read


def post_file(url: str, path: Path, timeout: float) -> tuple[int, float, str]:
    body = path.read_bytes()
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "text/csv", "Authorization": f"Bearer {KEY}"})
    start = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            text = response.read().decode()
            return response.status, time.monotonic() - start, text
    except urllib.error.HTTPError as exc:
        return exc.code, time.monotonic() - start, exc.read().decode()[:500]


def check_config_times(runs: int = 5) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.monotonic()
        subprocess.run([GATEWAY, "check-config", "config/gateway.example.yaml"], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL)
        times.append(time.monotonic() - start)
    return times


# --- the run --------------------------------------------------------------------------------------------------
def run(args: argparse.Namespace, work: Path, procs: Procs, report: Report) -> None:
    n, interval = args.meters, args.interval
    ports = -(-n // PER_PORT)
    sims_n = args.sims or max(1, -(-ports // 100))
    sim_port = free_port_block(ports)
    api_port = free_port_block(1, start=sim_port + ports + 100)
    api = f"http://127.0.0.1:{api_port}"
    print(f"{n:,} meters on {ports} buses (ports {sim_port}..{sim_port + ports - 1}) served by {sims_n} simulator "
          f"processes; poll interval {interval:g} s; work dir {work}")
    print(f"machine: {conditions()}, {os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.1f} GiB RAM")

    main_cfg, empty_cfg, api_cfg = work / "gateway.json", work / "empty.json", work / "api.json"
    for cfg, db in ((main_cfg, "gw.db"), (empty_cfg, "empty.db"), (api_cfg, "api.db")):
        write_settings(cfg, db=db, api_port=api_port, sim_port=sim_port, meters=n)
    start = time.monotonic()
    accounts_csv, meters_csv = write_fleet(work, n, interval)
    print(f"files: accounts.csv {accounts_csv.stat().st_size / 2**20:.1f} MB, meters.csv "
          f"{meters_csv.stat().st_size / 2**20:.1f} MB, written in {time.monotonic() - start:.1f} s")

    start = time.monotonic()
    sims = Simulators(procs, meters=n, port=sim_port, n=sims_n)
    sims.wait_ready()
    print(f"simulators ready in {time.monotonic() - start:.1f} s, RSS "
          + " + ".join(f"{r:.0f}" for r in sims.rss_mb()) + " MB")
    log = (work / "gateway.log").open("a")

    # the empty gateway: same settings, no accounts nor meters
    proc = procs.start([GATEWAY, "run", "--config", str(empty_cfg), "--log-level", "WARNING"], cwd=work,
                       stdout=log, stderr=log)
    up = wait_healthz(proc, api, 120)
    if up is None:
        raise RuntimeError(f"the empty gateway did not answer /healthz (see {work / 'gateway.log'})")
    time.sleep(args.settle)
    empty_rss = status_kb(proc.pid, "VmRSS")
    print(f"empty gateway: /healthz after {up:.2f} s, VmRSS {empty_rss / 1024:.1f} MB after {args.settle:g} s")
    procs.stop(proc)

    # 1. import with the CLI, into a fresh database
    print(f"importing {n:,} accounts and {n:,} meters with `meter-gateway fleet import` ...", flush=True)
    start = time.monotonic()
    proc = procs.start([GATEWAY, "fleet", "import", "--config", str(main_cfg), "--accounts", str(accounts_csv),
                        "--meters", str(meters_csv)], cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    timer = threading.Timer(args.timeout, proc.kill)
    timer.start()
    out, err = proc.stdout.read(), proc.stderr.read()  # type: ignore[union-attr]
    status, cpu, peak = wait_child(proc)
    timer.cancel()
    procs.procs.remove(proc)
    took = time.monotonic() - start
    if status != 0:
        report.figure("import (CLI)", f"failed, exit {status} after {took:.1f} s: {(out + err).strip()[-500:]}",
                      "≤ 60 s", False)
        return
    print(f"  {out.strip()}; CPU {cpu:.1f} s, peak RSS {peak:.0f} MB")
    accounts, meters, _ = db_counts(work / "gw.db")
    assert accounts == n and meters == n, (accounts, meters)
    report.figure("import (CLI)", f"{took:.1f} s for {n:,} accounts + {n:,} meters "
                  f"({2 * n / took:,.0f} rows/s; CPU {cpu:.1f} s, peak RSS {peak:.0f} MB)", "≤ 60 s", took <= 60)

    # 1b. the same files through the API, into another fresh database
    if not args.no_api:
        proc = procs.start([GATEWAY, "run", "--config", str(api_cfg), "--log-level", "WARNING"], cwd=work,
                           stdout=log, stderr=log)
        if wait_healthz(proc, api, 120) is None:
            raise RuntimeError("the API gateway did not answer /healthz")
        cpu0 = cpu_seconds(proc.pid)
        code_a, took_a, text_a = post_file(f"{api}/v1/fleet/import?kind=accounts", accounts_csv, args.timeout)
        code_m, took_m, text_m = post_file(f"{api}/v1/fleet/import?kind=meters", meters_csv, args.timeout)
        cpu = cpu_seconds(proc.pid) - cpu0
        peak = status_kb(proc.pid, "VmHWM") / 1024
        procs.stop(proc, timeout=60)
        if code_a == 200 and code_m == 200:
            report.figure("import (API)", f"{took_a + took_m:.1f} s (accounts {took_a:.1f} s, meters {took_m:.1f} s; "
                          f"gateway CPU {cpu:.1f} s, its peak RSS {peak:.0f} MB)", "≤ 60 s, optional",
                          took_a + took_m <= 60)
        else:
            report.figure("import (API)", f"failed: accounts {code_a} {text_a[:200]}; meters {code_m} {text_m[:200]}",
                          "≤ 60 s, optional", False)

    # 2. start with the imported fleet, until /healthz
    proc = procs.start([GATEWAY, "run", "--config", str(main_cfg), "--log-level", "WARNING"], cwd=work,
                       stdout=log, stderr=log)
    up = wait_healthz(proc, api, args.timeout)
    if up is None:
        report.figure("start -> /healthz", f"no answer within {args.timeout:g} s", "≤ 10 s", False)
        return
    ready_at = time.monotonic()
    rss_up = status_kb(proc.pid, "VmRSS") / 1024
    report.figure("start -> /healthz", f"{up:.2f} s with {n:,} meters (RSS then {rss_up:.0f} MB)", "≤ 10 s", up <= 10)

    # 3. until every meter has answered
    cpu_gw0, cpu_sim0 = cpu_seconds(proc.pid), sims.cpu()
    marks: dict[int, float] = {}
    count, last_print = 0, 0.0
    deadline = ready_at + max(3 * interval, interval + 120)
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(1.0)
        count = online(work / "gw.db")
        elapsed = time.monotonic() - ready_at
        for share in (50, 90, 99, 100):
            if share not in marks and count * 100 >= share * n:
                marks[share] = elapsed
        if elapsed - last_print >= 10:
            last_print = elapsed
            rss_now = status_kb(proc.pid, "VmRSS") / 1024
            print(f"  {elapsed:5.0f} s: {count:,} meters read, gateway RSS {rss_now:.0f} MB", flush=True)
        if count >= n:
            break
    took = time.monotonic() - ready_at
    cpu_gw, cpu_sim = cpu_seconds(proc.pid) - cpu_gw0, sims.cpu() - cpu_sim0
    cpu_text = f"gateway CPU {100 * cpu_gw / took:.0f} %, simulators {100 * cpu_sim / took:.0f} %"
    if count < n:
        report.figure("every meter read", f"{count:,} of {n:,} after {took:.0f} s ({cpu_text})",
                      f"≈ {interval:g} s, the poll interval", False)
    else:
        times = ", ".join(f"{k} % at {v:.0f} s" for k, v in marks.items() if k < 100)
        report.figure("every meter read", f"{took:.1f} s after /healthz, {n / took:,.0f} polls/s ({times}; "
                      f"{cpu_text})", f"≈ {interval:g} s, the poll interval (≤ {1.25 * interval:g} s)",
                      took <= 1.25 * interval)

    # 4. steady memory
    time.sleep(args.settle)
    rss, hwm = status_kb(proc.pid, "VmRSS"), status_kb(proc.pid, "VmHWM")
    per_meter = (rss - empty_rss) * 1024 / n
    report.figure("memory per meter", f"{per_meter / 1024:.1f} KB (VmRSS {rss / 1024:.0f} MB - empty "
                  f"{empty_rss / 1024:.0f} MB; peak {hwm / 1024:.0f} MB; simulators "
                  + " + ".join(f"{r:.0f}" for r in sims.rss_mb()) + " MB)", "≤ 10 KB per meter",
                  per_meter <= 10 * 1024)
    for round_ in range(1, args.extra_rounds + 1):  # is it steady? (every meter polled again)
        cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
        time.sleep(interval)
        rss = status_kb(proc.pid, "VmRSS")
        cpu = 100 * (cpu_seconds(proc.pid) - cpu0) / (time.monotonic() - t0)
        print(f"  after {round_} more poll interval(s): VmRSS {rss / 1024:.0f} MB, {(rss - empty_rss) / n:.1f} KB "
              f"per meter; gateway CPU {cpu:.0f} %", flush=True)
    started = time.monotonic()
    procs.stop(proc, timeout=60)
    print(f"  gateway stopped in {time.monotonic() - started:.1f} s")
    accounts, meters, read = db_counts(work / "gw.db")
    print(f"  database: {accounts:,} accounts, {meters:,} meters, {read:,} meters with a stored reading")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--meters", type=int, default=100_000)
    parser.add_argument("--interval", type=float, default=60.0, help="poll interval, s")
    parser.add_argument("--sims", type=int, default=0, help="simulator processes (default: one per 100 ports)")
    parser.add_argument("--settle", type=float, default=10.0, help="s before reading a gateway's RSS")
    parser.add_argument("--timeout", type=float, default=900.0, help="the longest an import or a start may take")
    parser.add_argument("--extra-rounds", type=int, default=0,
                        help="then watch the gateway's RSS and CPU for this many more poll intervals")
    parser.add_argument("--no-api", action="store_true", help="skip the API import")
    parser.add_argument("--keep", action="store_true", help="keep the work dir")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the finally below runs

    work = Path(tempfile.mkdtemp(prefix="fleet_scale.", dir=os.environ.get("BENCH_DIR")))
    procs, report = Procs(), Report()
    began = time.monotonic()
    try:
        run(args, work, procs, report)
    finally:
        procs.stop_all()
        if args.keep:
            print(f"work dir kept: {work}")
        else:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
    # 5. check-config (no other process of the bench running)
    times = check_config_times()
    report.figure("check-config", f"median {statistics.median(times):.2f} s of 5 ("
                  + " ".join(f"{t:.2f}" for t in times) + ")", "< 1 s", statistics.median(times) < 1)
    print(f"\nsummary ({args.meters:,} meters, {time.monotonic() - began:.0f} s, {conditions()}):")
    for line in report.lines:
        print(f"  {line}")
    print(f"  {report.over} figure(s) over target" if report.over else "  every figure within its target")
    sys.exit(1 if report.over else 0)


if __name__ == "__main__":
    main()
