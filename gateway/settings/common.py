"""What every settings section shares: unknown keys are errors, settings never change once read, and amounts
are yuan (held as integer fen)."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from gateway.domain.money import AmountError, parse_yuan

__all__ = ["MAX_FEN", "SignedYuan", "Yuan", "_Strict", "_yuan"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


MAX_FEN = 10**14  # a trillion yuan: far above any real amount, far within an int64 of fen once summed


def _yuan(value: Any, *, allow_negative: bool = False) -> int:
    text = str(value).strip()
    if allow_negative and re.fullmatch(r"-0(\.0{1,2})?", text):
        text = text[1:]  # minus zero is zero
    try:
        fen = parse_yuan(text, allow_zero=True, allow_negative=allow_negative)
    except AmountError as exc:
        raise ValueError(str(exc)) from None
    if abs(fen) > MAX_FEN:
        raise ValueError(f"amount {text} is above the maximum of {MAX_FEN // 100} yuan")
    return fen


_YUAN = r"(0|[1-9][0-9]{0,11})(\.[0-9]{1,2})?"
Yuan = Annotated[int, Field(description="an amount in yuan, e.g. \"20.00\"; held as integer fen"),
                 WithJsonSchema({"type": "string", "pattern": f"^{_YUAN}$", "examples": ["20.00"],
                                 "description": "yuan as a decimal string, at most 2 decimals"})]
SignedYuan = Annotated[int, Field(description="an amount in yuan, may be negative, e.g. \"-5.00\""),
                       WithJsonSchema({"type": "string", "pattern": f"^-?{_YUAN}$", "examples": ["-5.00"],
                                       "description": "yuan as a decimal string, at most 2 decimals, may be negative"})]
