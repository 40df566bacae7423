"""Helpers shared by the test suite: external tools, waiting for conditions, free ports, socat pty pairs."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

IN_CI = bool(os.environ.get("CI"))


def require_tool(name: str) -> str:
    """Return the path of an external program, or skip the test (only outside CI: under CI it fails)."""
    path = shutil.which(name)
    if path is None:
        msg = f"{name} is not installed (make test installs it via apt-get when run as root)"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], bool], *, timeout: float = 10.0, interval: float = 0.02, what: str = "") -> None:
    """Poll a condition until it holds; fail the test with ``what`` when the timeout passes."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


async def async_wait_until(
    predicate: Callable[[], bool | Awaitable[bool]], *, timeout: float = 10.0, interval: float = 0.02, what: str = ""
) -> None:
    """Async twin of ``wait_until``; the predicate may be a coroutine function."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result) or isinstance(result, Awaitable):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or predicate}")
        await asyncio.sleep(interval)


def wait_for_port(port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> None:
    """Wait until something accepts TCP connections on host:port."""

    def accepting() -> bool:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
            return True
        return False

    wait_until(accepting, timeout=timeout, what=f"{host}:{port} to accept connections")


@contextlib.contextmanager
def socat_pty_pair(directory: Path) -> Iterator[tuple[str, str]]:
    """Two linked ptys (raw, no echo) from socat. Open both with parity N: a pty refuses parity E."""
    socat = require_tool("socat")
    a, b = directory / "ttyA", directory / "ttyB"
    proc = subprocess.Popen(
        [socat, "-d", "-d", f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: a.exists() and b.exists(), timeout=10, what="socat ptys")
        yield str(a), str(b)
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        if proc.poll() is None:
            proc.kill()


def stop_process(proc: subprocess.Popen[bytes], *, timeout: float = 20) -> None:
    """SIGTERM a process started by a test (if it still runs), and SIGKILL it if it does not stop in time."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()


class SetClock:
    """A gateway's clock (a callable returning aware UTC now) that stays at ``now`` until the test sets it."""

    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now
