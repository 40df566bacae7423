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
    balance: str = Field(description="the account's balance right after this payment")
    received_at: dt.datetime


class AccountPublic(BaseModel):
    id: str
    balance: str
    state: str = Field(description="connected or disconnected (what the engine wants for the supply)")
    credit: str = Field(description="ok, warning1, warning2, exhausted or disconnect_point")
    meters: list[str]
    protected: bool
    disconnect_deferred_because: str | None
    updated_at: dt.datetime


class ReadingPublic(BaseModel):
    taken_at: dt.datetime
    energy_wh: int
    power_w: int | None
    voltage_v: float | None
    current_a: float | None
    relay: str | None


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


class RelayCommandCreate(_In):
    reason: str = Field(min_length=1, max_length=500, examples=["customer request"])
    operator: str | None = Field(None, max_length=100, description="who asks; defaults to the API key's name")


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
