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

from django.utils import timezone
from django_q.tasks import async_task

from . import partitions
from .backfill import (
    BackfillError,
    BackfillRefused,
    claim_backfill,
    reap_dead_backfills,
    run_backfill,
    run_backfill_execution,
)
from .backfill.recover import SCHEDULED, lost_pending_executions, reclaim_reaped
from .health.job import run_health_monitoring
from .models import BackfillState, BackfillStatus, DataAnomaly
from .quality.enrichment import enrich_series
from .queue import queued_task_ids
from .reconcile import plan_reconcile, reconcile
from .repair import claim_repair, run_repair_execution
from .series import active_series

logger = logging.getLogger(__name__)

BACKFILL_SERIES_TASK = "integrity.tasks.backfill_series_task"
EXECUTION_TASK = "integrity.tasks.backfill_execution_task"  # what request_backfill queues
REPAIR_TASK = "integrity.tasks.repair_execution_task"  # what request_repair queues
RECONCILE_TASK = "integrity.tasks.reconcile_task"  # what request_reconcile queues


def health_task() -> dict[str, Any]:
    """Run the health-monitoring job (``integrity.health.job.run_health_monitoring``)."""
    report = run_health_monitoring()
    return {"run_id": report.run_id, "status": report.status, "stale_series": report.stale_series.count,
            "failing_symbols": report.failing_symbols.count, "alerts": len(report.alerts),
            "errors": len(report.errors), "duration_ms": report.duration_ms}


def candle_partitions_task() -> dict[str, Any]:
    """Maintain the candle partitions (``integrity.partitions.maintain_partitions``); on SQLite (no
    partitions) it says so and does nothing."""
    if not partitions.is_postgres():
        return {"skipped": "candle partitioning is PostgreSQL-only"}
    report = partitions.maintain_partitions()
    return {key: value for key, value in report.as_dict().items() if key != "partitions"}


def enrichment_task() -> dict[str, Any]:
    """Recompute ``series_stats`` for the watchlist (``integrity.quality.enrichment.enrich_series``)."""
    return {"series": len(enrich_series())}


def backfill_all_task() -> dict[str, Any]:
    """Fan out: claim every active series (instrument × timeframe) now — a pending execution each —
    and queue one ``backfill_execution_task`` per claim.

    Series run in parallel on however many workers there are, on however many hosts. The claims are
    the ledger of the fan-out: a task a lost cluster took with it is found by ``recover_backfills_task``
    and queued again, and a series already active (an overlapping fan-out, an API run) is refused by
    the claim (a partial unique index) and left to that run.
    """
    reap_dead_backfills()
    queued = refused = failed = 0
    for s in active_series():
        try:
            state = claim_backfill(s.symbol, s.timeframe, requested_by=SCHEDULED, reap=False)
        except BackfillRefused:
            refused += 1
            continue
        except BackfillError as exc:
            logger.warning("backfill fan-out: %s %s not claimed: %s", s.symbol, s.timeframe, exc)
            failed += 1
            continue
        try:
            _queue_execution(state, group="integrity.backfill")
        except BackfillError as exc:
            logger.warning("backfill fan-out: %s %s not queued: %s", s.symbol, s.timeframe, exc)
            failed += 1
            continue
        queued += 1
    logger.info("backfill fan-out: %s series queued, %s already active, %s not queued", queued, refused, failed)
    return {"enqueued": queued, "already_active": refused, "not_queued": failed}


def recover_backfills_task() -> dict[str, Any]:
    """Hand the work of lost workers to the others (``integrity.backfill.recover``): reap executions
    whose worker stopped heartbeating and claim their scheduled series again, and queue again the
    pending executions whose task left the queue but never started. Run by schedule
    ``integrity.recover`` (every few minutes), so a cluster killed mid-run costs minutes, not a day."""
    reaped = reap_dead_backfills()
    reclaimed = 0
    for state in reclaim_reaped(reaped):
        try:
            _queue_execution(state, group="integrity.backfill")
            reclaimed += 1
        except BackfillError as exc:
            logger.warning("recovery: %s %s not queued again: %s", state.symbol, state.timeframe, exc)
    requeued = 0
    queued_ids = queued_task_ids()
    if queued_ids is not None:  # an unreadable queue: nothing is known lost
        for state in lost_pending_executions(queued_ids, task=EXECUTION_TASK):
            try:
                _queue_execution(state, group="integrity.backfill", requeued=True)
                requeued += 1
            except BackfillError as exc:
                logger.warning("recovery: execution %s not queued again: %s", state.execution_id, exc)
    if reaped or reclaimed or requeued:
        logger.warning("recovery: %s execution(s) reaped, %s series claimed again, %s lost task(s) queued again",
                       len(reaped), reclaimed, requeued)
    return {"reaped": len(reaped), "reclaimed": reclaimed, "requeued": requeued}


def backfill_series_task(symbol: str, timeframe: str) -> dict[str, Any]:
    """Incremental backfill of one series, claimed when it starts (``integrity.backfill.run_backfill``).
    The fan-out queued this before it claimed up front; kept so tasks queued by that release still run."""
    result = run_backfill(symbol, timeframe, requested_by=SCHEDULED)
    return result.as_dict()


