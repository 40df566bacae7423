"""Notices to people: which events become notices, to whom, with what text, and when they may go out.

Pure: the service (``gateway.service.notices``) reads events from the outbox, asks ``NoticePolicy.plan`` for the
notices they make, stores them, and hands them to a notifier; ``NoticePolicy.hold_until`` and ``backoff`` say
when a notice may be tried (again).

Kinds (``KINDS``): the two low-balance levels (``low_balance_2`` is the final warning that starts the notice
period), credit exhausted, supply disconnected and reconnected (the relay read back), payment received, and, to
the staff only, a final warning that could not be delivered in time.
"""

from __future__ import annotations

import datetime as dt
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from gateway.domain.money import format_fen
from gateway.domain.timeutil import from_iso

__all__ = ["DEFAULT_TEMPLATES", "FINAL_WARNING", "KINDS", "PLACEHOLDERS", "Contact", "NoticePolicy", "PlannedNotice", "QuietHours",
           "check_template", "notice_kind"]

KINDS = ("low_balance_1", "low_balance_2", "exhausted", "disconnected", "reconnected", "payment_received",
         "final_warning_undelivered")
FINAL_WARNING = "low_balance_2"
STAFF_ONLY = frozenset({"final_warning_undelivered"})
PLACEHOLDERS = frozenset({"site", "account", "name", "balance", "amount", "meter", "time"})


def notice_kind(topic: str, payload: Mapping[str, Any]) -> str | None:
    """The notice kind an outbox event makes, or None (most events make none)."""
    kind = payload.get("type")
    if kind == "CreditLow":
        return f"low_balance_{payload.get('level')}" if payload.get("level") in (1, 2) else None
    if kind == "CreditExhausted":
        return "exhausted"
    if kind == "PaymentReceived":
        return "payment_received"
    if kind == "FinalWarningUndelivered":
        return "final_warning_undelivered"
    if kind == "CommandState" and payload.get("state") == "confirmed" and topic.startswith("commands/"):
        return {"open": "disconnected", "close": "reconnected"}.get(payload.get("action", ""))
    return None


def check_template(text: str) -> str:
    """``text`` if its placeholders are all known (``PLACEHOLDERS``); else ValueError naming the bad one."""
    try:
        names = [name for _, name, spec, conv in string.Formatter().parse(text) if name is not None]
    except ValueError as exc:
        raise ValueError(f"not a valid template ({exc}); write {{{{ and }}}} for literal braces") from None
    for name in names:
        if name not in PLACEHOLDERS:
            raise ValueError(f"unknown placeholder {{{name}}} (known: "
                             f"{', '.join('{' + p + '}' for p in sorted(PLACEHOLDERS))})")
    return text


@dataclass(frozen=True, slots=True)
class Contact:
    """Someone told about an account: its customer, or collection staff (of the account or the whole site).

    ``channel`` names a configured channel; ``to`` is the address on it (phone number, e-mail address...).
    """

    name: str
    role: str  # "customer" | "staff"
    channel: str
    to: str = ""
    language: str = "zh"
    opt_out: frozenset[str] = frozenset()

    def wants(self, kind: str) -> bool:
        if kind in STAFF_ONLY:
            return self.role == "staff"
        return kind not in self.opt_out


@dataclass(frozen=True, slots=True)
class QuietHours:
    """No non-urgent notice (``kinds``) goes out between ``start`` and ``end`` (site time; may wrap midnight)."""

    start: dt.time
    end: dt.time
    kinds: frozenset[str] = frozenset({"low_balance_1", "low_balance_2"})

    def ends_at(self, now: dt.datetime, tz: ZoneInfo) -> dt.datetime | None:
        """When the quiet hours ``now`` is in end (UTC), or None when ``now`` is not in quiet hours."""
        local = now.astimezone(tz)
        t = local.time().replace(tzinfo=None)
        if self.start == self.end:
            return None
        inside = self.start <= t < self.end if self.start < self.end else (t >= self.start or t < self.end)
        if not inside:
            return None
        day = local.date() if t < self.end else local.date() + dt.timedelta(days=1)
        return dt.datetime.combine(day, self.end, tzinfo=tz).astimezone(dt.UTC)


@dataclass(frozen=True, slots=True)
class PlannedNotice:
    """One notice to one contact, not stored yet. ``final``: it is the account's final warning to the person
    whose receipt starts the notice period (the customer; the staff where the customer has no contact)."""

    dedup_key: str
    event_id: int
    kind: str
    account_id: str
    contact: Contact
    subject: str
    text: str
    issued_at: dt.datetime
    final: bool = False


