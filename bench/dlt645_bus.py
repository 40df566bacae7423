"""DL/T 645 bus throughput: 32 simulated meters on one paced bus, polled by the real ``Dlt645Driver`` one
transaction at a time, against the theoretical maximum of protocols.md §2.2 for the same frame sizes and Td:

    T_cycle = (N_req + N_rsp) · Tc + Td,   Tc = 11 bits / baud,   theoretical tx/s = 1 / T_cycle

The simulator (``Dlt645Simulator(pace=True)``, 11 bits per byte at the baud rate plus Td) runs in a child process
and serves the 32 addresses on one end of a socat pty pair (parity N: ptys refuse parity E, protocols.md §6) or,
as a second variant, on TCP. The driver in this process opens the other end and reads, round robin over the
meters, one of these transactions:

- ``total``:  11H read of DI 00010000 (forward active energy total, 4 data bytes)
- ``block``:  11H read of DI 0001FF00 (energy total + 4 rates, 20 data bytes)
- ``status``: 11H read of DI 04000503 (status word 3, 2 data bytes)

N_req and N_rsp are the bytes the driver actually wrote (4 FE preamble included) and read. Td is fixed
(``--td``, default 20 ms, the fastest legal value); with ``--td-range LO,HI`` the simulator draws it at random and
the Td of the formula is the mean of the draws (the simulator reports every pacing delay; Td = delay − line
time of the counted bytes). With a fixed Td the same subtraction checks that the simulator paced exactly the bytes
the driver sent. Per case it prints baud, kind, bytes per transaction, Td,
theoretical and achieved tx/s and their ratio, and the mean per-transaction overhead above T_cycle, split into
the simulator's timer lateness and the rest (pty/socket hops, event loops, codec, driver).

Usage: python bench/dlt645_bus.py [--seconds 15] [--tcp-seconds 6] [--bauds 2400,9600] [--kinds total,block,status]
       [--transports pty,tcp] [--td 0.02 | --td-range 0.02,0.05] [--loop asyncio|uvloop] [--meters 32]

Exit status 1 when a ratio is below 0.9.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from drivers.dlt645 import DI, Dlt645Driver, Dlt645Meter
from drivers.transports import SerialTransport, TcpTransport

BITS_PER_CHAR = 11  # protocols.md §1.1 / §2.1: start + 8 data + parity + stop
KINDS = {
    "total": DI.ENERGY_FORWARD_TOTAL,
    "block": DI.ENERGY_FORWARD_BLOCK,
    "status": DI.STATUS_WORD_3,
}
WARMUP = 4  # transactions per case not timed (port open, first-use costs)


def _set_loop(kind: str) -> None:
    if kind == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


# --- the simulator process --------------------------------------------------------------------------


def _simulator_main(conn: Any, options: dict[str, Any]) -> None:
    """Child process: serve the paced bus until told to stop, then send back what its timers did.

    It always runs the standard asyncio loop: the simulator's TCP server asserts ``asyncio.Transport``, which
    uvloop's transports are not.
    """
    from simulators.dlt645 import Dlt645Simulator

    delays: list[float] = []  # what the simulator asked to sleep: Td + line time of request and reply
    late: list[float] = []  # how much later than asked each sleep returned

    async def recording_sleep(delay: float) -> None:
        start = time.perf_counter()
        await asyncio.sleep(delay)
        late.append(time.perf_counter() - start - delay)
        delays.append(delay)

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        sim = Dlt645Simulator(
            meters=options["meters"],
            serial=options["serial"],
            tcp="127.0.0.1:0" if options["serial"] is None else None,
            baud=options["baud"],
            parity="N",
            pace=True,
            td=options["td"],
            seed=options["seed"],
            sleep=recording_sleep,
        )
        async with sim:
            conn.send(("ready", sim.tcp_port))
            while True:
                command = await loop.run_in_executor(None, conn.recv)
                if command == "reset":
                    delays.clear()
                    late.clear()
                    conn.send("ok")
                elif command == "stats":
                    conn.send({"delays": list(delays), "late": list(late), "replies": sim.replies_sent})
                else:
                    break

    asyncio.run(serve())


class SimulatorProcess:
    def __init__(self, *, serial: str | None, baud: int, td: tuple[float, float], meters: int) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        options = {"serial": serial, "baud": baud, "td": td, "meters": meters, "seed": 7}
        self._proc = ctx.Process(target=_simulator_main, args=(child, options), daemon=True)

    def __enter__(self) -> Self:
        self._proc.start()
        if not self._conn.poll(30):
            raise RuntimeError("simulator did not start")
        _, self.tcp_port = self._conn.recv()
        return self

    def call(self, command: str) -> Any:
        self._conn.send(command)
        return self._conn.recv()

    def __exit__(self, *exc_info: object) -> None:
        with contextlib.suppress(OSError):
            self._conn.send("stop")
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(5)


@contextlib.contextmanager
def socat_pty_pair(directory: Path) -> Iterator[tuple[str, str]]:
    socat = shutil.which("socat")
    if socat is None:
        raise SystemExit("socat is not installed (apt-get install socat), or run with --transports tcp")
    a, b = directory / "ttyGW", directory / "ttySIM"
    proc = subprocess.Popen(
        [socat, f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not (a.exists() and b.exists()):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("socat did not create the pty pair")
            time.sleep(0.01)
        yield str(a), str(b)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- the driver side --------------------------------------------------------------------------------


class _Counting:
    """Counts the bytes the driver really puts on and takes off the line."""

    sent = 0
    received = 0
    discarded = 0
    reads = 0
    last_read = 0.0
    turnaround = 0.0  # summed time from the last reply byte handed over to the next request written

    async def write(self, data: bytes) -> None:
        self.sent += len(data)
        start = time.perf_counter()
        if self.last_read:
            self.turnaround += start - self.last_read
        await super().write(data)  # type: ignore[misc]

    async def read(self, *, timeout: float) -> bytes:
        data: bytes = await super().read(timeout=timeout)  # type: ignore[misc]
        self.last_read = time.perf_counter()
        self.reads += 1
        self.received += len(data)
        return data

    def discard_input(self) -> int:
        n: int = super().discard_input()  # type: ignore[misc]
        self.discarded += n
        return n


class CountingSerial(_Counting, SerialTransport):
    pass


class CountingTcp(_Counting, TcpTransport):
    pass


@dataclass
class Result:
    transport: str
    baud: int
    kind: str
    transactions: int
    elapsed: float
    bytes_req: float
    bytes_rsp: float
    td: float
    sim_late_ms: float
    turnaround_ms: float
    reads_per_tx: float
    per_tx: list[float]

    @property
    def bytes_per_tx(self) -> float:
        return self.bytes_req + self.bytes_rsp

    @property
    def t_cycle(self) -> float:
        return self.bytes_per_tx * BITS_PER_CHAR / self.baud + self.td

    @property
    def theoretical(self) -> float:
        return 1 / self.t_cycle

    @property
    def achieved(self) -> float:
        return self.transactions / self.elapsed

    @property
    def ratio(self) -> float:
        return self.achieved / self.theoretical

    @property
    def median_ratio(self) -> float:
        """T_cycle over the median measured cycle: the ratio without the load spikes of other processes."""
        return self.t_cycle / statistics.median(self.per_tx)

    @property
    def overhead_ms(self) -> float:
        return (self.elapsed / self.transactions - self.t_cycle) * 1000


async def run_case(
    transport: CountingSerial | CountingTcp,
    sim: SimulatorProcess,
    *,
    name: str,
    baud: int,
    kind: str,
    seconds: float,
    meters: int,
    td: tuple[float, float],
) -> Result:
    di = KINDS[kind]
    addresses = [f"{1 + i:012d}" for i in range(meters)]
    bus = [Dlt645Meter(f"m{i}", a) for i, a in enumerate(addresses)]
    driver = Dlt645Driver(transport, timeout=1.0 + 300 * BITS_PER_CHAR / baud, retries=0)
    try:
        for meter in bus[:WARMUP]:
            await driver.read_data(meter, di)
        sim.call("reset")
        transport.sent = transport.received = transport.discarded = transport.reads = 0
        transport.last_read = transport.turnaround = 0.0
        per_tx: list[float] = []
        n = 0
        start = time.perf_counter()
        stop_at = start + seconds
        t = start
        while t < stop_at:
            await driver.read_data(bus[n % meters], di)
            n += 1
            now = time.perf_counter()
            per_tx.append(now - t)
            t = now
        elapsed = t - start
    finally:
        await driver.aclose()
    stats = sim.call("stats")
    if stats["replies"] < n or transport.discarded:
        raise RuntimeError(
            f"{name}: {stats['replies']} replies for {n} requests, {transport.discarded} discarded"
        )
    bytes_req = transport.sent / n
    bytes_rsp = transport.received / n
    line = (bytes_req + bytes_rsp) * BITS_PER_CHAR / baud
    # The simulator slept Td + line time per reply; the replies of the timed window are the last n.
    td_seen = statistics.fmean(stats["delays"][-n:]) - line
    if td[0] == td[1] and abs(td_seen - td[0]) > 1e-6:
        # The simulator charges line time for the bytes it assumes (frame + 4 FE); it must match what was sent.
        raise RuntimeError(
            f"{name}: simulator paced {td_seen - td[0]:+.6f} s of line time more than was sent"
        )
    td_used = td[0] if td[0] == td[1] else td_seen
    late = statistics.fmean(stats["late"][-n:]) * 1000
    turnaround = transport.turnaround / max(1, n - 1) * 1000
    reads = transport.reads / n
    return Result(
        name, baud, kind, n, elapsed, bytes_req, bytes_rsp, td_used, late, turnaround, reads, per_tx
    )


async def run_bus(
    name: str, port: str | None, sim: SimulatorProcess, args: argparse.Namespace, baud: int, seconds: float
) -> list[Result]:
    results = []
    for kind in args.kinds:
        if port is not None:
            transport: CountingSerial | CountingTcp = CountingSerial(port, baudrate=baud, parity="N")
        else:
            assert sim.tcp_port
            transport = CountingTcp("127.0.0.1", sim.tcp_port)
        result = await run_case(
            transport, sim, name=name, baud=baud, kind=kind, seconds=seconds, meters=args.meters, td=args.td
        )
        print_row(result)
        results.append(result)
    return results


HEADER = (
    f"{'path':<4} {'baud':>5} {'kind':<6} {'bytes':>7} {'Td ms':>5} {'T_cyc ms':>8} {'theory/s':>8} "
    f"{'achieved/s':>10} {'ratio':>5} {'p50 ratio':>9} {'n':>4} {'over ms':>7} {'sim-late':>8} {'gw-turn':>7} "
    f"{'reads':>5} {'p99 ms':>6}"
)


def print_row(r: Result) -> None:
    ordered = sorted(r.per_tx)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000
    print(
        f"{r.transport:<4} {r.baud:>5} {r.kind:<6} {f'{r.bytes_req:.0f}+{r.bytes_rsp:.0f}':>7} {r.td * 1000:>5.1f} "
        f"{r.t_cycle * 1000:>8.1f} {r.theoretical:>8.2f} {r.achieved:>10.2f} {r.ratio:>5.3f} {r.median_ratio:>9.3f} "
        f"{r.transactions:>4} {r.overhead_ms:>7.2f} {r.sim_late_ms:>8.2f} {r.turnaround_ms:>7.2f} "
        f"{r.reads_per_tx:>5.2f} {p99:>6.1f}",
        flush=True,
    )


async def main_async(args: argparse.Namespace) -> list[Result]:
    results: list[Result] = []
    for transport_name in args.transports:
        seconds = args.seconds if transport_name == "pty" else args.tcp_seconds
        for baud in args.bauds:
            if transport_name == "pty":
                with (
                    tempfile.TemporaryDirectory(prefix="dlt645-bench-") as tmp,
                    socat_pty_pair(Path(tmp)) as (gw, sim_end),
                    SimulatorProcess(serial=sim_end, baud=baud, td=args.td, meters=args.meters) as sim,
                ):
                    results += await run_bus("pty", gw, sim, args, baud, seconds)
            else:
                with SimulatorProcess(serial=None, baud=baud, td=args.td, meters=args.meters) as sim:
                    results += await run_bus("tcp", None, sim, args, baud, seconds)
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=15.0, help="timed seconds per pty case")
    p.add_argument("--tcp-seconds", type=float, default=6.0, help="timed seconds per TCP case")
    p.add_argument("--bauds", default="2400,9600")
    p.add_argument("--kinds", default=",".join(KINDS))
    p.add_argument("--transports", default="pty,tcp")
    p.add_argument("--meters", type=int, default=32)
    p.add_argument("--td", type=float, default=0.020, help="fixed reply delay Td in seconds")
    p.add_argument("--td-range", default=None, help="LO,HI: random Td per reply instead of --td")
    p.add_argument(
        "--loop",
        choices=["asyncio", "uvloop"],
        default="asyncio",
        help="the driver's event loop (the simulator process always uses asyncio)",
    )
    args = p.parse_args(argv)
    args.bauds = [int(b) for b in args.bauds.split(",")]
    args.kinds = [k for k in args.kinds.split(",")]
    if unknown := set(args.kinds) - set(KINDS):
        p.error(f"unknown kinds {sorted(unknown)}")
    args.transports = args.transports.split(",")
    if unknown := set(args.transports) - {"pty", "tcp"}:
        p.error(f"unknown transports {sorted(unknown)}")
    if args.td_range:
        lo, hi = (float(x) for x in args.td_range.split(","))
        args.td = (lo, hi)
    else:
        args.td = (args.td, args.td)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _set_loop(args.loop)
    load = os.getloadavg()
    print(
        f"DL/T 645 bus benchmark: {args.meters} meters, Td {args.td[0] * 1000:g}"
        + (f"-{args.td[1] * 1000:g}" if args.td[1] != args.td[0] else "")
        + f" ms, loop {args.loop}, {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    print(
        "bytes = request (4 FE included) + reply, as written/read by the driver; T_cyc = bytes·11/baud + Td;"
        " theory/s = 1/T_cyc\n"
        "ratio = achieved/theory; p50 ratio = T_cyc / median cycle; over = mean cycle − T_cyc, of which sim-late ="
        " the simulator's pacing-timer lateness\n"
        "and gw-turn = driver time from the reply's last byte to the next request; reads = transport reads per reply"
    )
    print(HEADER, flush=True)
    started = time.perf_counter()
    results = asyncio.run(main_async(args))
    worst = min(r.ratio for r in results)
    print(f"worst ratio {worst:.3f} (target >= 0.9); total {time.perf_counter() - started:.0f} s")
    return 0 if worst >= 0.9 else 1


if __name__ == "__main__":
    sys.exit(main())
