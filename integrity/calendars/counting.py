"""Counting expected bars without materialising long spans: the count in a span, the counts and
first/last expected bar of many intervals at once, and the bars in a typical trading day. Each
takes the instrument's ``closures`` (``closures.py``) like the expected-bar maths does; the typical
trading day is the calendar's own.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

from ..timeframes import (
    NS_PER_DAY,
    BarAlignment,
    ns_to_datetime,
    timeframe_ns,
    timeframe_seconds,
    to_ns,
)
from .bars import bar_step_ns, expected_ns
from .closures import NO_CLOSURES, Closures, closed_bar_count
from .codes import CRYPTO_CALENDAR, OWN_CALENDARS


def count_expected_bars(calendar: str, timeframe: str, start: datetime, end: datetime,
                        alignment: str = BarAlignment.CLOCK, closures: Closures = NO_CLOSURES) -> int:
    lo, hi = to_ns(start), to_ns(end)
    if calendar == CRYPTO_CALENDAR:
        step = bar_step_ns(calendar, timeframe)  # 24/7 bars, daily ones included, are epoch-aligned
        first = -(-lo // step) * step
        return max(0, -(-(hi - first) // step) - closed_bar_count(closures, lo, hi, step))
    return len(expected_ns(calendar, timeframe, lo, hi, alignment, closures))


# Expected-bar arrays up to this many bars are built in one go (8 bytes each); longer spans are
# counted interval by interval.
DENSE_LIMIT = 4_000_000


def expected_stats(calendar: str, timeframe: str, los: np.ndarray, his: np.ndarray, closed: bool,
                   alignment: str = BarAlignment.CLOCK,
                   closures: Closures = NO_CLOSURES) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each [lo, hi] (``closed``) or (lo, hi) (open), int64 ns: the number of expected bars in
    it, the first and the last one (-1: none). One expected-bar array serves all the intervals when
    their hull is at most ``DENSE_LIMIT`` bars; a longer interval is counted without materialising."""
    n = len(los)
    counts = np.zeros(n, dtype="int64")
    firsts = np.full(n, -1, dtype="int64")
    lasts = np.full(n, -1, dtype="int64")
    if n == 0:
        return counts, firsts, lasts
    step = timeframe_ns(timeframe)
    lo_side, hi_side = ("left", "right") if closed else ("right", "left")

    def fill(bars: np.ndarray, which: np.ndarray) -> None:
        a = np.searchsorted(bars, los[which], side=lo_side)
        b = np.searchsorted(bars, his[which], side=hi_side)
        c = np.maximum(b - a, 0)
        counts[which] = c
        has = c > 0
        firsts[which[has]] = bars[a[has]]
        lasts[which[has]] = bars[b[has] - 1]

    lo_all, hi_all = int(los.min()), int(his.max())
    if (hi_all - lo_all) // step <= DENSE_LIMIT:
        fill(expected_ns(calendar, timeframe, lo_all, hi_all + 1, alignment, closures), np.arange(n))
        return counts, firsts, lasts
    for i in range(n):
        lo, hi = int(los[i]), int(his[i])
        if (hi - lo) // step <= DENSE_LIMIT:
            fill(expected_ns(calendar, timeframe, lo, hi + 1, alignment, closures), np.array([i]))
            continue
        # A huge interval (years of 1m bars): count without materialising, then find its ends.
        start = lo if closed else lo + 1
        end = hi + 1 if closed else hi
        counts[i] = count_expected_bars(calendar, timeframe, pd.Timestamp(start, unit="ns", tz=UTC),
                                        pd.Timestamp(end, unit="ns", tz=UTC), alignment, closures)
        if counts[i]:
            firsts[i] = _first_expected(calendar, timeframe, start, end, step, alignment, closures)
            lasts[i] = _last_expected(calendar, timeframe, start, end, step, alignment, closures)
    return counts, firsts, lasts


def _first_expected(calendar: str, timeframe: str, start: int, end: int, step: int, alignment: str,
                    closures: Closures) -> int:
    width = 10_000 * step
    while start < end:
        bars = expected_ns(calendar, timeframe, start, min(end, start + width), alignment, closures)
        if len(bars):
            return int(bars[0])
        start, width = start + width, width * 2
    return -1


def _last_expected(calendar: str, timeframe: str, start: int, end: int, step: int, alignment: str,
                   closures: Closures) -> int:
    width = 10_000 * step
    while end > start:
        bars = expected_ns(calendar, timeframe, max(start, end - width), end, alignment, closures)
        if len(bars):
            return int(bars[-1])
        end, width = end - width, width * 2
    return -1


_bars_per_day_cache: dict[tuple[str, str, str], float] = {}


def bars_per_day(calendar: str, timeframe: str, ref_ns: int, alignment: str = BarAlignment.CLOCK) -> float:
    """Bars in a typical trading day of the calendar: the average over the 28 days before the UTC
    day of ``ref_ns`` for an exchange (its regular sessions), 24 hours of bars for 24/7 and 24/5."""
    step_s = timeframe_seconds(timeframe)
    if timeframe == "1d":
        return 1.0
    if calendar in OWN_CALENDARS:
        return 86_400 / step_s
    key = (calendar, timeframe, alignment)
    if key not in _bars_per_day_cache:
        end = ns_to_datetime(ref_ns - ref_ns % NS_PER_DAY)
        start = end - timedelta(days=28)
        days = count_expected_bars(calendar, "1d", start, end)
        bars = count_expected_bars(calendar, timeframe, start, end, alignment)
        _bars_per_day_cache[key] = bars / days if days and bars else 86_400 / step_s
    return _bars_per_day_cache[key]


