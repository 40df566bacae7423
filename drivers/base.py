"""The one interface every meter protocol implements (like an httpx transport).

A driver owns one bus (a serial port, a serial-to-Ethernet converter, or a Modbus TCP endpoint) and talks to the
meters on it one transaction at a time. The gateway's bus scheduler depends on this module only.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

__all__ = ["MeterDriver", "Reading", "RelayAction", "RelayState"]


class RelayAction(str, enum.Enum):
    """What a relay command asks for."""

    OPEN = "open"  # trip / disconnect
    CLOSE = "close"  # reconnect


class RelayState(str, enum.Enum):
    """The actual contact state as the meter reports it."""

    OPEN = "open"
    CLOSED = "closed"
    ARMED = "armed"  # close commanded ("close allowed"), contact still open: the meter waits for its button
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Reading:
    """One poll of one meter. Units are fixed here: energy in Wh, power in W, time in UTC.

    ``energy_wh`` is the cumulative forward (import) active energy total. ``energy_wh_by_rate`` holds the
    meter's own per-rate registers (尖, 峰, 平, 谷 = rates 1..4) when it has them.
    """

    meter_id: str
    taken_at: dt.datetime
    energy_wh: int
    energy_wh_by_rate: tuple[int, ...] | None = None
    power_w: int | None = None
    voltage_v: float | None = None
    current_a: float | None = None
    relay: RelayState | None = None
    meter_balance_fen: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


M = TypeVar("M")


class MeterDriver(Generic[M]):
    """Base class of meter drivers; ``M`` is the driver's own meter description (unit id, address, model...).

    Drivers are async context managers; ``aclose`` releases the bus.
    """

    async def read(self, meter: M) -> Reading:
        """Read one meter: cumulative energy, and whatever else its model provides (power, voltage, relay...).

        Raises a ``drivers.errors.DriverError`` subclass on any failure; never a library exception.
        """
        raise NotImplementedError("The 'read' method must be implemented.")

    async def set_relay(self, meter: M, action: RelayAction, *, valid_until: dt.datetime | None = None) -> None:
        """Send a relay command (OPEN = trip, CLOSE = reconnect). Returns once the meter accepted it.

        It does not wait for the contact to move: confirm with ``read_relay``. ``valid_until`` (UTC) is the
        command's expiry; protocols that can carry it (DL/T 645 1CH) send it so that a late frame is refused.
        A meter's refusal raises ``CommandRefused`` with the meter's reason.
        """
        raise NotImplementedError("The 'set_relay' method must be implemented.")

    async def read_relay(self, meter: M) -> RelayState:
        """Read the actual contact state back from the meter."""
        raise NotImplementedError("The 'read_relay' method must be implemented.")

    async def aclose(self) -> None:
        """Release the bus."""

    async def __aenter__(self) -> MeterDriver[M]:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
