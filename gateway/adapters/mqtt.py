"""Events out over MQTT (aiomqtt; every aiomqtt call of the project is in this module).

``MqttPublisher`` keeps one connection to the broker: QoS 1, JSON payloads under ``<prefix>/``, the gateway's
status retained at ``<prefix>/gateway/status`` (``online`` once connected; ``offline`` when it stops, or from the broker
by the Last Will when the gateway dies). It reconnects with a capped backoff and logs one line per outage.
Subscriptions (``subscribe``: Home Assistant's status) are made again at each connection, and the ``on_connect``
callbacks called then.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import Any

import aiomqtt
import orjson

from gateway.service.clock import wait_event
from gateway.service.outbound import Publisher, PublisherUnavailable

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
        self._subscriptions: dict[str, list[Callable[[str, bytes], None]]] = {}
        self._on_connect: list[Callable[[], None]] = []

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
                    for topic in self._subscriptions:
                        await client.subscribe(topic, qos=1)
                    listener = (asyncio.create_task(self._listen(client), name="gateway.mqtt.listen")
                                if self._subscriptions else None)
                    try:
                        self._client = client
                        if down:
                            log.info("MQTT broker %s:%d reachable again", self.host, self.port)
                        delay, down = self.backoff_s, False
                        self._changed.clear()
                        for callback in self._on_connect:
                            callback()
                        await self._changed.wait()
                        if not self._stopping.is_set():
                            raise aiomqtt.MqttError("the connection was lost")
                        await client.publish(self.status, b"offline", qos=1, retain=True)
                    finally:
                        if listener is not None:
                            listener.cancel()
                            await asyncio.gather(listener, return_exceptions=True)
            except aiomqtt.MqttError as exc:
                self._client = None
                if not down:
                    log.warning("MQTT broker %s:%d unreachable (%s); events wait in the outbox", self.host,
                                self.port, exc)
                    down = True
                await wait_event(self._stopping, delay)
                delay = min(delay * 2, self.backoff_cap_s)
            finally:
                self._client = None

    async def _listen(self, client: aiomqtt.Client) -> None:
        """Hand each message received to the callbacks of the subscriptions it matches."""
        try:
            async for message in client.messages:
                body = message.payload
                payload = bytes(body) if isinstance(body, bytes | bytearray) else str(body or "").encode()
                for topic, callbacks in self._subscriptions.items():
                    if message.topic.matches(topic):
                        for callback in callbacks:
                            try:
                                callback(str(message.topic), payload)
                            except Exception:
                                log.exception("MQTT: the handler of %s failed", message.topic)
        except aiomqtt.MqttError:
            self._client = None
            self._changed.set()  # run() connects again

    def stop(self) -> None:
        self._stopping.set()
        self._changed.set()

    def topic(self, name: str) -> str:
        return f"{self.prefix}/{name}"

    def subscribe(self, topic: str, callback: Callable[[str, bytes], None]) -> None:
        self._subscriptions.setdefault(topic, []).append(callback)

    def on_connect(self, callback: Callable[[], None]) -> None:
        self._on_connect.append(callback)

    async def publish(self, topic: str, payload: dict[str, Any], *, retain: bool = False) -> None:
        await self.publish_raw(f"{self.prefix}/{topic}", payload, retain=retain)

    async def publish_raw(self, topic: str, payload: dict[str, Any], *, retain: bool = False) -> None:
        client = self._client
        if client is None:
            raise PublisherUnavailable(f"not connected to the MQTT broker {self.host}:{self.port}")
        try:
            await client.publish(topic, orjson.dumps(payload, option=orjson.OPT_UTC_Z), qos=1, retain=retain)
        except aiomqtt.MqttError as exc:
            self._client = None
            self._changed.set()  # run() connects again
            raise PublisherUnavailable(str(exc)) from exc
