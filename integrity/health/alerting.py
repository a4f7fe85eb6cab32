"""The health job's alerts, each sent once: claimed by a compare-and-set update before sending, so
two concurrent runs never both send. Composition is ``integrity.alerts``'; this module decides
*which* alerts are due.

* a series that becomes stale — ``series_stats.stale_alert_sent_at`` set when alerted, cleared
  when the series is fresh again (re-arming it); one digest per run lists the newly stale series;
  with ``ALERT_RECOVERY_NOTICES`` a digest of series fresh again is sent too;
* a critical open anomaly — ``data_anomalies.alert_sent_at`` (whoever created it: this job, the
  ``detect_anomalies`` command, a backfill); one digest per run;
* a symbol at the failure threshold whose alert was never sent (e.g. the threshold was lowered) —
  the same ``alert_sent`` flag ``track_symbol_failure`` uses, so never twice.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.utils import timezone

from ..alerts import (
    Alert,
    critical_anomalies_alert,
    recovery_notices_enabled,
    send_alert,
    series_fresh_alert,
    series_stale_alert,
    symbol_failing_alert,
)
from ..conf import conf
from ..models import DataAnomaly, ResolutionStatus, SeriesStats, Severity, SymbolFailureTracking
from ..series import IN_CHUNK, chunks
from .staleness import SeriesFreshness

# Lists in the stored results and in an alert's context are cut at this length (counts are complete).
MAX_LISTED = 1000


def deliver(alert: Alert) -> dict[str, Any]:
    """Send ``alert``; what the report records of it."""
    return {"kind": alert.kind, "subject": alert.subject, "severity": alert.severity,
            "channels": send_alert(alert)}


def _claim(model, ids: list[int], field: str, value) -> list[int]:
    """Compare-and-set ``field`` from NULL to ``value`` (or back to NULL) on ``ids``; the ids we won.

    The rows are locked and re-checked in one transaction (PostgreSQL re-evaluates the WHERE clause
    on rows another transaction changed; SQLite's IMMEDIATE transactions serialise writers), so of
    concurrent claimers exactly one wins each row.
    """
    won: list[int] = []
    lookup = {f"{field}__isnull": value is not None}
    for chunk in chunks(ids, IN_CHUNK):
        with transaction.atomic():
            mine = list(model.objects.select_for_update().filter(pk__in=chunk, **lookup)
                        .values_list("pk", flat=True))
            if mine:
                model.objects.filter(pk__in=mine).update(**{field: value})
        won.extend(mine)
    return won


def _ensure_stats_rows(items: list[SeriesFreshness]) -> None:
    """Create the missing ``series_stats`` rows of ``items`` and fill in their ids."""
    missing = [s for s in items if s.stats_id is None]
    if not missing:
        return
    SeriesStats.objects.bulk_create(
        [SeriesStats(symbol=s.symbol, timeframe=s.timeframe) for s in missing],
        ignore_conflicts=True, batch_size=500,
    )
    by_key = {(s.symbol, s.timeframe): s for s in missing}
    for chunk in chunks(sorted({s.symbol for s in missing}), IN_CHUNK):
        for pk, symbol, tf, alerted in SeriesStats.objects.filter(symbol__in=chunk).values_list(
                "id", "symbol", "timeframe", "stale_alert_sent_at"):
            item = by_key.get((symbol, tf))
            if item is not None:
                item.stats_id, item.stale_alert_sent_at = pk, alerted


def alert_stale_transitions(series: list[SeriesFreshness]) -> list[dict[str, Any]]:
    """Alert series that became stale (once), re-arm series that are fresh again."""
    sent: list[dict[str, Any]] = []
    stale = [s for s in series if s.stale]
    _ensure_stats_rows(stale)
    candidates = {s.stats_id: s for s in stale if s.stale_alert_sent_at is None and s.stats_id is not None}
    newly = [candidates[pk] for pk in _claim(SeriesStats, list(candidates), "stale_alert_sent_at", timezone.now())]
    if newly:
        newly.sort(key=lambda s: (s.symbol, s.timeframe))
        sent.append(deliver(series_stale_alert(newly, conf.STALE_GRACE_MINUTES, MAX_LISTED)))
    fresh = {s.stats_id: s for s in series if not s.stale and s.stale_alert_sent_at is not None}
    recovered = [fresh[pk] for pk in _claim(SeriesStats, list(fresh), "stale_alert_sent_at", None)]
    if recovered and recovery_notices_enabled():
        recovered.sort(key=lambda s: (s.symbol, s.timeframe))
        sent.append(deliver(series_fresh_alert(recovered, MAX_LISTED)))
    return sent


def alert_unsent_failures() -> list[dict[str, Any]]:
    """Safety net: symbols at the threshold whose alert never went out (same flag as failures.py)."""
    sent = []
    threshold = conf.FAILURE_ALERT_THRESHOLD
    for row in SymbolFailureTracking.objects.filter(alert_sent=False, consecutive_failures__gte=threshold):
        won = SymbolFailureTracking.objects.filter(
            pk=row.pk, alert_sent=False, consecutive_failures__gte=threshold
        ).update(alert_sent=True, alert_sent_at=timezone.now())
        if won:
            sent.append(deliver(symbol_failing_alert(row.symbol, row.consecutive_failures, row.last_error)))
    return sent


def alert_critical_anomalies() -> list[dict[str, Any]]:
    """One alert for the open critical anomalies not alerted yet (each claimed by CAS first)."""
    pending = list(DataAnomaly.objects.filter(
        severity=Severity.CRITICAL, resolution_status=ResolutionStatus.OPEN, alert_sent_at__isnull=True,
    ).order_by("detected_at", "id").only("id", "symbol", "timeframe", "anomaly_type", "description",
                                         "period_start", "period_end"))
    # Claimed in batches (one locked SELECT and one UPDATE per chunk), not one UPDATE per anomaly.
    claimed = set(_claim(DataAnomaly, [a.pk for a in pending], "alert_sent_at", timezone.now()))
    won = [a for a in pending if a.pk in claimed]
    if not won:
        return []
    return [deliver(critical_anomalies_alert(won, MAX_LISTED))]
