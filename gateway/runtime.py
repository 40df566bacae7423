"""Running the gateway with its HTTP server, and small database chores for the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import gc
import logging
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn

from gateway.api.server import plaintext_warning, server_config
from gateway.bootstrap import Gateway
from gateway.settings import Settings

log = logging.getLogger(__name__)


class ApiServer(uvicorn.Server):
    """uvicorn's server, but a SIGINT/SIGTERM only asks it to stop: uvicorn would re-raise the signal after
    serving, killing the process before the gateway (and the demo's simulators) shut down cleanly."""

    def __init__(self, config: uvicorn.Config, *, handle_signals: bool = True) -> None:
        super().__init__(config)
        self.handle_signals = handle_signals

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if not self.handle_signals:
            yield
            return
        loop = asyncio.get_running_loop()
        signals = (signal.SIGINT, signal.SIGTERM)
        for sig in signals:
            loop.add_signal_handler(sig, self.handle_exit, sig, None)
        try:
            yield
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)

    async def shutdown(self, sockets: Any = None) -> None:
        # uvicorn waits for open responses before it stops: end the live event streams (GET /v1/events) first
        events = getattr(getattr(self.config.app, "state", None), "events", None)
        if events is not None:
            events.close()
        await super().shutdown(sockets)


def api_config(gateway: Gateway, **overrides: Any) -> uvicorn.Config:
    """The hardened uvicorn configuration of a gateway's API (``gateway.api.server.server_config``) from its
    settings; ``overrides`` replace ``server_config``'s keywords (tests) or go to uvicorn."""
    api = gateway.settings.api

    def path(name: str | None) -> str | None:
        return None if name is None else str(gateway.base_dir / name)  # an absolute name stays as it is

    options: dict[str, Any] = dict(
        host=api.host, port=api.port, tls_certfile=path(api.tls_certfile), tls_keyfile=path(api.tls_keyfile),
        request_timeout_s=api.request_timeout_s, keepalive_timeout_s=api.keepalive_timeout_s,
        max_header_bytes=api.max_header_bytes)
    return server_config(gateway.app(), **(options | overrides))


async def serve(settings: Settings, *, base_dir: Path, banner: str | None = None) -> None:
    """Run the gateway and its API until SIGINT/SIGTERM (uvicorn handles both), then stop cleanly."""
    api = settings.api
    warning = plaintext_warning(api.host, tls=api.tls_certfile is not None)
    if warning:
        log.warning(warning)
    async with Gateway(settings, base_dir=base_dir) as gateway:
        server = ApiServer(api_config(gateway))
        # What the start made (the catalog, the models, the libraries) lives as long as the process: kept out of
        # the garbage collector's full passes, which would otherwise walk it every few seconds under load, each
        # time holding every request for ~90 ms (100,000 meters: longer). Objects made later are collected as ever.
        gc.freeze()
        scheme = "https" if api.tls_certfile else "http"
        log.info("API on %s://%s:%s (OpenAPI at /docs)", scheme, api.host, api.port)
        if banner:
            print(banner, flush=True)
        await server.serve()
    log.info("gateway stopped")


async def store_key(settings: Settings, *, base_dir: Path, name: str, role: str, digest: str,
                    sources: list[str] | None = None) -> None:
    from gateway.adapters.database import migrate

    gateway = Gateway(settings, base_dir=base_dir)
    try:
        await migrate(gateway.engine)
        async with gateway.uow() as uow:
            await uow.put_api_key(name, digest, role, sources, dt.datetime.now(dt.UTC))
            await uow.commit()
    finally:
        await gateway.engine.dispose()


async def verify(settings: Settings, *, base_dir: Path) -> tuple[list[str], int, int]:
    """Run the ledger check on a gateway's database: (problems, accounts, entries)."""
    from gateway.service.verify import check_ledger

    gateway = Gateway(settings, base_dir=base_dir)
    try:
        async with gateway.uow(readonly=True) as uow:
            return await check_ledger(uow)
    finally:
        await gateway.engine.dispose()


async def fleet_import(settings: Settings, *, base_dir: Path, files: dict[str, tuple[str, str]], dry_run: bool,
                       partial: bool, actor: str, update: bool = False) -> Any:
    """Import accounts and meters into a gateway's database (``files``: kind -> (text, format)); a running
    gateway on the same database picks them up within its fleet refresh (a few seconds)."""
    from gateway.fleet_files import read_rows
    from gateway.service.fleet_io import import_fleet

    gateway = Gateway(settings, base_dir=base_dir)
    try:
        from gateway.adapters.database import migrate

        await migrate(gateway.engine)
        await gateway.prepare_fleet()
        rows: dict[str, list[Any]] = {"account": [], "meter": []}
        errors: list[Any] = []
        for kind, (text, fmt) in files.items():
            found, bad = read_rows(kind, text, fmt)
            rows[kind], errors = found, errors + bad
        return await import_fleet(gateway.fleet, rows["account"], rows["meter"], actor=actor, partial=partial,
                                  dry_run=dry_run, update=update, errors=errors)
    finally:
        await gateway.service.writer.aclose()
        await gateway.engine.dispose()


async def fleet_export(settings: Settings, *, base_dir: Path) -> tuple[list[Any], list[Any]]:
    """The open accounts (current balance as the opening one) and their meters of a gateway's database."""
    from gateway.service.fleet_io import export_fleet

    gateway = Gateway(settings, base_dir=base_dir)
    try:
        from gateway.adapters.database import migrate

        await migrate(gateway.engine)
        await gateway.fleet.load()
        return await export_fleet(gateway.fleet)
    finally:
        await gateway.engine.dispose()
