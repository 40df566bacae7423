"""An MQTT broker of the demo's own where mosquitto is not installed: amqtt (every amqtt call of the project
is in this module).

``EmbeddedBroker(host, port)`` runs ``python -m gateway.adapters.embedded_broker --host H --port P``: an amqtt
broker on one TCP listener, anonymous clients allowed, QoS 0/1/2, retained messages and Last Wills, no
persistence and no ``$SYS`` topics. ``start()`` returns once it listens; ``stop()`` ends it (SIGTERM, SIGKILL
after 10 s).

A process of its own, not a task in the demo's event loop, because amqtt 0.12.1's ``Broker.shutdown()`` can
hang: it cancels each client's reader task and waits for it, and a reader cancelled just as a packet arrives
(a subscriber's PUBACK) loses the cancellation in Python 3.11's ``asyncio.wait_for`` and reads on, so
``shutdown()`` waits until that subscriber disconnects (seen under uvloop, which the demo runs on, with a
subscriber that had just received a Last Will). A process can always be ended, and frees its port when it is;
it also runs amqtt on plain asyncio, off the gateway's event loop, and logs to a file of its own (warnings
only: amqtt logs every connection, and its state machine every state change, at info), so the demo's banner
stays readable.

The broker ignores SIGINT and runs in a session of its own: a Ctrl-C in the terminal stops the gateway first
(which publishes ``offline`` and disconnects), then the demo stops the broker. It also stops when its stdin
closes, so it does not outlive a demo that was killed.

Known deviations of amqtt 0.12.1 from MQTT 3.1.1, harmless to the demo: a connecting client is sent the
retained messages matching every other client's subscriptions, before it subscribes (an xfail test shows it);
a message is delivered at the subscription's QoS, even above the QoS it was published with.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any

__all__ = ["EmbeddedBroker", "EmbeddedBrokerError", "broker_config"]

log = logging.getLogger(__name__)

MODULE = "gateway.adapters.embedded_broker"
READY = "listening on"
SHUTDOWN_TIMEOUT_S = 5.0


class EmbeddedBrokerError(RuntimeError):
    """The embedded broker did not start (the reason is in its log)."""


def broker_config(host: str, port: int) -> dict[str, Any]:
    """amqtt's configuration: one TCP listener, anonymous clients, and no other plugin (amqtt's defaults add
    $SYS topics and packet logging)."""
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }


class EmbeddedBroker:
    """The broker in a subprocess; use ``with EmbeddedBroker(...) as broker:`` or ``start()``/``stop()``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 1883, *, log_path: Path | None = None) -> None:
        if not 0 < port < 65536:
            raise ValueError(f"port {port}: a fixed TCP port is needed (clients are told it)")
        self.host, self.port, self.log_path = host, port, log_path
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> None:
        """Start the broker and wait until it listens; ``EmbeddedBrokerError`` when it does not."""
        if self._proc is not None:
            raise RuntimeError("the embedded broker is already started")
        log_file: IO[bytes] | int = self.log_path.open("ab") if self.log_path else subprocess.DEVNULL
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", MODULE, "--host", self.host, "--port", str(self.port)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log_file, start_new_session=True)
        finally:
            if not isinstance(log_file, int):
                log_file.close()
        line = _read_line(self._proc, timeout)
        if not line.startswith(READY):
            code = self._proc.poll()
            self.stop()
            where = f" (see {self.log_path})" if self.log_path else ""
            state = f"exited with code {code}" if code is not None else f"did not listen within {timeout:g} s"
            raise EmbeddedBrokerError(f"the embedded MQTT broker on {self.host}:{self.port} {state}{where}")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, and SIGKILL when the broker has not stopped within ``timeout``; its port is free after."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log.warning("the embedded MQTT broker did not stop within %g s of SIGTERM: killed", timeout)
                proc.kill()
                proc.wait()
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _read_line(proc: subprocess.Popen[bytes], timeout: float) -> str:
    """The first line the broker prints (its readiness), or "" at EOF or when ``timeout`` passes."""
    assert proc.stdout is not None
    fd, buffer, deadline = proc.stdout.fileno(), b"", time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while b"\n" not in buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not selector.select(left):
                return ""
            chunk = os.read(fd, 4096)
            if not chunk:
                return ""
            buffer += chunk
    return buffer.split(b"\n", 1)[0].decode(errors="replace")


# --- the subprocess -----------------------------------------------------------------------------------------


class _Eof(asyncio.Protocol):
    def __init__(self, stopping: asyncio.Event) -> None:
        self.stopping = stopping

    def connection_lost(self, exc: Exception | None) -> None:
        self.stopping.set()


async def _serve(host: str, port: int) -> None:
    from amqtt.broker import Broker

    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    broker = Broker(broker_config(host, port))
    await broker.start()
    print(f"{READY} {host}:{port}", flush=True)
    with contextlib.suppress(OSError, ValueError):  # stdin a regular file: nothing to watch
        # The demo holds the other end of stdin: EOF when it is gone.
        await loop.connect_read_pipe(lambda: _Eof(stopping), sys.stdin)
    await stopping.wait()
    try:
        await asyncio.wait_for(broker.shutdown(), SHUTDOWN_TIMEOUT_S)
    except TimeoutError:
        # amqtt's shutdown can hang (see the module docstring): exit anyway, which closes every socket.
        log.warning("amqtt did not shut down within %g s; exiting anyway", SHUTDOWN_TIMEOUT_S)
        logging.shutdown()
        os._exit(0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description="an amqtt broker for the demo")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the demo stops it (SIGTERM) once the gateway is gone
    # amqtt logs every connection at info, its state machine (transitions) every state change: warnings only.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    try:
        asyncio.run(_serve(args.host, args.port))
    except Exception as exc:  # noqa: BLE001 - reported in the log, the demo sees the exit code
        log.error("the embedded MQTT broker failed: %s", exc)
        sys.exit(1)


if __name__ == "__main__":
    main()
