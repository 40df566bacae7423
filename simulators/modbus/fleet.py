"""Fleets of simulated meters served over Modbus TCP, RTU over TCP, or RTU on a serial port / pty."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Literal, Self

from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.server.base import ModbusBaseServer
from pymodbus.simulator import SimDevice

from drivers.modbus.models import MeterModel, load_model
from simulators.loadprofile import LoadProfile, unit_random
from simulators.meter import Clock, SimClock, SimulatedMeter
from simulators.modbus.device import MeterUnit, ModelLayout

__all__ = ["DEFAULT_MODEL_PATH", "MAX_UNITS", "ModbusFleet", "ModbusSerialFleet", "serve_modbus"]

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
    ) -> None:
        if meters < 1 or first_unit_id < 1 or first_unit_id + meters - 1 > MAX_UNITS:
            raise ValueError(
                f"unit ids {first_unit_id}..{first_unit_id + meters - 1} are not within 1..{MAX_UNITS}"
            )
        self.model = model
        self.endpoint = endpoint
        self.clock: Clock = clock if clock is not None else SimClock(speed=speed)
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
            self.units[first_unit_id + offset] = MeterUnit(first_unit_id + offset, meter, layout)
        self.meters: dict[int, SimulatedMeter] = {uid: unit.meter for uid, unit in self.units.items()}
        self._server: ModbusBaseServer | None = None

    def _new_server(self, devices: list[SimDevice]) -> ModbusBaseServer:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        """Start serving (again, after ``stop``: the meters keep their state)."""
        if self._server is not None:
            raise RuntimeError(f"{self.endpoint} is already serving")
        server = self._new_server([unit.sim_device() for unit in self.units.values()])
        try:
            await server.serve_forever(background=True)
        except RuntimeError as exc:  # pymodbus: "Could not start listen, please check address."
            raise OSError(f"cannot serve on {self.endpoint}: {exc}") from exc
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
            await server.shutdown()  # type: ignore[no-untyped-call]

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
        )
        self.host, self.port, self.framer = host, port, framer

    def _new_server(self, devices: list[SimDevice]) -> ModbusBaseServer:
        framer = FramerType.SOCKET if self.framer == "socket" else FramerType.RTU
        return ModbusTcpServer(devices, address=(self.host, self.port), framer=framer)


class ModbusSerialFleet(_Fleet):
    """Simulated meters on one serial line (a pty end or a real port), Modbus RTU; an async context manager.

    Args:
        model, meters, first_unit_id, seed, speed, first_index, clock: as for ``ModbusFleet``.
        port: serial device path (e.g. a socat pty), or ``socket://host:port`` to listen for RTU over TCP.
        baudrate, parity, stopbits: line settings (use parity N on a pty).
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
        )
        self.port, self.baudrate, self.parity, self.stopbits = port, baudrate, parity, stopbits

    def _new_server(self, devices: list[SimDevice]) -> ModbusBaseServer:
        return ModbusSerialServer(
            devices,
            framer=FramerType.RTU,
            port=self.port,
            baudrate=self.baudrate,
            parity=self.parity,
            stopbits=self.stopbits,
        )


async def serve_modbus(
    *,
    model_path: str | None,
    meters: int,
    host: str,
    port: int,
    seed: int,
    speed: float,
    framer: Literal["socket", "rtu"] = "socket",
) -> None:
    """Serve ``meters`` simulated meters until cancelled: 247 unit ids per TCP port, on port, port + 1, ..."""
    if meters < 1:
        raise ValueError("meters must be at least 1")
    model = load_model(model_path if model_path is not None else DEFAULT_MODEL_PATH)
    clock = SimClock(speed=speed)
    fleets = [
        ModbusFleet(
            model,
            meters=min(MAX_UNITS, meters - first),
            host=host,
            port=port + n,
            seed=seed,
            framer=framer,
            first_index=first,
            clock=clock,
        )
        for n, first in enumerate(range(0, meters, MAX_UNITS))
    ]
    try:
        for fleet in fleets:
            await fleet.start()
        await asyncio.Event().wait()
    finally:
        for fleet in fleets:
            with contextlib.suppress(Exception):
                await fleet.stop()
