"""Money: integer fen (分) everywhere it is stored or summed; prices are Decimal yuan per kWh.

The API speaks yuan as decimal strings ("50.00"); ``parse_yuan`` is the one door in and ``format_fen`` the one out.
"""

from __future__ import annotations

import re
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

__all__ = ["AmountError", "amount_pattern", "cost_fen", "format_fen", "parse_price", "parse_yuan", "round_fen"]

_FEN = Decimal("0.01")
_WH_PER_KWH = Decimal(1000)


class AmountError(ValueError):
    """An amount of money that is not acceptable (format, sign, precision or size)."""


_AMOUNT = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]{1,2})?")
_TOO_PRECISE = re.compile(r"-?(0|[1-9][0-9]*)\.[0-9]{3,}")
_MAX_DIGITS = 18  # far above any real amount; keeps the number an int64 of fen


def parse_yuan(text: str | int | Decimal, *, max_fen: int | None = None, allow_zero: bool = False,
               allow_negative: bool = False) -> int:
    """Parse a yuan amount ("50.00", "0.5", "12") into integer fen.

    Strict: ASCII digits in canonical form only (no sign but an allowed ``-``, no ``+``, no leading zeros, no
    ``5.`` or ``.5``, no spaces, no exponents), at most two decimal places; refuses negative values (unless
    allowed), zero (unless allowed) and values above ``max_fen``. ``amount_pattern`` is the same language as
    a regular expression.
    """
    if isinstance(text, bool) or not isinstance(text, str | int | Decimal):
        raise AmountError("amount must be a decimal string such as \"50.00\"")
    raw = text if isinstance(text, str) else str(text)
    if len(raw) > _MAX_DIGITS + 4 or not _AMOUNT.fullmatch(raw):  # [0-9] is ASCII only
        if _TOO_PRECISE.fullmatch(raw):
            raise AmountError(f"more than 2 decimal places: {raw!r}")
        raise AmountError(f"not a decimal amount such as \"50.00\": {raw[:40]!r}")
    whole, _, part = raw.lstrip("-").partition(".")
    fen = int(whole) * 100 + int(part.ljust(2, "0") or 0)
    if raw.startswith("-"):
        if not allow_negative:
            raise AmountError(f"amount must not be negative: {raw!r}")
        fen = -fen
    if fen == 0 and not allow_zero:
        raise AmountError("amount must not be zero")
    if fen == 0 and raw.startswith("-"):
        raise AmountError(f"not a decimal amount such as \"0.00\": {raw!r}")
    if max_fen is not None and abs(fen) > max_fen:
        raise AmountError(f"amount {raw} is above the maximum of {format_fen(max_fen)}")
    return fen


def amount_pattern(max_fen: int, *, allow_negative: bool = False) -> str:
    """A regular expression (JSON Schema dialect, anchored) of exactly the amounts ``parse_yuan`` accepts with
    ``max_fen`` (zero refused), for API documents: canonical decimal yuan from 0.01 up to the maximum."""
    if max_fen < 1:
        raise ValueError("max_fen must be at least 1")
    whole, fen = divmod(max_fen, 100)
    if whole == 0:
        choices = [f"0\\.({'|'.join(_fractions(fen, nonzero=True))})"]
    else:
        choices = [f"0\\.({'|'.join(_fractions(99, nonzero=True))})"]  # 0.01 .. 0.99
        if whole >= 2:
            choices.append(_integers_up_to(whole - 1) + "(\\.[0-9]{1,2})?")
        choices.append(f"{whole}(\\.({'|'.join(_fractions(fen, nonzero=False))}))?")
    sign = "-?" if allow_negative else ""
    return f"^{sign}({'|'.join(choices)})$"


def _fractions(top: int, *, nonzero: bool) -> list[str]:
    """Alternatives (the digits after the point) of the one- or two-digit fractions worth 0..``top`` fen."""
    tens, ones = divmod(top, 10)
    out = []
    if tens >= int(nonzero):  # one digit d is worth 10 d
        out.append(_digits(int(nonzero), tens))
    if tens >= 1 and not nonzero:  # two digits, the first below the tens of top: any second digit
        out.append(f"{_digits(0, tens - 1)}[0-9]")
    elif tens >= 1:  # the same without "00"
        out += ["0[1-9]", *([f"{_digits(1, tens - 1)}[0-9]"] if tens >= 2 else [])]
    low = int(nonzero and tens == 0)
    if ones >= low:
        out.append(f"{tens}{_digits(low, ones)}")
    return out


def _digits(low: int, high: int) -> str:
    return str(low) if low == high else f"[{low}-{high}]"


def _integers_up_to(top: int) -> str:
    """A regular expression of the integers 1..top (no leading zeros)."""
    digits = str(top)
    parts = [f"[1-9][0-9]{{0,{len(digits) - 2}}}"] if len(digits) > 1 else []
    for i, d in enumerate(digits):
        low = 1 if i == 0 else 0
        if int(d) > low:
            rest = len(digits) - i - 1
            parts.append(digits[:i] + f"[{low}-{int(d) - 1}]" + (f"[0-9]{{{rest}}}" if rest else ""))
    parts.append(digits)
    return "(" + "|".join(parts) + ")"


def format_fen(fen: int) -> str:
    """Integer fen as a yuan string with exactly two decimals: 5020 -> "50.20", -5 -> "-0.05"."""
    sign = "-" if fen < 0 else ""
    whole, part = divmod(abs(fen), 100)
    return f"{sign}{whole}.{part:02d}"


def parse_price(text: str | Decimal | float) -> Decimal:
    """A price in yuan per kWh, up to 4 decimal places, not negative."""
    try:
        value = Decimal(str(text))
    except InvalidOperation:
        raise AmountError(f"not a price: {text!r}") from None
    if not value.is_finite() or value < 0:
        raise AmountError(f"price must be a finite, non-negative number: {text!r}")
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -4:
        raise AmountError(f"price has more than 4 decimal places: {text!r}")
    return value


def cost_fen(energy_wh: int, price_per_kwh: Decimal) -> int:
    """The cost of ``energy_wh`` at ``price_per_kwh`` yuan, rounded ROUND_HALF_UP to the fen."""
    return round_fen(Decimal(energy_wh) / _WH_PER_KWH * price_per_kwh)


def round_fen(yuan: Decimal) -> int:
    """An exact amount of yuan rounded ROUND_HALF_UP to integer fen (the one place money is rounded)."""
    return int((yuan / _FEN).quantize(Decimal(1), rounding=ROUND_HALF_UP))
