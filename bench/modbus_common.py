"""Shared pieces of the Modbus benchmarks: the simulator process, the gateway under test, the bare baseline.

- ``Simulator``: bench/modbus_sim.py in its own process (uvloop), its CPU time, its relay-write events.
- ``bare_pymodbus``: the baseline, a bare pymodbus client loop per endpoint reading the same registers the
  gateway reads (the model's read plan), in the benchmark process.
- ``GatewayRun``: the real gateway (``gateway.bootstrap.Gateway``: drivers, bus scheduler, writer, balance
  engine, SQLite ledger) on a temporary database, with counters sampled around a measurement window.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pymodbus.client import AsyncModbusTcpClient

from drivers.modbus import load_model
from drivers.modbus.models import MeterModel
from simulators.modbus import DEFAULT_MODEL_PATH

MODEL: MeterModel = load_model(DEFAULT_MODEL_PATH)
CLK_TCK = os.sysconf("SC_CLK_TCK")


def pin(cpu: int | None) -> None:
    """Run this process (all its threads) on one CPU, or anywhere (None)."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


def conditions() -> str:
    """What the machine is doing: CPUs and load average (report it next to every figure)."""
    load = os.getloadavg()
    return f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"


def free_port_block(n: int) -> int:
    """A port P such that P .. P + n - 1 are free now."""
    for base in range(31000, 60000, 137):
        ok = True
        for port in range(base, base + n):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no block of free ports")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mb(pid: int | None = None) -> float:
    for line in Path(f"/proc/{pid or os.getpid()}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Simulator:
    """bench/modbus_sim.py in a subprocess; ``events`` collects (monotonic time, port, unit, value) of writes."""

    def __init__(self, *, meters: int, per_port: int, port: int, faults: str | None = None,
                 events: bool = False, cpu: int | None = None) -> None:
        args = [sys.executable, str(ROOT / "bench" / "modbus_sim.py"), "--meters", str(meters), "--per-port",
                str(per_port), "--port", str(port)]
        if cpu is not None:  # keep the simulator off the benchmark's core
            args = ["taskset", "-c", str(cpu), *args]
        if faults:
            args += ["--faults", faults]
        if events:
            args.append("--events")
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, bufsize=1)
        self.events: list[tuple[float, int, int, int]] = []
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._ready.wait(60):
            self.stop()
            raise RuntimeError("the simulator did not start")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("W "):
                _, t, port, unit, value = line.split()
                self.events.append((float(t), int(port), int(unit), int(value)))
            elif line.strip() == "ready":
                self._ready.set()

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        self.proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        if self.proc.poll() is None:
            self.proc.kill()


@dataclass
class Window:
    """Figures over a measurement window."""

    seconds: float
    polls: int
    cpu_gateway: float  # CPU seconds of this process (all threads: the event loop and SQLite's)
    cpu_sim: float

    @property
    def rate(self) -> float:
        return self.polls / self.seconds

    def cpu_text(self) -> str:
        return (f"CPU: benchmark process {100 * self.cpu_gateway / self.seconds:.0f} %, "
                f"simulator {100 * self.cpu_sim / self.seconds:.0f} %")


async def bare_pymodbus(port: int, endpoints: int, per_port: int, seconds: float, sim: Simulator,
                        *, skip: Callable[[int, int], bool] = lambda port, unit: False) -> Window:
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    """The baseline: one pymodbus client per endpoint reading every unit's registers in a loop.

    Each poll reads what the gateway's driver reads for the model (its read plan: here 14 input registers and
    1 discrete input). ``skip(port, unit)`` leaves meters out (dead ones: a bare loop has no backoff).
    """
    requests = MODEL.read_plan.requests
    polls = 0
    stop_at = time.monotonic() + seconds

    async def loop(p: int) -> None:
        nonlocal polls
        client = AsyncModbusTcpClient("127.0.0.1", port=p, timeout=1.0, retries=0, reconnect_delay=0)
        await client.connect()
        units = [u for u in range(1, per_port + 1) if not skip(p, u)]
        try:
            while time.monotonic() < stop_at:
                for unit in units:
                    for req in requests:
                        if req.table == "input":
                            await client.read_input_registers(req.address, count=req.count, device_id=unit)
                        elif req.table == "holding":
                            await client.read_holding_registers(req.address, count=req.count, device_id=unit)
                        elif req.table == "discrete":
                            await client.read_discrete_inputs(req.address, count=req.count, device_id=unit)
                        else:
                            await client.read_coils(req.address, count=req.count, device_id=unit)
                    polls += 1
        finally:
            client.close()

    start, cpu0, sim0 = time.monotonic(), time.process_time(), sim.cpu()
    await asyncio.gather(*(loop(port + i) for i in range(endpoints)))
    elapsed = time.monotonic() - start
    return Window(elapsed, polls, time.process_time() - cpu0, sim.cpu() - sim0)


