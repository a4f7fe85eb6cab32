"""How a run ended, recorded: completed or failed (with the validation outcome), the invalid-bars
finding and the symbol's failure tracking; each write retried with backoff across a lost database."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from django.db import DatabaseError, InterfaceError, OperationalError, connections

from ..conf import conf
from ..failures import track_symbol_failure
from ..models import AnomalyType, BackfillState, BackfillStatus, DataAnomaly, InvalidTransition, Severity
from ..quality.findings import fingerprint as anomaly_fingerprint
from ..rejected import rejected_span, resolve_superseded_findings
from ..validation import ValidationSummary
from .state import BackfillStopped

if TYPE_CHECKING:
    from .run import _Run

logger = logging.getLogger(__name__)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    if isinstance(exc, SystemExit):
        return "worker exiting"
    if isinstance(exc, DatabaseError):
        # A lost connection often surfaces as the reconnect that failed while Django cleaned up
        # after the first error: say what happened first, then what followed.
        return "; then ".join(dict.fromkeys(_describe_one(e) for e in _database_error_chain(exc)))
    return _describe_one(exc)


def _describe_one(exc: BaseException) -> str:
    text = str(exc).strip() or exc.__class__.__name__
    if exc.__class__.__module__.startswith(("integrity", "builtins")) and not isinstance(exc, (OSError,)):
        return text
    return f"{exc.__class__.__name__}: {text}"


def _database_error_chain(exc: BaseException, limit: int = 3) -> list[BaseException]:
    """The database errors raised while handling one another, oldest first."""
    chain = [exc]
    while len(chain) < limit:
        earlier = chain[-1].__context__
        if earlier is not None and earlier is chain[-1].__cause__:
            earlier = earlier.__context__  # the driver's own copy of the same error
        if not isinstance(earlier, DatabaseError):
            break
        chain.append(earlier)
    return chain[::-1]




# --- finishing: the writes that record how a run ended -------------------------------------------

FINISH_BACKOFF_MAX_SECONDS = 30.0


def _sleep(seconds: float) -> None:
    time.sleep(seconds)  # one place, so tests can record the backoff instead of waiting it out


def _drop_broken_connections() -> None:
    """Close connections an error left unusable (and obsolete ones), so the next query reconnects.

    Never inside a transaction: closing would abort it, and that transaction is the caller's.
    """
    for conn in connections.all(initialized_only=True):
        if conn.in_atomic_block:
            continue
        try:
            conn.close_if_unusable_or_obsolete()
        except DatabaseError:
            pass  # the connection is dropped either way


def _with_db_retry(what: str, write: Callable[[int], Any]) -> Any:
    """``write(attempt)``, again after a lost database connection: bounded, with backoff.

    1 + ``BACKFILL_FINISH_RETRIES`` attempts; ``BACKFILL_FINISH_BACKOFF`` seconds before the first
    retry, doubled each time (at most 30 s); the broken connection is closed between attempts. The
    last error is raised. ``attempt`` lets a write tell its own earlier, unacknowledged success
    from someone else's change.
    """
    retries = max(0, conf.BACKFILL_FINISH_RETRIES)
    delay = max(0.0, conf.BACKFILL_FINISH_BACKOFF)
    for attempt in range(1, retries + 2):
        try:
            return write(attempt)
        except (OperationalError, InterfaceError) as exc:
            _drop_broken_connections()
            if attempt > retries:
                raise
            logger.warning("%s failed (attempt %d of %d), retrying in %.1fs: %s",
                           what, attempt, retries + 1, delay, _describe(exc))
            _sleep(delay)
            delay = min(delay * 2, FINISH_BACKOFF_MAX_SECONDS)
    raise AssertionError("unreachable")


def _already(state: BackfillState, status: str, **fields) -> bool:
    return BackfillState.objects.filter(pk=state.pk, status=status, **fields).exists()


def _record_outcome(state: BackfillState, run: _Run | None, failure: BaseException | None) -> tuple[str, str | None]:
    """Record how the run ended; returns (result status, error)."""
    if failure is not None:
        message = _describe(failure)
        unrecorded = _finish_failed(state, message, count_failure=not isinstance(failure, BackfillStopped))
        return BackfillStatus.FAILED, message + (f"; {unrecorded}" if unrecorded else "")
    rejected = all_rejected_message(run.summary, state.timeframe) if run is not None else None
    if rejected is not None:
        unrecorded = _finish_failed(state, rejected, run=run)
        return BackfillStatus.FAILED, rejected + (f"; {unrecorded}" if unrecorded else "")
    unrecorded = _finish_completed(state, run)
    if unrecorded:
        return BackfillStatus.FAILED, unrecorded
    return BackfillStatus.COMPLETED, None


def all_rejected_message(summary: ValidationSummary, timeframe: str) -> str | None:
    """"30 of 30 bars rejected: misaligned_ts" when validation refused every bar the provider sent."""
    if summary.valid_count or not summary.invalid_count:
        return None
    total = summary.invalid_count
    reasons = ", ".join(code if n == total else f"{code} ×{n}"
                        for code, n in sorted(summary.reason_counts.items(), key=lambda item: -item[1]))
    message = f"{total:,} of {total:,} bars rejected: {reasons}"
    if summary.reason_counts.get("misaligned_ts") == total:
        first = summary.examples[0]["ts"] if summary.examples else None
        message += (f" — no bar starts on the {timeframe} grid" + (f" (first: {first})" if first else "")
                    + "; are the timestamps in another time zone (--tz), stamped at the bar's close "
                    "(--timestamp-label close), or anchored at the session open (is this file "
                    "session-anchored? try --bar-alignment session)?")
    return message


def _record_validation(state: BackfillState, run: _Run) -> None:
    details = dict(BackfillState.objects.filter(pk=state.pk).values_list("details", flat=True).first() or {})
    details["validation"] = run.summary.as_dict()
    if run.dropped_outside_range or run.dropped_out_of_order:
        details["dropped"] = {"outside_range": run.dropped_outside_range, "repeated": run.dropped_out_of_order}
    BackfillState.objects.filter(pk=state.pk).update(details=details)


def _finish_completed(state: BackfillState, run: _Run) -> str | None:
    """Mark the run completed; None, or why that could not be recorded."""

    def complete(attempt: int) -> None:
        _record_validation(state, run)
        try:
            state.mark_completed()
        except InvalidTransition:
            # A retry after an update that landed but whose reply was lost with the connection.
            if attempt == 1 or not _already(state, BackfillStatus.COMPLETED):
                raise
            state.refresh_from_db()

    try:
        _with_db_retry(f"recording the completion of backfill {state.execution_id}", complete)
    except InvalidTransition as exc:
        logger.warning("backfill %s could not be marked completed: %s", state.execution_id, exc)
        return str(exc)
    except Exception as exc:
        logger.exception("backfill %s wrote all its bars but its completion could not be recorded",
                         state.execution_id)
        return (f"all bars were committed but the completion could not be recorded ({_describe(exc)}); "
                "the execution stays in_progress until it is reaped, and a rerun resumes from its checkpoint")
    _after_finish(state, run, success=True)
    return None


def _finish_failed(state: BackfillState, message: str, *, run: _Run | None = None,
                   count_failure: bool = True) -> str | None:
    """Mark the run failed with ``message``; None, or why that could not be recorded.

    ``run``: also record its validation outcome (a run whose every bar was rejected).
    ``count_failure``: a worker told to stop is not a failure of the symbol.
    """

    def fail(attempt: int) -> None:
        if run is not None:
            _record_validation(state, run)
        try:
            state.mark_failed(message)
        except InvalidTransition:
            if attempt == 1 or not _already(state, BackfillStatus.FAILED, error_message=str(message)[:10_000]):
                raise
            state.refresh_from_db()

    try:
        _with_db_retry(f"recording the failure of backfill {state.execution_id}", fail)
    except InvalidTransition:
        # Reaped (or finished) meanwhile: the reaper already counted the failure.
        logger.warning("backfill %s could not be marked failed: no longer active", state.execution_id)
        return None
    except Exception as exc:
        logger.exception("backfill %s failed and its state could not be recorded", state.execution_id)
        return (f"the failure could not be recorded ({_describe(exc)}); the execution stays in_progress "
                "until it is reaped")
    logger.warning("backfill %s (%s %s) failed: %s", state.execution_id, state.symbol, state.timeframe, message)
    _after_finish(state, run, success=False, error=message, count=count_failure)
    return None


def _after_finish(state: BackfillState, run: _Run | None, *, success: bool, error: str = "",
                  count: bool = True) -> None:
    """The invalid-bars finding and the symbol's failure tracking: retried, never fatal."""
    if run is not None and run.summary.invalid_count:
        try:
            _with_db_retry("recording the invalid_ohlc finding",
                           lambda attempt: record_invalid_bars_anomaly(state, run.summary))
        except Exception:
            logger.exception("the invalid_ohlc finding of backfill %s could not be recorded", state.execution_id)
    if not count:
        return
    try:
        # A retry after a lost acknowledgement may count a failure twice: rare, and on the safe side.
        _with_db_retry(f"failure tracking for {state.symbol}",
                       lambda attempt: track_symbol_failure(state.symbol, success=success, error=error))
    except Exception:
        logger.exception("failure tracking for %s could not be recorded", state.symbol)


