"""One simulated DL/T 645 meter: the shared protocol-independent meter (``simulators.meter``) plus what
DL/T 645 adds: an address, the 1CH relay model of protocols.md §1.9, password and validity checks, the prepaid
registers, status words 3 and 7 (relay, tamper), a settable meter clock (08H) and per-meter fault injection.

Per-meter faults (``inject``) act on replies only: ``silence`` loses the reply of a request the meter has
executed (like the fleet plan's ``mute``, not like ``no-answer``), ``bad_checksum``, ``garbage`` and ``slow``
spoil or delay it. The fleet-wide ``simulators.faults.FaultPlan`` is applied by the bus and the server.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from drivers.dlt645.address import address_to_wire, normalize_address
from drivers.dlt645.constants import ErrorBits, RemoteCommand, StatusWord3, StatusWord7
from drivers.dlt645.messages import RemoteControlRequest
from simulators.meter import Clock, SimulatedMeter

__all__ = ["COMMAND_NAMES", "Fault", "FaultPlan", "RelayKind", "SimulatedDlt645Meter"]

# What each 1CH N1 asks, in the words of the relay log.
COMMAND_NAMES: dict[int, str] = {
    RemoteCommand.TRIP: "trip",
    RemoteCommand.CLOSE_ALLOWED: "close-allowed",
    RemoteCommand.DIRECT_CLOSE: "close",
    RemoteCommand.ALARM: "alarm",
    RemoteCommand.ALARM_RELEASE: "alarm-release",
    RemoteCommand.PROTECT: "protect",
    RemoteCommand.PROTECT_RELEASE: "protect-release",
}


class Fault(str, enum.Enum):
    """A per-meter reply fault (see the module docstring)."""

    SILENCE = "silence"  # no reply at all (the request was executed)
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
    """How 1BH close-allowed behaves (protocols.md §1.9)."""

    INTERNAL = "internal"  # 1BH close-allowed waits for a local action (button)
    EXTERNAL = "external"  # 1BH acts as a direct close


class SimulatedDlt645Meter:
    """A DL/T 645 face on a ``SimulatedMeter``; the bus (``simulators.dlt645.bus``) does the framing.

    Args:
        address: nameplate address.
        meter: the protocol-independent meter (energy per rate from its load profile, relay with trip delay,
            balance). Its clock is the simulated UNIX time.
        passwords: password per accepted 1CH level (plaintext levels 02H/04H by default).
        relay_kind: how 1BH close-allowed behaves.
        supports_block: whether DI 0001FF00 is answered (else "no requested data").
        overdraft_fen: the 00900201 register.
        timezone: the meter's local time (validity end times are local).
    """

    def __init__(
        self,
        address: str,
        meter: SimulatedMeter,
        *,
        passwords: dict[int, str] | None = None,
        relay_kind: RelayKind = RelayKind.INTERNAL,
        supports_block: bool = True,
        overdraft_fen: int = 0,
        timezone: str = "Asia/Shanghai",
    ) -> None:
        self.address = normalize_address(address)
        self.wire_address = address_to_wire(self.address)
        self.meter = meter
        self.passwords = dict(passwords) if passwords is not None else {0x02: "000000", 0x04: "000000"}
        self.relay_kind = relay_kind
        self.supports_block = supports_block
        self.overdraft_fen = overdraft_fen
        self.timezone = ZoneInfo(timezone)
        self.clock_offset = dt.timedelta(0)  # set by 08H time sync
        self.fault: FaultPlan | None = None
        self.extra_registers: dict[int, bytes] = {}  # DI -> raw value bytes, answered as-is
        self.missing_registers: set[int] = set()  # DIs answered "no requested data" (a meter without them)
        self.commands: list[RemoteControlRequest] = []  # accepted 1CH commands, newest last
        self.refusals: list[tuple[int, int]] = []  # (N1, ERR) of refused 1CH commands
        self.protected = False
        self.alarm = False
        self._commanded_trip = not meter.relay_commanded_closed
        self._trip_before_protect = False

    def __repr__(self) -> str:
        return f"<SimulatedDlt645Meter {self.address} relay={self.relay_state}>"

    @property
    def clock(self) -> Clock:
        return self.meter.clock

    # --- time and measurements ------------------------------------------------------------------------

    def utc_now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.clock.now(), dt.UTC)

    def local_now(self) -> dt.datetime:
        """The meter's own wall clock (naive local time), including the offset set by time sync."""
        return (
            (self.utc_now() + self.clock_offset).astimezone(self.timezone).replace(tzinfo=None, microsecond=0)
        )

    def set_time(self, local: dt.datetime) -> None:
        """08H: set the meter's clock to a local wall time."""
        true_local = self.utc_now().astimezone(self.timezone).replace(tzinfo=None)
        self.clock_offset = local - true_local

    @property
    def energy_wh_by_rate(self) -> tuple[int, ...]:
        return self.meter.energy_wh_by_rate

    @property
    def energy_wh(self) -> int:
        return sum(self.energy_wh_by_rate)

    @property
    def power_w(self) -> float:
        return self.meter.power_w

    @property
    def voltage_v(self) -> float:
        return self.meter.voltage_v

    @property
    def current_a(self) -> float:
        return self.meter.current_a

    @property
    def balance_fen(self) -> int:
        return self.meter.balance_fen

    @balance_fen.setter
    def balance_fen(self, value: int) -> None:
        self.meter.balance_fen = value

    # --- relay ----------------------------------------------------------------------------------------

    @property
    def relay_open(self) -> bool:
        """The actual contact (status word 3 bit 4)."""
        return not self.meter.relay_closed

    @property
    def relay_state(self) -> str:
        return "open" if self.relay_open else "closed"

    @property
    def commanded_trip(self) -> bool:
        """Status word 3 bit 6: set at once by a trip, before the contact moves."""
        return self._commanded_trip

    @property
    def trip_pending(self) -> bool:
        return self._commanded_trip and not self.relay_open

    @property
    def status_word_3(self) -> int:
        word = StatusWord3.PREPAID_MONEY  # bits 8-9 = 10: money-type prepaid
        if self.relay_open:
            word |= StatusWord3.RELAY_OPEN
        if self._commanded_trip:
            word |= StatusWord3.RELAY_COMMAND_TRIP
        if self.alarm or self.trip_pending:
            word |= StatusWord3.PRE_TRIP_ALARM
        if self.protected:
            word |= StatusWord3.PROTECTED
        return int(word)

    def status_word_7(self, injected: frozenset[str] = frozenset()) -> int:
        """Status word 7 (04000507): the tamper bits (9 cover, 10 terminal cover) of the meter's tamper flags and
        of ``injected`` (the fleet fault plan's)."""
        flags = self.meter.tamper_flags | injected if injected else self.meter.tamper_flags
        word = 0
        if "cover_open" in flags:
            word |= StatusWord7.COVER_OPEN
        if "terminal_cover_open" in flags:
            word |= StatusWord7.TERMINAL_COVER_OPEN
        return int(word)

    @property
    def awaiting_button(self) -> bool:
        """An internal relay armed by 1BH close-allowed: commanded closed, contact open until ``press_button``."""
        return self.relay_kind is RelayKind.INTERNAL and not self._commanded_trip and self.relay_open

    def press_button(self) -> bool:
        """The customer's local close after 1BH close-allowed (internal relays); True when the contact closed."""
        if self._commanded_trip or not self.relay_open:
            return False
        self.meter.set_relay(True)
        return True

    def set_protect(self, on: bool) -> None:
        """Enter or leave 保电 as 3AH / 3BH do (for a test bench, or a meter that starts protected)."""
        self._apply(RemoteCommand.PROTECT if on else RemoteCommand.PROTECT_RELEASE)

    def remote_control(self, request: RemoteControlRequest) -> int | None:
        """Apply a 1CH command; returns an ERR byte when refused, ``None`` when accepted."""
        refusal = self.execute(request)
        return None if refusal is None else refusal[0]

    def execute(self, request: RemoteControlRequest) -> tuple[int, str] | None:
        """Apply a 1CH command; returns ``(ERR byte, reason)`` when refused, ``None`` when accepted.

        The reasons are the relay log's: ``password``, ``expired``, ``protect``, ``unknown-command``.

        Args:
            request: the decoded 1CH data field.
        """
        refusal: tuple[int, str] | None
        if self.passwords.get(request.password_level) != request.password:
            refusal = (ErrorBits.PASSWORD, "password")
        elif request.valid_until < self.local_now():
            refusal = (ErrorBits.OTHER, "expired")  # the grid extensions' exact code is [UNVERIFIED]
        else:
            refusal = self._apply(request.command)
        if refusal is None:
            self.commands.append(request)
        else:
            self.refusals.append((request.command, refusal[0]))
        return refusal

    def _trip(self) -> None:
        self._commanded_trip = True
        self.meter.set_relay(False)  # opens after the meter's trip delay

    def _apply(self, command: int) -> tuple[int, str] | None:
        if command == RemoteCommand.TRIP:
            if self.protected:
                return ErrorBits.OTHER, "protect"  # trip refused while 保电 (R_ERR_OFF_PROTECT)
            self._trip()
        elif command == RemoteCommand.DIRECT_CLOSE or (
            command == RemoteCommand.CLOSE_ALLOWED and self.relay_kind is RelayKind.EXTERNAL
        ):
            self._commanded_trip = False
            self.meter.set_relay(True)
        elif command == RemoteCommand.CLOSE_ALLOWED:
            self._commanded_trip = False
            if not self.relay_open:
                self.meter.set_relay(True)  # cancels a pending trip; an open contact waits for press_button()
        elif command == RemoteCommand.ALARM:
            self.alarm = True
        elif command == RemoteCommand.ALARM_RELEASE:
            self.alarm = False
        elif command == RemoteCommand.PROTECT:
            # 保电 keeps the power on; 3BH returns to the state before it (§1.9, indicative firmware semantics)
            if not self.protected:
                self._trip_before_protect = self._commanded_trip
            self.protected, self._commanded_trip = True, False
            self.meter.set_relay(True)
        elif command == RemoteCommand.PROTECT_RELEASE:
            if self.protected and self._trip_before_protect:
                self._trip()
            self.protected, self._trip_before_protect = False, False
        else:
            return ErrorBits.OTHER, "unknown-command"
        return None

    # --- faults ---------------------------------------------------------------------------------------

    def inject(self, kind: Fault | str, *, count: int | None = None, delay: float = 1.0) -> None:
        """Make the next ``count`` replies (all, if ``None``) faulty."""
        self.fault = FaultPlan(Fault(kind), count, delay)

    def clear_fault(self) -> None:
        """Remove the per-meter fault."""
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
