"""A DL/T 645 meter as the control interface sees it (``simulators.handles``): named by its 12-digit address,
with 保电, the close-allowed button and status word 3."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from simulators.dlt645.model import RelayKind, SimulatedDlt645Meter
from simulators.faults import FaultPlan
from simulators.handles import MeterHandle

__all__ = ["Dlt645Handle", "dlt645_handles"]


class Dlt645Handle(MeterHandle):
    """A DL/T 645 meter on a simulated bus.

    Args:
        index: its index on the bus.
        meter: the DL/T 645 meter (address, 保电, relay kind, status word 3).
    """

    protocol = "dlt645"

    def __init__(self, index: int, meter: SimulatedDlt645Meter) -> None:
        super().__init__(index, meter.address, meter.meter)
        self.dlt645 = meter

    @property
    def commanded_closed(self) -> bool:
        return not self.dlt645.commanded_trip

    def snapshot(self, faults: FaultPlan) -> dict[str, Any]:
        own = self.dlt645.fault
        return super().snapshot(faults) | {
            "protect": self.dlt645.protected,
            "close_allowed": self.dlt645.relay_kind is RelayKind.INTERNAL,
            "awaiting_button": self.dlt645.awaiting_button,
            "status_word_3": f"0x{self.dlt645.status_word_3:04X}",
            "meter_time": self.dlt645.local_now().isoformat(),
            "injected": None if own is None else {"kind": own.kind.value, "remaining": own.remaining},
        }

    def set_protect(self, on: bool) -> None:
        self.dlt645.set_protect(on)

    def press_button(self) -> bool:
        return self.dlt645.press_button()

    def clear_own_faults(self) -> None:
        self.dlt645.clear_fault()


def dlt645_handles(meters: Iterable[SimulatedDlt645Meter]) -> list[MeterHandle]:
    """Every meter of one bus, in bus order.

    Args:
        meters: the bus's meters (``SimulatedBus.meters``).
    """
    return [Dlt645Handle(index, meter) for index, meter in enumerate(meters)]
