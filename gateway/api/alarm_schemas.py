"""Request and response shapes of the alarms (docs/alarms.md)."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gateway.api.fields import Reason
from gateway.domain.alarms import KINDS, SEVERITIES

__all__ = ["AlarmAction", "AlarmKind", "AlarmList", "AlarmPublic", "AlarmSeverity", "AlarmStateFilter"]

AlarmKind = Literal[KINDS]  # type: ignore[valid-type]
AlarmSeverity = Literal[SEVERITIES]  # type: ignore[valid-type]
AlarmStateFilter = Literal["open", "acknowledged", "resolved", "unresolved"]

_ALARM: dict[str, Any] = {
    "id": 42, "kind": "meter_offline", "severity": "major", "state": "acknowledged", "subject": "M-1",
    "meter_id": "M-1", "account_id": "A-1", "detail": {"error": "timeout after 1.0 s"},
    "raised_at": "2026-12-03T01:00:00Z", "last_seen_at": "2026-12-03T01:00:00Z", "times": 1,
    "updated_at": "2026-12-03T01:05:00Z", "acknowledged_at": "2026-12-03T01:05:00Z", "acknowledged_by": "ops-desk",
    "ack_reason": "crew sent to feeder 7", "resolved_at": None, "resolved_by": None, "resolve_reason": None}


class AlarmAction(BaseModel):
    """An operator's acknowledgement or resolution of an alarm, with the reason (kept in the audit log)."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [
        {"reason": "crew sent to feeder 7"}]})

    reason: Reason


class AlarmPublic(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_ALARM]})

    id: int
    kind: str = Field(description="meter_offline, meter_stale, reading_quarantined, command_failed, tamper, "
                                  "disconnect_refused, notice_failed, account_unreadable or outbox_overflow")
    severity: str = Field(description="critical, major or minor")
    state: str = Field(description="open, acknowledged or resolved")
    subject: str = Field(description="what it is about: a meter, an account, `account/contact/channel` of a "
                                     "notice, `account/final_warning`, or `outbox`")
    meter_id: str | None
    account_id: str | None
    detail: dict[str, Any] | None = Field(description="what the event that raised it (last) said")
    raised_at: dt.datetime
    last_seen_at: dt.datetime = Field(description="when it was raised last (`times` counts how often)")
    times: int
    updated_at: dt.datetime
    acknowledged_at: dt.datetime | None
    acknowledged_by: str | None
    ack_reason: str | None
    resolved_at: dt.datetime | None
    resolved_by: str | None = Field(description="the operator's key, or `gateway` when its cause ended")
    resolve_reason: str | None


class AlarmList(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"data": [_ALARM], "next_before_id": None}]})

    data: list[AlarmPublic]
    next_before_id: int | None = Field(description="pass as `before_id` for the next page; null on the last")
