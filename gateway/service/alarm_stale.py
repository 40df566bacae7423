"""Stale data: a meter whose newest good answer is older than the site's stale limit (``policy.stale_after``).

Nothing else tells when a reading gets old (it is the absence of an event), so ``StaleWatch`` looks, every
``every_s``, at the meters this instance polls (their last good answer, as the bus scheduler keeps it in
memory: no query per meter) and writes ``MeterStale`` when a meter becomes stale and ``MeterFresh`` when it is
fresh again, on ``meters/{id}/events``; the alarm keeper raises and resolves ``meter_stale`` from them. A meter
never answered since the start counts from the start. At 100,000 meters a round is a loop over them in memory
(milliseconds) and one query: the meters with a ``meter_stale`` alarm unresolved (a meter that came to this
instance from another one, stale there, is found fresh here).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable, Iterable

from gateway.service.ports import Storage

__all__ = ["StaleWatch"]

log = logging.getLogger(__name__)

LastAnswers = Callable[[], Iterable[tuple[str, dt.datetime | None]]]  # (meter id, its last good answer) of each


class StaleWatch:
    """Writes ``MeterStale`` / ``MeterFresh`` events for the meters of this instance until cancelled.

    Args:
        storage: the storage port.
        meters: the meters polled here and the wall time of their last good answer (None: not since the start).
        stale_after_s: the site's stale limit (infinite: never stale).
        clock: aware UTC now.
        account_of: a meter's account (for the event).
        every_s: how often it looks.
        chunk: events written per transaction.
    """

    def __init__(self, storage: Storage, meters: LastAnswers, stale_after_s: Callable[[], float],
                 clock: Callable[[], dt.datetime], account_of: Callable[[str], str | None], *,
                 every_s: float = 30.0, chunk: int = 1_000) -> None:
        self.storage, self.meters, self.stale_after_s, self.clock = storage, meters, stale_after_s, clock
        self.account_of, self.every_s, self.chunk = account_of, every_s, chunk
        self.started = clock()
        self.told: set[str] = set()  # meters this watch said were stale (their alarm may not be raised yet)
        self.stale = self.fresh = 0  # events written

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.every_s)
            try:
                await self.once()
            except Exception:  # a database hiccup: tried again at the next round
                log.exception("alarms: the stale check failed")

    async def once(self) -> tuple[list[str], list[str]]:
        """One round; returns the meters found stale and fresh again."""
        limit = self.stale_after_s()
        if limit == float("inf"):
            return [], []
        now = self.clock()
        oldest = now - dt.timedelta(seconds=limit)
        async with self.storage(readonly=True) as uow:
            alarmed = await uow.alarms.subjects("meter_stale")
        known = alarmed | self.told
        stale: list[tuple[str, dt.datetime | None]] = []
        fresh: list[str] = []
        seen: set[str] = set()
        for meter_id, last in self.meters():
            seen.add(meter_id)
            if (last if last is not None else self.started) < oldest:
                if meter_id not in known:
                    stale.append((meter_id, last))
            elif meter_id in known:
                fresh.append(meter_id)
        self.told &= seen  # (meters that left this instance)
        if not stale and not fresh:
            return [], []
        rows = [(meter_id, True, dict(topic=f"meters/{meter_id}/events", created_at=now, payload={
            "type": "MeterStale", "meter_id": meter_id, "account_id": self.account_of(meter_id),
            "last_success_at": last, "stale_after_s": limit, "at": now})) for meter_id, last in stale]
        rows += [(meter_id, False, dict(topic=f"meters/{meter_id}/events", created_at=now, payload={
            "type": "MeterFresh", "meter_id": meter_id, "account_id": self.account_of(meter_id), "at": now}))
            for meter_id in fresh]
        for start in range(0, len(rows), self.chunk):  # a bus gone quiet: short transactions, one statement each
            chunk = rows[start:start + self.chunk]
            async with self.storage(background=True) as uow:
                await uow.alarms.add_events([row for _, _, row in chunk])
                await uow.commit()
            self.told = (self.told | {m for m, is_stale, _ in chunk if is_stale}) - {
                m for m, is_stale, _ in chunk if not is_stale}
        self.stale += len(stale)
        self.fresh += len(fresh)
        return [m for m, _ in stale], fresh
