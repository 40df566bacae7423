"""Fault isolation: healthy meters' poll rate with 10 % of the fleet dead, against the all-healthy run.

The fleet of bench/modbus_throughput.py (2,000 meters, 20 endpoints x 100 unit ids), first all healthy, then
with 10 % of its meters not answering at all (the simulator's ``no-answer@10%``: a seeded choice, the same
meters every time). The gateway runs flat out in both (poll interval 0.1 s: 20,000 polls/s asked), so every
second a dead meter costs its bus is a second the healthy ones lose. The healthy meters' polls/s are compared;
the meters that die in the second run are left out of both figures.

Two modes: the full path (poll -> engine -> ledger) and the poll path only (readings dropped: the bus, not the
database, is the bottleneck; the harder case for isolation). Usage:
    python bench/modbus_isolation.py [--seconds 30] [--warmup 10] [--dead 10] [--no-pin]
"""

from __future__ import annotations

import argparse

from modbus_common import Simulator, conditions, free_port_block, gateway_run, pin, run

from simulators.faults import FaultKind, parse_faults


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--endpoints", type=int, default=20)
    parser.add_argument("--per-port", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--warmup", type=float, default=10.0, help="every dead meter fails once in it")
    parser.add_argument("--interval", type=float, default=0.1)
    parser.add_argument("--timeout", type=float, default=0.5)
    parser.add_argument("--dead", type=float, default=10.0, help="percent of the meters that do not answer")
    parser.add_argument("--modes", default="full,poll")
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    parser.add_argument("--no-pin", action="store_true")
    args = parser.parse_args()
    meters = args.endpoints * args.per_port
    port = free_port_block(args.endpoints)
    faults = f"no-answer@{args.dead:g}%"
    dead = set(parse_faults(faults, seed=1).selected(FaultKind.NO_ANSWER, meters))  # the simulator's choice
    healthy = {f"M-{n}" for n in range(meters) if n not in dead}
    pinned = not args.no_pin

    async def measure(spec: str | None, ledger: bool) -> tuple[float, dict[str, float]]:
        sim = Simulator(meters=meters, per_port=args.per_port, port=port, faults=spec, cpu=1 if pinned else None)
        try:
            async with gateway_run(sim, port=port, endpoints=args.endpoints, per_port=args.per_port,
                                   interval=args.interval, timeout=args.timeout, ledger=ledger) as gw:
                await gw.window(args.warmup)
                window = await gw.window(args.seconds, healthy)
                totals = gw.gateway.scheduler.stats()["totals"]
                deferred = sum(p.counters.deferred_retries for p in gw.pollers)
        finally:
            sim.stop()
        print(f"    {'with ' + spec if spec else 'all healthy'}: healthy meters {window.rate:,.0f} polls/s "
              f"({window.cpu_text()}; offline {totals['offline']}, failures {totals['failures']}, "
              f"deferred retries {deferred})")
        return window.rate, totals

    async def bench() -> None:
        print(f"conditions: {conditions()}; event loop: {args.loop}; "
              f"{'simulator on CPU 1, benchmark on CPU 0' if pinned else 'processes not pinned'}; "
              f"{meters} meters, {len(dead)} dead ({faults}); timeout {args.timeout} s; warm-up {args.warmup:.0f} s, "
              f"window {args.seconds:.0f} s; poll interval {args.interval} s")
        pin(0 if pinned else None)
        for mode in args.modes.split(","):
            ledger = mode == "full"
            print(f"{'full path (poll -> engine -> ledger)' if ledger else 'poll path only (readings dropped)'}:")
            base, _ = await measure(None, ledger)
            with_dead, _ = await measure(faults, ledger)
            print(f"  baseline: all healthy {base:,.0f} polls/s; gateway with {args.dead:g} % dead: {with_dead:,.0f} "
                  f"polls/s; ratio {with_dead / base:.2f} (target >= 0.95)")
        print(f"conditions after: {conditions()}")

    run(bench, args.loop)


if __name__ == "__main__":
    main()
