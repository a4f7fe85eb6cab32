"""Detection runs: the detectors over the watchlist, their findings recorded as ``data_anomalies``
rows (``quality.record``: idempotent by fingerprint, auto-resolved when no longer found), the scan
planned and its watermarks left by ``quality.plan``.

``full=True`` rescans every series, whole.

Incremental detection (the default, what the health job runs) costs what changed, not the history:

- Stale is judged for every series on every scan (time-dependent; one newest-bar statement for
  the watchlist, or the caller's ``newest_bars``).
- The window detectors (gap, off_calendar, outlier, invalid_ohlc) and the duplicate check run only
  on series that changed since their last scan (``plan.plan_scan``): never scanned; candle rows with an
  id above the series' watermark (``series_stats.last_scanned_id``, the largest candle id when its
  last scan began) — any writer, any place in history, so a legacy loader's bars and a duplicate
  written in old history are found; or a backfill of the series in progress, or updated, at or after
  its last scan began (``last_scan_started_at``; our backfill revises bars in place without new
  ids, and a backfill still writing during a scan makes the series changed for the next one too).
  A changed series is read from its last scanned bar minus an overlap (window checks need
  neighbours), widened to its oldest new row (or the backfill's range start) and to every anomaly
  still unresolved, so fixed problems (a back-filled gap) are noticed. Duplicates are looked for in
  the same window (every row written since has its bar time there), or on the whole changed series
  while it has an unresolved duplicate anomaly (whose finding counts every group).
- An unchanged series is not read at all and its window/duplicate anomalies stay as they are.

What only ``full=True`` finds: rows deleted from, or updated in place in, history by another writer
(no new id, no backfill record); changed thresholds, calendars or robust volatility applied to
unchanged series; and, rarely, rows of a transaction that committed after a scan began with a
smaller id than one already committed (ids are allocated before commit) — our own backfill is
covered by the backfill rule above. A scan restricted to some ``types`` does not move the
watermarks (it has not looked for the other types in the new rows).
"""
from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.utils import timezone

from ..series import newest_bars_of
from . import detectors
from .detectors import DETECTORS, STALE
from .findings import Finding, as_json
from .plan import advance_unchanged, mark_scanned, plan_scan
from .record import drop_dismissed, record_findings
from .thresholds import series_contexts

logger = logging.getLogger(__name__)


@dataclass
class DetectionResult:
    dry_run: bool
    full: bool
    series_scanned: int = 0  # series judged (stale: all of them)
    series_rescanned: int = 0  # series whose window and duplicate detectors ran (changed ones)
    findings: list[Finding] = field(default_factory=list)
    created: int = 0
    updated: int = 0
    resolved: int = 0
    dismissed: int = 0  # findings of problems resolved for good (a sticky reason): not recorded
    new_anomaly_ids: list[int] = field(default_factory=list)

    def by_severity(self) -> dict[str, int]:
        counts: dict[str, int] = defaultdict(int)
        for finding in self.findings:
            counts[finding.severity] += 1
        return dict(counts)

    def by_type(self) -> dict[str, int]:
        counts: dict[str, int] = defaultdict(int)
        for finding in self.findings:
            counts[finding.anomaly_type] += 1
        return dict(counts)

    @property
    def found(self) -> int:
        return len(self.findings)

    def as_dict(self) -> dict[str, Any]:
        counts = as_json(self, ("dry_run", "full", "series_scanned", "series_rescanned", "found", "created",
                                "updated", "resolved", "dismissed"))
        return {**counts, "by_type": self.by_type(), "by_severity": self.by_severity()}


def detect_data_anomalies(
    symbol: str | None = None,
    timeframe: str | None = None,
    types: list[str] | None = None,
    dry_run: bool = False,
    full: bool = False,
    now: datetime | None = None,
    newest_bars: Mapping[tuple[str, str], datetime | None] | None = None,
) -> DetectionResult:
    """Run the detectors over the watchlist's series and record what they find.

    Incremental (the default): the window detectors and the duplicate check run on the series that
    changed since their last scan (``plan_scan``); stale is judged for every series. ``newest_bars``:
    the newest stored bar per series when the caller has just read it (the health job does).
    """
    if types:
        unknown = sorted(set(types) - set(DETECTORS))
        if unknown:
            raise ValueError(f"unknown anomaly type(s) {', '.join(unknown)}; expected {', '.join(DETECTORS)}")
    now = now or timezone.now()
    contexts = series_contexts(symbol=symbol, timeframe=timeframe)
    plan = plan_scan(contexts, full, types)
    evaluated = list(dict.fromkeys(types)) if types else list(DETECTORS)
    window_types = [t for t in evaluated if t != STALE]
    # Where each series ended when the scan began (one statement for the series the caller did not
    # give): bars written while it runs are newer, so the next scan still covers them.
    newest: dict[tuple[str, str], datetime | None] = dict(newest_bars or {})
    missing = [c for c in contexts if (c.symbol, c.timeframe) not in newest]
    if missing and (STALE in evaluated or (plan.changed and not dry_run)):
        newest.update(newest_bars_of([(c.symbol, c.timeframe) for c in missing]))
    findings: list[Finding] = []
    if window_types and plan.changed:
        findings.extend(detectors.run_detectors(plan.changed, types=window_types, now=now, newest=newest))
    if STALE in evaluated:
        findings.extend(detectors.run_detectors(contexts, types=[STALE], now=now, newest=newest))
    order = {t: i for i, t in enumerate(DETECTORS)}
    findings.sort(key=lambda f: order[f.anomaly_type])  # stable: by type, then series, then time
    result = DetectionResult(dry_run=dry_run, full=full, series_scanned=len(contexts), findings=findings,
                             series_rescanned=len(plan.changed))
    if dry_run:
        drop_dismissed(result)
    if dry_run or not contexts:
        return result
    changed_keys = {(c.symbol, c.timeframe) for c in plan.changed}
    record_findings(result, contexts, evaluated, now, window_keys=changed_keys)
    if set(window_types) >= set(DETECTORS) - {STALE}:
        # Only a scan of every window type may move the watermarks (a gap-only scan has not looked
        # for outliers in the new rows).
        mark_scanned(plan.changed, now, {k: v for k, v in newest.items() if k in changed_keys}, plan=plan)
        advance_unchanged(plan)
    return result