@dataclass(frozen=True, slots=True)
class NoticePolicy:
    """The site's notice settings. ``templates[kind][language]`` is the text; ``subjects`` likewise (optional,
    for channels with a title such as e-mail)."""

    templates: Mapping[str, Mapping[str, str]]
    site: str = "site"
    tz: ZoneInfo = field(default_factory=lambda: ZoneInfo("Asia/Shanghai"))
    staff: tuple[Contact, ...] = ()
    quiet_hours: QuietHours | None = None
    max_attempts: int = 6
    backoff: dt.timedelta = dt.timedelta(seconds=30)
    backoff_cap: dt.timedelta = dt.timedelta(hours=1)
    max_event_age: dt.timedelta = dt.timedelta(hours=1)
    subjects: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    def plan(self, event_id: int, topic: str, payload: Mapping[str, Any], issued_at: dt.datetime,
             account_id: str, contacts: tuple[Contact, ...], *, balance_fen: int | None = None) -> list[PlannedNotice]:
        """The notices an outbox event makes for an account with ``contacts`` (the site's staff added)."""
        kind = notice_kind(topic, payload)
        if kind is None:
            return []
        everyone = [c for c in (*contacts, *self.staff) if c.wants(kind)]
        customers = [c for c in everyone if c.role == "customer"]
        counted = customers or [c for c in everyone if c.role == "staff"]
        if payload.get("balance_fen") is not None:
            balance_fen = int(payload["balance_fen"])
        at = from_iso(payload.get("at")) or issued_at
        values = {"site": self.site, "account": account_id, "meter": payload.get("meter_id", ""),
                  "balance": format_fen(balance_fen) if balance_fen is not None else "",
                  "amount": format_fen(int(payload["amount_fen"])) if "amount_fen" in payload else "",
                  "time": at.astimezone(self.tz).strftime("%Y-%m-%d %H:%M")}
        out = []
        for contact in everyone:
            text = self._text(self.templates, kind, contact, values)
            subject = self._text(self.subjects, kind, contact, values) if self.subjects else ""
            out.append(PlannedNotice(f"{event_id}/{kind}/{contact.role}/{contact.name}", event_id, kind, account_id,
                                     contact, subject, text, issued_at,
                                     final=kind == FINAL_WARNING and contact in counted))
        return out

    @staticmethod
    def _text(templates: Mapping[str, Mapping[str, str]], kind: str, contact: Contact, values: dict[str, str]) -> str:
        by_language = templates.get(kind) or {}
        template = by_language.get(contact.language) or by_language.get("en") or next(iter(by_language.values()), "")
        return template.format_map({**values, "name": contact.name})

    def hold_until(self, kind: str, now: dt.datetime) -> dt.datetime | None:
        """When a notice of ``kind`` may go out, if not now (quiet hours)."""
        if self.quiet_hours is None or kind not in self.quiet_hours.kinds:
            return None
        return self.quiet_hours.ends_at(now, self.tz)

    def retry_at(self, attempts: int, now: dt.datetime) -> dt.datetime | None:
        """When to try a notice again after its ``attempts``-th failed attempt; None: give up (dead letter)."""
        if attempts >= self.max_attempts:
            return None
        return now + min(self.backoff * (2 ** (attempts - 1)), self.backoff_cap)


# The built-in texts (Chinese and English); a site's ``notices.templates`` replace them per kind and language.
DEFAULT_TEMPLATES: Mapping[str, Mapping[str, str]] = {
    "low_balance_1": {
        "zh": "【{site}】尊敬的用户，您的电费账户{account}余额为{balance}元，已低于提醒金额，请及时缴费。",
        "en": "{site}: account {account} has {balance} yuan left, below the reminder level. Please top up soon."},
    "low_balance_2": {
        "zh": "【{site}】最后提醒：您的电费账户{account}余额为{balance}元。余额用尽后将停止供电，请尽快缴费。",
        "en": "{site}: FINAL NOTICE. Account {account} has {balance} yuan left. The supply will be cut off when "
              "the credit is spent. Please top up now."},
    "exhausted": {
        "zh": "【{site}】您的电费账户{account}余额已用尽（{balance}元），请立即缴费，以免停电。",
        "en": "{site}: the credit of account {account} is spent ({balance} yuan). Top up now to keep the supply."},
    "disconnected": {
        "zh": "【{site}】账户{account}（电表{meter}）已于{time}停止供电，余额{balance}元。如因欠费停电，缴费后将自动恢复。",
        "en": "{site}: the supply of account {account} (meter {meter}) was cut off at {time}; balance {balance} "
              "yuan. If for lack of credit, it comes back automatically after a payment."},
    "reconnected": {
        "zh": "【{site}】账户{account}（电表{meter}）已于{time}恢复供电。",
        "en": "{site}: the supply of account {account} (meter {meter}) was restored at {time}."},
    "payment_received": {
        "zh": "【{site}】账户{account}已于{time}缴费{amount}元，当前余额{balance}元。",
        "en": "{site}: payment of {amount} yuan to account {account} received at {time}; balance {balance} yuan."},
    "final_warning_undelivered": {
        "zh": "【{site}】账户{account}的最后欠费提醒（{time}发出）未能送达用户，自动停电已暂停。余额{balance}元，"
              "请联系用户。",
        "en": "{site}: the final warning to account {account} (issued {time}) could not be delivered; its "
              "automatic disconnect waits. Balance {balance} yuan. Please contact the customer."},
}
