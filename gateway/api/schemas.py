"""Request and response shapes of the API (DESIGN.md §10). Amounts are decimal strings in yuan."""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PaymentCreate(_In):
    """A payment pushed by a billing system; (source, payment_id) identifies it."""

    source: str = Field(min_length=1, max_length=64, examples=["billing"])
    payment_id: str = Field(min_length=1, max_length=128, examples=["P-1001"])
    account_id: str = Field(min_length=1, max_length=64, examples=["A-1"])
    amount: str = Field(description="yuan, at most 2 decimals", examples=["50.00"])
    paid_at: dt.datetime | None = Field(None, examples=["2026-11-23T08:00:00Z"])
    channel: str | None = Field(None, max_length=64, examples=["alipay"])

    @field_validator("paid_at")
    @classmethod
    def _aware(cls, value: dt.datetime | None) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("paid_at needs a time zone (use UTC, e.g. 2026-11-23T08:00:00Z)")
        return value


class PaymentPublic(BaseModel):
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


class ReversalCreate(_In):
    """Reverse a recorded payment (a bounced transfer, a refund): its credit is removed, once."""

    reason: str = Field(min_length=1, max_length=500, examples=["bank returned the transfer"])


class AccountPublic(BaseModel):
    id: str
    balance: str
    state: str = Field(description="connected or disconnected (what the engine wants for the supply)")
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


class ReadingPublic(BaseModel):
    taken_at: dt.datetime
    energy_wh: int
    power_w: int | None
    voltage_v: float | None
    current_a: float | None
    relay: str | None
    billed: bool = True


class ReadingList(BaseModel):
    data: list[ReadingPublic]
    next_before_id: int | None = Field(description="pass as before_id for the next page; null on the last")


class LedgerEntryPublic(BaseModel):
    id: int
    kind: str
    amount: str
    balance_after: str
    created_at: dt.datetime
    reference: str | None
    meter_id: str | None
    energy_wh: int | None
    period: str | None
    detail: str | None


class LedgerList(BaseModel):
    data: list[LedgerEntryPublic]
    next_before_id: int | None


class EmergencyCreditCreate(_In):
    amount: str | None = Field(None, description="yuan; default: the site's amount", examples=["10.00"])
    reason: str = Field(min_length=1, max_length=500)


class ProtectionUpdate(_In):
    protected: bool
    reason: str = Field(min_length=1, max_length=500)


class HoldUpdate(_In):
    until: dt.datetime | None = Field(description="no automatic disconnect before this time; null releases")
    reason: str = Field(min_length=1, max_length=500)


class AdjustmentCreate(_In):
    amount: str = Field(description="signed yuan: positive credits, negative debits", examples=["-3.50"])
    reason: str = Field(min_length=1, max_length=500)


class QuarantineAction(_In):
    reason: str = Field(min_length=1, max_length=500)
    energy_wh: int | None = Field(None, ge=0, description="accept: the energy to bill; rebase: the new baseline")
    taken_at: dt.datetime | None = None


class MeterPublic(BaseModel):
    id: str
    account_id: str
    bus: str
    relay: str
    health: str
    consecutive_failures: int
    last_error: str | None
    last_success_at: dt.datetime | None
    last_reading: ReadingPublic | None
    groups: list[str] = []
    quarantine: dict[str, object] | None = Field(None, description="a reading held back from billing, and why")


class RelayCommandCreate(_In):
    reason: str = Field(min_length=1, max_length=500, examples=["customer request"])
    operator: str | None = Field(None, max_length=100, description="who asks; defaults to the API key's name")
    force: bool = Field(False, description="admin only: disconnect a protected (保电) account")
    dry_run: bool = Field(False, description="say what would happen and why, change nothing")


class BulkCommandCreate(RelayCommandCreate):
    action: str = Field(pattern="^(disconnect|reconnect)$")
    meter_ids: list[str] = Field(default_factory=list, max_length=10_000)
    group: str | None = Field(None, description="all meters of a group (meters[].groups in the settings)")


class ManualCommandResult(BaseModel):
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
    dry_run: bool
    results: list[ManualCommandResult]


class CommandPublic(BaseModel):
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
    command_id: str
    state: str
    command: CommandPublic
    hold_until: dt.datetime | None = None
    note: str | None = None


class CommandList(BaseModel):
    data: list[CommandPublic]
    next_before: str | None = Field(description="pass as `before` for the next page; null on the last")
