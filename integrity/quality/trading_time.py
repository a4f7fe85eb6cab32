"""Gap severity by missing *trading time*: how much of the calendar's trading (sessions and hours)
the missing bars cover, in typical trading days, so one missing session is the same finding on a
daily and on an hourly series.

Trading time is counted in trading minutes (the calendar's expected 1m bars, ``integrity.calendars``):
for a run of missing bars ``first .. last`` those in ``[first, last + one bar)``. A daily bar is
stamped with its session date at 00:00 UTC, so that window holds its session when the session lies
within its UTC date (the Americas, Europe, most of Asia); a session opening the UTC evening before
its date is counted by its part after midnight plus the part of the next one before it. The forex
calendar's trading day runs 17:00 to 17:00 New York time: a missing forex daily bar is one whole
trading day. A typical trading day is ``calendars.bars_per_day(calendar, "1m")`` minutes (24 hours
for 24/7 and 24/5, the average regular session of the 28 days before for an exchange).

Severity, with the series' thresholds (``quality.thresholds``): ``gap_critical_days`` trading days
or more critical; ``gap_high_days`` or more high; ``gap_medium_days`` or more, or at least
``gap_medium_bars`` bars in a row, medium; otherwise low.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from ..calendars import FOREX_CALENDAR, bars_per_day, counting, expected_stats
from ..models import Severity
from ..timeframes import timeframe_seconds

NS_PER_SECOND = 1_000_000_000


def trading_days(runs: Sequence[tuple[str, str, str, int, int, int]]) -> list[float]:
    """Missing trading time, in typical trading days, of each run ``(calendar, timeframe, alignment,
    missing bars, first missing, last missing)`` (ns). Vectorised per calendar."""
    result = [0.0] * len(runs)
    by_calendar: dict[str, list[int]] = defaultdict(list)
    for i, (calendar, timeframe, _alignment, missing, first, _last) in enumerate(runs):
        if missing <= 0 or first < 0:
            continue
        if calendar == FOREX_CALENDAR and timeframe == "1d":
            result[i] = float(missing)  # a forex trading day is 24 hours: one bar, one whole day
            continue
        by_calendar[calendar].append(i)
    for calendar, items in by_calendar.items():
        # Minutes m with first <= m < last + step: the open interval (first - 1, last + step).
        los = np.array([runs[i][4] - 1 for i in items], dtype="int64")
        his = np.array([runs[i][5] + timeframe_seconds(runs[i][1]) * NS_PER_SECOND for i in items], dtype="int64")
        minutes = np.zeros(len(items), dtype="int64")
        for group in _groups(los, his):
            minutes[group], _, _ = expected_stats(calendar, "1m", los[group], his[group], closed=False)
        per_day = bars_per_day(calendar, "1m", int(his.max()))
        for i, n in zip(items, minutes, strict=True):
            result[i] = float(n) / per_day if per_day else 0.0
    return result


def _groups(los: np.ndarray, his: np.ndarray) -> list[np.ndarray]:
    """The intervals in groups (by start) whose hull spans at most ``calendars.counting.DENSE_LIMIT`` minutes, so each
    group's minutes are one array (gaps spread over decades would otherwise be counted one by one)."""
    order = np.argsort(los, kind="stable")
    limit = counting.DENSE_LIMIT * 60 * NS_PER_SECOND
    groups, start, reach = [], 0, None
    for position, i in enumerate(order):
        if reach is not None and max(reach, his[i]) - los[order[start]] > limit:
            groups.append(order[start:position])
            start, reach = position, None
        reach = his[i] if reach is None else max(reach, his[i])
    groups.append(order[start:])
    return groups


def gap_severity(days: float, missing: int, th: dict) -> str:
    """The severity of a gap of ``missing`` bars covering ``days`` typical trading days."""
    if days >= th["gap_critical_days"]:
        return Severity.CRITICAL
    if days >= th["gap_high_days"]:
        return Severity.HIGH
    if days >= th["gap_medium_days"] or missing >= th["gap_medium_bars"]:
        return Severity.MEDIUM
    return Severity.LOW
