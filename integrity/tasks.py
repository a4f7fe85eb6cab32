"""django-q2 entry points — every task the app queues, and every place it queues one: thin wrappers
over the services, named in ``integrity.schedules`` and by ``request_backfill``. The services only
claim and run; nothing below this module calls ``async_task``.

The cluster runs each task once (``max_attempts: 1``) with a timeout below the broker's retry
(``Q_TIMEOUT`` < ``Q_RETRY``), so a slow task is never handed to a second worker while it runs.
Results are small dicts (django-q2 stores them with the task).

Stopping: a backfill task ends at its next provider page when the cluster shuts down (SIGTERM to
``qcluster``) or its worker gets SIGTERM — committed bars kept, the execution failed "worker
stopping", resumable (``integrity.shutdown``; the service checks it, so every door gets it).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from django_q.tasks import async_task

from . import partitions
from .backfill import BackfillError, claim_backfill, reap_dead_backfills, run_backfill, run_backfill_execution
from .health.job import run_health_monitoring
from .models import BackfillState, BackfillStatus, DataAnomaly
from .quality.enrichment import enrich_series
from .repair import claim_repair, run_repair_execution
from .series import active_series

logger = logging.getLogger(__name__)

BACKFILL_SERIES_TASK = "integrity.tasks.backfill_series_task"
EXECUTION_TASK = "integrity.tasks.backfill_execution_task"  # what request_backfill queues
REPAIR_TASK = "integrity.tasks.repair_execution_task"  # what request_repair queues


def health_task() -> dict[str, Any]:
    """Run the health-monitoring job (``integrity.health.job.run_health_monitoring``)."""
    report = run_health_monitoring()
    return {"run_id": report.run_id, "status": report.status, "stale_series": report.stale_series.count,
            "failing_symbols": report.failing_symbols.count, "alerts": len(report.alerts),
            "errors": len(report.errors), "duration_ms": report.duration_ms}


def candle_partitions_task() -> dict[str, Any]:
    """Maintain the candle partitions (``integrity.partitions.maintain_partitions``); on SQLite (no
    partitions) it says so and does nothing."""
    if not partitions.postgres():
        return {"skipped": "candle partitioning is PostgreSQL-only"}
    report = partitions.maintain_partitions()
    return {key: value for key, value in report.as_dict().items() if key != "partitions"}


def enrichment_task() -> dict[str, Any]:
    """Recompute ``series_stats`` for the watchlist (``integrity.quality.enrichment.enrich_series``)."""
    return {"series": len(enrich_series())}


def backfill_all_task() -> dict[str, Any]:
    """Fan out: one queued ``backfill_series_task`` per active series (instrument × timeframe).

    Series run in parallel on however many workers there are. No series runs twice at once even if
    two fan-outs overlap: the claim (a partial unique index) refuses the second.
    """
    reap_dead_backfills()
    series = active_series()
    for s in series:
        async_task(BACKFILL_SERIES_TASK, s.symbol, s.timeframe, group="integrity.backfill",
                   task_name=f"backfill {s.symbol} {s.timeframe}"[:100])
    logger.info("backfill fan-out: %s series queued", len(series))
    return {"enqueued": len(series)}


def backfill_series_task(symbol: str, timeframe: str) -> dict[str, Any]:
    """Incremental backfill of one series (``integrity.backfill.run_backfill``)."""
    result = run_backfill(symbol, timeframe, requested_by="schedule")
    return result.as_dict()


def request_backfill(symbol: str, timeframe: str, *, start: datetime | None = None, end: datetime | None = None,
                     provider: str | None = None, requested_by: str = "") -> BackfillState:
    """Claim a series now and queue its run (API and admin). Raises BackfillRefused / BackfillError."""
    state = claim_backfill(symbol, timeframe, start=start, end=end, provider=provider, requested_by=requested_by)
    try:
        task_id = async_task(EXECUTION_TASK, str(state.execution_id), task_name=f"backfill {symbol} {timeframe}",
                             group="backfill")
    except Exception as exc:
        # Without a queue the claim would block the series until the pending timeout: release it.
        state.mark_failed(f"could not enqueue: {exc}")
        raise BackfillError(f"the task queue is unavailable: {exc}") from exc
    _remember_task(state, task_id)
    return state


def _remember_task(state: BackfillState, task_id: str) -> None:
    """Cancelling the execution takes this task out of the queue (integrity.backfill.cancel). Only while
    pending: a worker that has already started it owns its details."""
    details = {**(state.details or {}), "task_id": task_id}
    if BackfillState.objects.filter(pk=state.pk, status=BackfillStatus.PENDING).update(details=details):
        state.details = details


def backfill_execution_task(execution_id: str) -> dict[str, Any]:
    """Run an execution ``request_backfill`` claimed (``integrity.backfill.run_backfill_execution``)."""
    return run_backfill_execution(execution_id)


def request_repair(anomaly: DataAnomaly, *, by: str = "") -> BackfillState:
    """Claim the anomaly's series for its repair now and queue the run (API and admin).
    Raises RepairError / BackfillRefused / BackfillError."""
    state = claim_repair(anomaly, by=by)
    try:
        task_id = async_task(REPAIR_TASK, anomaly.pk, str(state.execution_id), group="repair",
                             task_name=f"repair anomaly {anomaly.pk} ({anomaly.symbol} {anomaly.timeframe})"[:100])
    except Exception as exc:
        state.mark_failed(f"could not enqueue: {exc}")
        raise BackfillError(f"the task queue is unavailable: {exc}") from exc
    _remember_task(state, task_id)
    return state


def repair_execution_task(anomaly_id: int, execution_id: str) -> dict[str, Any]:
    """Run a repair ``request_repair`` claimed (``integrity.repair.run_repair_execution``)."""
    return run_repair_execution(anomaly_id, execution_id)
