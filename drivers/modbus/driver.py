"""Modbus TCP and RTU drivers (pymodbus clients) over the pure register code.

A driver owns one bus: one TCP endpoint (possibly a gateway with many unit ids), one serial port, or one
serial-to-Ethernet converter (``socket://host:port``, RTU framing over TCP). It opens the connection on first
use and again after it was lost, so a restarted endpoint is read again without restarting anything.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.client.base import ModbusBaseClient
from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU

from drivers.base import MeterDriver, Reading, RelayAction, RelayState
from drivers.errors import (
    CommandRefused,
    ConnectError,
    DriverError,
    ExceptionReply,
    FrameError,
    MeterTimeout,
    TransportError,
    UnsupportedOperation,
)
from drivers.modbus.exceptions import check_reply, map_exception
from drivers.modbus.mbap import MbapClient
from drivers.modbus.models import MeterModel, RelaySpec
from drivers.modbus.registers import BIT_TABLES, ReadRequest
from drivers.modbus.values import reading_from_replies, relay_state
from drivers.priority_lock import PriorityLock, urgent

__all__ = ["ModbusMeter", "ModbusRtuDriver", "ModbusTcpDriver"]

P = TypeVar("P", bound=ModbusPDU)


@dataclass(frozen=True, slots=True)
class ModbusMeter:
    """One meter on a Modbus bus.

    Args:
        id: the gateway's meter id (used in errors and readings).
        unit_id: the Modbus unit (slave) id, 1..247.
        model: the meter model file (registers, relay).
        breaker: a separate relay module on the same bus that switches this meter, for a model with no relay.
    """

    id: str
    unit_id: int
    model: MeterModel
    breaker: ModbusMeter | None = None

    def relay_device(self) -> tuple[int, RelaySpec]:
        """Unit id and relay spec that switch this meter: its own relay, else its breaker's."""
        if self.model.relay is not None:
            return self.unit_id, self.model.relay
        if self.breaker is not None and self.breaker.model.relay is not None:
            return self.breaker.unit_id, self.breaker.model.relay
        raise UnsupportedOperation(
            f"model {self.model.model} has no relay and no breaker is set", meter_id=self.id
        )


