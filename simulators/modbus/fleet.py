"""Fleets of simulated meters served over Modbus TCP, RTU over TCP, or RTU on a serial port / pty.

A fleet is the meters of one endpoint (one TCP port, or one serial line), unit ids ``first_unit_id``...
``build_fleets`` spreads a large fleet over several ports (``simulators.modbus.serve`` serves them).
Meters are numbered across the whole fleet (``index``): their load profiles and the fault plan use that number,
so a fleet looks the same whichever way it is split over ports. Each unit is also named ``PORT/UNIT`` (TCP) or
``rtu/UNIT`` (a serial line), the name the relay log and the control interface (``simulators.control``) use.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal, Self

from drivers.modbus.models import MeterModel
from simulators.faults import FaultPlan
from simulators.loadprofile import LoadProfile, unit_random
from simulators.meter import Clock, SimClock, SimulatedMeter
from simulators.modbus.device import MeterUnit, ModelLayout
from simulators.modbus.server import ModbusServer, RequestTrace, WriteListener
from simulators.relaylog import RelayLog

__all__ = [
    "DEFAULT_MODEL_PATH",
    "MAX_UNITS",
    "ModbusFleet",
    "ModbusSerialFleet",
    "build_fleets",
]

log = logging.getLogger(__name__)

DEFAULT_MODEL_PATH = Path(__file__).resolve().parents[2] / "config" / "meters" / "generic-prepaid.yaml"
MAX_UNITS = 247  # Modbus unit ids 1..247


class _Fleet:
    """Meters of one model on one endpoint, unit ids ``first_unit_id``.. (base of the fleet classes)."""

    def __init__(
        self,
        model: MeterModel,
        *,
        meters: int,
        first_unit_id: int,
        seed: int,
        speed: float,
        first_index: int,
        clock: Clock | None,
        endpoint: str,
        label: str,
        faults: FaultPlan | None,
        on_write: WriteListener | None,
        relay_log: RelayLog | None,
    ) -> None:
        if meters < 1 or first_unit_id < 1 or first_unit_id + meters - 1 > MAX_UNITS:
            raise ValueError(
                f"unit ids {first_unit_id}..{first_unit_id + meters - 1} are not within 1..{MAX_UNITS}"
            )
        self.model = model
        self.endpoint = endpoint
        self.clock: Clock = clock if clock is not None else SimClock(speed=speed)
        self.faults = faults if faults is not None else FaultPlan(seed=seed)
        self.relay_log = relay_log if relay_log is not None else RelayLog()
        self.on_write = on_write
        self.trace: RequestTrace | None = None  # set before start: every request (unit id, PDU) as it arrives
        layout = ModelLayout(model)
        trip_delay = model.relay.trip_delay if model.relay is not None else 0.0
        self.units: dict[int, MeterUnit] = {}
        for offset in range(meters):
            index = first_index + offset
            meter = SimulatedMeter(
                LoadProfile.seeded(seed, index),
                clock=self.clock,
                energy_wh=1_000_000 + 49_000_000 * unit_random(seed, index, 4),  # 1 000 - 50 000 kWh
                trip_delay_s=trip_delay,
            )
            unit_id = first_unit_id + offset
            self.units[unit_id] = MeterUnit(unit_id, meter, layout, index=index, name=f"{label}/{unit_id}")
        self.meters: dict[int, SimulatedMeter] = {uid: unit.meter for uid, unit in self.units.items()}
        self._server: ModbusServer | None = None

    def index_of(self, unit_id: int) -> int:
        """The fleet index of a unit id (what fault plans name)."""
        return self.units[unit_id].index

    @property
    def requests(self) -> int:
        """Requests answered (or ignored) since the last start."""
        return self._server.requests if self._server is not None else 0

    def _new_server(self) -> ModbusServer:
        raise NotImplementedError

    async def _open(self, server: ModbusServer) -> None:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        """Start serving (again, after ``stop``: the meters keep their state)."""
        if self._server is not None:
            raise RuntimeError(f"{self.endpoint} is already serving")
        server = self._new_server()
        try:
            await self._open(server)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot serve on {self.endpoint}: {exc.strerror or exc}") from exc
        self._server = server
        log.info(
            "serving %d %s meters on %s, unit ids %d..%d",
            len(self.units),
            self.model.model,
            self.endpoint,
            min(self.units),
            max(self.units),
        )

    async def stop(self) -> None:
        """Stop answering and close every connection."""
        server, self._server = self._server, None
        if server is not None:
            await server.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


class ModbusFleet(_Fleet):
    """Simulated meters of one model on one TCP port, one unit id each; an async context manager.

    Args:
        model: the meter model file to serve (any model: registers are filled from the simulated meter).
        meters: how many meters (unit ids ``first_unit_id`` .. ``first_unit_id + meters - 1``, at most 247).
        host, port: where to listen.
        seed: selects every meter's load profile and starting energy.
        speed: simulated seconds per real second.
        framer: ``socket`` (Modbus TCP) or ``rtu`` (RTU frames over TCP, like a serial-to-Ethernet converter).
        first_index: index of the first meter in a larger fleet (its profile), so that fleets differ.
        clock: shared simulated time (default: a new ``SimClock(speed=speed)``).
        faults: the fault plan (shared by the fleets of one ``serve_modbus``); default: none, changeable later.
        on_write: called with (unit id, function code, address, values) after each applied write.
        relay_log: where relay writes are recorded (shared by the fleets of one ``serve_modbus``).
    """

    def __init__(
        self,
        model: MeterModel,
        *,
        meters: int,
        host: str = "127.0.0.1",
        port: int,
        first_unit_id: int = 1,
        seed: int = 0,
        speed: float = 1.0,
        framer: Literal["socket", "rtu"] = "socket",
        first_index: int = 0,
        clock: Clock | None = None,
        faults: FaultPlan | None = None,
        on_write: WriteListener | None = None,
        relay_log: RelayLog | None = None,
    ) -> None:
        scheme = "modbus-tcp" if framer == "socket" else "modbus-rtu-over-tcp"
        super().__init__(
            model,
            meters=meters,
            first_unit_id=first_unit_id,
            seed=seed,
            speed=speed,
            first_index=first_index,
            clock=clock,
            endpoint=f"{scheme}://{host}:{port}",
            label=str(port),
            faults=faults,
            on_write=on_write,
            relay_log=relay_log,
        )
        self.host, self.port, self.framer = host, port, framer

    def _new_server(self) -> ModbusServer:
        return ModbusServer(self.units, framer=self.framer, faults=self.faults, on_write=self.on_write,
                            trace=self.trace, relay_log=self.relay_log)

    async def _open(self, server: ModbusServer) -> None:
        await server.listen(self.host, self.port)


class ModbusSerialFleet(_Fleet):
    """Simulated meters on one serial line (a pty end or a real port), Modbus RTU; an async context manager.

    Args:
        model, meters, first_unit_id, seed, speed, first_index, clock, faults, on_write, relay_log: as for
            ``ModbusFleet``.
        port: serial device path (e.g. a socat pty), or ``socket://host:port`` to listen for RTU over TCP.
        baudrate, parity, stopbits: line settings (use parity N on a pty).
        pace: answer no sooner than a real line of ``baudrate`` would allow (a pty has no line timing).
    """

    def __init__(
        self,
        model: MeterModel,
        *,
        meters: int,
        port: str,
        baudrate: int = 9600,
        parity: Literal["N", "E", "O"] = "N",
        stopbits: Literal[1, 2] = 1,
        first_unit_id: int = 1,
        seed: int = 0,
        speed: float = 1.0,
        first_index: int = 0,
        clock: Clock | None = None,
        faults: FaultPlan | None = None,
        on_write: WriteListener | None = None,
        pace: bool = False,
        relay_log: RelayLog | None = None,
    ) -> None:
        super().__init__(
            model,
            meters=meters,
            first_unit_id=first_unit_id,
            seed=seed,
            speed=speed,
            first_index=first_index,
            clock=clock,
            endpoint=f"modbus-rtu:{port}",
            label="rtu",
            faults=faults,
            on_write=on_write,
            relay_log=relay_log,
        )
        self.port, self.baudrate, self.parity, self.stopbits = port, baudrate, parity, stopbits
        self.pace = pace

    def _new_server(self) -> ModbusServer:
        bits = 1 + 8 + (self.parity != "N") + self.stopbits
        return ModbusServer(
            self.units,
            framer="rtu",
            faults=self.faults,
            on_write=self.on_write,
            trace=self.trace,
            relay_log=self.relay_log,
            pace_baud=self.baudrate if self.pace else None,
            bits_per_char=bits,
        )

    async def _open(self, server: ModbusServer) -> None:
        if self.port.startswith("socket://"):
            host, _, port = self.port.removeprefix("socket://").rpartition(":")
            await server.listen(host or "127.0.0.1", int(port))
        else:
            await server.open_serial(self.port, baudrate=self.baudrate, parity=self.parity, stopbits=self.stopbits)


def build_fleets(
    model: MeterModel,
    *,
    meters: int,
    host: str = "127.0.0.1",
    port: int,
    per_port: int = MAX_UNITS,
    seed: int = 0,
    speed: float = 1.0,
    framer: Literal["socket", "rtu"] = "socket",
    faults: FaultPlan | None = None,
    clock: Clock | None = None,
    on_write: WriteListener | None = None,
    relay_log: RelayLog | None = None,
) -> list[ModbusFleet]:
    """``meters`` meters, ``per_port`` unit ids (1..per_port) on each of the ports port, port + 1, ...

    Every fleet shares one clock, one fault plan and one relay log; meter indices run across the ports.
    """
    if meters < 1:
        raise ValueError("meters must be at least 1")
    if not 1 <= per_port <= MAX_UNITS:
        raise ValueError(f"per_port must be within 1..{MAX_UNITS}")
    clock = clock if clock is not None else SimClock(speed=speed)
    faults = faults if faults is not None else FaultPlan(seed=seed)
    relay_log = relay_log if relay_log is not None else RelayLog()
    return [
        ModbusFleet(
            model,
            meters=min(per_port, meters - first),
            host=host,
            port=port + n,
            seed=seed,
            framer=framer,
            first_index=first,
            clock=clock,
            faults=faults,
            on_write=on_write,
            relay_log=relay_log,
        )
        for n, first in enumerate(range(0, meters, per_port))
    ]
