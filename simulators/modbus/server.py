"""A small, fast Modbus server for simulated meters: Modbus TCP, RTU framing over TCP, RTU on a serial port or pty.

It is written for the simulator rather than taken from pymodbus because a simulator must misbehave on purpose
(stay silent, answer late, send garbage or a bad CRC: ``simulators.faults``) and must not be the bottleneck when
a gateway is benchmarked against thousands of meters. It answers FC01-06, FC15 and FC16; anything else gets
exception 1. On TCP an unknown unit id gets exception 0x0B (what a Modbus TCP gateway answers when the device
behind it is missing); on an RTU line an unknown unit id is silence, as on a real multi-drop bus.

Faults (``simulators.faults``) are decided per request before it is executed: ``no-answer`` and ``exception``
requests are not executed, ``mute`` ones are executed and their answer dropped. Every write to a unit's relay
command register is recorded in the relay log (``simulators.relaylog``), executed or not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import Callable, Mapping
from typing import Literal

from simulators.faults import NO_FAULT, FaultPlan, ReplyFault
from simulators.modbus.device import ILLEGAL_ADDRESS, ILLEGAL_FUNCTION, ILLEGAL_VALUE, MeterUnit
from simulators.modbus.pdu import ADDR_COUNT, crc16, exception_pdu, pack_bits, pack_registers, parse_write
from simulators.relaylog import RelayLog

__all__ = ["GATEWAY_TARGET_FAILED", "ModbusServer", "RequestTrace", "WriteListener", "crc16"]

log = logging.getLogger(__name__)

GATEWAY_TARGET_FAILED = 0x0B
_READ_TABLES = {1: "coil", 2: "discrete", 3: "holding", 4: "input"}
_READ_LIMIT = {1: 2000, 2: 2000, 3: 125, 4: 125}
_NO_FLAGS: frozenset[str] = frozenset()
_HEADER = struct.Struct(">HHHB")  # MBAP: transaction id, protocol id, length, unit id

# (unit id, function code, address, values) after a write was applied
WriteListener = Callable[[int, int, int, list[int]], None]
# (unit id, request PDU) for every request, before it is answered
RequestTrace = Callable[[int, bytes], None]


_BROADCAST = ReplyFault(mute=True)  # executed, never answered
_REFUSAL_REASONS = {ILLEGAL_FUNCTION: "bad-function", ILLEGAL_ADDRESS: "bad-address", ILLEGAL_VALUE: "bad-value"}



class ModbusServer:
    """Serves a set of ``MeterUnit`` by unit id; one instance per TCP port or serial line.

    Args:
        units: unit id -> unit.
        framer: ``socket`` (Modbus TCP, MBAP header) or ``rtu`` (unit id + PDU + CRC).
        faults: the fault plan of the fleet (meters are named by ``MeterUnit.index``).
        pace_baud: on an RTU line, answer only after the time the request and the answer would take on a line
            of this baud rate, plus 3.5 character times (a pty transfers bytes instantly).
        on_write: called after every applied write (e.g. a benchmark timing relay commands on the wire).
        trace: called with every request (unit id, PDU) as it arrives.
        relay_log: where relay writes are recorded (default: a new log).
    """

    def __init__(
        self,
        units: Mapping[int, MeterUnit],
        *,
        framer: Literal["socket", "rtu"] = "socket",
        faults: FaultPlan | None = None,
        pace_baud: int | None = None,
        bits_per_char: int = 11,
        on_write: WriteListener | None = None,
        trace: RequestTrace | None = None,
        relay_log: RelayLog | None = None,
    ) -> None:
        self.units = units
        self.relay_log = relay_log if relay_log is not None else RelayLog()
        self.trace = trace
        self.framer = framer
        self.faults = faults if faults is not None else FaultPlan()
        self.char_time = bits_per_char / pace_baud if pace_baud else 0.0
        self.on_write = on_write
        self.requests = 0
        self._server: asyncio.AbstractServer | None = None
        self._transports: set[asyncio.BaseTransport] = set()

    # --- serving --------------------------------------------------------------------------------------------
    async def listen(self, host: str, port: int) -> None:
        """Accept TCP connections (each with this server's framing)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._protocol, host, port, reuse_address=True)

    async def open_serial(self, port: str, *, baudrate: int, parity: str, stopbits: int) -> None:
        """Answer on a serial port or pty (RTU framing)."""
        import serial_asyncio_fast

        loop = asyncio.get_running_loop()
        await serial_asyncio_fast.create_serial_connection(
            loop, self._protocol, port, baudrate=baudrate, parity=parity, stopbits=stopbits
        )

    async def close(self) -> None:
        """Stop listening and drop every connection."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for transport in list(self._transports):
            transport.close()
        self._transports.clear()
        if server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)

    def _protocol(self) -> asyncio.Protocol:
        return _TcpConnection(self) if self.framer == "socket" else _RtuConnection(self)

    # --- one request ----------------------------------------------------------------------------------------
    def respond(self, unit_id: int, pdu: bytes) -> tuple[bytes | None, ReplyFault]:
        """The answer PDU to one request PDU (None: no answer) and the fault to apply to its frame."""
        self.requests += 1
        if self.trace is not None:
            self.trace(unit_id, pdu)
        unit = self.units.get(unit_id)
        if unit is None:
            if unit_id == 0:  # broadcast: writes go to every unit that hears, nobody answers
                for each in self.units.values():
                    if self.faults and self.faults.reply(each.index).silent:
                        self._log_unexecuted(each, pdu, "no-answer", ReplyFault(silent=True))
                    else:
                        self._handle(each, pdu, _BROADCAST)
                return None, NO_FAULT
            if self.framer == "socket":
                return exception_pdu(pdu[0] if pdu else 0, GATEWAY_TARGET_FAILED), NO_FAULT
            return None, NO_FAULT
        fault = self.faults.reply(unit.index) if self.faults else NO_FAULT
        if fault.silent:  # no-answer: the meter does not hear the request
            self._log_unexecuted(unit, pdu, "no-answer", fault)
            return None, fault
        if fault.exception is not None:
            self._log_unexecuted(unit, pdu, "exception", fault)
            return exception_pdu(pdu[0] if pdu else 0, fault.exception), fault
        answer = self._handle(unit, pdu, fault)
        return (None if fault.mute else answer), fault

    def _log_unexecuted(self, unit: MeterUnit, pdu: bytes, reason: str, fault: ReplyFault) -> None:
        """Record a relay write the meter did not execute because of a fault."""
        if not pdu or pdu[0] not in (5, 6, 15, 16):
            return
        write = parse_write(pdu)
        if not isinstance(write, int):
            self._log(unit, *write, executed=False, reason=reason, fault=fault)

    def _log(self, unit: MeterUnit, fc: int, address: int, values: list[int], *, executed: bool,
             reason: str | None, fault: ReplyFault) -> None:
        asked = unit.relay_asked(fc, address, values)
        if asked is None:
            return
        detail = {"function": fc, "address": address, "value": values[0] if len(values) == 1 else values}
        self.relay_log.add(meter=unit.index, id=unit.name, protocol="modbus", asked=asked, executed=executed,
                           reason=reason, reply=fault.reply_state, detail=detail)

    def _handle(self, unit: MeterUnit, pdu: bytes, fault: ReplyFault) -> bytes:
        if len(pdu) < 1:
            return exception_pdu(0, ILLEGAL_FUNCTION)
        fc = pdu[0]
        faults = self.faults
        if fc in _READ_TABLES:
            if len(pdu) != 5:
                return exception_pdu(fc, ILLEGAL_VALUE)
            address, count = ADDR_COUNT.unpack_from(pdu, 1)
            if not 1 <= count <= _READ_LIMIT[fc]:
                return exception_pdu(fc, ILLEGAL_VALUE)
            if faults and faults.counter_reset_due(unit.index):
                unit.meter.set_energy_wh(0)
            unit.meter.tamper_injected = faults.tamper(unit.index) if faults else _NO_FLAGS
            values = unit.read(_READ_TABLES[fc], address, count)  # type: ignore[arg-type]
            if isinstance(values, int):
                return exception_pdu(fc, values)
            return pack_bits(fc, values) if fc <= 2 else pack_registers(fc, values)
        if fc in (5, 6, 15, 16):
            write = parse_write(pdu)
            if isinstance(write, int):
                return exception_pdu(fc, write)
            return self._write(unit, *write, pdu if fc in (5, 6) else pdu[:5], fault)
        return exception_pdu(fc, ILLEGAL_FUNCTION)

    def _write(
        self, unit: MeterUnit, fc: int, address: int, values: list[int], echo: bytes, fault: ReplyFault
    ) -> bytes:
        stuck = bool(self.faults) and self.faults.relay_stuck(unit.index)
        code = unit.write(fc, address, values, stuck=stuck)
        reason = _REFUSAL_REASONS.get(code, f"exception {code}") if code is not None else "stuck" if stuck else None
        self._log(unit, fc, address, values, executed=reason is None, reason=reason, fault=fault)
        if code is not None:
            return exception_pdu(fc, code)
        if self.on_write is not None:
            self.on_write(unit.unit_id, fc, address, values)
        return bytes(echo)


class _Connection(asyncio.Protocol):
    def __init__(self, server: ModbusServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server._transports.add(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.server._transports.discard(self.transport)
        self.transport = None

    def send(self, frame: bytes, delay: float) -> None:
        if delay > 0:
            self.loop.call_later(delay, self._send_now, frame)
        else:
            self._send_now(frame)

    def _send_now(self, frame: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(frame)


class _TcpConnection(_Connection):
    """MBAP framing: 7-byte header (transaction, protocol 0, length, unit id), then the PDU."""

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data if self.buffer else data
        server = self.server
        while len(buffer) >= 8:
            tid, protocol, length, unit_id = _HEADER.unpack_from(buffer)
            if protocol != 0 or not 2 <= length <= 254:
                log.debug("dropping a connection that sent a bad MBAP header")
                if self.transport is not None:
                    self.transport.close()
                self.buffer = b""
                return
            end = 6 + length
            if len(buffer) < end:
                break
            pdu = buffer[7:end]
            buffer = buffer[end:]
            answer, fault = server.respond(unit_id, pdu)
            if answer is None:
                continue
            if fault.bad_crc:  # TCP has no CRC: spoil the frame's consistency instead (a wrong length)
                answer = answer[:-1]
                frame = _HEADER.pack(tid, 0, len(answer) + 2, unit_id) + answer
            else:
                frame = _HEADER.pack(tid, 0, len(answer) + 1, unit_id) + answer
            if fault.garbage:
                frame = server.faults.garbage(len(frame))
            self.send(frame, fault.delay_s)
        self.buffer = buffer


def _rtu_request_length(buffer: bytes) -> int | None:
    """Length of the RTU request at the start of ``buffer`` (None: not known yet / unknown function)."""
    fc = buffer[1]
    if 1 <= fc <= 6:
        return 8
    if fc in (15, 16):
        return 9 + buffer[6] if len(buffer) >= 7 else None
    return None


class _RtuConnection(_Connection):
    """RTU framing on a byte stream: unit id, PDU, CRC (frames are found by length and CRC)."""

    def __init__(self, server: ModbusServer) -> None:
        super().__init__(server)
        self.line_free_at = 0.0

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data if self.buffer else data
        server = self.server
        while len(buffer) >= 8:
            length = _rtu_request_length(buffer)
            if length is None:
                if len(buffer) >= 7 and buffer[1] not in (15, 16):
                    # an unknown function: answer it if it looks like an 8-byte frame, else drop the junk
                    if crc16(buffer[:6]) == buffer[6:8]:
                        length = 8
                    else:
                        buffer = b""
                        break
                else:
                    break
            if len(buffer) < length:
                break
            frame, rest = buffer[:length], buffer[length:]
            if crc16(frame[:-2]) != frame[-2:]:
                buffer = buffer[1:]  # noise or a partial frame: resynchronise byte by byte
                continue
            buffer = rest
            unit_id = frame[0]
            answer, fault = server.respond(unit_id, frame[1:-2])
            if answer is None:
                continue
            body = bytes((unit_id,)) + answer
            crc = crc16(body)
            if fault.bad_crc:
                crc = bytes((crc[0] ^ 0xFF, crc[1]))
            reply = body + crc
            if fault.garbage:
                reply = server.faults.garbage(len(reply))
            self.send(reply, fault.delay_s + self._line_time(len(frame), len(reply)))
        self.buffer = buffer

    def _line_time(self, request: int, reply: int) -> float:
        char = self.server.char_time
        if not char:
            return 0.0
        # the request's own bytes (the pty delivered them at once), the silence that ends it, the answer's bytes
        t35 = 3.5 * char if char > 0.0005 else 0.00175
        now = self.loop.time()
        done = max(now, self.line_free_at) + request * char + t35 + reply * char
        self.line_free_at = done
        return done - now
