"""Guardrails: when the engine must not issue an automatic disconnect, and until when.

Checked in this order; the first that applies is the refusal recorded (reason codes in ``REASONS``):
protected (保电) · operator hold · a quarantined reading · a meter offline · readings not usable (the caller's
judgement) · a stale reading · a friendly-credit window · a final warning not delivered yet (where the site's
notices are on) · the notice period after the final warning (from its delivery, where notices are on) · the site's
automatic-disconnect rate limit (checked last, so that only a disconnect that will happen uses the budget).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.domain.calendar import friendly_window_at
from gateway.domain.policy import RateLimiter
from gateway.domain.timeutil import to_iso

if TYPE_CHECKING:
    from gateway.domain.account import PrepaidAccount

__all__ = ["REASONS", "Refusal", "disconnect_refusal"]

REASONS = ("protected", "operator_hold", "quarantined_reading", "meter_offline", "readings_not_ok",
           "stale_reading", "friendly_window", "notice_undelivered", "notice_period", "rate_limit")


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: str  # one of REASONS
    detail: str = ""
    until: dt.datetime | None = None  # when the reason is expected to end, if known


def disconnect_refusal(account: PrepaidAccount, now: dt.datetime, *, readings_ok: bool = True,
                       why_not_ok: str = "", offline: Collection[str] = (),
                       limiter: RateLimiter | None = None) -> Refusal | None:
    """The guardrail that forbids an automatic disconnect of ``account`` at ``now``, or None."""
    site = account.site
    if account.is_protected:
        return Refusal("protected", "operator" if account.operator_protected and not account.protected else "")
    if account.hold_until is not None and now < account.hold_until:
        return Refusal("operator_hold", f"until {to_iso(account.hold_until)}", account.hold_until)
    for meter_id, cursor in sorted(account.cursors.items()):
        if cursor.pending is not None:
            return Refusal("quarantined_reading", meter_id)
    for meter_id in sorted(offline):
        return Refusal("meter_offline", meter_id)
    if not readings_ok:
        return Refusal("readings_not_ok", why_not_ok)
    if site.stale_after is not None:
        for meter_id, cursor in sorted(account.cursors.items()):
            if cursor.seen_at is None or now - cursor.seen_at > site.stale_after:
                return Refusal("stale_reading", meter_id)
    window = friendly_window_at(now, site.friendly_windows, site.holidays, site.tz)
    if window is not None:
        return Refusal("friendly_window", window[0], window[1])
    issued, delivered = account.final_warning_at, account.final_warning_delivered_at
    if site.notice_delivery and issued is not None and delivered is None:
        timeout = issued + site.notice_delivery_timeout
        if now < timeout:
            return Refusal("notice_undelivered", f"final warning of {to_iso(issued)} not delivered yet", timeout)
        return Refusal("notice_undelivered", f"final warning of {to_iso(issued)} not delivered within "
                                             f"{int(site.notice_delivery_timeout.total_seconds())} s: staff told")
    start = delivered if site.notice_delivery else issued
    if site.notice_period and start is not None:
        ends = start + site.notice_period
        if now < ends:
            what = "delivered" if site.notice_delivery else "at"
            return Refusal("notice_period", f"final warning {what} {to_iso(start)}", ends)
    if limiter is not None and not limiter.allows(now):
        return Refusal("rate_limit", f"at most {limiter.limit} automatic disconnects per "
                                     f"{int(limiter.window.total_seconds())} s", limiter.free_at(now))
    return None
