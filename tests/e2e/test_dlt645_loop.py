"""The prepaid loop with DL/T 645-2007 meters, over a serial pty (socat) and over TCP (a serial-to-Ethernet
converter): charge → automatic trip (1CH 1AH) → payment → direct close (1CH 1CH), each confirmed by status word 3
bit 4 on the simulated meter itself."""

from __future__ import annotations

import contextlib
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from drivers.dlt645 import StatusWord3
from gateway.settings import Settings, hash_key
from simulators.dlt645 import Dlt645Simulator
from tests.e2e.gateway_process import running_gateway
from tests.support import async_wait_until, free_port, socat_pty_pair

BILLING, VIEWER = "dlt-billing-key", "dlt-viewer-key"
ADDRESS = "000000000001"


def settings(tmp_path: Path, bus: dict[str, object], api_port: int) -> Settings:
    return Settings.model_validate({
        "database": {"url": f"sqlite:///{tmp_path / 'gw.db'}"},
        "api": {"port": api_port, "keys": [{"name": "billing", "role": "billing", "sha256": hash_key(BILLING)},
                                           {"name": "viewer", "role": "viewer", "sha256": hash_key(VIEWER)}]},
        "engine": {"command_expiry_s": 60, "confirm_interval_s": 0.2, "reading_history_s": 5},
        "policy": {"notice_period": 0, "stale_after": "10s"},
        "tariffs": {"flat": {"kind": "flat", "price": "1.0000"}},
        "accounts": [{"id": "A-1", "tariff": "flat", "opening_balance": "0.50", "reconnect_min_topup": "1.00"}],
        "buses": [{"id": "rs485", "timeout_s": 0.5, "retries": 1, "password": "000000", **bus}],
        "meters": [{"id": "M-1", "bus": "rs485", "address": ADDRESS, "account": "A-1", "poll_interval_s": 0.25,
                    "max_power_w": 2_000_000}],
    })


@pytest.mark.parametrize("link", ["pty", "tcp"])
async def test_dlt645_charge_trip_pay_close(link: str, tmp_path: Path) -> None:
    api_port = free_port()
    with socat_pty_pair(tmp_path) if link == "pty" else contextlib.nullcontext() as pair:
        if link == "pty":
            gateway_end, meter_end = pair
            simulator = Dlt645Simulator(meters=1, serial=meter_end, parity="N", baud=2400)
            bus = {"protocol": "dlt645-serial", "device": gateway_end, "parity": "N", "baudrate": 2400}
        else:
            port = free_port()
            simulator = Dlt645Simulator(meters=1, tcp=f"127.0.0.1:{port}")
            bus = {"protocol": "dlt645-tcp", "host": "127.0.0.1", "port": port}
        async with simulator:
            meter = simulator.meter(ADDRESS)
            meter.meter.set_power_w(360_000)  # 100 Wh/s: 0.10 yuan per second
            async with running_gateway(settings(tmp_path, bus, api_port), tmp_path), \
                    httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", timeout=5) as client:
                viewer = {"Authorization": f"Bearer {VIEWER}"}

                async def balance() -> Decimal:
                    return Decimal((await client.get("/v1/accounts/A-1", headers=viewer)).json()["balance"])

                async def charged() -> bool:
                    return await balance() < Decimal("0.50")

                await async_wait_until(charged, timeout=15, what="a charge from DL/T 645 energy")
                await async_wait_until(lambda: meter.relay_open, timeout=20, what="the automatic trip")
                assert meter.status_word_3 & StatusWord3.RELAY_OPEN  # bit 4: the contact is open
                assert [c.command for c in meter.commands][-1] == 0x1A

                async def gateway_sees_open() -> bool:
                    return bool((await client.get("/v1/meters/M-1", headers=viewer)).json()["relay"] == "open")

                await async_wait_until(gateway_sees_open, timeout=10, what="the trip confirmed by status word 3")
                response = await client.post("/v1/payments", headers={"Authorization": f"Bearer {BILLING}"},
                                             json={"source": "billing", "payment_id": "P-1", "account_id": "A-1",
                                                   "amount": "30.00"})
                assert response.status_code == 201, response.text
                await async_wait_until(lambda: not meter.relay_open, timeout=5, what="the close after payment")
                assert not meter.status_word_3 & StatusWord3.RELAY_OPEN
                assert [c.command for c in meter.commands][-1] == 0x1C  # direct close
                async def history() -> list[tuple[str, str]]:
                    data = (await client.get("/v1/commands?meter_id=M-1", headers=viewer)).json()["data"]
                    return [(c["action"], c["state"]) for c in data]

                async def close_confirmed() -> bool:
                    return (await history())[0] == ("close", "confirmed")

                await async_wait_until(close_confirmed, timeout=5, what="the close confirmed by status word 3")
                assert (await history())[:2] == [("close", "confirmed"), ("open", "confirmed")]

