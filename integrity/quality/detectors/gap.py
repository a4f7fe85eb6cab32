"""gap: expected bars missing between stored bars, one finding per run of consecutive missing bars.

Severity: 1 missing bar low; >= gap_medium_bars medium; >= gap_high_days trading days of bars
high; >= gap_critical_days trading days critical. Reported when the interval ends at or after
``ctx.since``.
"""

from __future__ import annotations

from ...timeframes import bar_span, iso
from ..findings import Finding
from .scan import GAP, Scan, Series, missing_severity


def _merged_gaps(s: Series, stats) -> list[tuple[int, int, int, int, int]]:
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


def findings(scan: Scan) -> list[Finding]:
    found = []
    for s in scan.series:
        for previous, following, missing, first, last in _merged_gaps(s, scan.gap_stats().get(s.idx, ())):
            severity = missing_severity(missing, s, first)
            found.append(s.finding(
                GAP, severity,
                f"{missing} missing {s.timeframe} bar{'' if missing == 1 else 's'} {bar_span(first, last, s.timeframe)}",
                missing, first, last, iso(first),
                {"missing_bars": missing, "previous_bar": iso(previous), "next_bar": iso(following),
                 "first_missing": iso(first), "last_missing": iso(last), "calendar": s.calendar},
            ))
    return found
