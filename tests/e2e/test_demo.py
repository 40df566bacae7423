"""`meter-gateway demo` as a user starts it: it comes up, prints where to look and the keys, takes a payment,
stops cleanly on SIGTERM, and a second start reuses the same database."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import pytest

from tests.support import free_port, require_tool, wait_for_port, wait_until

ROOT = Path(__file__).resolve().parents[2]


def start_demo(data_dir: Path, port: int, log: Path,
               env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "gateway.cli", "demo", "--port", str(port), "--data-dir",
                             str(data_dir), "--meters", "3"], cwd=ROOT, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT, env=env)


def stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the demo did not stop within 20 s of SIGTERM")


def keys(data_dir: Path) -> dict[str, str]:
    return dict(line.split() for line in (data_dir / "keys.txt").read_text().splitlines())


def test_demo_starts_takes_a_payment_stops_and_resumes(tmp_path: Path) -> None:
    data_dir, port = tmp_path / "demo", free_port()
    proc = start_demo(data_dir, port, tmp_path / "first.log")
    try:
        wait_for_port(port, timeout=60)
        wait_until(lambda: "demo API keys" in (tmp_path / "first.log").read_text(), timeout=10, what="the banner")
        k = keys(data_dir)
        banner = (tmp_path / "first.log").read_text()
        assert f"http://127.0.0.1:{port}" in banner and k["billing"] in banner
        assert oct((data_dir / "keys.txt").stat().st_mode & 0o777) == "0o600"
        base = f"http://127.0.0.1:{port}"
        # the dashboard's address and a key to sign in with, and the page is there
        assert f"dashboard:  {base}/ui/    sign in with the operator key: {k['operator']}" in banner
        login = httpx.get(f"{base}/ui/login")
        assert login.status_code == 200 and 'name="key"' in login.text
        payment = {"source": "billing", "payment_id": "P-1", "account_id": "A-3", "amount": "5.00"}
        response = httpx.post(f"{base}/v1/payments", json=payment, headers={"Authorization": f"Bearer {k['billing']}"})
        assert response.status_code == 201, response.text
        meter = lambda: httpx.get(f"{base}/v1/meters/M-3", headers={"Authorization": f"Bearer {k['viewer']}"}).json()
        wait_until(lambda: meter()["last_reading"] is not None, timeout=20, what="a first reading")
        # its events go out to the demo's broker: the line the banner prints, for the payment's balance
        require_tool("mosquitto")
        command = next(line for line in banner.splitlines() if "mosquitto_sub" in line).split("events:")[1].split()
        received = subprocess.run([require_tool("mosquitto_sub"), *command[1:5], "-t", "meter-gateway/accounts/A-3/balance", "-C", "1", "-W", "20"],
                                  capture_output=True, text=True, timeout=30)
        assert '"payment_id":"P-1"' in received.stdout, (received.stdout, received.stderr)
    finally:
        code = stop(proc)
    assert code == 0
    assert "gateway stopped" in (tmp_path / "first.log").read_text()
    assert (data_dir / "gateway.db").exists() and (data_dir / "gateway.yaml").exists()

    proc = start_demo(data_dir, port, tmp_path / "second.log")
    try:
        wait_for_port(port, timeout=60)
        again = httpx.post(f"http://127.0.0.1:{port}/v1/payments", json=payment,
                           headers={"Authorization": f"Bearer {k['billing']}"})
        assert again.status_code == 200  # the same database: the payment is already there
        assert again.json() == response.json()
    finally:
        assert stop(proc) == 0

    # a third start while another program holds the simulated meters' port: a clear message, not a traceback
    simulator_port = json.loads((data_dir / "demo.json").read_text())["port"]
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", simulator_port))
        holder.listen()
        proc = start_demo(data_dir, port, tmp_path / "third.log")
        code = proc.wait(timeout=30)
    third = (tmp_path / "third.log").read_text()
    assert code == 1 and f"answer on port {simulator_port}" in third and "Traceback" not in third, third


def without_mosquitto() -> dict[str, str]:
    """The demo's environment on a host without mosquitto: the demo's own switch to its embedded broker
    (GATEWAY_DEMO_BROKER; hiding mosquitto from PATH is not enough, the demo also looks for /usr/sbin/mosquitto),
    and a PATH without mosquitto_sub, for the banner's line."""
    path = [d for d in os.environ.get("PATH", "").split(os.pathsep)
            if d and not (Path(d) / "mosquitto_sub").exists() and not (Path(d) / "mosquitto").exists()]
    return {**os.environ, "GATEWAY_DEMO_BROKER": "embedded", "PATH": os.pathsep.join(path)}


