"""stale: series whose next bar has been due for more than stale_hours (calendar-aware), judged on
the whole series from its newest stored bar. Severity: the gap ladder applied to the bars missing
since the last stored one, at least medium.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import timedelta

import numpy as np

from ...calendars import expected_stats, last_completed_bar
from ...models import Severity
from ...timeframes import NS_PER_HOUR, bar_label, iso
from .. import sql
from ..findings import Finding
from .scan import STALE, Scan, Series, missing_severity, plural


def findings(scan: Scan) -> list[Finding]:
    series = scan.series
    last = scan.last_bars()
    now = scan.now
    now_ns = sql.ns_value(now)
    completed: dict[tuple[tuple[str, str, str], float], int | None] = {}

    def newest_complete(s: Series, hours: float) -> int | None:
        key = (s.grid, hours)
        if key not in completed:
            bar = last_completed_bar(s.calendar, s.timeframe, now - timedelta(hours=hours), s.alignment)
            completed[key] = sql.ns_value(bar)
        return completed[key]

    # Stale when a bar newer than the last stored one was already complete stale_hours ago: the
    # lateness is measured from when data became due, so closed markets never count.
    stale: dict[tuple[str, str, str], list[tuple[Series, int, int]]] = defaultdict(list)
    for s in series:
        last_ns = last.get(s.idx)
        if last_ns is None:
            continue  # never loaded: the backfill's business, not a stale series
        due = newest_complete(s, float(s.th["stale_hours"]))
        if due is None or due <= last_ns:
            continue
        stale[s.grid].append((s, last_ns, newest_complete(s, 0.0)))

    found: list[tuple[int, Finding]] = []
    for (calendar, timeframe, alignment), items in stale.items():
        lasts = np.array([item[1] for item in items], dtype="int64")
        expected_last = np.array([item[2] for item in items], dtype="int64")
        between, firsts, _ = expected_stats(calendar, timeframe, lasts, expected_last, closed=False,
                                             alignment=alignment)
        for (s, last_ns, newest), n, first in zip(items, between, firsts, strict=True):
            missing = int(n) + 1  # strictly between, plus the newest expected bar itself
            first = int(first) if n else newest
            age_hours = (now_ns - (last_ns + s.step_ns)) / NS_PER_HOUR
            severity = missing_severity(missing, s, first)
            if severity == Severity.LOW:
                severity = Severity.MEDIUM
            found.append((s.idx, s.finding(
                STALE, severity,
                f"no new {s.timeframe} bar since {bar_label(last_ns, s.timeframe)} ({age_hours:.1f} h): "
                f"{plural(missing, s.timeframe, 'expected bar')} missing, the newest "
                f"{bar_label(newest, s.timeframe)}",
                missing, first, newest, iso(last_ns),
                {"hours_stale": round(age_hours, 2), "last_bar": iso(last_ns),
                 "expected_last_bar": iso(newest), "missing_bars": missing,
                 "threshold_hours": float(s.th["stale_hours"]), "calendar": s.calendar},
            )))
    return [finding for _, finding in sorted(found, key=lambda pair: pair[0])]
