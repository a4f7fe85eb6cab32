"""The shared scan of a detection run: the series being judged and the database work done once for
all the detectors that need it. Detectors never write.

* the window pass (``window.window_candidates``) reads each series' bars from ``ctx.since`` (minus one
  bar of overlap) once and returns only candidate rows: gap intervals (ts - previous ts > one bar),
  duplicate rows, rows breaking the OHLC rules, unaligned times, outlier candidates, and the
  window's first and last row;
* calendar logic then runs on candidates only, vectorised per (calendar, timeframe, alignment,
  closures): the expected bars strictly inside each candidate interval are missing bars
  (``gap_stats``);
* each series' closures (``SeriesContext.closures``, loaded with the contexts) are on
  ``Series.closures``; every expected-bar judgement of a detector passes them on;
* the newest stored bar per series: one index probe each (``integrity.series.newest_bars_of``),
  unless the caller gave it.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

from ...calendars import (
    Closures,
    bars_per_day,
    expected_stats,
    is_known_calendar,
    session_anchored,
)
from ...models import AnomalyType, Candle, Severity
from ...series import newest_bars_of
from ...timeframes import NS_PER_SECOND, TIMEFRAME_DELTAS, ns_to_datetime
from .. import sql, window
from ..findings import Finding, SeriesContext
from ..thresholds import base_thresholds

logger = logging.getLogger(__name__)

TABLE = Candle._meta.db_table

GAP = AnomalyType.GAP.value
OFF_CALENDAR = AnomalyType.OFF_CALENDAR.value
OUTLIER = AnomalyType.OUTLIER.value
STALE = AnomalyType.STALE.value
INVALID_OHLC = AnomalyType.INVALID_OHLC.value
DUPLICATE = AnomalyType.DUPLICATE.value
DETECTOR_TYPES = (GAP, OFF_CALENDAR, OUTLIER, STALE, INVALID_OHLC, DUPLICATE)


def json_number(value: float | None) -> float | str | None:
    """A float for JSON details: NaN and infinities as text (JSON has no such numbers)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else str(value)


def plural(n: int, timeframe: str, word: str = "bar") -> str:
    return f"{n} {timeframe} {word}{'' if n == 1 else 's'}"


# --- the series being judged -------------------------------------------------------------------


def _of_context(name: str) -> property:
    """A read-only attribute of the series that is its context's (``SeriesContext``)."""
    return property(lambda self: getattr(self.ctx, name), doc=f"The series' {name} (its context's).")


@dataclass
class Series:
    idx: int
    ctx: SeriesContext
    th: dict
    step_ns: int
    since_ns: int | None
    # filled by the window pass
    rows: list[window.WindowRow] = field(default_factory=list)
    first_ts: int | None = None
    last_ts: int | None = None
    n_rows: int = 0

    symbol = _of_context("symbol")
    timeframe = _of_context("timeframe")
    calendar = _of_context("calendar")
    alignment = _of_context("alignment")
    closures = _of_context("closures")  # the instrument's extra closed time (ns)

    @property
    def grid(self) -> tuple[str, str, str]:
        """What decides which bar times are expected: (calendar, timeframe, alignment)."""
        return (self.ctx.calendar, self.ctx.timeframe, self.ctx.alignment)

    @property
    def closed_grid(self) -> tuple[str, str, str, Closures]:
        """``grid`` plus the instrument's closures: series sharing it share expected bars."""
        return (*self.grid, self.closures)

    @property
    def grid_ns(self) -> int:
        """A stored time off this grid is "unaligned": the bar length, or a minute when session-anchored."""
        if session_anchored(self.calendar, self.timeframe, self.alignment):
            return 60 * NS_PER_SECOND
        return self.step_ns

    def at_or_after_since(self, ts: int) -> bool:
        return self.since_ns is None or ts >= self.since_ns

    def finding(self, anomaly_type: str, severity: str, description: str, affected_rows: int,
                period_start: int | None, period_end: int | None, key: str, details: dict) -> Finding:
        return Finding(
            symbol=self.symbol, timeframe=self.timeframe, anomaly_type=anomaly_type, severity=str(severity),
            description=description, affected_rows=int(affected_rows),
            period_start=None if period_start is None else ns_to_datetime(period_start),
            period_end=None if period_end is None else ns_to_datetime(period_end),
            key=key, details=details,
        )


def _series_from_contexts(contexts: Iterable[SeriesContext]) -> list[Series]:
    base = base_thresholds()
    result: list[Series] = []
    seen: set[tuple[str, str]] = set()
    known: dict[str, bool] = {}
    merged: dict[int, tuple[dict, dict]] = {}  # id(ctx.thresholds) -> (that dict, base merged with it)
    for ctx in contexts:
        if (ctx.symbol, ctx.timeframe) in seen:
            continue
        if ctx.timeframe not in TIMEFRAME_DELTAS:
            logger.warning("skipping %s %s: unknown timeframe", ctx.symbol, ctx.timeframe)
            continue
        if ctx.calendar not in known:
            known[ctx.calendar] = is_known_calendar(ctx.calendar)
        if not known[ctx.calendar]:
            logger.warning("skipping %s %s: unknown calendar %r", ctx.symbol, ctx.timeframe, ctx.calendar)
            continue
        seen.add((ctx.symbol, ctx.timeframe))
        step = int(TIMEFRAME_DELTAS[ctx.timeframe].total_seconds()) * NS_PER_SECOND
        since = sql.ns_value(ctx.since) if ctx.since is not None else None
        own = ctx.thresholds or {}
        cached = merged.get(id(own))
        if cached is None or cached[0] is not own:
            cached = merged[id(own)] = (own, {**base, **own})
        result.append(Series(idx=len(result), ctx=ctx, th=cached[1], step_ns=step, since_ns=since))
    return result


