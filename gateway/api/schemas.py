"""Request and response shapes of the API (DESIGN.md §10). Amounts are decimal strings in yuan."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.api.fields import (
    Amount,
    EnergyWh,
    Flag,
    Label,
    Name,
    PaymentId,
    Reason,
    SignedAmount,
    Source,
    Timestamp,
)


def _example(**example: Any) -> ConfigDict:
    return ConfigDict(json_schema_extra={"examples": [example]})


class _In(BaseModel):
    """A request body: unknown keys refused, strict types (no "1" for 1, no 0 for false)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class PaymentCreate(_In):
    """A payment pushed by a billing system; (source, payment_id) identifies it."""

    model_config = _example(source="billing", payment_id="P-1001", account_id="A-1", amount="50.00",
                            paid_at="2026-11-23T08:00:00Z", channel="alipay")

    source: Source
    payment_id: PaymentId
    account_id: Name
    amount: Amount
    paid_at: Timestamp | None = Field(None, description="when the customer paid (as the billing system says)")
    channel: Name | None = Field(None, examples=["alipay"])


_PAYMENT = dict(source="billing", payment_id="P-1001", account_id="A-1", amount="50.00",
                paid_at="2026-11-23T08:00:00Z", channel="alipay", balance="60.00",
                received_at="2026-11-23T08:00:01.250000Z", reversed_at=None, reversal_reason=None,
                recorded_by="billing-erp", reversed_by=None)
_COMMAND = dict(id="6f1c2a9e-3b0d-4c55-9a57-0e4b8e1b2f10", meter_id="M-3", action="open", origin="operator",
                operator="Zhang Wei", reason="meter inspection", state="queued", attempts=0, last_error=None,
                created_at="2026-11-23T08:00:00Z", updated_at="2026-11-23T08:00:00Z",
                expires_at="2026-11-23T08:10:00Z")
_READING = dict(taken_at="2026-11-23T08:00:00Z", energy_wh=1_234_560, power_w=850, voltage_v=229.8,
                current_a=3.9, relay="closed", billed=True)


class PaymentPublic(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_PAYMENT]})

    source: str
    payment_id: str
    account_id: str
    amount: str
    paid_at: dt.datetime | None
    channel: str | None
    balance: str = Field(description="the account's balance right after this payment (or its reversal)")
    received_at: dt.datetime
    reversed_at: dt.datetime | None = None
    reversal_reason: str | None = None
    recorded_by: str | None = Field(None, description="the API key that posted it")
    reversed_by: str | None = Field(None, description="the API key that reversed it")


class ReversalCreate(_In):
    """Reverse a recorded payment (a bounced transfer, a refund): its credit is removed, once."""

    model_config = _example(reason="bank returned the transfer")

    reason: Reason


class AccountPublic(BaseModel):
    model_config = _example(
        id="A-1", balance="60.00", state="connected", supply="connected", relays={"M-1": "closed"}, credit="ok",
        meters=["M-1"], protected=False,
        disconnect_deferred_because=None, updated_at="2026-11-23T08:00:01Z", deferred_detail=None,
        deferred_until=None, hold_until=None, manual_disconnect=False, credit_class="B", disconnect_point="-5.00",
        reconnect_at="-4.00", emergency_credit_outstanding="0.00")

    id: str
    balance: str
    state: Literal["connected", "disconnected", "disconnecting", "reconnecting", "armed", "disconnect_failed",
                   "reconnect_failed"] = Field(
        description="the supply as the meters last confirmed it (never `disconnected` over a contact not read back "
                    "open; `armed`: a close-allowed meter waits for the customer's button)")
    supply: Literal["connected", "disconnected"] = Field(description="what the engine wants for the supply")
    relays: dict[str, str] = Field(default_factory=dict, description="each meter's relay as last read: open, "
                                                                     "closed, armed or unknown")
    credit: str = Field(description="ok, warning1, warning2, exhausted or disconnect_point")
    meters: list[str]
    protected: bool
    disconnect_deferred_because: str | None
    updated_at: dt.datetime
    deferred_detail: str | None = None
    deferred_until: dt.datetime | None = None
    hold_until: dt.datetime | None = None
    manual_disconnect: bool = False
    credit_class: str | None = None
    disconnect_point: str
    reconnect_at: str
    emergency_credit_outstanding: str
    final_warning_at: dt.datetime | None = Field(None, description="when the final warning was issued")
    status: Literal["open", "closed"] = "open"
    tariff: str | None = Field(None, description="the tariff in force")
    tariff_change: dict[str, object] | None = Field(None, description="a tariff change to come: tariff, effective_at")
    warning1: str | None = None
    warning2: str | None = None
    contacts: int = Field(0, description="how many contacts are told (their addresses are not shown)")
    final_warning_delivered_at: dt.datetime | None = Field(None, description=(
        "when it reached the customer (or the staff): with notices on, the notice period starts then"))


