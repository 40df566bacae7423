"""The fleet's entries of the settings file: accounts, meters and relay modules. They seed the database
(``gateway.service.fleet``), and the same models check every account and meter provisioned through the API or
an import (``gateway.fleet_files``)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator

from gateway.settings.common import SignedYuan, Yuan, _Strict, _yuan
from gateway.settings.outbound import ContactSettings

__all__ = ["MIN_POLL_INTERVAL_S", "AccountSettings", "MeterSettings", "RelayModuleSettings"]

# the shortest poll interval: a shorter one (down to the smallest float) would make the schedule spin, not poll
MIN_POLL_INTERVAL_S = 0.05

_ID = r"^[^\x00-\x20\x7f/+#]([^\x00-\x1f\x7f/+#]*[^\x00-\x20\x7f/+#])?$"


class AccountSettings(_Strict):
    id: str = Field(min_length=1, max_length=64, pattern=_ID)
    tariff: str = Field(min_length=1, max_length=64)
    opening_balance: SignedYuan = 0
    warning1: Yuan = 2000
    warning2: Yuan = 500
    credit_class: str = Field("", max_length=16,
                              description="AAA, AA, A, B, C or D: sets the overdraft (policy.credit_classes)")
    overdraft: Yuan | None = Field(None, description="overrides the credit class's overdraft")
    reconnect_min_topup: Yuan = 100
    protected: bool = False
    contacts: list[ContactSettings] = Field(default_factory=list, max_length=32,
                                            description="who is told (notices.channels)")

    _money = field_validator("warning1", "warning2", "overdraft", "reconnect_min_topup",
                             mode="before")(classmethod(lambda cls, v: v if v is None else _yuan(v)))
    # an account taken over in arrears may open below zero
    _opening = field_validator("opening_balance", mode="before")(
        classmethod(lambda cls, v: _yuan(v, allow_negative=True)))


class MeterSettings(_Strict):
    id: str = Field(min_length=1, max_length=64, pattern=_ID)
    bus: str = Field(min_length=1, max_length=64)
    account: str = Field(min_length=1, max_length=64)
    unit_id: int | None = Field(None, ge=1, le=247, description="Modbus unit id")
    address: str | None = Field(None, pattern=r"^[0-9]{1,12}$", description="DL/T 645 nameplate address, 12 digits")
    model: str = Field("generic-prepaid", min_length=1, max_length=64)
    groups: list[Annotated[str, Field(min_length=1, max_length=64, pattern=_ID)]] = Field(
        default_factory=list, max_length=32, description="names for bulk commands (feeder, street...)")
    poll_interval_s: float = Field(60, ge=MIN_POLL_INTERVAL_S, le=86_400, description=(
        "seconds between two polls of the meter (at least 0.05)"))
    max_power_w: int = Field(60_000, gt=0, le=10_000_000, description="contract capacity, for the plausibility check")


class RelayModuleSettings(_Strict):
    """A Modbus relay module on the bus of a meter that has no relay of its own: it switches that meter."""

    id: str = Field(min_length=1, max_length=64, pattern=_ID)
    bus: str
    unit_id: int = Field(ge=1, le=247, description="the module's own Modbus unit id")
    model: str = "generic-relay-module"
    meter: str = Field(description="the meter it switches")
