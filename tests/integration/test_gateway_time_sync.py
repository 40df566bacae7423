"""A DL/T 645 bus with `time_sync_s` broadcasts the time (08H) on that schedule: a meter whose clock drifted is
set right without anyone asking."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from gateway.bootstrap import Gateway
from gateway.settings import Settings
from simulators.dlt645 import Dlt645Simulator
from tests.support import async_wait_until, free_port


async def test_scheduled_broadcast_time_sync(tmp_path: Path) -> None:
    port = free_port()
    settings = Settings.model_validate({
        "database": {"url": f"sqlite:///{tmp_path / 'gw.db'}"},
        "tariffs": {"flat": {"kind": "flat", "price": "0.5000"}},
        "accounts": [{"id": "A-1", "tariff": "flat", "opening_balance": "10.00"}],
        "buses": [{"id": "rs485", "protocol": "dlt645-tcp", "host": "127.0.0.1", "port": port, "time_sync_s": 0.5}],
        "meters": [{"id": "M-1", "bus": "rs485", "address": "000000000001", "account": "A-1",
                    "poll_interval_s": 3600}],
    })
    async with Dlt645Simulator(meters=1, tcp=f"127.0.0.1:{port}") as simulator:
        meter = simulator.meter("000000000001")
        meter.clock_offset = dt.timedelta(minutes=-17)  # the meter's clock runs 17 minutes slow
        async with Gateway(settings, base_dir=tmp_path):
            await async_wait_until(lambda: abs(meter.clock_offset) < dt.timedelta(seconds=2), timeout=10,
                                   what="the broadcast time sync to set the meter's clock")
