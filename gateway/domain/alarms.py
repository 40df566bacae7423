"""Alarms as records: their kinds and severities, which event raises which alarm, and which event ends one.

An alarm is about a *subject* (a meter, an account, a contact of an account, the outbox); there is at most one
unresolved alarm per (kind, subject). ``alarm_changes`` reads one outbox event (its topic and payload, as stored)
and says what it raises and what it resolves; the alarm keeper (``gateway.service.alarms``) applies that to the
stored alarms. Pure: no I/O, no clock.

| kind                | severity | raised by                            | resolved by                             |
| ------------------- | -------- | ------------------------------------ | --------------------------------------- |
| tamper              | critical | MeterTamper with flags               | MeterTamper without flags               |
| account_unreadable  | critical | AccountUnreadable                    | an operator (the account repaired)      |
| meter_offline       | major    | MeterHealth offline                  | MeterHealth online                      |
| command_failed      | major    | CommandFailed (unconfirmed, refused) | a later command confirmed or armed      |
| reading_quarantined | major    | ReadingQuarantined                   | QuarantineResolved                      |
| outbox_overflow     | major    | OutboxOverflow (events left out)     | an operator                             |
| meter_stale         | minor    | MeterStale                           | MeterFresh                              |
| disconnect_refused  | minor    | DisconnectDeferred (a guardrail)     | DisconnectRequired, DisconnectWithdrawn |
| notice_failed       | minor    | NoticeFailed (a dead letter)         | a later notice to it delivered          |
| notice_failed       | minor    | FinalWarningUndelivered              | FinalWarningDelivered                   |

A meter detached or replaced ends the alarms about that meter; an account closed, those about the account.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ACCOUNT_KINDS", "KINDS", "METER_KINDS", "OWN_EVENTS", "SEVERITIES", "STATES", "AlarmChanges", "Raise",
           "Resolve", "alarm_changes", "severity"]

SEVERITIES = ("critical", "major", "minor")
STATES = ("open", "acknowledged", "resolved")
_SEVERITY = {
    "tamper": "critical", "account_unreadable": "critical",
    "meter_offline": "major", "command_failed": "major", "reading_quarantined": "major", "outbox_overflow": "major",
    "meter_stale": "minor", "disconnect_refused": "minor", "notice_failed": "minor",
}
KINDS = tuple(_SEVERITY)
METER_KINDS = ("tamper", "meter_offline", "command_failed", "reading_quarantined", "meter_stale")  # subject: meter
ACCOUNT_KINDS = ("account_unreadable", "disconnect_refused", "notice_failed")  # about an account
OWN_EVENTS = frozenset({"AlarmRaised", "AlarmAcknowledged", "AlarmResolved"})  # the keeper's own: never alarms
OUTBOX_SUBJECT = "outbox"
FINAL_WARNING = "final_warning"  # notice_failed about an account's final warning: "A-1/final_warning"
_TEXT = 500  # the most characters of a payload's text kept in an alarm's detail


def severity(kind: str) -> str:
    """The severity of an alarm kind (KeyError for an unknown kind)."""
    return _SEVERITY[kind]


@dataclass(frozen=True, slots=True)
class Raise:
    """An alarm to raise (or, while one of its kind and subject is unresolved, to count again)."""

    kind: str
    subject: str
    meter_id: str | None = None
    account_id: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def severity(self) -> str:
        return _SEVERITY[self.kind]


AlarmKey = tuple[str, str, str | None, str | None]  # an alarm's kind, subject, meter_id, account_id


@dataclass(frozen=True, slots=True)
class Resolve:
    """The unresolved alarms to end: of one of ``kinds``, matching each of ``subject``, ``meter_id`` and
    ``account_id`` that is given. ``reason``: why (the event that ended the cause)."""

    kinds: tuple[str, ...]
    reason: str
    subject: str | None = None
    meter_id: str | None = None
    account_id: str | None = None

    def ends(self, key: AlarmKey) -> bool:
        """Whether this ends an unresolved alarm of ``key``: (kind, subject, meter_id, account_id)."""
        kind, subject, meter_id, account_id = key
        return (kind in self.kinds and self.subject in (None, subject) and self.meter_id in (None, meter_id)
                and self.account_id in (None, account_id))


class Unresolved:
    """The keys of unresolved alarms, indexed for ``ends``: whether a resolution ends one of them."""

    def __init__(self, keys: Iterable[AlarmKey] = ()) -> None:
        self._by: tuple[dict[str | None, set[AlarmKey]], ...] = ({}, {}, {})  # by subject, meter, account
        self._all: set[AlarmKey] = set()
        for key in keys:
            self.add(key)

    def add(self, key: AlarmKey) -> None:
        self._all.add(key)
        for index, value in zip(self._by, key[1:], strict=True):
            index.setdefault(value, set()).add(key)

    def discard(self, key: AlarmKey) -> None:
        self._all.discard(key)
        for index, value in zip(self._by, key[1:], strict=True):
            index.get(value, set()).discard(key)

    def ends(self, resolution: Resolve) -> bool:
        """Whether ``resolution`` ends one of the alarms."""
        candidates = self._all
        for index, value in zip(self._by, (resolution.subject, resolution.meter_id, resolution.account_id),
                                strict=True):
            if value is not None:
                candidates = index.get(value, set())
                break
        return any(resolution.ends(key) for key in candidates)


@dataclass(frozen=True, slots=True)
class AlarmChanges:
    """What one event does to the alarms: resolutions first, then raises (an event may do both: a tamper flag
    set replacing another is one raise)."""

    raises: tuple[Raise, ...] = ()
    resolves: tuple[Resolve, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.raises or self.resolves)


NOTHING = AlarmChanges()


def _text(value: Any) -> str | None:
    return None if value is None else str(value)[:_TEXT]


def _str(payload: Mapping[str, Any], key: str) -> str | None:
    value = payload.get(key)
    return value if isinstance(value, str) and value else None


def _raise(kind: str, subject: str | None, *, meter_id: str | None = None, account_id: str | None = None,
           **detail: Any) -> AlarmChanges:
    if subject is None:
        return NOTHING  # a payload without its subject (a malformed event) raises nothing
    return AlarmChanges(raises=(Raise(kind, subject, meter_id, account_id,
                                      {k: v for k, v in detail.items() if v is not None}),))


def _resolve(*resolves: Resolve | None) -> AlarmChanges:
    found = tuple(r for r in resolves if r is not None and (r.subject or r.meter_id or r.account_id))
    return AlarmChanges(resolves=found) if found else NOTHING


def notice_subject(account_id: str, contact: str, channel: str) -> str:
    """The subject of a notice_failed alarm: the account's contact on one channel."""
    return f"{account_id}/{contact}/{channel}"


