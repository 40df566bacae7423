"""API keys: who a request comes from, a cache of the stored keys, and a limit on failed authentications.

Keys travel as ``Authorization: Bearer KEY`` and are known by their SHA-256 only. The keys of the settings file
are in memory; the keys created with ``meter-gateway keys create --config`` live in the database and are read
in bulk, at most once every ``refresh_s`` (and once every ``miss_refresh_s`` when an unknown key shows up), never
once per request. A client (by address) that sends a missing or unknown key ``limit`` times within ``window_s``
is refused with 429 until the window has passed, whatever key it sends meanwhile.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

__all__ = ["Caller", "FailedAuthLimiter", "KeyRing"]


@dataclass(frozen=True, slots=True)
class Caller:
    """The holder of a valid key: its name (what the audit log records), role and, for billing keys bound to
    payment sources, those sources (None: any)."""

    name: str
    role: str
    sources: frozenset[str] | None = None

    def may_post_for(self, source: str) -> bool:
        return self.role == "admin" or self.sources is None or source in self.sources


class KeyRing:
    """Keys by digest: ``static`` (from the settings) and the stored ones ``load`` returns, cached."""

    def __init__(self, static: dict[str, Caller], load: Callable[[], Awaitable[dict[str, Caller]]], *,
                 refresh_s: float = 30.0, miss_refresh_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._static, self._load, self._clock = dict(static), load, clock
        self.refresh_s, self.miss_refresh_s = refresh_s, miss_refresh_s
        self._stored: dict[str, Caller] = {}
        self._loaded_at = -math.inf
        self._lock = asyncio.Lock()
        self.loads = 0  # how often the stored keys were read

    def cached(self, digest: str) -> Caller | None:
        """The caller of a key known now, without reading storage: a key of the settings, or a stored key
        while the stored keys are fresh; None when unknown or when ``lookup`` would read them again first."""
        static = self._static.get(digest)
        if static is not None or self._clock() - self._loaded_at >= self.refresh_s:
            return static
        return self._stored.get(digest)

    async def lookup(self, digest: str) -> Caller | None:
        caller = self._static.get(digest) or self._stored.get(digest)
        age = self._clock() - self._loaded_at
        if age >= self.refresh_s or (caller is None and age >= self.miss_refresh_s):
            async with self._lock:
                if self._clock() - self._loaded_at >= min(self.refresh_s, self.miss_refresh_s):
                    self._stored = await self._load()
                    self._loaded_at = self._clock()
                    self.loads += 1
            caller = self._static.get(digest) or self._stored.get(digest)
        return caller


class FailedAuthLimiter:
    """Counts failed authentications per client; ``retry_after`` says how long a client is refused."""

    def __init__(self, *, limit: int = 20, window_s: float = 60.0, max_clients: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit, self.window_s, self.max_clients, self._clock = limit, window_s, max_clients, clock
        self._clients: OrderedDict[str, tuple[float, int]] = OrderedDict()  # client -> (window start, failures)

    def retry_after(self, client: str) -> int | None:
        """Seconds until ``client`` may try again, or None when it may now."""
        entry = self._clients.get(client)
        if entry is None:
            return None
        start, failures = entry
        left = start + self.window_s - self._clock()
        if left <= 0:
            del self._clients[client]
            return None
        return math.ceil(left) if failures >= self.limit else None

    def failed(self, client: str) -> None:
        now = self._clock()
        start, failures = self._clients.pop(client, (now, 0))
        if now - start >= self.window_s:
            start, failures = now, 0
        self._clients[client] = (start, failures + 1)
        while len(self._clients) > self.max_clients:  # the oldest entries go first: memory stays bounded
            self._clients.popitem(last=False)
