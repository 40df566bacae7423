"""One simulated DL/T 645 meter: registers, relay model (protocols.md §1.9), 1CH checks, faults.

Time comes from an injected UTC clock; everything is advanced lazily when the meter is looked at.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Callable
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from drivers.dlt645.address import address_to_wire, normalize_address
from drivers.dlt645.constants import ErrorBits, RemoteCommand, StatusWord3
from drivers.dlt645.messages import RemoteControlRequest
from simulators.dlt645.load import DailyLoad, tou_rate

__all__ = ["Fault", "FaultPlan", "RelayKind", "SimulatedDlt645Meter"]


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Fault(str, enum.Enum):
    SILENCE = "silence"  # no reply at all
    BAD_CHECKSUM = "bad_checksum"  # the reply with its CS byte flipped
    GARBAGE = "garbage"  # random bytes instead of the reply
    SLOW = "slow"  # the reply after ``delay`` extra seconds


@dataclass
class FaultPlan:
    """A fault for the next ``remaining`` replies (``None``: until cleared)."""

    kind: Fault
    remaining: int | None = None
    delay: float = 1.0


class RelayKind(str, enum.Enum):
    INTERNAL = "internal"  # 1BH close-allowed waits for a local action (button)
    EXTERNAL = "external"  # 1BH acts as a direct close


class SimulatedDlt645Meter:
    """State and behaviour of one meter; the bus (``simulators.dlt645.bus``) does the framing.

    Args:
        address: nameplate address.
        energy_wh: starting forward active energy per rate (4 rates), in Wh.
        load: the power source; energy accrues to the current tariff rate while the relay is closed.
        trip_delay: 跳闸延时 between a trip command (bit 6 set at once) and the contact opening (bit 4).
        passwords: password per accepted level for 1CH (plaintext levels 02H/04H by default).
        relay_kind: how 1BH close-allowed behaves.
        supports_block: whether DI 0001FF00 is answered (else "no requested data").
        timezone: the meter's local time (validity end times and tariff rates are local).
    """

    def __init__(
        self,
        address: str,
        *,
        energy_wh: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0),
        load: DailyLoad | None = None,
        trip_delay: dt.timedelta = dt.timedelta(0),
        passwords: dict[int, str] | None = None,
        relay_kind: RelayKind = RelayKind.INTERNAL,
        supports_block: bool = True,
        balance_fen: int = 0,
        overdraft_fen: int = 0,
        voltage_v: float = 220.0,
        timezone: str = "Asia/Shanghai",
        clock: Callable[[], dt.datetime] = _utcnow,
    ) -> None:
        self.address = normalize_address(address)
        self.wire_address = address_to_wire(self.address)
        self.load = load or DailyLoad()
        self.trip_delay = trip_delay
        self.passwords = dict(passwords) if passwords is not None else {0x02: "000000", 0x04: "000000"}
        self.relay_kind = relay_kind
        self.supports_block = supports_block
        self.balance_fen = balance_fen
        self.overdraft_fen = overdraft_fen
        self.voltage_v = voltage_v
        self.timezone = ZoneInfo(timezone)
        self.clock = clock
        self.clock_offset = dt.timedelta(0)  # set by 08H time sync
        self.fault: FaultPlan | None = None
        self.extra_registers: dict[int, bytes] = {}  # DI -> raw value bytes, answered as-is
        self.commands: list[RemoteControlRequest] = []  # accepted 1CH commands, newest last
        self.refusals: list[tuple[int, int]] = []  # (N1, ERR) of refused 1CH commands
        self._energy = list(energy_wh)
        self._last = clock()
        self._commanded_trip = False
        self._contact_open = False
        self._trip_at: dt.datetime | None = None
        self.protected = False
        self.alarm = False
        self._trip_before_protect = False

    def __repr__(self) -> str:
        return f"<SimulatedDlt645Meter {self.address} relay={self.relay_state}>"

    # --- time and energy ------------------------------------------------------------------------------

    def local_now(self) -> dt.datetime:
        """The meter's own wall clock (naive local time), including the offset set by time sync."""
        return (self.clock() + self.clock_offset).astimezone(self.timezone).replace(tzinfo=None)

    def set_time(self, local: dt.datetime) -> None:
        """08H: set the meter's clock to a local wall time."""
        true_local = self.clock().astimezone(self.timezone).replace(tzinfo=None)
        self.clock_offset = local - true_local

    def advance(self) -> None:
        """Bring relay and energy up to the clock. Energy is integrated with the power at each step's start."""
        now = self.clock()
        if self._trip_at is not None and now >= self._trip_at:
            self._accrue(self._trip_at)
            self._contact_open, self._trip_at = True, None
        self._accrue(now)

    def _accrue(self, until: dt.datetime) -> None:
        seconds = (until - self._last).total_seconds()
        if seconds > 0 and not self._contact_open:
            local = (self._last + self.clock_offset).astimezone(self.timezone)
            self._energy[tou_rate(local) - 1] += self.load.power_w(local) * seconds / 3600
        self._last = max(self._last, until)

    @property
    def energy_wh_by_rate(self) -> tuple[float, ...]:
        self.advance()
        return tuple(self._energy)

    @property
    def energy_wh(self) -> float:
        return sum(self.energy_wh_by_rate)

    def add_energy(self, wh: float, rate: int = 1) -> None:
        """Test hook: add consumption to one rate at once."""
        self.advance()
        self._energy[rate - 1] += wh

    @property
    def power_w(self) -> float:
        self.advance()
        if self._contact_open:
            return 0.0
        return self.load.power_w((self.clock() + self.clock_offset).astimezone(self.timezone))

    @property
    def current_a(self) -> float:
        return self.power_w / self.voltage_v if self.voltage_v else 0.0

    # --- relay ----------------------------------------------------------------------------------------

    @property
    def relay_open(self) -> bool:
        """The actual contact (status word 3 bit 4)."""
        self.advance()
        return self._contact_open

    @property
    def relay_state(self) -> str:
        return "open" if self.relay_open else "closed"

    @property
    def commanded_trip(self) -> bool:
        return self._commanded_trip

    @property
    def status_word_3(self) -> int:
        self.advance()
        word = StatusWord3.PREPAID_MONEY  # bits 8-9 = 10: money-type prepaid
        if self._contact_open:
            word |= StatusWord3.RELAY_OPEN
        if self._commanded_trip:
            word |= StatusWord3.RELAY_COMMAND_TRIP
        if self.alarm or self._trip_at is not None:
            word |= StatusWord3.PRE_TRIP_ALARM
        if self.protected:
            word |= StatusWord3.PROTECTED
        return int(word)

    def press_button(self) -> None:
        """The customer's local close after 1BH close-allowed (internal relays)."""
        self.advance()
        if not self._commanded_trip:
            self._contact_open = False

    def remote_control(self, request: RemoteControlRequest) -> int | None:
        """Apply a 1CH command; returns an ERR byte when refused, ``None`` when accepted."""
        self.advance()
        if self.passwords.get(request.password_level) != request.password:
            err: int | None = ErrorBits.PASSWORD
        elif request.valid_until < self.local_now():
            err = ErrorBits.OTHER  # expired; the grid extensions' exact code is [UNVERIFIED]
        else:
            err = self._apply(request.command)
        if err is None:
            self.commands.append(request)
        else:
            self.refusals.append((request.command, err))
        return err

    def _apply(self, command: int) -> int | None:
        now = self.clock()
        if command == RemoteCommand.TRIP:
            if self.protected:
                return ErrorBits.OTHER  # trip refused while 保电 (R_ERR_OFF_PROTECT)
            self._commanded_trip = True
            if not self._contact_open and self._trip_at is None:
                self._trip_at = now + self.trip_delay
                self.advance()
        elif command == RemoteCommand.DIRECT_CLOSE or (
            command == RemoteCommand.CLOSE_ALLOWED and self.relay_kind is RelayKind.EXTERNAL
        ):
            self._commanded_trip, self._trip_at, self._contact_open = False, None, False
        elif command == RemoteCommand.CLOSE_ALLOWED:
            self._commanded_trip, self._trip_at = False, None  # contact stays open until press_button()
        elif command == RemoteCommand.ALARM:
            self.alarm = True
        elif command == RemoteCommand.ALARM_RELEASE:
            self.alarm = False
        elif command == RemoteCommand.PROTECT:
            # 保电 keeps the power on; 3BH returns to the state before it (§1.9, indicative firmware semantics)
            if not self.protected:
                self._trip_before_protect = self._commanded_trip
            self.protected = True
            self._commanded_trip, self._trip_at, self._contact_open = False, None, False
        elif command == RemoteCommand.PROTECT_RELEASE:
            if self.protected and self._trip_before_protect:
                self._commanded_trip, self._trip_at = True, now + self.trip_delay
            self.protected, self._trip_before_protect = False, False
            self.advance()
        else:
            return ErrorBits.OTHER
        return None

    # --- faults ---------------------------------------------------------------------------------------

    def inject(self, kind: Fault | str, *, count: int | None = None, delay: float = 1.0) -> None:
        """Make the next ``count`` replies (all, if ``None``) faulty."""
        self.fault = FaultPlan(Fault(kind), count, delay)

    def clear_fault(self) -> None:
        self.fault = None

    def take_fault(self) -> FaultPlan | None:
        """The fault to apply to the reply being sent now (consumes one from a counted plan)."""
        plan = self.fault
        if plan is None:
            return None
        if plan.remaining is not None:
            plan.remaining -= 1
            if plan.remaining <= 0:
                self.fault = None
        return plan
