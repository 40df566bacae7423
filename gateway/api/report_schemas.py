"""Response shapes of the daily reports (docs/reports.md). Amounts are yuan strings, energy integer Wh, times UTC.

Each report's row model is also its CSV: the CSV's header is the row model's field names, in this order.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ArrearsReport", "ArrearsRow", "ConsumptionReport", "ConsumptionRow", "DisconnectionReport",
           "DisconnectionRow", "PaymentReport", "PaymentRow", "TimelinessReport", "TimelinessRow"]

_NEXT = Field(description="pass as `cursor` for the next page (same parameters); null on the last page")


def _example(**example: Any) -> ConfigDict:
    return ConfigDict(json_schema_extra={"examples": [example]})


class ArrearsRow(BaseModel):
    account_id: str
    balance: str = Field(examples=["-12.30"])
    supply: str = Field(description="connected | disconnected (what the engine wants; the relays follow)")
    credit_class: str | None
    protected: bool
    below_since: dt.datetime | None = Field(description="the first ledger entry after the last one that left the "
                                                        "balance at or above the threshold")
    days_in_arrears: int | None = Field(description="whole days from below_since to the report's time")
    last_payment_at: dt.datetime | None = Field(description="when the account's last payment was credited")
    last_payment: str | None = Field(description="its amount (a reversal later does not remove it here)")


class ArrearsTotals(BaseModel):
    accounts: int
    balance: str = Field(description="the sum of their balances")
    below: str = Field(description="the threshold")
    as_of: dt.datetime


class ArrearsReport(BaseModel):
    model_config = _example(data=[dict(account_id="A-7", balance="-12.30", supply="disconnected", credit_class="B",
                                       protected=False, below_since="2026-11-20T03:12:00Z", days_in_arrears=3,
                                       last_payment_at="2026-11-01T08:00:00Z", last_payment="50.00")],
                            totals=dict(accounts=1, balance="-12.30", below="0.00", as_of="2026-11-23T08:00:00Z"),
                            next_cursor=None)

    data: list[ArrearsRow]
    totals: ArrearsTotals
    next_cursor: str | None = _NEXT


class DisconnectionRow(BaseModel):
    command_id: str
    meter_id: str
    account_id: str | None = Field(description="the meter's account now")
    origin: str = Field(description="automatic | operator | billing")
    reason: str | None
    operator: str | None
    disconnected_at: dt.datetime = Field(description="when the open relay was confirmed")
    reconnected_at: dt.datetime | None = Field(description="the meter's next confirmed close; null: still off")
    duration_s: int = Field(description="seconds off: to the reconnection, or to the report's time")
    still_off: bool


class DisconnectionTotals(BaseModel):
    disconnections: int
    since: dt.datetime
    until: dt.datetime
    as_of: dt.datetime


class DisconnectionReport(BaseModel):
    model_config = _example(data=[dict(command_id="6f1c2a9e-3b0d-4c55-9a57-0e4b8e1b2f10", meter_id="M-3",
                                       account_id="A-3", origin="automatic", reason="balance", operator=None,
                                       disconnected_at="2026-11-22T09:00:02Z", reconnected_at="2026-11-22T10:30:05Z",
                                       duration_s=5403, still_off=False)],
                            totals=dict(disconnections=1, since="2026-11-22T00:00:00Z",
                                        until="2026-11-23T00:00:00Z", as_of="2026-11-23T08:00:00Z"),
                            next_cursor=None)

    data: list[DisconnectionRow]
    totals: DisconnectionTotals
    next_cursor: str | None = _NEXT


class _PaymentSums(BaseModel):
    count: int
    total: str
    reversed_count: int = Field(description="of these payments, how many were reversed (whenever)")
    reversed_total: str
    net: str = Field(description="total - reversed_total")


class PaymentRow(BaseModel):
    day: str = Field(description="the site-local day the payments were received (YYYY-MM-DD)")
    source: str
    channel: str | None
    count: int
    total: str
    reversed_count: int = Field(description="of these payments, how many were reversed (whenever)")
    reversed_total: str
    net: str = Field(description="total - reversed_total")


class PaymentTotals(_PaymentSums):
    since: str
    until: str
    time_zone: str


class PaymentReport(BaseModel):
    model_config = _example(data=[dict(day="2026-11-22", source="billing", channel="alipay", count=12,
                                       total="600.00", reversed_count=1, reversed_total="50.00", net="550.00")],
                            totals=dict(count=12, total="600.00", reversed_count=1, reversed_total="50.00",
                                        net="550.00", since="2026-11-22", until="2026-11-22",
                                        time_zone="Asia/Shanghai"), next_cursor=None)

    data: list[PaymentRow]
    totals: PaymentTotals
    next_cursor: str | None = _NEXT


class _Timeliness(BaseModel):
    meters: int
    read: int = Field(description="meters with at least one reading that day")
    read_share: float | None = Field(description="read / meters (抄表成功率), 4 decimals; null without meters")
    on_time: int = Field(description="meters never without a reading for longer than allowed that day")
    on_time_share: float | None
    polls_ok: int
    polls_failed: int


class TimelinessRow(BaseModel):
    day: str
    bus: str
    meters: int
    read: int
    read_share: float | None
    on_time: int
    on_time_share: float | None
    polls_ok: int
    polls_failed: int


class TimelinessTotals(_Timeliness):
    since: str
    until: str
    time_zone: str


class TimelinessReport(BaseModel):
    model_config = _example(data=[dict(day="2026-11-22", bus="feeder-1", meters=247, read=245, read_share=0.9919,
                                       on_time=240, on_time_share=0.9717, polls_ok=355_000, polls_failed=310)],
                            totals=dict(meters=247, read=245, read_share=0.9919, on_time=240, on_time_share=0.9717,
                                        polls_ok=355_000, polls_failed=310, since="2026-11-22",
                                        until="2026-11-22", time_zone="Asia/Shanghai"), next_cursor=None)

    data: list[TimelinessRow]
    totals: TimelinessTotals
    next_cursor: str | None = _NEXT


class ConsumptionRow(BaseModel):
    account_id: str
    period: str = Field(description="the billing period: 2026-11 (monthly) or 2026 (yearly)")
    energy_wh: int
    charges: str = Field(description="what was charged for it, yuan")
    entries: int = Field(description="charge entries in the ledger")
    first_charge_at: dt.datetime
    last_charge_at: dt.datetime


class ConsumptionTotals(BaseModel):
    accounts: int
    energy_wh: int
    charges: str


class ConsumptionReport(BaseModel):
    model_config = _example(data=[dict(account_id="A-1", period="2026-11", energy_wh=182_400, charges="102.14",
                                       entries=1310, first_charge_at="2026-11-01T00:01:00Z",
                                       last_charge_at="2026-11-23T07:59:00Z")],
                            totals=dict(accounts=1, energy_wh=182_400, charges="102.14"), next_cursor=None)

    data: list[ConsumptionRow]
    totals: ConsumptionTotals
    next_cursor: str | None = _NEXT
