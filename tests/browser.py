"""Shared helpers for the dashboard in a real browser: Debian's Chromium driven by Playwright (never
`playwright install`: the browser is /usr/bin/chromium), a running `meter-gateway demo`, signing in, reading
the simulated relay over Modbus, and the bodies of the module-scoped fixtures the browser tests share.

A test module declares its fixtures with these bodies (``yield from browser_for_module()``, ``yield from
demo_for_module(tmp_path_factory)``): one browser and one demo per module. ``docs/screenshots/take.py`` uses
``running_demo``, ``launch`` and ``sign_in`` outside pytest.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support import free_port, require_tool, wait_for_port, wait_until

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--disable-background-networking", "--disable-component-update", "--disable-quic",
                 "--no-first-run"]
METERS = 3
ROLES = ("viewer", "billing", "operator", "provisioning", "admin")


def launch(playwright: Any, **options: Any) -> Any:
    """Debian's Chromium, headless, with nothing reaching out to the network on its own."""
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS, **options)


@dataclass
class Demo:
    """A running ``meter-gateway demo --meters 3``: meter M-k is the simulator's unit k, account A-k."""

    proc: subprocess.Popen[bytes]
    data_dir: Path
    port: int
    log: Path
    keys: dict[str, str]
    sim_port: int

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base + path

    def api(self, method: str, path: str, *, role: str = "viewer", **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.keys[role]}", **kwargs.pop("headers", {})}
        return httpx.request(method, self.base + path, headers=headers, timeout=20, **kwargs)

    def get(self, path: str, *, role: str = "viewer") -> Any:
        response = self.api("GET", path, role=role)
        assert response.status_code == 200, (path, response.status_code, response.text)
        return response.json()

    def commands(self, meter_id: str) -> list[dict[str, Any]]:
        """The meter's commands, newest first (the API's list: one page is plenty for a test)."""
        return list(self.get(f"/v1/commands?meter_id={meter_id}&limit=200")["data"])

    def wait_command(self, command_id: str, state: str, *, timeout: float = 30) -> dict[str, Any]:
        seen: dict[str, Any] = {}

        def reached() -> bool:
            seen.update(self.get(f"/v1/commands/{command_id}"))
            return seen["state"] == state

        wait_until(reached, timeout=timeout, interval=0.1,
                   what=f"command {command_id} to be {state} ({seen})")
        return seen

    def relay_on_simulator(self, unit: int) -> dict[str, int]:
        """The simulated meter's relay as the simulator holds it, read over Modbus from outside the gateway
        (config/meters/generic-prepaid.yaml: the command coil 0 and the actual state on discrete input 0, both
        0 for open and 1 for closed)."""
        return relay_over_modbus(self.sim_port, unit)


def relay_over_modbus(port: int, unit: int) -> dict[str, int]:
    from pymodbus.client import ModbusTcpClient

    client = ModbusTcpClient("127.0.0.1", port=port, timeout=3, retries=1)
    try:
        assert client.connect(), f"the simulator on port {port} refused a Modbus connection"
        coil = client.read_coils(0, count=1, device_id=unit)
        state = client.read_discrete_inputs(0, count=1, device_id=unit)
        assert not coil.isError() and not state.isError(), (coil, state)
        return {"coil": int(coil.bits[0]), "state": int(state.bits[0])}
    finally:
        client.close()