class ReadingPublic(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_READING]})

    taken_at: dt.datetime
    energy_wh: int
    power_w: int | None
    voltage_v: float | None
    current_a: float | None
    relay: str | None
    billed: bool = True


class ReadingList(BaseModel):
    model_config = _example(data=[_READING], next_before_id=None)

    data: list[ReadingPublic]
    next_before_id: int | None = Field(description="pass as before_id for the next page; null on the last")


_LEDGER = dict(id=1042, kind="payment", amount="50.00", balance_after="60.00", created_at="2026-11-23T08:00:01Z",
               reference="billing/P-1001", payment_source="billing", payment_id="P-1001", meter_id=None,
               energy_wh=None, period=None, detail=None)


class LedgerEntryPublic(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_LEDGER]})

    id: int
    kind: str
    amount: str
    balance_after: str
    created_at: dt.datetime
    reference: str | None = Field(description="a label: source/payment_id, a meter id, ...")
    payment_source: str | None = Field(None, description="payments, reversals, repayments: the payment's source")
    payment_id: str | None = Field(None, description="... and its id")
    meter_id: str | None
    energy_wh: int | None
    period: str | None
    detail: str | None


class LedgerList(BaseModel):
    model_config = _example(data=[_LEDGER], next_before_id=None)

    data: list[LedgerEntryPublic]
    next_before_id: int | None


class EmergencyCreditCreate(_In):
    """Emergency credit for an account; more than the site's amount needs the admin role."""

    model_config = _example(reason="customer in hospital, payment on Monday")

    amount: Amount | None = Field(None, description="yuan; default: the site's amount (policy.emergency_credit)")
    reason: Reason


class ProtectionUpdate(_In):
    """Put an account under protection (保电) or release it."""

    model_config = _example(protected=True, reason="dialysis patient at home")

    protected: Flag
    reason: Reason


class HoldUpdate(_In):
    """No automatic disconnect before ``until``; null releases the hold."""

    model_config = _example(until="2026-11-24T08:00:00Z", reason="payment promised by phone")

    until: Timestamp | None = Field(description="in the future; longer than api.max_operator_hold needs admin")
    reason: Reason


class AdjustmentCreate(_In):
    """A signed correction of the balance with its reason."""

    model_config = _example(amount="-3.50", reason="energy lost at the meter reset of 2026-11-20")

    amount: SignedAmount
    reason: Reason


class QuarantineAction(_In):
    """Bill a quarantined reading (accept) or start afresh from a new baseline (rebase)."""

    model_config = _example(reason="meter replaced, new register starts at 0", energy_wh=0,
                            taken_at="2026-11-23T08:00:00Z")

    reason: Reason
    energy_wh: EnergyWh | None = Field(None, description="accept: the energy to bill; rebase: the new baseline")
    taken_at: Timestamp | None = Field(None, description="rebase: when the baseline was read (not in the future)")


class QuarantineResult(BaseModel):
    model_config = _example(meter_id="M-1", decision="rebase", charged="0.00")

    meter_id: str
    decision: Literal["accept", "rebase"]
    charged: str = Field(description="what the decision billed (readings held back meanwhile included)")


class MeterPublic(BaseModel):
    model_config = _example(id="M-1", account_id="A-1", bus="feeder-1", relay="closed", relay_fault="",
                            health="online",
                            consecutive_failures=0, last_error=None, last_success_at="2026-11-23T08:00:00Z",
                            last_reading=_READING, groups=["street-1"], quarantine=None)

    id: str
    account_id: str
    bus: str
    relay: str = Field(description="open, closed, armed (close allowed: waiting for the button) or unknown, as last "
                                   "read from the meter")
    relay_fault: Literal["", "disconnect_failed", "reconnect_failed"] = Field(
        "", description="the meter's last relay command failed (an alarm was raised)")
    health: str
    consecutive_failures: int
    last_error: str | None
    last_success_at: dt.datetime | None
    last_reading: ReadingPublic | None
    groups: list[str] = []
    quarantine: dict[str, object] | None = Field(None, description="a reading held back from billing, and why")
    unit_id: int | None = None
    address: str | None = None
    model: str | None = None
    poll_interval_s: float | None = None


