"""Poll throughput: the gateway's full path against a bare pymodbus loop, on the same simulated fleet, same run.

2,000 simulated meters (20 Modbus TCP endpoints x 100 unit ids, generic-prepaid: 14 input registers + 1 discrete
input per poll) served by bench/modbus_sim.py in its own process on uvloop.

1. baseline: one bare pymodbus client per endpoint reading every meter's registers in a loop;
2. gateway, full path: poll -> decode -> bus scheduler -> group-commit writer -> balance engine -> SQLite ledger,
   with poll intervals short enough that the gateway runs flat out (it skips what it cannot do), on the portable
   write path (the default), the portable path on a loop of its own (``database.own_loop``) and the SQLite
   pipeline (``database.sqlite_pipeline``);
3. gateway, poll path only: the same with the readings dropped instead of written (drivers + scheduler), to
   show where the time of the full path goes.

They are measured in turn, ``--rounds`` times, and the medians are compared (this machine's speed varies
from one minute to the next). By default the simulator runs on CPU 1 and this process on CPU 0, so that
neither slows the other down; each process's CPU is printed. Usage:
    python bench/modbus_throughput.py [--rounds 3] [--seconds 10] [--interval 0.1] [--no-pin]
"""

from __future__ import annotations

import argparse
import time

from modbus_common import Simulator, bare_pymodbus, conditions, free_port_block, gateway_run, median, pin, run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--endpoints", type=int, default=20)
    parser.add_argument("--per-port", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0, help="each measurement window")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--interval", type=float, default=0.1,
                        help="poll interval of every meter (s); short enough to ask for more than the gateway can "
                             "do (the default asks 2,000 meters for 20,000 polls/s)")
    parser.add_argument("--timeout", type=float, default=0.5)
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    parser.add_argument("--no-pin", action="store_true", help="let both processes use both CPUs")
    parser.add_argument("--history", type=float, default=None,
                        help="engine.reading_history_s of the gateway (default: its default, 60 s; 0 stores and "
                             "bills every poll's reading at once)")
    args = parser.parse_args()
    meters = args.endpoints * args.per_port
    port = free_port_block(args.endpoints)
    pinned = not args.no_pin

    async def bench() -> None:
        print(f"conditions: {conditions()}; event loop: {args.loop}; "
              f"{'simulator on CPU 1, benchmark on CPU 0' if pinned else 'processes not pinned'}; "
              f"{meters} meters on {args.endpoints} endpoints x {args.per_port} unit ids; "
              f"{args.rounds} rounds of {args.seconds:.0f} s windows; poll interval {args.interval} s "
              f"(demand {meters / args.interval:,.0f} polls/s)")
        pin(0 if pinned else None)
        sim = Simulator(meters=meters, per_port=args.per_port, port=port, cpu=1 if pinned else None)
        paths: dict[str, dict[str, bool]] = {"portable": {}, "portable, own loop": {"own_loop": True},
                                             "pipeline": {"sqlite_pipeline": True}}
        figures: dict[str, list[float]] = {"bare": [], "poll": [], **{path: [] for path in paths}}
        try:
            for n in range(1, args.rounds + 1):
                base = await bare_pymodbus(port, args.endpoints, args.per_port, args.seconds, sim)
                figures["bare"].append(base.rate)
                print(f"[{n}] baseline, bare pymodbus loop: {base.rate:,.0f} polls/s ({base.cpu_text()})")
                for path, database in paths.items():
                    started = time.monotonic()
                    async with gateway_run(sim, port=port, endpoints=args.endpoints, per_port=args.per_port,
                                           interval=args.interval, timeout=args.timeout, history=args.history,
                                           database=database) as gw:
                        startup = time.monotonic() - started
                        await gw.window(args.warmup)
                        writer = gw.gateway.service.writer
                        items, skipped = writer.items, writer.freshness.skipped
                        full = await gw.window(args.seconds)
                        committed = writer.items - items
                        skipped = writer.freshness.skipped - skipped
                        totals = gw.gateway.scheduler.stats()["totals"]
                    figures[path].append(full.rate)
                    print(f"[{n}] gateway, full path (poll -> engine -> ledger), {path}: {full.rate:,.0f} polls/s "
                          f"({full.cpu_text()}; {committed / full.seconds:,.0f} readings/s committed, "
                          f"{skipped / full.seconds:,.0f}/s unchanged and not stored; "
                          f"max lag {totals['max_lag_s']:.2f} s; started in {startup:.1f} s)")
                async with gateway_run(sim, port=port, endpoints=args.endpoints, per_port=args.per_port,
                                       interval=args.interval, timeout=args.timeout, ledger=False) as gw:
                    await gw.window(args.warmup)
                    poll = await gw.window(args.seconds)
                figures["poll"].append(poll.rate)
                print(f"[{n}] gateway, poll path only (readings dropped): {poll.rate:,.0f} polls/s "
                      f"({poll.cpu_text()})")
        finally:
            sim.stop()
        bare, poll = median(figures["bare"]), median(figures["poll"])
        print(f"baseline (median): bare pymodbus loop {bare:,.0f} polls/s")
        for path in paths:
            print(f"gateway (median), full path, {path}: {median(figures[path]):,.0f} polls/s, ratio to the baseline "
                  f"{median(figures[path]) / bare:.2f}" + (" (the default; target >= 0.6)" if path == "portable" else ""))
        print(f"gateway (median), poll path only: {poll:,.0f} polls/s, ratio {poll / bare:.2f}")
        if max(median(figures[k]) for k in figures if k != "bare") >= 0.95 * meters / args.interval:
            print("warning: the gateway kept up with the demand, so this is not its ceiling: lower --interval")
        print(f"conditions after: {conditions()}")

    run(bench, args.loop)


if __name__ == "__main__":
    main()