def alarm_changes(topic: str, payload: Mapping[str, Any]) -> AlarmChanges:
    """What an outbox event (``topic``, ``payload``) raises and resolves."""
    kind = payload.get("type")
    if not isinstance(kind, str) or kind in OWN_EVENTS:
        return NOTHING
    rule = _RULES.get(kind)
    return rule(topic, payload) if rule is not None else NOTHING


def _meter_health(topic: str, p: Mapping[str, Any]) -> AlarmChanges:
    meter = _str(p, "meter_id")
    if p.get("health") == "offline":
        return _raise("meter_offline", meter, meter_id=meter, error=_text(p.get("error")))
    if p.get("health") == "online":
        return _resolve(Resolve(("meter_offline",), "the meter answers again", subject=meter))
    return NOTHING  # degraded: answering, not always


def _meter_stale(topic: str, p: Mapping[str, Any]) -> AlarmChanges:
    meter = _str(p, "meter_id")
    return _raise("meter_stale", meter, meter_id=meter, account_id=_str(p, "account_id"),
                  last_success_at=_text(p.get("last_success_at")), stale_after_s=p.get("stale_after_s"))


def _meter_fresh(topic: str, p: Mapping[str, Any]) -> AlarmChanges:
    return _resolve(Resolve(("meter_stale",), "a fresh reading", subject=_str(p, "meter_id")))


def _tamper(topic: str, p: Mapping[str, Any]) -> AlarmChanges:
    meter = _str(p, "meter_id")
    flags = p.get("flags")
    if isinstance(flags, list) and flags:
        return _raise("tamper", meter, meter_id=meter, account_id=_str(p, "account_id"),
                      flags=[_text(f) for f in flags[:16]])
    if isinstance(flags, list):
        return _resolve(Resolve(("tamper",), "the meter's tamper flags cleared", subject=meter))
    return NOTHING


def _command_failed(topic: str, p: Mapping[str, Any]) -> AlarmChanges:
    meter = _str(p, "meter_id")
    return _raise("command_failed", meter, meter_id=meter, command_id=_str(p, "command_id"),
                  action=_str(p, "action"), fault=_str(p, "fault"), error=_text(p.get("error")))


def _command_state(topic: str, p: Mapping[str, Any]) -> AlarmChanges:
    if p.get("state") in ("confirmed", "armed") and topic.startswith("commands/"):
        return _resolve(Resolve(("command_failed",), f"command {p.get('id')} {p.get('state')}",
                                subject=_str(p, "meter_id")))
    return NOTHING


