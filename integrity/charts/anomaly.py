"""The chart on an anomaly's page: its bars and ``CONTEXT_BARS`` stored bars either side, on the
series' own axis (session-compressed for exchange and forex series, so a gap of one hour is a hole
one bar wide, not a hairline between two nights), the anomaly's period shaded.

An ``invalid_ohlc`` finding is charted over the window of the bars it quarantined (``rejected_candles``
rows of its execution, else those in its period): the refused bars are crosses in the holes they
left, their high-low range dashed, the rules they broke on hover.
"""

from __future__ import annotations

from datetime import datetime

from django.db.models import Max, Min

from ..models import AnomalyType, DataAnomaly, RejectedCandle
from ..timeframes import bar_span, timeframe_delta, timeframe_ns, to_ns
from .axis import build_axis
from .data import bars_around, refused_bars, series_calendar
from .svg import PLOT_LEFT, PLOT_RIGHT, Chart, price_chart_svg

CONTEXT_BARS = 40
INSIDE_LIMIT = 1000  # stored bars of the period drawn at most (from its start)


def _quarantine_window(anomaly: DataAnomaly) -> tuple[datetime, datetime] | None:
    """First and last quarantined bar of an invalid_ohlc finding (its execution's, else its period's)."""
    rows = RejectedCandle.objects.filter(symbol=anomaly.symbol, timeframe=anomaly.timeframe)
    scopes = []
    if anomaly.execution_id:
        scopes.append(rows.filter(execution_id=anomaly.execution_id))
    if anomaly.period_start is not None and anomaly.period_end is not None:
        scopes.append(rows.filter(ts__gte=anomaly.period_start, ts__lte=anomaly.period_end))
    for scope in scopes:
        span = scope.aggregate(first=Min("ts"), last=Max("ts"))
        if span["first"] is not None:
            return span["first"], span["last"]
    return None


def _window(anomaly: DataAnomaly) -> tuple[datetime, datetime] | None:
    """[start, end) of the anomaly's bars."""
    span = _quarantine_window(anomaly) if anomaly.anomaly_type == AnomalyType.INVALID_OHLC else None
    if span is None:
        start = anomaly.period_start or anomaly.period_end
        end = anomaly.period_end or anomaly.period_start
        if start is None:
            return None
        span = (start, end)
    return span[0], span[1] + timeframe_delta(anomaly.timeframe)


def anomaly_chart_svg(anomaly: DataAnomaly) -> str:
    window = _window(anomaly)
    if window is None:
        return '<p class="help">No period recorded for this anomaly: nothing to chart.</p>'
    start, end = window
    invalid = anomaly.anomaly_type == AnomalyType.INVALID_OHLC
    bars, cut = bars_around(anomaly.symbol, anomaly.timeframe, start, end, CONTEXT_BARS, INSIDE_LIMIT)
    refused = refused_bars(anomaly.symbol, anomaly.timeframe, start, end) if invalid else []
    total_refused = len(refused)
    if not len(bars) and not refused:
        return '<p class="help">No stored candles around this anomaly.</p>'
    step = timeframe_ns(anomaly.timeframe)
    a, b = to_ns(start), to_ns(end)
    lo = min([a, *bars.ts[:1]])
    hi = int(bars.ts[-1]) + step if cut else max([b, *(bars.ts[-1:] + step)])
    notes = [f"the period's first {INSIDE_LIMIT} bars shown"] if cut else []
    later = [r for r in refused if r.ts >= hi]
    if later:
        refused = [r for r in refused if r.ts < hi]
        notes.append(f"{len(later)} more refused bar(s) after this window")
    calendar = series_calendar(anomaly.symbol)
    axis = build_axis(calendar.calendar, anomaly.timeframe, lo, hi, PLOT_LEFT, PLOT_RIGHT, calendar.alignment,
                      calendar.closures)
    last_bar = b - step
    what = f"{total_refused} bar{'' if total_refused == 1 else 's'} refused" if invalid else ""
    title = (f"{anomaly.symbol} {anomaly.timeframe} · {anomaly.get_anomaly_type_display()} · "
             f"{what or 'bars'} {bar_span(a, last_bar, anomaly.timeframe)}")
    # An invalid_ohlc finding's bars are the crosses: its window needs no shading.
    return price_chart_svg(Chart(
        axis, bars, title, f"{anomaly.symbol} {anomaly.timeframe} candles around the anomaly",
        period=None if invalid else (a, b), mark_period_bars=not invalid, refused=refused, notes=notes))
