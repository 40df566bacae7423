"""Overload: 2,000 meters whose poll intervals ask for 20,000 polls/s, more than this machine can do, for 2 minutes.

The fleet of bench/modbus_throughput.py (20 Modbus TCP endpoints x 100 unit ids), every meter polled every
0.1 s through the full gateway (engine, ledger). What must hold: memory stays flat (nothing queues up), lag stays
bounded (each meter is polled round-robin, skipped slots are not made up), and the overrun is reported: the
``skipped`` counter and ``overloaded`` flag of ``Scheduler.stats()`` (metrics), and a warning in the log.

Every 10 s it prints the process's resident memory, polls/s, skipped polls, the largest lag and the readings
waiting in the writer. The baseline is the memory after the first 10 s (warm); the figure is the memory at the
end; the ratio should stay near 1. Usage:
    python bench/modbus_overload.py [--seconds 120] [--interval 0.1] [--no-pin]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time

from modbus_common import Simulator, conditions, free_port_block, gateway_run, pin, rss_mb, run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--endpoints", type=int, default=20)
    parser.add_argument("--per-port", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--sample", type=float, default=10.0)
    parser.add_argument("--interval", type=float, default=0.1)
    parser.add_argument("--timeout", type=float, default=0.5)
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    parser.add_argument("--no-pin", action="store_true")
    args = parser.parse_args()
    meters = args.endpoints * args.per_port
    port = free_port_block(args.endpoints)
    pinned = not args.no_pin

    async def bench() -> None:
        print(f"conditions: {conditions()}; event loop: {args.loop}; "
              f"{'simulator on CPU 1, benchmark on CPU 0' if pinned else 'processes not pinned'}; "
              f"{meters} meters every {args.interval} s = {meters / args.interval:,.0f} polls/s asked, "
              f"for {args.seconds:.0f} s")
        pin(0 if pinned else None)
        sim = Simulator(meters=meters, per_port=args.per_port, port=port, cpu=1 if pinned else None)
        rows: list[tuple[float, float, float, int, float, int, int]] = []
        try:
            async with gateway_run(sim, port=port, endpoints=args.endpoints, per_port=args.per_port,
                                   interval=args.interval, timeout=args.timeout) as gw:
                scheduler, writer = gw.gateway.scheduler, gw.gateway.service.writer
                start = time.monotonic()
                polls = gw.polls()
                print("   t (s)  RSS (MB)  polls/s  skipped (total)  max lag (s)  in writer  buses overloaded")
                while time.monotonic() - start < args.seconds:
                    await asyncio.sleep(args.sample)  # the sampling period (not a synchronisation)
                    gc.collect()
                    now = time.monotonic() - start
                    totals = scheduler.stats()["totals"]
                    rate = (gw.polls() - polls) / args.sample
                    polls = gw.polls()
                    row = (now, rss_mb(), rate, totals["skipped"], totals["max_lag_s"], writer.backlog,
                           totals["buses_overloaded"])
                    rows.append(row)
                    print(f"  {row[0]:6.0f}  {row[1]:8.1f}  {row[2]:7,.0f}  {row[3]:15,}  {row[4]:11.2f}  "
                          f"{row[5]:9}  {row[6]:16}")
        finally:
            sim.stop()
        first, last = rows[0], rows[-1]
        half = len(rows) // 2
        lag_first = max(r[4] for r in rows[:half])
        lag_second = max(r[4] for r in rows[half:])
        print(f"baseline: memory after {first[0]:.0f} s: {first[1]:.1f} MB")
        print(f"gateway: memory after {last[0]:.0f} s: {last[1]:.1f} MB (max {max(r[1] for r in rows):.1f} MB); "
              f"largest lag {lag_first:.2f} s in the first half, {lag_second:.2f} s in the second; "
              f"{last[3]:,} polls skipped and counted; overrun reported on {last[6]} of {args.endpoints} buses")
        print(f"ratio memory end / start: {last[1] / first[1]:.3f}; lag second half / first half: "
              f"{lag_second / lag_first:.2f}")
        print(f"conditions after: {conditions()}")

    run(bench, args.loop)


if __name__ == "__main__":
    main()
