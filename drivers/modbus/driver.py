"""Modbus TCP and RTU drivers (pymodbus clients) over the pure register code.

A driver owns one bus: one TCP endpoint (possibly a gateway with many unit ids), one serial port, or one
serial-to-Ethernet converter (``socket://host:port``, RTU framing over TCP). It opens the connection on first
use and again after it was lost, so a restarted endpoint is read again without restarting anything.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, TypeVar
from urllib.parse import urlsplit

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.client.base import ModbusBaseClient
from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU

from drivers.base import MeterDriver, Reading, RelayAction, RelayState
from drivers.errors import CommandRefused, ConnectError, ExceptionReply, FrameError, UnsupportedOperation
from drivers.modbus.exceptions import check_reply, map_modbus_exceptions
from drivers.modbus.models import MeterModel, RelaySpec
from drivers.modbus.registers import ReadRequest, exception_name
from drivers.modbus.values import decode_values, reading_from_values, relay_state, relay_state_from_replies

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
    """Shared code of the TCP and RTU drivers: one pymodbus client, one transaction at a time."""

    def __init__(self, *, timeout: float, retries: int, endpoint: str, frame_gap: float = 0.0) -> None:
        if timeout <= 0 or retries < 0:
            raise ValueError("timeout must be positive and retries not negative")
        self.timeout = timeout
        self.retries = retries
        self.endpoint = endpoint
        self._frame_gap = frame_gap  # silence kept between two transactions on the line
        self._last_end = 0.0
        self._client: ModbusBaseClient | None = None
        self._lock = asyncio.Lock()

    def _new_client(self) -> ModbusBaseClient:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.endpoint!r})"

    async def _connected(self) -> ModbusBaseClient:
        if self._client is None:
            self._client = self._new_client()
        if not self._client.connected and not await self._client.connect():
            raise ConnectError(f"cannot connect to {self.endpoint}")
        return self._client

    async def _transact(
        self, meter_id: str, what: str, call: Callable[[ModbusBaseClient], Awaitable[P]]
    ) -> P:
        # pymodbus enforces (retries + 1) x timeout itself; the outer deadline only guards against a hang.
        deadline = self.timeout * (self.retries + 2)
        loop = asyncio.get_running_loop()
        async with self._lock:
            if (wait := self._last_end + self._frame_gap - loop.time()) > 0:
                await asyncio.sleep(wait)
            try:
                with map_modbus_exceptions(meter_id=meter_id, what=f"{self.endpoint} {what}"):
                    client = await self._connected()
                    reply = await asyncio.wait_for(call(client), deadline)
                    return check_reply(reply, meter_id=meter_id, what=f"{self.endpoint} {what}")
            finally:
                self._last_end = loop.time()

    async def read_table(self, meter_id: str, unit_id: int, request: ReadRequest) -> list[int]:
        """One read request; bits come back as 0/1. Public for tools and tests."""
        address, count = request.address, request.count
        what = f"unit {unit_id} read {request.table} {address:#06x}+{count}"

        def call(client: ModbusBaseClient) -> Awaitable[ModbusPDU]:
            match request.table:
                case "coil":
                    return client.read_coils(address, count=count, device_id=unit_id)
                case "discrete":
                    return client.read_discrete_inputs(address, count=count, device_id=unit_id)
                case "holding":
                    return client.read_holding_registers(address, count=count, device_id=unit_id)
                case "input":
                    return client.read_input_registers(address, count=count, device_id=unit_id)

        reply = await self._transact(meter_id, what, call)
        values = (
            [int(bit) for bit in reply.bits]
            if request.table in ("coil", "discrete")
            else list(reply.registers)
        )
        if len(values) < count:
            raise FrameError(f"{what}: {len(values)} values in the reply", meter_id=meter_id)
        return values[:count]

    async def read(self, meter: ModbusMeter) -> Reading:
        """Read every quantity of the meter's model (in as few requests as it allows) and its relay state."""
        model = meter.model
        if "energy_import_total" not in model.registers:
            raise UnsupportedOperation(f"model {model.model} has no energy register", meter_id=meter.id)
        replies = [await self.read_table(meter.id, meter.unit_id, req) for req in model.read_plan.requests]
        taken_at = dt.datetime.now(dt.UTC)
        try:
            values = decode_values(model, replies)
        except ValueError as exc:
            raise FrameError(f"unit {meter.unit_id}: {exc}", meter_id=meter.id) from exc
        relay = relay_state_from_replies(model, replies)
        return reading_from_values(meter.id, values, taken_at=taken_at, relay=relay)

    async def set_relay(
        self, meter: ModbusMeter, action: RelayAction, *, valid_until: dt.datetime | None = None
    ) -> None:
        """Write the relay command; a Modbus exception reply raises ``CommandRefused``.

        Modbus cannot carry ``valid_until``; a command whose time has passed is not sent.
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

        def call(client: ModbusBaseClient) -> Awaitable[ModbusPDU]:
            address = command.address
            match command.write_function:
                case 5:
                    return client.write_coil(address, bool(value), device_id=unit_id)
                case 15:
                    return client.write_coils(address, [bool(value)], device_id=unit_id)
                case 6:
                    return client.write_register(address, value, device_id=unit_id)
                case _:
                    return client.write_registers(address, [value], device_id=unit_id)

        what = f"unit {unit_id} relay {action.value} (FC{command.write_function:02d} {command.address:#06x})"
        try:
            await self._transact(meter.id, what, call)
        except ExceptionReply as exc:
            raise CommandRefused(
                str(exc),
                reason=f"Modbus exception {exc.code} ({exception_name(exc.code)})",
                code=exc.code,
                meter_id=meter.id,
            ) from exc

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

    def _new_client(self) -> ModbusBaseClient:
        # reconnect_delay=0: no background reconnect loop; the driver reconnects on the next request.
        return AsyncModbusTcpClient(
            self.host,
            port=self.port,
            framer=FramerType.SOCKET,
            timeout=self.timeout,
            retries=self.retries,
            reconnect_delay=0,
            name=self.endpoint,
        )


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
