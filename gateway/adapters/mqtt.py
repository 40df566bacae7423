"""Events out over MQTT (aiomqtt; every aiomqtt call of the project is in this module).

``MqttPublisher`` keeps one connection to the broker: QoS 1, JSON payloads under ``<prefix>/``, the gateway's
status retained at ``<prefix>/gateway/status`` (``online`` once connected; ``offline`` when it stops, or from the broker
by the Last Will when the gateway dies). It reconnects with a capped backoff and logs one line per outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from typing import Any

import aiomqtt
import orjson

from gateway.service.ports import Publisher, PublisherUnavailable

__all__ = ["MqttPublisher"]

log = logging.getLogger(__name__)


class MqttPublisher(Publisher):
    def __init__(self, *, host: str, port: int, prefix: str, username: str | None = None,
                 password: str | None = None, tls_ca: str | None = None, identifier: str | None = None,
                 backoff_s: float = 0.5, backoff_cap_s: float = 30.0) -> None:
        self.host, self.port, self.prefix = host, port, prefix.rstrip("/")
        self._username, self._password = username, password
        self._tls = ssl.create_default_context(cafile=tls_ca) if tls_ca else None
        self._identifier = identifier
        self.backoff_s, self.backoff_cap_s = backoff_s, backoff_cap_s
        self._client: aiomqtt.Client | None = None
        self._stopping = asyncio.Event()
        self._changed = asyncio.Event()  # stopping, or the connection was lost (a publish failed)
        self.status = f"{self.prefix}/gateway/status"

    def _make(self) -> aiomqtt.Client:
        return aiomqtt.Client(self.host, self.port, username=self._username, password=self._password,
                              identifier=self._identifier, tls_context=self._tls,
                              will=aiomqtt.Will(self.status, b"offline", qos=1, retain=True))

    async def run(self) -> None:
        """Keep the connection until ``stop``."""
        delay, down = self.backoff_s, False
        while not self._stopping.is_set():
            try:
                async with self._make() as client:
                    await client.publish(self.status, b"online", qos=1, retain=True)
                    self._client = client
                    if down:
                        log.info("MQTT broker %s:%d reachable again", self.host, self.port)
                    delay, down = self.backoff_s, False
                    self._changed.clear()
                    await self._changed.wait()
                    if not self._stopping.is_set():
                        raise aiomqtt.MqttError("the connection was lost")
                    await client.publish(self.status, b"offline", qos=1, retain=True)
            except aiomqtt.MqttError as exc:
                self._client = None
                if not down:
                    log.warning("MQTT broker %s:%d unreachable (%s); events wait in the outbox", self.host,
                                self.port, exc)
                    down = True
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
                delay = min(delay * 2, self.backoff_cap_s)
            finally:
                self._client = None

    def stop(self) -> None:
        self._stopping.set()
        self._changed.set()

    async def publish(self, topic: str, payload: dict[str, Any], *, retain: bool = False) -> None:
        client = self._client
        if client is None:
            raise PublisherUnavailable(f"not connected to the MQTT broker {self.host}:{self.port}")
        try:
            await client.publish(f"{self.prefix}/{topic}", orjson.dumps(payload, option=orjson.OPT_UTC_Z), qos=1,
                                 retain=retain)
        except aiomqtt.MqttError as exc:
            self._client = None
            self._changed.set()  # run() connects again
            raise PublisherUnavailable(str(exc)) from exc
