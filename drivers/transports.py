"""Byte streams for DL/T 645: a serial port (pyserial-asyncio-fast) or a TCP serial-to-Ethernet converter.

A transport only opens, writes, hands over received bytes and closes; framing is the codec's job.
It opens lazily and reopens after the link was lost, so a driver can simply retry on the next poll.
Failures become ``drivers.errors.ConnectError``; waiting too long for bytes becomes ``MeterTimeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import termios
import urllib.parse
from collections.abc import Iterator
from typing import Any, Self

import serial
import serial_asyncio_fast

from drivers.errors import ConnectError, MeterTimeout

__all__ = ["ByteTransport", "SerialTransport", "TcpTransport", "transport_from_url"]


class _BufferProtocol(asyncio.Protocol):
    """Collects received bytes; wakes a reader; remembers why the link went away."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.data_event = asyncio.Event()
        self.lost: BaseException | None = None
        self.closed = False
        self._can_write = asyncio.Event()
        self._can_write.set()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self.data_event.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.lost = exc
        self.data_event.set()
        self._can_write.set()

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    async def drain(self) -> None:
        await self._can_write.wait()


@contextlib.contextmanager
def _map_open_errors(description: str) -> Iterator[None]:
    try:
        yield
    # termios.error (not an OSError) comes from pyserial's configure step, e.g. parity E on a pty.
    except (OSError, serial.SerialException, termios.error, ValueError) as exc:
        raise ConnectError(f"cannot open {description}: {exc}") from exc


class ByteTransport:
    """One bidirectional byte stream. Subclasses implement ``_connect``.

    Args:
        connect_timeout: seconds allowed to open the port or connect the socket.
    """

    description = "transport"

    def __init__(self, *, connect_timeout: float = 5.0) -> None:
        self.connect_timeout = connect_timeout
        self._transport: asyncio.BaseTransport | None = None
        self._protocol: _BufferProtocol | None = None

    async def _connect(self) -> tuple[asyncio.BaseTransport, _BufferProtocol]:
        raise NotImplementedError("The '_connect' method must be implemented.")

    @property
    def is_open(self) -> bool:
        return self._protocol is not None and not self._protocol.closed

    async def open(self) -> None:
        """Open if not open (again after a lost link)."""
        if self.is_open:
            return
        await self.aclose()
        try:
            async with asyncio.timeout(self.connect_timeout):
                with _map_open_errors(self.description):
                    self._transport, self._protocol = await self._connect()
        except TimeoutError:
            raise ConnectError(f"timed out opening {self.description}") from None

    def _live_protocol(self) -> _BufferProtocol:
        if self._protocol is None or self._protocol.closed:
            lost = self._protocol.lost if self._protocol else None
            raise ConnectError(f"{self.description} is closed{f': {lost}' if lost else ''}")
        return self._protocol

    async def write(self, data: bytes) -> None:
        protocol = self._live_protocol()
        assert self._transport is not None
        try:
            self._transport.write(data)  # type: ignore[attr-defined]
        except (OSError, serial.SerialException) as exc:
            await self.aclose()
            raise ConnectError(f"write to {self.description} failed: {exc}") from exc
        await protocol.drain()

    def discard_input(self) -> int:
        """Drop bytes received so far (late answers, echoes); returns how many."""
        if self._protocol is None:
            return 0
        n = len(self._protocol.buffer)
        self._protocol.buffer.clear()
        self._protocol.data_event.clear()
        return n

    async def read(self, *, timeout: float) -> bytes:
        """Whatever bytes arrived, waiting up to ``timeout`` for at least one; ``MeterTimeout`` otherwise."""
        protocol = self._live_protocol()
        if not protocol.buffer:
            protocol.data_event.clear()
            try:
                async with asyncio.timeout(timeout):
                    await protocol.data_event.wait()
            except TimeoutError:
                raise MeterTimeout(f"no bytes from {self.description} within {timeout:.3f}s") from None
        data = bytes(protocol.buffer)
        protocol.buffer.clear()
        if not data:
            self._live_protocol()  # woken by connection_lost: raise ConnectError
        return data

    async def aclose(self) -> None:
        transport, self._transport, self._protocol = self._transport, None, None
        if transport is not None:
            transport.close()
            await asyncio.sleep(0)  # let the loop run connection_lost

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.description}>"


class SerialTransport(ByteTransport):
    """A serial port, by device path or any pyserial URL the async layer supports (``socket://host:port``).

    Args:
        port: device path (``/dev/ttyUSB0``) or URL (``socket://10.0.0.5:4001``; serial settings are then ignored).
        baudrate: DL/T 645 meters use 2400 by default.
        bytesize, parity, stopbits: 8E1 by default. Use parity ``"N"`` on a pty: ptys refuse parity E.
    """

    def __init__(
        self,
        port: str,
        *,
        baudrate: int = 2400,
        bytesize: int = 8,
        parity: str = "E",
        stopbits: float = 1,
        connect_timeout: float = 5.0,
    ) -> None:
        super().__init__(connect_timeout=connect_timeout)
        self.port = port
        self.settings: dict[str, Any] = {
            "baudrate": baudrate,
            "bytesize": bytesize,
            "parity": parity,
            "stopbits": stopbits,
        }
        self.description = f"{port} ({baudrate} {bytesize}{parity}{stopbits:g})"

    async def _connect(self) -> tuple[asyncio.BaseTransport, _BufferProtocol]:
        loop = asyncio.get_running_loop()
        transport, protocol = await serial_asyncio_fast.create_serial_connection(
            loop, _BufferProtocol, self.port, **self.settings
        )
        assert isinstance(protocol, _BufferProtocol)
        return transport, protocol


class TcpTransport(ByteTransport):
    """A raw TCP byte stream, e.g. a serial-to-Ethernet converter in transparent mode.

    Args:
        host, port: the converter's address.
    """

    def __init__(self, host: str, port: int, *, connect_timeout: float = 5.0) -> None:
        super().__init__(connect_timeout=connect_timeout)
        self.host = host
        self.port = port
        self.description = f"tcp://{host}:{port}"

    async def _connect(self) -> tuple[asyncio.BaseTransport, _BufferProtocol]:
        loop = asyncio.get_running_loop()
        return await loop.create_connection(_BufferProtocol, self.host, self.port)


def transport_from_url(url: str, **serial_options: Any) -> ByteTransport:
    """``tcp://host:port`` → ``TcpTransport``; anything else (a path, ``socket://…``) → ``SerialTransport``."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "tcp":
        if not parsed.hostname or not parsed.port:
            raise ValueError(f"tcp URL needs host and port: {url!r}")
        connect_timeout = serial_options.get("connect_timeout", 5.0)
        return TcpTransport(parsed.hostname, parsed.port, connect_timeout=connect_timeout)
    return SerialTransport(url, **serial_options)
