"""The HTTP protocol the gateway's API is served with: uvicorn's httptools protocol, guarded.

The API is served by uvicorn's httptools protocol (the C parser llhttp): parsing a request and writing its
answer there costs a fraction of what the pure-Python h11 protocol costs. ``GuardedHttpToolsProtocol`` adds
two protections uvicorn lacks.

A deadline for *receiving* a request: uvicorn's keep-alive timer is cancelled by any byte, so a connection
that never sends one stays open until keep-alive ends, and a slowloris client (one header byte every few
seconds) or a trickled body holds a socket indefinitely. From the moment a connection opens, and again from
the moment each response completes, the next request (head *and* body) must be completely received within
``request_timeout`` seconds, or the connection is closed (``408`` first when part of a request came and no
answer has begun). uvicorn's ``timeout_keep_alive`` still applies.

A strict limit on the size of a request head: llhttp has none, and httptools buffers a header's name and
value until it is whole. The protocol counts the bytes of each head (request line to blank line) as they
arrive, across reads and across pipelined requests, and answers ``431`` and closes when a head exceeds
``max_head_bytes``; the head never reaches the application.

The configuration that uses it: ``gateway.api.server``.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httptools
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["DEFAULT_MAX_HEAD_BYTES", "DEFAULT_REQUEST_TIMEOUT", "GuardedHttpToolsProtocol"]

DEFAULT_REQUEST_TIMEOUT = 10.0
DEFAULT_MAX_HEAD_BYTES = 16384
_HEAD_END = b"\r\n\r\n"  # llhttp (strict) ends a head with CRLF CRLF only: a bare LF is refused with 400
_EMPTY_LINES = re.compile(rb"[\r\n]*")
_408 = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
_431 = b"HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"


class _HeadTooLarge(Exception):
    """Raised in a parser callback to stop llhttp before an oversized head reaches the application."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a whole-request receive deadline and a strict limit on head size.

    The limits are ``config.request_timeout`` and ``config.max_head_bytes`` (a ``GatewayServerConfig``; a
    plain ``uvicorn.Config`` gets the defaults).

    Where a head lies: llhttp reports no byte offsets, so each read is followed along. A head that starts a
    read (or continues one) starts at its first byte; one that follows a request in the same read
    (pipelining) starts where that request's body ends: the body's start plus the bytes ``on_body`` gave,
    exact for a ``Content-Length`` body or none. After a chunked body the framing bytes are unknown, so the
    head is taken to start at that lower bound and to end at the end of the read: an overestimate (never
    under), only for a request pipelined behind a chunked one.
    """

    def __init__(self, config: uvicorn.Config, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self.request_timeout = float(getattr(config, "request_timeout", DEFAULT_REQUEST_TIMEOUT))
        self.max_head_bytes: int | None = getattr(config, "max_head_bytes", DEFAULT_MAX_HEAD_BYTES)
        self._deadline: asyncio.TimerHandle | None = None
        self._received = 0  # requests completely received ...
        self._answered = 0  # ... and responses completed: more received means the next request is here
        self._refused = False
        # Following the head through the reads (see the class docstring):
        self._data = b""  # the read being parsed
        self._in_head = True  # between two requests or inside a head (not yet on_headers_complete)
        self._carried = 0  # bytes of the current head received in earlier reads
        self._tail = b""  # its last 3 bytes (a CRLF CRLF may straddle two reads)
        self._head_start = 0  # where the current head starts in this read (negative: in an earlier one)
        self._exact = True  # False: the head follows a chunked body in this read (_head_start: a lower bound)
        self._begun = False  # on_message_begin seen for the current head
        self._body_start = 0  # where the current body starts in this read
        self._body_seen = 0  # body bytes on_body gave in this read
        self._chunked = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # uvicorn's, plus the bookkeeping of where heads lie and the refusal of one too large
        if self._refused:
            return
        self._unset_keepalive_if_required()
        self._data = data
        self._head_start, self._exact = -self._carried, True
        self._body_start = self._body_seen = 0
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError:
            if not self._refused:  # an exception from uvicorn's callbacks: uvicorn's answer
                self.logger.warning("Invalid HTTP request received.")
                self.send_400_response("Invalid HTTP request received.")
            return
        except httptools.HttpParserError:
            self.logger.warning("Invalid HTTP request received.")
            self.send_400_response("Invalid HTTP request received.")
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        if self._in_head:  # a head is incomplete at the end of this read: count what came of it
            start = self._head_start
            if start >= 0 and self._exact:
                start = _skip_crlf(data, start)
            elif start >= 0 and not self._begun:
                start = len(data)  # after a chunked body: nothing of the next request yet
            self._carried = len(data) - start
            self._tail = ((self._tail if start < 0 else b"") + data[max(start, 0) :])[-3:]
            if self._over_limit(self._carried):
                self._refuse()

    def on_message_begin(self) -> None:
        self._begun = True
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        end = self._head_end()
        if self._over_limit(end - self._head_start):
            self._refuse()
            raise _HeadTooLarge  # stops llhttp: nothing more of this connection is parsed
        self._in_head, self._carried, self._tail = False, 0, b""
        # after a chunked body, only a lower bound stays one: that of the head
        self._body_start, self._body_seen = (end if self._exact else self._head_start), 0
        self._chunked = any(name == b"transfer-encoding" for name, _ in self.headers)
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._body_seen += len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._received += 1
        if self._received > self._answered:
            self._disarm()  # complete; its answer is pending
        # else it was answered before it was whole: the deadline armed then now runs for the next request
        self._in_head, self._begun = True, False
        self._head_start = self._body_start + self._body_seen
        self._exact = self._exact and not self._chunked
        super().on_message_complete()

    def on_response_complete(self) -> None:
        self._answered += 1
        super().on_response_complete()  # may start the next pipelined request
        if self._refused:
            self._refuse()  # answers 431 once every request before the refused head is answered
        if self.transport.is_closing() or self._received > self._answered:
            self._disarm()  # closing, or the next request is already here
        else:
            self._arm()

    def handle_websocket_upgrade(self) -> None:
        self._disarm()  # the transport is no longer ours to police
        super().handle_websocket_upgrade()

    def _head_end(self) -> int:
        """Where, in this read, the head just completed ends (past its CRLF CRLF)."""
        data = self._data
        if not self._exact:
            return len(data)  # an upper bound: see the class docstring
        if self._head_start < 0:  # began in an earlier read
            found = (self._tail + data).find(_HEAD_END)
            return len(data) if found < 0 else found + 4 - len(self._tail)
        found = data.find(_HEAD_END, _skip_crlf(data, self._head_start))
        return len(data) if found < 0 else found + 4

    def _over_limit(self, size: int) -> bool:
        return self.max_head_bytes is not None and size > self.max_head_bytes

    def _refuse(self) -> None:
        """431 and close; after the answers to the requests before the head, when some are pending."""
        if not self._refused:
            self._refused = True
            self.logger.warning("Request head larger than %s bytes refused.", self.max_head_bytes)
            self.flow.pause_reading()
        pending = self.pipeline or (self.cycle is not None and not self.cycle.response_complete)
        if not pending and not self.transport.is_closing():
            self.transport.write(_431)
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
        if self.transport.is_closing():
            return
        if self._in_head:  # the responses before are complete (armed then): a partial head has no answer
            partial, answering = self._carried > 0, False
        else:  # a head came, its body did not
            partial, answering = True, self.cycle is not None and self.cycle.response_started
        if partial and not answering and not self._refused:
            self.logger.info("Request not received within %ss: 408.", self.request_timeout)
            self.transport.write(_408)
        self.transport.close()  # connection_lost tells a running app that the client is gone


def _skip_crlf(data: bytes, start: int) -> int:
    """``start`` moved past the empty lines llhttp allows before a request."""
    match = _EMPTY_LINES.match(data, start)
    return match.end() if match else start
