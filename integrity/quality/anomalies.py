"""Anomaly records and their lifecycle: findings in, ``data_anomalies`` rows out, idempotently.

- The same problem found again updates its unresolved anomaly (matched by fingerprint; a partial
  unique index allows one unresolved anomaly per fingerprint), it never creates a second row.
- A problem no longer found is resolved automatically ("no longer detected").
- Detection is incremental by default: each series is scanned from its last scanned bar minus an
  overlap (window checks need neighbours), widened to cover every anomaly still unresolved so
  fixed problems (a back-filled gap, cleaned duplicates) are noticed. ``full=True`` rescans all.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Min
from django.utils import timezone

from ..models import AnomalyType, Candle, DataAnomaly, ResolutionStatus, SeriesStats
from ..timeframes import timeframe_delta
from .findings import Finding, SeriesContext

logger = logging.getLogger(__name__)

UNRESOLVED = (ResolutionStatus.OPEN, ResolutionStatus.ACKNOWLEDGED)
# Types judged over the whole series on every scan (cheap, index-backed), not over a window.
WHOLE_SERIES_TYPES = {AnomalyType.STALE, AnomalyType.DUPLICATE}
AUTO = "auto"


@dataclass
class DetectionResult:
    dry_run: bool
    full: bool
    series_scanned: int = 0
    findings: list[Finding] = field(default_factory=list)
    created: int = 0
    updated: int = 0
    resolved: int = 0
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

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "full": self.full,
            "series_scanned": self.series_scanned,
            "found": len(self.findings),
            "created": self.created,
            "updated": self.updated,
            "resolved": self.resolved,
            "by_type": self.by_type(),
            "by_severity": self.by_severity(),
        }


def _overlap_bars() -> int:
    return int(getattr(settings, "DETECTION_OVERLAP_BARS", 50))


def plan_windows(contexts: list[SeriesContext], full: bool, types: list[str] | None) -> None:
    """Set ``ctx.since`` for an incremental scan (None = the whole series)."""
    if full or not contexts:
        for ctx in contexts:
            ctx.since = None
        return
    symbols = {c.symbol for c in contexts}
    scanned = {
        (s.symbol, s.timeframe): s.last_scanned_ts
        for s in SeriesStats.objects.filter(symbol__in=symbols).only("symbol", "timeframe", "last_scanned_ts")
    }
    unresolved = DataAnomaly.objects.filter(symbol__in=symbols, resolution_status__in=UNRESOLVED,
                                            execution_id__isnull=True, period_start__isnull=False)
    if types:
        unresolved = unresolved.filter(anomaly_type__in=types)
    oldest_open = {
        (row["symbol"], row["timeframe"]): row["oldest"]
        for row in unresolved.exclude(anomaly_type__in=WHOLE_SERIES_TYPES)
        .values("symbol", "timeframe").annotate(oldest=Min("period_start"))
    }
    for ctx in contexts:
        last = scanned.get((ctx.symbol, ctx.timeframe))
        if last is None:
            ctx.since = None
            continue
        since = last - _overlap_bars() * timeframe_delta(ctx.timeframe)
        oldest = oldest_open.get((ctx.symbol, ctx.timeframe))
        if oldest is not None:
            # Re-examine every unresolved anomaly's bars, with the same overlap before it.
            since = min(since, oldest - _overlap_bars() * timeframe_delta(ctx.timeframe))
        ctx.since = since


def detect_data_anomalies(
    symbol: str | None = None,
    timeframe: str | None = None,
    types: list[str] | None = None,
    dry_run: bool = False,
    full: bool = False,
    now: datetime | None = None,
) -> DetectionResult:
    """Run the detectors over the watchlist's series and record what they find."""
    from .detectors import DETECTORS, run_detectors
    from .thresholds import series_contexts

    if types:
        unknown = sorted(set(types) - set(DETECTORS))
        if unknown:
            raise ValueError(f"unknown anomaly type(s) {', '.join(unknown)}; expected {', '.join(DETECTORS)}")
    now = now or timezone.now()
    contexts = series_contexts(symbol=symbol, timeframe=timeframe)
    plan_windows(contexts, full, types)
    # Where each series ended when the scan began: bars written while it runs are newer than this,
    # so the next incremental scan still covers them, however many arrive.
    scanned_to = _newest_bars(contexts) if contexts and not dry_run else {}
    findings = run_detectors(contexts, types=types, now=now)
    result = DetectionResult(dry_run=dry_run, full=full, series_scanned=len(contexts), findings=findings)
    if dry_run or not contexts:
        return result
    record_findings(result, contexts, types or list(DETECTORS), now)
    mark_scanned(contexts, now, scanned_to)
    return result


def _newest_bars(contexts: list[SeriesContext]) -> dict[tuple[str, str], datetime]:
    """Newest stored bar per series: one index probe each, in one statement."""
    from . import sql

    pairs = [(i, c.symbol, c.timeframe) for i, c in enumerate(contexts)]
    newest = sql.last_bars(Candle._meta.db_table, pairs)
    return {(contexts[i].symbol, contexts[i].timeframe): sql.ns_to_datetime(ns) for i, ns in newest.items()}


