"""A small scheduler for the 08H broadcast time sync."""

from __future__ import annotations

import asyncio
import logging

from drivers.dlt645.driver import Dlt645Driver
from drivers.errors import DriverError

__all__ = ["run_time_sync"]

log = logging.getLogger(__name__)


async def run_time_sync(
    driver: Dlt645Driver, *, interval: float = 24 * 3600.0, first_delay: float = 0.0
) -> None:
    """Broadcast the driver's clock every ``interval`` seconds until cancelled. Failures are logged, not raised.

    Run it as a named task, e.g. ``asyncio.create_task(run_time_sync(d), name="gateway[bus1].timesync")``.
    """
    await asyncio.sleep(first_delay)
    while True:
        try:
            await driver.broadcast_time()
        except DriverError as exc:
            log.warning("dlt645 time sync on %r failed: %s", driver, exc)
        await asyncio.sleep(interval)
