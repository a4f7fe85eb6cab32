"""Backfill executions as rows: the claim (a pending row is the lock), the lifecycle updates, the
active list and the reaper of executions whose worker is gone; the errors and the result type."""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from ..conf import conf
from ..failures import track_symbol_failure
from ..models import (
    ACTIVE_STATUSES,
    AssetClass,
    BackfillState,
    BackfillStatus,
    InvalidTransition,
    Timeframe,
)
from ..queue import queued_task_ids

logger = logging.getLogger(__name__)


class BackfillError(Exception):
    """The request itself is unusable (unknown instrument, bad timeframe, bad range)."""


class BackfillRefused(Exception):
    """The series already has an active execution."""

    def __init__(self, symbol: str, timeframe: str, active: BackfillState | None):
        self.symbol = symbol
        self.timeframe = timeframe
        self.active = active
        if active is not None:
            message = (
                f"a backfill of {symbol} {timeframe} is already {active.status}: "
                f"execution {active.execution_id} (created {active.created_at:%Y-%m-%d %H:%M:%S} UTC"
                + (f", worker {active.worker}" if active.worker else "")
                + ")"
            )
        else:
            message = f"a backfill of {symbol} {timeframe} is already active"
        super().__init__(message)


class StrictValidationError(Exception):
    pass


class BackfillStopped(Exception):
    """The worker was asked to stop: the run committed what it held and can be resumed."""


@dataclass
class BackfillResult:
    symbol: str
    timeframe: str
    status: str  # completed | failed | refused | skipped (a queued execution no longer pending)
    execution_id: str | None = None
    inserted: int = 0
    updated: int = 0
    invalid: int = 0
    retry_count: int = 0
    range_start: str | None = None
    range_end: str | None = None
    resumed_from: str | None = None
    error: str | None = None
    active_execution_id: str | None = None
    duration_seconds: float = 0.0
    invalid_reasons: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == BackfillStatus.COMPLETED

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def worker_name() -> str:
    """``<WORKER_NAME or host name>:<pid>``: which process on which host holds an execution."""
    return f"{conf.WORKER_NAME or socket.gethostname()}:{os.getpid()}"


# --- the service API ---------------------------------------------------------------------------


def get_active_backfill_states(symbol: str | None = None, timeframe: str | None = None):
    qs = BackfillState.objects.filter(status__in=ACTIVE_STATUSES)
    if symbol:
        qs = qs.filter(symbol=symbol)
    if timeframe:
        qs = qs.filter(timeframe=timeframe)
    return qs.order_by("created_at")


def reap_dead_backfills(timeout_seconds: int | None = None, now: datetime | None = None) -> list[BackfillState]:
    """Fail executions whose worker is gone, so their series is free again.

    in_progress with a heartbeat older than the timeout → failed "worker lost: heartbeat timeout";
    pending never picked up within BACKFILL_PENDING_TIMEOUT_SECONDS → failed "never started", unless its
    task is still in the broker's queue (it waits its turn; the queue is read only when such a row exists).
    A reaped in_progress execution counts as a failure of its symbol; a never-started one does not
    (nothing was tried: no worker ran it, see ``integrity.health.workers``).
    """
    now = now or timezone.now()
    timeout = conf.BACKFILL_HEARTBEAT_TIMEOUT_SECONDS if timeout_seconds is None else timeout_seconds
    cutoff = now - timedelta(seconds=timeout)
    pending_cutoff = now - timedelta(seconds=conf.BACKFILL_PENDING_TIMEOUT_SECONDS)
    dead_running = Q(status=BackfillStatus.IN_PROGRESS) & (
        Q(heartbeat_at__lt=cutoff) | Q(heartbeat_at__isnull=True, started_at__lt=cutoff)
    )
    never_started = Q(status=BackfillStatus.PENDING, created_at__lt=pending_cutoff)
    reaped: list[BackfillState] = []
    queued: set[str] | None = None
    for state in BackfillState.objects.filter(dead_running | never_started):
        if state.status == BackfillStatus.PENDING and (state.details or {}).get("task_id"):
            # Still in the broker's queue (a long fan-out, workers busy): it will run; not "never started".
            if queued is None:
                queued = queued_task_ids() or set()
            if state.details["task_id"] in queued:
                continue
        if state.status == BackfillStatus.IN_PROGRESS:
            last = state.heartbeat_at or state.started_at
            message = (
                f"worker lost: heartbeat timeout (last heartbeat {last:%Y-%m-%d %H:%M:%S} UTC, "
                f"timeout {timeout}s, worker {state.worker or 'unknown'})"
            )
            guard = dead_running
        else:
            message = (
                f"never started: pending for more than {conf.BACKFILL_PENDING_TIMEOUT_SECONDS}s "
                "(no worker picked it up)"
            )
            guard = never_started
        # Compare-and-set: a worker that heartbeats right now keeps its execution.
        changed = BackfillState.objects.filter(guard, pk=state.pk).update(
            status=BackfillStatus.FAILED, completed_at=now, error_message=message, updated_at=now
        )
        if changed:
            state.refresh_from_db()
            reaped.append(state)
            logger.warning("reaped backfill %s (%s %s): %s", state.execution_id, state.symbol,
                           state.timeframe, message)
            if guard is dead_running:
                track_symbol_failure(state.symbol, success=False, error=message)
    return reaped


