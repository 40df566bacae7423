"""gateway.api.server and gateway.api.guarded_protocol through real sockets against a real uvicorn server
(httptools protocol): request deadline (idle, slowloris, slow body, re-armed after each response), keep-alive,
pipelining, request-head size limit (in one read, across reads, behind pipelined requests), TLS, and the
loopback / plain-text warning helpers."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request, Response
from starlette.requests import ClientDisconnect

from gateway.api.guarded_protocol import GuardedHttpToolsProtocol
from gateway.api.server import GatewayServerConfig, is_loopback, plaintext_warning, server_config
from tests.support import async_wait_until, free_port, require_tool

HEAD = b"GET /ok HTTP/1.1\r\nHost: test\r\n\r\n"
LIMIT = 16384  # max_header_bytes of the size tests


def head_of(size: int, path: bytes = b"/ok", extra: bytes = b"") -> bytes:
    """A GET head of exactly ``size`` bytes, request line to blank line."""
    start = b"GET " + path + b" HTTP/1.1\r\nHost: test\r\n" + extra + b"X-Pad: "
    head = start + b"a" * (size - len(start) - 4) + b"\r\n\r\n"
    assert len(head) == size
    return head


def make_app() -> FastAPI:
    app = FastAPI()

    app.state.served = 0  # requests that reached the application

    @app.get("/ok")
    async def ok(request: Request) -> dict[str, Any]:
        request.app.state.served += 1
        return {"ok": True, "client_port": request.client.port if request.client else None}

    @app.post("/echo")
    async def echo(request: Request) -> Any:
        try:
            return {"length": len(await request.body())}
        except ClientDisconnect:  # the deadline closed the connection: nobody to answer
            return Response(status_code=499)

    @app.get("/slow")
    async def slow() -> dict[str, bool]:
        await asyncio.sleep(0.8)
        return {"slow": True}

    return app


@contextlib.asynccontextmanager
async def serving(**kwargs: Any) -> AsyncIterator[int]:
    """Run a real uvicorn server with ``server_config`` in this event loop; yield its port."""
    async with serving_server(**kwargs) as (port, _):
        yield port


@contextlib.asynccontextmanager
async def serving_server(**kwargs: Any) -> AsyncIterator[tuple[int, uvicorn.Server]]:
    """``serving``, yielding the port and the ``uvicorn.Server`` (its config's app, its connections)."""
    port = free_port()
    server = uvicorn.Server(server_config(make_app(), host="127.0.0.1", port=port, **kwargs))
    task = asyncio.create_task(server.serve())
    try:
        await async_wait_until(lambda: server.started or task.done(), timeout=10, what="uvicorn to start")
        if not server.started:
            task.result()  # raises what made serve() fail
            pytest.fail("uvicorn stopped without starting")
        yield port, server
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=10)


async def read_until_closed(reader: asyncio.StreamReader, timeout: float = 5.0) -> bytes:
    """Everything the server sends until it closes the connection (a reset counts as closed)."""
    chunks: list[bytes] = []
    with contextlib.suppress(ConnectionResetError):
        while chunk := await asyncio.wait_for(reader.read(65536), timeout):
            chunks.append(chunk)
    return b"".join(chunks)


async def close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def trickle(writer: asyncio.StreamWriter, data: bytes, interval: float = 0.1) -> int:
    """Send ``data`` one byte every ``interval`` seconds until done or the server hangs up; bytes sent."""
    sent = 0
    with contextlib.suppress(OSError):
        for i in range(len(data)):
            writer.write(data[i : i + 1])
            await writer.drain()
            sent += 1
            await asyncio.sleep(interval)
    return sent


async def test_connection_sending_nothing_is_closed_after_request_timeout() -> None:
    async with serving(request_timeout_s=0.5, keepalive_timeout_s=30) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        start = time.monotonic()
        data = await read_until_closed(reader, timeout=5)
        elapsed = time.monotonic() - start
        await close_writer(writer)
    assert data == b""  # nothing of a request arrived: a plain close, no 408
    assert 0.4 <= elapsed < 5


async def test_partial_head_then_silence_gets_408() -> None:
    async with serving(request_timeout_s=0.5, keepalive_timeout_s=30) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /ok HTTP/1.1\r\nHost: test\r\n")
        await writer.drain()
        data = await read_until_closed(reader, timeout=5)
        await close_writer(writer)
    assert data.startswith(b"HTTP/1.1 408 ")
    assert b"connection: close" in data.lower()


