"""Keeping the outbox bounded: events are deleted once every destination took them and their retention passed.

With MQTT on, the outbox relay prunes what it published (``OutboxRelay``); without it, ``OutboxPruner`` deletes
events by age alone (nothing would ever publish them). Either way, with notices on an event also waits for the
notice planner (``noticed_at``). Deletes go in chunks, one transaction each, so that a first prune of a large
backlog never holds the database for long.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable

from gateway.service.ports import Storage

__all__ = ["OutboxPruner", "prune_outbox"]

log = logging.getLogger(__name__)


async def prune_outbox(storage: Storage, before: dt.datetime, *, keep_unnoticed: bool, unpublished_too: bool,
                       chunk: int = 10_000) -> int:
    """Delete the events done with before ``before``, ``chunk`` rows per transaction; returns how many."""
    total = 0
    while True:
        async with storage(background=True) as uow:
            deleted = await uow.outbox.prune(before, keep_unnoticed=keep_unnoticed, unpublished_too=unpublished_too,
                                             limit=chunk)
            await uow.commit()
        total += deleted
        if deleted < chunk:
            return total


class OutboxPruner:
    """Without MQTT: deletes events older than ``retention_s`` every ``every_s`` (and, with ``keep_unnoticed``,
    only once the notice planner took them), until cancelled."""

    def __init__(self, storage: Storage, clock: Callable[[], dt.datetime], *, retention_s: float,
                 keep_unnoticed: bool, every_s: float = 60.0) -> None:
        self.storage, self.clock = storage, clock
        self.retention = dt.timedelta(seconds=retention_s)
        self.keep_unnoticed, self.every_s = keep_unnoticed, every_s

    async def once(self) -> int:
        deleted = await prune_outbox(self.storage, self.clock() - self.retention, keep_unnoticed=self.keep_unnoticed,
                                     unpublished_too=True)
        if deleted:
            log.info("outbox: %d events older than %s deleted (no MQTT)", deleted, self.retention)
        return deleted

    async def run(self) -> None:
        while True:
            try:
                await self.once()
            except Exception:  # a database hiccup: tried again at the next round
                log.exception("outbox: pruning failed")
            await asyncio.sleep(self.every_s)