def record_invalid_bars_anomaly(state: BackfillState, summary: ValidationSummary):
    """One invalid_ohlc anomaly per execution, with reason counts and examples. Its period spans the
    bars the execution quarantined (``rejected_candles``), not the whole backfill range: the holes
    they leave are this finding's, and the gap detector does not report them again."""
    fingerprint = anomaly_fingerprint(AnomalyType.INVALID_OHLC.value, state.symbol, state.timeframe,
                                      execution_id=state.execution_id)
    existing = DataAnomaly.objects.filter(fingerprint=fingerprint, execution_id=state.execution_id).first()
    if existing is not None:
        return existing  # recorded by an attempt whose reply was lost
    state.refresh_from_db()
    total = state.records_inserted + state.records_updated + summary.invalid_count
    share = summary.invalid_count / total if total else 1.0
    severity = Severity.HIGH if share > 0.01 else Severity.MEDIUM
    reasons = ", ".join(f"{code} ×{n}" for code, n in sorted(summary.reason_counts.items()))
    first, last, quarantined = rejected_span(state.execution_id)
    anomaly = DataAnomaly.objects.create(
        symbol=state.symbol,
        timeframe=state.timeframe,
        anomaly_type=AnomalyType.INVALID_OHLC,
        severity=severity,
        description=(
            f"{summary.invalid_count} invalid bar(s) from provider {state.provider or '?'} rejected by "
            f"backfill {state.execution_id} and not stored ({reasons})"
        ),
        affected_rows=summary.invalid_count,
        # Bars without a timestamp alone: no bar time to point at, so the run's range.
        period_start=first or state.range_start,
        period_end=last or state.range_end,
        fingerprint=fingerprint,
        execution_id=state.execution_id,
        details={"source": "backfill", **summary.as_dict(), "quarantined": quarantined},
    )
    resolve_superseded_findings(state.symbol, state.timeframe, state.execution_id)
    return anomaly
