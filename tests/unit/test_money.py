from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.domain.money import AmountError, cost_fen, format_fen, parse_price, parse_yuan


@pytest.mark.parametrize(("text", "fen"), [("50.00", 5000), ("0.5", 50), ("12", 1200), ("0.01", 1)])
def test_parse_yuan(text: str, fen: int) -> None:
    assert parse_yuan(text) == fen


@pytest.mark.parametrize("text", ["1.234", "NaN", "inf", "-Infinity", "-5.00", "0", "1e3", "abc", "", "1_000",
                                  # not canonical ASCII decimals: signs, bare points, spaces, other digits
                                  " 0.01 ", "+5", "5.", ".5", "05", "0x10", "\u0665", "\uff15", "5\u00a0", "1,000"])
def test_parse_yuan_refuses(text: str) -> None:
    with pytest.raises(AmountError):
        parse_yuan(text)


def test_parse_yuan_maximum() -> None:
    assert parse_yuan("100.00", max_fen=10000) == 10000
    with pytest.raises(AmountError, match="maximum"):
        parse_yuan("100.01", max_fen=10000)


@given(st.integers(min_value=-10**12, max_value=10**12))
def test_format_and_parse_round_trip(fen: int) -> None:
    assert parse_yuan(format_fen(fen), allow_zero=True, allow_negative=True) == fen


def test_format_fen() -> None:
    assert format_fen(5020) == "50.20"
    assert format_fen(-5) == "-0.05"
    assert format_fen(0) == "0.00"


def test_cost_rounds_half_up() -> None:
    # 1 Wh at 0.5 yuan/kWh = 0.05 fen -> 0; 10 Wh -> 0.5 fen -> 1 (half up)
    assert cost_fen(1, Decimal("0.5")) == 0
    assert cost_fen(10, Decimal("0.5")) == 1
    assert cost_fen(1000, Decimal("0.5600")) == 56


def test_price_precision() -> None:
    assert parse_price("0.5283") == Decimal("0.5283")
    with pytest.raises(AmountError):
        parse_price("0.52831")
    with pytest.raises(AmountError):
        parse_price("-1")


_CANDIDATES = st.one_of(
    st.from_regex(r"-?[0-9]{1,6}(\.[0-9]{0,3})?", fullmatch=True),
    st.integers(min_value=-10**7, max_value=10**7).map(format_fen),
    st.text(alphabet="0123456789.-+ e５٥", max_size=8),
)


@given(st.integers(min_value=1, max_value=10**9), _CANDIDATES, st.booleans())
def test_amount_pattern_is_exactly_what_parse_yuan_takes(max_fen: int, text: str, signed: bool) -> None:
    """The API document's pattern of amounts (up to the site's maximum) accepts a string iff parse_yuan does."""
    import re

    from gateway.domain.money import amount_pattern

    try:
        parse_yuan(text, max_fen=max_fen, allow_negative=signed)
        accepted = True
    except AmountError:
        accepted = False
    assert bool(re.fullmatch(amount_pattern(max_fen, allow_negative=signed), text)) == accepted


@pytest.mark.parametrize(("max_fen", "top", "above"), [(1, "0.01", "0.02"), (100, "1.00", "1.01"),
                                                       (1_000_000, "10000.00", "10000.01"), (123_405, "1234.05", "1234.1"),
                                                       (99_999, "999.99", "1000")])
def test_amount_pattern_edges(max_fen: int, top: str, above: str) -> None:
    import re

    from gateway.domain.money import amount_pattern

    pattern = amount_pattern(max_fen)
    assert re.fullmatch(pattern, top) and not re.fullmatch(pattern, above)
    assert not re.fullmatch(pattern, "0") and not re.fullmatch(pattern, "0.00")
