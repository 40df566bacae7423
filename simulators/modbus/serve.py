"""``serve_modbus``: the ``meter-gateway simulate modbus`` command: fleets of simulated Modbus meters on TCP ports or
one serial line, one fault plan and one relay log for all of them, and optionally the HTTP control interface.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Literal

from drivers.modbus.models import load_model
from simulators.control import ControlServer, parse_host_port
from simulators.faults import FaultPlan, parse_faults
from simulators.modbus.fleet import (
    DEFAULT_MODEL_PATH,
    MAX_UNITS,
    ModbusFleet,
    ModbusSerialFleet,
    build_fleets,
)
from simulators.modbus.handle import modbus_handles
from simulators.modbus.server import WriteListener
from simulators.relaylog import RelayLog

__all__ = ["serve_modbus"]

log = logging.getLogger(__name__)


async def serve_modbus(
    *,
    model_path: str | None,
    meters: int,
    host: str = "127.0.0.1",
    port: int = 5020,
    seed: int = 0,
    speed: float = 1.0,
    framer: Literal["socket", "rtu"] = "socket",
    per_port: int = MAX_UNITS,
    serial: str | None = None,
    baudrate: int = 9600,
    pace: bool = False,
    faults: str | FaultPlan | None = None,
    on_write: WriteListener | None = None,
    started: asyncio.Event | None = None,
    control: str | None = None,
) -> None:
    """Serve simulated meters until cancelled.

    On TCP: ``per_port`` unit ids on each of port, port + 1, ... (Modbus TCP, or RTU framing with
    ``framer="rtu"``). With ``serial`` (a device, a pty, or ``socket://host:port``): up to 247 meters on that one
    RTU line. ``faults`` is a fault plan or its text form (``simulators.faults``). ``control`` (``HOST:PORT``)
    also serves the HTTP control interface (``simulators.control``).
    """
    model = load_model(model_path if model_path is not None else DEFAULT_MODEL_PATH)
    plan = faults if isinstance(faults, FaultPlan) else parse_faults(faults, seed=seed)
    relay_log = RelayLog()
    fleets: list[ModbusFleet | ModbusSerialFleet]
    if serial is not None:
        if meters > MAX_UNITS:
            raise ValueError(f"one RTU line has at most {MAX_UNITS} unit ids")
        fleets = [ModbusSerialFleet(model, meters=meters, port=serial, baudrate=baudrate, seed=seed, speed=speed,
                                    faults=plan, on_write=on_write, pace=pace, relay_log=relay_log)]
    else:
        fleets = list(build_fleets(model, meters=meters, host=host, port=port, per_port=per_port, seed=seed,
                                   speed=speed, framer=framer, faults=plan, on_write=on_write,
                                   relay_log=relay_log))
    server = None if control is None else ControlServer(modbus_handles(fleets), plan, relay_log,
                                                        protocol="modbus")
    try:
        for fleet in fleets:
            await fleet.start()
        if server is not None and control is not None:
            await server.start(*parse_host_port(control))
        if plan:
            for kind in sorted({f.kind for i in range(meters) for f in plan.faults(i)}, key=lambda k: k.value):
                log.info("fault %s: %d meters", kind.value, len(plan.selected(kind, meters)))
        if started is not None:
            started.set()
        await asyncio.Event().wait()
    finally:
        if server is not None:
            await server.stop()
        for fleet in fleets:
            with contextlib.suppress(Exception):
                await fleet.stop()
