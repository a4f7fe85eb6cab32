"""duplicate: (symbol, timeframe, ts) stored more than once, one finding per series; severity medium.

Judged on the whole series (other writers can store a duplicate anywhere in history): a full scan
gets the groups from the window pass for free, an incremental one runs one GROUP BY per series —
from the re-read window's start when the series has no unresolved duplicate anomaly, else over its
whole history. Bounding it is exact: the last scan found no duplicate older than the window (or a
cleanup removed them), and every row written since has a new id, which puts its bar time inside the
window (``quality.plan`` starts the window at the oldest such row); so the check grows with what
changed, not with the series' history (bench/bench_scale.py).
"""

from __future__ import annotations

from collections import defaultdict

from ...models import DataAnomaly, Severity
from ...timeframes import bar_span, iso, ns_to_datetime
from .. import sql
from ..findings import Finding
from ..record import UNRESOLVED
from .scan import DUPLICATE, TABLE, Scan


def _with_unresolved_duplicates(symbols: set[str]) -> set[tuple[str, str]]:
    """The series among ``symbols``' that have an unresolved duplicate anomaly (judged whole)."""
    if not symbols:
        return set()
    anomalies = DataAnomaly.objects.filter(anomaly_type=DUPLICATE, resolution_status__in=UNRESOLVED)
    if len(symbols) <= 500:
        anomalies = anomalies.filter(symbol__in=symbols)
    return set(anomalies.values_list("symbol", "timeframe"))


def findings(scan: Scan) -> list[Finding]:
    # (idx, ts) -> rows in the group
    groups: dict[int, dict[int, int]] = defaultdict(dict)
    from_window = [s for s in scan.series if s.ctx.since is None and scan._window_done]
    for s in from_window:
        for row in s.rows:
            if row.is_dup:
                groups[s.idx][row.ts] = groups[s.idx].get(row.ts, 1) + 1
    window_idx = {s.idx for s in from_window}
    rest = [s for s in scan.series if s.idx not in window_idx]
    held = _with_unresolved_duplicates({s.symbol for s in rest if s.ctx.since is not None})
    rest = [(s.idx, s.symbol, s.timeframe, None if (s.symbol, s.timeframe) in held else s.ctx.since) for s in rest]
    for idx, ts, n in sql.duplicate_groups(TABLE, rest):
        groups[idx][ts] = n

    sampled = []
    for s in scan.series:
        limit = int(s.th["sample_limit"])
        for ts in sorted(groups.get(s.idx, {}))[:limit]:
            sampled.append((s.idx, s.symbol, s.timeframe, ns_to_datetime(ts)))
    ids = sql.group_ids(TABLE, sampled)

    found = []
    for s in scan.series:
        series_groups = groups.get(s.idx)
        if not series_groups:
            continue
        times = sorted(series_groups)
        extra = sum(n - 1 for n in series_groups.values())
        limit = int(s.th["sample_limit"])
        listed = [{"ts": iso(t), "count": series_groups[t], "ids": ids.get((s.idx, t), [])} for t in times[:limit]]
        found.append(s.finding(
            DUPLICATE, Severity.MEDIUM,
            f"{len(times)} {s.timeframe} bar time{'' if len(times) == 1 else 's'} stored more than once "
            f"({extra} extra row{'' if extra == 1 else 's'}) {bar_span(times[0], times[-1], s.timeframe)}",
            extra, times[0], times[-1], "duplicates",
            {"groups": len(times), "extra_rows": extra, "sample": listed, "truncated": len(times) > limit},
        ))
    return found