def site(db: Path, *, port: int, endpoints: int, per_port: int, interval: float, timeout: float,
         history: float | None = None, database: dict[str, Any] | None = None) -> Any:
    from gateway.settings import Settings

    meters = endpoints * per_port
    return Settings.model_validate({
        "engine": {} if history is None else {"reading_history_s": history},
        "database": {"url": f"sqlite:///{db}", **(database or {})},
        "tariffs": {"flat": {"kind": "flat", "price": "0.5600"}},
        "accounts": [{"id": f"A-{n}", "tariff": "flat", "opening_balance": "100000.00"} for n in range(meters)],
        "buses": [{"id": f"bus{i}", "protocol": "modbus-tcp", "host": "127.0.0.1", "port": port + i,
                   "timeout_s": timeout} for i in range(endpoints)],
        "meters": [{"id": f"M-{n}", "bus": f"bus{n // per_port}", "unit_id": n % per_port + 1, "account": f"A-{n}",
                    "poll_interval_s": interval} for n in range(meters)],
    })


class GatewayRun:
    """The real gateway against the simulator; ``ledger=False`` replaces the writer by a no-op sink."""

    def __init__(self, gateway: Any, sim: Simulator) -> None:
        self.gateway = gateway
        self.sim = sim

    @property
    def pollers(self) -> list[Any]:
        return [bus.poller for bus in self.gateway.scheduler.buses]

    def polls(self, meters: set[str] | None = None) -> int:
        if meters is None:
            return sum(p.counters.polls for p in self.pollers)
        return sum(h.polls for p in self.pollers for m, h in p.meters.items() if m in meters)

    async def window(self, seconds: float, meters: set[str] | None = None) -> Window:
        polls0, cpu0, sim0, start = self.polls(meters), time.process_time(), self.sim.cpu(), time.monotonic()
        await asyncio.sleep(seconds)  # the measurement window (not a synchronisation)
        elapsed = time.monotonic() - start
        return Window(elapsed, self.polls(meters) - polls0, time.process_time() - cpu0, self.sim.cpu() - sim0)


@contextlib.asynccontextmanager
async def gateway_run(sim: Simulator, *, port: int, endpoints: int, per_port: int, interval: float,
                      timeout: float, ledger: bool = True, configure: Callable[[Any], None] | None = None,
                      history: float | None = None, database: dict[str, Any] | None = None
                      ) -> AsyncIterator[GatewayRun]:
    from gateway.bootstrap import Gateway

    logging.getLogger("gateway").setLevel(logging.ERROR)
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # "no response" of dead meters, late replies
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        settings = site(Path(tmp) / "gw.db", port=port, endpoints=endpoints, per_port=per_port, interval=interval,
                        timeout=timeout, history=history, database=database)
        gateway = Gateway(settings, base_dir=Path(tmp))
        if not ledger:  # readings go nowhere: what is left is drivers and scheduler
            submit = gateway.service.writer.submit

            def sink(job: Any) -> Any:
                if type(job).__name__ != "ReadingJob":
                    return submit(job)
                done = asyncio.get_running_loop().create_future()
                done.set_result([])
                return done

            gateway.service.writer.submit = sink  # type: ignore[method-assign]
        async with gateway:
            if configure is not None:
                for bus in gateway.scheduler.buses:
                    configure(bus.poller)
            yield GatewayRun(gateway, sim)


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def run(main: Callable[[], Coroutine[Any, Any, None]], loop: str) -> None:
    """Run the benchmark's coroutine on uvloop (default) or asyncio; both sides of a ratio use the same loop."""
    if loop == "uvloop":
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())
