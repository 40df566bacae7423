"""``Dlt645Driver``: DL/T 645-2007 meters on one byte transport (RS-485 port or serial-to-Ethernet converter).

One transaction at a time per bus (an ``asyncio.Lock``); each attempt waits ``timeout`` seconds for the reply
(Td ≤ 500 ms plus the reply's line time, protocols.md §2), then retries. The codec does the bytes.

Tamper flags come from status word 7 (04000507, bits 9 and 10: ``drivers.dlt645.status.tamper_flags``), one
more transaction per poll: a meter that answers it with an error reply has no tamper information to give
(``Reading.extra`` then has no ``"tamper"``, and "no requested data" is remembered: the word is not asked for
again); one that does not answer it in time gives none for that poll (one attempt, no retry; after
``TAMPER_SILENT_LIMIT`` such polls in a row it is not asked again). Neither fails the poll. The block 040005FF
would bring words 3 and 7 in one reply, but its layout is unverified (protocols.md §1.7) and word 3 confirms
trips, so it is not used.

Remote control (1CH: ``set_relay``, ``remote_control``, ``trip``...) and the naming of its refusals are the
mixin ``drivers.dlt645.remote.RemoteControlMixin``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable, Collection
from decimal import ROUND_HALF_UP, Decimal
from zoneinfo import ZoneInfo

from drivers.base import MeterDriver, Reading, RelayState
from drivers.dlt645.bcd import CURRENT, ENERGY, MONEY, POWER, VOLTAGE, DataFormat
from drivers.dlt645.codec import Frame, FrameReader
from drivers.dlt645.constants import DI, ErrorBits, RemoteCommand, energy_rate_di, error_reasons
from drivers.dlt645.errors import Dlt645CodecError
from drivers.dlt645.messages import (
    broadcast_time_request,
    encode_secret,
    parse_read_reply,
    read_address_request,
    read_request,
)
from drivers.dlt645.meter import Dlt645Meter
from drivers.dlt645.remote import RemoteControlMixin
from drivers.dlt645.status import relay_state, status_fields, tamper_flags
from drivers.errors import (
    ConnectError,
    DriverError,
    ExceptionReply,
    FrameError,
    MeterTimeout,
    TransportError,
    join_reasons,
)
from drivers.transports import ByteTransport

__all__ = ["QUANTITIES", "TAMPER_SILENT_LIMIT", "Dlt645Driver"]

log = logging.getLogger(__name__)

# What ``read`` asks for besides energy; each costs one transaction (about 0.2-0.3 s at 2400 bd).
QUANTITIES = frozenset({"voltage", "current", "power", "status", "balance", "overdraft", "tamper"})
# Polls in a row whose status word 7 read timed out (the meter answering the rest) before it is not asked again.
TAMPER_SILENT_LIMIT = 3


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Dlt645Driver(RemoteControlMixin, MeterDriver[Dlt645Meter]):
    """DL/T 645-2007 master for the meters on one bus.

    Args:
        transport: the bus (``drivers.transports.SerialTransport`` / ``TcpTransport``); opened lazily.
        timeout: seconds to wait for each reply. The standard allows Td up to 0.5 s, plus line time.
        retries: extra attempts of a read after a timeout or a garbled reply (not after an error reply; a 1CH
            remote-control command is sent once).
        password_level, password, operator_code: 1CH credentials (per-meter overrides in ``Dlt645Meter``).
        close_command: what ``set_relay(CLOSE)`` sends: ``DIRECT_CLOSE`` (1CH) or ``CLOSE_ALLOWED`` (1BH).
        meter_timezone: the meters' local time zone, for 1CH validity end times and 08H time sync.
        command_validity: validity of a 1CH command when the caller gives no ``valid_until``.
        quantities: which of ``QUANTITIES`` ``read`` fetches besides energy.
        rates: how many tariff rates to read one by one when the meter has no 0001FF00 block.
        preamble: FE bytes before each request (the standard says 4).
        clock: returns the current UTC time (tests inject one).
    """

    def __init__(
        self,
        transport: ByteTransport,
        *,
        timeout: float = 1.0,
        retries: int = 2,
        password_level: int = 0x02,
        password: str = "000000",
        operator_code: str = "00000000",
        close_command: RemoteCommand = RemoteCommand.DIRECT_CLOSE,
        meter_timezone: str | dt.tzinfo = "Asia/Shanghai",
        command_validity: dt.timedelta = dt.timedelta(minutes=5),
        quantities: Collection[str] = QUANTITIES,
        rates: int = 4,
        preamble: int = 4,
        clock: Callable[[], dt.datetime] = _utcnow,
    ) -> None:
        encode_secret(password, 3, "password")
        encode_secret(operator_code, 4, "operator code")
        if close_command not in (RemoteCommand.DIRECT_CLOSE, RemoteCommand.CLOSE_ALLOWED):
            raise ValueError("close_command must be DIRECT_CLOSE or CLOSE_ALLOWED")
        unknown = set(quantities) - QUANTITIES
        if unknown:
            raise ValueError(f"unknown quantities: {sorted(unknown)}")
        self.transport = transport
        self.timeout = timeout
        self.retries = retries
        self._password_level = password_level
        self._password = password
        self._operator_code = operator_code
        self.close_command = close_command
        self.meter_timezone = ZoneInfo(meter_timezone) if isinstance(meter_timezone, str) else meter_timezone
        self.command_validity = command_validity
        self.quantities = frozenset(quantities)
        self.rates = rates
        self.preamble = preamble
        self.clock = clock
        self._lock = asyncio.Lock()
        self._unsupported: dict[str, set[int]] = {}  # meter address -> DIs answered "no requested data"
        self._tamper_silent: dict[str, int] = {}  # meter address -> status word 7 reads in a row that timed out

    def __repr__(self) -> str:
        return f"<Dlt645Driver {self.transport!r}>"

    # --- transactions ---------------------------------------------------------------------------------

    async def transact(self, request: Frame, *, meter_id: str | None = None, retries: int | None = None) -> Frame:
        """Send one request and return the matching reply (normal or abnormal), with ``retries`` (default the
        driver's) retries."""
        async with self._lock:
            last: DriverError | None = None
            for attempt in range((self.retries if retries is None else retries) + 1):
                try:
                    return await self._attempt(request)
                except (MeterTimeout, FrameError, ConnectError) as exc:
                    last = exc
                    log.debug("dlt645 %s: attempt %d failed: %s", request.describe(), attempt + 1, exc)
                    if isinstance(exc, ConnectError):
                        await self.transport.aclose()
            assert last is not None
            raise type(last)(f"{request.describe()}: {last}", meter_id=meter_id) from last

    async def _attempt(self, request: Frame) -> Frame:
        await self.transport.open()
        self.transport.discard_input()  # late replies to an earlier attempt must not be taken for this one
        log.debug("dlt645 send %s", request.describe())
        await self.transport.write(request.encode(preamble=self.preamble))
        reader = FrameReader()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        while True:
            remaining = deadline - loop.time()
            try:
                if remaining <= 0:
                    raise MeterTimeout(f"no reply within {self.timeout:.3f}s")
                data = await self.transport.read(timeout=remaining)
            except MeterTimeout:
                if reader.discarded or reader.pending:
                    raise FrameError(
                        f"garbled reply ({reader.discarded + reader.pending} unusable bytes)"
                    ) from None
                raise
            for frame in reader.feed(data):
                if self._answers(request, frame):
                    log.debug("dlt645 recv %s", frame.describe())
                    return frame
                log.debug("dlt645 ignored %s", frame.describe())

    @staticmethod
    def _answers(request: Frame, frame: Frame) -> bool:
        # Our own echo (RS-485 adapters with echo), other masters' requests and other meters' replies are skipped.
        if not frame.is_reply or frame.function != request.function:
            return False
        return 0xAA in request.address or frame.address == request.address

    async def read_data(self, meter: Dlt645Meter, di: int, *, retries: int | None = None) -> bytes:
        """Read one data identifier; returns the value bytes (33H removed, DI stripped).

        Raises ``ExceptionReply`` with the ERR byte (``code``) and its named reasons when the meter answers
        abnormally.
        """
        reply = await self.transact(read_request(meter.wire_address, di), meter_id=meter.id, retries=retries)
        if reply.is_abnormal:
            code = reply.error_code or 0
            reasons = error_reasons(code)
            raise ExceptionReply(
                f"read {di:08X}: ERR {code:02X}H: {join_reasons(reasons)}",
                code=code,
                reasons=reasons,
                meter_id=meter.id,
            )
        try:
            return parse_read_reply(reply, di)
        except Dlt645CodecError as exc:
            raise FrameError(str(exc), meter_id=meter.id) from None

    async def read_address(self) -> str:
        """13H to AA…AA: the address of the only meter on the bus (with several, replies collide)."""
        reply = await self.transact(read_address_request())
        if reply.is_abnormal or len(reply.data) != 6:
            raise FrameError(f"unusable read-address reply: {reply.describe()}")
        return reply.data[::-1].hex().upper()

    # --- reads ----------------------------------------------------------------------------------------

    async def _read_optional(self, meter: Dlt645Meter, di: int) -> bytes | None:
        """Read a DI the meter may lack; "no requested data" is remembered and gives ``None``."""
        unsupported = self._unsupported.setdefault(meter.address, set())
        if di in unsupported:
            return None
        try:
            return await self.read_data(meter, di)
        except ExceptionReply as exc:
            if exc.code & ErrorBits.NO_DATA:
                unsupported.add(di)
                return None
            raise

    async def _read_value(self, meter: Dlt645Meter, di: int, fmt: DataFormat) -> int | None:
        raw = await self._read_optional(meter, di)
        if raw is None:
            return None
        try:
            return fmt.decode_scaled(raw)
        except Dlt645CodecError as exc:
            raise FrameError(f"DI {di:08X}: {exc}", meter_id=meter.id) from None

    async def read_energy(self, meter: Dlt645Meter) -> tuple[int, tuple[int, ...] | None]:
        """Forward active energy in Wh: the total and the per-rate values (block 0001FF00, else DI by DI)."""
        block = await self._read_optional(meter, DI.ENERGY_FORWARD_BLOCK)
        if block is not None:
            if not block or len(block) % 4:
                raise FrameError(f"energy block of {len(block)} bytes", meter_id=meter.id)
            try:
                values = [ENERGY.decode_scaled(block[i : i + 4]) * 10 for i in range(0, len(block), 4)]
            except Dlt645CodecError as exc:
                raise FrameError(f"energy block: {exc}", meter_id=meter.id) from None
            return values[0], tuple(values[1:]) or None
        total = await self._read_value(meter, DI.ENERGY_FORWARD_TOTAL, ENERGY)
        if total is None:
            raise ExceptionReply(
                "meter has no forward active energy",
                code=ErrorBits.NO_DATA,
                reasons=error_reasons(ErrorBits.NO_DATA),
                meter_id=meter.id,
            )
        rates: list[int] = []
        for rate in range(1, self.rates + 1):
            value = await self._read_value(meter, energy_rate_di(rate), ENERGY)
            if value is None:
                break
            rates.append(value * 10)
        return total * 10, tuple(rates) or None

    async def read_status_word_3(self, meter: Dlt645Meter, *, retries: int | None = None) -> int:
        raw = await self.read_data(meter, DI.STATUS_WORD_3, retries=retries)
        if len(raw) != 2:
            raise FrameError(f"status word 3 of {len(raw)} bytes", meter_id=meter.id)
        return int.from_bytes(raw, "little")

    async def read_tamper(self, meter: Dlt645Meter) -> tuple[str, ...] | None:
        """The tamper flags of status word 7, sorted (``()``: none), or ``None`` when the meter gives no tamper
        information (an error reply, no reply in time, a reply of the wrong size): never a failed poll."""
        if DI.STATUS_WORD_7 in self._unsupported.get(meter.address, ()):
            return None
        try:
            raw = await self.read_data(meter, DI.STATUS_WORD_7, retries=0)
        except ExceptionReply as exc:
            if exc.code & ErrorBits.NO_DATA:
                self._unsupported.setdefault(meter.address, set()).add(DI.STATUS_WORD_7)
            log.debug("dlt645 %s: no tamper information: %s", meter.id, exc)
            return None
        except (MeterTimeout, FrameError) as exc:
            silent = self._tamper_silent.get(meter.address, 0) + 1
            self._tamper_silent[meter.address] = silent
            if silent >= TAMPER_SILENT_LIMIT:  # a meter that ignores the DI: stop spending a timeout per poll
                self._unsupported.setdefault(meter.address, set()).add(DI.STATUS_WORD_7)
                log.info("dlt645 %s: status word 7 unanswered %d times: tamper flags not read any more",
                         meter.id, silent)
            return None
        self._tamper_silent.pop(meter.address, None)
        if len(raw) != 2:
            log.debug("dlt645 %s: status word 7 of %d bytes: no tamper information", meter.id, len(raw))
            return None
        return tamper_flags(int.from_bytes(raw, "little"))

    async def read(self, meter: Dlt645Meter) -> Reading:
        taken_at = self.clock()
        energy_wh, by_rate = await self.read_energy(meter)
        q = self.quantities
        voltage = await self._read_value(meter, DI.VOLTAGE_A, VOLTAGE) if "voltage" in q else None
        current = await self._read_value(meter, DI.CURRENT_A, CURRENT) if "current" in q else None
        power = await self._read_value(meter, DI.POWER_TOTAL, POWER) if "power" in q else None
        balance = await self._read_value(meter, DI.BALANCE, MONEY) if "balance" in q else None
        overdraft = await self._read_value(meter, DI.OVERDRAFT, MONEY) if "overdraft" in q else None
        status: int | None = None
        if "status" in q:
            raw = await self._read_optional(meter, DI.STATUS_WORD_3)
            status = int.from_bytes(raw, "little") if raw is not None and len(raw) == 2 else None
        extra: dict[str, object] = {}
        if status is not None:
            extra |= status_fields(status)
        if "tamper" in q and (flags := await self.read_tamper(meter)) is not None:
            extra["tamper"] = flags
        if overdraft is not None:
            extra["overdraft_fen"] = overdraft
        return Reading(
            meter_id=meter.id,
            taken_at=taken_at,
            energy_wh=energy_wh,
            energy_wh_by_rate=by_rate,
            # XX.XXXX kW: the scaled value is in 0.1 W
            power_w=None
            if power is None
            else int(Decimal(power).scaleb(-1).quantize(Decimal(1), ROUND_HALF_UP)),
            voltage_v=None if voltage is None else float(Decimal(voltage).scaleb(-VOLTAGE.decimals)),
            current_a=None if current is None else float(Decimal(current).scaleb(-CURRENT.decimals)),
            relay=None if status is None else relay_state(status),
            meter_balance_fen=balance,  # XXXXXX.XX yuan: the scaled value is fen
            extra=extra,
        )

    async def read_relay(self, meter: Dlt645Meter) -> RelayState:
        """The actual contact from status word 3 bit 4 (bit 6 is only what was commanded)."""
        return relay_state(await self.read_status_word_3(meter))

    # --- broadcast ------------------------------------------------------------------------------------

    async def broadcast_time(self, now: dt.datetime | None = None) -> None:
        """08H to 99…99 with ``now`` (UTC; default the clock) in the meters' local time. Nobody answers."""
        moment = self.clock() if now is None else now
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=dt.UTC)
        local = moment.astimezone(self.meter_timezone).replace(tzinfo=None, microsecond=0)
        frame = broadcast_time_request(local)
        async with self._lock:
            try:
                await self.transport.open()
                await self.transport.write(frame.encode(preamble=self.preamble))
            except TransportError as exc:
                await self.transport.aclose()
                raise type(exc)(f"broadcast time: {exc}") from exc
            log.debug("dlt645 sent %s", frame.describe())

    async def aclose(self) -> None:
        async with self._lock:
            await self.transport.aclose()
