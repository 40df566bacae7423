"""Where notices go (the ``Notifier`` port): apprise for its many services, and a signed JSON webhook of our own.

Every apprise call of the project is in this module. A channel's URL and secret may hold credentials: they are
never logged, and an error message that would quote them is cut.

The webhook (``kind: webhook``) POSTs one JSON object per notice::

    {"notice_id": 12, "dedup_key": "...", "kind": "low_balance_2", "account_id": "A-1", "to": "+8613800000000",
     "language": "zh", "subject": "", "text": "...", "issued_at": "2026-12-03T01:00:00Z", "attempt": 1}

with the headers ``X-Gateway-Timestamp`` (Unix seconds), ``X-Gateway-Signature: sha256=<hex>`` (HMAC-SHA256 with
the channel's secret over ``<timestamp>.<body>``) and ``Idempotency-Key`` (the dedup key: a retry of a notice the
receiver already took carries the same key). A 2xx answer is a delivery; 408, 425, 429 and 5xx answers and
network errors are tried again later; any other answer is a refusal (the notice fails at once: a dead letter).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
import urllib.parse
from collections.abc import Mapping
from typing import Any

import apprise
import httpx
import orjson

from gateway.service.outbound import DeliveryFailed, Notifier
from gateway.service.ports import NoticeRecord

__all__ = ["AppriseChannel", "Channels", "WebhookChannel", "sign"]

log = logging.getLogger(__name__)

SIGNATURE = "X-Gateway-Signature"
TIMESTAMP = "X-Gateway-Timestamp"
RETRIED = frozenset({408, 425, 429})


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The signature header's value of a webhook body (receivers compute the same and compare)."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


class WebhookChannel(Notifier):
    def __init__(self, url: str, secret: str, *, timeout_s: float = 10.0) -> None:
        self._url, self._secret = url, secret
        self._client = httpx.AsyncClient(timeout=timeout_s, follow_redirects=False)

    async def send(self, notice: NoticeRecord) -> None:
        body = orjson.dumps({"notice_id": notice.id, "dedup_key": notice.dedup_key, "kind": notice.kind,
                             "account_id": notice.account_id, "to": notice.recipient, "language": notice.language,
                             "subject": notice.subject, "text": notice.text, "issued_at": notice.issued_at,
                             "attempt": notice.attempts + 1}, option=orjson.OPT_UTC_Z)
        timestamp = str(int(time.time()))
        headers = {"Content-Type": "application/json", TIMESTAMP: timestamp,
                   SIGNATURE: sign(self._secret, timestamp, body), "Idempotency-Key": notice.dedup_key}
        try:
            answer = await self._client.post(self._url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise DeliveryFailed(f"webhook: {type(exc).__name__}") from None  # (the message may quote the URL)
        if answer.is_success:
            return
        reason = f"webhook answered {answer.status_code} {answer.reason_phrase}".rstrip()
        raise DeliveryFailed(reason, permanent=answer.status_code < 500 and answer.status_code not in RETRIED)

    async def aclose(self) -> None:
        await self._client.aclose()


class AppriseChannel(Notifier):
    """An apprise URL; ``{to}`` in it becomes the contact's address (URL-quoted)."""

    def __init__(self, url: str, *, timeout_s: float = 10.0) -> None:
        self._url, self._timeout_s = url, timeout_s

    async def send(self, notice: NoticeRecord) -> None:
        url = self._url.replace("{to}", urllib.parse.quote(notice.recipient, safe="+@"))
        services = apprise.Apprise()
        if not services.add(url):
            raise DeliveryFailed("apprise: the channel's URL is not one apprise knows", permanent=True)
        with apprise.LogCapture(level=logging.WARNING) as output:
            try:  # (asyncio.timeout, not wait_for: that loses a cancellation on Python 3.11)
                async with asyncio.timeout(self._timeout_s):
                    delivered = await services.async_notify(body=notice.text, title=notice.subject)
            except TimeoutError:
                raise DeliveryFailed(f"apprise: no answer within {self._timeout_s:g} s") from None
        if not delivered:
            raise DeliveryFailed("apprise: " + (self._scrub(output.getvalue()) or "not delivered"))

    def _scrub(self, text: str) -> str:
        """The last line apprise logged, without anything of the channel's URL (it may hold credentials)."""
        lines = [line.split(" - ", 2)[-1].strip() for line in text.strip().splitlines() if line.strip()]
        message = lines[-1] if lines else ""
        parts = urllib.parse.urlsplit(self._url)
        for secret in {self._url, parts.netloc, parts.password or "", parts.username or "", parts.path}:
            if len(secret) > 3:
                message = message.replace(secret, "***")
        return message[:300]


class Channels(Notifier):
    """The site's channels by name: a notice goes to the channel it names."""

    def __init__(self, channels: Mapping[str, Notifier]) -> None:
        self.channels = dict(channels)

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> Channels:
        """From ``notices.channels`` (name -> ChannelSettings)."""
        made: dict[str, Notifier] = {}
        for name, channel in settings.items():
            if channel.kind == "webhook":
                made[name] = WebhookChannel(channel.url, channel.secret, timeout_s=channel.timeout_s)
            else:
                made[name] = AppriseChannel(channel.url, timeout_s=channel.timeout_s)
        return cls(made)

    async def send(self, notice: NoticeRecord) -> None:
        channel = self.channels.get(notice.channel)
        if channel is None:
            raise DeliveryFailed(f"no channel {notice.channel!r} in the settings", permanent=True)
        await channel.send(notice)

    async def aclose(self) -> None:
        for channel in self.channels.values():
            await channel.aclose()
