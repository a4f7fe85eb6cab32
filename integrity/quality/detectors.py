"""Calendar-aware data-quality detectors. They read candles and return findings; they never write.

Each ``detect_X(contexts, now=None)`` judges the given series (``SeriesContext``); ``run_detectors``
runs several at once and shares their database work, which is what the health job and
``detect_anomalies`` should call. ``DETECTORS`` maps anomaly types to the single detectors.

How the work is done (set-based, few passes, whatever the number of series):

* one window pass (``sql.window_candidates``) reads each series' bars from ``ctx.since`` (minus one
  bar of overlap) once and returns only candidate rows: gap intervals (ts - previous ts > one bar),
  duplicate rows, rows breaking OHLC invariants, unaligned times, outlier candidates, and the
  window's first and last row;
* calendar logic then runs on candidates only, vectorised per (calendar, timeframe): the expected
  bars strictly inside each candidate interval are missing bars (none: a weekend, a holiday, a
  night, so no gap);
* off-calendar bars are found without reading every timestamp: with N distinct stored bars in the
  window [first, last], E expected bars in it and M expected bars missing (from the gap step),
  N - (E - M) stored bars are not expected. Only a series where that is non-zero (or which has
  unaligned times) looks closer: the same identity per bucket (a UTC day, or 1024 bars when longer)
  from one GROUP BY, and only the timestamps of buckets where it fails are read and checked bar by
  bar, never the whole series;
* stale: one index probe per series for the newest bar; duplicates of a series scanned
  incrementally: one GROUP BY over that series (duplicates can be written anywhere in history by
  other writers, so they are always judged on the whole series; a full scan gets them from the
  window pass for free).

``ctx.since``: only problems at or after ``since`` are reported (gaps whose interval ends at or after
it, bars at or after it), except ``stale`` and ``duplicate``, which are whole-series judgements.

Severities:
    gap           1 missing bar low; >= gap_medium_bars medium; >= gap_high_days trading days of bars
                  high; >= gap_critical_days trading days critical
    off_calendar  medium
    outlier       critical: a unit error (price ratio near 100 or 1000, or their inverses);
                  high: a move beyond outlier_move (splits and reverting spikes included);
                  medium: a smaller spike caught by the volatility test
    stale         the gap ladder applied to the bars missing since the last stored one, at least medium
    invalid_ohlc  high
    duplicate     medium
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
from django.utils import timezone

from ..calendars import (
    CRYPTO_CALENDAR,
    OWN_CALENDARS,
    count_expected_bars,
    expected_ns,
    is_expected_bar,
    is_known_calendar,
    last_completed_bar,
    session_anchored,
)
from ..models import AnomalyType, Candle, Severity
from ..timeframes import TIMEFRAME_DELTAS
from . import sql
from .findings import Finding, SeriesContext
from .thresholds import base_thresholds

logger = logging.getLogger(__name__)

TABLE = Candle._meta.db_table
NS_PER_SECOND = 1_000_000_000
NS_PER_HOUR = 3600 * NS_PER_SECOND
NS_PER_DAY = 24 * NS_PER_HOUR
# Expected-bar arrays up to this many bars are built in one go (8 bytes each); longer spans are
# counted interval by interval.
_DENSE_LIMIT = 4_000_000
_INVALID_FETCH_LIMIT = 10_000  # rows per series whose values are read to name the broken rules

GAP = AnomalyType.GAP.value
OFF_CALENDAR = AnomalyType.OFF_CALENDAR.value
OUTLIER = AnomalyType.OUTLIER.value
STALE = AnomalyType.STALE.value
INVALID_OHLC = AnomalyType.INVALID_OHLC.value
DUPLICATE = AnomalyType.DUPLICATE.value
DETECTOR_TYPES = (GAP, OFF_CALENDAR, OUTLIER, STALE, INVALID_OHLC, DUPLICATE)


# --- formatting --------------------------------------------------------------------------------


_dt = sql.ns_to_datetime


def _num(value: float | None) -> float | str | None:
    """A float for JSON details: NaN and infinities as text (JSON has no such numbers)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else str(value)


def _iso(ns: int) -> str:
    return _dt(ns).isoformat()


def _fmt(ns: int, timeframe: str) -> str:
    ts = _dt(ns)
    if timeframe == "1d" and ts.hour == ts.minute == ts.second == ts.microsecond == 0:
        return ts.strftime("%Y-%m-%d")
    if ts.second or ts.microsecond:
        return ts.strftime("%Y-%m-%d %H:%M:%S UTC")
    return ts.strftime("%Y-%m-%d %H:%M UTC")


def _span(first: int, last: int, timeframe: str) -> str:
    if first == last:
        return f"at {_fmt(first, timeframe)}"
    return f"from {_fmt(first, timeframe)} to {_fmt(last, timeframe)}"


def _plural(n: int, timeframe: str, word: str = "bar") -> str:
    return f"{n} {timeframe} {word}{'' if n == 1 else 's'}"


# --- the series being judged -------------------------------------------------------------------


