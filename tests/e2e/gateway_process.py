"""Running a gateway with its HTTP API in the test's event loop, on a real port."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from gateway.bootstrap import Gateway
from gateway.runtime import ApiServer, api_config
from gateway.settings import Settings
from tests.support import async_wait_until


@contextlib.asynccontextmanager
async def running_gateway(settings: Settings, base_dir: Path) -> AsyncIterator[Gateway]:
    async with Gateway(settings, base_dir=base_dir) as gateway:
        # keep-alive longer than any wait between two requests of a test: a client must not reuse a connection
        # the server is closing (httpx.ReadError)
        server = ApiServer(api_config(gateway, keepalive_timeout_s=60, request_timeout_s=60), handle_signals=False)
        task = asyncio.create_task(server.serve())
        await async_wait_until(lambda: server.started, timeout=10, what="the API to start")
        try:
            yield gateway
        finally:
            server.should_exit = True
            await task
