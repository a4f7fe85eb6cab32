"""Anomaly rows: findings in, ``data_anomalies`` rows out, idempotently, and their automatic
resolution.

- The same problem found again updates its unresolved anomaly (matched by fingerprint; a partial
  unique index allows one unresolved anomaly per fingerprint), it never creates a second row.
- A problem no longer found is resolved automatically ("no longer detected", reason ``fixed``) —
  only for the series and types the scan actually evaluated; a duplicate cleanup resolves the
  duplicates it removed.
- Review sticks: a problem resolved with any reason but ``fixed`` (false positive, expected, missing
  at source) is never recorded again, by any scan; one resolved ``fixed`` that is found again opens
  a new anomaly that counts it as a regression (``regressions``; stale excepted: a series that falls
  behind again is not a regression of the data).
- What other services keep in an anomaly's ``details`` (``KEPT_DETAILS``: its repair attempts)
  survives the scans that update it.
"""
from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.db import IntegrityError, transaction
from django.db.models import Count, Q
from django.utils import timezone

from ..models import STICKY_REASONS, AnomalyType, Candle, DataAnomaly, ResolutionReason, ResolutionStatus
from ..series import IN_CHUNK, chunks
from . import sql
from .findings import Finding, SeriesContext

if TYPE_CHECKING:
    from .anomalies import DetectionResult

UNRESOLVED = (ResolutionStatus.OPEN, ResolutionStatus.ACKNOWLEDGED)
# Types judged over the whole series on every scan (cheap, index-backed), not over a window.
WHOLE_SERIES_TYPES = {AnomalyType.STALE, AnomalyType.DUPLICATE}
AUTO = "auto"
# Keys of ``details`` written by other services (``integrity.repair``), kept when a scan updates a row.
KEPT_DETAILS = ("repairs", "confirmed_at_source")


def review_history(fingerprints: list[str]) -> tuple[set[str], dict[str, int]]:
    """Of ``fingerprints``: those resolved for good (a sticky reason), and for those resolved
    ``fixed`` before the regression count a new anomaly starts with."""
    sticky: set[str] = set()
    regressions: dict[str, int] = {}
    for part in chunks(fingerprints):
        rows = DataAnomaly.objects.filter(
            fingerprint__in=part, resolution_status=ResolutionStatus.RESOLVED,
            resolution_reason__in=[*STICKY_REASONS, ResolutionReason.FIXED],
        ).exclude(anomaly_type=AnomalyType.STALE).values_list("fingerprint", "resolution_reason", "regressions")
        for fingerprint, reason, count in rows:
            if reason == ResolutionReason.FIXED:
                regressions[fingerprint] = max(regressions.get(fingerprint, 0), count + 1)
            else:
                sticky.add(fingerprint)
    return sticky, regressions


def _leave_out(result: DetectionResult, sticky: set[str]) -> None:
    """The findings of problems resolved for good are no findings any more: counted as dismissed."""
    if sticky:
        result.findings = [f for f in result.findings if f.fingerprint not in sticky]
        result.dismissed = len(sticky)


def drop_dismissed(result: DetectionResult) -> None:
    """A dry run's findings without the problems resolved for good (what a real run would not record)."""
    _leave_out(result, review_history(list(dict.fromkeys(f.fingerprint for f in result.findings)))[0])


def _kept_details(ids: list[int]) -> dict[int, dict[str, Any]]:
    """The ``KEPT_DETAILS`` of those anomalies that have any (few: the ones ever repaired)."""
    kept: dict[int, dict[str, Any]] = {}
    has_any = None
    for key in KEPT_DETAILS:
        has_any = Q(details__has_key=key) if has_any is None else has_any | Q(details__has_key=key)
    for part in chunks(ids):
        for anomaly_id, details in DataAnomaly.objects.filter(has_any, id__in=part).values_list(
                "id", "details"):
            kept[anomaly_id] = {k: details[k] for k in KEPT_DETAILS if k in (details or {})}
    return kept


def record_findings(result: DetectionResult, contexts: list[SeriesContext], types: list[str],
                    now: datetime, window_keys: set[tuple[str, str]] | None = None) -> None:
    """Upsert the findings (one read and one bulk update for those already recorded) and resolve
    the unresolved anomalies of the evaluated series and types that were not found again."""
    unique: dict[str, Finding] = {}
    for finding in result.findings:
        unique.setdefault(finding.fingerprint, finding)
    existing: dict[str, int] = {}
    fingerprints = list(unique)
    for part in chunks(fingerprints):
        existing.update(DataAnomaly.objects.filter(fingerprint__in=part,
                                                   resolution_status__in=UNRESOLVED)
                        .values_list("fingerprint", "id"))
    updates = []
    sticky, regressions = review_history([fp for fp in unique if fp not in existing])
    _leave_out(result, sticky)  # dismissed by a reviewer (or missing at source)
    new = [finding for fingerprint, finding in unique.items()
           if fingerprint not in existing and fingerprint not in sticky]
    _create_all(result, new, now, regressions)
    kept = _kept_details(list(existing.values()))
    for fingerprint, finding in unique.items():
        anomaly_id = existing.get(fingerprint)
        if anomaly_id is None:
            continue
        values = _finding_values(finding, now)
        if anomaly_id in kept:
            values["details"] = {**values["details"], **kept[anomaly_id]}
        updates.append({"id": anomaly_id, "finding": finding, **values})
    if updates:
        # One statement for all of them (PostgreSQL; batches on SQLite), not one per finding.
        done = sql.update_rows_by_id(DataAnomaly._meta.db_table, updates, _UPDATE_TYPES,
                                     {"last_seen_at": now, "updated_at": now})
        for row in updates:
            if row["id"] in done:
                result.updated += 1
                continue
            # Resolved since we read it: the problem is back, record it the one-by-one way.
            _upsert_one(result, row["finding"], now)
    result.resolved = resolve_missing(contexts, types, set(unique), now, window_keys=window_keys)