class _ModbusDriver(MeterDriver[ModbusMeter]):
    """Shared code of the TCP and RTU drivers: one pymodbus client, one transaction at a time.

    The bus is taken once per transaction (not per ``read``) with a ``PriorityLock``: a caller inside
    ``driver.urgent()`` (the scheduler's relay commands) goes ahead of polls waiting for the bus, so it waits at
    most for the transaction in flight. ``frame_gap`` seconds of silence are kept between two transactions.
    After ``reopen_after`` transport failures in a row (no answer from anybody on the bus), the connection is
    closed and opened again on the next transaction: a serial port that was unplugged and came back, or a
    converter that silently dropped the TCP connection, is used again without a restart.
    """

    def __init__(
        self, *, timeout: float, retries: int, endpoint: str, frame_gap: float = 0.0, reopen_after: int = 3
    ) -> None:
        if timeout <= 0 or retries < 0:
            raise ValueError("timeout must be positive and retries not negative")
        self.timeout = timeout
        self.retries = retries
        self.endpoint = endpoint
        self.frame_gap = frame_gap  # silence kept between two transactions on the line
        self.reopen_after = reopen_after
        self.transactions = 0
        self.failures_in_row = 0  # transport failures since the bus last answered
        # pymodbus enforces (retries + 1) x timeout itself; this deadline only guards the connect.
        self._deadline = timeout * (retries + 2)
        self._last_end = 0.0
        self._client: ModbusBaseClient | None = None
        self._lock = PriorityLock()

    def _new_client(self) -> ModbusBaseClient:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.endpoint!r})"

    @staticmethod
    def urgent() -> AbstractContextManager[None]:
        """Transactions started in this block (this task) go ahead of others waiting for the bus."""
        return urgent()

    async def _connected(self) -> ModbusBaseClient:
        if self._client is None:
            self._client = self._new_client()
        if not self._client.connected and not await self._client.connect():
            raise ConnectError(f"cannot connect to {self.endpoint}")
        return self._client

    async def _transact(
        self, meter_id: str, describe: Callable[[], str], call: Callable[..., Awaitable[P]], *args: Any,
        **kwargs: Any,
    ) -> P:
        """One transaction: ``call(client, *args, **kwargs)`` with the bus held; errors mapped to drivers.errors."""
        if not self._lock.try_acquire():
            await self._lock.acquire()
        try:
            if self.frame_gap:
                loop = asyncio.get_running_loop()
                if (wait := self._last_end + self.frame_gap - loop.time()) > 0:
                    await asyncio.sleep(wait)
            self.transactions += 1
            try:
                client = self._client
                if client is None or not client.connected:
                    async with asyncio.timeout(self._deadline):  # pymodbus bounds the connect too; a guard
                        client = await self._connected()
                # pymodbus bounds every attempt by the timeout (asyncio.wait_for): no second timer here
                reply = await call(client, *args, **kwargs)
            except DriverError as exc:  # raised by the project's own TCP client
                if exc.meter_id is None:
                    exc.meter_id = meter_id
                self._failed(exc)
                raise
            except Exception as exc:
                mapped = map_exception(exc, meter_id=meter_id, what=f"{self.endpoint} {describe()}")
                if mapped is None:
                    raise
                self._failed(mapped)
                raise mapped from exc
            if reply is None or reply.isError():
                try:
                    check_reply(reply, meter_id=meter_id, what=f"{self.endpoint} {describe()}")
                except MeterTimeout as exc:
                    self._failed(exc)
                    raise
            self.failures_in_row = 0  # somebody answered (an exception reply is an answer too)
            return reply
        finally:
            if self.frame_gap:
                self._last_end = asyncio.get_running_loop().time()
            self._lock.release()

    def _failed(self, error: DriverError) -> None:
        if not isinstance(error, TransportError):
            self.failures_in_row = 0
            return
        self.failures_in_row += 1
        if self.failures_in_row >= self.reopen_after and self._client is not None:
            self._client.close()  # reopened by the next transaction
            self._client = None
            self.failures_in_row = 0

    async def read_table(self, meter_id: str, unit_id: int, request: ReadRequest) -> list[int]:
        """One read request; bits come back as 0/1. Public for tools and tests."""
        table, count = request.table, request.count

        def describe() -> str:
            return f"unit {unit_id} read {table} {request.address:#06x}+{count}"

        reply = await self._transact(meter_id, describe, _READ_CALLS[table], request.address, count=count,
                                     device_id=unit_id)
        if table in BIT_TABLES:
            values = [int(bit) for bit in reply.bits[:count]]
        else:
            values = reply.registers
            if len(values) > count:
                values = values[:count]
        if len(values) < count:
            raise FrameError(f"{describe()}: {len(values)} values in the reply", meter_id=meter_id)
        return values

    async def read(self, meter: ModbusMeter) -> Reading:
        """Read every quantity of the meter's model (in as few requests as it allows) and its relay state."""
        model = meter.model
        if "energy_import_total" not in model.registers:
            raise UnsupportedOperation(f"model {model.model} has no energy register", meter_id=meter.id)
        replies = [await self.read_table(meter.id, meter.unit_id, req) for req in model.read_plan.requests]
        try:
            return reading_from_replies(model, meter.id, replies, taken_at=dt.datetime.now(dt.UTC))
        except ValueError as exc:
            raise FrameError(f"unit {meter.unit_id}: {exc}", meter_id=meter.id) from exc

    async def set_relay(
        self, meter: ModbusMeter, action: RelayAction, *, valid_until: dt.datetime | None = None
    ) -> None:
        """Write the relay command; a Modbus exception reply raises ``CommandRefused`` (the exception code and its
        named reason, as ``ExceptionReply`` has them for reads).

        Modbus cannot carry ``valid_until``; a command whose time has passed is not sent. The meter's echo of
        the write is checked: an echo of another address or value is a ``FrameError``.
        """
        unit_id, relay = meter.relay_device()
        command = relay.command
        value = command.open if action is RelayAction.OPEN else command.close
        if valid_until is not None and dt.datetime.now(dt.UTC) >= valid_until:
            raise CommandRefused(
                f"relay {action.value} expired at {valid_until.isoformat()}",
                reason="expired before it was sent",
                meter_id=meter.id,
            )
        address, function = command.address, command.write_function

        def describe() -> str:
            return f"unit {unit_id} relay {action.value} (FC{function:02d} {address:#06x})"

        def call(client: ModbusBaseClient) -> Awaitable[ModbusPDU]:
            match function:
                case 5:
                    return client.write_coil(address, bool(value), device_id=unit_id)
                case 15:
                    return client.write_coils(address, [bool(value)], device_id=unit_id)
                case 6:
                    return client.write_register(address, value, device_id=unit_id)
                case _:
                    return client.write_registers(address, [value], device_id=unit_id)

        try:
            reply = await self._transact(meter.id, describe, call)
        except ExceptionReply as exc:
            # args[0]: the message without the "[meter]" prefix that str(exc) adds, which CommandRefused adds again
            raise CommandRefused(exc.args[0], reasons=exc.reasons, code=exc.code, meter_id=meter.id) from exc
        if not _echo_matches(reply, function, address, value):
            raise FrameError(f"{self.endpoint} {describe()}: the echo does not match the request", meter_id=meter.id)

    async def read_relay(self, meter: ModbusMeter) -> RelayState:
        """Read the relay's actual state register."""
        unit_id, relay = meter.relay_device()
        state = relay.state
        (raw,) = await self.read_table(meter.id, unit_id, ReadRequest(state.table, state.address, 1))
        return relay_state(state, raw)

    async def aclose(self) -> None:
        """Close the connection; the driver reconnects if it is used again."""
        async with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None


