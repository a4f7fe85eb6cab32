"""Which bars an instrument's calendar expects, so gaps and off-calendar bars can be told apart.

Calendar codes:
    * any exchange_calendars code or alias ("XNYS", "NYSE", "XLON", ...): exchange sessions,
      holidays, half days, lunch breaks and DST as exchange_calendars knows them;
    * ``"24/7"``: crypto, every bar of every day;
    * ``"24/5"``: the FOREX WEEK, Sunday 17:00 to Friday 17:00 America/New_York (DST-correct).
      exchange_calendars ships an unrelated calendar under the same name (Mon-Fri, midnight to
      midnight UTC); ours always wins and "24/5" is never passed to exchange_calendars.

Expected bars for [start, end) (start inclusive, end exclusive):
    * intraday timeframes: every epoch-aligned bar that contains at least one trading minute
      (exchange session minutes are open inclusive, close exclusive: exchange_calendars'
      ``side="left"``), with start <= bar < end. A session opening at 14:30 UTC therefore
      expects a 14:00 UTC 1h bar.
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

Everything works on int64 nanoseconds since the epoch and is vectorised per trading interval
(a session or a forex week), never per minute.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

from .timeframes import BarAlignment, timeframe_seconds

CRYPTO_CALENDAR = "24/7"
FOREX_CALENDAR = "24/5"
OWN_CALENDARS = (CRYPTO_CALENDAR, FOREX_CALENDAR)

ASSET_CLASS_CALENDARS = {"equity": "XNYS", "crypto": CRYPTO_CALENDAR, "forex": FOREX_CALENDAR}

NS_PER_SECOND = 1_000_000_000
NS_PER_DAY = 86_400 * NS_PER_SECOND
_FOREX_TZ = "America/New_York"
_FOREX_CUTOFF = pd.Timedelta(hours=17)

# How far back the "newest bar before" helpers look before giving up.
_LOOKBACKS = (pd.Timedelta(days=5), pd.Timedelta(days=35))


# --- codes -------------------------------------------------------------------------------------


def _exchange_calendar_names() -> set[str]:
    import exchange_calendars as xcals

    return set(xcals.get_calendar_names(include_aliases=True)) - set(OWN_CALENDARS)


def is_known_calendar(code: str) -> bool:
    if not isinstance(code, str) or not code:
        return False
    return code in OWN_CALENDARS or code in _exchange_calendar_names()


def validate_calendar_code(code: str) -> None:
    if not is_known_calendar(code):
        raise ValueError(
            f"unknown calendar {code!r}: use an exchange_calendars code such as XNYS, XLON, XTKS "
            f"(aliases like NYSE and LSE work too), '24/7' for crypto or '24/5' for the forex week "
            f"(Sunday 17:00 to Friday 17:00 New York time)"
        )


def calendar_for_asset_class(asset_class: str) -> str:
    """The default calendar of an asset class: equity XNYS, crypto 24/7, forex 24/5."""
    try:
        return ASSET_CLASS_CALENDARS[str(asset_class).lower()]
    except KeyError:
        raise ValueError(
            f"no default calendar for asset class {asset_class!r}; expected one of "
            f"{', '.join(ASSET_CLASS_CALENDARS)}"
        ) from None


# --- time conversion ---------------------------------------------------------------------------


def to_ns(value) -> int:
    """A datetime-like as int64 ns since the epoch (UTC); naive values are taken as UTC."""
    ts = pd.Timestamp(value)
    if ts is pd.NaT:
        raise ValueError("a time is required, got NaT/None")
    ts = ts.tz_localize(UTC) if ts.tzinfo is None else ts.tz_convert(UTC)
    return int(ts.as_unit("ns").value)


def _index_from_ns(values: np.ndarray) -> pd.DatetimeIndex:
    return pd.DatetimeIndex(np.asarray(values, dtype="int64").view("M8[ns]")).tz_localize(UTC)


def _datetime_from_ns(value: int) -> datetime:
    return pd.Timestamp(int(value), unit="ns", tz=UTC).to_pydatetime().astimezone(UTC)


def _floor(values, step: int):
    return values - np.mod(values, step)


def _weekday(day_ns):
    """Monday=0 for ns values at (or within) a UTC day; 1970-01-01 was a Thursday."""
    return np.mod(np.floor_divide(day_ns, NS_PER_DAY) + 3, 7)


# --- exchange calendars (cached, thread-safe) --------------------------------------------------


@dataclass(frozen=True)
class _ExchangeTable:
    """One exchange_calendars build flattened to sorted int64 ns arrays."""

    lo: int  # window the calendar was built for (session labels, ns)
    hi: int
    lo_is_bound: bool  # the window cannot be widened further that way
    hi_is_bound: bool
    sessions: np.ndarray  # session labels at 00:00 UTC
    closes: np.ndarray  # session closes (monotonic)
    iv_open: np.ndarray  # trading intervals [open, close): sessions split at lunch breaks
    iv_close: np.ndarray

    def covers(self, lo: int, hi: int) -> bool:
        return (self.lo <= lo or self.lo_is_bound) and (self.hi >= hi or self.hi_is_bound)


_tables: dict[str, _ExchangeTable] = {}
_tables_lock = threading.Lock()
_PAD = 366 * NS_PER_DAY


def _ns_column(frame: pd.DataFrame, column: str) -> np.ndarray:
    series = frame[column]
    values = pd.DatetimeIndex(series).tz_convert(UTC).as_unit("ns")
    return values.asi8.copy()


def _build_table(name: str, lo: int, hi: int) -> _ExchangeTable:
    import exchange_calendars as xcals

    # The class's construction bounds (e.g. XHKG 1960..2049) are only reachable through the
    # dispatcher's factory table; without it we just try and let exchange_calendars complain.
    factories = getattr(xcals.calendar_utils.global_calendar_dispatcher, "_calendar_factories", {})
    factory = factories.get(name)
    bound_min = factory.bound_min() if factory is not None else None
    bound_max = factory.bound_max() if factory is not None else None
    today = pd.Timestamp.now(tz=UTC).normalize().tz_localize(None)
    start = min(pd.Timestamp(lo, unit="ns"), today - pd.DateOffset(years=20)).normalize()
    end = max(pd.Timestamp(hi, unit="ns"), today + pd.DateOffset(years=1)).normalize()
    lo_is_bound = hi_is_bound = False
    if bound_min is not None and start <= bound_min:
        start, lo_is_bound = pd.Timestamp(bound_min), True
    if bound_max is not None and end >= bound_max:
        end, hi_is_bound = pd.Timestamp(bound_max), True
    try:
        with warnings.catch_warnings():
            # exchange_calendars trips pandas 3 deprecation warnings that are not ours to fix.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            cal = xcals.get_calendar(name, start=start, end=end)
    except Exception as exc:  # exchange_calendars raises assorted errors for unbuildable windows
        raise ValueError(
            f"calendar {name!r} could not be built for {start.date()}..{end.date()}: {exc}"
        ) from exc
    schedule = cal.schedule
    opens = _ns_column(schedule, "open")
    closes = _ns_column(schedule, "close")
    iv_open, iv_close = opens, closes
    if "break_start" in schedule and schedule["break_start"].notna().any():
        has_break = schedule["break_start"].notna().to_numpy()
        break_start = _ns_column(schedule, "break_start")
        break_end = _ns_column(schedule, "break_end")
        iv_open = np.concatenate([opens, break_end[has_break]])
        iv_close = np.concatenate([np.where(has_break, break_start, closes), closes[has_break]])
        order = np.argsort(iv_open, kind="stable")
        iv_open, iv_close = iv_open[order], iv_close[order]
    sessions = schedule.index.as_unit("ns").asi8.copy()  # naive session dates == UTC midnight
    return _ExchangeTable(
        lo=int(start.as_unit("ns").value), hi=int(end.as_unit("ns").value),
        lo_is_bound=lo_is_bound, hi_is_bound=hi_is_bound,
        sessions=sessions, closes=closes, iv_open=iv_open, iv_close=iv_close,
    )


def _exchange_table(code: str, lo: int, hi: int) -> _ExchangeTable:
    """A table whose sessions cover [lo, hi] (ns), rebuilt wider when a request falls outside."""
    import exchange_calendars as xcals

    name = xcals.resolve_alias(code)
    # Sessions may open the UTC day before their label (Asia-Pacific, futures): pad by days.
    lo -= 3 * NS_PER_DAY
    hi += 3 * NS_PER_DAY
    table = _tables.get(name)
    if table is not None and table.covers(lo, hi):
        return table
    with _tables_lock:
        table = _tables.get(name)
        if table is not None and table.covers(lo, hi):
            return table
        want_lo, want_hi = lo - _PAD, hi + _PAD
        if table is not None:
            want_lo, want_hi = min(want_lo, table.lo), max(want_hi, table.hi)
        table = _build_table(name, want_lo, want_hi)
        _tables[name] = table
        return table


# --- trading intervals -------------------------------------------------------------------------


def _forex_intervals(lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """Forex weeks [Sunday 17:00, Friday 17:00) New York time overlapping [lo, hi] (ns)."""
    first = pd.Timestamp(lo - 8 * NS_PER_DAY, unit="ns").normalize()
    last = pd.Timestamp(hi + 8 * NS_PER_DAY, unit="ns").normalize()
    sundays = pd.date_range(first, last, freq="W-SUN", unit="ns")
    # 17:00 is never inside a DST transition in New York, so localisation is unambiguous.
    opens = (sundays + _FOREX_CUTOFF).tz_localize(_FOREX_TZ).tz_convert(UTC).asi8
    closes = (sundays + pd.Timedelta(days=5) + _FOREX_CUTOFF).tz_localize(_FOREX_TZ).tz_convert(UTC).asi8
    return opens, closes


def _forex_day_closes(days: np.ndarray) -> np.ndarray:
    """Close (17:00 New York) of the forex trading days labelled by UTC-midnight ``days``."""
    naive = pd.DatetimeIndex(np.asarray(days, dtype="int64").view("M8[ns]"))
    return (naive + _FOREX_CUTOFF).tz_localize(_FOREX_TZ).tz_convert(UTC).asi8


def _intervals(calendar: str, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted, non-overlapping trading intervals [open, close) covering at least [lo, hi]."""
    if calendar == CRYPTO_CALENDAR:
        return (np.array([_floor(lo, NS_PER_DAY) - NS_PER_DAY], dtype="int64"),
                np.array([_floor(hi, NS_PER_DAY) + 2 * NS_PER_DAY], dtype="int64"))
    if calendar == FOREX_CALENDAR:
        return _forex_intervals(lo, hi)
    table = _exchange_table(calendar, lo, hi)
    a = np.searchsorted(table.iv_close, lo, side="right")
    b = np.searchsorted(table.iv_open, hi, side="right")
    return table.iv_open[a:b], table.iv_close[a:b]


