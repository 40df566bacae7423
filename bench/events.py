"""Events from the outbox to an MQTT broker: events/s through the gateway's outbox relay against a bare
aiomqtt publish loop to the same broker, in the same run, and commit-to-subscriber latency with the gateway
idle and while it polls 2,000 simulated Modbus meters.

One throwaway mosquitto (its own config and port) for the whole run. Every subscriber is a process of its own
(this script with ``--subscriber``, on uvloop): it stamps each message's arrival with CLOCK_MONOTONIC, the
clock of ``time.monotonic`` in this process too, so a busy gateway's event loop does not delay the stamp.
Messages a subscriber gets because they were retained are not counted; every part has its own topic prefix.
By default this process (the gateway, or the baseline) is pinned to CPU 0, and mosquitto, the subscribers and
the simulator to CPU 1 (``--no-pin``: nothing pinned): on a 2-core machine where they land otherwise changes
the broker's round trip, hence both rates, by up to 2x from one round to the next.

**events/s** (``--rounds`` pairs, gateway and baseline alternately first; the figure is the median of the
ratios). Gateway: ``--events`` payments committed with no MQTT configured, then the gateway started again with
it; its outbox relay drains them (reads 256 events per query, numbers them, publishes one after the other with
QoS 1 and marks them published). Baseline, the relay's per-event work without the outbox: one aiomqtt client
publishing the very events the gateway publishes (read from its outbox; topics under another prefix), in the
same order and batches, each built into the same payload dict (``at``, the event, ``seq``, ``event_id``),
JSON-encoded with orjson as the gateway does, QoS 1, one after the other, retained where the gateway retains.
Both rates are taken at the subscriber, first message to last (the gateway's start left out). Each round
also prints the time per event on the publishing side and how much of it is spent inside ``publish`` (the
gateway's publisher is wrapped for this): the rest is the relay's own work (outbox queries, marking,
numbering).

**Latency** (``--latency`` payments, one every ``--spacing`` s on average on a fixed schedule, each through
``Service.record_payment`` to another account): from the commit of a payment to the arrival of its
``PaymentReceived`` event at the subscriber. The commit time is taken by the writer's first commit listener,
which the writer calls synchronously right after a batch's transaction has committed and its callers' futures
are resolved, before the relay is woken (this script wraps the hook and ``writer.submit`` to know which
payments a commit carried; the gateway's code is unchanged). So the figure covers waking the relay, its outbox
queries, whatever it is publishing already, the publish, mosquitto and the subscriber's socket; post -> commit
(waiting for the writer's batch) is printed apart. Cases, each on a fresh database with the same settings
(2,000 meters on 20 Modbus TCP endpoints x 100 unit ids, 2,000 accounts, SQLite in a temporary directory, MQTT
on): idle (buses not run), then for each of ``--interval`` every meter polled that often (the simulated fleet
of bench/modbus_sim.py: pymodbus servers in a process of their own, over TCP; the stored readings, the meters'
states and the charges go out through the same relay). The window opens after ``--warmup`` s and once the
relay is through the start's burst (every meter's state and first reading; at most 256 events and 256
readings waiting). Printed per case: p50 / p99 / max, the ratio to idle, polls/s, CPU, the messages/s at the
subscriber by type, the readings' poll -> subscriber time (their ``at``, wall clock), what waited for the
relay.

Usage: python bench/events.py [--events 5000] [--rounds 5] [--latency 300] [--spacing 0.05] [--interval 5,1]
                              [--warmup 8] [--skip-rate] [--skip-latency] [--no-pin] [--loop asyncio]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import logging
import os
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import aiomqtt  # noqa: E402
import orjson  # noqa: E402

from tests.support import free_port, wait_for_port  # noqa: E402

RETAINED = ("/balance", "/state")  # as gateway/service/outbox_relay.py: the topics the gateway retains
ENDPOINTS, PER_PORT = 20, 100
OTHER_CPU = 1  # mosquitto's, the subscribers' and the simulator's CPU (-1: not pinned); the benchmark's is 0

Event = tuple[int, str, dict[str, Any], dt.datetime]  # an outbox row: id, topic, payload, created_at


def broker(root: Path, cpu: int | None) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    config = root / "mosquitto.conf"
    config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                      "max_queued_messages 0\n")
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    pinned = ["taskset", "-c", str(cpu)] if cpu is not None else []
    proc = subprocess.Popen([*pinned, binary, "-c", str(config)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_for_port(port)
    return proc, port


def pct(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


def ms(values: list[float]) -> str:
    return (f"p50 {1000 * pct(values, 0.5):.1f} ms, p99 {1000 * pct(values, 0.99):.1f} ms, "
            f"max {1000 * values[-1]:.1f} ms")


def conditions() -> str:
    load = os.getloadavg()
    return f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"


# --- the subscriber process ------------------------------------------------------------------------------
class Window:
    """What a subscriber counts from the start of the measurement window."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.kinds: dict[str, int] = {}
        self.readings: list[float] = []  # poll -> arrival, seconds (wall clock)

    def summary(self) -> dict[str, Any]:
        readings = sorted(self.readings)
        return {"seconds": time.monotonic() - self.start, "kinds": self.kinds, "readings": len(readings),
                "reading_p50": pct(readings, 0.5), "reading_p99": pct(readings, 0.99)}


