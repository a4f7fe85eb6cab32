"""The health job's report, typed: what ``run_health_monitoring`` returns and every reader uses by
attribute. ``HealthReport.as_dict()`` is the JSON stored on ``HealthCheckRun.results`` (the API
serves it): its keys and shapes are a contract, changed only with the API consumers in mind.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..models import HealthStatus, Severity

SEVERITIES = [s.value for s in Severity]


@dataclass
class AnomalyTotals:
    """Open anomalies (not acknowledged, not resolved): in all, by severity, by type."""

    open: int = 0
    by_severity: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SEVERITIES, 0))
    by_type: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"open": self.open, "open_by_severity": dict(self.by_severity), "open_by_type": dict(self.by_type)}


@dataclass
class StaleSummary:
    """Stale series (``integrity.staleness``): the count is complete, ``series`` (as dicts: what the
    judgement used, with ``hours_stale`` the lag since the oldest missing bar was due) is cut at
    ``MAX_LISTED``.

    ``watched`` and ``truncated`` are None until the staleness check has run (they are then left
    out of the stored report, as a check that errored leaves them out).
    """

    grace_minutes: int  # STALE_GRACE_MINUTES: how long a due bar may be missing
    backfill_cron: str  # SCHEDULE_BACKFILL_CRON: the schedule that decides when a bar is due
    count: int = 0
    series: list[dict[str, Any]] = field(default_factory=list)
    watched: int | None = None
    truncated: bool | None = None

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"count": self.count, "grace_minutes": self.grace_minutes,
                                "backfill_cron": self.backfill_cron, "series": self.series}
        if self.watched is not None:
            data["watched"] = self.watched
            data["truncated"] = bool(self.truncated)
        return data


@dataclass
class FailingSummary:
    """Symbols with consecutive backfill failures; ``at_threshold`` of them at ``threshold``."""

    threshold: int
    count: int = 0
    at_threshold: int = 0
    symbols: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"count": self.count, "at_threshold": self.at_threshold, "threshold": self.threshold,
                "symbols": self.symbols}


@dataclass
class HealthReport:
    run_id: int | None  # None: a replay (nothing recorded)
    as_of: datetime
    started_at: datetime
    stale_series: StaleSummary
    failing_symbols: FailingSummary
    status: str = HealthStatus.RUNNING.value
    reaped_backfills: list[dict[str, Any]] = field(default_factory=list)
    anomaly_scan: dict[str, Any] | None = None  # None: the anomaly suite did not run
    repairs: dict[str, Any] | None = None  # the automatic repairs (integrity.repair.auto_repair)
    anomalies: AnomalyTotals = field(default_factory=AnomalyTotals)
    workers: dict[str, Any] | None = None  # integrity.health.workers.WorkerStatus.as_dict(); None: not checked
    storage: dict[str, Any] | None = None  # integrity.partitions.storage_status(); None: not checked
    alerts: list[dict[str, Any]] = field(default_factory=list)  # {kind, subject, severity, channels}
    errors: list[dict[str, Any]] = field(default_factory=list)  # {check, error[, traceback]}
    timings_ms: dict[str, float] = field(default_factory=dict)
    finished_at: datetime | None = None
    duration_ms: int | None = None
    replay: bool = False  # judged as of a past moment, read-only: nothing written, reaped, repaired or sent

    def compute_status(self) -> str:
        """``critical``: a check errored, an open critical anomaly, a symbol at the failure threshold;
        ``warning``: a stale series, an open high anomaly, a failing symbol, a worker problem (none running
        while work waits, or the queue stuck), bars in a default candle partition; else ``healthy``."""
        severities = self.anomalies.by_severity
        failing = self.failing_symbols
        if self.errors or severities.get("critical", 0) or failing.at_threshold:
            return HealthStatus.CRITICAL.value
        worker_problem = bool(self.workers and self.workers.get("problem"))
        storage_problem = bool(self.storage and self.storage.get("problem"))
        if (self.stale_series.count or severities.get("high", 0) or failing.count or worker_problem
                or storage_problem):
            return HealthStatus.WARNING.value
        return HealthStatus.HEALTHY.value

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "run_id": self.run_id,
            "replay": self.replay,
            "status": self.status,
            "as_of": self.as_of.isoformat(),
            "started_at": self.started_at.isoformat(),
            "reaped_backfills": self.reaped_backfills,
            "stale_series": self.stale_series.as_dict(),
            "failing_symbols": self.failing_symbols.as_dict(),
            "anomaly_scan": self.anomaly_scan,
            "anomalies": self.anomalies.as_dict(),
            "workers": self.workers,
            "storage": self.storage,
            "alerts": self.alerts,
            "errors": self.errors,
            "timings_ms": self.timings_ms,
        }
        if self.repairs is not None:
            data["repairs"] = self.repairs
        if self.finished_at is not None:
            data["finished_at"] = self.finished_at.isoformat()
            data["duration_ms"] = self.duration_ms
        return data