async def demo_events(mqtt_port: int, base: str, billing_key: str, *,
                      timeout: float = 30.0) -> dict[str, list[Any]]:
    """Subscribe to the demo's events, push a payment once subscribed, and collect them by topic (retained flag,
    payload) until the retained status, a reading and the payment's balance have arrived."""
    seen: dict[str, list[Any]] = {}

    def arrived() -> bool:
        balance = seen.get("meter-gateway/accounts/A-3/balance", [])
        return ("meter-gateway/gateway/status" in seen and any(t.endswith("/reading") for t in seen)
                and any(isinstance(p, dict) and p.get("payment_id") == "P-2" for _, p in balance))

    try:
        async with asyncio.timeout(timeout), aiomqtt.Client("127.0.0.1", mqtt_port) as client:
            await client.subscribe("meter-gateway/#", qos=1)
            async with httpx.AsyncClient() as http:
                payment = {"source": "billing", "payment_id": "P-2", "account_id": "A-3", "amount": "5.00"}
                response = await http.post(f"{base}/v1/payments", json=payment,
                                           headers={"Authorization": f"Bearer {billing_key}"})
                assert response.status_code == 201, response.text
            async for message in client.messages:
                body = bytes(message.payload).decode()  # type: ignore[arg-type]
                payload = json.loads(body) if body.startswith("{") else body
                seen.setdefault(str(message.topic), []).append((bool(message.retain), payload))
                if arrived():
                    return seen
    except TimeoutError:
        pytest.fail(f"the demo's events did not all arrive within {timeout} s; topics seen: {sorted(seen)}")
    raise AssertionError("unreachable")


def test_demo_publishes_to_its_embedded_broker_without_mosquitto(tmp_path: Path) -> None:
    data_dir, port, log = tmp_path / "demo", free_port(), tmp_path / "demo.log"
    proc = start_demo(data_dir, port, log, env=without_mosquitto())
    try:
        wait_until(lambda: "demo API keys" in log.read_text() or proc.poll() is not None, timeout=60,
                   what="the banner")
        assert proc.poll() is None, log.read_text()
        wait_for_port(port, timeout=10)
        events = next(line for line in log.read_text().splitlines() if "events:" in line)
        events = events.split("events:")[1].strip()
        # the banner's line subscribes with amqtt's client from the gateway's environment
        found = re.fullmatch(r"(\S*amqtt_sub) --url mqtt://127\.0\.0\.1:(\d+) -t 'meter-gateway/#'", events)
        assert found, events
        mqtt_port = int(found[2])
        assert not (data_dir / "mosquitto.conf").exists()  # no mosquitto was started

        seen = asyncio.run(demo_events(mqtt_port, f"http://127.0.0.1:{port}", keys(data_dir)["billing"]))
        assert seen["meter-gateway/gateway/status"][0] == (True, "online")  # retained, at once
        reading = next(p for t, ps in seen.items() if t.endswith("/reading") for _, p in ps)
        assert isinstance(reading["energy_wh"], int) and reading["energy_wh"] > 0
        balances = [p for _, p in seen["meter-gateway/accounts/A-3/balance"] if isinstance(p, dict)]
        balance = next(p for p in balances if p.get("payment_id") == "P-2")
        assert balance["type"] == "PaymentReceived" and isinstance(balance["balance_fen"], int)

        # and the printed line itself works: run it as printed, for the retained status
        received = subprocess.run([*shlex.split(events), "-n", "1"], capture_output=True, text=True,
                                  timeout=30)
        assert received.returncode == 0 and received.stdout == "online\n", (received.stdout, received.stderr)
    finally:
        code = stop(proc)
    assert code == 0
    assert "gateway stopped" in log.read_text()
    with socket.socket() as s:  # the broker stopped with the demo: its port is free
        assert s.connect_ex(("127.0.0.1", mqtt_port)) != 0
    assert "Traceback" not in log.read_text() and "ERROR" not in (data_dir / "amqtt.log").read_text()


