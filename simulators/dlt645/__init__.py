"""Simulated DL/T 645-2007 meters: many addresses on one bus, relay model, prepaid registers, faults."""

from simulators.dlt645.bus import SimulatedBus, read_register
from simulators.dlt645.model import Fault, FaultPlan, RelayKind, SimulatedDlt645Meter
from simulators.dlt645.serve import serve_dlt645
from simulators.dlt645.server import Dlt645Simulator, make_meters

__all__ = [
    "Dlt645Simulator",
    "Fault",
    "FaultPlan",
    "RelayKind",
    "SimulatedBus",
    "SimulatedDlt645Meter",
    "make_meters",
    "read_register",
    "serve_dlt645",
]