class RelayCommandCreate(_In):
    """A disconnect or reconnect asked by an operator."""

    model_config = _example(reason="meter inspection", operator="Zhang Wei")

    reason: Reason
    operator: Label | None = Field(None, description="on whose behalf the key's holder asks (recorded with the "
                                                     "command; the audit log names the key); default: the key's name")
    force: Flag = Field(False, description="admin only: disconnect a protected (保电) account")
    dry_run: Flag = Field(False, description="say what would happen and why, change nothing")


class BulkCommandCreate(RelayCommandCreate):
    """One action for a list of meters, or for all meters of a group (at least one of the two)."""

    action: Literal["disconnect", "reconnect"]
    meter_ids: list[Name] = Field(default_factory=list, max_length=10_000)
    group: Name | None = Field(None, description="all meters of a group (meters[].groups in the settings)")

    @model_validator(mode="after")
    def _some_meters(self) -> BulkCommandCreate:
        if not self.meter_ids and self.group is None:
            raise ValueError("name meters (meter_ids) or a group")
        return self

    model_config = ConfigDict(json_schema_extra={
        "examples": [{"action": "disconnect", "group": "street-1", "reason": "arrears round", "dry_run": True}],
        "anyOf": [{"required": ["meter_ids"], "properties": {"meter_ids": {"minItems": 1}}},
                  {"required": ["group"], "properties": {"group": {"type": "string"}}}]})


class ManualCommandResult(BaseModel):
    model_config = _example(meter_id="M-2", action="open", allowed=True, reason="ok", dry_run=True, command_id=None,
                            state=None, hold_until=None, supersedes=[], error=None)

    meter_id: str
    action: str
    allowed: bool
    reason: str
    dry_run: bool
    command_id: str | None = None
    state: str | None = None
    hold_until: dt.datetime | None = None
    supersedes: list[str] = []
    error: str | None = None


class BulkCommandResult(BaseModel):
    model_config = _example(dry_run=True, results=[dict(meter_id="M-1", action="open", allowed=True, reason="ok",
                                                         dry_run=True, supersedes=[])])

    dry_run: bool
    results: list[ManualCommandResult]


class CommandPublic(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_COMMAND]})

    id: str
    meter_id: str
    action: str
    origin: str
    operator: str | None
    reason: str | None
    state: str
    attempts: int
    last_error: str | None
    created_at: dt.datetime
    updated_at: dt.datetime
    expires_at: dt.datetime


class CommandAccepted(BaseModel):
    model_config = _example(command_id=_COMMAND["id"], state="queued", command=_COMMAND, hold_until=None,
                            note="ok")

    command_id: str
    state: str
    command: CommandPublic
    hold_until: dt.datetime | None = None
    note: str | None = None


_NOTICE = {"id": 12, "kind": "low_balance_2", "account_id": "A-1", "contact": "Li Lei", "role": "customer",
           "channel": "sms", "to": "*******0000", "language": "zh", "text": "【site】最后提醒：…",
           "final_warning": True, "state": "failed", "attempts": 6, "next_attempt_at": None,
           "last_error": "webhook answered 503 Service Unavailable", "issued_at": "2026-12-03T01:00:00Z",
           "created_at": "2026-12-03T01:00:00Z", "updated_at": "2026-12-03T02:03:00Z", "delivered_at": None}


class NoticePublic(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_NOTICE]})

    id: int
    kind: str
    account_id: str
    contact: str
    role: str
    channel: str
    to: str = Field(description="the recipient's address, masked but for its last four characters")
    language: str
    text: str
    final_warning: bool = Field(description="the final warning whose delivery starts the notice period")
    state: str = Field(description="pending, delivered or failed (a dead letter)")
    attempts: int
    next_attempt_at: dt.datetime | None
    last_error: str | None
    issued_at: dt.datetime
    created_at: dt.datetime
    updated_at: dt.datetime
    delivered_at: dt.datetime | None


class NoticeList(BaseModel):
    model_config = _example(data=[_NOTICE], next_before_id=None)

    data: list[NoticePublic]
    next_before_id: int | None = Field(description="pass as `before_id` for the next page; null on the last")


