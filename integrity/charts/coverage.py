"""A series' coverage calendar: per UTC day, the share of the bars its calendar expects that are stored.

Expected bars come from the calendar (``calendars.expected_stats``: sessions, holidays, half days,
bar alignment and the instrument's closures), counted only up to the newest bar complete now
(``calendars.last_completed_bar``); stored bars come from one grouped SQL count over the range
(distinct bar times per UTC day, on the (symbol, timeframe, ts) index). Days are UTC days: an
exchange session (NYSE, LSE) falls within one; a forex trading day (17:00 to 17:00 New York) spans two.

Each day gets a state: ``full``, ``partial``, ``missing`` (nothing of what was due), ``closed`` (the
calendar expects nothing), ``pending`` (its bars are not complete yet), ``before`` (before the series'
first stored bar: history not loaded, not lost) or ``extra`` (bars stored on a day that expects none).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import numpy as np
from django.db import connection
from django.db.models import Count, Min
from django.db.models.expressions import RawSQL
from django.utils.html import escape

from ..calendars import expected_stats, last_completed_bar
from ..models import Candle
from ..timeframes import NS_PER_DAY, to_ns
from .data import SeriesCalendar

COLOURS = {
    "full": "#1a9850", "partial-high": "#a6d96a", "partial-mid": "#fee08b", "partial-low": "#fdae61",
    "missing": "#d73027", "closed": "#ebedf0", "pending": "#ffffff", "before": "#f7f7f7", "extra": "#8e44ad",
}
LEGEND = (("full", "all bars"), ("partial-high", "≥ 90%"), ("partial-mid", "≥ 50%"), ("partial-low", "< 50%"),
          ("missing", "none"), ("closed", "closed"), ("before", "before the first bar"), ("extra", "bars on a closed day"))


@dataclass(frozen=True)
class DayCoverage:
    day: date
    expected: int  # bars due (complete now) on the calendar
    present: int  # distinct bar times stored
    state: str

    @property
    def share(self) -> float | None:
        return min(self.present, self.expected) / self.expected if self.expected else None

    @property
    def shade(self) -> str:
        """The colour key: the state, partial days split by their share."""
        if self.state != "partial":
            return self.state
        share = self.share or 0.0
        return "partial-high" if share >= 0.9 else "partial-mid" if share >= 0.5 else "partial-low"

    def describe(self) -> str:
        head = f"{self.day:%a %Y-%m-%d}"
        if self.state == "closed":
            return f"{head}: closed (no bars expected)"
        if self.state == "pending":
            return f"{head}: bars not complete yet"
        if self.state == "before":
            return f"{head}: before the first stored bar"
        if self.state == "extra":
            return f"{head}: {self.present} bar(s) stored on a day that expects none"
        return f"{head}: {min(self.present, self.expected)} of {self.expected} expected bars stored"


def _day_index_sql() -> str:
    """The UTC day (days since the epoch) of a candle's ts, in the database's own SQL."""
    column = f"{connection.ops.quote_name(Candle._meta.db_table)}.{connection.ops.quote_name('ts')}"
    if connection.vendor == "postgresql":
        return f"floor(extract(epoch FROM {column}) / 86400)::bigint"
    return f"CAST(strftime('%%s', {column}) AS INTEGER) / 86400"  # SQLite ('%%': the params' escape)


def stored_per_day(symbol: str, timeframe: str, start: datetime, end: datetime) -> dict[int, int]:
    """Distinct stored bar times per UTC day (days since the epoch) in [start, end): one grouped query."""
    rows = (Candle.objects.filter(symbol=symbol, timeframe=timeframe, ts__gte=start, ts__lt=end)
            .annotate(day=RawSQL(_day_index_sql(), ())).values("day")
            .annotate(n=Count("ts", distinct=True)).order_by().values_list("day", "n"))
    return {int(day): n for day, n in rows}


def daily_coverage(symbol: str, timeframe: str, calendar: SeriesCalendar, first: date, last: date,
                   now: datetime) -> list[DayCoverage]:
    """The coverage of each UTC day from ``first`` to ``last`` (inclusive)."""
    start = datetime(first.year, first.month, first.day, tzinfo=UTC)
    n = (last - first).days + 1
    los = to_ns(start) + np.arange(n, dtype="int64") * NS_PER_DAY
    his = los + NS_PER_DAY - 1
    args = (calendar.calendar, timeframe)
    planned, _, _ = expected_stats(*args, los, his, True, calendar.alignment, calendar.closures)
    newest = last_completed_bar(*args, now, calendar.alignment, calendar.closures)
    cap = to_ns(newest) if newest is not None else int(los[0]) - 1
    due_his = np.minimum(his, cap)
    due = np.zeros(n, dtype="int64")
    has_due = due_his >= los
    if has_due.any():
        due[has_due], _, _ = expected_stats(*args, los[has_due], due_his[has_due], True, calendar.alignment,
                                            calendar.closures)
    stored = stored_per_day(symbol, timeframe, start, start + timedelta(days=n))
    first_bar = Candle.objects.filter(symbol=symbol, timeframe=timeframe).aggregate(first=Min("ts"))["first"]
    first_day = to_ns(first_bar) // NS_PER_DAY if first_bar is not None else None
    days = []
    for i in range(n):
        index = int(los[i] // NS_PER_DAY)
        present = stored.get(index, 0)
        if first_day is None or index < first_day:
            state = "before"
        elif due[i] == 0:
            state = "extra" if present else ("pending" if planned[i] else "closed")
        elif present >= due[i]:
            state = "full"
        else:
            state = "missing" if present == 0 else "partial"
        days.append(DayCoverage(first + timedelta(days=i), int(due[i]), present, state))
    return days


def coverage_svg(days: list[DayCoverage], link: Callable[[date], str] | None = None) -> str:
    """A calendar heat map: a column per week (Monday first), a row per weekday, a cell per day
    coloured by its coverage; each cell names its numbers on hover and links to ``link(day)``."""
    if not days:
        return '<p class="help">No days to show.</p>'
    monday = days[0].day - timedelta(days=days[0].day.weekday())
    weeks = (days[-1].day - monday).days // 7 + 1
    cell = max(11, min(26, int(760 // weeks) - 3))
    pitch = cell + 3
    left, top = 34, 30
    width = left + weeks * pitch + 10
    legend_y = top + 7 * pitch + 18
    height = legend_y + 16
    width = max(width, left + sum(28 + int(5.2 * len(text)) for _, text in LEGEND))
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" class="coverage-calendar" style="max-width:100%;height:auto" '
             f'aria-label="coverage per UTC day, {days[0].day} to {days[-1].day}">']
    for row, name in ((0, "Mon"), (2, "Wed"), (4, "Fri"), (6, "Sun")):
        parts.append(f'<text x="{left - 6}" y="{top + row * pitch + cell * 0.75:.1f}" font-size="10" '
                     f'text-anchor="end" fill="#666">{name}</text>')
    shown_month, label_end = None, 0.0
    for d in days:
        col, row = (d.day - monday).days // 7, d.day.weekday()
        x, y = left + col * pitch, top + row * pitch
        if (d.day.year, d.day.month) != shown_month:
            shown_month = (d.day.year, d.day.month)
            label = d.day.strftime("%b %Y" if d.day.month == 1 or col == 0 else "%b")
            if x >= label_end:  # a month too narrow for its label after the previous one goes without
                parts.append(f'<text class="month-label" x="{x}" y="{top - 8}" font-size="10" fill="#444">'
                             f'{label}</text>')
                label_end = x + 6 * len(label) + 4
        stroke = "#c9c9c9" if d.state in ("pending", "before", "closed") else "none"
        dash = ' stroke-dasharray="2,2"' if d.state == "before" else ""
        rect = (f'<rect class="coverage-day state-{d.state}" data-day="{d.day.isoformat()}" '
                f'data-expected="{d.expected}" data-present="{d.present}" x="{x}" y="{y}" width="{cell}" '
                f'height="{cell}" rx="2" fill="{COLOURS[d.shade]}" stroke="{stroke}"{dash}>'
                f'<title>{escape(d.describe())}</title></rect>')
        if link is not None and d.state not in ("closed", "pending", "before"):
            rect = f'<a href="{escape(link(d.day))}">{rect}</a>'
        parts.append(rect)
    x = left
    for key, text in LEGEND:
        parts.append(f'<rect x="{x}" y="{legend_y - 9}" width="10" height="10" rx="2" fill="{COLOURS[key]}" '
                     f'stroke="#c9c9c9"/><text x="{x + 14}" y="{legend_y}" font-size="10" fill="#444">'
                     f'{escape(text)}</text>')
        x += 14 + int(5.2 * len(text)) + 14
    parts.append("</svg>")
    return "".join(parts)