async def subscribe(port: int, topic: str, expect: int) -> None:
    """Print ``ready`` once subscribed. With ``expect``: after that many messages, ``R <count> <first>
    <last>`` (monotonic) and exit. Without: ``P <payment id> <monotonic>`` for each payment event of the
    latency run, and on SIGTERM ``S <json summary of the window>`` and exit; SIGUSR1 starts the window again.
    Exits when its stdin closes (the benchmark is gone)."""
    out = sys.stdout
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    orphaned = threading.Thread(target=lambda: (sys.stdin.read(), loop.call_soon_threadsafe(stop.set)))
    orphaned.daemon = True
    orphaned.start()
    window = Window()

    def restart() -> None:
        nonlocal window
        window = Window()

    loop.add_signal_handler(signal.SIGUSR1, restart)
    n, first, last = 0, 0.0, 0.0
    async with aiomqtt.Client("127.0.0.1", port) as client:
        await client.subscribe(topic, qos=1)
        out.write("ready\n")
        out.flush()

        async def receive() -> None:
            nonlocal n, first, last
            async for message in client.messages:
                now = time.monotonic()
                if message.retain:  # sent at subscription: an earlier part's
                    continue
                first, last, n = first or now, now, n + 1
                if expect:
                    if n >= expect:
                        return
                    continue
                try:
                    body = orjson.loads(message.payload)  # type: ignore[arg-type]
                except orjson.JSONDecodeError:  # the gateway's status: online, offline
                    body = {"type": "status"}
                kind = str(body.get("type"))
                window.kinds[kind] = window.kinds.get(kind, 0) + 1
                if kind == "PaymentReceived" and str(body.get("payment_id")).startswith("L-"):
                    out.write(f"P {body['payment_id']} {now:.6f}\n")
                    out.flush()
                elif kind == "Reading":
                    window.readings.append(time.time() - dt.datetime.fromisoformat(body["at"]).timestamp())

        receiving = asyncio.create_task(receive())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait([receiving, stopping], return_when=asyncio.FIRST_COMPLETED)
        if receiving.done():
            receiving.result()  # its error, if any
        receiving.cancel()
        stopping.cancel()
    with contextlib.suppress(BrokenPipeError):  # the benchmark is gone
        if expect:
            out.write(f"R {n} {first:.6f} {last:.6f}\n")
        else:
            out.write(f"S {orjson.dumps(window.summary()).decode()}\n")
        out.flush()