def _upsert_one(result: DetectionResult, finding: Finding, now: datetime) -> None:
    """Record one finding the one-by-one way (``upsert_finding``) and count what it did."""
    created, anomaly_id = upsert_finding(finding, now)
    if anomaly_id is None:
        return
    if created:
        result.created += 1
        result.new_anomaly_ids.append(anomaly_id)
    else:
        result.updated += 1


def _create_all(result: DetectionResult, findings: list[Finding], now: datetime,
                regressions: dict[str, int] | None = None) -> None:
    """Create the anomalies of new findings in one insert (``regressions``: the count each starts
    with, by fingerprint); if a concurrent scan created one of them meanwhile (the partial unique
    index refuses it), fall back to upserting one by one."""
    if not findings:
        return
    regressions = regressions or {}
    rows = [DataAnomaly(symbol=f.symbol, timeframe=f.timeframe, anomaly_type=f.anomaly_type,
                        fingerprint=f.fingerprint, detected_at=now, regressions=regressions.get(f.fingerprint, 0),
                        **{k: v for k, v in _finding_values(f, now).items() if k != "updated_at"})
            for f in findings]
    try:
        with transaction.atomic():
            created = DataAnomaly.objects.bulk_create(rows, batch_size=500)
    except IntegrityError:
        for finding in findings:
            _upsert_one(result, finding, now)
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


def upsert_finding(finding: Finding, now: datetime) -> tuple[bool, int | None]:
    """Update the unresolved anomaly with this fingerprint, or create it. Returns (created, id);
    the id is None when the problem was resolved for good (a sticky reason): nothing is recorded."""
    values = _finding_values(finding, now)
    existing = DataAnomaly.objects.filter(fingerprint=finding.fingerprint, resolution_status__in=UNRESOLVED)
    for _attempt in range(2):
        anomaly_id = existing.values_list("id", flat=True).first()
        if anomaly_id is not None:
            kept = _kept_details([anomaly_id]).get(anomaly_id)
            if kept:
                values["details"] = {**values["details"], **kept}
            existing.filter(id=anomaly_id).update(**values)
            return False, anomaly_id
        sticky, regressions = review_history([finding.fingerprint])
        if sticky:
            return False, None
        try:
            with transaction.atomic():
                anomaly = DataAnomaly.objects.create(
                    regressions=regressions.get(finding.fingerprint, 0),
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
        candidates = unresolved_of(group_types, {c.symbol for c in group}).filter(
            execution_id__isnull=True,  # rejected-bar reports of a backfill are not re-detectable
        ).values_list("id", "symbol", "timeframe", "anomaly_type", "fingerprint", "period_start")
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
    return auto_resolve(to_resolve, now, "no longer detected")


def unresolved_of(types: list[str], symbols: set[str]):
    """The unresolved anomalies of these types, narrowed to these symbols when they are few enough
    for an IN list (else the caller's own keys narrow them)."""
    candidates = DataAnomaly.objects.filter(anomaly_type__in=types, resolution_status__in=UNRESOLVED)
    if len(symbols) <= IN_CHUNK:
        candidates = candidates.filter(symbol__in=symbols)
    return candidates


def auto_resolve(ids: list[int], now: datetime, note: str) -> int:
    """Resolve these anomalies ``fixed`` by the scan (``resolved_by`` AUTO) with ``note``, those still
    unresolved only; how many were."""
    resolved = 0
    for part in chunks(ids):
        resolved += DataAnomaly.objects.filter(id__in=part, resolution_status__in=UNRESOLVED).update(
            resolution_status=ResolutionStatus.RESOLVED, resolution_reason=ResolutionReason.FIXED,
            resolved_by=AUTO, resolved_at=now, resolution_note=note, updated_at=now)
    return resolved


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
                resolution_status=ResolutionStatus.RESOLVED, resolution_reason=ResolutionReason.FIXED,
                resolved_by=AUTO, resolved_at=now, resolution_note="duplicates cleaned", updated_at=now,
            )
    return resolved