def _latest_finished(symbol: str, timeframe: str) -> BackfillState | None:
    """The run the next one follows (its retry count, its checkpoint to resume from). A cancelled
    execution never ran: it is passed over (``integrity.backfill.cancel``)."""
    return (
        BackfillState.objects.filter(symbol=symbol, timeframe=timeframe, status__in=["completed", "failed"])
        .exclude(details__has_key="cancelled")
        .order_by("-created_at", "-id")
        .first()
    )


def create_backfill_state(
    symbol: str,
    timeframe: str,
    asset_class: str,
    *,
    provider: str = "",
    range_start: datetime | None = None,
    range_end: datetime | None = None,
    requested_by: str = "",
    reap: bool = True,
) -> BackfillState:
    """Claim the series: insert a pending execution, or raise ``BackfillRefused``."""
    if timeframe not in Timeframe.values:
        raise BackfillError(f"unknown timeframe {timeframe!r}; expected one of {', '.join(Timeframe.values)}")
    if asset_class not in AssetClass.values:
        raise BackfillError(f"unknown asset class {asset_class!r}; expected one of {', '.join(AssetClass.values)}")
    if reap:
        reap_dead_backfills()
    previous = _latest_finished(symbol, timeframe)
    retry_count = previous.retry_count + 1 if previous and previous.status == BackfillStatus.FAILED else 0
    for _attempt in range(2):
        try:
            with transaction.atomic():
                return BackfillState.objects.create(
                    symbol=symbol,
                    timeframe=timeframe,
                    asset_class=asset_class,
                    provider=provider,
                    range_start=range_start,
                    range_end=range_end,
                    retry_count=retry_count,
                    requested_by=requested_by,
                )
        except IntegrityError:
            active = get_active_backfill_states(symbol, timeframe).first()
            if active is not None:
                raise BackfillRefused(symbol, timeframe, active) from None
            # The holder finished between our insert and our look: try once more.
    raise BackfillRefused(symbol, timeframe, None)


def update_backfill_state(
    execution_id,
    *,
    status: str | None = None,
    records_inserted: int | None = None,
    error_message: str | None = None,
) -> BackfillState:
    """Move an execution through its lifecycle (terminal states are final)."""
    state = BackfillState.objects.get(execution_id=execution_id)
    if status == BackfillStatus.IN_PROGRESS:
        state.mark_started(worker=worker_name())
    elif status == BackfillStatus.COMPLETED:
        state.mark_completed(records_inserted)
    elif status == BackfillStatus.FAILED:
        state.mark_failed(error_message or "failed")
    elif status is not None:
        raise InvalidTransition(f"cannot set status {status!r}")
    elif records_inserted is not None:
        changed = BackfillState.objects.filter(pk=state.pk, status__in=ACTIVE_STATUSES).update(
            records_inserted=records_inserted, updated_at=timezone.now()
        )
        if not changed:
            raise InvalidTransition(f"execution {execution_id} is {state.status}; terminal states are final")
        state.refresh_from_db()
    return state


# --- planning ---------------------------------------------------------------------------------
