"""Live events to many clients (docs/events.md, "Live events"): a gateway process (``meter-gateway run``, SQLite)
with N clients on ``GET /v1/events``; payments are posted one after another, and for each the time from its
``201`` to its ``PaymentReceived`` at every client is measured. The baseline is the same with one client. The
gateway's CPU time over the run is reported (its reader reads the outbox once for all clients).

    .venv/bin/python bench/sse_fanout.py [--clients 200] [--payments 50]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.settings import hash_key  # noqa: E402

KEY = "bench-admin-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


def start(tmp: Path, port: int) -> subprocess.Popen[bytes]:
    config = {"database": {"url": "sqlite:///gateway.db"},
              "api": {"host": "127.0.0.1", "port": port, "keys": [{"name": "bench", "role": "admin",
                                                                   "sha256": hash_key(KEY)}]},
              "tariffs": {"flat": {"kind": "flat", "price": "0.5600"}},
              "accounts": [{"id": "A-1", "tariff": "flat", "opening_balance": "100.00"}]}
    (tmp / "gateway.yaml").write_text(yaml.safe_dump(config))
    return subprocess.Popen([sys.executable, "-m", "gateway.cli", "run", "--config", str(tmp / "gateway.yaml"),
                             "--log-level", "WARNING"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks of 1/100 s


async def run(base: str, clients: int, payments: int, pid: int, tag: str) -> None:
    got: dict[str, list[float]] = {}
    ready = 0

    async def listen(client: httpx.AsyncClient) -> None:
        nonlocal ready
        async with client.stream("GET", f"{base}/v1/events", headers={**AUTH, "Accept": "text/event-stream"},
                                 params={"topic": "accounts/A-1/balance"}) as response:
            ready += 1
            async for line in response.aiter_lines():
                if line.startswith("data:") and f'"payment_id":"{tag}-' in line:
                    payment = line.split('"payment_id":"', 1)[1].split('"', 1)[0]
                    got.setdefault(payment, []).append(time.monotonic())

    limits = httpx.Limits(max_connections=clients + 10)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        listeners = [asyncio.create_task(listen(client)) for _ in range(clients)]
        while ready < clients:
            await asyncio.sleep(0.05)
        cpu0, latencies = cpu_s(pid), []
        for n in range(payments):
            answer = await client.post(f"{base}/v1/payments", headers=AUTH, json={
                "source": "bench", "payment_id": f"{tag}-{n}", "account_id": "A-1", "amount": "0.01"})
            assert answer.status_code == 201, answer.text
            answered = time.monotonic()
            while len(got.get(f"{tag}-{n}", [])) < clients:
                await asyncio.sleep(0.002)
            latencies += [t - answered for t in got[f"{tag}-{n}"]]
        cpu = cpu_s(pid) - cpu0
        for task in listeners:
            task.cancel()
        await asyncio.gather(*listeners, return_exceptions=True)
        left = time.monotonic()
        while "gateway_event_stream_clients 0.0" not in (await client.get(f"{base}/metrics", headers=AUTH)).text:
            await asyncio.sleep(0.01)
        forgotten = time.monotonic() - left
    latencies.sort()
    print(f"{clients:4d} clients: delivery after the 201 median {statistics.median(latencies) * 1000:.0f} ms, "
          f"p99 {latencies[int(len(latencies) * 0.99) - 1] * 1000:.0f} ms, max {latencies[-1] * 1000:.0f} ms; "
          f"gateway CPU {cpu:.2f} s for {payments} payments; every client forgotten {forgotten * 1000:.0f} ms after "
          f"they left")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--payments", type=int, default=50)
    args = parser.parse_args()
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        gateway = start(Path(tmp), port)
        try:
            base = f"http://127.0.0.1:{port}"
            for _ in range(300):
                try:
                    httpx.get(f"{base}/healthz", timeout=1)
                    break
                except httpx.HTTPError:
                    time.sleep(0.1)
            asyncio.run(run(base, 1, args.payments, gateway.pid, "one"))  # the baseline
            asyncio.run(run(base, args.clients, args.payments, gateway.pid, "many"))
        finally:
            gateway.terminate()
            gateway.wait(timeout=30)


if __name__ == "__main__":
    main()