async def test_slowloris_head_is_closed_although_bytes_keep_coming() -> None:
    async with serving(request_timeout_s=0.5, keepalive_timeout_s=30) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        start = time.monotonic()
        sender = asyncio.create_task(
            trickle(writer, b"GET /ok HTTP/1.1\r\nHost: test\r\nX-Pad: " + b"a" * 200)
        )
        data = await read_until_closed(reader, timeout=5)
        elapsed = time.monotonic() - start
        sent = await asyncio.wait_for(sender, timeout=5)
        await close_writer(writer)
    assert 0.4 <= elapsed < 5
    assert sent >= 3  # it really kept sending before the deadline hit
    assert data.startswith(b"HTTP/1.1 408 ")


async def test_slow_body_is_closed() -> None:
    async with serving(request_timeout_s=0.5, keepalive_timeout_s=30) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 100\r\n\r\n")
        start = time.monotonic()
        sender = asyncio.create_task(trickle(writer, b"x" * 100))
        data = await read_until_closed(reader, timeout=5)
        elapsed = time.monotonic() - start
        sent = await asyncio.wait_for(sender, timeout=5)
        await close_writer(writer)
    assert 0.4 <= elapsed < 5
    assert sent < 100
    assert data.startswith(b"HTTP/1.1 408 ")  # the app was still reading the body: no answer had begun


async def test_body_arriving_within_deadline_is_served() -> None:
    async with serving(request_timeout_s=1.0, keepalive_timeout_s=5) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 10\r\nConnection: close\r\n\r\nhello"
        )
        await writer.drain()
        await asyncio.sleep(0.2)  # a pause inside the request, well within the deadline
        writer.write(b"world")
        data = await read_until_closed(reader, timeout=5)
        await close_writer(writer)
    assert data.startswith(b"HTTP/1.1 200 ")
    assert data.endswith(b'{"length":10}')


async def test_keepalive_client_reuses_connection_across_requests() -> None:
    ports = set()
    async with serving(request_timeout_s=1.0, keepalive_timeout_s=2) as port, httpx.AsyncClient() as client:
        for i in range(4):
            response = await client.get(f"http://127.0.0.1:{port}/ok")
            assert response.status_code == 200
            assert "server" not in response.headers  # server_header=False
            ports.add(response.json()["client_port"])
            echoed = await client.post(f"http://127.0.0.1:{port}/echo", content=b"z" * (1000 * i))
            assert echoed.json() == {"length": 1000 * i}
            await asyncio.sleep(0.2)
    assert len(ports) == 1  # one kept-alive connection served everything


async def test_slow_handler_is_not_cut_by_the_request_deadline() -> None:
    async with serving(request_timeout_s=0.3, keepalive_timeout_s=5) as port, httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{port}/slow")  # 0.8 s once the request is complete
        assert response.json() == {"slow": True}
        assert (await client.get(f"http://127.0.0.1:{port}/ok")).status_code == 200


