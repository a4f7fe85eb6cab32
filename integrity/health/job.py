"""The health-monitoring job: one pass over the whole watchlist, recorded as a ``HealthCheckRun``.

``run_health_monitoring`` runs these checks, each in its own ``try``: a check that raises is recorded
in the run's ``errors`` (and makes the run critical) while the others still run.

1. ``reap`` — fail backfills whose worker is gone (``reap_dead_backfills``), freeing their series.
2. ``staleness`` — every active series judged at the as-of by ``integrity.staleness`` (a due bar
   missing for longer than ``STALE_GRACE_MINUTES``), through ``integrity.health.staleness``.
3. ``failures`` — symbols with consecutive backfill failures (>= 1), flagged at
   ``FAILURE_ALERT_THRESHOLD``.
4. ``anomaly_scan`` — the anomaly suite, incrementally (``detect_data_anomalies()``): stale for
   every series (reusing the newest bars the staleness check read), the other detectors only for
   series changed since their last scan — see ``integrity.quality.anomalies``.
5. ``auto_repair`` — new gap and invalid-bar anomalies re-fetched and re-checked before anyone is
   paged (``integrity.repair.auto_repair``; ``REPAIR_AUTO``, ``REPAIR_MAX_PER_RUN``, ``REPAIR_BACKOFF``).
6. ``anomaly_totals`` — open anomalies by severity and by type.
7. ``workers`` — whether a django-q2 cluster is alive and what waits for one
   (``integrity.health.workers``); a problem there makes the run a warning.
8. ``storage`` — on PostgreSQL, bars sitting in a default candle partition (outside every partition:
   ``integrity.partitions.storage_status``) make the run a warning.
9. ``alerts`` — the due alerts, each sent once (``integrity.health.alerting``).

The status is ``HealthReport.compute_status``. Acknowledged anomalies do not count: a human has
them in hand.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable
from datetime import datetime

from django.utils import timezone

from ..backfill import reap_dead_backfills
from ..conf import conf
from ..models import HealthCheckRun, HealthStatus
from ..partitions import storage_status
from ..quality import anomalies as quality_anomalies
from ..repair import auto_repair
from .alerting import MAX_LISTED, alert_critical_anomalies, alert_stale_transitions, alert_unsent_failures
from .report import FailingSummary, HealthReport, StaleSummary
from .staleness import SeriesFreshness, assess_staleness
from .summaries import failing_symbols, open_anomaly_totals
from .workers import worker_status

logger = logging.getLogger("integrity.health")


def _run_check(name: str, report: HealthReport, check: Callable[[], None]) -> None:
    started = time.monotonic()
    try:
        check()
    except Exception as exc:  # noqa: BLE001 — recorded on the run; the other checks go on
        logger.exception("health check %s failed", name)
        report.errors.append({
            "check": name,
            "error": f"{exc.__class__.__name__}: {exc}"[:2000],
            "traceback": traceback.format_exc()[-4000:],
        })
    report.timings_ms[name] = round((time.monotonic() - started) * 1000, 1)


def run_health_monitoring(as_of: datetime | None = None, *, scan_anomalies: bool = True,
                          now: datetime | None = None, replay: bool = False) -> HealthReport:
    """Run every check, send the alerts due, persist a ``HealthCheckRun`` and return its report.

    ``as_of`` (``now`` is the same thing, by its older name): judge as of that moment (default: now),
    so a past run's staleness judgement can be replayed. ``scan_anomalies=False`` skips the anomaly
    suite and its automatic repairs (the totals of stored anomalies and their alerts still run);
    ``report.anomaly_scan`` and ``report.repairs`` are then None.

    ``replay=True`` (``health_check --as-of``) only judges: it reaps nothing, the anomaly scan is a dry
    run, nothing is repaired or sent, and no ``HealthCheckRun`` is recorded (``report.run_id`` is None).
    """
    started_at = timezone.now()
    started = time.monotonic()
    now = as_of or now or started_at
    run = None if replay else HealthCheckRun.objects.create(started_at=started_at, status=HealthStatus.RUNNING)
    report = HealthReport(
        run_id=run.pk if run else None, replay=replay, as_of=now, started_at=started_at,
        stale_series=StaleSummary(grace_minutes=conf.STALE_GRACE_MINUTES, backfill_cron=conf.SCHEDULE_BACKFILL_CRON),
        failing_symbols=FailingSummary(threshold=conf.FAILURE_ALERT_THRESHOLD),
    )
    series: list[SeriesFreshness] = []
    new_anomaly_ids: list[int] = []

    def reap():
        report.reaped_backfills = [
            {"execution_id": str(s.execution_id), "symbol": s.symbol, "timeframe": s.timeframe,
             "error": s.error_message}
            for s in reap_dead_backfills(now=now)
        ]

    def staleness():
        series.extend(assess_staleness(now, report.errors))
        stale = sorted((s for s in series if s.stale),
                       key=lambda s: (-(s.lag_hours if s.lag_hours is not None else float("inf")),
                                      s.symbol, s.timeframe))
        summary = report.stale_series
        summary.count, summary.watched = len(stale), len(series)
        summary.series = [s.as_dict() for s in stale[:MAX_LISTED]]
        summary.truncated = len(stale) > MAX_LISTED

    def failures():
        rows = failing_symbols()
        summary = report.failing_symbols
        summary.count = len(rows)
        summary.at_threshold = sum(1 for r in rows if r["at_threshold"])
        summary.symbols = rows[:MAX_LISTED]

    def anomaly_scan():
        # The staleness check has just read every watched series' newest bar: share it.
        newest = {(s.symbol, s.timeframe): s.last_bar for s in series}
        result = quality_anomalies.detect_data_anomalies(now=now, newest_bars=newest, dry_run=replay)
        report.anomaly_scan = {**result.as_dict(), "new_anomalies": len(result.new_anomaly_ids)}
        new_anomaly_ids.extend(result.new_anomaly_ids)

    def repairs():
        report.repairs = auto_repair(new_anomaly_ids, now=now)

    def anomaly_totals():
        report.anomalies = open_anomaly_totals()

    def workers():
        report.workers = worker_status(now=started_at).as_dict()

    def storage():
        report.storage = storage_status()

    def alerts():
        # Each kind on its own, so one failing does not stop the next.
        for name, due in (("stale", lambda: alert_stale_transitions(series)),
                          ("critical_anomalies", alert_critical_anomalies),
                          ("failing_symbols", alert_unsent_failures)):
            _run_check(f"alerts.{name}", report, lambda d=due: report.alerts.extend(d()))

    try:
        if not replay:
            _run_check("reap", report, reap)
        _run_check("staleness", report, staleness)
        _run_check("failures", report, failures)
        if scan_anomalies:
            _run_check("anomaly_scan", report, anomaly_scan)
            if not replay:
                _run_check("auto_repair", report, repairs)
        _run_check("anomaly_totals", report, anomaly_totals)
        _run_check("workers", report, workers)
        _run_check("storage", report, storage)
        if not replay:
            alerts()  # times and records its parts itself
    finally:
        report.finished_at = timezone.now()
        report.status = report.compute_status()
        report.duration_ms = int((time.monotonic() - started) * 1000)
        if run is not None:
            HealthCheckRun.objects.filter(pk=run.pk).update(
                finished_at=report.finished_at,
                duration_ms=report.duration_ms,
                status=report.status,
                results=report.as_dict(),
                errors=report.errors,
                alerts_sent=len(report.alerts),
            )
    logger.info("health run %s: %s (%s stale, %s failing, %s open anomalies, %s alert(s), %s error(s)) in %s ms",
                run.pk if run else "replay", report.status, report.stale_series.count, report.failing_symbols.count,
                report.anomalies.open, len(report.alerts), len(report.errors), report.duration_ms)
    return report
