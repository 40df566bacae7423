"""The slave side of one DL/T 645 bus: which simulated meter answers a frame, and with what (pure, no I/O).

Rules (protocols.md §1.3, §1.10): requests only (D7 = 0); exact address, or AA wildcards for reads (answered with
the real address, only when exactly one meter matches: several would collide); all-AA 13H only with one meter on
the bus; 99…99 for 08H (no reply); anything else stays silent.

The fleet fault plan's reply fault is decided here, before anything is executed: a ``no-answer`` meter does not
hear the request at all, an ``exception`` meter refuses it with the injected ERR byte; every other fault is
carried in the ``Reply`` for the server to apply to the answer (``mute`` loses it). Every 1CH command addressed
to one meter is recorded in the relay log (``simulators.relaylog``).
"""

from __future__ import annotations

from dataclasses import dataclass

from drivers.dlt645.address import address_matches, is_broadcast, is_wildcard, normalize_address
from drivers.dlt645.bcd import CURRENT, ENERGY, MONEY, POWER, VOLTAGE, DataFormat, bcd_encode
from drivers.dlt645.codec import Frame
from drivers.dlt645.constants import DI, ErrorBits, Function, energy_rate_di
from drivers.dlt645.errors import Dlt645CodecError
from drivers.dlt645.messages import (
    RemoteControlRequest,
    parse_broadcast_time,
    parse_read_request,
    parse_remote_control_request,
)
from simulators.dlt645.model import COMMAND_NAMES, SimulatedDlt645Meter
from simulators.faults import NO_FAULT, FaultPlan, ReplyFault
from simulators.relaylog import RelayLog

__all__ = ["Reply", "SimulatedBus", "read_register"]


@dataclass(frozen=True, slots=True)
class Reply:
    """The answer of one meter.

    Args:
        meter: who answers.
        frame: the answer (the injected error reply of an ``exception`` fault included).
        index: the meter's index on the bus (as the shared ``simulators.faults.FaultPlan`` names meters).
        fault: what the server still has to do to the answer (lose it, delay it, spoil it).
    """

    meter: SimulatedDlt645Meter
    frame: Frame
    index: int
    fault: ReplyFault = NO_FAULT


def _scaled(fmt: DataFormat, value: float) -> bytes:
    """Encode a float in a format, truncating below the last digit (as a register does) and clamping."""
    scaled = int(value * 10**fmt.decimals)
    limit = (8 * 10 ** (2 * fmt.nbytes - 1) if fmt.signed else 10 ** (2 * fmt.nbytes)) - 1
    return fmt.encode_scaled(max(-limit if fmt.signed else 0, min(limit, scaled)))