def missing_severity(missing: int, series: Series, ref_ns: int) -> str:
    th = series.th
    if missing <= 1:
        return Severity.LOW
    per_day = bars_per_day(series.calendar, series.timeframe, ref_ns, series.alignment)
    days = missing / per_day
    if days >= th["gap_critical_days"]:
        return Severity.CRITICAL
    if days >= th["gap_high_days"]:
        return Severity.HIGH
    if missing >= th["gap_medium_bars"]:
        return Severity.MEDIUM
    return Severity.LOW


# --- the shared scan ---------------------------------------------------------------------------


class Scan:
    """The database work of one detection run, done once and shared by the detectors that need it."""

    def __init__(self, contexts: Iterable[SeriesContext], now: datetime, types: set[str],
                 newest: Mapping[tuple[str, str], datetime | None] | None = None):
        self.series = _series_from_contexts(contexts)
        self.now = now
        self.types = types
        self._window_done = False
        self._gap_stats: dict[int, list[tuple[window.WindowRow, int, int, int]]] | None = None
        self._last_bars: dict[int, int] | None = None
        self._newest = newest

    # The window pass serves every type except stale; duplicates use it on full scans only.
    def window(self) -> None:
        if self._window_done:
            return
        self._window_done = True
        types = self.types
        outliers = OUTLIER in types
        specs = []
        for s in self.series:
            move = vmin = tol = None
            if outliers:
                th = s.th
                move, tol = float(th["outlier_move"]), float(th["outlier_revert_tolerance"])
                vmin = float(th["outlier_vol_min_move"])
                sigma = s.ctx.robust_volatility
                if sigma is not None and sigma > 0 and math.isfinite(sigma):
                    # Smallest relative move whose |log return| can exceed z sigma (downwards).
                    vmin = max(vmin, -math.expm1(-float(th["outlier_robust_z"]) * sigma))
            specs.append(window.WindowSpec(
                idx=s.idx, symbol=s.symbol, timeframe=s.timeframe, step_seconds=s.step_ns // NS_PER_SECOND,
                since=None if s.since_ns is None else ns_to_datetime(s.since_ns), move=move, vmin=vmin, tol=tol,
                grid_seconds=s.grid_ns // NS_PER_SECOND,
            ))
        rows = window.window_candidates(
            TABLE, specs, expected_rows=self._rows_bound(),
            gaps=bool(types & {GAP, OFF_CALENDAR}),
            bad=INVALID_OHLC in types,
            # Gaps need it too: an unaligned bar can hide a missing bar time next to it.
            odd=bool(types & {GAP, OFF_CALENDAR}),
            outliers=outliers,
        )
        for row in rows:
            s = self.series[row.idx]
            s.rows.append(row)
            if row.pt is None:
                s.first_ts = row.ts
            if row.nc is None:
                s.last_ts, s.n_rows = row.ts, row.rn

    def last_bars(self) -> dict[int, int]:
        """Newest stored ts (ns) per series idx (one index probe per series)."""
        if self._last_bars is None:
            known = self._newest or {}
            last: dict[int, int] = {}
            probed = newest_bars_of([(s.symbol, s.timeframe) for s in self.series
                                     if (s.symbol, s.timeframe) not in known])
            for s in self.series:
                key = (s.symbol, s.timeframe)
                newest = known[key] if key in known else probed[key]
                if newest is not None:
                    last[s.idx] = sql.ns_value(newest)
            self._last_bars = last
        return self._last_bars

    def _rows_bound(self) -> int | None:
        """At most how many bars the window pass reads (None: unknown, some series are read whole)."""
        if any(s.since_ns is None for s in self.series):
            return None
        last = self.last_bars()
        total = 0
        for s in self.series:
            if s.idx in last:
                # Bars from since to the newest (one per step at most), plus one bar of overlap.
                total += max(0, (last[s.idx] - s.since_ns) // s.step_ns) + 2
        return total

    def gap_stats(self) -> dict[int, list[tuple[window.WindowRow, int, int, int]]]:
        """Per series: (gap candidate row, expected bars missing, first missing, last missing)."""
        if self._gap_stats is not None:
            return self._gap_stats
        self.window()
        groups: dict[tuple[str, str, str, Closures], list[tuple[Series, window.WindowRow]]] = defaultdict(list)
        for s in self.series:
            for row in s.rows:
                if row.is_gap:
                    groups[s.closed_grid].append((s, row))
        result: dict[int, list[tuple[window.WindowRow, int, int, int]]] = defaultdict(list)
        for (calendar, timeframe, alignment, closures), items in groups.items():
            los = np.array([row.pt for _, row in items], dtype="int64")
            his = np.array([row.ts for _, row in items], dtype="int64")
            counts, firsts, lasts = expected_stats(calendar, timeframe, los, his, closed=False,
                                                    alignment=alignment, closures=closures)
            for (s, row), n, first, last in zip(items, counts, firsts, lasts, strict=True):
                result[s.idx].append((row, int(n), int(first), int(last)))
        self._gap_stats = result
        return result
