"""Work a lost worker held: what to hand to the others.

With Redis as the broker a task leaves the queue when a cluster takes it (django-q2's Redis broker has
no acknowledgement), so a cluster killed outright (``kill -9``, a host lost) takes with it both the runs
it was executing and the tasks it had taken but not started (its prefetch, ``Q_QUEUE_LIMIT``). The
database holds what the queue forgot: the daily fan-out and the API claim each series first (a pending
execution whose ``details`` name its queued task), and a running execution heartbeats. So:

- an **in_progress** execution whose heartbeat is older than ``BACKFILL_HEARTBEAT_TIMEOUT_SECONDS`` is
  reaped (``reap_dead_backfills``); when it was a scheduled run, its series is claimed again — the new
  run resumes from the last committed checkpoint — until ``BACKFILL_REQUEUE_MAX_RETRIES`` consecutive
  failures (``reclaim_reaped``);
- a **pending** execution whose task is no longer in the broker's queue, created longer than that
  timeout ago, is queued again as the same execution (``lost_pending_executions``). Its first task may
  still be in a live cluster's prefetch: whichever task starts first runs it, the other finds it no
  longer pending and does nothing (``run_backfill_execution``), so a series never runs twice.

``integrity.tasks.recover_backfills_task`` (schedule ``integrity.recover``) puts these together; the
queueing itself stays in ``integrity.tasks``.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.utils import timezone

from ..conf import conf
from ..models import BackfillState, BackfillStatus
from .state import BackfillError, BackfillRefused

logger = logging.getLogger(__name__)

SCHEDULED = "schedule"  # requested_by of the daily fan-out's executions
LOST_WORKER = "worker lost: "


def lost_pending_executions(queued: set[str], *, task: str, now: datetime | None = None) -> list[BackfillState]:
    """Pending executions queued as ``task`` whose task the broker no longer holds (``queued``: the ids
    it does hold), older than the heartbeat timeout and not queued again within it."""
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=conf.BACKFILL_HEARTBEAT_TIMEOUT_SECONDS)
    lost = []
    candidates = BackfillState.objects.filter(status=BackfillStatus.PENDING, created_at__lt=cutoff,
                                              details__task=task).order_by("created_at", "id")
    for state in candidates.iterator():
        details = state.details or {}
        if details.get("task_id") in queued:
            continue
        requeued_at = details.get("requeued_at")
        if requeued_at and datetime.fromisoformat(requeued_at) > cutoff:
            continue
        lost.append(state)
    return lost


def reclaim_reaped(reaped: list[BackfillState]) -> list[BackfillState]:
    """Claim again the series of reaped scheduled runs whose worker was lost (pending executions to
    queue); a series that failed ``BACKFILL_REQUEUE_MAX_RETRIES`` times in a row waits for its next
    scheduled run, and one already claimed again (by a fan-out, the API) is left to that claim."""
    from .run import claim_backfill

    claims = []
    limit = conf.BACKFILL_REQUEUE_MAX_RETRIES
    for state in reaped:
        if state.requested_by != SCHEDULED or not (state.error_message or "").startswith(LOST_WORKER):
            continue
        if state.retry_count >= limit:
            logger.warning("backfill of %s %s lost its worker %s times in a row: not queued again before its "
                           "next scheduled run", state.symbol, state.timeframe, state.retry_count + 1)
            continue
        try:
            claims.append(claim_backfill(state.symbol, state.timeframe, requested_by=SCHEDULED, reap=False))
        except (BackfillRefused, BackfillError) as exc:
            logger.info("backfill of %s %s not claimed again: %s", state.symbol, state.timeframe, exc)
    return claims