async def test_pipelined_requests_are_all_answered() -> None:
    async with serving(request_timeout_s=1.0, keepalive_timeout_s=5) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(HEAD + HEAD + b"GET /ok HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        data = await read_until_closed(reader, timeout=5)
        await close_writer(writer)
    assert data.count(b"HTTP/1.1 200 ") == 3


async def test_pipelined_requests_after_bodies_are_answered() -> None:
    post = b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\n\r\nhello"
    chunked = b"POST /echo HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    last = b"GET /ok HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    async with serving(request_timeout_s=2.0, keepalive_timeout_s=5) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(post + chunked + HEAD + last)
        data = await read_until_closed(reader, timeout=5)
        await close_writer(writer)
    assert data.count(b"HTTP/1.1 200 ") == 4
    assert data.index(b'{"length":5}') < data.index(b'{"length":5}', data.index(b'{"length":5}') + 1)

@pytest.mark.parametrize(("request_timeout", "keepalive"), [(0.5, 30), (30, 0.5)], ids=["deadline", "keepalive"])
async def test_idle_connection_after_responses_is_closed(request_timeout: float, keepalive: float) -> None:
    async with serving(request_timeout_s=request_timeout, keepalive_timeout_s=keepalive) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(2):  # the deadline (or keep-alive) of the first request does not cut the second
            writer.write(HEAD)
            await writer.drain()
            status = await asyncio.wait_for(reader.readuntil(b"\r\n"), timeout=5)
            assert status.startswith(b"HTTP/1.1 200 ")
            await asyncio.wait_for(reader.readuntil(b"}"), timeout=5)
        start = time.monotonic()
        rest = await read_until_closed(reader, timeout=5)  # EOF: asyncio.TimeoutError if nothing closes it
        elapsed = time.monotonic() - start
        await close_writer(writer)
    assert rest == b""  # nothing of a request was pending: a plain close
    assert 0.3 <= elapsed < 5


async def test_deadline_rearmed_after_response_catches_slowloris_on_kept_alive_connection() -> None:
    async with serving(request_timeout_s=0.5, keepalive_timeout_s=30) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(HEAD)
        await writer.drain()
        await asyncio.wait_for(reader.readuntil(b'"client_port"'), timeout=5)
        start = time.monotonic()
        sender = asyncio.create_task(trickle(writer, b"GET /ok HTTP/1.1\r\nX-Pad: " + b"a" * 200))
        data = await read_until_closed(reader, timeout=5)
        elapsed = time.monotonic() - start
        sent = await asyncio.wait_for(sender, timeout=5)
        await close_writer(writer)
    assert 0.3 <= elapsed < 5  # uvicorn's keep-alive (30 s) would not have closed it: the deadline did
    assert sent >= 3
    after_first_response = data.split(b"}", 1)[1]
    assert after_first_response.startswith(b"HTTP/1.1 408 ")


async def head_response(port: int, head: bytes) -> bytes:
    """Send ``head`` in one write; everything the server answers until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    with contextlib.suppress(OSError):
        writer.write(head)
        await writer.drain()
    data = await read_until_closed(reader, timeout=5)
    await close_writer(writer)
    return data


async def head_response_in_reads(port: int, server: uvicorn.Server, head: bytes, parts: int) -> bytes:
    """Send ``head`` in ``parts`` pieces, each once the server has read the one before (so each is a read of
    its own); everything the server answers until it closes."""
    protocols = server.server_state.connections
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    size = -(-len(head) // parts)
    pieces = [head[i : i + size] for i in range(0, len(head), size)]
    sent = 0
    with contextlib.suppress(OSError):
        for piece in pieces:
            if sent:  # the server holds all sent so far as the head being received
                await async_wait_until(
                    lambda: any(getattr(p, "_carried", 0) >= sent for p in protocols),
                    timeout=5,
                    what="the server to read the part",
                )
            writer.write(piece)
            await writer.drain()
            sent += len(piece)
    data = await read_until_closed(reader, timeout=5)
    await close_writer(writer)
    return data


async def test_request_head_over_max_header_bytes_in_one_read_is_refused() -> None:
    async with serving_server(request_timeout_s=2.0, max_header_bytes=LIMIT) as (port, server):
        refused = await head_response(port, head_of(LIMIT + 1))
        huge = await head_response(port, head_of(200_000))
        app = server.config.app
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            still_serving = await client.get("/ok")
    assert refused == b"HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    assert huge.startswith(b"HTTP/1.1 431 ")
    assert still_serving.status_code == 200
    assert app.state.served == 1  # the refused heads never reached the application


async def test_request_head_of_max_header_bytes_is_served() -> None:
    fits = head_of(LIMIT, extra=b"Connection: close\r\n")
    async with serving_server(request_timeout_s=2.0, max_header_bytes=LIMIT) as (port, server):
        accepted = await head_response(port, fits)
        in_reads = await head_response_in_reads(port, server, fits, parts=4)
    assert accepted.startswith(b"HTTP/1.1 200 ")
    assert in_reads.startswith(b"HTTP/1.1 200 ")


@pytest.mark.parametrize("parts", [2, 5])
async def test_request_head_over_max_header_bytes_across_reads_is_refused(parts: int) -> None:
    async with serving_server(request_timeout_s=2.0, max_header_bytes=LIMIT) as (port, server):
        refused = await head_response_in_reads(port, server, head_of(LIMIT + 1), parts)
        app = server.config.app
    assert refused.startswith(b"HTTP/1.1 431 ")
    assert app.state.served == 0


async def test_incomplete_head_over_max_header_bytes_is_refused_before_it_ends() -> None:
    async with serving(request_timeout_s=5.0, max_header_bytes=LIMIT) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /ok HTTP/1.1\r\nX-Big: " + b"a" * (LIMIT + 10))  # no end of head in sight
        await writer.drain()
        start = time.monotonic()
        data = await read_until_closed(reader, timeout=5)
        elapsed = time.monotonic() - start
        await close_writer(writer)
    assert data.startswith(b"HTTP/1.1 431 ")
    assert elapsed < 2.5  # refused on arrival, not at the deadline (5 s)


@pytest.mark.parametrize(
    "before",
    [HEAD, b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 7\r\n\r\n\r\n\r\n\r\nx"],
    ids=["after-get", "after-body"],
)
async def test_pipelined_head_is_measured_exactly(before: bytes) -> None:
    last = b"Connection: close\r\n"
    async with serving_server(request_timeout_s=2.0, max_header_bytes=LIMIT) as (port, server):
        fits = await head_response(port, before + head_of(LIMIT, extra=last))
        refused = await head_response(port, before + head_of(LIMIT + 1, extra=last))
    assert fits.count(b"HTTP/1.1 200 ") == 2
    assert refused.count(b"HTTP/1.1 200 ") == 1
    assert refused.index(b"HTTP/1.1 200 ") < refused.index(b"HTTP/1.1 431 ")  # answered first, then refused


async def test_oversized_head_pipelined_behind_a_slow_request_waits_for_its_answer() -> None:
    slow = b"GET /slow HTTP/1.1\r\nHost: test\r\n\r\n"
    async with serving(request_timeout_s=2.0, max_header_bytes=LIMIT) as port:
        data = await head_response(port, slow + HEAD + head_of(LIMIT + 1))
    assert data.startswith(b"HTTP/1.1 200 ")
    assert data.count(b"HTTP/1.1 200 ") == 2 and b'{"slow":true}' in data
    assert data.endswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")


async def test_malformed_request_gets_400() -> None:
    async with serving(request_timeout_s=2.0) as port:
        bare_lf = await head_response(port, b"GET /ok HTTP/1.1\nHost: test\n\n")
        bad_name = await head_response(port, b"GET /ok HTTP/1.1\r\nBad Name: x\r\n\r\n")
    assert bare_lf.startswith(b"HTTP/1.1 400 ")
    assert bad_name.startswith(b"HTTP/1.1 400 ")


@pytest.fixture
def self_signed(tmp_path: Path) -> tuple[str, str]:
    openssl = require_tool("openssl")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return str(cert), str(key)


async def test_tls(self_signed: tuple[str, str]) -> None:
    cert, key = self_signed
    context = ssl.create_default_context(cafile=cert)
    async with serving(tls_certfile=cert, tls_keyfile=key, request_timeout_s=0.5) as port:
        async with httpx.AsyncClient(verify=context) as client:
            response = await client.get(f"https://127.0.0.1:{port}/ok")
        assert response.status_code == 200
        async with httpx.AsyncClient() as client:
            with pytest.raises(httpx.HTTPError):
                await client.get(f"http://127.0.0.1:{port}/ok", timeout=5)
        # the deadline also applies behind TLS: an idle TLS connection is closed
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
        data = await read_until_closed(reader, timeout=5)
        writer.transport.abort()
    assert data == b""


def test_server_config_options() -> None:
    config = server_config(make_app(), host="127.0.0.1", port=1, request_timeout_s=3, timeout_keep_alive=7)
    assert isinstance(config, GatewayServerConfig)
    assert config.http is GuardedHttpToolsProtocol
    assert config.request_timeout == 3.0
    assert config.timeout_keep_alive == 7  # extra overrides keepalive_timeout_s
    assert config.max_head_bytes == 16384
    assert (config.lifespan, config.server_header, config.ssl_certfile) == ("off", False, None)


def test_server_config_needs_both_tls_files() -> None:
    with pytest.raises(ValueError, match="tls_certfile and tls_keyfile"):
        server_config(make_app(), host="127.0.0.1", port=1, tls_certfile="cert.pem")
    with pytest.raises(ValueError):
        server_config(make_app(), host="127.0.0.1", port=1, tls_keyfile="key.pem")


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.10", False),
        ("gw.example", False),
    ],
)
def test_is_loopback(host: str, expected: bool) -> None:
    assert is_loopback(host) is expected


def test_plaintext_warning() -> None:
    warning = plaintext_warning("0.0.0.0", tls=False)
    assert warning is not None and "0.0.0.0" in warning and "TLS" in warning and "\n" not in warning
    assert plaintext_warning("::", tls=False) is not None
    assert plaintext_warning("0.0.0.0", tls=True) is None
    assert plaintext_warning("127.0.0.1", tls=False) is None
    assert plaintext_warning("localhost", tls=False) is None