def _start(data_dir: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    # as tests/e2e/test_demo.py starts it (its start_demo is not imported: importing a test module would make
    # pytest collect its tests a second time)
    return subprocess.Popen([sys.executable, "-m", "gateway.cli", "demo", "--port", str(port), "--data-dir",
                             str(data_dir), "--meters", str(METERS)], cwd=ROOT, stdout=log.open("ab"),
                            stderr=subprocess.STDOUT)


def _stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
            raise AssertionError("the demo did not stop within 20 s of SIGTERM") from None
    return int(proc.returncode)


def _up(proc: subprocess.Popen[bytes], port: int, log: Path, banners: int) -> None:
    wait_until(lambda: log.read_text(errors="replace").count("demo API keys") >= banners
               or proc.poll() is not None, timeout=60, what="the demo's banner")
    assert proc.poll() is None, log.read_text(errors="replace")[-4000:]
    wait_for_port(port, timeout=10)


def _read_all(demo: Demo) -> None:
    wait_until(lambda: all(demo.get(f"/v1/meters/M-{i}")["last_reading"] is not None
                           for i in range(1, METERS + 1)), timeout=30, interval=0.2,
               what="a first reading of every meter")


def _write_files(data_dir: Path, port: int) -> None:
    """The demo's files as its first start writes them, but the simulator on a port the kernel picks: the demo
    takes the first free port from 15020 and keeps it in demo.json for its later starts, so a demo started by
    another test run in the meantime could take it while this one restarts (``warm``)."""
    from gateway.demo import write_demo_files

    write_demo_files(data_dir, port=port, meters=METERS)
    sim_port = free_port()
    settings = data_dir / "demo.json"
    settings.write_text(json.dumps({**json.loads(settings.read_text()), "port": sim_port}, indent=2) + "\n")
    config_path = data_dir / "gateway.yaml"
    config = yaml.safe_load(config_path.read_text())
    [bus] = config["buses"]
    bus["port"] = sim_port
    config_path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))


@contextlib.contextmanager
def running_demo(directory: Path, *, warm: bool = True) -> Iterator[Demo]:
    """A demo in ``directory``; stopped (SIGTERM, it must exit 0) at the end.

    ``warm``: start it once until every meter has been read, stop it and start it again on the same database.
    The overview's "today's readings by bus" comes from rows the pollers write every minute and at shutdown
    (gateway/service/polling/timeliness.py, FLUSH_EVERY_S = 60): on a first start the section is empty for a
    minute; after a restart it shows the first run's row of the day at once (a second start reuses the
    database, as a user's demo does).
    """
    data_dir, port, log = directory / "demo", free_port(), directory / "demo.log"
    _write_files(data_dir, port)
    proc = _start(data_dir, port, log)
    banners = 1
    try:
        _up(proc, port, log, banners)
        keys = dict(line.split() for line in (data_dir / "keys.txt").read_text().splitlines() if line.strip())
        sim_port = int(json.loads((data_dir / "demo.json").read_text())["port"])
        demo = Demo(proc, data_dir, port, log, keys, sim_port)
        _read_all(demo)
        if warm:
            assert _stop(proc) == 0, log.read_text(errors="replace")[-4000:]
            proc = demo.proc = _start(data_dir, port, log)
            banners += 1
            _up(proc, port, log, banners)
            _read_all(demo)
        yield demo
    finally:
        code = _stop(proc)
    assert code == 0, f"the demo exited with {code}: {log.read_text(errors='replace')[-4000:]}"


def sign_in(page: Any, demo: Demo, role: str, *, path: str = "/ui/") -> Any:
    """Sign ``page`` in with the demo's key of ``role`` through the login form, landing on ``path``."""
    page.goto(demo.url(f"/ui/login?next={path}"))
    page.fill("#key", demo.keys[role])
    page.locator("main form button[type=submit]").click()
    page.wait_for_url(re.compile(re.escape(demo.url(path)) + r"(\?.*)?$"))
    return page


def live(page: Any, *, timeout: float = 15_000) -> None:
    """Wait until the page's event stream is open (the header's badge is on)."""
    page.locator("#live-state.on").wait_for(timeout=timeout)


def mark(page: Any) -> None:
    """Put a marker into the page's window: it survives live updates, not a reload or a navigation."""
    page.evaluate("window.__marker = 'still-the-same-page'")


def not_reloaded(page: Any) -> bool:
    return bool(page.evaluate("window.__marker === 'still-the-same-page'"))


# --- fixture bodies -----------------------------------------------------------------------------------------
def browser_for_module() -> Iterator[Any]:
    """One headless Chromium (each test makes its own contexts); skipped without chromium, except under CI."""
    require_tool("chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            yield browser
        finally:
            browser.close()


def demo_for_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    """One demo (warm: see ``running_demo``)."""
    with running_demo(tmp_path_factory.mktemp("dashboard-demo")) as running:
        yield running
