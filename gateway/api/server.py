"""How the gateway's HTTP API is served: a hardened uvicorn configuration.

The protocol is ``GuardedHttpToolsProtocol`` (``gateway.api.guarded_protocol``): uvicorn's httptools protocol with a
deadline for receiving each whole request (408) and a strict limit on a request head's size (431).
``server_config`` builds the gateway's ``uvicorn.Config``; ``plaintext_warning`` flags clear-text API keys.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import uvicorn

from gateway.api.guarded_protocol import DEFAULT_MAX_HEAD_BYTES, DEFAULT_REQUEST_TIMEOUT, GuardedHttpToolsProtocol

__all__ = ["GatewayServerConfig", "is_loopback", "plaintext_warning", "server_config"]


class GatewayServerConfig(uvicorn.Config):
    """``uvicorn.Config`` plus the limits ``GuardedHttpToolsProtocol`` reads.

    Args:
        request_timeout: Seconds allowed to receive one complete request (head and body).
        max_head_bytes: Largest request head accepted, in bytes (None: no limit).
        *args, **kwargs: Go to uvicorn.
    """

    def __init__(
        self,
        *args: Any,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        max_head_bytes: int | None = DEFAULT_MAX_HEAD_BYTES,
        **kwargs: Any,
    ) -> None:
        if request_timeout <= 0:
            raise ValueError("request_timeout must be positive")
        self.request_timeout = float(request_timeout)
        self.max_head_bytes = max_head_bytes
        super().__init__(*args, **kwargs)


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
        max_header_bytes: Largest request head accepted, in bytes; a larger one is refused (431).
        log_level: uvicorn log level.
        **extra: Further ``uvicorn.Config`` keywords; they override the values chosen here.

    Returns:
        A ``GatewayServerConfig`` (a ``uvicorn.Config``) using ``GuardedHttpToolsProtocol``.

    Raises:
        ValueError: If only one of ``tls_certfile`` and ``tls_keyfile`` is given.
    """
    if (tls_certfile is None) != (tls_keyfile is None):
        raise ValueError("TLS needs both tls_certfile and tls_keyfile (only one was given)")
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "http": GuardedHttpToolsProtocol,
        "lifespan": "off",
        "timeout_keep_alive": keepalive_timeout_s,
        "server_header": False,
        "log_level": log_level,
        "ssl_certfile": tls_certfile,
        "ssl_keyfile": tls_keyfile,
    }
    options.update(extra)
    return GatewayServerConfig(
        app, request_timeout=request_timeout_s, max_head_bytes=max_header_bytes, **options
    )


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
