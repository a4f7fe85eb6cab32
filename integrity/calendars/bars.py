"""Expected-bar maths on int64 ns: which bar opens a calendar expects in a span, whether given
times are expected bars, bar opens from bar closes, and the newest completed bar.

Expected bars for [start, end) (start inclusive, end exclusive):
    * intraday timeframes: every epoch-aligned bar that contains at least one trading minute, with
      start <= bar < end. A session opening at 14:30 UTC therefore expects a 14:00 UTC 1h bar.
    * ``1d``: exchanges, one bar per session stamped with the session date at 00:00 UTC;
      24/7, every calendar day; 24/5, one bar per trading day Monday..Friday, where trading day
      D runs from D-1 17:00 to D 17:00 New York time (the Sunday-evening open belongs to Monday,
      the week's last day is the one that closes Friday 17:00). The forex calendar has no holidays:
      Christmas and New Year are expected like any other weekday.

Bar alignment (``alignment``, a ``BarAlignment`` value) says where intraday bars start:
    * ``clock`` (the default): the epoch grid above;
    * ``session``: each trading interval's open (a session, or its part after a lunch break) plus
      whole bar lengths; the interval's last bar is shortened to its close (NYSE 1h: 09:30, 10:30
      ... 15:30 New York time, 09:30 ... 12:30 on a 13:00 half day; XHKG 1h: 09:30, 10:30, 11:30,
      13:00, 14:00, 15:00). Daily bars and 24/7 series do not depend on it.

Closures (``closures``, see ``closures.py``): extra closed time of one instrument, int64 ns
[start, end) pairs normalised by ``closures.normalise``. Every function here takes them, so gaps,
off-calendar bars and staleness see the same trading time: a bar is expected when the calendar
expects it and at least one of its trading minutes is outside the closures.

Everything is vectorised per trading interval (a session or a forex week), never per minute.
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pandas as pd

from ..timeframes import (
    NS_PER_DAY,
    BarAlignment,
    ns_index,
    ns_to_datetime,
    timeframe_ns,
    to_ns,
)
from . import closures as _closures
from .closures import NO_CLOSURES, Closures
from .codes import CRYPTO_CALENDAR, FOREX_CALENDAR, OWN_CALENDARS, validate_calendar_code
from .intervals import exchange_table, floor_ns, forex_day_closes, trading_intervals, weekday

# How far back the "newest bar before" helpers look before giving up.
_LOOKBACKS = (pd.Timedelta(days=5), pd.Timedelta(days=35))


def _bars_in_intervals(iv_open: np.ndarray, iv_close: np.ndarray, step: int) -> np.ndarray:
    """Sorted unique epoch-aligned bar opens whose [bar, bar+step) meets an interval."""
    if len(iv_open) == 0:
        return np.empty(0, dtype="int64")
    first = floor_ns(iv_open, step)
    last = floor_ns(iv_close - 1, step)
    counts = (last - first) // step + 1
    counts = np.maximum(counts, 0)
    offsets = np.arange(int(counts.sum()), dtype="int64") - np.repeat(np.cumsum(counts) - counts, counts)
    bars = np.repeat(first, counts) + offsets * step
    # Intervals are sorted, so bars only repeat where adjacent intervals share a bucket.
    if len(bars) > 1 and not np.all(bars[1:] > bars[:-1]):
        bars = np.unique(bars)
    return bars


def bar_step_ns(calendar: str, timeframe: str) -> int:
    """The bar length in ns of a series on ``calendar``; ValueError for an unknown calendar or timeframe."""
    validate_calendar_code(calendar)
    return timeframe_ns(timeframe)


def validate_alignment(alignment: str) -> None:
    if alignment not in BarAlignment.values:
        raise ValueError(f"unknown bar alignment {alignment!r}; expected one of {', '.join(BarAlignment.values)}")


def session_anchored(calendar: str, timeframe: str, alignment: str) -> bool:
    """Whether bars of this series start at interval opens rather than on the epoch grid."""
    validate_alignment(alignment)
    return alignment == BarAlignment.SESSION and timeframe != "1d" and calendar != CRYPTO_CALENDAR


def _anchored_bars(iv_open: np.ndarray, iv_close: np.ndarray, step: int) -> tuple[np.ndarray, np.ndarray]:
    """Session-anchored bar opens of each interval and the close of the interval each one is in."""
    if len(iv_open) == 0:
        empty = np.empty(0, dtype="int64")
        return empty, empty
    counts = np.maximum(-(-(iv_close - iv_open) // step), 0)
    offsets = np.arange(int(counts.sum()), dtype="int64") - np.repeat(np.cumsum(counts) - counts, counts)
    return np.repeat(iv_open, counts) + offsets * step, np.repeat(iv_close, counts)


# --- public API --------------------------------------------------------------------------------

def expected_ns(calendar: str, timeframe: str, lo: int, hi: int,
                alignment: str = BarAlignment.CLOCK, closures: Closures = NO_CLOSURES) -> np.ndarray:
    """Expected bar opens in [lo, hi) as sorted int64 ns since the epoch (the vectorised core)."""
    bars = _calendar_ns(calendar, timeframe, lo, hi, alignment)
    if closures and len(bars):
        bars = bars[_still_open(calendar, timeframe, alignment, bars, closures)]
    return bars


def _bar_spans(calendar: str, timeframe: str, alignment: str, bars: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The time [a, b) each expected bar covers: an intraday bar its length (session-anchored: cut at
    its interval's close), a daily bar its session (from the previous close to its close)."""
    step = bar_step_ns(calendar, timeframe)
    if timeframe == "1d":
        if calendar == CRYPTO_CALENDAR:
            return bars, bars + NS_PER_DAY
        if calendar == FOREX_CALENDAR:
            return forex_day_closes(bars - NS_PER_DAY), forex_day_closes(bars)
        table = exchange_table(calendar, int(bars[0]), int(bars[-1]))
        idx = np.searchsorted(table.sessions, bars)
        ends = table.closes[idx]
        starts = np.where(idx > 0, table.closes[np.clip(idx - 1, 0, None)], ends - NS_PER_DAY)
        return starts, ends
    if session_anchored(calendar, timeframe, alignment):
        iv_open, iv_close = trading_intervals(calendar, int(bars[0]), int(bars[-1]) + step)
        idx = np.clip(np.searchsorted(iv_open, bars, side="right") - 1, 0, None)
        return bars, np.minimum(bars + step, iv_close[idx])
    return bars, bars + step


