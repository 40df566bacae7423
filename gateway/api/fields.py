"""Strict field types of the API: what a request may carry, checked at the edge before anything is written.

Every value that gets past these types can be stored, read back and computed with: timestamps are aware,
bounded and in UTC; integers fit in 63 bits; strings carry no control characters (PostgreSQL refuses NUL, and
nothing downstream expects them); identifiers have no surrounding spaces and no ``/`` where they travel in a
path. The JSON Schema of each type says exactly what its validator accepts (the API document is the contract).
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, StrictBool, WithJsonSchema

from gateway.domain.metering import MAX_ENERGY_WH

__all__ = ["INT63", "TIMESTAMP_PATTERN", "Amount", "EnergyWh", "Flag", "Label", "Name", "PaymentId", "Reason",
           "RowId", "SignedAmount", "Source", "Timestamp", "parse_timestamp"]

INT63 = 2**63 - 1

# Timestamps: RFC 3339 with an explicit offset (Z or ±hh:mm, at most ±14:00) and a year from 2000 to 2099, so
# that every accepted value converts to UTC (and back) without overflow, on every database.
TIMESTAMP_PATTERN = (r"^20[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
                     r"(\.[0-9]{1,6})?(Z|[+-](0[0-9]|1[0-3]):[0-5][0-9]|[+-]14:00)$")
_TIMESTAMP = re.compile(TIMESTAMP_PATTERN)


def parse_timestamp(value: Any) -> dt.datetime:
    """An RFC 3339 timestamp string (see ``TIMESTAMP_PATTERN``) as an aware UTC datetime; ValueError otherwise."""
    if not isinstance(value, str):
        raise ValueError("a timestamp is a string such as \"2026-11-23T08:00:00Z\"")
    if not _TIMESTAMP.fullmatch(value):
        raise ValueError("a timestamp needs a date, a time and an offset (e.g. 2026-11-23T08:00:00Z or "
                         "2026-11-23T16:00:00+08:00), with a year from 2000 to 2099")
    try:
        return dt.datetime.fromisoformat(value).astimezone(dt.UTC)
    except ValueError:
        raise ValueError(f"not a date and time of the calendar: {value!r}") from None


_TIMESTAMP_SCHEMA = {"type": "string", "format": "date-time", "pattern": TIMESTAMP_PATTERN,
                     "description": "RFC 3339 with an offset (Z or ±hh:mm), years 2000–2099; answered in UTC",
                     "examples": ["2026-11-23T08:00:00Z"]}
Timestamp = Annotated[dt.datetime, BeforeValidator(parse_timestamp), WithJsonSchema(_TIMESTAMP_SCHEMA)]

# Text: no control characters (a tab or a line break is fine in free text), no lone surrogates (pydantic refuses
# those itself), at least one character that is not a space, and no surrounding spaces in identifiers.
_C0 = r"\x00-\x1f\x7f"
_NAME = rf"^[^{_C0} ]([^{_C0}]*[^{_C0} ])?$"
_NAME_NO_SLASH = rf"^[^{_C0} /]([^{_C0}/]*[^{_C0} /])?$"
_TEXT_C0 = r"\x00-\x08\x0b-\x1f\x7f"
_TEXT = rf"^[^{_TEXT_C0}]*[^{_TEXT_C0} \t\n][^{_TEXT_C0}]*$"

Name = Annotated[str, Field(min_length=1, max_length=64, pattern=_NAME_NO_SLASH, examples=["A-1"])]
"""An account, meter or group id, or a short label: no control characters, no surrounding spaces, no ``/``."""
Source = Annotated[str, Field(min_length=1, max_length=64, pattern=_NAME_NO_SLASH, examples=["billing"],
                              description="the billing system or collection channel the payment comes from")]
PaymentId = Annotated[str, Field(min_length=1, max_length=128, pattern=_NAME, examples=["P-1001"],
                                 description="unique within its source; may contain `/`")]
Reason = Annotated[str, Field(min_length=1, max_length=500, pattern=_TEXT, examples=["customer request"])]
Label = Annotated[str, Field(min_length=1, max_length=100, pattern=_NAME, examples=["Zhang Wei"])]

# Amounts: decimal strings in yuan; the API document replaces the pattern by the exact one of the site's maximum
# (``gateway.api.openapi``), and the route checks the maximum with ``parse_yuan``.
_AMOUNT = r"^(0|[1-9][0-9]{0,15})(\.[0-9]{1,2})?$"
Amount = Annotated[str, Field(pattern=_AMOUNT, max_length=19, examples=["50.00"],
                              json_schema_extra={"x-amount": "positive"},
                              description="yuan as a decimal string, at most 2 decimals, above zero, at most the "
                                          "site's maximum (api.max_payment)")]
SignedAmount = Annotated[str, Field(pattern="^-?" + _AMOUNT[1:], max_length=20, examples=["-3.50"],
                                    json_schema_extra={"x-amount": "signed"},
                                    description="signed yuan: positive credits, negative debits; not zero, at "
                                                "most the site's maximum either way")]

def json_integer(value: Any) -> int:
    """A JSON integer: ``479`` or ``479.0`` (JSON Schema counts both as integers), never ``true`` or ``"479"``."""
    if isinstance(value, float) and value.is_integer() and abs(value) <= 2**53:
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ValueError("must be an integer")


EnergyWh = Annotated[int, Field(ge=0, le=MAX_ENERGY_WH, examples=[1_234_560]), BeforeValidator(json_integer)]
RowId = Annotated[int, Field(ge=1, le=INT63, examples=[1042])]
Flag = StrictBool
