"""Command latency under load: from a disconnect command's creation to its write on the wire, buses busy polling.

The fleet of bench/modbus_throughput.py (2,000 meters, 20 endpoints x 100 unit ids), polled flat out by the
full gateway (poll interval 0.1 s: every bus is saturated, readings go through the engine to the ledger). Every
~0.1 s an operator's disconnect is created for another meter (``Service.request_command``, as the API does);
the simulator timestamps the relay write when it arrives (CLOCK_MONOTONIC, the clock of this process too).

Latency = write on the wire - the moment before ``request_command`` was called: it includes the command's own
database commit, waking the bus, recording `sending`, and waiting for the transaction in flight. The baseline is
the time of one transaction on such a busy bus (the gateway's mean poll time per request); the target is p99 <=
one transaction + 50 ms. Usage:
    python bench/modbus_command_latency.py [--commands 200] [--no-pin] [--pipeline | --own-loop]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time

from modbus_common import Simulator, conditions, free_port_block, gateway_run, median, pin, run


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--endpoints", type=int, default=20)
    parser.add_argument("--per-port", type=int, default=100)
    parser.add_argument("--commands", type=int, default=200)
    parser.add_argument("--spacing", type=float, default=0.1, help="seconds between two commands (mean)")
    parser.add_argument("--interval", type=float, default=0.1)
    parser.add_argument("--timeout", type=float, default=0.5)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument("--pipeline", action="store_true", help="the SQLite pipeline (database.sqlite_pipeline)")
    parser.add_argument("--own-loop", action="store_true",
                        help="the storage on an event loop of its own (database.own_loop)")
    parser.add_argument("--max-pending", type=int, default=None, help="readings in the writer per bus")
    args = parser.parse_args()
    meters = args.endpoints * args.per_port
    port = free_port_block(args.endpoints)
    pinned = not args.no_pin
    rng = random.Random(7)

    async def bench() -> None:
        print(f"conditions: {conditions()}; event loop: {args.loop}; "
              f"{'simulator on CPU 1, benchmark on CPU 0' if pinned else 'processes not pinned'}; "
              f"{meters} meters polled every {args.interval} s (demand {meters / args.interval:,.0f} polls/s); "
              f"{args.commands} disconnects, one every ~{args.spacing} s")
        pin(0 if pinned else None)
        sim = Simulator(meters=meters, per_port=args.per_port, port=port, events=True,
                        cpu=1 if pinned else None)
        latencies: list[float] = []
        creation: list[float] = []  # of which the command's own commit (request_command)

        def configure(poller: object) -> None:
            if args.max_pending is not None:
                poller.max_pending = args.max_pending  # type: ignore[attr-defined]

        try:
            async with gateway_run(sim, port=port, endpoints=args.endpoints, per_port=args.per_port,
                                   database={"sqlite_pipeline": args.pipeline, "own_loop": args.own_loop},
                                   interval=args.interval, timeout=args.timeout, configure=configure) as gw:
                service = gw.gateway.service
                await gw.window(args.warmup)
                targets = rng.sample(range(meters), args.commands)
                for n in targets:
                    wire = (port + n // args.per_port, n % args.per_port + 1, 0)  # coil := 0 (open)
                    seen = len(sim.events)
                    created = time.monotonic()
                    await service.request_command(meter_id=f"M-{n}", action="open", origin="operator",
                                                  operator="bench", reason="latency", actor="bench")
                    creation.append(time.monotonic() - created)
                    deadline = created + 10
                    while time.monotonic() < deadline:
                        hit = [e for e in sim.events[seen:] if e[1:] == wire]
                        if hit:
                            latencies.append(hit[0][0] - created)
                            break
                        await asyncio.sleep(0.002)  # polling the simulator's event log (not a synchronisation)
                    else:
                        print(f"  M-{n}: no write within 10 s")
                    await asyncio.sleep(rng.uniform(0.5, 1.5) * args.spacing)
                requests = len(gw.pollers[0].targets["M-0"].model.read_plan.requests)  # per poll
                per_request = median([h.busy_s / h.tries / requests
                                      for p in gw.pollers for h in p.meters.values() if h.tries])
                totals = gw.gateway.scheduler.stats()["totals"]
        finally:
            sim.stop()
        p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
        budget = per_request + 0.050
        print(f"baseline: one transaction on a busy bus (median per request): {per_request * 1000:.1f} ms")
        print(f"gateway: command creation -> write on the wire: p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
              f"max {max(latencies) * 1000:.1f} ms ({len(latencies)} commands; buses saturated: skipped "
              f"{totals['skipped']:,} polls, {totals['polls_per_s']:,.0f} polls/s)")
        print(f"  of which the command's own commit (request_command returns): p50 "
              f"{percentile(creation, 50) * 1000:.1f} ms, p99 {percentile(creation, 99) * 1000:.1f} ms; "
              f"readings committed {gw.gateway.service.writer.items:,} in {gw.gateway.service.writer.batches:,} "
              f"transactions")
        print(f"ratio p99 / (one transaction + 50 ms): {p99 / budget:.2f} (target <= 1)")
        print(f"conditions after: {conditions()}")

    run(bench, args.loop)


if __name__ == "__main__":
    main()
