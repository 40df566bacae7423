"""Splitting the energy between two readings across billing periods and time-of-use rates.

Energy is an integer number of Wh and is never lost or invented: every split is a largest-remainder
apportionment, so the parts always add up to the whole. Time is walked in the site's time zone.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from gateway.domain.tariffs import ANY_RATE, Tariff, next_period_start, period_key

__all__ = ["Piece", "apportion", "rate_deltas", "split_energy", "split_time"]


def apportion(total: int, weights: Sequence[int]) -> list[int]:
    """Split a non-negative integer ``total`` in proportion to non-negative integer ``weights``.

    Largest remainder; ties go to the earlier weight. All-zero weights put everything on the first one.
    """
    if total < 0 or any(w < 0 for w in weights) or not weights:
        raise ValueError("apportion needs a non-negative total and non-negative weights")
    whole = sum(weights)
    if whole == 0:
        return [total] + [0] * (len(weights) - 1)
    shares = [total * w // whole for w in weights]
    remainders = sorted(range(len(weights)), key=lambda i: (-(total * weights[i] % whole), i))
    for i in remainders[: total - sum(shares)]:
        shares[i] += 1
    return shares


@dataclass(frozen=True, slots=True)
class Piece:
    """A stretch of time inside one billing period and one time-of-use rate."""

    period: dt.date  # first local day of the billing period
    rate: str
    start: dt.datetime
    end: dt.datetime

    @property
    def weight(self) -> int:
        return (self.end - self.start) // dt.timedelta(microseconds=1)


def _local_midnight(day: dt.date, tz: ZoneInfo) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(0), tzinfo=tz).astimezone(dt.UTC)


@functools.lru_cache(maxsize=64)
def period_bounds(key: dt.date, period: str, tz: ZoneInfo) -> tuple[dt.datetime, dt.datetime]:
    """When the billing period that starts on local day ``key`` starts and ends, in UTC."""
    return _local_midnight(key, tz), _local_midnight(next_period_start(key, period), tz)


def split_time(t0: dt.datetime, t1: dt.datetime, tariff: Tariff, tz: ZoneInfo) -> list[Piece]:
    """Cut ``[t0, t1)`` at billing-period starts and time-of-use changes (both in local time)."""
    pieces: list[Piece] = []
    cur = t0
    while cur < t1:
        local = cur.astimezone(tz)
        key = period_key(local.date(), tariff.period)
        if tariff.schedule is None:
            rate = ANY_RATE
            nxt = _local_midnight(next_period_start(key, tariff.period), tz)
        else:
            minute = local.hour * 60 + local.minute
            rate = tariff.schedule.rate_at(minute)
            change = tariff.schedule.next_change(minute)
            day = local.date() + dt.timedelta(days=change // 1440)
            h, m = divmod(change % 1440, 60)
            nxt = dt.datetime.combine(day, dt.time(h, m), tzinfo=tz).astimezone(dt.UTC)
        if nxt <= cur:  # a local time skipped by a DST change: move on by a minute rather than loop
            nxt = cur + dt.timedelta(minutes=1)
        end = min(nxt, t1)
        if pieces and pieces[-1].period == key and pieces[-1].rate == rate:
            pieces[-1] = Piece(key, rate, pieces[-1].start, end)
        else:
            pieces.append(Piece(key, rate, cur, end))
        cur = end
    return pieces


def rate_deltas(tariff: Tariff, before: Sequence[int] | None, after: Sequence[int] | None) -> dict[str, int] | None:
    """Energy per tariff rate from the meter's own per-rate registers, or None when they can't be used.

    They can't be used when either reading lacks them, their count changed, one went backwards, or energy sits
    in a register the tariff has no rate for.
    """
    if tariff.schedule is None or before is None or after is None or len(before) != len(after):
        return None
    known = set(tariff.schedule.rates)
    out: dict[str, int] = {}
    for i, (a, b) in enumerate(zip(before, after, strict=True)):
        d = b - a
        if d < 0:
            return None
        if d == 0:
            continue
        rate = tariff.registers[i] if i < len(tariff.registers) else None
        if rate is None or rate not in known:
            return None
        out[rate] = out.get(rate, 0) + d
    return out if out else None


def split_energy(t0: dt.datetime, t1: dt.datetime, delta_wh: int, tariff: Tariff, tz: ZoneInfo,
                 by_register: Mapping[str, int] | None = None) -> dict[dt.date, dict[str, int]]:
    """Energy consumed in ``[t0, t1)`` by billing period and rate; the parts add up to ``delta_wh`` exactly.

    With ``by_register`` (energy per rate from the meter's registers) each rate's energy is scaled so that the
    rates add up to the total delta, then spread over billing periods in proportion to time. Without it, energy
    is assigned to periods and rates in proportion to time.
    """
    if tariff.schedule is None and not by_register:
        # The common case, a tariff without time-of-use rates: only a period boundary can split the energy.
        key = period_key(t0.astimezone(tz).date(), tariff.period)
        if t1 <= period_bounds(key, tariff.period, tz)[1]:
            return {key: {ANY_RATE: delta_wh}}
    pieces = split_time(t0, t1, tariff, tz)
    out: dict[dt.date, dict[str, int]] = {}
    if by_register:
        rates = list(by_register)
        per_rate = apportion(delta_wh, [by_register[r] for r in rates])
        periods: dict[dt.date, int] = {}
        for p in pieces:
            periods[p.period] = periods.get(p.period, 0) + p.weight
        keys = list(periods)
        for rate, energy in zip(rates, per_rate, strict=True):
            for key, share in zip(keys, apportion(energy, [periods[k] for k in keys]), strict=True):
                if share:
                    out.setdefault(key, {})[rate] = out.get(key, {}).get(rate, 0) + share
        return out
    for p, share in zip(pieces, apportion(delta_wh, [p.weight for p in pieces]), strict=True):
        if share:
            bucket = out.setdefault(p.period, {})
            bucket[p.rate] = bucket.get(p.rate, 0) + share
    return out
