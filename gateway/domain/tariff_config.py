"""Building tariffs from configuration data (the shape of a YAML settings file). Pure; raises ValueError.

    kind: flat          price: "0.5283"                                  [period: monthly]
    kind: tiered        period: monthly | yearly
                        tiers: [{up_to_kwh: 230, price: "0.5283"}, {up_to_kwh: 400, price: "0.5783"},
                                {price: "0.8283"}]                      (the last tier has no upper bound)
    kind: tou           prices: {peak: "0.6170", valley: "0.3070"}       (up to 4 of sharp/peak/flat/valley,
                        periods: {"08:00-22:00": peak,                    or 尖/峰/平/谷)
                                  "22:00-08:00": valley}                  (must cover the day exactly once)
                        [registers: [sharp, peak, flat, valley]]          (tariff rate of meter registers 1..4)
                        [period: monthly]
    kind: tiered_tou    as tou, plus period and tiers whose items carry ``surcharge`` instead of ``price``
                        (阶梯加价 added to the TOU price of every kWh falling in that tier)
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from gateway.domain.money import AmountError, parse_price
from gateway.domain.tariffs import (
    PERIODS,
    RATES,
    DaySchedule,
    FlatTariff,
    Tariff,
    Tier,
    TieredTariff,
    TieredTouTariff,
    TouTariff,
)

__all__ = ["RATE_ALIASES", "parse_day_periods", "tariff_from_dict"]

RATE_ALIASES = {"尖": "sharp", "峰": "peak", "平": "flat", "谷": "valley", **{r: r for r in RATES}}
_KEYS = {
    "flat": {"kind", "price", "period", "name", "description"},
    "tiered": {"kind", "tiers", "period", "name", "description"},
    "tou": {"kind", "prices", "periods", "registers", "period", "name", "description"},
    "tiered_tou": {"kind", "prices", "periods", "registers", "tiers", "period", "name", "description"},
}


def tariff_from_dict(data: Mapping[str, Any], *, where: str = "tariff") -> Tariff:
    """A tariff from plain data; every error names the key path (``where``) and what was wrong."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}: must be a mapping, got {type(data).__name__}")
    kind = data.get("kind", "flat")
    if kind not in _KEYS:
        raise ValueError(f"{where}.kind: unknown tariff kind {kind!r} (use one of {', '.join(_KEYS)})")
    unknown = sorted(set(data) - _KEYS[kind])
    if unknown:
        raise ValueError(f"{where}: unknown key(s) for a {kind} tariff: {', '.join(map(str, unknown))}")
    period = data.get("period", "yearly" if kind == "tiered_tou" else "monthly")
    if period not in PERIODS:
        raise ValueError(f"{where}.period: must be monthly or yearly, got {period!r}")
    if kind == "flat":
        return FlatTariff(_price(_required(data, "price", where), f"{where}.price"), period)
    if kind == "tiered":
        return TieredTariff(_tiers(_required(data, "tiers", where), "price", f"{where}.tiers"), period)
    prices = _prices(_required(data, "prices", where), f"{where}.prices")
    schedule = parse_day_periods(_required(data, "periods", where), where=f"{where}.periods")
    missing = sorted(set(schedule.rates) - set(prices))
    if missing:
        raise ValueError(f"{where}.prices: no price for rate(s) used in periods: {', '.join(missing)}")
    unused = sorted(set(prices) - set(schedule.rates))
    if unused:
        raise ValueError(f"{where}.periods: rate(s) priced but never in effect: {', '.join(unused)}")
    registers = _registers(data.get("registers"), f"{where}.registers")
    if kind == "tou":
        return TouTariff(prices, schedule, period, registers)
    return TieredTouTariff(prices, _tiers(_required(data, "tiers", where), "surcharge", f"{where}.tiers"),
                           schedule, period, registers)


def parse_day_periods(data: Any, *, where: str = "periods") -> DaySchedule:
    """``{"HH:MM-HH:MM": rate, ...}`` (or a list of single-item mappings) -> a schedule covering the day once.

    A span may wrap midnight ("22:00-06:00"); "24:00" is allowed as an end.
    """
    items: list[tuple[Any, Any]]
    if isinstance(data, Mapping):
        items = list(data.items())
    elif isinstance(data, list) and all(isinstance(i, Mapping) and len(i) == 1 for i in data):
        items = [next(iter(i.items())) for i in data]
    else:
        raise ValueError(f"{where}: must map \"HH:MM-HH:MM\" to a rate name")
    if not items:
        raise ValueError(f"{where}: at least one period is needed")
    owner: list[str | None] = [None] * 1440
    for span, rate_name in items:
        rate = _rate(rate_name, f"{where}[{span!r}]")
        start, end = _span(span, f"{where}[{span!r}]")
        minutes = range(start, end) if start < end else [*range(start, 1440), *range(end)]
        for minute in minutes:
            if owner[minute] is not None:
                raise ValueError(f"{where}: {span!r} overlaps another period at {minute // 60:02d}:{minute % 60:02d}")
            owner[minute] = rate
    if None in owner:
        gap = owner.index(None)
        raise ValueError(f"{where}: the periods leave {gap // 60:02d}:{gap % 60:02d} uncovered")
    spans: list[tuple[int, int, str]] = []
    for minute, owned in enumerate(owner):
        assert owned is not None
        if spans and spans[-1][2] == owned:
            spans[-1] = (spans[-1][0], minute + 1, owned)
        else:
            spans.append((minute, minute + 1, owned))
    return DaySchedule(tuple(spans))