class Subscriber:
    """A subscriber process (see ``subscribe``); ``arrived``: payment id -> arrival (monotonic)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.arrived: dict[str, float] = {}
        self.result: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, port: int, topic: str, expect: int = 0) -> Subscriber:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--subscriber", str(port), topic, str(expect), str(OTHER_CPU),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        if line.strip() != b"ready":
            proc.kill()
            raise RuntimeError(f"the subscriber did not start: {line!r}")
        return cls(proc)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            line = raw.decode()
            if line.startswith("P "):
                _, pid, at = line.split()
                self.arrived[pid] = float(at)
            elif line[:2] in ("R ", "S "):
                self.result.set_result(line[2:])
        if not self.result.done():
            self.result.set_exception(RuntimeError("the subscriber ended without a result"))

    async def rate(self, timeout: float = 120) -> float:
        """Messages/s from the first to the last (with ``expect``)."""
        n, first, last = (await asyncio.wait_for(self.result, timeout)).split()
        await self.proc.wait()
        return (int(n) - 1) / (float(last) - float(first))

    def window(self) -> None:
        """The measurement window starts (the summary counts from now)."""
        self.proc.send_signal(signal.SIGUSR1)

    async def finish(self) -> dict[str, Any]:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        summary: dict[str, Any] = orjson.loads(await asyncio.wait_for(self.result, 30))
        await self.proc.wait()
        return summary


# --- settings --------------------------------------------------------------------------------------------
def site(db: Path, *, mqtt: tuple[int, str] | None, meters: int = 0, modbus_port: int = 0,
         interval: float = 60.0) -> Any:
    from gateway.settings import Settings

    return Settings.model_validate({
        "database": {"url": f"sqlite:///{db}"},
        **({"mqtt": {"host": "127.0.0.1", "port": mqtt[0], "prefix": mqtt[1]}} if mqtt else {}),
        "tariffs": {"flat": {"kind": "flat", "price": "0.5600"}},
        "accounts": [{"id": f"A-{n}", "tariff": "flat", "opening_balance": "100000.00"}
                     for n in range(max(meters, 1000))],
        "buses": [{"id": f"bus{i}", "protocol": "modbus-tcp", "host": "127.0.0.1", "port": modbus_port + i,
                   "timeout_s": 1.0} for i in range((meters + PER_PORT - 1) // PER_PORT)],
        "meters": [{"id": f"M-{n}", "bus": f"bus{n // PER_PORT}", "unit_id": n % PER_PORT + 1,
                    "account": f"A-{n}", "poll_interval_s": interval} for n in range(meters)],
    })


# --- events/s --------------------------------------------------------------------------------------------
async def commit_payments(root: Path, n: int, k: int) -> Path:
    """``n`` payments committed with no MQTT configured: their events wait in the outbox."""
    from gateway.bootstrap import Gateway

    db = root / f"rate-{k}.db"
    async with Gateway(site(db, mqtt=None), run_buses=False, base_dir=root) as gw:
        await asyncio.gather(*(gw.service.record_payment(source="b", payment_id=f"P-{i}",
                                                         account_id=f"A-{i % 1000}", amount_fen=100)
                               for i in range(n)))
    return db


def outbox(db: Path) -> list[Event]:
    """The events in the gateway's outbox, as its relay reads them."""
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("select id, topic, payload, created_at from outbox where topic like 'accounts/%' "
                            "order by id").fetchall()
    finally:
        conn.close()
    return [(i, topic, orjson.loads(payload), dt.datetime.fromisoformat(str(at)).replace(tzinfo=dt.UTC))
            for i, topic, payload, at in rows]


async def relay_rate(root: Path, db: Path, port: int, n: int, k: int) -> tuple[float, float, float]:
    """The gateway started with MQTT: its relay drains the outbox. Returns events/s at the subscriber and, per
    event, the relay's time from its first publish to its last and the time spent inside ``publish``."""
    from gateway.bootstrap import Gateway

    sub = await Subscriber.start(port, f"g{k}/accounts/#", n)
    clock = {"inside": 0.0, "first": 0.0, "last": 0.0}
    async with Gateway(site(db, mqtt=(port, f"g{k}")), run_buses=False, base_dir=root) as gw:
        publish = gw.relay.publisher.publish

        async def timed(topic: str, payload: dict[str, Any], *, retain: bool = False) -> None:
            start = time.perf_counter()
            await publish(topic, payload, retain=retain)
            clock["last"] = time.perf_counter()
            clock["first"] = clock["first"] or start
            clock["inside"] += clock["last"] - start

        gw.relay.publisher.publish = timed
        rate = await sub.rate()
    return rate, (clock["last"] - clock["first"]) / n, clock["inside"] / n


