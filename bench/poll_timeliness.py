"""What counting reading timeliness (``gateway.service.polling.timeliness``) costs the polling: the same bus with
its ``DayTally`` and without it, in turn, same run.

1. the poll loop alone, in this process: one ``BusPoller`` of 2,000 meters flat out on a driver that answers at
   once (no I/O, no database): the hooks' share of the loop's own time, the most sensitive measure there is;
2. the gateway's poll path over Modbus TCP (``modbus_throughput.py``'s "poll path only": drivers and scheduler,
   readings dropped) against the simulator in its own process, with each bus's tally on and off;
3. the cost of one ``DayTally.ok`` call, and the memory per meter of a tally of 100,000 meters (tracemalloc).

Usage: python bench/poll_timeliness.py [--rounds 9] [--seconds 2] [--skip-modbus] [--skip-loop]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import time
import timeit
import tracemalloc
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

from modbus_common import Simulator, conditions, free_port_block, gateway_run, median, pin, run

from drivers.base import MeterDriver, Reading
from gateway.service.catalog import MeterSpec
from gateway.service.clock import SystemClock
from gateway.service.polling.poller import BusPoller
from gateway.service.polling.timeliness import DayTally

ZONE = ZoneInfo("Asia/Shanghai")


class InstantDriver(MeterDriver[str]):
    """Every meter answers at once (one turn of the loop), with the same reading."""

    async def read(self, meter: str) -> Reading:
        await asyncio.sleep(0)
        return Reading(meter, dt.datetime.now(dt.UTC), 1000)


class Sink:
    """What a bus uses of the service, doing nothing."""

    def __init__(self, meters: int, interval: float) -> None:
        specs = {f"M-{n}": MeterSpec(f"M-{n}", f"A-{n}", "bus", poll_interval_s=interval) for n in range(meters)}
        self.catalog = SimpleNamespace(meters=specs, stale_after_s=300.0)

    async def submit_reading(self, reading: Reading) -> list[Any]:
        return []

    async def record_failure(self, meter_id: str, error: str, *, offline_after: int = 3) -> None:
        return None


async def loop_cost(seconds: float, *, tally: bool, meters: int = 2000) -> float:
    """CPU microseconds per poll of the loop (CPU time: less disturbed than a rate by other processes)."""
    service = Sink(meters, 0.001)
    poller = BusPoller("bus", InstantDriver(), {m: m for m in service.catalog.meters}, service,
                       clock=SystemClock(), max_pending=10**9,
                       timeliness=DayTally("bus", ZONE, grace_s=1.0) if tally else None)
    task = asyncio.create_task(poller.run())
    await asyncio.sleep(0.3)  # warm-up
    polls, cpu = poller.counters.polls, time.process_time()
    await asyncio.sleep(seconds)  # the measurement window (not a synchronisation)
    cost = (time.process_time() - cpu) / (poller.counters.polls - polls) * 1e6
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return cost


async def modbus_cost(sim: Simulator, port: int, seconds: float, *, tally: bool) -> tuple[float, float]:
    """Polls/s, and CPU microseconds of this process per poll (the figure other processes disturb less)."""
    def off(poller: Any) -> None:
        poller.timeliness = None

    async with gateway_run(sim, port=port, endpoints=20, per_port=100, interval=0.1, timeout=0.5, ledger=False,
                           configure=None if tally else off) as gw:
        await gw.window(3.0)
        window = await gw.window(seconds)
        return window.rate, window.cpu_gateway / window.polls * 1e6


def per_call_ns() -> float:
    day = DayTally("bus", ZONE, grace_s=1.0)
    day.begin(((f"M-{n}", 60.0) for n in range(250)), 0.0, dt.datetime.now(dt.UTC))
    ok, now = day.ok, time.monotonic() % 3600
    best = min(timeit.repeat(lambda: ok("M-17", now), number=200_000, repeat=5))
    return best / 200_000 * 1e9


def bytes_per_meter(meters: int = 100_000) -> float:
    ids = [f"M-{n:06d}" for n in range(meters)]  # (the ids are the gateway's anyway)
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    day = DayTally("bus", ZONE, grace_s=1.0)
    day.begin(((m, 60.0) for m in ids), 0.0, dt.datetime.now(dt.UTC))
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    held = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    del day
    return held / meters


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--skip-modbus", action="store_true")
    parser.add_argument("--skip-loop", action="store_true")
    args = parser.parse_args()

    async def bench() -> None:
        print(f"conditions: {conditions()}")
        print(f"DayTally.ok: {per_call_ns():.0f} ns per call; memory: {bytes_per_meter():.0f} bytes per meter "
              f"(100,000 meters)")
        figures: dict[str, list[float]] = {"loop off": [], "loop on": [], "modbus off": [], "modbus on": [],
                                         "modbus cpu off": [], "modbus cpu on": []}
        for n in range(1, 0 if args.skip_loop else args.rounds + 1):
            for on in (False, True) if n % 2 else (True, False):  # alternate which goes first
                cost = await loop_cost(args.seconds, tally=on)
                figures[f"loop {'on' if on else 'off'}"].append(cost)
                print(f"[{n}] poll loop alone, timeliness {'on ' if on else 'off'}: {cost:.2f} us CPU per poll")
        if not args.skip_modbus:
            pin(0)
            port = free_port_block(20)
            sim = Simulator(meters=2000, per_port=100, port=port, cpu=1)
            try:
                for n in range(1, args.rounds + 1):
                    for on in (False, True) if n % 2 else (True, False):
                        rate, cost = await modbus_cost(sim, port, args.seconds, tally=on)
                        figures[f"modbus {'on' if on else 'off'}"].append(rate)
                        figures[f"modbus cpu {'on' if on else 'off'}"].append(cost)
                        print(f"[{n}] Modbus poll path, timeliness {'on ' if on else 'off'}: {rate:,.0f} polls/s, "
                              f"{cost:.1f} us CPU per poll")
            finally:
                sim.stop()
        if figures["loop on"]:
            off, on = median(figures["loop off"]), median(figures["loop on"])
            pairs = median([b - a for a, b in zip(figures["loop off"], figures["loop on"], strict=True)])
            print(f"poll loop alone (median): off {off:.2f} us CPU per poll, on {on:.2f} us, "
                  f"+{on - off:.2f} us ({(on - off) / off:+.1%}); median of the pairs' differences {pairs:+.2f} us")
        if figures["modbus on"]:
            off, on = median(figures["modbus off"]), median(figures["modbus on"])
            print(f"Modbus poll path (median): off {off:,.0f} polls/s, on {on:,.0f} polls/s, ratio {on / off:.3f}")
            off, on = median(figures["modbus cpu off"]), median(figures["modbus cpu on"])
            pairs = median([b - a for a, b in zip(figures["modbus cpu off"], figures["modbus cpu on"], strict=True)])
            print(f"Modbus poll path (median): off {off:.1f} us CPU per poll, on {on:.1f} us, "
                  f"{(on - off) / off:+.1%}; median of the pairs' differences {pairs:+.1f} us")
        print(f"conditions after: {conditions()}")

    run(bench, "uvloop")


if __name__ == "__main__":
    main()
