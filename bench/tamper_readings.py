"""CPU time per reading through the service layer with and without tamper flags (docs/benchmarks.md, "Tamper
flags: what they cost the reading path").

bench/ledger.py's readings phase (1,000 meters, one client each, every reading billed and committed), measured by
the process's CPU time (``time.process_time``, all threads) as well as wall time, so that other load on the machine
disturbs it less. Variants, run in turn ``--rounds`` times on each write path:

- ``none``: readings without tamper information (the baseline of the same run);
- ``empty``: every reading with ``extra["tamper"] = ()``;
- ``toggle``: one reading in ten per meter raises ``cover_open``, so two in ten write a MeterTamper event.

Usage: python bench/tamper_readings.py [--readings 30000] [--rounds 3] [--paths portable,pipeline]
                                      [--variants none,empty,toggle]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from drivers.base import Reading  # noqa: E402
from gateway.bootstrap import Gateway  # noqa: E402
from ledger import PATHS, site  # noqa: E402

VARIANTS = ("none", "empty", "toggle")


def extra(variant: str, round_: int) -> dict[str, Any]:
    if variant == "none":
        return {}
    if variant == "empty":
        return {"tamper": ()}
    return {"tamper": ("cover_open",) if round_ % 10 == 0 else ()}


async def readings(db: Path, n: int, meters: int, path: dict[str, bool], variant: str) -> tuple[float, float]:
    """(CPU seconds, wall seconds) for ``n`` readings."""
    t0 = dt.datetime(2026, 11, 23, tzinfo=dt.UTC)
    async with Gateway(site(db, meters, path), base_dir=db.parent, run_buses=False) as gw:
        queue = iter(range(n))

        async def client() -> None:
            for i in queue:
                meter, round_ = i % meters, i // meters
                await gw.service.record_reading(Reading(f"M-{meter}", t0 + dt.timedelta(seconds=round_),
                                                        1_000_000 + 5 * round_, power_w=18_000,
                                                        extra=extra(variant, round_)))

        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.gather(*[client() for _ in range(meters)])
        return time.process_time() - cpu, time.perf_counter() - wall


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--readings", type=int, default=30_000)
    parser.add_argument("--meters", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--paths", default="portable,pipeline")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args()
    variants = args.variants.split(",")
    cpu: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for path in args.paths.split(","):
                for variant in variants:
                    db = Path(tmp) / f"{round_}-{path}-{variant}.db"
                    used, wall = asyncio.run(readings(db, args.readings, args.meters, PATHS[path], variant))
                    cpu.setdefault((path, variant), []).append(used / args.readings * 1e6)
                    print(f"round {round_ + 1} {path:9s} {variant:6s} CPU {used / args.readings * 1e6:6.1f} "
                          f"us/reading, wall {args.readings / wall:8,.0f}/s", flush=True)
    print("\nmedian CPU us/reading (ratio to 'none' of the same run):")
    for path in args.paths.split(","):
        base = statistics.median(cpu[(path, "none")])
        figures = ", ".join(f"{v} {statistics.median(cpu[(path, v)]):.1f} ({statistics.median(cpu[(path, v)]) / base:.2f})"
                            for v in variants)
        print(f"  {path}: {figures}")


if __name__ == "__main__":
    main()
