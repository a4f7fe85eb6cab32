"""stale: series whose due bars are missing for longer than the grace, judged at the scan's as-of by
the one definition in ``integrity.staleness`` (calendar, availability delay, backfill schedule), from
each series' newest stored bar (one index probe per series, shared by the scan). A series never
loaded is the backfill's business and is skipped. Severity: the gap ladder applied to the bars
missing up to the expected one, at least medium.
"""

from __future__ import annotations

from ...models import Severity
from ...staleness import Judge, SeriesState
from ...timeframes import bar_label, iso, ns_to_datetime
from .. import sql
from ..findings import Finding
from .scan import STALE, Scan, missing_severity, plural


def findings(scan: Scan) -> list[Finding]:
    last = scan.last_bars()
    loaded = [s for s in scan.series if s.idx in last]
    states = [SeriesState(s.calendar, s.timeframe, s.alignment, s.ctx.asset_class,
                          s.ctx.availability_delay_minutes, ns_to_datetime(last[s.idx]), s.closures)
              for s in loaded]
    found: list[Finding] = []
    for s, verdict in zip(loaded, Judge(scan.now).judge_many(states), strict=True):
        if verdict is None or not verdict.stale:
            continue
        last_ns = last[s.idx]
        first = sql.ns_value(verdict.first_missing)
        newest = sql.ns_value(verdict.expected_bar)
        missing = verdict.missing_bars
        severity = missing_severity(missing, s, first)
        if severity == Severity.LOW:
            severity = Severity.MEDIUM
        lag = verdict.lag_hours
        found.append(s.finding(
            STALE, severity,
            f"no new {s.timeframe} bar since {bar_label(last_ns, s.timeframe)}: "
            f"{plural(missing, s.timeframe, 'due bar')} missing, the newest {bar_label(newest, s.timeframe)}; "
            f"due at the {verdict.due_at:%Y-%m-%d %H:%M} UTC backfill, {lag:.1f} h ago",
            missing, first, newest, iso(last_ns),
            {**verdict.details(), "hours_stale": round(lag, 2), "expected_last_bar": iso(newest),
             "missing_bars": missing, "calendar": s.calendar},
        ))
    return found
