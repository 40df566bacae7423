"""The slave side of one DL/T 645 bus: which simulated meter answers a frame, and with what (pure, no I/O).

Rules (protocols.md §1.3, §1.10): requests only (D7 = 0); exact address, or AA wildcards for reads (answered with
the real address, only when exactly one meter matches: several would collide); all-AA 13H only with one meter on
the bus; 99…99 for 08H (no reply); anything else stays silent.
"""

from __future__ import annotations

from dataclasses import dataclass

from drivers.dlt645.address import address_matches, is_broadcast, is_wildcard, normalize_address
from drivers.dlt645.bcd import CURRENT, ENERGY, MONEY, POWER, VOLTAGE, DataFormat, bcd_encode
from drivers.dlt645.codec import Frame
from drivers.dlt645.constants import DI, ErrorBits, Function, energy_rate_di
from drivers.dlt645.errors import Dlt645CodecError
from drivers.dlt645.messages import parse_broadcast_time, parse_read_request, parse_remote_control_request
from simulators.dlt645.model import SimulatedDlt645Meter
from simulators.faults import FaultPlan

__all__ = ["Reply", "SimulatedBus", "read_register"]


@dataclass(frozen=True, slots=True)
class Reply:
    meter: SimulatedDlt645Meter
    frame: Frame
    index: int  # the meter's index on the bus (as the shared ``simulators.faults.FaultPlan`` names meters)


def _scaled(fmt: DataFormat, value: float) -> bytes:
    """Encode a float in a format, truncating below the last digit (as a register does) and clamping."""
    scaled = int(value * 10**fmt.decimals)
    limit = (8 * 10 ** (2 * fmt.nbytes - 1) if fmt.signed else 10 ** (2 * fmt.nbytes)) - 1
    return fmt.encode_scaled(max(-limit if fmt.signed else 0, min(limit, scaled)))


def _energy(wh: int) -> bytes:
    return ENERGY.encode_scaled(min(wh // 10, 99_999_999))  # 0.01 kWh = 10 Wh, truncated like a register


def read_register(meter: SimulatedDlt645Meter, di: int) -> bytes | None:
    """The value bytes of a DI, or ``None`` when the meter has no such data."""
    if di in meter.extra_registers:
        return meter.extra_registers[di]
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
    if di in (DI.STATUS_WORD_1, 0x04000502, 0x04000504, 0x04000505, 0x04000506, 0x04000507):
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
        faults: the shared fleet fault plan; this class applies its behaviour faults (``relay-stuck``,
            ``counter-reset``), the server applies the reply faults.
    """

    def __init__(self, meters: list[SimulatedDlt645Meter], *, faults: FaultPlan | None = None) -> None:
        self.meters = list(meters)
        self._index = {m.wire_address: i for i, m in enumerate(self.meters)}
        if len(self._index) != len(self.meters):
            raise ValueError("two simulated meters share an address")
        self.faults = faults if faults is not None else FaultPlan()
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
                self._set_time(self.meters, frame)
            return None
        if frame.function == Function.READ_ADDRESS:
            if frame.address == b"\xaa" * 6 and len(self.meters) == 1:
                meter = self.meters[0]
                return Reply(meter, frame.reply(meter.wire_address, address=meter.wire_address), 0)
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
        index = self._index[meter.wire_address]
        if self.faults.counter_reset_due(index):
            meter.meter.set_energy_wh(0)
        reply = self._dispatch(meter, frame, relay_stuck=self.faults.relay_stuck(index))
        return None if reply is None else Reply(meter, reply, index)

    @staticmethod
    def _set_time(meters: list[SimulatedDlt645Meter], frame: Frame) -> None:
        try:
            local = parse_broadcast_time(frame)
        except Dlt645CodecError:
            return
        for meter in meters:
            meter.set_time(local)

    def _dispatch(self, meter: SimulatedDlt645Meter, frame: Frame, *, relay_stuck: bool) -> Frame | None:
        own = meter.wire_address
        if frame.function == Function.READ:
            try:
                di = parse_read_request(frame)
            except Dlt645CodecError:
                return frame.error_reply(ErrorBits.OTHER, address=own)
            value = read_register(meter, di)
            if value is None:
                return frame.error_reply(ErrorBits.NO_DATA, address=own)
            return frame.reply(frame.data[:4] + value, address=own)
        if is_wildcard(frame.address):
            return None  # wildcards are for reads only
        if frame.function == Function.BROADCAST_TIME:
            self._set_time([meter], frame)  # single-address time set (V6 of §1.12): no reply either
            return None
        if frame.function == Function.REMOTE_CONTROL:
            try:
                request = parse_remote_control_request(frame)
            except Dlt645CodecError:
                return frame.error_reply(ErrorBits.OTHER, address=own)
            if relay_stuck:
                return frame.reply(address=own)  # acknowledged, but nothing moves
            err = meter.remote_control(request)
            return frame.reply(address=own) if err is None else frame.error_reply(err, address=own)
        return frame.error_reply(ErrorBits.OTHER, address=own)
