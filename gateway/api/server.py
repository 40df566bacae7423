"""How the gateway's HTTP API is served: a hardened uvicorn configuration.

uvicorn (h11 protocol) has no deadline for *receiving* a request: a connection that never sends a byte
stays open forever, and its keep-alive timer is cancelled by the first byte of the next request, so a
slowloris client (one header byte every few seconds) or a trickled body holds a socket indefinitely.
``GuardedH11Protocol`` adds one deadline: from the moment a connection opens, and again from the moment
each response completes, the next request (head *and* body) must be completely received within
``request_timeout`` seconds, or the connection is closed. uvicorn's ``timeout_keep_alive`` still applies.

h11's ``max_incomplete_event_size`` only bounds a head that is still *incomplete* in its buffer: a head
larger than the limit that arrives in one read is accepted. The protocol therefore also measures the
head itself and answers ``431`` when it exceeds ``h11_max_incomplete_event_size``.

``server_config`` builds the gateway's ``uvicorn.Config``; ``plaintext_warning`` flags clear-text API keys.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

DEFAULT_REQUEST_TIMEOUT = 10.0
_COMPLETE_STATES = (h11.DONE, h11.MUST_CLOSE, h11.ERROR, h11.CLOSED)
_HEAD_END = re.compile(rb"\n\r?\n")  # how h11 finds the blank line that ends a request head
_408 = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
_431 = b"HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"


class GatewayServerConfig(uvicorn.Config):
    """``uvicorn.Config`` plus ``request_timeout``: seconds allowed to receive one complete request.

    Args:
        request_timeout: Deadline in seconds, read by ``GuardedH11Protocol``; other arguments go to uvicorn.
    """

    def __init__(self, *args: Any, request_timeout: float = DEFAULT_REQUEST_TIMEOUT, **kwargs: Any) -> None:
        if request_timeout <= 0:
            raise ValueError("request_timeout must be positive")
        self.request_timeout = float(request_timeout)
        super().__init__(*args, **kwargs)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a whole-request receive deadline and a strict request-head size limit.

    The deadline is ``config.request_timeout`` (a ``GatewayServerConfig``; a plain ``uvicorn.Config``
    gets ``DEFAULT_REQUEST_TIMEOUT``). Completion is read from h11's ``their_state``.
    """

    def __init__(self, config: uvicorn.Config, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self.request_timeout = float(getattr(config, "request_timeout", DEFAULT_REQUEST_TIMEOUT))
        self.max_head_bytes: int | None = config.h11_max_incomplete_event_size
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        # Only while waiting for a head: bytes arriving mid-response are checked in on_response_complete.
        if self.conn.their_state is h11.IDLE and self._head_too_big(data):
            self._refuse(_431)
            return
        super().data_received(data)
        # complete, or upgraded to WebSocket (then the transport is no longer ours to police)
        if self.conn.their_state in _COMPLETE_STATES or self.transport.get_protocol() is not self:
            self._disarm()

    def on_response_complete(self) -> None:
        # Pipelined bytes buffered while their_state was DONE become the next head here: check them too.
        if self.conn.their_state is h11.DONE and self._head_too_big(b""):
            self._refuse(_431)
        super().on_response_complete()  # may start the next cycle and parse pipelined data
        if self.transport.is_closing() or self.conn.their_state in _COMPLETE_STATES:
            self._disarm()
        else:
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _head_too_big(self, data: bytes) -> bool:
        """Whether the request head now being received (h11's buffer plus ``data``) exceeds the limit."""
        if self.max_head_bytes is None:
            return False
        buffered = self.conn.trailing_data[0] + data
        if len(buffered) <= self.max_head_bytes:
            return False
        match = _HEAD_END.search(buffered)
        return (match.end() if match else len(buffered)) > self.max_head_bytes

    def _refuse(self, response: bytes) -> None:
        if not self.transport.is_closing():
            self.logger.warning("Request head larger than %s bytes refused.", self.max_head_bytes)
            self.transport.write(response)
            self.transport.close()

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.request_timeout, self._on_deadline)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _on_deadline(self) -> None:
        self._deadline = None
        if self.transport.is_closing() or self.conn.their_state in _COMPLETE_STATES:
            return
        partial = self.conn.their_state is h11.SEND_BODY or bool(self.conn.trailing_data[0])
        no_response_yet = self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE)  # SEND_BODY: app began one
        if partial and no_response_yet:
            self.logger.info("Request not received within %ss: 408.", self.request_timeout)
            self.transport.write(_408)
        self.transport.close()  # connection_lost tells a running app that the client is gone


def server_config(
    app: Any,
    *,
    host: str,
    port: int,
    tls_certfile: str | None = None,
    tls_keyfile: str | None = None,
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT,
    keepalive_timeout_s: float = 5.0,
    max_header_bytes: int = 16384,
    log_level: str = "warning",
    **extra: Any,
) -> uvicorn.Config:
    """Build the uvicorn configuration the gateway's API is served with.

    Args:
        app: The ASGI application.
        host: Address to bind.
        port: TCP port to bind.
        tls_certfile: PEM certificate (chain); TLS is on when given together with ``tls_keyfile``.
        tls_keyfile: PEM private key for ``tls_certfile``.
        request_timeout_s: Seconds to receive a whole request (head and body), counted from the
            connection opening and from each completed response.
        keepalive_timeout_s: uvicorn's idle time allowed between requests on a kept-alive connection.
        max_header_bytes: Largest request head accepted; larger heads are refused (431/400).
        log_level: uvicorn log level.
        **extra: Further ``uvicorn.Config`` keywords; they override the values chosen here.

    Returns:
        A ``GatewayServerConfig`` (a ``uvicorn.Config``) using ``GuardedH11Protocol``.

    Raises:
        ValueError: If only one of ``tls_certfile`` and ``tls_keyfile`` is given.
    """
    if (tls_certfile is None) != (tls_keyfile is None):
        raise ValueError("TLS needs both tls_certfile and tls_keyfile (only one was given)")
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "http": GuardedH11Protocol,
        "lifespan": "off",
        "h11_max_incomplete_event_size": max_header_bytes,
        "timeout_keep_alive": keepalive_timeout_s,
        "server_header": False,
        "log_level": log_level,
        "ssl_certfile": tls_certfile,
        "ssl_keyfile": tls_keyfile,
    }
    options.update(extra)
    return GatewayServerConfig(app, request_timeout=request_timeout_s, **options)


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine.

    Args:
        host: A bind address or host name ("127.0.0.1", "::1", "localhost", "0.0.0.0", ...).
    """
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def plaintext_warning(host: str, tls: bool) -> str | None:
    """A one-line warning when the API would listen beyond loopback without TLS, else None.

    Args:
        host: The bind address.
        tls: Whether TLS is configured.
    """
    if tls or is_loopback(host):
        return None
    return (
        f"the API listens on {host} without TLS: API keys travel in clear text; "
        "set api.tls_certfile and api.tls_keyfile, or put a TLS proxy in front"
    )
