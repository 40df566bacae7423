"""A throwaway mosquitto broker for the tests (its own config and port, no system service)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from tests.support import IN_CI, free_port, require_tool, wait_for_port


def _mosquitto() -> str:
    found = shutil.which("mosquitto") or next((str(p) for p in (Path("/usr/sbin/mosquitto"),) if p.exists()), None)
    if found is None:
        msg = "mosquitto is not installed (make test installs it via apt-get when root)"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    return found


class Broker:
    """``secure``: TLS with a self-signed certificate for 127.0.0.1 (``ca``: the file clients trust) and a
    password (user ``gateway``, password ``s3cret``), no anonymous clients."""

    def __init__(self, root: Path, port: int, *, secure: bool = False) -> None:
        self.root, self.port, self.secure = root, port, secure
        self.proc: subprocess.Popen[bytes] | None = None
        # Started as root, mosquitto reads its files as the mosquitto user: they go where that user can reach.
        self.files = Path(tempfile.mkdtemp(prefix="mosquitto-")) if secure else root
        if secure:
            self.files.chmod(0o755)
        self.ca = self.files / "broker-cert.pem"

    def _secure(self) -> str:
        key = self.files / "broker-key.pem"
        if not self.ca.exists():
            subprocess.run([require_tool("openssl"), "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                            "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout",
                            str(key), "-out", str(self.ca)], check=True, capture_output=True, timeout=60)
            key.chmod(0o644)  # mosquitto started as root reads it as the mosquitto user
            passwords = self.files / "passwords"
            subprocess.run([shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd", "-c", "-b",
                            str(passwords), "gateway", "s3cret"], check=True, capture_output=True, timeout=30)
            passwords.chmod(0o644)
        return (f"certfile {self.ca}\nkeyfile {key}\nallow_anonymous false\n"
                f"password_file {self.files / 'passwords'}\n")

    def start(self) -> None:
        config = self.root / "mosquitto.conf"
        security = self._secure() if self.secure else "allow_anonymous true\n"
        config.write_text(f"listener {self.port} 127.0.0.1\n{security}persistence false\n")
        self.proc = subprocess.Popen([_mosquitto(), "-c", str(config)], stdout=subprocess.DEVNULL,
                                     stderr=(self.root / "mosquitto.log").open("ab"))
        wait_for_port(self.port)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None

    def remove(self) -> None:
        if self.files != self.root:
            shutil.rmtree(self.files, ignore_errors=True)


@contextlib.contextmanager
def mosquitto_broker(root: Path, *, secure: bool = False) -> Iterator[Broker]:
    """A broker on a free port of 127.0.0.1 without persistence (anonymous, or ``secure``); stopped afterwards."""
    broker = Broker(root, free_port(), secure=secure)
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()
        broker.remove()


class Listener:
    """Every message on ``topics``, in arrival order, with its retain flag; it can publish too."""

    def __init__(self, port: int, *topics: str) -> None:
        self.port, self.topics = port, topics
        self.messages: list[tuple[str, Any, bool]] = []
        self._client: aiomqtt.Client | None = None
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def _run(self) -> None:
        async with aiomqtt.Client("127.0.0.1", self.port) as client:
            for topic in self.topics:
                await client.subscribe(topic, qos=1)
            self._client = client
            self._ready.set()
            async for message in client.messages:
                body = bytes(message.payload).decode()  # type: ignore[arg-type]
                payload = json.loads(body) if body.startswith("{") else body
                self.messages.append((str(message.topic), payload, bool(message.retain)))

    async def __aenter__(self) -> Listener:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self._ready.wait(), 10)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def publish(self, topic: str, payload: bytes) -> None:
        assert self._client is not None
        await self._client.publish(topic, payload, qos=1)

    def on(self, topic: str) -> list[Any]:
        return [p for t, p, _ in self.messages if t == topic]
