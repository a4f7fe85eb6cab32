"""Anomaly records and their lifecycle: findings in, ``data_anomalies`` rows out, idempotently.

- The same problem found again updates its unresolved anomaly (matched by fingerprint; a partial
  unique index allows one unresolved anomaly per fingerprint), it never creates a second row.
- A problem no longer found is resolved automatically ("no longer detected") — only for the series
  and types the scan actually evaluated.
- ``full=True`` rescans every series, whole.

Incremental detection (the default, what the health job runs) costs what changed, not the history:

- Stale is judged for every series on every scan (time-dependent; one newest-bar statement for
  the watchlist, or the caller's ``newest_bars``).
- The window detectors (gap, off_calendar, outlier, invalid_ohlc) and the duplicate check run only
  on series that changed since their last scan (``plan_scan``): never scanned; candle rows with an
  id above the series' watermark (``series_stats.last_scanned_id``, the largest candle id when its
  last scan began) — any writer, any place in history, so a legacy loader's bars and a duplicate
  written in old history are found; or a backfill of the series in progress, or updated, at or after
  its last scan began (``last_scan_started_at``; our backfill revises bars in place without new
  ids, and a backfill still writing during a scan makes the series changed for the next one too).
  A changed series is read from its last scanned bar minus an overlap (window checks need
  neighbours), widened to its oldest new row (or the backfill's range start) and to every anomaly
  still unresolved, so fixed problems (a back-filled gap) are noticed. Duplicates are judged on the
  whole changed series.
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
from datetime import datetime, timedelta
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Count, Max, Min, Q
from django.utils import timezone

from ..conf import conf
from ..models import (
    AnomalyType,
    BackfillState,
    BackfillStatus,
    Candle,
    DataAnomaly,
    ResolutionStatus,
    SeriesStats,
)
from ..timeframes import EPOCH, ns_to_datetime, timeframe_delta
from . import detectors, sql
from .detectors import DETECTORS, STALE
from .findings import Finding, SeriesContext
from .thresholds import series_contexts

logger = logging.getLogger(__name__)

UNRESOLVED = (ResolutionStatus.OPEN, ResolutionStatus.ACKNOWLEDGED)
# Types judged over the whole series on every scan (cheap, index-backed), not over a window.
WHOLE_SERIES_TYPES = {AnomalyType.STALE, AnomalyType.DUPLICATE}
AUTO = "auto"


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
            "series_rescanned": self.series_rescanned,
            "found": len(self.findings),
            "created": self.created,
            "updated": self.updated,
            "resolved": self.resolved,
            "by_type": self.by_type(),
            "by_severity": self.by_severity(),
        }


def _overlap_bars() -> int:
    return conf.DETECTION_OVERLAP_BARS


@dataclass
class ScanPlan:
    """Which series an incremental scan re-reads (``changed``) and the watermarks it leaves."""

    changed: list[SeriesContext]
    unchanged: list[SeriesContext]
    watermark: int  # the largest candle id when the scan began
    started_at: datetime  # wall clock, comparable with backfills' updated_at
    # stats row id and watermark of each series that has a series_stats row
    stats: dict[tuple[str, str], tuple[int, int | None]] = field(default_factory=dict)


_WHOLE = object()  # "re-read the whole series" (a revision of unknown range)


def _stats_rows(contexts: list[SeriesContext]) -> dict[tuple[str, str], tuple[int, int | None, datetime | None]]:
    """(stats row id, candle-id watermark, scan start) of each series with a series_stats row."""
    symbols = {c.symbol for c in contexts}
    rows = SeriesStats.objects.values_list("symbol", "timeframe", "id", "last_scanned_id", "last_scan_started_at")
    if len(symbols) <= 500:
        rows = rows.filter(symbol__in=symbols)
    keys = {(c.symbol, c.timeframe) for c in contexts}
    return {(r[0], r[1]): r[2:] for r in rows.order_by() if (r[0], r[1]) in keys}


def _scanned_ts(stats_ids: list[int]) -> dict[tuple[str, str], datetime | None]:
    """The last scanned bar of these series_stats rows."""
    found: dict[tuple[str, str], datetime | None] = {}
    for i in range(0, len(stats_ids), 500):
        found.update({(r[0], r[1]): r[2] for r in SeriesStats.objects.filter(id__in=stats_ids[i:i + 500])
                      .values_list("symbol", "timeframe", "last_scanned_ts")})
    return found


def plan_scan(contexts: list[SeriesContext], full: bool, types: list[str] | None) -> ScanPlan:
    """Split the series into changed (re-read) and unchanged, and set ``ctx.since`` of the changed.

    A series is changed when it was never scanned (or not since watermarks exist); when candle rows
    with an id above its watermark exist (written by any writer, anywhere in its history); or when a
    backfill of it was in progress, or updated, at or after its last scan began (our backfill revises
    bars in place, without new ids). Two statements over the watchlist decide it: one GROUP BY over
    the candles newer than the oldest watermark (through the primary key) and one over backfills.
    """
    started_at = timezone.now()
    watermark = Candle.objects.aggregate(m=Max("id"))["m"] or 0
    stats = _stats_rows(contexts) if contexts else {}
    plan = ScanPlan(changed=[], unchanged=[], watermark=watermark, started_at=started_at,
                    stats={key: (row[0], row[1]) for key, row in stats.items()})
    if full:
        for ctx in contexts:
            ctx.since = None
        plan.changed = list(contexts)
        return plan

    # Scanned since watermarks exist: (stats id, candle-id watermark, scan start).
    scanned = {key: row for key, row in stats.items() if row[1] is not None and row[2] is not None}
    reread_from: dict[tuple[str, str], Any] = {}  # oldest changed bar (or _WHOLE) per changed series
    dirty: set[tuple[str, str]] = {(c.symbol, c.timeframe) for c in contexts} - set(scanned)
    if scanned:
        oldest_mark = min(row[1] for row in scanned.values())
        if oldest_mark < watermark:
            changed_rows = (Candle.objects.filter(id__gt=oldest_mark).values("symbol", "timeframe")
                            .annotate(newest_id=Max("id"), oldest_ts=Min("ts")).order_by())
            for row in changed_rows:
                key = (row["symbol"], row["timeframe"])
                mine = scanned.get(key)
                if mine is not None and row["newest_id"] > mine[1]:
                    dirty.add(key)
                    # Oldest bar among rows above the oldest watermark: covers this series' new rows.
                    reread_from[key] = row["oldest_ts"]
        cutoff = min(row[2] for row in scanned.values())
        backfills = (BackfillState.objects
                     .filter(Q(status=BackfillStatus.IN_PROGRESS) | Q(updated_at__gte=cutoff))
                     .values_list("symbol", "timeframe", "status", "updated_at", "range_start"))
        for sym, tf, status, updated_at, range_start in backfills:
            key = (sym, tf)
            mine = scanned.get(key)
            if mine is None or not (status == BackfillStatus.IN_PROGRESS or updated_at >= mine[2]):
                continue
            dirty.add(key)
            previous = reread_from.get(key)
            if range_start is None or previous is _WHOLE:
                reread_from[key] = _WHOLE
            elif previous is None or range_start < previous:
                reread_from[key] = range_start

    for ctx in contexts:
        (plan.changed if (ctx.symbol, ctx.timeframe) in dirty else plan.unchanged).append(ctx)
    changed_ids = [stats[(c.symbol, c.timeframe)][0] for c in plan.changed if (c.symbol, c.timeframe) in stats]
    plan_windows(plan.changed, False, types, scanned_ts=_scanned_ts(changed_ids), reread_from=reread_from)
    return plan


def plan_windows(contexts: list[SeriesContext], full: bool, types: list[str] | None,
                 scanned_ts: dict[tuple[str, str], datetime | None] | None = None,
                 reread_from: dict[tuple[str, str], Any] | None = None) -> None:
    """Set ``ctx.since`` for an incremental scan (None = the whole series).

    From the last scanned bar minus the overlap, widened to the oldest changed bar (``reread_from``)
    and to every unresolved window anomaly, each with the same overlap before it.
    """
    if full or not contexts:
        for ctx in contexts:
            ctx.since = None
        return
    symbols = {c.symbol for c in contexts}
    if scanned_ts is None:
        scanned_ts = {
            (s.symbol, s.timeframe): s.last_scanned_ts
            for s in SeriesStats.objects.filter(symbol__in=symbols).only("symbol", "timeframe", "last_scanned_ts")
        }
    reread_from = reread_from or {}
    unresolved = DataAnomaly.objects.filter(resolution_status__in=UNRESOLVED,
                                            execution_id__isnull=True, period_start__isnull=False)
    if len(symbols) <= 500:
        unresolved = unresolved.filter(symbol__in=symbols)
    if types:
        unresolved = unresolved.filter(anomaly_type__in=types)
    oldest_open = {
        (row["symbol"], row["timeframe"]): row["oldest"]
        for row in unresolved.exclude(anomaly_type__in=WHOLE_SERIES_TYPES)
        .values("symbol", "timeframe").annotate(oldest=Min("period_start")).order_by()
    }
    for ctx in contexts:
        key = (ctx.symbol, ctx.timeframe)
        last = scanned_ts.get(key)
        changed = reread_from.get(key)
        if last is None or changed is _WHOLE:
            ctx.since = None
            continue
        overlap = _overlap_bars() * timeframe_delta(ctx.timeframe)
        since = _reread_from(last, overlap)
        for oldest in (changed, oldest_open.get(key)):
            if oldest is not None and since is not None:
                # Re-examine changed bars and every unresolved anomaly's bars, with the overlap before.
                earlier = _reread_from(oldest, overlap)
                since = None if earlier is None else min(since, earlier)
        ctx.since = since


def _reread_from(ts: datetime, overlap: timedelta) -> datetime | None:
    """``ts - overlap``, or None (the whole series) when that is before the epoch.

    Stored ranges come from many writers (a backfill row may say 0001-01-01): the scan clamps
    instead of raising, and a series re-read from before 1970 is simply re-read whole.
    """
    try:
        since = ts - overlap
    except OverflowError:
        return None
    return since if since >= EPOCH else None


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
        newest.update(_newest_bars(missing))
    findings: list[Finding] = []
    if window_types and plan.changed:
        findings.extend(detectors.run_detectors(plan.changed, types=window_types, now=now, newest=newest))
    if STALE in evaluated:
        findings.extend(detectors.run_detectors(contexts, types=[STALE], now=now, newest=newest))
    order = {t: i for i, t in enumerate(DETECTORS)}
    findings.sort(key=lambda f: order[f.anomaly_type])  # stable: by type, then series, then time
    result = DetectionResult(dry_run=dry_run, full=full, series_scanned=len(contexts), findings=findings,
                             series_rescanned=len(plan.changed))
    if dry_run or not contexts:
        return result
    changed_keys = {(c.symbol, c.timeframe) for c in plan.changed}
    record_findings(result, contexts, evaluated, now, window_keys=changed_keys)
    if set(window_types) >= set(DETECTORS) - {STALE}:
        # Only a scan of every window type may move the watermarks (a gap-only scan has not looked
        # for outliers in the new rows).
        mark_scanned(plan.changed, now, {k: v for k, v in newest.items() if k in changed_keys}, plan=plan)
        _advance_unchanged(plan)
    return result


def _newest_bars(contexts: list[SeriesContext]) -> dict[tuple[str, str], datetime | None]:
    """Newest stored bar per series (None: none): one index probe each, in one statement."""
    pairs = [(i, c.symbol, c.timeframe) for i, c in enumerate(contexts)]
    newest = sql.last_bars(Candle._meta.db_table, pairs)
    result: dict[tuple[str, str], datetime | None] = {(c.symbol, c.timeframe): None for c in contexts}
    for i, ns in newest.items():
        result[(contexts[i].symbol, contexts[i].timeframe)] = ns_to_datetime(ns)
    return result


def record_findings(result: DetectionResult, contexts: list[SeriesContext], types: list[str],
                    now: datetime, window_keys: set[tuple[str, str]] | None = None) -> None:
    """Upsert the findings (one read and one bulk update for those already recorded) and resolve
    the unresolved anomalies of the evaluated series and types that were not found again."""
    unique: dict[str, Finding] = {}
    for finding in result.findings:
        unique.setdefault(finding.fingerprint, finding)
    existing: dict[str, int] = {}
    fingerprints = list(unique)
    for i in range(0, len(fingerprints), 500):
        existing.update(DataAnomaly.objects.filter(fingerprint__in=fingerprints[i:i + 500],
                                                   resolution_status__in=UNRESOLVED)
                        .values_list("fingerprint", "id"))
    updates = []
    new = [finding for fingerprint, finding in unique.items() if fingerprint not in existing]
    _create_all(result, new, now)
    for fingerprint, finding in unique.items():
        anomaly_id = existing.get(fingerprint)
        if anomaly_id is None:
            continue
        updates.append({"id": anomaly_id, "finding": finding, **_finding_values(finding, now)})
    if updates:
        # One statement for all of them (PostgreSQL; batches on SQLite), not one per finding.
        done = sql.update_rows_by_id(DataAnomaly._meta.db_table, updates, _UPDATE_TYPES,
                                     {"last_seen_at": now, "updated_at": now})
        for row in updates:
            if row["id"] in done:
                result.updated += 1
                continue
            # Resolved since we read it: the problem is back, record it the one-by-one way.
            created, anomaly_id = upsert_finding(row["finding"], now)
            if created:
                result.created += 1
                result.new_anomaly_ids.append(anomaly_id)
            else:
                result.updated += 1
    result.resolved = resolve_missing(contexts, types, set(unique), now, window_keys=window_keys)


def _create_all(result: DetectionResult, findings: list[Finding], now: datetime) -> None:
    """Create the anomalies of new findings in one insert; if a concurrent scan created one of them
    meanwhile (the partial unique index refuses it), fall back to upserting one by one."""
    if not findings:
        return
    rows = [DataAnomaly(symbol=f.symbol, timeframe=f.timeframe, anomaly_type=f.anomaly_type,
                        fingerprint=f.fingerprint, detected_at=now,
                        **{k: v for k, v in _finding_values(f, now).items() if k != "updated_at"})
            for f in findings]
    try:
        with transaction.atomic():
            created = DataAnomaly.objects.bulk_create(rows, batch_size=500)
    except IntegrityError:
        for finding in findings:
            was_created, anomaly_id = upsert_finding(finding, now)
            if was_created:
                result.created += 1
                result.new_anomaly_ids.append(anomaly_id)
            else:
                result.updated += 1
        return
    result.created += len(created)
    result.new_anomaly_ids.extend(row.pk for row in created)


_UPDATE_TYPES = {"severity": "text", "description": "text", "affected_rows": "int", "period_start": "timestamptz",
                 "period_end": "timestamptz", "details": "jsonb"}


def _finding_values(finding: Finding, now: datetime) -> dict[str, Any]:
    return {
        "severity": finding.severity,
        "description": finding.description,
        "affected_rows": finding.affected_rows,
        "period_start": finding.period_start,
        "period_end": finding.period_end,
        "details": finding.details,
        "last_seen_at": now,
        "updated_at": now,
    }


def upsert_finding(finding: Finding, now: datetime) -> tuple[bool, int]:
    """Update the unresolved anomaly with this fingerprint, or create it. Returns (created, id)."""
    values = _finding_values(finding, now)
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


def resolve_missing(contexts: list[SeriesContext], types: list[str], seen: set[str], now: datetime,
                    window_keys: set[tuple[str, str]] | None = None) -> int:
    """Auto-resolve unresolved anomalies of the scanned series and types that were not found again.

    ``window_keys``: the series whose window and duplicate detectors ran (None: all of them); for
    the others only the types judged on every scan (stale) are considered — a series that was not
    re-read keeps its gaps, outliers and duplicates open.
    """
    by_series = {(c.symbol, c.timeframe): c for c in contexts}
    reread = [c for c in contexts if window_keys is None or (c.symbol, c.timeframe) in window_keys]
    always = [t for t in types if t == AnomalyType.STALE]
    groups = [(reread, list(types))]
    if window_keys is not None:
        groups = [(reread, list(types)), ([c for c in contexts if (c.symbol, c.timeframe) not in window_keys],
                                          always)]
    to_resolve = []
    for group, group_types in groups:
        if not group or not group_types:
            continue
        keys = {(c.symbol, c.timeframe) for c in group}
        candidates = DataAnomaly.objects.filter(
            anomaly_type__in=group_types,
            resolution_status__in=UNRESOLVED,
            execution_id__isnull=True,  # rejected-bar reports of a backfill are not re-detectable
        ).values_list("id", "symbol", "timeframe", "anomaly_type", "fingerprint", "period_start")
        symbols = {c.symbol for c in group}
        if len(symbols) <= 500:
            candidates = candidates.filter(symbol__in=symbols)
        for anomaly_id, sym, tf, anomaly_type, fingerprint, period_start in candidates:
            ctx = by_series.get((sym, tf))
            if ctx is None or (sym, tf) not in keys or fingerprint in seen:
                continue
            in_window = (
                ctx.since is None
                or anomaly_type in WHOLE_SERIES_TYPES
                or (period_start is not None and period_start >= ctx.since)
            )
            if in_window:
                to_resolve.append(anomaly_id)
    resolved = 0
    for i in range(0, len(to_resolve), 500):
        resolved += DataAnomaly.objects.filter(id__in=to_resolve[i:i + 500],
                                               resolution_status__in=UNRESOLVED).update(
            resolution_status=ResolutionStatus.RESOLVED,
            resolved_by=AUTO,
            resolved_at=now,
            resolution_note="no longer detected",
            updated_at=now,
        )
    return resolved


def mark_scanned(contexts: list[SeriesContext], now: datetime,
                 scanned_to: dict[tuple[str, str], datetime | None] | None = None,
                 plan: ScanPlan | None = None) -> None:
    """Record the scan of these series in series_stats: when, up to which bar, and the watermarks
    (candle id, wall clock) taken before it began (one upsert for all of them)."""
    if not contexts:
        return
    if scanned_to is None:
        scanned_to = _newest_bars(contexts)
    watermark = plan.watermark if plan else (Candle.objects.aggregate(m=Max("id"))["m"] or 0)
    started_at = plan.started_at if plan else timezone.now()
    rows = [SeriesStats(symbol=c.symbol, timeframe=c.timeframe, last_scan_at=now,
                        last_scanned_ts=scanned_to.get((c.symbol, c.timeframe)), last_scanned_id=watermark,
                        last_scan_started_at=started_at, updated_at=now)
            for c in contexts]
    SeriesStats.objects.bulk_create(rows, update_conflicts=True, unique_fields=["symbol", "timeframe"],
                                    update_fields=["last_scan_at", "last_scanned_ts", "last_scanned_id",
                                                   "last_scan_started_at", "updated_at"],
                                    batch_size=1000)


def _watermark_slack() -> int:
    return conf.DETECTION_WATERMARK_SLACK


def _advance_unchanged(plan: ScanPlan) -> None:
    """Move the watermarks of unchanged series far behind the scan's to it (nothing of theirs
    changed up to it), so the change-detection statement keeps reading only recent rows.

    Only series more than ``DETECTION_WATERMARK_SLACK`` ids behind (default 50,000): a steady
    watchlist where a few series change is not rewritten on every scan; the statement reads at most
    that many rows more than what is new.
    """
    limit = plan.watermark - _watermark_slack()
    lagging = [plan.stats[key][0] for key in ((c.symbol, c.timeframe) for c in plan.unchanged)
               if key in plan.stats and (plan.stats[key][1] or 0) < limit]
    for i in range(0, len(lagging), 5000):
        SeriesStats.objects.filter(id__in=lagging[i:i + 5000], last_scanned_id__lt=plan.watermark).update(
            last_scanned_id=plan.watermark, last_scan_started_at=plan.started_at)


def resolve_cleaned_duplicates(symbol: str | None = None, timeframe: str | None = None) -> int:
    """After a duplicate cleanup: resolve duplicate anomalies of series that have none left."""
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