def record_findings(result: DetectionResult, contexts: list[SeriesContext], types: list[str],
                    now: datetime) -> None:
    seen: set[str] = set()
    for finding in result.findings:
        fingerprint = finding.fingerprint
        if fingerprint in seen:
            continue
        seen.add(fingerprint)
        created, anomaly_id = upsert_finding(finding, now)
        if created:
            result.created += 1
            result.new_anomaly_ids.append(anomaly_id)
        else:
            result.updated += 1
    result.resolved = resolve_missing(contexts, types, seen, now)


def upsert_finding(finding: Finding, now: datetime) -> tuple[bool, int]:
    """Update the unresolved anomaly with this fingerprint, or create it. Returns (created, id)."""
    values = {
        "severity": finding.severity,
        "description": finding.description,
        "affected_rows": finding.affected_rows,
        "period_start": finding.period_start,
        "period_end": finding.period_end,
        "details": finding.details,
        "last_seen_at": now,
        "updated_at": now,
    }
    existing = DataAnomaly.objects.filter(fingerprint=finding.fingerprint, resolution_status__in=UNRESOLVED)
    for _attempt in range(2):
        anomaly_id = existing.values_list("id", flat=True).first()
        if anomaly_id is not None:
            existing.filter(id=anomaly_id).update(**values)
            return False, anomaly_id
        try:
            with transaction.atomic():
                anomaly = DataAnomaly.objects.create(
                    symbol=finding.symbol,
                    timeframe=finding.timeframe,
                    anomaly_type=finding.anomaly_type,
                    fingerprint=finding.fingerprint,
                    detected_at=now,
                    **{k: v for k, v in values.items() if k != "updated_at"},
                )
            return True, anomaly.id
        except IntegrityError:
            continue  # a concurrent scan created it: update that one instead
    raise RuntimeError(f"could not record anomaly {finding.fingerprint}")


def resolve_missing(contexts: list[SeriesContext], types: list[str], seen: set[str], now: datetime) -> int:
    """Auto-resolve unresolved anomalies of the scanned series and types that were not found again."""
    resolved = 0
    by_series = {(c.symbol, c.timeframe): c for c in contexts}
    candidates = DataAnomaly.objects.filter(
        symbol__in={c.symbol for c in contexts},
        anomaly_type__in=types,
        resolution_status__in=UNRESOLVED,
        execution_id__isnull=True,  # rejected-bar reports of a backfill are not re-detectable
    ).only("id", "symbol", "timeframe", "anomaly_type", "fingerprint", "period_start")
    to_resolve = []
    for anomaly in candidates:
        ctx = by_series.get((anomaly.symbol, anomaly.timeframe))
        if ctx is None or anomaly.fingerprint in seen:
            continue
        in_window = (
            ctx.since is None
            or anomaly.anomaly_type in WHOLE_SERIES_TYPES
            or (anomaly.period_start is not None and anomaly.period_start >= ctx.since)
        )
        if in_window:
            to_resolve.append(anomaly.id)
    if to_resolve:
        resolved = DataAnomaly.objects.filter(id__in=to_resolve, resolution_status__in=UNRESOLVED).update(
            resolution_status=ResolutionStatus.RESOLVED,
            resolved_by=AUTO,
            resolved_at=now,
            resolution_note="no longer detected",
            updated_at=now,
        )
    return resolved


def mark_scanned(contexts: list[SeriesContext], now: datetime,
                 scanned_to: dict[tuple[str, str], datetime] | None = None) -> None:
    """Record the scan in series_stats: when, and up to which bar (one upsert for all series)."""
    if scanned_to is None:
        scanned_to = _newest_bars(contexts)
    rows = [SeriesStats(symbol=c.symbol, timeframe=c.timeframe, last_scan_at=now,
                        last_scanned_ts=scanned_to.get((c.symbol, c.timeframe)), updated_at=now)
            for c in contexts]
    SeriesStats.objects.bulk_create(rows, update_conflicts=True, unique_fields=["symbol", "timeframe"],
                                    update_fields=["last_scan_at", "last_scanned_ts", "updated_at"])


def resolve_cleaned_duplicates(symbol: str | None = None, timeframe: str | None = None) -> int:
    """After a duplicate cleanup: resolve duplicate anomalies of series that have none left."""
    from django.db.models import Count

    anomalies = DataAnomaly.objects.filter(anomaly_type=AnomalyType.DUPLICATE, resolution_status__in=UNRESOLVED)
    if symbol:
        anomalies = anomalies.filter(symbol=symbol)
    if timeframe:
        anomalies = anomalies.filter(timeframe=timeframe)
    resolved = 0
    now = timezone.now()
    for anomaly in anomalies:
        still = (
            Candle.objects.filter(symbol=anomaly.symbol, timeframe=anomaly.timeframe)
            .values("ts").annotate(n=Count("id")).filter(n__gt=1).exists()
        )
        if not still:
            resolved += DataAnomaly.objects.filter(pk=anomaly.pk, resolution_status__in=UNRESOLVED).update(
                resolution_status=ResolutionStatus.RESOLVED, resolved_by=AUTO, resolved_at=now,
                resolution_note="duplicates cleaned", updated_at=now,
            )
    return resolved
