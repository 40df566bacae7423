"""The settings of what goes out: events over MQTT (``mqtt``, docs/events.md) and notices to people
(``notices`` and the accounts' ``contacts``, docs/notices.md)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from gateway.domain.notices import Contact
from pydantic import Field, field_validator, model_validator

from gateway.settings.common import _Strict

__all__ = ["ChannelSettings", "ContactSettings", "MqttSettings", "NoticeKind", "NoticesSettings",
           "QuietHoursSettings"]


class MqttSettings(_Strict):
    """Events out over MQTT (docs/events.md); absent: nothing is published, events stay in the outbox."""

    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    prefix: str = Field("meter-gateway", min_length=1, max_length=100, pattern=r"^[^#+\x00]+$")
    username: str | None = None
    password: str | None = Field(None, repr=False)
    tls_ca: str | None = Field(None, description="CA file: connect with TLS and check the broker against it")
    client_id: str | None = Field(None, max_length=100, description="default: one the client library makes up")
    retention_s: float = Field(86_400, gt=0, description="how long published events stay in the outbox")
    max_waiting: int = Field(1_000_000, ge=10, description=(
        "the most events kept in the outbox while the broker is down; beyond, new events are left out (counted, "
        "with an alarm), the oldest kept"))
    home_assistant: bool = Field(False, description=(
        "publish Home Assistant MQTT discovery configs (each meter's energy and relay), retained"))
    discovery_prefix: str = Field("homeassistant", min_length=1, max_length=100, pattern=r"^[^#+\x00]+$",
                                  description="Home Assistant's discovery prefix")


NoticeKind = Literal["low_balance_1", "low_balance_2", "exhausted", "disconnected", "reconnected",
                     "payment_received", "final_warning_undelivered"]
_LANGUAGE = r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})?$"


class ContactSettings(_Strict):
    """Someone told about an account (docs/notices.md): the customer, or collection staff."""

    name: str = Field(min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f/]+$")
    role: Literal["customer", "staff"] = "customer"
    channel: str = Field(description="a channel of notices.channels")
    to: str = Field("", max_length=200, pattern=r"^[^\x00-\x1f\x7f]*$", repr=False,
                    description="the address on that channel: phone number, e-mail address...")
    language: str = Field("zh", pattern=_LANGUAGE, description="the templates' language for this contact")
    opt_out: list[NoticeKind] = Field(default_factory=list, description="kinds of notice this contact does not want")

    def domain(self) -> Contact:
        return Contact(self.name, self.role, self.channel, self.to, self.language, frozenset(self.opt_out))

    @classmethod
    def of(cls, contact: Contact) -> ContactSettings:
        return cls(name=contact.name, role=contact.role, channel=contact.channel,  # type: ignore[arg-type]
                   to=contact.to, language=contact.language, opt_out=sorted(contact.opt_out))  # type: ignore[arg-type]


class ChannelSettings(_Strict):
    """How notices reach people: an apprise URL (JSON webhooks, e-mail, many SMS services), or a JSON webhook
    of this gateway's own, signed with HMAC-SHA256 (for SMS gateways that want one)."""

    kind: Literal["apprise", "webhook"]
    url: str = Field(min_length=1, max_length=2000, repr=False, description=(
        "apprise: its URL, where {to} is replaced by the contact's address; webhook: the http(s) URL to POST to. "
        "May hold credentials: set it from the environment (GATEWAY_NOTICES__CHANNELS__<NAME>__URL)"))
    secret: str | None = Field(None, min_length=16, repr=False, description="webhook: the HMAC key (16+ chars)")
    timeout_s: float = Field(10, gt=0, le=120)

    @model_validator(mode="after")
    def _webhook(self) -> ChannelSettings:
        if self.kind == "webhook":
            if self.secret is None:
                raise ValueError("a webhook channel needs a secret (its HMAC key)")
            if not self.url.startswith(("http://", "https://")):
                raise ValueError("a webhook channel's url must start with http:// or https://")
        return self


class QuietHoursSettings(_Strict):
    start: dt.time = Field(dt.time(22, 0), description="site time, e.g. \"22:00\"")
    end: dt.time = Field(dt.time(7, 0), description="site time; may be before start (over midnight)")
    kinds: list[NoticeKind] = Field(["low_balance_1", "low_balance_2"],
                                    description="the non-urgent kinds held until the quiet hours end")


class NoticesSettings(_Strict):
    """Notices to customers and staff (docs/notices.md); absent: none are sent."""

    channels: dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")], ChannelSettings] = Field(min_length=1)
    staff: list[ContactSettings] = Field(default_factory=list, description="collection staff told about every account")
    templates: dict[NoticeKind, dict[Annotated[str, Field(pattern=_LANGUAGE)], str]] = Field(
        default_factory=dict, description="text by kind and language; given ones replace the built-in ones")
    subjects: dict[NoticeKind, dict[Annotated[str, Field(pattern=_LANGUAGE)], str]] = Field(
        default_factory=dict, description="titles (e-mail subjects) by kind and language")
    quiet_hours: QuietHoursSettings | None = None
    require_delivered_warning: bool = Field(True, description=(
        "the notice period starts when the final warning is delivered; no automatic disconnect before"))
    delivery_timeout_s: float = Field(3600, gt=0, description=(
        "a final warning not delivered within this: the staff are told (the disconnect still waits)"))
    max_attempts: int = Field(6, ge=1, le=50, description="tries before a notice is a dead letter (failed)")
    retry_backoff_s: float = Field(30, gt=0, description="the wait before the second try; doubles for each next")
    retry_backoff_cap_s: float = Field(3600, gt=0)
    max_event_age_s: float = Field(3600, gt=0, description=(
        "older events (e.g. from before notices were switched on) make no notice"))

    @field_validator("templates", "subjects")
    @classmethod
    def _placeholders(cls, value: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
        from gateway.domain.notices import check_template

        for kind, by_language in value.items():
            for language, text in by_language.items():
                try:
                    check_template(text)
                except ValueError as exc:
                    raise ValueError(f"{kind}.{language}: {exc}") from None
        return value

    @model_validator(mode="after")
    def _staff(self) -> NoticesSettings:
        for i, contact in enumerate(self.staff):
            if contact.role != "staff":
                raise ValueError(f"staff[{i}].role: the site's staff contacts have role staff")
            if contact.channel not in self.channels:
                raise ValueError(f"staff[{i}].channel: unknown channel {contact.channel!r}")
        return self
