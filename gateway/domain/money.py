"""Money: integer fen (分) everywhere it is stored or summed; prices are Decimal yuan per kWh.

The API speaks yuan as decimal strings ("50.00"); ``parse_yuan`` is the one door in and ``format_fen`` the one out.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

__all__ = ["AmountError", "cost_fen", "format_fen", "parse_price", "parse_yuan", "round_fen"]

_FEN = Decimal("0.01")
_WH_PER_KWH = Decimal(1000)


class AmountError(ValueError):
    """An amount of money that is not acceptable (format, sign, precision or size)."""


def parse_yuan(text: str | int | Decimal, *, max_fen: int | None = None, allow_zero: bool = False,
               allow_negative: bool = False) -> int:
    """Parse a yuan amount ("50.00", "0.5", "12") into integer fen.

    Refuses more than two decimal places, NaN, infinities, exponents, negative values (unless allowed), zero
    (unless allowed) and values above ``max_fen``.
    """
    if isinstance(text, bool) or not isinstance(text, str | int | Decimal):
        raise AmountError("amount must be a decimal string such as \"50.00\"")
    raw = text.strip() if isinstance(text, str) else str(text)
    if not raw or any(c in raw for c in "eE_ ") or raw.lower().lstrip("+-") in {"nan", "inf", "infinity", "snan"}:
        raise AmountError(f"not a decimal amount: {raw!r}")
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise AmountError(f"not a decimal amount: {raw!r}") from None
    if not value.is_finite():
        raise AmountError(f"not a finite amount: {raw!r}")
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -2:
        raise AmountError(f"more than 2 decimal places: {raw!r}")
    fen = int(value * 100)
    if fen < 0 and not allow_negative:
        raise AmountError(f"amount must not be negative: {raw!r}")
    if fen == 0 and not allow_zero:
        raise AmountError("amount must not be zero")
    if max_fen is not None and abs(fen) > max_fen:
        raise AmountError(f"amount {raw} is above the maximum of {format_fen(max_fen)}")
    return fen


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
