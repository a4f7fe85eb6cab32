"""Cancelling a pending execution: one that is claimed and queued but that no worker has started.

A cancelled execution ends ``failed`` (the seed's statuses stay pending|in_progress|completed|failed)
with an ``error_message`` starting ``cancelled: `` and ``details["cancelled"] = {"by", "reason", "at"}``.
That frees the series at once (the one-active-per-series index covers pending rows only), it is not a
failure of the symbol (``symbol_failure_tracking`` is not touched), and its queued task is taken out
of the queue where the broker allows; if a worker still picks it up, the task does nothing
(``run_backfill_execution`` runs only pending executions).

An in_progress execution is not cancelled here: its worker holds it and ends it (SIGTERM stops a run
between pages, resumable; the reaper fails one whose heartbeat stopped).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from django.db.models import QuerySet
from django.utils import timezone

from ..models import BackfillState, BackfillStatus
from ..queue import remove_queued_tasks

logger = logging.getLogger(__name__)

CANCELLED = "cancelled: "


class NotCancellable(Exception):
    """The execution is not pending (a worker has started it, or it has finished)."""


def is_cancelled(state: BackfillState) -> bool:
    return isinstance(state.details, dict) and "cancelled" in state.details


def _cancel(state: BackfillState, *, by: str, reason: str) -> bool:
    """Mark ``state`` cancelled if it is still pending (its queued task is left to the caller)."""
    now = timezone.now()
    reason = reason.strip() or "cancelled by a user"
    message = f"{CANCELLED}{reason}" + (f" (by {by})" if by else "")
    details = {**(state.details or {}), "cancelled": {"by": by, "reason": reason, "at": now.isoformat()}}
    # Compare-and-set: a worker that starts it right now keeps it.
    changed = BackfillState.objects.filter(pk=state.pk, status=BackfillStatus.PENDING).update(
        status=BackfillStatus.FAILED, completed_at=now, error_message=message[:10_000], details=details,
        updated_at=now,
    )
    if changed:
        logger.info("cancelled backfill %s (%s %s): %s", state.execution_id, state.symbol, state.timeframe, message)
    return bool(changed)


def _task_id(state: BackfillState) -> str:
    return str((state.details or {}).get("task_id") or "")


def cancel_backfill(execution_id, *, by: str = "", reason: str = "") -> BackfillState:
    """Cancel one pending execution; ``NotCancellable`` (saying why) when it is not pending."""
    state = BackfillState.objects.get(execution_id=execution_id)
    if _cancel(state, by=by, reason=reason):
        remove_queued_tasks([_task_id(state)])
    else:
        state.refresh_from_db()
        started = " by its worker" + (f" {state.worker}" if state.worker else "")
        why = (f"it is in_progress{started}: stop the worker (SIGTERM) or wait for it to finish"
               if state.status == BackfillStatus.IN_PROGRESS else f"it has finished ({state.status})")
        raise NotCancellable(f"execution {state.execution_id} is not pending: {why}")
    state.refresh_from_db()
    return state


def cancel_pending_backfills(states: QuerySet | Iterable[BackfillState] | None = None, *, by: str = "",
                             reason: str = "") -> tuple[list[BackfillState], list[BackfillState]]:
    """Cancel the pending executions among ``states`` (default: every pending one).
    Returns (cancelled, skipped: not pending)."""
    if states is None:
        states = BackfillState.objects.filter(status=BackfillStatus.PENDING)
    cancelled, skipped = [], []
    for state in (states.order_by("created_at") if isinstance(states, QuerySet) else states):
        if state.status == BackfillStatus.PENDING and _cancel(state, by=by, reason=reason):
            state.refresh_from_db()
            cancelled.append(state)
        else:
            skipped.append(state)
    remove_queued_tasks(_task_id(state) for state in cancelled)  # one pass over the queue for all of them
    return cancelled, skipped