async def bare_rate(port: int, events: list[Event], k: int) -> tuple[float, float, float]:
    """The baseline: the relay's per-event work without the outbox (see the module's docstring). Returns what
    ``relay_rate`` returns."""
    sub = await Subscriber.start(port, f"b{k}/accounts/#", len(events))
    numbered: dict[str, int] = {}
    inside = 0.0
    async with aiomqtt.Client("127.0.0.1", port) as client:
        first = time.perf_counter()
        for start in range(0, len(events), 256):  # the relay's batches
            for event_id, topic, body, at in events[start:start + 256]:
                seq = numbered.get(topic, 0) + 1
                payload = {"at": at, **body, "seq": seq, "event_id": event_id}
                sent = time.perf_counter()
                await client.publish(f"b{k}/{topic}", orjson.dumps(payload, option=orjson.OPT_UTC_Z), qos=1,
                                     retain=topic.endswith(RETAINED))
                inside += time.perf_counter() - sent
                numbered[topic] = seq
        last = time.perf_counter()
    return await sub.rate(), (last - first) / len(events), inside / len(events)


def rates(args: argparse.Namespace, root: Path, port: int, run: Callable[[Coroutine[Any, Any, Any]], Any]
          ) -> None:
    ratios = []
    for k in range(args.rounds):
        async def pair(k: int = k) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
            db = await commit_payments(root, args.events, k)
            events = outbox(db)
            if k % 2:  # every other round the baseline first
                base = await bare_rate(port, events, k)
                return await relay_rate(root, db, port, args.events, k), base
            gateway = await relay_rate(root, db, port, args.events, k)
            return gateway, await bare_rate(port, events, k)

        (rate, each, inside), (base, base_each, base_inside) = run(pair())
        ratios.append(rate / base)
        print(f"round {k + 1}: baseline (bare aiomqtt, same payloads) {base:,.0f} events/s; gateway "
              f"(outbox relay) {rate:,.0f} events/s; ratio {rate / base:.2f}. Per event: baseline "
              f"{1e6 * base_each:.0f} us ({1e6 * base_inside:.0f} in publish), relay {1e6 * each:.0f} us "
              f"({1e6 * inside:.0f} in publish, {1e6 * (each - inside):.0f} outside)", flush=True)
    print(f"events/s ratio, median of {args.rounds} rounds: {statistics.median(ratios):.2f} (target >= 0.8; "
          f"{args.events} events a round)", flush=True)