def _required(data: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in data:
        raise ValueError(f"{where}.{key}: required for a {data.get('kind', 'flat')} tariff")
    return data[key]


def _price(value: Any, where: str) -> Decimal:
    if isinstance(value, float):
        raise ValueError(f"{where}: write prices as decimal strings (\"0.5283\"), not floats")
    try:
        return parse_price(value)
    except AmountError as exc:
        raise ValueError(f"{where}: {exc}") from None


def _rate(name: Any, where: str) -> str:
    rate = RATE_ALIASES.get(str(name).strip().lower() if isinstance(name, str) else name)
    if rate is None:
        raise ValueError(f"{where}: unknown rate {name!r} (use sharp/peak/flat/valley or 尖/峰/平/谷)")
    return rate


def _prices(data: Any, where: str) -> dict[str, Decimal]:
    if not isinstance(data, Mapping) or not data:
        raise ValueError(f"{where}: must map rate names to prices")
    if len(data) > 4:
        raise ValueError(f"{where}: at most 4 rates (尖/峰/平/谷), got {len(data)}")
    prices: dict[str, Decimal] = {}
    for name, price in data.items():
        rate = _rate(name, f"{where}.{name}")
        if rate in prices:
            raise ValueError(f"{where}.{name}: rate {rate} is given twice")
        prices[rate] = _price(price, f"{where}.{name}")
    return prices


def _span(text: Any, where: str) -> tuple[int, int]:
    parts = str(text).replace(" ", "").split("-")
    if len(parts) != 2:
        raise ValueError(f"{where}: a period is written \"HH:MM-HH:MM\"")
    start, end = (_minute(p, where) for p in parts)
    if start >= 1440 or start == end:
        raise ValueError(f"{where}: empty period (a whole day is \"00:00-24:00\")")
    return start, end


def _minute(text: str, where: str) -> int:
    try:
        h, m = (int(x) for x in text.split(":"))
    except ValueError:
        raise ValueError(f"{where}: not a time of day: {text!r}") from None
    if not (0 <= h <= 24 and 0 <= m < 60) or (h == 24 and m):
        raise ValueError(f"{where}: not a time of day: {text!r}")
    return h * 60 + m


def _tiers(data: Any, price_key: str, where: str) -> tuple[Tier, ...]:
    if not isinstance(data, list) or not data:
        raise ValueError(f"{where}: must be a non-empty list of tiers")
    tiers: list[Tier] = []
    previous = 0
    for i, item in enumerate(data):
        w = f"{where}[{i}]"
        if not isinstance(item, Mapping):
            raise ValueError(f"{w}: must be a mapping with up_to_kwh and {price_key}")
        unknown = sorted(set(item) - {"up_to_kwh", price_key})
        if unknown:
            raise ValueError(f"{w}: unknown key(s): {', '.join(map(str, unknown))}")
        last = i == len(data) - 1
        bound = item.get("up_to_kwh")
        if last and bound is not None:
            raise ValueError(f"{w}.up_to_kwh: the last tier must have no upper bound")
        if not last and bound is None:
            raise ValueError(f"{w}.up_to_kwh: required on every tier but the last")
        up_to_wh = None if bound is None else _kwh_to_wh(bound, f"{w}.up_to_kwh")
        if up_to_wh is not None and up_to_wh <= previous:
            raise ValueError(f"{w}.up_to_kwh: must be greater than the previous bound ({previous / 1000:g} kWh)")
        previous = up_to_wh or previous
        tiers.append(Tier(up_to_wh, _price(_required_tier(item, price_key, w), f"{w}.{price_key}")))
    return tuple(tiers)


def _required_tier(item: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in item:
        raise ValueError(f"{where}.{key}: required")
    return item[key]


def _kwh_to_wh(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str | Decimal):
        raise ValueError(f"{where}: must be a number of kWh (an integer or a decimal string)")
    try:
        wh = Decimal(str(value)) * 1000
    except ArithmeticError:
        raise ValueError(f"{where}: not a number of kWh: {value!r}") from None
    if not wh.is_finite() or wh <= 0 or wh != wh.to_integral_value():
        raise ValueError(f"{where}: must be a positive number of kWh with at most 3 decimals: {value!r}")
    return int(wh)


def _registers(data: Any, where: str) -> tuple[str | None, ...]:
    if data is None:
        return RATES
    if not isinstance(data, list) or not 1 <= len(data) <= 4:
        raise ValueError(f"{where}: must list the tariff rate of meter registers 1..4 (null for unused)")
    return tuple(None if r is None else _rate(r, f"{where}[{i}]") for i, r in enumerate(data))
