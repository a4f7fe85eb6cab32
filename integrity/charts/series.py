"""The per-series page's price chart: the ``RECENT_BARS`` bars the calendar expects up to now, on the
series' own axis, missing ones as holes (a stale series shows its hole at the right edge)."""

from __future__ import annotations

from datetime import datetime, timedelta

from ..calendars import expected_ns, last_completed_bar
from ..timeframes import NS_PER_SECOND, bar_span, ns_to_datetime, timeframe_ns, to_ns
from .axis import build_axis
from .data import SeriesCalendar, bars_between
from .svg import PLOT_LEFT, PLOT_RIGHT, Chart, price_chart_svg

RECENT_BARS = 240
_LOOKBACK_LIMIT = timedelta(days=800)  # a calendar expecting nothing that long: give up


def recent_window(symbol: str, timeframe: str, calendar: SeriesCalendar, now: datetime) -> tuple[int, int] | None:
    """[lo, hi) ns of the last ``RECENT_BARS`` expected bars complete at ``now`` (None: none found)."""
    newest = last_completed_bar(calendar.calendar, timeframe, now, calendar.alignment, calendar.closures)
    if newest is None:
        return None
    step = timeframe_ns(timeframe)
    hi = to_ns(newest) + step
    span = RECENT_BARS * step * 2
    while True:
        bars = expected_ns(calendar.calendar, timeframe, hi - span, hi, calendar.alignment, calendar.closures)
        if len(bars) >= RECENT_BARS or span > _LOOKBACK_LIMIT.total_seconds() * NS_PER_SECOND:
            return (int(bars[-RECENT_BARS:][0]), hi) if len(bars) else None
        span *= 3


def recent_chart_svg(symbol: str, timeframe: str, calendar: SeriesCalendar, now: datetime) -> str:
    window = recent_window(symbol, timeframe, calendar, now)
    if window is None:
        return '<p class="help">The calendar expects no bars of this series recently: nothing to chart.</p>'
    lo, hi = window
    bars = bars_between(symbol, timeframe, ns_to_datetime(lo), ns_to_datetime(hi), 2 * RECENT_BARS)
    axis = build_axis(calendar.calendar, timeframe, lo, hi, PLOT_LEFT, PLOT_RIGHT, calendar.alignment,
                      calendar.closures)
    step = timeframe_ns(timeframe)
    title = (f"{symbol} {timeframe} · the last {RECENT_BARS} expected bars, "
             f"{bar_span(lo, hi - step, timeframe)}")
    notes = [] if len(bars) else ["no bar stored in this window"]
    return price_chart_svg(Chart(axis, bars, title, f"{symbol} {timeframe} recent candles", notes=notes))
