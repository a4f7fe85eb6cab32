"""The backfill service: claim, fetch, validate, write, checkpoint, finish.

Every backfill of a (symbol, timeframe) series is a tracked execution in
``backfill_state_persistent``. The commands, django-q2 tasks and the API all call these functions.

- Claim: inserting a *pending* row is the lock. A partial unique index allows one active
  (pending/in_progress) execution per series, so of any number of concurrent requests exactly one
  wins and the others get ``BackfillRefused`` naming the holder. No read-then-write race.
- Heartbeat and checkpoint: each committed batch moves ``checkpoint_ts`` (the newest bar written)
  and ``heartbeat_at`` in the same transaction as the bars.
- Recovery: ``reap_dead_backfills`` fails in_progress executions whose heartbeat is older than the
  timeout ("worker lost: heartbeat timeout"), freeing the series; it runs inside every claim. The
  range is planned after the claim, so the next run of a failed series — including one its own
  claim just reaped — resumes from its checkpoint and counts ``retry_count``.
- Finishing: the writes that record the outcome (completed/failed, failure tracking) are retried
  with backoff across a database outage (``BACKFILL_FINISH_RETRIES``, ``BACKFILL_FINISH_BACKOFF``),
  so the execution says what happened instead of waiting for the reaper.
- Stopping: between provider pages the run asks ``shutdown.stop_requested()`` (SIGTERM, a django-q2
  cluster shutting down); if asked, it commits what it holds and ends failed "worker stopping",
  resumable from its checkpoint.
- Cancelling (``cancel.py``): a pending execution no worker has started ends failed "cancelled: …",
  frees the series and is not a failure of the symbol; its queued task then does nothing.
- A run that stored nothing because validation rejected every bar fails, with the reasons counted.
"""


from .cancel import CANCELLED, NotCancellable, cancel_backfill, cancel_pending_backfills, is_cancelled
from .finish import all_rejected_message, record_invalid_bars_anomaly
from .plan import SeriesSpec, check_range, plan_range, resolve_series
from .run import claim_backfill, run_backfill, run_backfill_execution
from .state import (
    BackfillError,
    BackfillRefused,
    BackfillResult,
    BackfillStopped,
    StrictValidationError,
    create_backfill_state,
    get_active_backfill_states,
    reap_dead_backfills,
    update_backfill_state,
    worker_name,
)

__all__ = [
    "BackfillError",
    "BackfillRefused",
    "BackfillResult",
    "BackfillStopped",
    "CANCELLED",
    "NotCancellable",
    "SeriesSpec",
    "StrictValidationError",
    "all_rejected_message",
    "cancel_backfill",
    "cancel_pending_backfills",
    "check_range",
    "claim_backfill",
    "create_backfill_state",
    "get_active_backfill_states",
    "is_cancelled",
    "plan_range",
    "reap_dead_backfills",
    "record_invalid_bars_anomaly",
    "resolve_series",
    "run_backfill",
    "run_backfill_execution",
    "update_backfill_state",
    "worker_name",
]