def _energy(wh: int) -> bytes:
    return ENERGY.encode_scaled(min(wh // 10, 99_999_999))  # 0.01 kWh = 10 Wh, truncated like a register


def read_register(meter: SimulatedDlt645Meter, di: int, *, tamper: frozenset[str] = frozenset()) -> bytes | None:
    """The value bytes of a DI, or ``None`` when the meter has no such data; ``tamper``: flags the fleet's fault
    plan raises (status word 7)."""
    if di in meter.extra_registers:
        return meter.extra_registers[di]
    if meter.missing_registers and di in meter.missing_registers:
        return None
    by_rate = meter.energy_wh_by_rate
    if di == DI.ENERGY_FORWARD_TOTAL or di == DI.ENERGY_COMBINED_TOTAL:
        return _energy(sum(by_rate))
    if di == DI.ENERGY_FORWARD_BLOCK:
        return _energy(sum(by_rate)) + b"".join(_energy(v) for v in by_rate) if meter.supports_block else None
    for rate, value in enumerate(by_rate, start=1):
        if di == energy_rate_di(rate):
            return _energy(value)
    if di == DI.ENERGY_REVERSE_TOTAL:
        return _energy(0)
    if di == DI.VOLTAGE_A:
        return _scaled(VOLTAGE, meter.voltage_v)
    if di == DI.CURRENT_A:
        return _scaled(CURRENT, meter.current_a)
    if di == DI.POWER_TOTAL:
        return _scaled(POWER, meter.power_w / 1000)
    if di == DI.STATUS_WORD_3:
        return meter.status_word_3.to_bytes(2, "little")
    if di == DI.STATUS_WORD_7:
        return meter.status_word_7(tamper).to_bytes(2, "little")
    if di in (DI.STATUS_WORD_1, 0x04000502, 0x04000504, 0x04000505, 0x04000506):
        return bytes(2)
    if di == DI.BALANCE:
        return MONEY.encode_scaled(max(0, meter.balance_fen))
    if di == DI.OVERDRAFT:
        return MONEY.encode_scaled(max(0, meter.overdraft_fen))
    if di in (DI.COMM_ADDRESS, DI.METER_NUMBER):
        return meter.wire_address
    if di == DI.DATE_WEEKDAY:
        now = meter.local_now()
        return bytes(
            bcd_encode(x, 1)[0] for x in ((now.isoweekday() % 7), now.day, now.month, now.year - 2000)
        )
    if di == DI.TIME:
        now = meter.local_now()
        return bytes(bcd_encode(x, 1)[0] for x in (now.second, now.minute, now.hour))
    return None


class SimulatedBus:
    """Several simulated meters sharing one line.

    Args:
        meters: the meters, in fleet-index order.
        faults: the shared fleet fault plan; this class applies ``no-answer``, ``exception``, ``relay-stuck`` and
            ``counter-reset`` and hands the other reply faults to the server in each ``Reply``.
        relay_log: where every 1CH command is recorded (default: a new log, see ``relay_log``).
    """

    def __init__(
        self,
        meters: list[SimulatedDlt645Meter],
        *,
        faults: FaultPlan | None = None,
        relay_log: RelayLog | None = None,
    ) -> None:
        self.meters = list(meters)
        self._index = {m.wire_address: i for i, m in enumerate(self.meters)}
        if len(self._index) != len(self.meters):
            raise ValueError("two simulated meters share an address")
        self.faults = faults if faults is not None else FaultPlan()
        self.relay_log = relay_log if relay_log is not None else RelayLog()
        self.requests_seen = 0

    def meter(self, address: str) -> SimulatedDlt645Meter:
        wanted = normalize_address(address)
        for m in self.meters:
            if m.address == wanted:
                return m
        raise KeyError(address)

    def handle(self, frame: Frame) -> Reply | None:
        """The reply to one received frame, or ``None`` for silence."""
        if frame.is_reply:
            return None  # another slave's answer (or our own, echoed)
        self.requests_seen += 1
        if is_broadcast(frame.address):
            if frame.function == Function.BROADCAST_TIME:
                hearing = [m for i, m in enumerate(self.meters) if not self._fault(i).silent]
                self._set_time(hearing, frame)
            return None
        if frame.function == Function.READ_ADDRESS:
            if frame.address == b"\xaa" * 6 and len(self.meters) == 1:
                meter, fault = self.meters[0], self._fault(0)
                if fault.silent:
                    return None
                return Reply(meter, frame.reply(meter.wire_address, address=meter.wire_address), 0, fault)
            return None
        wildcard_ok = frame.function == Function.READ
        targets = [
            m
            for m in self.meters
            if address_matches(m.wire_address, frame.address, allow_wildcard=wildcard_ok)
        ]
        if len(targets) != 1:
            return None  # nobody, or a collision on the line
        meter = targets[0]
        if is_wildcard(frame.address) and not wildcard_ok:
            return None  # wildcards are for reads only
        index = self._index[meter.wire_address]
        fault = self._fault(index)
        if fault.silent:  # no-answer: the meter does not hear it
            self._log_unexecuted(meter, index, frame, "no-answer", fault)
            return None
        if self.faults.counter_reset_due(index):
            meter.meter.set_energy_wh(0)
        if fault.exception is not None and frame.function != Function.BROADCAST_TIME:
            self._log_unexecuted(meter, index, frame, "exception", fault)
            return Reply(meter, frame.error_reply(fault.exception, address=meter.wire_address), index, fault)
        reply = self._dispatch(meter, index, frame, fault)
        return None if reply is None else Reply(meter, reply, index, fault)

    def _fault(self, index: int) -> ReplyFault:
        return self.faults.reply(index) if self.faults else NO_FAULT

    def _log(
        self,
        meter: SimulatedDlt645Meter,
        index: int,
        request: RemoteControlRequest | None,
        executed: bool,
        reason: str | None,
        fault: ReplyFault,
    ) -> None:
        detail = {} if request is None else {
            "n1": f"{request.command:02X}H",
            "password_level": f"{request.password_level:02X}H",
            "operator": request.operator_code,
            "valid_until": request.valid_until.isoformat(),
        }
        asked = "invalid" if request is None else COMMAND_NAMES.get(request.command, "invalid")
        self.relay_log.add(meter=index, id=meter.address, protocol="dlt645", asked=asked, executed=executed,
                           reason=reason, reply=fault.reply_state, detail=detail)

    def _log_unexecuted(
        self, meter: SimulatedDlt645Meter, index: int, frame: Frame, reason: str, fault: ReplyFault
    ) -> None:
        if frame.function != Function.REMOTE_CONTROL:
            return
        try:
            request: RemoteControlRequest | None = parse_remote_control_request(frame)
        except Dlt645CodecError:
            request = None
        self._log(meter, index, request, False, reason, fault)

    @staticmethod
    def _set_time(meters: list[SimulatedDlt645Meter], frame: Frame) -> None:
        try:
            local = parse_broadcast_time(frame)
        except Dlt645CodecError:
            return
        for meter in meters:
            meter.set_time(local)

    def _dispatch(self, meter: SimulatedDlt645Meter, index: int, frame: Frame, fault: ReplyFault) -> Frame | None:
        own = meter.wire_address
        if frame.function == Function.READ:
            try:
                di = parse_read_request(frame)
            except Dlt645CodecError:
                return frame.error_reply(ErrorBits.OTHER, address=own)
            value = read_register(meter, di, tamper=self.faults.tamper(index) if self.faults else frozenset())
            if value is None:
                return frame.error_reply(ErrorBits.NO_DATA, address=own)
            return frame.reply(frame.data[:4] + value, address=own)
        if frame.function == Function.BROADCAST_TIME:
            self._set_time([meter], frame)  # single-address time set (V6 of §1.12): no reply either
            return None
        if frame.function == Function.REMOTE_CONTROL:
            try:
                request = parse_remote_control_request(frame)
            except Dlt645CodecError:
                self._log(meter, index, None, False, "bad-frame", fault)
                return frame.error_reply(ErrorBits.OTHER, address=own)
            if self.faults.relay_stuck(index):
                self._log(meter, index, request, False, "stuck", fault)
                return frame.reply(address=own)  # acknowledged, but nothing moves
            refusal = meter.execute(request)
            self._log(meter, index, request, refusal is None, None if refusal is None else refusal[1], fault)
            return frame.reply(address=own) if refusal is None else frame.error_reply(refusal[0], address=own)
        return frame.error_reply(ErrorBits.OTHER, address=own)
