"""The summaries the admin dashboard, the API's health view and ``/metrics`` read live, counted as
the health job counts them (open anomalies: status open; acknowledged ones a human has in hand)."""

from __future__ import annotations

from typing import Any

from django.db.models import Count

from ..conf import conf
from ..models import BackfillState, BackfillStatus, DataAnomaly, ResolutionStatus, SymbolFailureTracking
from ..timeframes import iso
from .report import AnomalyTotals


def open_anomaly_totals() -> AnomalyTotals:
    totals = AnomalyTotals()
    by_type: dict[str, int] = {}
    rows = (DataAnomaly.objects.filter(resolution_status=ResolutionStatus.OPEN)
            .values("severity", "anomaly_type").annotate(n=Count("id")).order_by())
    for row in rows:
        totals.by_severity[row["severity"]] = totals.by_severity.get(row["severity"], 0) + row["n"]
        by_type[row["anomaly_type"]] = by_type.get(row["anomaly_type"], 0) + row["n"]
    totals.open = sum(totals.by_severity.values())
    totals.by_type = dict(sorted(by_type.items()))
    return totals


def failing_symbols() -> list[dict[str, Any]]:
    """Symbols with at least one consecutive backfill failure, most failing first."""
    threshold = conf.FAILURE_ALERT_THRESHOLD
    rows = SymbolFailureTracking.objects.filter(consecutive_failures__gte=1).order_by(
        "-consecutive_failures", "symbol")
    return [
        {
            "symbol": row.symbol,
            "consecutive_failures": row.consecutive_failures,
            "last_failure_at": iso(row.last_failure_at),
            "last_error": (row.last_error or "")[:300],
            "at_threshold": row.consecutive_failures >= threshold,
            "alert_sent": row.alert_sent,
        }
        for row in rows
    ]


def backfill_counts() -> dict[str, int]:
    counts = dict.fromkeys(BackfillStatus.values, 0)
    for row in BackfillState.objects.values("status").annotate(n=Count("id")).order_by():
        counts[row["status"]] = row["n"]
    return counts