def _still_open(calendar: str, timeframe: str, alignment: str, bars: np.ndarray,
                closures: Closures) -> np.ndarray:
    """Which of these calendar-expected bars keep a trading minute outside the closures."""
    keep = np.ones(len(bars), dtype=bool)
    if len(bars) == 0:
        return keep
    step = bar_step_ns(calendar, timeframe)
    near = _closures.relevant(closures, int(bars[0]), int(bars[-1]) + step)
    if not near:
        return keep
    a, b = _bar_spans(calendar, timeframe, alignment, bars)
    lo, hi = int(a.min()), int(b.max())
    iv_open, iv_close = _closures.subtract(*trading_intervals(calendar, lo, hi), near)
    return _closures.meets(iv_open, iv_close, a, b)


def _calendar_ns(calendar: str, timeframe: str, lo: int, hi: int, alignment: str) -> np.ndarray:
    """Expected bar opens in [lo, hi) on the calendar alone (no closures)."""
    step = bar_step_ns(calendar, timeframe)
    if hi <= lo:
        return np.empty(0, dtype="int64")
    if session_anchored(calendar, timeframe, alignment):
        bars, _ = _anchored_bars(*trading_intervals(calendar, lo, hi), step)
        a = np.searchsorted(bars, lo, side="left")
        b = np.searchsorted(bars, hi, side="left")
        return bars[a:b]
    if timeframe == "1d":
        first_day = -(-lo // NS_PER_DAY) * NS_PER_DAY  # ceil to a UTC midnight
        if calendar in OWN_CALENDARS:
            days = np.arange(first_day, hi, NS_PER_DAY, dtype="int64")
            if calendar == FOREX_CALENDAR:
                days = days[weekday(days) < 5]
            return days
        table = exchange_table(calendar, lo, hi)
        a = np.searchsorted(table.sessions, lo, side="left")
        b = np.searchsorted(table.sessions, hi, side="left")
        return table.sessions[a:b].copy()
    if calendar == CRYPTO_CALENDAR:
        first = -(-lo // step) * step
        return np.arange(first, hi, step, dtype="int64")
    bars = _bars_in_intervals(*trading_intervals(calendar, lo, hi), step)
    a = np.searchsorted(bars, lo, side="left")
    b = np.searchsorted(bars, hi, side="left")
    return bars[a:b]


def expected_bars(calendar: str, timeframe: str, start: datetime, end: datetime,
                  alignment: str = BarAlignment.CLOCK, closures: Closures = NO_CLOSURES) -> pd.DatetimeIndex:
    """Open times (UTC, sorted, unique) of the bars ``calendar`` expects in [start, end)."""
    return ns_index(expected_ns(calendar, timeframe, to_ns(start), to_ns(end), alignment, closures))


def is_expected_bar(calendar: str, timeframe: str, ts, alignment: str = BarAlignment.CLOCK,
                    closures: Closures = NO_CLOSURES) -> np.ndarray:
    """Which of the given bar open times the calendar expects (False for NaT and unaligned times).

    Works per bar against the trading intervals spanning [min(ts), max(ts)], so sparse times far
    apart cost no more than the sessions between them.
    """
    step = bar_step_ns(calendar, timeframe)
    index = pd.DatetimeIndex(pd.to_datetime(ts, utc=True)).as_unit("ns")
    result = np.zeros(len(index), dtype=bool)
    valid = ~np.asarray(index.isna())
    if not valid.any():
        return result
    values = index.asi8[valid]
    aligned = np.mod(values, step) == 0
    lo, hi = int(values.min()), int(values.max()) + step
    if session_anchored(calendar, timeframe, alignment):
        iv_open, iv_close = trading_intervals(calendar, lo, hi)
        # The interval the bar opens in; the bar must sit a whole number of bars after its open.
        idx = np.searchsorted(iv_open, values, side="right") - 1
        safe = np.clip(idx, 0, max(len(iv_open) - 1, 0))
        if len(iv_open):
            ok = (idx >= 0) & (values < iv_close[safe]) & (np.mod(values - iv_open[safe], step) == 0)
        else:
            ok = np.zeros(len(values), dtype=bool)
    elif timeframe == "1d":
        if calendar == CRYPTO_CALENDAR:
            ok = aligned
        elif calendar == FOREX_CALENDAR:
            ok = aligned & (weekday(values) < 5)
        else:
            ok = aligned & np.isin(values, exchange_table(calendar, lo, hi).sessions)
    elif calendar == CRYPTO_CALENDAR:
        ok = aligned
    else:
        iv_open, iv_close = trading_intervals(calendar, lo, hi)
        # The last interval opening before the bar ends; intervals are disjoint and sorted, so if
        # it closed before the bar opened, so did every earlier one.
        idx = np.searchsorted(iv_open, values + step, side="left") - 1
        safe = np.clip(idx, 0, max(len(iv_close) - 1, 0))
        hit = (idx >= 0) & (iv_close[safe] > values) if len(iv_close) else np.zeros(len(values), bool)
        ok = aligned & hit
    if closures and ok.any():
        ok[ok] = _still_open(calendar, timeframe, alignment, values[ok], closures)
    result[valid] = ok
    return result


def bar_opens_from_closes(calendar: str, timeframe: str, closes: np.ndarray,
                          alignment: str = BarAlignment.CLOCK) -> np.ndarray:
    """Open times (int64 ns) of the bars that end at ``closes`` (int64 ns): for files that stamp a
    bar with its close. A bar ends one bar length after it opens, except the shortened last bar of a
    session-anchored interval, which ends at the interval's close (a 15:30 NYSE 1h bar stamped
    16:00 opened at 15:30, not 15:00). A close that ends no expected bar is moved back one bar
    length: the detectors then judge the bar like any other.
    """
    step = bar_step_ns(calendar, timeframe)
    closes = np.asarray(closes, dtype="int64")
    opens = closes - step
    if len(closes) == 0 or timeframe == "1d" or not session_anchored(calendar, timeframe, alignment):
        return opens
    lo, hi = int(closes.min()) - step, int(closes.max())
    bars, ends = _anchored_bars(*trading_intervals(calendar, lo, hi), step)
    ends = np.minimum(bars + step, ends)
    idx = np.clip(np.searchsorted(ends, closes), 0, max(len(ends) - 1, 0))
    hit = (ends[idx] == closes) if len(ends) else np.zeros(len(closes), dtype=bool)
    return np.where(hit, bars[idx] if len(bars) else opens, opens)


def last_completed_bar(calendar: str, timeframe: str, now: datetime,
                       alignment: str = BarAlignment.CLOCK, closures: Closures = NO_CLOSURES) -> datetime | None:
    """The newest expected bar that is complete at ``now``.

    Intraday: bar open + timeframe <= now (session-anchored: or its interval's close, for the
    shortened last bar of a session). Daily: exchanges, the last session whose close <= now;
    24/7, the last UTC day that has ended; 24/5, the last trading day whose 17:00 New York close
    <= now. With ``closures``: the newest such bar that the closures leave expected (every bar
    before a complete bar is complete too).
    """
    newest = _last_completed_on_calendar(calendar, timeframe, now, alignment)
    if not closures or newest is None:
        return newest
    newest_ns = to_ns(newest)
    if len(expected_ns(calendar, timeframe, newest_ns, newest_ns + 1, alignment, closures)):
        return newest
    return _newest_before(calendar, timeframe, newest_ns, alignment, closures)


def _last_completed_on_calendar(calendar: str, timeframe: str, now: datetime, alignment: str) -> datetime | None:
    step = bar_step_ns(calendar, timeframe)
    now_ns = to_ns(now)
    if session_anchored(calendar, timeframe, alignment):
        for lookback in _LOOKBACKS:
            bars, closes = _anchored_bars(*trading_intervals(calendar, now_ns - int(lookback.value), now_ns), step)
            done = np.minimum(bars + step, closes) <= now_ns
            done &= bars >= now_ns - int(lookback.value)
            if done.any():
                return ns_to_datetime(int(bars[done][-1]))
        return None
    if timeframe == "1d":
        if calendar == CRYPTO_CALENDAR:
            return ns_to_datetime(floor_ns(now_ns, NS_PER_DAY) - NS_PER_DAY)
        if calendar == FOREX_CALENDAR:
            today = floor_ns(now_ns, NS_PER_DAY)
            days = today + np.arange(-10, 2, dtype="int64") * NS_PER_DAY
            days = days[weekday(days) < 5]
            days = days[forex_day_closes(days) <= now_ns]
            return ns_to_datetime(days[-1]) if len(days) else None
        table = exchange_table(calendar, now_ns - int(_LOOKBACKS[-1].value), now_ns)
        idx = int(np.searchsorted(table.closes, now_ns, side="right")) - 1
        return ns_to_datetime(table.sessions[idx]) if idx >= 0 else None
    # Complete bars open at or before now - step; they are aligned, so end at floor(now - step) + step.
    end = floor_ns(now_ns - step, step) + step
    return _newest_before(calendar, timeframe, end)


def previous_expected_bar(calendar: str, timeframe: str, ts: datetime,
                          alignment: str = BarAlignment.CLOCK, closures: Closures = NO_CLOSURES) -> datetime | None:
    """The newest expected bar strictly before ``ts``, looking back about a month at most (plus the
    closed time of the closures)."""
    bar_step_ns(calendar, timeframe)
    return _newest_before(calendar, timeframe, to_ns(ts), alignment, closures)


def _newest_before(calendar: str, timeframe: str, end_ns: int,
                   alignment: str = BarAlignment.CLOCK, closures: Closures = NO_CLOSURES) -> datetime | None:
    closed = sum(b - a for a, b in closures if a < end_ns)
    for lookback in _LOOKBACKS:
        lo = end_ns - int(lookback.value) - closed
        bars = expected_ns(calendar, timeframe, lo, end_ns, alignment, closures)
        if len(bars):
            return ns_to_datetime(bars[-1])
    return None