def _bars_in_intervals(iv_open: np.ndarray, iv_close: np.ndarray, step: int) -> np.ndarray:
    """Sorted unique epoch-aligned bar opens whose [bar, bar+step) meets an interval."""
    if len(iv_open) == 0:
        return np.empty(0, dtype="int64")
    first = _floor(iv_open, step)
    last = _floor(iv_close - 1, step)
    counts = (last - first) // step + 1
    counts = np.maximum(counts, 0)
    offsets = np.arange(int(counts.sum()), dtype="int64") - np.repeat(np.cumsum(counts) - counts, counts)
    bars = np.repeat(first, counts) + offsets * step
    # Intervals are sorted, so bars only repeat where adjacent intervals share a bucket.
    if len(bars) > 1 and not np.all(bars[1:] > bars[:-1]):
        bars = np.unique(bars)
    return bars


def _check(calendar: str, timeframe: str) -> int:
    validate_calendar_code(calendar)
    return timeframe_seconds(timeframe) * NS_PER_SECOND


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
                alignment: str = BarAlignment.CLOCK) -> np.ndarray:
    """Expected bar opens in [lo, hi) as sorted int64 ns since the epoch (the vectorised core)."""
    step = _check(calendar, timeframe)
    if hi <= lo:
        return np.empty(0, dtype="int64")
    if session_anchored(calendar, timeframe, alignment):
        bars, _ = _anchored_bars(*_intervals(calendar, lo, hi), step)
        a = np.searchsorted(bars, lo, side="left")
        b = np.searchsorted(bars, hi, side="left")
        return bars[a:b]
    if timeframe == "1d":
        first_day = -(-lo // NS_PER_DAY) * NS_PER_DAY  # ceil to a UTC midnight
        if calendar in OWN_CALENDARS:
            days = np.arange(first_day, hi, NS_PER_DAY, dtype="int64")
            if calendar == FOREX_CALENDAR:
                days = days[_weekday(days) < 5]
            return days
        table = _exchange_table(calendar, lo, hi)
        a = np.searchsorted(table.sessions, lo, side="left")
        b = np.searchsorted(table.sessions, hi, side="left")
        return table.sessions[a:b].copy()
    if calendar == CRYPTO_CALENDAR:
        first = -(-lo // step) * step
        return np.arange(first, hi, step, dtype="int64")
    bars = _bars_in_intervals(*_intervals(calendar, lo, hi), step)
    a = np.searchsorted(bars, lo, side="left")
    b = np.searchsorted(bars, hi, side="left")
    return bars[a:b]


def expected_bars(calendar: str, timeframe: str, start: datetime, end: datetime,
                  alignment: str = BarAlignment.CLOCK) -> pd.DatetimeIndex:
    """Open times (UTC, sorted, unique) of the bars ``calendar`` expects in [start, end)."""
    return _index_from_ns(expected_ns(calendar, timeframe, to_ns(start), to_ns(end), alignment))


def count_expected_bars(calendar: str, timeframe: str, start: datetime, end: datetime,
                        alignment: str = BarAlignment.CLOCK) -> int:
    lo, hi = to_ns(start), to_ns(end)
    if calendar == CRYPTO_CALENDAR:
        step = _check(calendar, timeframe)  # 24/7 bars, daily ones included, are epoch-aligned
        first = -(-lo // step) * step
        return max(0, -(-(hi - first) // step))
    return len(expected_ns(calendar, timeframe, lo, hi, alignment))


# Expected-bar arrays up to this many bars are built in one go (8 bytes each); longer spans are
# counted interval by interval.
DENSE_LIMIT = 4_000_000


def expected_stats(calendar: str, timeframe: str, los: np.ndarray, his: np.ndarray, closed: bool,
                   alignment: str = BarAlignment.CLOCK) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each [lo, hi] (``closed``) or (lo, hi) (open), int64 ns: the number of expected bars in
    it, the first and the last one (-1: none). One expected-bar array serves all the intervals when
    their hull is at most ``DENSE_LIMIT`` bars; a longer interval is counted without materialising."""
    n = len(los)
    counts = np.zeros(n, dtype="int64")
    firsts = np.full(n, -1, dtype="int64")
    lasts = np.full(n, -1, dtype="int64")
    if n == 0:
        return counts, firsts, lasts
    step = timeframe_seconds(timeframe) * NS_PER_SECOND
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
        fill(expected_ns(calendar, timeframe, lo_all, hi_all + 1, alignment), np.arange(n))
        return counts, firsts, lasts
    for i in range(n):
        lo, hi = int(los[i]), int(his[i])
        if (hi - lo) // step <= DENSE_LIMIT:
            fill(expected_ns(calendar, timeframe, lo, hi + 1, alignment), np.array([i]))
            continue
        # A huge interval (years of 1m bars): count without materialising, then find its ends.
        start = lo if closed else lo + 1
        end = hi + 1 if closed else hi
        counts[i] = count_expected_bars(calendar, timeframe, pd.Timestamp(start, unit="ns", tz=UTC),
                                        pd.Timestamp(end, unit="ns", tz=UTC), alignment)
        if counts[i]:
            firsts[i] = _first_expected(calendar, timeframe, start, end, step, alignment)
            lasts[i] = _last_expected(calendar, timeframe, start, end, step, alignment)
    return counts, firsts, lasts


def _first_expected(calendar: str, timeframe: str, start: int, end: int, step: int, alignment: str) -> int:
    width = 10_000 * step
    while start < end:
        bars = expected_ns(calendar, timeframe, start, min(end, start + width), alignment)
        if len(bars):
            return int(bars[0])
        start, width = start + width, width * 2
    return -1


def _last_expected(calendar: str, timeframe: str, start: int, end: int, step: int, alignment: str) -> int:
    width = 10_000 * step
    while end > start:
        bars = expected_ns(calendar, timeframe, max(start, end - width), end, alignment)
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
        end = _datetime_from_ns(ref_ns - ref_ns % NS_PER_DAY)
        start = end - timedelta(days=28)
        days = count_expected_bars(calendar, "1d", start, end)
        bars = count_expected_bars(calendar, timeframe, start, end, alignment)
        _bars_per_day_cache[key] = bars / days if days and bars else 86_400 / step_s
    return _bars_per_day_cache[key]


def is_expected_bar(calendar: str, timeframe: str, ts, alignment: str = BarAlignment.CLOCK) -> np.ndarray:
    """Which of the given bar open times the calendar expects (False for NaT and unaligned times).

    Works per bar against the trading intervals spanning [min(ts), max(ts)], so sparse times far
    apart cost no more than the sessions between them.
    """
    step = _check(calendar, timeframe)
    index = pd.DatetimeIndex(pd.to_datetime(ts, utc=True)).as_unit("ns")
    result = np.zeros(len(index), dtype=bool)
    valid = ~np.asarray(index.isna())
    if not valid.any():
        return result
    values = index.asi8[valid]
    aligned = np.mod(values, step) == 0
    lo, hi = int(values.min()), int(values.max()) + step
    if session_anchored(calendar, timeframe, alignment):
        iv_open, iv_close = _intervals(calendar, lo, hi)
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
            ok = aligned & (_weekday(values) < 5)
        else:
            ok = aligned & np.isin(values, _exchange_table(calendar, lo, hi).sessions)
    elif calendar == CRYPTO_CALENDAR:
        ok = aligned
    else:
        iv_open, iv_close = _intervals(calendar, lo, hi)
        # The last interval opening before the bar ends; intervals are disjoint and sorted, so if
        # it closed before the bar opened, so did every earlier one.
        idx = np.searchsorted(iv_open, values + step, side="left") - 1
        safe = np.clip(idx, 0, max(len(iv_close) - 1, 0))
        hit = (idx >= 0) & (iv_close[safe] > values) if len(iv_close) else np.zeros(len(values), bool)
        ok = aligned & hit
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
    step = _check(calendar, timeframe)
    closes = np.asarray(closes, dtype="int64")
    opens = closes - step
    if len(closes) == 0 or timeframe == "1d" or not session_anchored(calendar, timeframe, alignment):
        return opens
    lo, hi = int(closes.min()) - step, int(closes.max())
    bars, ends = _anchored_bars(*_intervals(calendar, lo, hi), step)
    ends = np.minimum(bars + step, ends)
    idx = np.clip(np.searchsorted(ends, closes), 0, max(len(ends) - 1, 0))
    hit = (ends[idx] == closes) if len(ends) else np.zeros(len(closes), dtype=bool)
    return np.where(hit, bars[idx] if len(bars) else opens, opens)


def last_completed_bar(calendar: str, timeframe: str, now: datetime,
                       alignment: str = BarAlignment.CLOCK) -> datetime | None:
    """The newest expected bar that is complete at ``now``.

    Intraday: bar open + timeframe <= now (session-anchored: or its interval's close, for the
    shortened last bar of a session). Daily: exchanges, the last session whose close <= now;
    24/7, the last UTC day that has ended; 24/5, the last trading day whose 17:00 New York close
    <= now.
    """
    step = _check(calendar, timeframe)
    now_ns = to_ns(now)
    if session_anchored(calendar, timeframe, alignment):
        for lookback in _LOOKBACKS:
            bars, closes = _anchored_bars(*_intervals(calendar, now_ns - int(lookback.value), now_ns), step)
            done = np.minimum(bars + step, closes) <= now_ns
            done &= bars >= now_ns - int(lookback.value)
            if done.any():
                return _datetime_from_ns(int(bars[done][-1]))
        return None
    if timeframe == "1d":
        if calendar == CRYPTO_CALENDAR:
            return _datetime_from_ns(_floor(now_ns, NS_PER_DAY) - NS_PER_DAY)
        if calendar == FOREX_CALENDAR:
            today = _floor(now_ns, NS_PER_DAY)
            days = today + np.arange(-10, 2, dtype="int64") * NS_PER_DAY
            days = days[_weekday(days) < 5]
            days = days[_forex_day_closes(days) <= now_ns]
            return _datetime_from_ns(days[-1]) if len(days) else None
        table = _exchange_table(calendar, now_ns - int(_LOOKBACKS[-1].value), now_ns)
        idx = int(np.searchsorted(table.closes, now_ns, side="right")) - 1
        return _datetime_from_ns(table.sessions[idx]) if idx >= 0 else None
    # Complete bars open at or before now - step; they are aligned, so end at floor(now - step) + step.
    end = _floor(now_ns - step, step) + step
    return _newest_before(calendar, timeframe, end)


def previous_expected_bar(calendar: str, timeframe: str, ts: datetime,
                          alignment: str = BarAlignment.CLOCK) -> datetime | None:
    """The newest expected bar strictly before ``ts``, looking back about a month at most."""
    _check(calendar, timeframe)
    return _newest_before(calendar, timeframe, to_ns(ts), alignment)


def _newest_before(calendar: str, timeframe: str, end_ns: int,
                   alignment: str = BarAlignment.CLOCK) -> datetime | None:
    for lookback in _LOOKBACKS:
        bars = expected_ns(calendar, timeframe, end_ns - int(lookback.value), end_ns, alignment)
        if len(bars):
            return _datetime_from_ns(bars[-1])
    return None
