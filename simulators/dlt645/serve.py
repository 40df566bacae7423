"""``serve_dlt645``: the ``meter-gateway simulate dlt645`` command: simulated DL/T 645 meters on one bus (a serial
path and/or TCP), with the fleet fault plan, trip delay, 保电, close-allowed relays and the control interface.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from simulators.control import ControlServer, parse_host_port
from simulators.dlt645.handle import dlt645_handles
from simulators.dlt645.model import RelayKind
from simulators.dlt645.server import Dlt645Simulator
from simulators.faults import FaultPlan, parse_faults

__all__ = ["serve_dlt645"]

log = logging.getLogger(__name__)


async def serve_dlt645(
    *,
    meters: int,
    serial: str | None,
    tcp: str | None,
    baud: int,
    pace: bool,
    seed: int,
    first_address: int = 1,
    speed: float = 1.0,
    faults: str | FaultPlan | None = None,
    trip_delay_s: float = 0.0,
    close_allowed: bool = False,
    protect: Iterable[int] = (),
    control: str | None = None,
    started: asyncio.Event | None = None,
) -> None:
    """Serve ``meters`` simulated meters until cancelled.

    Args:
        meters: how many meters, addresses ``first_address`` … consecutive, numbered 0.. on the bus.
        serial: a serial device path (or pty end) to serve on.
        tcp: ``HOST:PORT`` to listen on.
        baud: line rate (``pace`` and ``serial``).
        pace: emulate line time and the reply delay Td.
        seed: seeds loads, energies, Td draws and fractional fault rules.
        first_address: the first meter's address as a number.
        speed: simulated seconds per real second (the meters' clocks run this fast too).
        faults: a ``FaultPlan`` or its text form (``"no-answer@10%; mute@3"``, see ``simulators.faults``).
        trip_delay_s: real seconds between a trip (status word 3 bit 6 at once) and the contact opening (bit 4).
        close_allowed: 1BH leaves an open relay open until the button is pressed (internal-relay meters);
            otherwise 1BH closes at once, like 1CH (external-relay meters).
        protect: indices of the meters that start in 保电 (trips refused with ERR bit 0).
        control: ``HOST:PORT`` of the HTTP control interface (``simulators.control``), or None.
        started: set once everything listens.
    """
    if serial is None and tcp is None:
        raise ValueError("give a serial path, a TCP host:port, or both")
    plan = faults if isinstance(faults, FaultPlan) else parse_faults(faults, seed=seed)
    address = parse_host_port(control) if control is not None else None
    async with Dlt645Simulator(
        meters=meters,
        serial=serial,
        tcp=tcp,
        baud=baud,
        pace=pace,
        seed=seed,
        first_address=first_address,
        speed=speed,
        faults=plan,
        trip_delay_s=trip_delay_s,
        relay_kind=RelayKind.INTERNAL if close_allowed else RelayKind.EXTERNAL,
        protect=protect,
    ) as simulator:
        addresses = ", ".join(m.address for m in simulator.meters[:5]) + (
            " …" if len(simulator.meters) > 5 else ""
        )
        log.info("dlt645 simulator serving %s (tcp port %s)", addresses, simulator.tcp_port)
        server = None
        if address is not None:
            server = ControlServer(dlt645_handles(simulator.meters), plan, simulator.relay_log, protocol="dlt645")
            await server.start(*address)
        try:
            if started is not None:
                started.set()
            await asyncio.Event().wait()
        finally:
            if server is not None:
                await server.stop()
