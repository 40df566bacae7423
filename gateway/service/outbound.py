"""What the service layer sends things out through, as abstract classes: the ``Publisher`` events go out by
(an MQTT broker: ``gateway.adapters.mqtt``) and the ``Notifier`` notices go out by (apprise, the signed webhook:
``gateway.adapters.notifiers``). Storage's ports are in ``gateway.service.ports``.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any

from gateway.service.ports import NoticeRecord

__all__ = ["DeliveryFailed", "Notifier", "Publisher", "PublisherUnavailable"]


class DeliveryFailed(RuntimeError):
    """A notice could not be delivered now. ``permanent``: trying again will not help (refused by the receiver)."""

    def __init__(self, reason: str, *, permanent: bool = False) -> None:
        super().__init__(reason)
        self.permanent = permanent


class Notifier(abc.ABC):
    """Where notices go: a channel that reaches people (SMS, e-mail, a webhook...)."""

    @abc.abstractmethod
    async def send(self, notice: NoticeRecord) -> None:
        """Deliver ``notice`` to its recipient on its channel; ``DeliveryFailed`` when it could not be."""

    async def aclose(self) -> None:
        """Release connections."""


class PublisherUnavailable(RuntimeError):
    """The destination cannot take events now (a broker down): they stay in the outbox and go out later."""


class Publisher(abc.ABC):
    """Where events go out (an MQTT broker)."""

    @abc.abstractmethod
    async def publish(self, topic: str, payload: dict[str, Any], *, retain: bool = False) -> None:
        """Deliver one event (at least once); ``PublisherUnavailable`` when the destination is down."""

    def topic(self, name: str) -> str:
        """The full topic of ``name`` as ``publish`` delivers it (under the destination's prefix)."""
        return name

    async def publish_raw(self, topic: str, payload: dict[str, Any], *, retain: bool = False) -> None:
        """Deliver ``payload`` at ``topic`` itself, not under the prefix (Home Assistant's discovery configs);
        ``PublisherUnavailable`` when the destination is down."""
        raise NotImplementedError

    def subscribe(self, topic: str, callback: Callable[[str, bytes], None]) -> None:
        """Call ``callback(topic, payload)`` for each message on ``topic`` (a full topic, wildcards allowed), on
        every connection from the next one on (register before the connection is made)."""
        raise NotImplementedError

    def on_connect(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` each time the connection is made: at the start, and again after an outage."""
        raise NotImplementedError