@dataclass
class _Series:
    idx: int
    ctx: SeriesContext
    th: dict
    step_ns: int
    since_ns: int | None
    # filled by the window pass
    rows: list[sql.WindowRow] = field(default_factory=list)
    first_ts: int | None = None
    last_ts: int | None = None
    n_rows: int = 0

    @property
    def symbol(self) -> str:
        return self.ctx.symbol

    @property
    def timeframe(self) -> str:
        return self.ctx.timeframe

    @property
    def calendar(self) -> str:
        return self.ctx.calendar

    @property
    def alignment(self) -> str:
        return self.ctx.alignment

    @property
    def grid(self) -> tuple[str, str, str]:
        """What decides which bar times are expected: (calendar, timeframe, alignment)."""
        return (self.ctx.calendar, self.ctx.timeframe, self.ctx.alignment)

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
            period_start=None if period_start is None else _dt(period_start),
            period_end=None if period_end is None else _dt(period_end),
            key=key, details=details,
        )


def _series_from_contexts(contexts: Iterable[SeriesContext]) -> list[_Series]:
    base = base_thresholds()
    result: list[_Series] = []
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
        result.append(_Series(idx=len(result), ctx=ctx, th=cached[1], step_ns=step, since_ns=since))
    return result


# --- expected bars, vectorised per (calendar, timeframe) ---------------------------------------


def _expected_ns(calendar: str, timeframe: str, lo: int, hi: int, alignment: str = "clock") -> np.ndarray:
    """Expected bar opens in [lo, hi) as int64 ns."""
    return expected_ns(calendar, timeframe, int(lo), int(hi), alignment)


def _expected_stats(calendar: str, timeframe: str, los: np.ndarray, his: np.ndarray, closed: bool,
                    alignment: str = "clock"):
    """For each [lo, hi] (closed) or (lo, hi) (open): count, first and last expected bar (ns, -1: none)."""
    n = len(los)
    counts = np.zeros(n, dtype="int64")
    firsts = np.full(n, -1, dtype="int64")
    lasts = np.full(n, -1, dtype="int64")
    if n == 0:
        return counts, firsts, lasts
    step = int(TIMEFRAME_DELTAS[timeframe].total_seconds()) * NS_PER_SECOND
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
    if (hi_all - lo_all) // step <= _DENSE_LIMIT:
        fill(_expected_ns(calendar, timeframe, lo_all, hi_all + 1, alignment), np.arange(n))
        return counts, firsts, lasts
    for i in range(n):
        lo, hi = int(los[i]), int(his[i])
        if (hi - lo) // step <= _DENSE_LIMIT:
            fill(_expected_ns(calendar, timeframe, lo, hi + 1, alignment), np.array([i]))
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
        bars = _expected_ns(calendar, timeframe, start, min(end, start + width), alignment)
        if len(bars):
            return int(bars[0])
        start, width = start + width, width * 2
    return -1


def _last_expected(calendar: str, timeframe: str, start: int, end: int, step: int, alignment: str) -> int:
    width = 10_000 * step
    while end > start:
        bars = _expected_ns(calendar, timeframe, max(start, end - width), end, alignment)
        if len(bars):
            return int(bars[-1])
        end, width = end - width, width * 2
    return -1


_bars_per_day_cache: dict[tuple[str, str, str], float] = {}


def _bars_per_day(calendar: str, timeframe: str, ref_ns: int, alignment: str = "clock") -> float:
    """Bars in a typical trading day of the calendar (an exchange's regular session, 24h otherwise)."""
    step_s = TIMEFRAME_DELTAS[timeframe].total_seconds()
    if timeframe == "1d":
        return 1.0
    if calendar in OWN_CALENDARS:
        return 86_400 / step_s
    key = (calendar, timeframe, alignment)
    if key not in _bars_per_day_cache:
        end = _dt(ref_ns - ref_ns % NS_PER_DAY)
        start = end - timedelta(days=28)
        days = count_expected_bars(calendar, "1d", start, end)
        bars = count_expected_bars(calendar, timeframe, start, end, alignment)
        _bars_per_day_cache[key] = bars / days if days and bars else 86_400 / step_s
    return _bars_per_day_cache[key]


def _missing_severity(missing: int, series: _Series, ref_ns: int) -> str:
    th = series.th
    if missing <= 1:
        return Severity.LOW
    per_day = _bars_per_day(series.calendar, series.timeframe, ref_ns, series.alignment)
    days = missing / per_day
    if days >= th["gap_critical_days"]:
        return Severity.CRITICAL
    if days >= th["gap_high_days"]:
        return Severity.HIGH
    if missing >= th["gap_medium_bars"]:
        return Severity.MEDIUM
    return Severity.LOW


# --- the shared scan ---------------------------------------------------------------------------


