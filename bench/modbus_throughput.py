"""Poll throughput: the gateway's full path against a bare pymodbus loop, on the same simulated fleet, same run.

2,000 simulated meters (20 Modbus TCP endpoints x 100 unit ids, generic-prepaid: 14 input registers + 1 discrete
input per poll) served by bench/modbus_sim.py in its own process on uvloop.

1. baseline: one bare pymodbus client per endpoint reading every meter's registers in a loop;
2. gateway, full path: poll -> decode -> bus scheduler -> group-commit writer -> balance engine -> SQLite ledger,
   with poll intervals short enough that the gateway runs flat out (it skips what it cannot do);
3. gateway, poll path only: the same with the writer replaced by a no-op (drivers + scheduler alone), to show
   where the time of the full path goes.

Prints each figure, each process's CPU, and the ratios. Usage:
    python bench/modbus_throughput.py [--seconds 30] [--interval 0.2] [--loop uvloop|asyncio]
"""

from __future__ import annotations

import argparse
import time

from modbus_common import Simulator, bare_pymodbus, conditions, free_port_block, gateway_run, run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--endpoints", type=int, default=20)
    parser.add_argument("--per-port", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=30.0, help="each measurement window")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--interval", type=float, default=0.2, help="poll interval of every meter (s)")
    parser.add_argument("--timeout", type=float, default=0.5)
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    parser.add_argument("--skip-poll-path", action="store_true")
    args = parser.parse_args()
    meters = args.endpoints * args.per_port
    port = free_port_block(args.endpoints)

    async def bench() -> None:
        print(f"conditions: {conditions()}; event loop: {args.loop}; {meters} meters on {args.endpoints} "
              f"endpoints x {args.per_port} unit ids; windows of {args.seconds:.0f} s")
        sim = Simulator(meters=meters, per_port=args.per_port, port=port)
        try:
            base = await bare_pymodbus(port, args.endpoints, args.per_port, args.seconds, sim)
            print(f"baseline: bare pymodbus loop: {base.rate:,.0f} polls/s ({base.cpu_text()})")
            started = time.monotonic()
            async with gateway_run(sim, port=port, endpoints=args.endpoints, per_port=args.per_port,
                                   interval=args.interval, timeout=args.timeout) as gw:
                print(f"  (gateway with {meters} meters and accounts started in {time.monotonic() - started:.1f} s;"
                      f" demand {meters / args.interval:,.0f} polls/s)")
                await gw.window(args.warmup)
                full = await gw.window(args.seconds)
                writer = gw.gateway.service.writer
                stats = gw.gateway.scheduler.stats()["totals"]
            print(f"gateway, full path (poll -> engine -> ledger): {full.rate:,.0f} polls/s ({full.cpu_text()}; "
                  f"{writer.items:,} readings committed in {writer.batches:,} transactions; "
                  f"skipped {stats['skipped']:,}, record errors {stats['record_errors']})")
            print(f"ratio full path / baseline: {full.rate / base.rate:.2f}")
            if not args.skip_poll_path:
                async with gateway_run(sim, port=port, endpoints=args.endpoints, per_port=args.per_port,
                                       interval=args.interval, timeout=args.timeout, ledger=False) as gw:
                    await gw.window(args.warmup)
                    poll = await gw.window(args.seconds)
                print(f"gateway, poll path only (drivers + scheduler, readings dropped): {poll.rate:,.0f} polls/s "
                      f"({poll.cpu_text()})")
                print(f"ratio poll path / baseline: {poll.rate / base.rate:.2f}")
        finally:
            sim.stop()
        print(f"conditions after: {conditions()}")

    run(bench, args.loop)


if __name__ == "__main__":
    main()
