"""off_calendar: stored bars at times the calendar says are closed (or unaligned), one finding
per run of adjacent such bars; severity medium.

Found without reading every timestamp: with N distinct stored bars in the window [first, last], E
expected bars in it and M expected bars missing (from the gap step), N - (E - M) stored bars are not
expected. Only a series where that is non-zero (or which has unaligned times) looks closer: the same
identity per bucket (a UTC day, or 1024 bars when longer) from one GROUP BY, and only the timestamps
of buckets where it fails are read and checked bar by bar, never the whole series.

Closures (``Series.closures``) only remove expectations: the counts above use them (as the gap step
does), but a stored bar is judged against the calendar alone, so a bar stored inside a recorded
closure (a thin Christmas quote) is not off-calendar; only a bar the calendar itself closes is.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ...calendars import CRYPTO_CALENDAR, counting, expected_ns, expected_stats, is_expected_bar
from ...models import Severity
from ...timeframes import NS_PER_DAY, NS_PER_SECOND, bar_span, iso, ns_to_datetime
from .. import sql, window
from ..findings import Finding
from .scan import OFF_CALENDAR, TABLE, Scan, Series, plural


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


def _bucket_ns(s: Series) -> int:
    return max(NS_PER_DAY, _BUCKET_BARS * s.step_ns)


def _off_calendar_ranges(s: Series, gaps: Sequence[tuple[window.WindowRow, int, int, int]]) -> list[tuple[int, int]]:
    """The [lo, hi) ranges (ns) of the window whose stored times must be checked bar by bar.

    The count identity of ``_off_calendar_findings``, applied per epoch-aligned bucket instead of to
    the whole window: one GROUP BY returns the distinct stored times per bucket, the calendar says
    how many expected bars each bucket has and the gap step how many of those are missing; only
    buckets where stored != expected - missing hold off-calendar bars. Buckets holding an unaligned
    time (off-calendar by definition) are checked without asking the counts.
    """
    first, last, step = int(s.first_ts), int(s.last_ts), s.step_ns
    window = [(first, last + 1)]
    if first < 0 or (last - first) // step > counting.DENSE_LIMIT:
        return window  # pre-1970 (bucket arithmetic) or too long to materialise: check it all
    width = _bucket_ns(s)
    expected = expected_ns(s.calendar, s.timeframe, first, last + 1, s.alignment, s.closures)
    change = np.zeros(len(expected) + 1, dtype="int64")
    for row, missing, _, _ in gaps:
        if missing > 0:
            change[np.searchsorted(expected, row.pt, side="right")] += 1
            change[np.searchsorted(expected, row.ts, side="left")] -= 1
    present = expected[np.cumsum(change[:-1]) == 0]
    exp_buckets, exp_counts = np.unique(present // width, return_counts=True)
    got_buckets, got_counts = sql.bucket_counts(TABLE, s.symbol, s.timeframe, ns_to_datetime(first), ns_to_datetime(last),
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


def _off_calendar_runs_streamed(s: Series, ranges: Sequence[tuple[int, int]]) -> list[_Run]:
    """Stream the series' distinct times in the given ranges and check each against the calendar."""
    limit = int(s.th["sample_limit"])
    runs: list[_Run] = []
    for lo, hi in ranges:
        open_run = False  # the previous chunk of this range ended inside a run
        for times in sql.distinct_times(TABLE, s.symbol, s.timeframe, ns_to_datetime(lo), end=ns_to_datetime(hi)):
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


def findings(scan: Scan) -> list[Finding]:
    scan.window()
    gaps = scan.gap_stats()
    # The count identity, per (calendar, timeframe): stored - (expected - missing) = not expected.
    to_check: dict[tuple, list[Series]] = defaultdict(list)
    narrowed: list[Series] = []
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
            to_check[s.closed_grid].append(s)
    for (calendar, timeframe, alignment, closures), items in to_check.items():
        los = np.array([s.first_ts for s in items], dtype="int64")
        his = np.array([s.last_ts for s in items], dtype="int64")
        expected, _, _ = expected_stats(calendar, timeframe, los, his, closed=True, alignment=alignment,
                                        closures=closures)
        for s, e in zip(items, expected, strict=True):
            stored = s.n_rows - sum(1 for row in s.rows if row.is_dup)
            missing = sum(n for _, n, _, _ in gaps.get(s.idx, ()))
            if stored - (int(e) - missing) != 0:
                narrowed.append(s)
    for s in narrowed:
        odd_runs[s.idx] = _off_calendar_runs_streamed(s, _off_calendar_ranges(s, gaps.get(s.idx, ())))

    found = []
    for s in scan.series:
        for run in odd_runs.get(s.idx, ()):
            found.append(s.finding(
                OFF_CALENDAR, Severity.MEDIUM,
                f"{plural(run.count, s.timeframe)} stored outside the {s.calendar} calendar "
                f"{bar_span(run.first, run.last, s.timeframe)}",
                run.count, run.first, run.last, iso(run.first),
                {"bars": run.count, "calendar": s.calendar, "sample": [iso(t) for t in run.sample],
                 "truncated": run.count > len(run.sample)},
            ))
    return found


def _odd_runs(s: Series, odd: Sequence[window.WindowRow]) -> list[_Run]:
    limit = int(s.th["sample_limit"])
    runs: list[_Run] = []
    prev: window.WindowRow | None = None
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