def _quarantined(topic: str, p: Mapping[str, Any]) -> AlarmChanges:
    meter = _str(p, "meter_id")
    return _raise("reading_quarantined", meter, meter_id=meter, account_id=_str(p, "account_id"),
                  energy_wh=p.get("energy_wh"), previous_wh=p.get("previous_wh"), reason=_text(p.get("reason")),
                  quarantine=_str(p, "kind"), taken_at=_text(p.get("taken_at")))


def _quarantine_resolved(topic: str, p: Mapping[str, Any]) -> AlarmChanges:
    return _resolve(Resolve(("reading_quarantined",), f"the quarantined reading was {p.get('action')}",
                            subject=_str(p, "meter_id")))


def _deferred(topic: str, p: Mapping[str, Any]) -> AlarmChanges:
    account = _str(p, "account_id")
    return _raise("disconnect_refused", account, account_id=account, reason=_text(p.get("reason")),
                  detail=_text(p.get("detail")) or None, until=_text(p.get("until")),
                  balance_fen=p.get("balance_fen"))


def _disconnect_over(topic: str, p: Mapping[str, Any]) -> AlarmChanges:
    why = {"DisconnectRequired": "the disconnect goes ahead",
           "DisconnectWithdrawn": "the disconnect is no longer needed"}[str(p.get("type"))]
    return _resolve(Resolve(("disconnect_refused",), why, subject=_str(p, "account_id")))


def _notice_failed(topic: str, p: Mapping[str, Any]) -> AlarmChanges:
    account, contact, channel = _str(p, "account_id"), _str(p, "contact"), _str(p, "channel")
    subject = notice_subject(account, contact, channel) if account and contact and channel else None
    return _raise("notice_failed", subject, account_id=account, notice_id=p.get("notice_id"),
                  notice=_str(p, "kind"), contact=contact, channel=channel, attempts=p.get("attempts"),
                  error=_text(p.get("error")))


def _notice_state(topic: str, p: Mapping[str, Any]) -> AlarmChanges:
    account, contact, channel = _str(p, "account_id"), _str(p, "contact"), _str(p, "channel")
    if p.get("state") != "delivered" or not (account and contact and channel):
        return NOTHING
    return _resolve(Resolve(("notice_failed",), f"notice {p.get('notice_id')} delivered",
                            subject=notice_subject(account, contact, channel)))


def _final_warning(topic: str, p: Mapping[str, Any]) -> AlarmChanges:
    account = _str(p, "account_id")
    subject = f"{account}/{FINAL_WARNING}" if account else None
    if p.get("type") == "FinalWarningDelivered":
        return _resolve(Resolve(("notice_failed",), f"the final warning reached {p.get('to')}", subject=subject))
    return _raise("notice_failed", subject, account_id=account, notice="final_warning",
                  issued_at=_text(p.get("issued_at")), balance_fen=p.get("balance_fen"))


def _unreadable(topic: str, p: Mapping[str, Any]) -> AlarmChanges:
    account = _str(p, "account_id")
    return _raise("account_unreadable", account, account_id=account, error=_text(p.get("error")))


def _overflow(topic: str, p: Mapping[str, Any]) -> AlarmChanges:
    return _raise("outbox_overflow", OUTBOX_SUBJECT, left_out=p.get("left_out"))


def _meter_gone(topic: str, p: Mapping[str, Any]) -> AlarmChanges:
    meter = _str(p, "old_meter_id") if p.get("type") == "MeterReplaced" else _str(p, "meter_id")
    return _resolve(Resolve(METER_KINDS, f"the meter left account {p.get('account_id')}", meter_id=meter))


def _account_closed(topic: str, p: Mapping[str, Any]) -> AlarmChanges:
    return _resolve(Resolve(ACCOUNT_KINDS, "the account was closed", account_id=_str(p, "account_id")))


_RULES = {
    "MeterHealth": _meter_health, "MeterStale": _meter_stale, "MeterFresh": _meter_fresh, "MeterTamper": _tamper,
    "CommandFailed": _command_failed, "CommandState": _command_state,
    "ReadingQuarantined": _quarantined, "QuarantineResolved": _quarantine_resolved,
    "DisconnectDeferred": _deferred, "DisconnectRequired": _disconnect_over, "DisconnectWithdrawn": _disconnect_over,
    "NoticeFailed": _notice_failed, "NoticeState": _notice_state,
    "FinalWarningUndelivered": _final_warning, "FinalWarningDelivered": _final_warning,
    "AccountUnreadable": _unreadable, "OutboxOverflow": _overflow,
    "MeterDetached": _meter_gone, "MeterReplaced": _meter_gone, "AccountClosed": _account_closed,
}