def test_generated_config_passes_check_config(tmp_path: Path) -> None:
    from gateway.demo import write_demo_files

    write_demo_files(tmp_path, port=8080, meters=4)
    result = subprocess.run([sys.executable, "-m", "gateway.cli", "check-config", str(tmp_path / "gateway.yaml")],
                            cwd=ROOT, capture_output=True, text=True, env={**os.environ}, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "4 accounts, 4 meters" in result.stdout


def readme_bodies() -> list[tuple[str, dict[str, Any]]]:
    """The provisioning step of the README's tour: (path, JSON body) of each POST, as a user copies them."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    step = text[text.index("Accounts and meters are data"):text.index("Closing an account, a move-in")]
    found = []
    for command in re.findall(r"curl -s -X POST .*?-d '(?:[^']*)'", step, flags=re.S):
        path = re.search(r"\$GW(/v1/\S+)", command).group(1)  # type: ignore[union-attr]
        body = re.search(r"-d '([^']*)'", command, flags=re.S).group(1)  # type: ignore[union-attr]
        found.append((path, json.loads(body)))
    return found


def readme_reads() -> list[tuple[str, str]]:
    """The operations step of the README's tour: (key's role, path) of each GET, as a user copies them."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    step = text[text.index("What the operations center sees"):]
    step = step[:step.index("Lists, filters and the audit log")]
    return [(role.lower(), path) for role, path in
            re.findall(r'curl -sN? -H "Authorization: Bearer \$(\w+)".*?\$GW([^" ]+)', step)]


def test_the_readme_tour_opens_an_account_and_swaps_a_meter_on_the_demo(tmp_path: Path) -> None:
    data_dir, port = tmp_path / "demo", free_port()
    log = tmp_path / "demo.log"
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "demo", "--port", str(port), "--data-dir",
                             str(data_dir)], cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, timeout=60)
        wait_until(lambda: "spare meters: unit ids 9..12" in log.read_text(), timeout=10, what="the banner")
        k = keys(data_dir)
        base = f"http://127.0.0.1:{port}"
        viewer = {"Authorization": f"Bearer {k['viewer']}"}
        [(open_path, account), (swap_path, swap)] = readme_bodies()
        assert (open_path, swap_path) == ("/v1/accounts", "/v1/meters/M-2/swap")
        answer = httpx.post(base + open_path, json=account, headers={"Authorization": f"Bearer {k['provisioning']}"})
        assert answer.status_code == 201, answer.text
        meter = lambda m: httpx.get(f"{base}/v1/meters/{m}", headers=viewer).json()  # noqa: E731
        wait_until(lambda: meter("M-9")["last_reading"] is not None, timeout=10, what="the new meter's reading")
        wait_until(lambda: meter("M-2")["last_reading"] is not None, timeout=10, what="M-2's reading")
        answer = httpx.post(base + swap_path, json=swap, headers={"Authorization": f"Bearer {k['provisioning']}"},
                            timeout=20)
        assert answer.status_code == 200, answer.text
        swapped = answer.json()
        assert swapped["meter"]["id"] == "M-10" and swapped["meter"]["account_id"] == "A-2"
        assert httpx.get(f"{base}/v1/meters/M-2", headers=viewer).status_code == 404  # retired
        command = lambda: httpx.get(f"{base}/v1/commands/{swapped['command_id']}", headers=viewer).json()  # noqa: E731
        wait_until(lambda: command()["state"] == "confirmed", timeout=20, what="the new meter's relay read back")
        wait_until(lambda: meter("M-10")["last_reading"] is not None, timeout=10, what="M-10's reading")
        # the operations step: each read answers (the event stream as its JSON page: no Accept: text/event-stream)
        reads = readme_reads()
        assert len(reads) == 6 and ("operator", "/v1/audit?limit=5") in reads
        for role, path in reads:
            answer = httpx.get(base + path, headers={"Authorization": f"Bearer {k[role]}"}, timeout=10)
            assert answer.status_code == 200, (path, answer.text)
            if path == "/metrics":
                assert "gateway_polls_total" in answer.text
            if path.startswith("/v1/reports/arrears"):
                assert answer.headers["content-type"].startswith("text/csv")
    finally:
        assert stop(proc) == 0
