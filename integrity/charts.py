"""Server-rendered SVG charts (no JavaScript, no CDN): candles around an anomaly, anomaly marked; an
invalid_ohlc anomaly also shows the bars refused at ingest (``rejected_candles``) as crosses."""

from __future__ import annotations

from datetime import datetime

from django.utils.html import escape

from .models import AnomalyType, Candle, DataAnomaly
from .rejected import rejected_points
from .timeframes import timeframe_delta

WIDTH, HEIGHT, PAD = 760, 260, 36
CONTEXT_BARS = 40


def _window(anomaly: DataAnomaly) -> tuple[datetime, datetime] | None:
    start = anomaly.period_start or anomaly.period_end
    end = anomaly.period_end or anomaly.period_start
    if start is None:
        return None
    step = timeframe_delta(anomaly.timeframe)
    return start, end + step


def anomaly_chart_svg(anomaly: DataAnomaly) -> str:
    window = _window(anomaly)
    if window is None:
        return '<p class="help">No period recorded for this anomaly: nothing to chart.</p>'
    start, end = window
    series = Candle.objects.filter(symbol=anomaly.symbol, timeframe=anomaly.timeframe)
    before = list(series.filter(ts__lt=start).order_by("-ts").values_list("ts", "high", "low", "close")[:CONTEXT_BARS])
    inside = list(series.filter(ts__gte=start, ts__lt=end).order_by("ts").values_list("ts", "high", "low", "close")[:200])
    after = list(series.filter(ts__gte=end).order_by("ts").values_list("ts", "high", "low", "close")[:CONTEXT_BARS])
    bars = before[::-1] + inside + after
    rejected = (rejected_points(anomaly.symbol, anomaly.timeframe, start, end)
                if anomaly.anomaly_type == AnomalyType.INVALID_OHLC else [])
    rejected_only = anomaly.anomaly_type == AnomalyType.INVALID_OHLC
    if not bars and not rejected:
        return '<p class="help">No stored candles around this anomaly.</p>'
    if not bars:  # every bar of the period was refused: the crosses alone
        bars = [(ts, None, None, None) for ts, _ in rejected[:1]]
    finite = [v for _, h, lo, c in bars for v in (h, lo, c) if v is not None and v == v and abs(v) != float("inf")]
    lo_v, hi_v = (min(finite), max(finite)) if finite else (0.0, 1.0)
    if hi_v == lo_v:
        hi_v, lo_v = hi_v + 1, lo_v - 1
    t0 = min(bars[0][0].timestamp(), start.timestamp())
    t1 = max(bars[-1][0].timestamp(), end.timestamp())
    span = max(t1 - t0, 1.0)

    def x(ts: datetime | float) -> float:
        seconds = ts if isinstance(ts, float) else ts.timestamp()
        return PAD + (seconds - t0) / span * (WIDTH - 2 * PAD)

    def y(v: float) -> float:
        return HEIGHT - PAD - (v - lo_v) / (hi_v - lo_v) * (HEIGHT - 2 * PAD)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
             f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" class="anomaly-chart" '
             f'aria-label="{escape(anomaly.symbol)} {escape(anomaly.timeframe)} candles around the anomaly">',
             f'<rect width="{WIDTH}" height="{HEIGHT}" fill="#fff" stroke="#ccc"/>']
    # The anomaly's period: shaded (a gap shows as an empty shaded band).
    x0, x1 = x(start), x(end.timestamp())
    parts.append(f'<rect class="anomaly-period" x="{x0:.1f}" y="{PAD / 2:.1f}" width="{max(x1 - x0, 3):.1f}" '
                 f'height="{HEIGHT - 1.5 * PAD:.1f}" fill="#f5c6cb" fill-opacity="0.6"/>')
    points = []
    for ts, high, low, close in bars:
        if None in (high, low, close) or any(v != v for v in (high, low, close)):
            continue
        cx = x(ts)
        # Stored bars of an invalid_ohlc period passed validation: the refused ones are the crosses.
        marked = start <= ts < end and not rejected_only
        colour = "#c0392b" if marked else "#555"
        parts.append(f'<line x1="{cx:.1f}" y1="{y(high):.1f}" x2="{cx:.1f}" y2="{y(low):.1f}" stroke="{colour}"/>')
        if marked:
            parts.append(f'<circle class="anomaly-bar" cx="{cx:.1f}" cy="{y(close):.1f}" r="4" fill="#c0392b"/>')
        points.append(f"{cx:.1f},{y(close):.1f}")
    parts.append(f'<polyline points="{" ".join(points)}" fill="none" stroke="#2c3e50" stroke-width="1.2"/>')
    for ts, value in rejected:  # at its close when finite and in range, else on the chart's edge
        cx, cy = x(ts), y(min(max(value, lo_v), hi_v)) if value is not None else HEIGHT - PAD
        parts.append(f'<path class="rejected-bar" d="M{cx - 4:.1f},{cy - 4:.1f}L{cx + 4:.1f},{cy + 4:.1f}'
                     f'M{cx - 4:.1f},{cy + 4:.1f}L{cx + 4:.1f},{cy - 4:.1f}" stroke="#8e44ad" stroke-width="2"/>')
    parts.append(f'<text x="{PAD}" y="{PAD / 2 - 4 + 8:.0f}" font-size="11" fill="#333">{escape(anomaly.symbol)} '
                 f'{escape(anomaly.timeframe)} · {escape(anomaly.get_anomaly_type_display())} · '
                 f'{bars[0][0]:%Y-%m-%d %H:%M} – {bars[-1][0]:%Y-%m-%d %H:%M} UTC</text>')
    parts.append(f'<text x="{WIDTH - PAD}" y="{y(hi_v) + 4:.0f}" font-size="10" text-anchor="end" fill="#777">'
                 f'{hi_v:.6g}</text>')
    parts.append(f'<text x="{WIDTH - PAD}" y="{y(lo_v):.0f}" font-size="10" text-anchor="end" fill="#777">'
                 f'{lo_v:.6g}</text>')
    parts.append("</svg>")
    return "".join(parts)