def request_backfill(symbol: str, timeframe: str, *, start: datetime | None = None, end: datetime | None = None,
                     provider: str | None = None, requested_by: str = "") -> BackfillState:
    """Claim a series now and queue its run (API and admin). Raises BackfillRefused / BackfillError."""
    state = claim_backfill(symbol, timeframe, start=start, end=end, provider=provider, requested_by=requested_by)
    _queue_execution(state, group="backfill")
    return state


def _queue_execution(state: BackfillState, *, group: str, requeued: bool = False, task: str = EXECUTION_TASK,
                     args: tuple = (), task_name: str = "") -> None:
    """Queue the run of a claimed (pending) execution: ``task`` with ``args`` (default: the backfill
    of the execution). Without a queue the claim would block the series until the pending timeout, so
    a first enqueue that fails releases it (BackfillError); a repeated one leaves it for the next
    recovery."""
    try:
        task_id = async_task(task, *(args or (str(state.execution_id),)), group=group,
                             task_name=(task_name or f"backfill {state.symbol} {state.timeframe}")[:100])
    except Exception as exc:
        if not requeued:
            state.mark_failed(f"could not enqueue: {exc}")
        raise BackfillError(f"the task queue is unavailable: {exc}") from exc
    _remember_task(state, task_id, task, requeued=requeued)


def _remember_task(state: BackfillState, task_id: str, task: str, *, requeued: bool = False) -> None:
    """Cancelling the execution takes this task out of the queue (integrity.backfill.cancel), and recovery
    tells a lost task by it (integrity.backfill.recover). Only while pending: a worker that has already
    started it owns its details."""
    details = {**(state.details or {}), "task_id": task_id, "task": task}
    if requeued:
        details["requeued_at"] = timezone.now().isoformat()
        details["requeues"] = int(details.get("requeues", 0)) + 1
    if BackfillState.objects.filter(pk=state.pk, status=BackfillStatus.PENDING).update(details=details):
        state.details = details


def backfill_execution_task(execution_id: str) -> dict[str, Any]:
    """Run an execution ``request_backfill`` claimed (``integrity.backfill.run_backfill_execution``)."""
    return run_backfill_execution(execution_id)


def request_repair(anomaly: DataAnomaly, *, by: str = "") -> BackfillState:
    """Claim the anomaly's series for its repair now and queue the run (API and admin).
    Raises RepairError / BackfillRefused / BackfillError."""
    state = claim_repair(anomaly, by=by)
    _queue_execution(state, group="repair", task=REPAIR_TASK, args=(anomaly.pk, str(state.execution_id)),
                     task_name=f"repair anomaly {anomaly.pk} ({anomaly.symbol} {anomaly.timeframe})")
    return state


def repair_execution_task(anomaly_id: int, execution_id: str) -> dict[str, Any]:
    """Run a repair ``request_repair`` claimed (``integrity.repair.run_repair_execution``)."""
    return run_repair_execution(anomaly_id, execution_id)


def reconcile_task(symbol: str | None = None, timeframe: str | None = None, start: str | None = None,
                   end: str | None = None, since: str | None = None, dry_run: bool = False) -> dict[str, Any]:
    """Reconcile with the reference sources (``integrity.reconcile.reconcile``): the schedule's run
    (every instrument with a reference, ``RECONCILE_WINDOW_DAYS``) or one requested by the API/admin.
    The result counts what was found; the findings themselves are the anomalies."""
    parse = datetime.fromisoformat
    report = reconcile(symbol, timeframe, start=parse(start) if start else None, end=parse(end) if end else None,
                       since=since, dry_run=dry_run)
    summary = report.as_dict()
    summary["series"] = [{k: v for k, v in s.items() if k != "findings"} for s in summary["series"]]
    return summary


def request_reconcile(symbol: str, timeframe: str | None = None, *, start: datetime | None = None,
                      end: datetime | None = None, since: str | None = None, dry_run: bool = False,
                      by: str = "") -> dict[str, Any]:
    """Check the request (``ReconcileError`` before anything is queued), then queue ``reconcile_task``."""
    jobs, _ = plan_reconcile(symbol, timeframe, start=start, end=end, since=since)
    task_id = async_task(RECONCILE_TASK, symbol, timeframe, start.isoformat() if start else None,
                         end.isoformat() if end else None, since, dry_run, group="integrity.reconcile",
                         task_name=f"reconcile {symbol} {timeframe or ''}".strip()[:100])
    logger.info("reconcile of %s %s queued (task %s)%s", symbol, timeframe or "(every timeframe)", task_id,
                f" for {by}" if by else "")
    return {"task_id": task_id, "symbol": symbol, "dry_run": dry_run,
            "series": [{"timeframe": s.timeframe, "reference_provider": s.provider, "start": lo.isoformat(),
                        "end": hi.isoformat()} for s, lo, hi in jobs]}
