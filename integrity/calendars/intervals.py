"""Trading intervals as int64 ns arrays: exchange sessions (split at lunch breaks) from a cached,
thread-safe exchange_calendars build, the forex week (Sunday 17:00 to Friday 17:00 New York time,
DST-correct) and the 24/7 clock; plus the ns day arithmetic the bar maths shares.

Exchange session minutes are open inclusive, close exclusive (exchange_calendars' ``side="left"``).
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass
from datetime import UTC

import numpy as np
import pandas as pd

from ..timeframes import NS_PER_DAY
from .codes import CRYPTO_CALENDAR, FOREX_CALENDAR

_FOREX_TZ = "America/New_York"
_FOREX_CUTOFF = pd.Timedelta(hours=17)


def floor_ns(values, step: int):
    return values - np.mod(values, step)


def weekday(day_ns):
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


def exchange_table(code: str, lo: int, hi: int) -> _ExchangeTable:
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


def forex_day_closes(days: np.ndarray) -> np.ndarray:
    """Close (17:00 New York) of the forex trading days labelled by UTC-midnight ``days``."""
    naive = pd.DatetimeIndex(np.asarray(days, dtype="int64").view("M8[ns]"))
    return (naive + _FOREX_CUTOFF).tz_localize(_FOREX_TZ).tz_convert(UTC).asi8


def trading_intervals(calendar: str, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted, non-overlapping trading intervals [open, close) covering at least [lo, hi]."""
    if calendar == CRYPTO_CALENDAR:
        return (np.array([floor_ns(lo, NS_PER_DAY) - NS_PER_DAY], dtype="int64"),
                np.array([floor_ns(hi, NS_PER_DAY) + 2 * NS_PER_DAY], dtype="int64"))
    if calendar == FOREX_CALENDAR:
        return _forex_intervals(lo, hi)
    table = exchange_table(calendar, lo, hi)
    a = np.searchsorted(table.iv_close, lo, side="right")
    b = np.searchsorted(table.iv_open, hi, side="right")
    return table.iv_open[a:b], table.iv_close[a:b]