# The client method that reads each table, called as call(client, address, count=..., device_id=...) on a
# pymodbus client or the project's MbapClient (same method names).
_READ_CALLS: dict[str, Callable[..., Awaitable[Any]]] = {
    "input": lambda client, address, **kw: client.read_input_registers(address, **kw),
    "holding": lambda client, address, **kw: client.read_holding_registers(address, **kw),
    "coil": lambda client, address, **kw: client.read_coils(address, **kw),
    "discrete": lambda client, address, **kw: client.read_discrete_inputs(address, **kw),
}


def _echo_matches(reply: ModbusPDU, function: int, address: int, value: int) -> bool:
    if getattr(reply, "address", address) != address:
        return False
    if function == 5:
        return bool(reply.bits[0]) == bool(value) if reply.bits else False
    if function == 6:
        return list(reply.registers[:1]) == [value]
    return getattr(reply, "count", 1) == 1


class ModbusTcpDriver(_ModbusDriver):
    """Modbus TCP (MBAP framing) to one endpoint; all unit ids behind it share the connection.

    Args:
        host: endpoint host name or address.
        port: TCP port (502 by default).
        timeout: seconds to wait for a connection or one answer.
        retries: times a request is resent after a timeout.
    """

    def __init__(self, host: str, port: int = 502, *, timeout: float = 1.0, retries: int = 0) -> None:
        super().__init__(timeout=timeout, retries=retries, endpoint=f"modbus-tcp://{host}:{port}")
        self.host = host
        self.port = port

    def _new_client(self) -> Any:
        # The project's own MBAP client: about half of pymodbus's CPU per transaction (drivers/modbus/mbap.py).
        # It connects only when asked: the driver reconnects on the next request.
        return MbapClient(self.host, self.port, timeout=self.timeout, retries=self.retries, name=self.endpoint)


class ModbusRtuDriver(_ModbusDriver):
    """Modbus RTU on a serial port, or RTU framing over TCP with ``port="socket://host:port"``.

    Args:
        port: serial device path (``/dev/ttyUSB0``) or ``socket://host:port`` (serial-to-Ethernet converter).
        baudrate, parity, stopbits: line settings (ignored over ``socket://``).
        timeout: seconds to wait for the port to open or for one answer.
        retries: times a request is resent after a timeout.
    """

    def __init__(
        self,
        port: str,
        *,
        baudrate: int = 9600,
        parity: Literal["N", "E", "O"] = "N",
        stopbits: Literal[1, 2] = 1,
        timeout: float = 1.0,
        retries: int = 0,
    ) -> None:
        # RTU frames are separated by at least 3.5 character times (11 bits each; 1.75 ms above 19200 bd).
        gap = 3.5 * 11 / baudrate if baudrate <= 19200 else 0.00175
        super().__init__(timeout=timeout, retries=retries, endpoint=f"modbus-rtu:{port}", frame_gap=gap)
        self.port = port
        self._socket = _socket_address(port) if port.startswith("socket://") else None
        self.baudrate = baudrate
        self.parity = parity
        self.stopbits = stopbits

    def _new_client(self) -> ModbusBaseClient:
        if self._socket is not None:
            # An asyncio TCP connection with RTU framing: pyserial's socket:// handler would block the event
            # loop for 0.3 s on every close.
            host, port = self._socket
            return AsyncModbusTcpClient(
                host,
                port=port,
                framer=FramerType.RTU,
                timeout=self.timeout,
                retries=self.retries,
                reconnect_delay=0,
                name=self.endpoint,
            )
        return AsyncModbusSerialClient(
            self.port,
            framer=FramerType.RTU,
            baudrate=self.baudrate,
            parity=self.parity,
            stopbits=self.stopbits,
            timeout=self.timeout,
            retries=self.retries,
            reconnect_delay=0,
            name=self.endpoint,
        )


def _socket_address(url: str) -> tuple[str, int]:
    """``socket://host:port`` -> (host, port), as pyserial reads it."""
    parts = urlsplit(url)
    if parts.hostname is None or parts.port is None:
        raise ValueError(f"{url!r} is not socket://host:port")
    return parts.hostname, parts.port
