"""A small HTTP/1.1 JSON interface to change running simulated meters and read what they received.

Started by ``--control HOST:PORT`` on ``meter-gateway simulate modbus`` and ``simulate dlt645``, the same for
both protocols (docs/simulators.md has every route with an example). A meter is named either by its index in the
fleet (``0``, ``1`` ...: what fault plans use) or by its protocol identity (Modbus ``PORT/UNIT``, e.g. ``5020/3``,
or ``rtu/UNIT`` on a serial line; DL/T 645 the 12-digit address, e.g. ``000000000001``; exactly 12 digits is
always an address, never an index). Routes:

    GET  /                          what this is: protocol, number of meters, routes
    GET  /meters                    every meter's state
    GET  /meters/{id}               one meter's state
    POST /meters/{id}/energy        {"energy_wh": N}
    POST /meters/{id}/power         {"watts": W}   (null: back to the load profile)
    POST /meters/{id}/fault         {"kind": "no-answer"|"mute"|"relay-stuck"|"slow"|..., "on": true|false,
                                     "seconds": S, "code": C, "probability": P}   ("kind": "all" with "on": false
                                     heals every fault of the meter; "cover-open" / "terminal-cover-open" raise
                                     a tamper flag until switched off)
    POST /meters/{id}/trip-delay    {"seconds": S}
    POST /meters/{id}/protect       {"on": true|false}   (DL/T 645 only: 400 on Modbus)
    POST /meters/{id}/button        the customer presses the button (DL/T 645 only)
    GET  /relay-log?since=N&meter=ID   relay writes received after entry N (``simulators.relaylog``)

Answers are JSON; errors are ``{"error": "..."}`` with 400 (bad JSON or value), 404 (unknown meter or route),
405, 411, 413 or 500. A bad request never stops the simulator. The server runs on the simulator's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any, Self
from urllib.parse import parse_qs, unquote, urlsplit

from simulators.faults import Fault, FaultKind, FaultPlan
from simulators.handles import MeterHandle, Unsupported
from simulators.relaylog import RelayLog

__all__ = ["ControlServer", "HttpError", "parse_host_port"]

log = logging.getLogger(__name__)

MAX_HEAD = 16 * 1024
MAX_BODY = 64 * 1024
IDLE_TIMEOUT_S = 60.0
LINGER_S = 2.0
_OPS = ("energy", "power", "fault", "trip-delay", "protect", "button")
ROUTES = ("GET /meters", "GET /meters/{id}", *(f"POST /meters/{{id}}/{op}" for op in _OPS),
          "GET /relay-log?since=N&meter=ID")


class HttpError(Exception):
    """An error answer.

    Args:
        status: the HTTP status code.
        message: what went wrong, for the ``error`` field.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def parse_host_port(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (or ``:PORT`` for 127.0.0.1) as a pair; ValueError when malformed.

    Args:
        text: the ``--control`` value.
    """
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


def _number(body: dict[str, Any], key: str, *, minimum: float | None = None, default: Any = ...) -> Any:
    value = body.get(key, default)
    if value is ...:
        raise HttpError(400, f"{key!r} is required")
    if value is None and default is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise HttpError(400, f"{key!r} must be a number")
    if minimum is not None and value < minimum:
        raise HttpError(400, f"{key!r} must be at least {minimum:g}")
    return value


def _flag(body: dict[str, Any], key: str) -> bool:
    value = body.get(key, True)
    if not isinstance(value, bool):
        raise HttpError(400, f"{key!r} must be true or false")
    return value


class ControlServer:
    """The control interface of one simulator; an async context manager.

    Args:
        meters: the meters, in fleet-index order (``simulators.handles``).
        faults: the fleet's fault plan (changed by ``/fault``).
        relay_log: the simulator's relay log (read by ``/relay-log``).
        protocol: ``modbus`` or ``dlt645``, reported by ``GET /``.
    """

    def __init__(self, meters: Sequence[MeterHandle], faults: FaultPlan, relay_log: RelayLog, *,
                 protocol: str) -> None:
        self.meters = list(meters)
        self.faults = faults
        self.relay_log = relay_log
        self.protocol = protocol
        self._by_id = {m.id: m for m in self.meters}
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port: int | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Start listening.

        Args:
            host: the address to listen on.
            port: the TCP port; 0 picks a free one (see ``port`` afterwards).
        """
        self._server = await asyncio.start_server(self._connection, host, port, limit=MAX_HEAD)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("control interface on http://%s:%d (%d %s meters)", host, self.port, len(self.meters),
                 self.protocol)

    async def stop(self) -> None:
        """Stop listening and close every connection."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._writers):
            writer.close()
        if server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # --- HTTP -----------------------------------------------------------------------------------------------
    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while await self._exchange(reader, writer):
                pass
            # lingering close: read what the client still sends (a refused body), or closing would reset the
            # connection and could destroy the answer before the client reads it
            if writer.can_write_eof():
                writer.write_eof()
            await asyncio.wait_for(_discard(reader), LINGER_S)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        except Exception:  # never let one client take the simulator down
            log.exception("control interface: connection failed")
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False when the connection is to be closed."""
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IDLE_TIMEOUT_S)
        except asyncio.LimitOverrunError:
            await self._send(writer, 431, {"error": "request head too large"}, keep=False)
            return False
        except asyncio.IncompleteReadError:
            return False
        try:
            lines = head.decode("latin-1").split("\r\n")
            method, target, version = lines[0].split(" ")
            headers = dict(_header(line) for line in lines[1:] if line)
        except ValueError:
            await self._send(writer, 400, {"error": "malformed request"}, keep=False)
            return False
        keep = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
        if "transfer-encoding" in headers:
            await self._send(writer, 411, {"error": "send the body with a Content-Length"}, keep=False)
            return False
        length = headers.get("content-length", "0")
        if not length.isdigit():
            await self._send(writer, 400, {"error": "Content-Length is not a number"}, keep=False)
            return False
        if int(length) > MAX_BODY:
            await self._send(writer, 413, {"error": f"the body must be at most {MAX_BODY} bytes"}, keep=False)
            return False
        if int(length) and headers.get("expect", "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = await asyncio.wait_for(reader.readexactly(int(length)), IDLE_TIMEOUT_S)
        status, payload = self.handle(method, target, body)
        extra = {"Allow": "GET, POST"} if status == 405 else {}
        await self._send(writer, status, payload, keep=keep, extra=extra)
        return keep

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, status: int, payload: Any, *, keep: bool,
                    extra: dict[str, str] | None = None) -> None:
        body = json.dumps(payload, ensure_ascii=False).encode() + b"\n"
        head = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", "Content-Type: application/json",
                f"Content-Length: {len(body)}", "Cache-Control: no-store",
                f"Connection: {'keep-alive' if keep else 'close'}"]
        head += [f"{name}: {value}" for name, value in (extra or {}).items()]
        writer.write("\r\n".join(head).encode("latin-1") + b"\r\n\r\n" + body)
        await writer.drain()

    # --- routes ---------------------------------------------------------------------------------------------
    def handle(self, method: str, target: str, body: bytes) -> tuple[int, Any]:
        """The status and JSON answer of one request (no I/O; every error is an answer).

        Args:
            method: the HTTP method.
            target: the request target (path and query).
            body: the request body (JSON for the POST routes).
        """
        try:
            return 200, self._route(method, target, body)
        except HttpError as exc:
            return exc.status, {"error": exc.message}
        except Unsupported as exc:
            return 400, {"error": str(exc)}
        except Exception as exc:
            log.exception("control interface: %s %s failed", method, target)
            return 500, {"error": f"internal error: {type(exc).__name__}: {exc}"}

    def _route(self, method: str, target: str, body: bytes) -> Any:
        url = urlsplit(target)
        path = url.path.rstrip("/") or "/"
        if path == "/":
            self._allow(method, "GET")
            return {"protocol": self.protocol, "meters": len(self.meters),
                    "relay_writes": self.relay_log.last_index, "routes": list(ROUTES)}
        if path == "/meters":
            self._allow(method, "GET")
            return [m.snapshot(self.faults) for m in self.meters]
        if path == "/relay-log":
            self._allow(method, "GET")
            return self._relay_log(parse_qs(url.query))
        if not path.startswith("/meters/"):
            raise HttpError(404, f"no route {path}")
        rest = path.removeprefix("/meters/")
        name, _, op = rest.rpartition("/")
        if method == "GET" or op not in _OPS:
            self._allow(method, "GET")
            return self.meter(unquote(rest)).snapshot(self.faults)
        self._allow(method, "POST")
        meter = self.meter(unquote(name))
        data = self._json(body)
        match op:
            case "energy":
                meter.set_energy(_number(data, "energy_wh", minimum=0))
            case "power":
                meter.set_power(_number(data, "watts", default=None))
            case "fault":
                self._fault(meter, data)
            case "trip-delay":
                meter.set_trip_delay(_number(data, "seconds", minimum=0))
            case "protect":
                meter.set_protect(_flag(data, "on"))
            case _:  # button
                closed = meter.press_button()
                return meter.snapshot(self.faults) | {"button_closed": closed}
        return meter.snapshot(self.faults)

    @staticmethod
    def _allow(method: str, allowed: str) -> None:
        if method != allowed:
            raise HttpError(405, f"use {allowed} here")

    @staticmethod
    def _json(body: bytes) -> dict[str, Any]:
        if not body.strip():
            return {}
        try:
            data = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise HttpError(400, f"the body is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise HttpError(400, "the body must be a JSON object")
        return data

    def meter(self, name: str) -> MeterHandle:
        """The meter with this identity or fleet index; HttpError 404 when there is none.

        Args:
            name: an identity (``5020/3``, ``000000000001``) or an index (``0``).
        """
        found = self._by_id.get(name)
        if found is not None:
            return found
        if name.isdigit() and len(name) != 12 and int(name) < len(self.meters):
            return self.meters[int(name)]
        raise HttpError(404, f"no meter {name!r} (name one by index 0..{len(self.meters) - 1} or identity)")

    def _fault(self, meter: MeterHandle, data: dict[str, Any]) -> None:
        kind_text, on = data.get("kind"), _flag(data, "on")
        if kind_text == "all" and not on:
            self.faults.remove([meter.index])
            meter.clear_own_faults()
            return
        try:
            kind = FaultKind(kind_text)
        except ValueError:
            kinds = ", ".join(k.value for k in FaultKind)
            raise HttpError(400, f"unknown fault kind {kind_text!r} (kinds: {kinds}, or all to clear)") from None
        self.faults.remove([meter.index], kind)
        if not on:
            return
        try:
            seconds = _number(data, "seconds", minimum=0, default=0.0)
            fault = Fault(
                kind,
                delay_s=seconds if kind is FaultKind.SLOW else 0.0,
                after_s=seconds if kind is FaultKind.COUNTER_RESET else 0.0,
                code=int(_number(data, "code", default=4)),
                probability=_number(data, "probability", default=1.0),
            )
        except ValueError as exc:
            raise HttpError(400, str(exc)) from None
        self.faults.add(fault, meters=[meter.index])

    def _relay_log(self, query: dict[str, list[str]]) -> dict[str, Any]:
        since_text = query.get("since", ["0"])[-1]
        if not since_text.isdigit():
            raise HttpError(400, "since must be an entry number (0 or more)")
        entries = self.relay_log.since(int(since_text))
        if "meter" in query:
            wanted = self.meter(query["meter"][-1]).index
            entries = [e for e in entries if e.meter == wanted]
        return {"last_index": self.relay_log.last_index, "entries": [e.as_json() for e in entries]}


async def _discard(reader: asyncio.StreamReader, limit: int = 1 << 20) -> None:
    while limit > 0 and (chunk := await reader.read(65536)):
        limit -= len(chunk)


def _header(line: str) -> tuple[str, str]:
    name, sep, value = line.partition(":")
    if not sep or not name.strip():
        raise ValueError(line)
    return name.strip().lower(), value.strip()
