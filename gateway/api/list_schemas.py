"""The lists' shapes (docs/api.md, "Lists and the audit log"): their rows and pages, and the types of their filters.

Each page carries the cursor of the next one (``next_after``, ``next_before_id``, ``next_before`` with
``next_before_id``), null on the last page.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gateway.api.schemas import CommandPublic
from gateway.domain.money import AmountError, parse_yuan

__all__ = ["AccountList", "AccountRow", "AuditAction", "AuditEntry", "AuditList", "BalanceBound", "CommandPage",
           "Health", "MeterList", "MeterRow", "Origin", "Relay", "SupplyState", "fen"]

SupplyState = Literal["connected", "disconnected", "disconnecting", "reconnecting", "armed", "disconnect_failed",
                      "reconnect_failed"]
Health = Literal["online", "degraded", "offline", "unknown"]
Relay = Literal["open", "closed", "armed", "unknown"]
Origin = Literal["automatic", "operator", "billing"]

# Yuan, signed, zero allowed: a bound of a balance range (its own pattern: every value it lets through converts)
BalanceBound = Annotated[str, Field(pattern=r"^-?(0|[1-9][0-9]{0,15})(\.[0-9]{1,2})?$", max_length=20,
                                    examples=["-5.00"])]
# An audit action ("command.cancel"), or a prefix ending with "." ("command.")
AuditAction = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*(\.[a-z0-9_]*)*$", max_length=64,
                                   examples=["command."])]


def fen(bound: str | None) -> int | None:
    """A balance bound in fen (``-0.00`` is zero)."""
    if bound is None:
        return None
    try:
        value = parse_yuan(bound.removeprefix("-"), allow_zero=True)
    except AmountError:  # the pattern lets nothing else through
        raise ValueError(f"not an amount: {bound!r}") from None
    return -value if bound.startswith("-") else value


def _example(**example: Any) -> ConfigDict:
    return ConfigDict(json_schema_extra={"examples": [example]})


_ACCOUNT = dict(id="A-2", balance="-3.20", state="disconnected", supply="disconnected", status="open",
                tariff="residential", credit_class="B", protected=False, meters=["M-2"],
                disconnect_deferred_because=None, updated_at="2026-11-23T08:00:01Z")
_METER = dict(id="M-2", account_id="A-2", status="active", bus="feeder-1", unit_id=2, address=None,
              model="generic-prepaid", relay="open", relay_fault="", health="online", consecutive_failures=0,
              last_success_at="2026-11-23T08:00:00Z")
_AUDIT = dict(id=5120, at="2026-11-23T08:00:00Z", actor="ops-desk", action="command.open", target="A-2",
              detail={"meter_id": "M-2", "reason": "meter inspection", "operator": "Zhang Wei", "force": False})


class AccountRow(BaseModel):
    """An account in a list: what the filters look at (``GET /v1/accounts/{id}`` has the rest)."""

    model_config = ConfigDict(json_schema_extra={"examples": [_ACCOUNT]})

    id: str
    balance: str
    state: SupplyState = Field(description="the supply as the meters last confirmed it")
    supply: Literal["connected", "disconnected"] = Field(description="what the engine wants for the supply")
    status: Literal["open", "closed"]
    tariff: str | None = Field(description="the tariff in force")
    credit_class: str | None
    protected: bool = Field(description="under protection (保电), by configuration or by an admin")
    meters: list[str] = Field(description="the active meters")
    disconnect_deferred_because: str | None
    updated_at: dt.datetime


class AccountList(BaseModel):
    model_config = _example(data=[_ACCOUNT], next_after=None)

    data: list[AccountRow]
    next_after: str | None = Field(description="pass as `after` for the next page; null on the last")


class MeterRow(BaseModel):
    """A meter in a list: place, model, relay and communication health."""

    model_config = ConfigDict(json_schema_extra={"examples": [_METER]})

    id: str
    account_id: str
    status: Literal["active", "retired"]
    bus: str
    unit_id: int | None = Field(description="Modbus")
    address: str | None = Field(description="DL/T 645, 12 digits")
    model: str
    relay: str = Field(description="open, closed, armed or unknown, as last read")
    relay_fault: Literal["", "disconnect_failed", "reconnect_failed"]
    health: str = Field(description="online, degraded, offline or unknown")
    consecutive_failures: int
    last_success_at: dt.datetime | None


class MeterList(BaseModel):
    model_config = _example(data=[_METER], next_after=None)

    data: list[MeterRow]
    next_after: str | None = Field(description="pass as `after` for the next page; null on the last")


class CommandPage(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"data": [], "next_before": None,
                                                               "next_before_id": None}]})

    data: list[CommandPublic]
    next_before: str | None = Field(description="pass as `before`, with `next_before_id` as `before_id`, for the "
                                                "next page; null on the last")
    next_before_id: str | None = Field(description="pass as `before_id` for the next page; null on the last")


class AuditEntry(BaseModel):
    """A change and who made it: the API key's name (``gateway`` for the gateway's own)."""

    model_config = ConfigDict(json_schema_extra={"examples": [_AUDIT]})

    id: int
    at: dt.datetime
    actor: str
    action: str = Field(description="what was done, e.g. payment.reverse, account.hold, command.open, meter.swap")
    target: str | None = Field(description="what it was done to: an account, meter or command id (or fleet, "
                                           "settings)")
    detail: dict[str, Any] | None


class AuditList(BaseModel):
    model_config = _example(data=[_AUDIT], next_before_id=None)

    data: list[AuditEntry]
    next_before_id: int | None = Field(description="pass as `before_id` for the next page; null on the last")
