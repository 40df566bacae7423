"""The Modbus benchmarks' simulator process: a fleet over several TCP ports, on uvloop.

It runs in its own process so that a benchmark measures the gateway and not the simulator (each process's CPU is
reported). It prints ``ready`` once every port listens and, with ``--events``, one line per applied write:
``W <CLOCK_MONOTONIC seconds> <port> <unit id> <value>`` (the same clock as the benchmark's ``time.monotonic``).

Usage: python bench/modbus_sim.py --meters 2000 --per-port 100 --port 31000 [--faults 'no-answer@10%'] [--events]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from drivers.modbus import load_model
from simulators.faults import parse_faults
from simulators.modbus import DEFAULT_MODEL_PATH, build_fleets


async def serve(args: argparse.Namespace) -> None:
    model = load_model(args.model or DEFAULT_MODEL_PATH)
    faults = parse_faults(args.faults, seed=args.seed)
    fleets = build_fleets(model, meters=args.meters, port=args.port, per_port=args.per_port, seed=args.seed,
                          faults=faults)
    out = sys.stdout
    for fleet in fleets:
        if args.events:
            port = fleet.port

            def on_write(unit: int, fc: int, address: int, values: list[int], port: int = port) -> None:
                out.write(f"W {time.monotonic():.6f} {port} {unit} {values[0]}\n")
                out.flush()

            fleet.on_write = on_write
        await fleet.start()
    out.write("ready\n")
    out.flush()
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--meters", type=int, default=2000)
    parser.add_argument("--per-port", type=int, default=100)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--faults", default=None)
    parser.add_argument("--model", default=None)
    parser.add_argument("--events", action="store_true")
    args = parser.parse_args()
    import uvloop

    uvloop.run(serve(args))


if __name__ == "__main__":
    main()
