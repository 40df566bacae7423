"""Simulated meters as the control interface (``simulators.control``) sees them, the same for both protocols.

A ``MeterHandle`` names one meter twice: by its ``index`` in the fleet (what fault plans use: 0, 1, 2 ...) and by
its protocol identity ``id`` (Modbus ``PORT/UNIT`` or ``rtu/UNIT``, DL/T 645 the 12-digit address). It reports
the meter's state as JSON and changes what a test bench may change while the simulator runs. What a protocol
does not have (保电 and the close-allowed button on Modbus meters) raises ``Unsupported``. The protocols'
subclasses are ``simulators.modbus.handle.ModbusHandle`` and ``simulators.dlt645.handle.Dlt645Handle``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from simulators.faults import FaultKind, FaultPlan
from simulators.meter import SimulatedMeter

__all__ = ["MeterHandle", "Unsupported"]


class Unsupported(Exception):
    """The meter's protocol has no such thing (answered 400 by the control interface)."""


class MeterHandle:
    """One meter, whatever its protocol.

    Args:
        index: the meter's index in the fleet.
        id: its protocol identity.
        meter: the protocol-independent simulated meter (energy, power, relay, trip delay).
    """

    protocol: ClassVar[str] = ""

    def __init__(self, index: int, id: str, meter: SimulatedMeter) -> None:
        self.index = index
        self.id = id
        self.meter = meter

    # --- state ----------------------------------------------------------------------------------------------
    def snapshot(self, faults: FaultPlan) -> dict[str, Any]:
        """The meter as JSON (``GET /meters``).

        Args:
            faults: the fleet's fault plan (which faults this meter has now).
        """
        active = faults.faults(self.index) if faults else ()
        kinds = {f.kind for f in active}
        slow = max((f.delay_s for f in active if f.kind is FaultKind.SLOW), default=0.0)
        return {
            "index": self.index,
            "id": self.id,
            "protocol": self.protocol,
            "energy_wh": self.meter.energy_wh,
            "power_w": round(self.meter.power_w, 1),
            "relay": "closed" if self.meter.relay_closed else "open",
            "relay_commanded": "closed" if self.commanded_closed else "open",
            "faults": [f.text for f in active],
            "silent": FaultKind.NO_ANSWER in kinds,
            "mute": FaultKind.MUTE in kinds,
            "stuck": FaultKind.RELAY_STUCK in kinds,
            "slow_s": slow,
            "trip_delay_s": self.meter.trip_delay_s,
            "tamper": sorted(self.meter.tamper | faults.tamper(self.index)),
            "protect": None,
            "close_allowed": None,
            "awaiting_button": False,
        }

    @property
    def commanded_closed(self) -> bool:
        """What the relay was last commanded to be (differs from the contact during a trip delay)."""
        return self.meter.relay_commanded_closed

    # --- changes --------------------------------------------------------------------------------------------
    def set_energy(self, energy_wh: float) -> None:
        """Set the energy counter.

        Args:
            energy_wh: the new total import energy in Wh.
        """
        self.meter.set_energy_wh(energy_wh)

    def set_power(self, watts: float | None) -> None:
        """Hold the load at ``watts`` (``None``: back to the load profile).

        Args:
            watts: the active power from now on.
        """
        self.meter.set_power_w(watts)

    def set_trip_delay(self, seconds: float) -> None:
        """Set the real seconds between a trip command and the contact opening (for later trips).

        Args:
            seconds: the delay, 0 for at once.
        """
        self.meter.trip_delay_s = seconds

    def set_tamper(self, flag: str, on: bool) -> None:
        """Raise or clear one of the meter's own tamper flags (served beside those of the fault plan).

        Args:
            flag: ``cover_open`` or ``terminal_cover_open``.
            on: raise or clear.
        """
        self.meter.set_tamper(flag, on)

    def set_protect(self, on: bool) -> None:
        """Enter or leave 保电 (DL/T 645 only).

        Args:
            on: protect or release.
        """
        raise Unsupported(f"{self.protocol} meters have no protect state (保电)")

    def press_button(self) -> bool:
        """The customer presses the meter's button; True when that closed the relay (DL/T 645 only)."""
        raise Unsupported(f"{self.protocol} meters have no close-allowed button")

    def clear_own_faults(self) -> None:
        """Remove faults the meter holds itself (besides the fleet plan); none by default."""