class _Scan:
    """The database work of one detection run, done once and shared by the detectors that need it."""

    def __init__(self, contexts: Iterable[SeriesContext], now: datetime, types: set[str],
                 newest: Mapping[tuple[str, str], datetime | None] | None = None):
        self.series = _series_from_contexts(contexts)
        self.now = now
        self.types = types
        self._window_done = False
        self._gap_stats: dict[int, list[tuple[sql.WindowRow, int, int, int]]] | None = None
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
            specs.append(sql.WindowSpec(
                idx=s.idx, symbol=s.symbol, timeframe=s.timeframe, step_seconds=s.step_ns // NS_PER_SECOND,
                since=None if s.since_ns is None else _dt(s.since_ns), move=move, vmin=vmin, tol=tol,
                grid_seconds=s.grid_ns // NS_PER_SECOND,
            ))
        rows = sql.window_candidates(
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
            probe = []
            for s in self.series:
                key = (s.symbol, s.timeframe)
                if key in known:
                    if known[key] is not None:
                        last[s.idx] = sql.ns_value(known[key])
                else:
                    probe.append((s.idx, s.symbol, s.timeframe))
            if probe:
                last.update(sql.last_bars(TABLE, probe))
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

    def gap_stats(self) -> dict[int, list[tuple[sql.WindowRow, int, int, int]]]:
        """Per series: (gap candidate row, expected bars missing, first missing, last missing)."""
        if self._gap_stats is not None:
            return self._gap_stats
        self.window()
        groups: dict[tuple[str, str, str], list[tuple[_Series, sql.WindowRow]]] = defaultdict(list)
        for s in self.series:
            for row in s.rows:
                if row.is_gap:
                    groups[s.grid].append((s, row))
        result: dict[int, list[tuple[sql.WindowRow, int, int, int]]] = defaultdict(list)
        for (calendar, timeframe, alignment), items in groups.items():
            los = np.array([row.pt for _, row in items], dtype="int64")
            his = np.array([row.ts for _, row in items], dtype="int64")
            counts, firsts, lasts = _expected_stats(calendar, timeframe, los, his, closed=False,
                                                    alignment=alignment)
            for (s, row), n, first, last in zip(items, counts, firsts, lasts, strict=True):
                result[s.idx].append((row, int(n), int(first), int(last)))
        self._gap_stats = result
        return result


# --- gap ---------------------------------------------------------------------------------------


def _merged_gaps(s: _Series, stats) -> list[tuple[int, int, int, int, int]]:
    """(previous bar, next bar, missing, first missing, last missing) per run of missing bars.

    Missing bars separated only by unaligned stored bars (a block stamped 30 s late: 10:01:30,
    10:02:30 ... instead of 10:01, 10:02 ...) are one run: nothing was stored at any of their times.
    """
    runs: list[list[int]] = []
    for row, missing, first, last in stats:
        if missing <= 0:
            continue  # closed in between: a night, a weekend, a holiday
        if runs and runs[-1][1] == row.pt and row.pt % s.grid_ns != 0:
            run = runs[-1]
            run[1], run[2], run[4] = row.ts, run[2] + missing, last
        else:
            runs.append([row.pt, row.ts, missing, first, last])
    return [tuple(run) for run in runs]


def _gap_findings(scan: _Scan) -> list[Finding]:
    findings = []
    for s in scan.series:
        for previous, following, missing, first, last in _merged_gaps(s, scan.gap_stats().get(s.idx, ())):
            severity = _missing_severity(missing, s, first)
            findings.append(s.finding(
                GAP, severity,
                f"{missing} missing {s.timeframe} bar{'' if missing == 1 else 's'} {_span(first, last, s.timeframe)}",
                missing, first, last, _iso(first),
                {"missing_bars": missing, "previous_bar": _iso(previous), "next_bar": _iso(following),
                 "first_missing": _iso(first), "last_missing": _iso(last), "calendar": s.calendar},
            ))
    return findings


# --- off_calendar ------------------------------------------------------------------------------


@dataclass
class _Run:
    first: int
    last: int
    count: int
    sample: list[int]


def _runs_from_positions(times: np.ndarray, positions: np.ndarray, step: int, limit: int) -> list[_Run]:
    """Runs of off-calendar bars: adjacent in the stored series and at most one bar apart."""
    runs: list[_Run] = []
    prev = None
    for pos in positions:
        ts = int(times[pos])
        if prev is not None and pos == prev + 1 and ts - runs[-1].last <= step:
            run = runs[-1]
            run.last, run.count = ts, run.count + 1
            if len(run.sample) < limit:
                run.sample.append(ts)
        else:
            runs.append(_Run(ts, ts, 1, [ts]))
        prev = pos
    return runs


# Off-calendar narrowing: a bucket holds at least this many bars and never less than a UTC day.
_BUCKET_BARS = 1024


def _bucket_ns(s: _Series) -> int:
    return max(NS_PER_DAY, _BUCKET_BARS * s.step_ns)


def _off_calendar_ranges(s: _Series, gaps: Sequence[tuple[sql.WindowRow, int, int, int]]) -> list[tuple[int, int]]:
    """The [lo, hi) ranges (ns) of the window whose stored times must be checked bar by bar.

    The count identity of ``_off_calendar_findings``, applied per epoch-aligned bucket instead of to
    the whole window: one GROUP BY returns the distinct stored times per bucket, the calendar says
    how many expected bars each bucket has and the gap step how many of those are missing; only
    buckets where stored != expected - missing hold off-calendar bars. Buckets holding an unaligned
    time (off-calendar by definition) are checked without asking the counts.
    """
    first, last, step = int(s.first_ts), int(s.last_ts), s.step_ns
    window = [(first, last + 1)]
    if first < 0 or (last - first) // step > _DENSE_LIMIT:
        return window  # pre-1970 (bucket arithmetic) or too long to materialise: check it all
    width = _bucket_ns(s)
    expected = _expected_ns(s.calendar, s.timeframe, first, last + 1, s.alignment)
    change = np.zeros(len(expected) + 1, dtype="int64")
    for row, missing, _, _ in gaps:
        if missing > 0:
            change[np.searchsorted(expected, row.pt, side="right")] += 1
            change[np.searchsorted(expected, row.ts, side="left")] -= 1
    present = expected[np.cumsum(change[:-1]) == 0]
    exp_buckets, exp_counts = np.unique(present // width, return_counts=True)
    got_buckets, got_counts = sql.bucket_counts(TABLE, s.symbol, s.timeframe, _dt(first), _dt(last),
                                                width // NS_PER_SECOND)
    buckets = np.union1d(exp_buckets, got_buckets)
    want = np.zeros(len(buckets), dtype="int64")
    have = np.zeros(len(buckets), dtype="int64")
    want[np.searchsorted(buckets, exp_buckets)] = exp_counts
    have[np.searchsorted(buckets, got_buckets)] = got_counts
    suspect = set(buckets[want != have].tolist())
    suspect.update(row.ts // width for row in s.rows if row.odd)
    if s.since_ns is not None:
        suspect = {b for b in suspect if (b + 1) * width > s.since_ns}  # nothing before since is reported
    ranges: list[tuple[int, int]] = []
    for b in sorted(suspect):
        lo, hi = max(first, b * width), min(last + 1, (b + 1) * width)
        if ranges and ranges[-1][1] == lo:
            ranges[-1] = (ranges[-1][0], hi)  # adjacent buckets: one range, so runs across them stay one
        else:
            ranges.append((lo, hi))
    return ranges


def _off_calendar_runs_streamed(s: _Series, ranges: Sequence[tuple[int, int]]) -> list[_Run]:
    """Stream the series' distinct times in the given ranges and check each against the calendar."""
    limit = int(s.th["sample_limit"])
    runs: list[_Run] = []
    for lo, hi in ranges:
        open_run = False  # the previous chunk of this range ended inside a run
        for times in sql.distinct_times(TABLE, s.symbol, s.timeframe, _dt(lo), end=_dt(hi)):
            off = ~is_expected_bar(s.calendar, s.timeframe, pd.to_datetime(times, utc=True), s.alignment)
            if s.since_ns is not None:
                off &= times >= s.since_ns
            positions = np.flatnonzero(off)
            chunk_runs = _runs_from_positions(times, positions, s.step_ns, limit)
            if (chunk_runs and open_run and positions[0] == 0
                    and chunk_runs[0].first - runs[-1].last <= s.step_ns):
                head, run = chunk_runs.pop(0), runs[-1]
                run.last, run.count = head.last, run.count + head.count
                run.sample.extend(head.sample[: max(0, limit - len(run.sample))])
            runs.extend(chunk_runs)
            open_run = bool(len(off)) and bool(off[-1])
    return runs


def _off_calendar_findings(scan: _Scan) -> list[Finding]:
    scan.window()
    gaps = scan.gap_stats()
    # The count identity, per (calendar, timeframe): stored - (expected - missing) = not expected.
    to_check: dict[tuple[str, str, str], list[_Series]] = defaultdict(list)
    narrowed: list[_Series] = []
    odd_runs: dict[int, list[_Run]] = {}
    for s in scan.series:
        if s.n_rows == 0 or s.first_ts is None:
            continue
        odd = [row for row in s.rows if row.odd]
        if s.calendar == CRYPTO_CALENDAR:
            # Every aligned bar is expected on 24/7: off-calendar means unaligned, already in hand.
            odd_runs[s.idx] = _odd_runs(s, odd)
        elif odd:
            narrowed.append(s)
        else:
            to_check[s.grid].append(s)
    for (calendar, timeframe, alignment), items in to_check.items():
        los = np.array([s.first_ts for s in items], dtype="int64")
        his = np.array([s.last_ts for s in items], dtype="int64")
        expected, _, _ = _expected_stats(calendar, timeframe, los, his, closed=True, alignment=alignment)
        for s, e in zip(items, expected, strict=True):
            stored = s.n_rows - sum(1 for row in s.rows if row.is_dup)
            missing = sum(n for _, n, _, _ in gaps.get(s.idx, ()))
            if stored - (int(e) - missing) != 0:
                narrowed.append(s)
    for s in narrowed:
        odd_runs[s.idx] = _off_calendar_runs_streamed(s, _off_calendar_ranges(s, gaps.get(s.idx, ())))

    findings = []
    for s in scan.series:
        for run in odd_runs.get(s.idx, ()):
            findings.append(s.finding(
                OFF_CALENDAR, Severity.MEDIUM,
                f"{_plural(run.count, s.timeframe)} stored outside the {s.calendar} calendar "
                f"{_span(run.first, run.last, s.timeframe)}",
                run.count, run.first, run.last, _iso(run.first),
                {"bars": run.count, "calendar": s.calendar, "sample": [_iso(t) for t in run.sample],
                 "truncated": run.count > len(run.sample)},
            ))
    return findings


def _odd_runs(s: _Series, odd: Sequence[sql.WindowRow]) -> list[_Run]:
    limit = int(s.th["sample_limit"])
    runs: list[_Run] = []
    prev: sql.WindowRow | None = None
    for row in odd:
        if not s.at_or_after_since(row.ts):
            continue
        if prev is not None and row.ts == prev.ts:
            prev = row
            continue  # a duplicate of the same bar
        if prev is not None and row.rn == prev.rn + 1 and row.ts - prev.ts <= s.step_ns:
            run = runs[-1]
            run.last, run.count = row.ts, run.count + 1
            if len(run.sample) < limit:
                run.sample.append(row.ts)
        else:
            runs.append(_Run(row.ts, row.ts, 1, [row.ts]))
        prev = row
    return runs


# --- outlier -----------------------------------------------------------------------------------


def _near(value: float, target: float, tolerance: float) -> bool:
    return target > 0 and abs(value / target - 1.0) <= tolerance


def _named_ratio(ratios: Sequence[float], th: dict) -> tuple[str, str, float] | None:
    """('unit_error' | 'split', description, ratio) when a price ratio is a telling one."""
    tol = float(th["outlier_ratio_tolerance"])
    for ratio in ratios:
        if not (ratio > 0 and math.isfinite(ratio)):
            continue
        for factor in th["outlier_unit_factors"]:
            if _near(ratio, factor, tol) or _near(ratio, 1.0 / factor, tol):
                return "unit_error", f"possible {factor:g}× unit error", ratio
    for ratio in ratios:
        if not (ratio > 0 and math.isfinite(ratio)):
            continue
        for k in th["outlier_split_ratios"]:
            if _near(ratio, 1.0 / k, tol):
                return "split", f"possible {k:g}:1 split", ratio
            if _near(ratio, k, tol):
                return "split", f"possible 1:{k:g} reverse split", ratio
    return None


def _pct(x: float) -> str:
    return f"{x * 100:+.1f}%"


class _Volatility:
    """Robust volatility per series: series_stats when known, else computed from its newest closes,
    for all the series that need one in a single query (``prefetch``)."""

    def __init__(self) -> None:
        self._cache: dict[int, float | None] = {}

    @staticmethod
    def _known(s: _Series) -> float | None:
        sigma = s.ctx.robust_volatility
        return sigma if sigma is not None and sigma > 0 and math.isfinite(sigma) else None

    def prefetch(self, series: Sequence[_Series]) -> None:
        todo = [s for s in series if s.idx not in self._cache and self._known(s) is None]
        by_sample: dict[int, list[_Series]] = defaultdict(list)
        for s in todo:
            by_sample[int(s.th["outlier_vol_sample"])].append(s)
        for sample, group in by_sample.items():
            found = sql.robust_volatilities(TABLE, [(s.idx, s.symbol, s.timeframe) for s in group], sample)
            for s in group:
                n, sigma = found.get(s.idx, (0, 0.0))
                usable = n >= max(2, int(s.th["outlier_min_bars"])) and sigma > 0 and math.isfinite(sigma)
                self._cache[s.idx] = sigma if usable else None

    def __call__(self, s: _Series) -> float | None:
        known = self._known(s)
        if known is not None:
            return known
        if s.idx not in self._cache:
            self.prefetch([s])
        return self._cache[s.idx]


def robust_volatility(symbol: str, timeframe: str, sample: int = 5000, min_returns: int = 30) -> float | None:
    """1.4826 × the median absolute deviation of the per-bar log returns of the newest ``sample``
    bars (the same estimate as ``series_stats.robust_volatility``): a volatility that a few bad ticks
    cannot inflate. None with fewer than ``min_returns`` returns."""
    n, sigma = sql.robust_volatilities(TABLE, [(0, symbol, timeframe)], sample).get(0, (0, 0.0))
    return sigma if n >= max(2, min_returns) and sigma > 0 else None


def _needs_volatility(s: _Series, row: sql.WindowRow) -> bool:
    """Whether judging the row may need the series' volatility (a small move that reverts)."""
    pc, c, nc = row.pc, row.close, row.nc
    if pc is None or nc is None or not (pc > 0 and c > 0) or c == pc:
        return False
    th = s.th
    return (abs(c - pc) <= float(th["outlier_move"]) * pc
            and abs(c / pc - 1.0) > float(th["outlier_vol_min_move"])
            and abs(nc - pc) <= float(th["outlier_revert_tolerance"]) * abs(c - pc))


def _judge_move(s: _Series, row: sql.WindowRow, volatility: _Volatility) -> tuple[str, str, dict] | None:
    """Severity, description and details of an outlier bar, or None if it is not one."""
    th = s.th
    pc, o, c, nc = row.pc, row.open, row.close, row.nc
    if pc is None or not (pc > 0 and math.isfinite(pc)) or not (c > 0 and math.isfinite(c)):
        return None
    move = float(th["outlier_move"])
    r_close, r_open = c / pc, o / pc if (o > 0 and math.isfinite(o)) else float("nan")
    big_close = abs(c - pc) > move * pc
    big_open = math.isfinite(r_open) and abs(o - pc) > move * pc
    reverts = (nc is not None and math.isfinite(nc) and c != pc
               and abs(nc - pc) <= float(th["outlier_revert_tolerance"]) * abs(c - pc))
    details = {"previous_close": _num(pc), "open": _num(o), "close": _num(c), "next_close": _num(nc),
               "close_change": r_close - 1.0, "open_change": None if math.isnan(r_open) else r_open - 1.0,
               "reverts": bool(reverts), "threshold": move}
    vol_spike = False
    if reverts and not big_close and abs(r_close - 1.0) > float(th["outlier_vol_min_move"]):
        sigma = volatility(s)
        if sigma:
            z = abs(math.log(r_close)) / sigma
            details.update(sigma=sigma, z=round(z, 2))
            vol_spike = z > float(th["outlier_robust_z"])
    if not (big_close or big_open or vol_spike):
        return None

    named = _named_ratio([r for r in (r_open, r_close) if math.isfinite(r)], th)
    if named and named[0] == "unit_error":
        cause, label, ratio = named
        text = f"{label}: price ×{ratio:.4g} vs previous close"
        if reverts:
            text += ", back the next bar (spike that reverts, likely bad tick)"
        details.update(cause=cause, ratio=ratio)
        return Severity.CRITICAL, text, details
    if reverts and (big_close or vol_spike):
        details["cause"] = "bad_tick"
        text = (f"spike that reverts (likely bad tick): close {_pct(r_close - 1.0)} vs previous close, "
                f"next close back within {abs(nc / pc - 1.0) * 100:.2f}%")
        if vol_spike and not big_close:
            text += f" ({details['z']:.0f} sigma)"
            return Severity.MEDIUM, text, details
        return Severity.HIGH, text, details
    if named:
        cause, label, ratio = named
        details.update(cause=cause, ratio=ratio)
        return Severity.HIGH, f"{label}: price ×{ratio:.4g} vs previous close (unadjusted history?)", details
    details["cause"] = "move"
    which = []
    if big_close:
        which.append(f"close {_pct(r_close - 1.0)}")
    if big_open:
        which.append(f"open {_pct(r_open - 1.0)}")
    return Severity.HIGH, f"{' and '.join(which)} vs previous close (threshold {move:.0%})", details


def _outlier_findings(scan: _Scan) -> list[Finding]:
    scan.window()
    volatility = _Volatility()
    volatility.prefetch([s for s in scan.series if any(_needs_volatility(s, row) for row in s.rows)])
    findings = []
    for s in scan.series:
        explained: int | None = None  # ts of a reverting spike: the next bar's move is its reversal
        for row in s.rows:
            # Non-positive or non-finite prices are invalid_ohlc's business (_judge_move skips them).
            if row.pc is None or row.is_dup or not s.at_or_after_since(row.ts):
                continue
            if explained is not None and row.pt == explained:
                explained = None
                continue
            judged = _judge_move(s, row, volatility)
            if judged is None:
                continue
            severity, text, details = judged
            if details.get("reverts"):
                explained = row.ts
            details["bar"] = _iso(row.ts)
            findings.append(s.finding(OUTLIER, severity, f"{_fmt(row.ts, s.timeframe)}: {text}", 1,
                                      row.ts, row.ts, _iso(row.ts), details))
    return findings


# --- invalid_ohlc ------------------------------------------------------------------------------


def _broken_rules(o: float, h: float, lo: float, c: float, v: float) -> list[str]:
    """The validation module's reason codes that a stored row breaks."""
    values = (o, h, lo, c, v)
    if any(x is None or not math.isfinite(x) for x in values):
        return ["non_finite"]
    reasons = []
    if min(o, h, lo, c) <= 0:
        reasons.append("non_positive_price")
    if h < lo:
        reasons.append("high_below_low")
    if h < max(o, c):
        reasons.append("high_below_open_close")
    if lo > min(o, c):
        reasons.append("low_above_open_close")
    if v < 0:
        reasons.append("negative_volume")
    return reasons


def _invalid_findings(scan: _Scan) -> list[Finding]:
    scan.window()
    per_series = {s.idx: [r for r in s.rows if r.bad and s.at_or_after_since(r.ts)] for s in scan.series}
    fetch = [r.id for rows in per_series.values() for r in rows[:_INVALID_FETCH_LIMIT]]
    values = {r[0]: r for r in sql.rows_by_id(TABLE, fetch)} if fetch else {}
    findings = []
    for s in scan.series:
        rows = per_series[s.idx]
        if not rows:
            continue
        limit = int(s.th["sample_limit"])
        reasons: dict[str, int] = defaultdict(int)
        sample = []
        for row in rows[:_INVALID_FETCH_LIMIT]:
            stored = values.get(row.id)
            if stored is None:
                continue  # deleted since the window pass
            _, ts, o, h, lo, c, v = stored
            broken = _broken_rules(o, h, lo, c, v)
            for reason in broken:
                reasons[reason] += 1
            if len(sample) < limit:
                sample.append({"id": row.id, "ts": _iso(ts), "open": _num(o), "high": _num(h), "low": _num(lo),
                               "close": _num(c), "volume": _num(v), "reasons": broken})
        count = len(rows)
        summary = ", ".join(f"{k} ×{n}" for k, n in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])))
        first, last = rows[0].ts, rows[-1].ts
        findings.append(s.finding(
            INVALID_OHLC, Severity.HIGH,
            f"{_plural(count, s.timeframe, 'stored bar')} break OHLC rules {_span(first, last, s.timeframe)}"
            + (f" ({summary})" if summary else ""),
            count, first, last, "stored",
            {"rows": count, "reasons": dict(reasons), "sample": sample, "truncated": count > len(sample),
             "reasons_counted_over": min(count, _INVALID_FETCH_LIMIT)},
        ))
    return findings


# --- duplicate ---------------------------------------------------------------------------------


def _duplicate_findings(scan: _Scan) -> list[Finding]:
    # (idx, ts) -> rows in the group
    groups: dict[int, dict[int, int]] = defaultdict(dict)
    from_window = [s for s in scan.series if s.ctx.since is None and scan._window_done]
    for s in from_window:
        for row in s.rows:
            if row.is_dup:
                groups[s.idx][row.ts] = groups[s.idx].get(row.ts, 1) + 1
    window_idx = {s.idx for s in from_window}
    rest = [(s.idx, s.symbol, s.timeframe) for s in scan.series if s.idx not in window_idx]
    for idx, ts, n in sql.duplicate_groups(TABLE, rest):
        groups[idx][ts] = n

    sampled = []
    for s in scan.series:
        limit = int(s.th["sample_limit"])
        for ts in sorted(groups.get(s.idx, {}))[:limit]:
            sampled.append((s.idx, s.symbol, s.timeframe, _dt(ts)))
    ids = sql.group_ids(TABLE, sampled)

    findings = []
    for s in scan.series:
        series_groups = groups.get(s.idx)
        if not series_groups:
            continue
        times = sorted(series_groups)
        extra = sum(n - 1 for n in series_groups.values())
        limit = int(s.th["sample_limit"])
        listed = [{"ts": _iso(t), "count": series_groups[t], "ids": ids.get((s.idx, t), [])} for t in times[:limit]]
        findings.append(s.finding(
            DUPLICATE, Severity.MEDIUM,
            f"{len(times)} {s.timeframe} bar time{'' if len(times) == 1 else 's'} stored more than once "
            f"({extra} extra row{'' if extra == 1 else 's'}) {_span(times[0], times[-1], s.timeframe)}",
            extra, times[0], times[-1], "duplicates",
            {"groups": len(times), "extra_rows": extra, "sample": listed, "truncated": len(times) > limit},
        ))
    return findings


# --- stale -------------------------------------------------------------------------------------


def _stale_findings(scan: _Scan) -> list[Finding]:
    series = scan.series
    last = scan.last_bars()
    now = scan.now
    now_ns = sql.ns_value(now)
    completed: dict[tuple[tuple[str, str, str], float], int | None] = {}

    def newest_complete(s: _Series, hours: float) -> int | None:
        key = (s.grid, hours)
        if key not in completed:
            bar = last_completed_bar(s.calendar, s.timeframe, now - timedelta(hours=hours), s.alignment)
            completed[key] = sql.ns_value(bar)
        return completed[key]

    # Stale when a bar newer than the last stored one was already complete stale_hours ago: the
    # lateness is measured from when data became due, so closed markets never count.
    stale: dict[tuple[str, str, str], list[tuple[_Series, int, int]]] = defaultdict(list)
    for s in series:
        last_ns = last.get(s.idx)
        if last_ns is None:
            continue  # never loaded: the backfill's business, not a stale series
        due = newest_complete(s, float(s.th["stale_hours"]))
        if due is None or due <= last_ns:
            continue
        stale[s.grid].append((s, last_ns, newest_complete(s, 0.0)))

    findings: list[tuple[int, Finding]] = []
    for (calendar, timeframe, alignment), items in stale.items():
        lasts = np.array([item[1] for item in items], dtype="int64")
        expected_last = np.array([item[2] for item in items], dtype="int64")
        between, firsts, _ = _expected_stats(calendar, timeframe, lasts, expected_last, closed=False,
                                             alignment=alignment)
        for (s, last_ns, newest), n, first in zip(items, between, firsts, strict=True):
            missing = int(n) + 1  # strictly between, plus the newest expected bar itself
            first = int(first) if n else newest
            age_hours = (now_ns - (last_ns + s.step_ns)) / NS_PER_HOUR
            severity = _missing_severity(missing, s, first)
            if severity == Severity.LOW:
                severity = Severity.MEDIUM
            findings.append((s.idx, s.finding(
                STALE, severity,
                f"no new {s.timeframe} bar since {_fmt(last_ns, s.timeframe)} ({age_hours:.1f} h): "
                f"{_plural(missing, s.timeframe, 'expected bar')} missing, the newest "
                f"{_fmt(newest, s.timeframe)}",
                missing, first, newest, _iso(last_ns),
                {"hours_stale": round(age_hours, 2), "last_bar": _iso(last_ns),
                 "expected_last_bar": _iso(newest), "missing_bars": missing,
                 "threshold_hours": float(s.th["stale_hours"]), "calendar": s.calendar},
            )))
    return [finding for _, finding in sorted(findings, key=lambda pair: pair[0])]


# --- entry points ------------------------------------------------------------------------------

_BUILDERS: dict[str, Callable[[_Scan], list[Finding]]] = {
    GAP: _gap_findings,
    OFF_CALENDAR: _off_calendar_findings,
    OUTLIER: _outlier_findings,
    STALE: _stale_findings,
    INVALID_OHLC: _invalid_findings,
    DUPLICATE: _duplicate_findings,
}


def _types(types: Iterable[str] | None) -> set[str]:
    if types is None:
        return set(DETECTOR_TYPES)
    wanted = {str(t) for t in types}
    unknown = sorted(wanted - set(DETECTOR_TYPES))
    if unknown:
        raise ValueError(f"unknown anomaly type(s) {', '.join(unknown)}; expected {', '.join(DETECTOR_TYPES)}")
    return wanted


def run_detectors(contexts: Sequence[SeriesContext], types: Iterable[str] | None = None,
                  now: datetime | None = None,
                  newest: Mapping[tuple[str, str], datetime | None] | None = None) -> list[Finding]:
    """Run the detectors of ``types`` (default: all) over the series, sharing one window pass.

    ``newest``: the newest stored bar per (symbol, timeframe) when the caller already read it (None:
    no bar); series not in it are probed. Findings come grouped by type in ``DETECTOR_TYPES``
    order, then by series as given, then by time.
    """
    wanted = _types(types)
    scan = _Scan(contexts, now or timezone.now(), wanted, newest)
    if not scan.series:
        return []
    if wanted & {GAP, OFF_CALENDAR, OUTLIER, INVALID_OHLC}:
        scan.window()
    findings: list[Finding] = []
    for anomaly_type in DETECTOR_TYPES:
        if anomaly_type in wanted:
            findings.extend(_BUILDERS[anomaly_type](scan))
    return findings


def detect_gaps(contexts: Sequence[SeriesContext], now: datetime | None = None) -> list[Finding]:
    """Expected bars missing between stored bars: one finding per run of consecutive missing bars."""
    return run_detectors(contexts, [GAP], now)


def detect_off_calendar(contexts: Sequence[SeriesContext], now: datetime | None = None) -> list[Finding]:
    """Stored bars at times the calendar says are closed (or unaligned): one finding per run."""
    return run_detectors(contexts, [OFF_CALENDAR], now)


def detect_outliers(contexts: Sequence[SeriesContext], now: datetime | None = None) -> list[Finding]:
    """Moves beyond the threshold and bad ticks caught by the series' own volatility."""
    return run_detectors(contexts, [OUTLIER], now)


def detect_stale(contexts: Sequence[SeriesContext], now: datetime | None = None) -> list[Finding]:
    """Series whose next bar has been due for more than stale_hours (calendar-aware)."""
    return run_detectors(contexts, [STALE], now)


def detect_invalid_ohlc(contexts: Sequence[SeriesContext], now: datetime | None = None) -> list[Finding]:
    """Stored rows breaking OHLC invariants: one finding per series."""
    return run_detectors(contexts, [INVALID_OHLC], now)


def detect_duplicates(contexts: Sequence[SeriesContext], now: datetime | None = None) -> list[Finding]:
    """(symbol, timeframe, ts) stored more than once: one finding per series (whole series)."""
    return run_detectors(contexts, [DUPLICATE], now)


DETECTORS: dict[str, Callable[..., list[Finding]]] = {
    GAP: detect_gaps,
    OFF_CALENDAR: detect_off_calendar,
    OUTLIER: detect_outliers,
    STALE: detect_stale,
    INVALID_OHLC: detect_invalid_ohlc,
    DUPLICATE: detect_duplicates,
}
