"""The price chart as SVG: candles (wick and body; a close line when bars are too thin for bodies) on
an ``Axis``, price ticks on a 1-2-5 step, UTC time ticks, session breaks dashed, missing bars as
hatched holes, an anomaly's period shaded, its bars marked, refused bars as crosses.

Every value that is text is escaped here; the markup is ours, so callers may mark it safe.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from django.utils.html import escape

from ..timeframes import ns_to_datetime
from .axis import Axis
from .data import Bars, Refused
from .ticks import price_ticks, time_ticks

WIDTH, HEIGHT = 900, 320
LEFT, RIGHT, TOP, BOTTOM = 70, 16, 58, 40  # margins: price labels, -, title, note and legend, time labels
PLOT_LEFT, PLOT_RIGHT = LEFT, WIDTH - RIGHT
BODY_MIN_SLOT = 4.0  # px per bar from which bodies are drawn (below: wicks and a close line)

MARK, REFUSED, HOLE, GRID, INK = "#c0392b", "#8e44ad", "#e67e22", "#e6e6e6", "#555"
_ids = itertools.count(1)


@dataclass
class Chart:
    axis: Axis
    bars: Bars
    title: str
    label: str  # what the chart shows, for screen readers
    period: tuple[int, int] | None = None  # the anomaly's bars [a, b), ns: shaded
    mark_period_bars: bool = False  # stored bars in the period are the anomaly's (outliers, ...)
    refused: Sequence[Refused] = field(default_factory=list)
    notes: Sequence[str] = field(default_factory=list)  # shown under the title


def _y_scale(chart: Chart):
    found = chart.bars.finite_range()
    if found is None:
        values = [v for r in chart.refused for v in (r.high, r.low, r.close) if v is not None and math.isfinite(v)]
        found = (min(values), max(values)) if values else (0.0, 1.0)
    lo, hi = found
    pad = (hi - lo) * 0.06 or max(abs(hi) * 0.01, 1e-6)
    lo, hi = lo - pad, hi + pad
    top, bottom = TOP, HEIGHT - BOTTOM

    def y(v: float) -> float:
        return bottom - (v - lo) / (hi - lo) * (bottom - top)

    return lo, hi, y


def _text(x: float, y: float, text: str, cls: str, anchor: str = "start", size: int = 10,
          fill: str = "#333") -> str:
    return (f'<text class="{cls}" x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
            f'fill="{fill}">{escape(text)}</text>')


def price_chart_svg(chart: Chart) -> str:
    axis, bars = chart.axis, chart.bars
    lo, hi, y = _y_scale(chart)
    top, bottom = TOP, HEIGHT - BOTTOM
    hatch = f"hatch-{next(_ids)}"
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'role="img" class="anomaly-chart" style="max-width:100%;height:auto" '
        f'data-axis="{"session" if axis.compressed else "linear"}" aria-label="{escape(chart.label)}">',
        f'<defs><pattern id="{hatch}" width="6" height="6" patternUnits="userSpaceOnUse" '
        f'patternTransform="rotate(45)"><rect width="6" height="6" fill="#fdf2e9"/>'
        f'<line class="hatch" x1="0" y1="0" x2="0" y2="6" stroke="{HOLE}" stroke-width="2" stroke-opacity="0.55"/></pattern></defs>',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="#fff" stroke="#ccc"/>',
    ]
    legend = []
    if chart.period is not None:
        x0, x1 = axis.band(*chart.period)
        if x1 - x0 < 3:
            x0, x1 = (x0 + x1) / 2 - 1.5, (x0 + x1) / 2 + 1.5
        period = f'x="{x0:.1f}" y="{top:.1f}" width="{x1 - x0:.1f}" height="{bottom - top:.1f}"'
        parts.append(f'<rect class="anomaly-period" {period} fill="#f5c6cb" fill-opacity="0.5"/>')
        legend.append((MARK, "▭", "anomaly period"))
    holes = axis.holes(bars.ts)
    for x0, x1, missing, _, _ in holes:
        w = max(x1 - x0, 1.0)
        parts.append(f'<rect class="missing-bars" data-missing="{missing}" x="{x0:.1f}" y="{top:.1f}" '
                     f'width="{w:.1f}" height="{bottom - top:.1f}" fill="url(#{hatch})"/>')
        if w >= 44:
            parts.append(_text((x0 + x1) / 2, top + 12, f"{missing} missing", "hole-label", "middle", 10, "#a04000"))
    if chart.period is not None:  # its outline over the holes: a gap's period is its hole
        parts.append(f'<rect class="period-outline" {period} fill="none" stroke="{MARK}" '
                     f'stroke-dasharray="4,2" stroke-opacity="0.8"/>')
    if chart.refused:  # a faint column at each refused bar, so a thin one is still found
        w = max(axis.slot, 3.0)
        for cx in axis.x(np.array([r.ts for r in chart.refused], dtype="int64")):
            parts.append(f'<rect class="refused-column" x="{cx - w / 2:.1f}" y="{top:.1f}" width="{w:.1f}" '
                         f'height="{bottom - top:.1f}" fill="{REFUSED}" fill-opacity="0.15"/>')
    if holes:
        n = sum(h[2] for h in holes)
        legend.append((HOLE, "▨", f"missing bars ({n})"))
    # Price ticks: light horizontal rules, labels on the left at the step's precision.
    for value, label in zip(*price_ticks(lo, hi), strict=True):
        yy = y(value)
        parts.append(f'<line class="y-tick" x1="{PLOT_LEFT:.1f}" y1="{yy:.1f}" x2="{PLOT_RIGHT:.1f}" '
                     f'y2="{yy:.1f}" stroke="{GRID}"/>')
        parts.append(_text(PLOT_LEFT - 6, yy + 3.5, label, "y-label", "end"))
    # Time ticks (UTC): the time on the first line, the date (or year) under it when it changes.
    for tick in time_ticks(axis.lo, axis.hi, axis.place, axis.width):
        parts.append(f'<line class="x-tick" x1="{tick.x:.1f}" y1="{top:.1f}" x2="{tick.x:.1f}" '
                     f'y2="{bottom + 4:.1f}" stroke="{GRID}"/>')
        parts.append(_text(tick.x, bottom + 15, tick.label, "x-label", "middle"))
        if tick.sublabel:
            parts.append(_text(tick.x, bottom + 28, tick.sublabel, "x-sublabel", "middle", 9, "#777"))
    breaks = axis.session_breaks()
    for xb in breaks if len(breaks) <= 250 else []:
        parts.append(f'<line class="session-break" x1="{xb:.1f}" y1="{top:.1f}" x2="{xb:.1f}" y2="{bottom:.1f}" '
                     f'stroke="#9aa5b1" stroke-dasharray="3,3"/>')
    if breaks:
        legend.append(("#9aa5b1", "┆", "session break"))
    parts.extend(_candles(chart, y))
    parts.extend(_refused(chart, y, lo, hi))
    if chart.refused:
        legend.append((REFUSED, "×", f"refused at ingest ({len(chart.refused)})"))
    parts.append(f'<rect class="plot-frame" x="{PLOT_LEFT}" y="{top}" width="{PLOT_RIGHT - PLOT_LEFT}" '
                 f'height="{bottom - top}" fill="none" stroke="#bbb"/>')
    parts.append(_text(PLOT_LEFT, 16, chart.title, "chart-title", size=12, fill="#222"))
    note = " · ".join([("session axis: nights, weekends and holidays take no room" if axis.compressed
                        else "linear time axis"), "times UTC", *chart.notes])
    parts.append(_text(PLOT_LEFT, 31, note, "chart-note", size=10, fill="#666"))
    x = PLOT_LEFT
    for colour, glyph, text in legend:
        parts.append(f'<text class="legend" x="{x:.1f}" y="46" font-size="10" fill="#444">'
                     f'<tspan fill="{colour}" font-size="12">{glyph}</tspan> {escape(text)}</text>')
        x += 5.8 * len(text) + 32
    parts.append("</svg>")
    return "".join(parts)


def _candles(chart: Chart, y) -> list[str]:
    axis, bars = chart.axis, chart.bars
    if not len(bars):
        return []
    xs = axis.x(bars.ts)
    slot = axis.slot
    bodies = slot >= BODY_MIN_SLOT
    half = max(min(slot * 0.35, 6.0), 1.0)
    marked = np.zeros(len(bars), dtype=bool)
    if chart.period is not None and chart.mark_period_bars:
        marked = (bars.ts >= chart.period[0]) & (bars.ts < chart.period[1])
    parts, path = [], []
    for i in range(len(bars)):
        o, h, lo, c = bars.open[i], bars.high[i], bars.low[i], bars.close[i]
        if not (math.isfinite(h) and math.isfinite(lo) and math.isfinite(c)):
            path.append(None)
            continue
        cx = float(xs[i])
        colour = MARK if marked[i] else INK
        when = ns_to_datetime(int(bars.ts[i]))
        parts.append(f'<g class="bar" data-ts="{when:%Y-%m-%dT%H:%M:%SZ}"><title>{when:%a %Y-%m-%d %H:%M} UTC · '
                     f'O {o:.6g} H {h:.6g} L {lo:.6g} C {c:.6g}</title>')
        parts.append(f'<line x1="{cx:.1f}" y1="{y(h):.1f}" x2="{cx:.1f}" y2="{y(lo):.1f}" stroke="{colour}"/>')
        if bodies and math.isfinite(o):
            y0, y1 = sorted((y(o), y(c)))
            fill = colour if c < o else "#fff"
            parts.append(f'<rect class="body" x="{cx - half:.1f}" y="{y0:.1f}" width="{2 * half:.1f}" '
                         f'height="{max(y1 - y0, 1):.1f}" fill="{fill}" stroke="{colour}"/>')
        if marked[i]:
            top = y(h) - 3
            parts.append(f'<path class="anomaly-bar" d="M{cx - 5:.1f},{top - 8:.1f}L{cx + 5:.1f},{top - 8:.1f}'
                         f'L{cx:.1f},{top:.1f}Z" fill="{MARK}"/>')
        parts.append("</g>")
        path.append((cx, y(c)))
    if not bodies:
        parts.append(f'<path class="close-line" d="{_broken_line(path, axis, bars)}" fill="none" '
                     f'stroke="#2c3e50" stroke-width="1.2"/>')
    return parts


def _broken_line(points: list, axis: Axis, bars: Bars) -> str:
    """The closes joined, lifted where bars are missing: a line never bridges a hole."""
    if axis.expected is not None and len(axis.expected):
        jump = np.diff(np.searchsorted(axis.expected, bars.ts, side="left")) > 1  # an expected bar between
    else:
        jump = np.diff(bars.ts) > axis.step
    out, pen_up = [], True
    for i, point in enumerate(points):
        if point is None:
            pen_up = True
            continue
        out.append(f'{"M" if pen_up or (i and jump[i - 1]) else "L"}{point[0]:.1f},{point[1]:.1f}')
        pen_up = False
    return "".join(out)


def _refused(chart: Chart, y, lo: float, hi: float) -> list[str]:
    if not chart.refused:
        return []
    xs = chart.axis.x(np.array([r.ts for r in chart.refused], dtype="int64"))
    parts = []
    for r, cx in zip(chart.refused, xs, strict=True):
        tip = escape(f"refused at ingest: {r.rules or 'invalid'}")
        finite = [v for v in (r.high, r.low) if v is not None and math.isfinite(v)]
        if len(finite) == 2:
            y0, y1 = y(min(max(finite[0], lo), hi)), y(min(max(finite[1], lo), hi))
            parts.append(f'<line class="rejected-range" x1="{cx:.1f}" y1="{y0:.1f}" x2="{cx:.1f}" y2="{y1:.1f}" '
                         f'stroke="{REFUSED}" stroke-dasharray="2,2"/>')
        value = r.close if r.close is not None and math.isfinite(r.close) else None
        cy = y(min(max(value, lo), hi)) if value is not None else HEIGHT - BOTTOM - 6
        parts.append(f'<path class="rejected-bar" d="M{cx - 4:.1f},{cy - 4:.1f}L{cx + 4:.1f},{cy + 4:.1f}'
                     f'M{cx - 4:.1f},{cy + 4:.1f}L{cx + 4:.1f},{cy - 4:.1f}" stroke="{REFUSED}" stroke-width="2">'
                     f'<title>{tip}</title></path>')
    return parts
