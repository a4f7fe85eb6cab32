"""gap: expected bars missing between stored bars, one finding per run of consecutive missing bars.

Severity by the trading time the missing bars cover (``quality.trading_time``), so a missing whole
session is the same severity on 1d and 1h. Reported when the interval ends at or after ``ctx.since``.

Bars refused at ingest (``rejected_candles``) are not gaps twice: a run whose every missing bar was
quarantined is the backfill's ``invalid_ohlc`` finding and is not reported here; a run only partly
made of quarantined bars is reported with ``details["caused_by"]`` naming those findings.
"""

from __future__ import annotations

import numpy as np

from ...calendars import is_expected_bar
from ...models import AnomalyType
from ...timeframes import bar_span, iso, ns_to_datetime
from ..findings import Finding, fingerprint
from ..quarantine import quarantined_in
from ..trading_time import gap_severity, trading_days
from .scan import GAP, Scan, Series


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


def _rejected_in_runs(runs: list[tuple[Series, tuple]]) -> dict[int, tuple[int, list[str]]]:
    """Run index -> (missing bars quarantined at ingest, the executions that refused them)."""
    found = quarantined_in([(i, s.symbol, s.timeframe, ns_to_datetime(run[3]), ns_to_datetime(run[4]))
                            for i, (s, run) in enumerate(runs)])
    result = {}
    for i, hits in found.items():
        s = runs[i][0]
        times = np.array([ts for ts, _ in hits], dtype="int64")
        expected = is_expected_bar(s.calendar, s.timeframe, times.view("M8[ns]"), s.alignment)
        executions = list(dict.fromkeys(e for (_, e), ok in zip(hits, expected, strict=True) if ok))
        if executions:
            result[i] = (int(expected.sum()), executions)
    return result


def findings(scan: Scan) -> list[Finding]:
    runs = [(s, run) for s in scan.series for run in _merged_gaps(s, scan.gap_stats().get(s.idx, ()))]
    days = trading_days([(s.calendar, s.timeframe, s.alignment, run[2], run[3], run[4]) for s, run in runs])
    rejected = _rejected_in_runs(runs)
    found = []
    for i, (s, (previous, following, missing, first, last)) in enumerate(runs):
        quarantined, executions = rejected.get(i, (0, []))
        if quarantined >= missing:
            continue  # every missing bar was refused at ingest: the invalid_ohlc finding's hole
        details = {"missing_bars": missing, "previous_bar": iso(previous), "next_bar": iso(following),
                   "first_missing": iso(first), "last_missing": iso(last), "calendar": s.calendar,
                   "trading_days": round(days[i], 4)}
        description = (f"{missing} missing {s.timeframe} bar{'' if missing == 1 else 's'} "
                       f"{bar_span(first, last, s.timeframe)}")
        if quarantined:
            description += f" ({quarantined} of them refused at ingest: see the invalid_ohlc finding)"
            details["rejected_bars"] = quarantined
            details["caused_by"] = [
                {"anomaly_type": AnomalyType.INVALID_OHLC.value, "execution_id": e,
                 "fingerprint": fingerprint(AnomalyType.INVALID_OHLC.value, s.symbol, s.timeframe, execution_id=e)}
                for e in executions]
        found.append(s.finding(GAP, gap_severity(days[i], missing, s.th), description,
                               missing, first, last, iso(first), details))
    return found
