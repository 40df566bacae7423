"""A throwaway mosquitto broker for the tests (its own config and port, no system service)."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import IN_CI, free_port, wait_for_port


def _mosquitto() -> str:
    found = shutil.which("mosquitto") or next((str(p) for p in (Path("/usr/sbin/mosquitto"),) if p.exists()), None)
    if found is None:
        msg = "mosquitto is not installed (make test installs it via apt-get when root)"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    return found


class Broker:
    def __init__(self, root: Path, port: int) -> None:
        self.root, self.port = root, port
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        config = self.root / "mosquitto.conf"
        config.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        self.proc = subprocess.Popen([_mosquitto(), "-c", str(config)], stdout=subprocess.DEVNULL,
                                     stderr=(self.root / "mosquitto.log").open("ab"))
        wait_for_port(self.port)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None


@contextlib.contextmanager
def mosquitto_broker(root: Path) -> Iterator[Broker]:
    """A broker on a free port of 127.0.0.1, anonymous, without persistence; stopped afterwards."""
    broker = Broker(root, free_port())
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