# --- latency ---------------------------------------------------------------------------------------------
def backlog(db: Path, relay: Any) -> tuple[int, int]:
    """What waits for the relay: outbox events not published, stored readings not published."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        waiting = conn.execute("select count(*) from outbox where published_at is null").fetchone()[0]
        newest = conn.execute("select coalesce(max(id), 0) from readings").fetchone()[0]
    finally:
        conn.close()
    return int(waiting), 0 if relay.readings_after is None else int(newest) - relay.readings_after


async def latency(root: Path, port: int, args: argparse.Namespace, *, interval: float | None,
                  modbus_port: int, sim: Any = None) -> dict[str, Any]:
    """One latency case: idle (``interval`` None: buses not run) or every meter polled every ``interval``
    s."""
    from gateway.bootstrap import Gateway

    busy = interval is not None
    name = f"poll-{interval:g}s" if busy else "idle"
    db = root / f"latency-{name}.db"
    settings = site(db, mqtt=(port, name), meters=args.meters, modbus_port=modbus_port,
                    interval=interval or 60.0)
    sub = await Subscriber.start(port, f"{name}/#")
    posted: dict[str, float] = {}
    committed: dict[str, float] = {}
    waiting: dict[str, asyncio.Future[Any]] = {}
    rng = random.Random(7)
    out: dict[str, Any] = {"name": name, "interval": interval}
    async with Gateway(settings, run_buses=busy, base_dir=root) as gw:
        writer = gw.service.writer
        submit = writer.submit

        def watched_submit(job: Any) -> Any:
            future = submit(job)
            if str(getattr(job, "payment_id", "")).startswith("L-"):
                waiting[job.payment_id] = future
            return future

        def on_commit() -> None:  # called by the writer right after each commit, before it wakes the relay
            now = time.monotonic()
            for pid in [pid for pid, future in waiting.items() if future.done()]:
                committed[pid] = now
                del waiting[pid]

        writer.submit = watched_submit  # type: ignore[method-assign]
        writer._committed.insert(0, on_commit)  # (the first listener: before the relay wakes)
        # Warm-up: polling reaches its steady state, and the relay is through the start's burst (every meter's
        # state, every meter's first reading) before the window opens.
        began = time.monotonic()
        await asyncio.sleep(args.warmup if busy else 1.0)
        while max(backlog(db, gw.relay)) > 256 and time.monotonic() - began < args.warmup + 60:
            await asyncio.sleep(0.5)  # polling the relay's backlog (not a synchronisation)
        out["warmup"] = time.monotonic() - began
        out["backlog_start"] = backlog(db, gw.relay)
        sub.window()
        polls0 = gw.scheduler.stats()["totals"]["polls"] if gw.scheduler else 0
        cpu0, sim0, start = time.process_time(), sim.cpu() if sim else 0.0, time.monotonic()
        tasks = []
        due = start
        for i in range(args.latency):
            pid = f"L-{i}"
            await asyncio.sleep(max(0.0, due - time.monotonic()))  # the schedule (not a synchronisation)
            posted[pid] = time.monotonic()
            tasks.append(asyncio.create_task(gw.service.record_payment(
                source="l", payment_id=pid, account_id=f"A-{(i * 7919) % args.meters}", amount_fen=100)))
            due += rng.uniform(0.5, 1.5) * args.spacing
        await asyncio.gather(*tasks)
        deadline = time.monotonic() + 30
        while len(sub.arrived) < args.latency and time.monotonic() < deadline:
            await asyncio.sleep(0.05)  # polling the subscriber's log (not a synchronisation)
        out["seconds"] = seconds = time.monotonic() - start
        out["cpu"] = (time.process_time() - cpu0) / seconds
        out["sim_cpu"] = ((sim.cpu() - sim0) / seconds) if sim else 0.0
        out["polls"] = ((gw.scheduler.stats()["totals"]["polls"] - polls0) / seconds) if gw.scheduler else 0.0
        out["backlog_end"] = backlog(db, gw.relay)
    out["summary"] = await sub.finish()
    out["missing"] = missing = [pid for pid in posted if pid not in sub.arrived or pid not in committed]
    out["latency"] = sorted(sub.arrived[p] - committed[p] for p in posted if p not in missing)
    out["post_commit"] = sorted(committed[p] - posted[p] for p in posted if p in committed)
    return out


def report(args: argparse.Namespace, cases: list[dict[str, Any]]) -> None:
    idle = cases[0]["latency"]
    print(f"commit -> subscriber, {args.latency} payments (~{1 / args.spacing:.0f}/s), {args.meters:,} "
          "meters configured:")
    for case in cases:
        lat, summary = case["latency"], case["summary"]
        per_s = sorted(((k, v / summary["seconds"]) for k, v in summary["kinds"].items() if k != "status"),
                       key=lambda kv: -kv[1])
        if case["interval"] is None:
            print(f"  idle (buses not run): {ms(lat)}")
        else:
            print(f"  polled every {case['interval']:g} s: {ms(lat)}; ratio to idle: p50 "
                  f"{pct(lat, 0.5) / pct(idle, 0.5):.1f}, p99 {pct(lat, 0.99) / pct(idle, 0.99):.1f}")
            print(f"    {case['polls']:,.0f} polls/s (asked {args.meters / case['interval']:,.0f}); readings "
                  f"poll -> subscriber p50 {1000 * summary['reading_p50']:.0f} ms, "
                  f"p99 {1000 * summary['reading_p99']:.0f} ms")
        print(f"    CPU: benchmark process {100 * case['cpu']:.0f} %, simulator "
              f"{100 * case['sim_cpu']:.0f} %; at the subscriber, per s: "
              f"{', '.join(f'{k} {v:,.0f}' for k, v in per_s)}")
        print(f"    post -> commit (the writer's batch) {ms(case['post_commit'])}; waiting for the relay "
              f"(events, readings): {case['backlog_start']} after {case['warmup']:.0f} s of warm-up, "
              f"{case['backlog_end']} at the end")
        if case["missing"]:
            print(f"    {len(case['missing'])} payments without a commit time or an event: "
                  f"{case['missing'][:5]}")


# --- main ------------------------------------------------------------------------------------------------
def main() -> None:
    global OTHER_CPU
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=5000, help="events per round of the events/s part")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--latency", type=int, default=300, help="payments per latency case")
    parser.add_argument("--spacing", type=float, default=0.05, help="mean seconds between two payments")
    parser.add_argument("--meters", type=int, default=2000)
    parser.add_argument("--interval", type=lambda text: [float(x) for x in text.split(",")],
                        default=[5.0, 1.0], help="poll intervals of the busy cases, comma-separated")
    parser.add_argument("--warmup", type=float, default=8.0, help="least seconds of polling before a window")
    parser.add_argument("--skip-rate", action="store_true")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    parser.add_argument("--subscriber", nargs=4, metavar=("PORT", "TOPIC", "EXPECT", "CPU"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    import uvloop

    if args.subscriber:
        port, topic, expect, cpu = args.subscriber
        with contextlib.suppress(OSError):  # not the benchmark's CPU (inherited)
            os.sched_setaffinity(0, {int(cpu)} if int(cpu) >= 0 else range(os.cpu_count() or 1))
        uvloop.run(subscribe(int(port), topic, int(expect)))
        return
    from modbus_common import Simulator, free_port_block, pin

    logging.getLogger("gateway").setLevel(logging.ERROR)
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    # At a gateway's stop its relay's task is cancelled, at times in the middle of a query: SQLAlchemy's pool
    # then logs the rollback it could not finish ("Exception during reset or similar"). Not what is measured.
    logging.getLogger("sqlalchemy.pool").setLevel(logging.CRITICAL)
    runner = uvloop.run if args.loop == "uvloop" else asyncio.run

    def run(coroutine: Coroutine[Any, Any, Any]) -> Any:
        """Run a part; SIGTERM cancels it (like Ctrl-C), so that the broker and the simulator are stopped."""
        async def stoppable() -> Any:
            task = asyncio.current_task()
            assert task is not None
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
            return await coroutine

        return runner(stoppable())

    pinned = not args.no_pin
    OTHER_CPU = 1 if pinned else -1
    placement = ("benchmark on CPU 0; mosquitto, subscribers, simulator on CPU 1" if pinned
                 else "nothing pinned")
    print(f"conditions: {conditions()}; event loop: {args.loop}; {placement}", flush=True)
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        root = Path(tmp)
        proc, port = broker(root, 1 if pinned else None)
        pin(0 if pinned else None)
        try:
            if not args.skip_rate:
                rates(args, root, port, run)
            if not args.skip_latency:
                modbus_port = free_port_block(ENDPOINTS)
                cases = [run(latency(root, port, args, interval=None, modbus_port=modbus_port))]
                sim = Simulator(meters=args.meters, per_port=PER_PORT, port=modbus_port,
                                cpu=1 if pinned else None)
                try:
                    for interval in args.interval:
                        cases.append(run(latency(root, port, args, interval=interval, modbus_port=modbus_port,
                                                 sim=sim)))
                finally:
                    sim.stop()
                report(args, cases)
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    print(f"conditions after: {conditions()}")


if __name__ == "__main__":
    main()
