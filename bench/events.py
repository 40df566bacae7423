"""Events from the outbox to an MQTT broker: events/s through the gateway's outbox relay against a bare aiomqtt
publish loop to the same broker, in the same run, and commit-to-subscriber latency.

A throwaway mosquitto (its own config and port). Baseline: one aiomqtt client publishing N JSON payloads of the
same size with QoS 1, one after the other, as the relay does. Gateway: N payments committed first, with no MQTT
configured; then the gateway is started again with it, and the time until the subscriber has all N events is
measured (the relay drains the outbox). Latency: payments posted one at a time while a subscriber timestamps
each event's arrival (commit returned -> event received).

Usage: python bench/events.py [--events 5000] [--latency 200]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiomqtt  # noqa: E402
import orjson  # noqa: E402

from gateway.bootstrap import Gateway  # noqa: E402
from gateway.settings import Settings  # noqa: E402
from tests.support import free_port, wait_for_port  # noqa: E402


def broker(root: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    config = root / "mosquitto.conf"
    config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                      "max_queued_messages 0\n")
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    proc = subprocess.Popen([binary, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(port)
    return proc, port


async def counting(port: int, topic: str, expected: int, arrived: dict[int, float] | None = None
                   ) -> asyncio.Task[float]:
    """A subscriber until ``expected`` messages arrived; its task's result: messages/s from the first to the last
    (the same measure for the baseline and the gateway, leaving out the gateway's start)."""
    ready = asyncio.Event()

    async def run() -> float:
        async with aiomqtt.Client("127.0.0.1", port) as client:
            await client.subscribe(topic, qos=1)
            ready.set()
            n, first = 0, 0.0
            async for message in client.messages:
                now = time.perf_counter()
                if arrived is not None:
                    body = orjson.loads(bytes(message.payload))  # type: ignore[arg-type]
                    if isinstance(body, dict) and "payment_id" in body:
                        arrived[int(body["payment_id"][2:])] = now
                first = first or now
                n += 1
                if n >= expected:
                    return (n - 1) / (now - first) if now > first else float("inf")
        return 0.0

    task = asyncio.create_task(run())
    await asyncio.wait_for(ready.wait(), 10)
    return task


async def bare(port: int, n: int, payload: bytes) -> float:
    done = await counting(port, "bare/#", n)
    async with aiomqtt.Client("127.0.0.1", port) as client:
        for i in range(n):
            await client.publish(f"bare/accounts/A-{i % 1000}/balance", payload, qos=1)
    return await done


def site(db: Path, port: int | None, prefix: str = "gw") -> Settings:
    return Settings.model_validate({
        "database": {"url": f"sqlite:///{db}"},
        **({"mqtt": {"host": "127.0.0.1", "port": port, "prefix": prefix}} if port else {}),
        "tariffs": {"flat": {"kind": "flat", "price": "1.0000"}},
        "accounts": [{"id": f"A-{i}", "tariff": "flat", "opening_balance": "1000.00"} for i in range(1000)],
        "meters": [],
    })


async def relay_rate(root: Path, port: int, n: int) -> tuple[float, bytes]:
    db = root / "events.db"
    async with Gateway(site(db, None), run_buses=False, base_dir=root) as gw:  # the events, committed first
        await asyncio.gather(*(gw.service.record_payment(source="b", payment_id=f"P-{i}", account_id=f"A-{i % 1000}",
                                                         amount_fen=100) for i in range(n)))
    done = await counting(port, "gw/accounts/#", n)
    async with Gateway(site(db, port), run_buses=False, base_dir=root):
        rate = await done
    sample = orjson.dumps({"type": "PaymentReceived", "account_id": "A-1", "source": "b", "payment_id": "P-1",
                           "amount_fen": 100, "balance_fen": 100100, "at": "2026-12-03T03:00:00.000000Z",
                           "event_id": 1234, "seq": 12})
    return rate, sample


async def latency(root: Path, port: int, n: int) -> list[float]:
    arrived: dict[int, float] = {}
    done = await counting(port, "lat/accounts/#", n, arrived)
    committed: dict[int, float] = {}
    async with Gateway(site(root / "latency.db", port, "lat"), run_buses=False, base_dir=root) as gw:
        for i in range(n):
            await gw.service.record_payment(source="l", payment_id=f"L-{i}", account_id=f"A-{i % 1000}",
                                            amount_fen=100)
            committed[i] = time.perf_counter()
            await asyncio.sleep(0.01)
        await asyncio.wait_for(done, 30)
    return sorted(arrived[i] - committed[i] for i in committed)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--latency", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        proc, port = broker(root)
        try:
            rate, sample = asyncio.run(relay_rate(root, port, args.events))
            base = asyncio.run(bare(port, args.events, sample))
            print(f"baseline: bare aiomqtt QoS 1 publish loop: {base:,.0f} events/s ({args.events} events)")
            print(f"gateway: outbox -> relay -> broker -> subscriber: {rate:,.0f} events/s; ratio {rate / base:.2f} "
                  "(target >= 0.8)")
            lat = asyncio.run(latency(root, port, args.latency))
            pick = lambda q: 1000 * lat[min(len(lat) - 1, round(q * (len(lat) - 1)))]  # noqa: E731
            print(f"commit -> subscriber latency ({args.latency} payments, idle gateway): p50 {pick(0.5):.1f} ms, "
                  f"p99 {pick(0.99):.1f} ms, max {1000 * lat[-1]:.1f} ms")
        finally:
            proc.terminate()
            proc.wait(timeout=10)


if __name__ == "__main__":
    main()
