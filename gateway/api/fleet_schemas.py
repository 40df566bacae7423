"""Request and answer bodies of the fleet's routes (``gateway.api.routes.fleet``). An account or a meter to
provision is the settings file's entry (``gateway.settings``), validated by the same rules."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from gateway.api.fields import EnergyWh, Name, Reason, Timestamp, json_integer
from gateway.api.schemas import AccountPublic, MeterPublic
from gateway.settings import AccountSettings, MeterSettings
from gateway.settings.fleet import MIN_POLL_INTERVAL_S
from gateway.settings.outbound import ContactSettings

__all__ = ["AccountChange", "AccountClose", "AccountCreate", "CloseResult", "ImportResult", "MeterChange", "MeterCreate",
           "MeterMoveIn", "MeterRetire", "MeterSwap", "MoveInResult", "NewAccount", "NewMeter", "RetireResult",
           "SwapResult", "TariffChange"]

Relay = Literal["follow", "open", "closed", "leave"]
_RELAY = ("where the meter's relay is left: follow (the account's supply), open, closed, or leave (as it is)")


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


_STRICT = ConfigDict(extra="forbid", strict=True)  # as the API's other bodies: no "1" for 1, no 0 for false
UnitId = Annotated[int, Field(ge=1, le=247, description="Modbus unit id"), BeforeValidator(json_integer)]
Watts = Annotated[int, Field(gt=0, le=10_000_000, description="contract capacity, for the plausibility check"),
                  BeforeValidator(json_integer)]


class _MeterFields(MeterSettings):
    """A meter of the settings, its integers as JSON integers (``479`` or ``479.0``)."""

    model_config = _STRICT
    unit_id: UnitId | None = None
    max_power_w: Watts = 60_000


class NewAccount(AccountSettings):
    """An account to open: the settings file's entry."""

    model_config = _STRICT


class NewMeter(_MeterFields):
    """A meter of a new account, or the new meter of a swap: its account is the one opened (or the replaced
    meter's)."""

    account: str = Field("", max_length=0, description="left out: the account is the one opened, or the replaced "
                                                       "meter's")


class AccountCreate(NewAccount):
    """An account to open: the settings file's entry, and its meters."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [{
        "id": "A-1001", "tariff": "residential", "opening_balance": "50.00", "credit_class": "B",
        "contacts": [{"name": "Li Na", "channel": "sms", "to": "+8613800000000"}],
        "meters": [{"id": "M-1001", "bus": "feeder-1", "unit_id": 12}]}]})

    meters: list[NewMeter] = Field(default_factory=list, max_length=64)


_YUAN = r"^(0|[1-9][0-9]{0,9})(\.[0-9]{1,2})?$"
Yuan = Annotated[str, Field(pattern=_YUAN, max_length=13, examples=["20.00"])]


class AccountChange(_In):
    """What may change on an open account (left out: unchanged; ``overdraft: null``: the credit class's)."""

    warning1: Yuan = None  # type: ignore[assignment]
    warning2: Yuan = None  # type: ignore[assignment]
    overdraft: Yuan | None = None
    reconnect_min_topup: Yuan = None  # type: ignore[assignment]
    credit_class: str = Field(None, max_length=16)  # type: ignore[assignment]
    protected: bool = None  # type: ignore[assignment]
    contacts: list[ContactSettings] = Field(None, max_length=32)  # type: ignore[assignment]


class TariffChange(_In):
    tariff: Name
    effective_at: Timestamp = Field(description="energy from then on is priced at the new tariff")


class FinalReading(_In):
    meter_id: Name
    final_wh: EnergyWh


class AccountClose(_In):
    final_readings: list[FinalReading] = Field(default_factory=list, max_length=64,
                                               description="meters' final readings in Wh; a meter left out is read now")
    at: Timestamp | None = Field(None, description="when the final readings were taken (default: now)")
    relay: Relay = Field("open", description=_RELAY)
    reason: Reason | None = None


class MeterCreate(_MeterFields):
    """A meter to add to an open account (billed from ``initial_wh``, or from its first reading)."""

    initial_wh: EnergyWh | None = None
    at: Timestamp | None = None


class MeterChange(_In):
    """What may change on a meter: where it answers, its model, poll interval, capacity, groups (``unit_id`` or
    ``address`` null: none, for a meter that moves to a bus of the other protocol)."""

    model_config = _STRICT
    bus: Name = None  # type: ignore[assignment]
    unit_id: UnitId | None = None
    address: str | None = Field(None, pattern=r"^[0-9]{1,12}$")
    model: Name = None  # type: ignore[assignment]
    groups: list[Name] = Field(None, max_length=32)  # type: ignore[assignment]
    poll_interval_s: float = Field(None, ge=MIN_POLL_INTERVAL_S, le=86_400)  # type: ignore[assignment]
    max_power_w: Watts = None  # type: ignore[assignment]


class MeterRetire(_In):
    final_wh: EnergyWh | None = Field(None, description="the final reading (default: read now)")
    at: Timestamp | None = None


class MeterSwap(_In):
    """换表: the new meter (on the old one's account), the readings at the swap, the new meter's relay."""

    new_meter: NewMeter
    final_wh: EnergyWh | None = Field(None, description="the old meter's final reading (default: read now)")
    initial_wh: EnergyWh | None = Field(None, description="the new meter's initial reading (default: read now)")
    at: Timestamp | None = None
    relay: Relay = Field("follow", description=_RELAY)
    reason: Reason | None = Field(None, description="why (kept in the audit log)")


class MeterMoveIn(_In):
    """A new customer on the meter, billed from ``reading_wh`` (the previous account's final reading)."""

    account: NewAccount
    reading_wh: EnergyWh | None = Field(None, description="default: read now")
    at: Timestamp | None = None
    close_previous: bool = Field(True, description="close the previous account if this was its only meter")
    relay: Relay = Field("follow", description=_RELAY)


def _example(**example: object) -> ConfigDict:
    return ConfigDict(json_schema_extra={"examples": [example]})


class CloseResult(BaseModel):
    model_config = _example(charged="1.12", settled="-18.88", commands=["6f1c…"], account={"id": "A-1"})

    account: AccountPublic
    charged: str = Field(description="the final readings' charge (yuan)")
    settled: str = Field(description="the settlement: negative a refund of the remaining balance, positive arrears "
                                     "taken over")
    commands: list[str] = Field(description="the relay commands queued")


class RetireResult(BaseModel):
    model_config = _example(meter_id="M-1", charged="0.56")

    meter_id: str
    charged: str


class SwapResult(BaseModel):
    model_config = _example(charged="0.28", final_wh=11_500, initial_wh=7, command_id="6f1c…",
                            account={"id": "A-1"}, meter={"id": "M-1B"})

    account: AccountPublic
    meter: MeterPublic
    charged: str
    final_wh: int
    initial_wh: int
    command_id: str | None


class MoveInResult(BaseModel):
    model_config = _example(previous_account="A-3", reading_wh=5_500, command_id="6f1c…", account={"id": "A-30"})

    account: AccountPublic
    previous_account: str
    reading_wh: int
    command_id: str | None


class ImportResult(BaseModel):
    model_config = _example(accounts={"created": 2, "changed": 0, "unchanged": 0},
                            meters={"created": 2, "changed": 1, "unchanged": 0},
                            dry_run=False, errors=[])

    accounts: dict[str, int]
    meters: dict[str, int]
    dry_run: bool
    errors: list[dict[str, object]] = Field(description="the rows left out (partial import), each with its row, "
                                                        "field and message")
