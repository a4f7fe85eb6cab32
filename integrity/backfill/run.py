"""One execution's run: claim (or pick up a claimed execution), plan, fetch → validate → write in
batches with checkpoints and heartbeats, stop between pages when asked, then record the outcome."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, Unpack

import pandas as pd
from django.db import transaction
from django.utils import timezone

from ..conf import conf
from ..models import BackfillState, BackfillStatus, InvalidTransition
from ..providers import Provider, get_provider
from ..rejected import quarantine_bars
from ..shutdown import stop_on_sigterm, stop_requested
from ..timeframes import iso
from ..validation import ValidationSummary, validate_bars
from ..writer import WriteResult, write_bars
from .finish import _record_outcome
from .plan import SeriesOverrides, SeriesSpec, _fetch_request, check_range, plan_range, resolve_series
from .state import (
    BackfillRefused,
    BackfillResult,
    BackfillStopped,
    StrictValidationError,
    _latest_finished,
    create_backfill_state,
    update_backfill_state,
)

HEARTBEAT_EVERY_SECONDS = 5.0



# --- the run ----------------------------------------------------------------------------------


class _Run:
    """One execution's fetch → validate → write loop, with batching and checkpoints."""

    def __init__(self, state: BackfillState, spec: SeriesSpec, provider: Provider, *, start, end, strict,
                 batch_size, now, progress):
        self.state = state
        self.provider = provider
        self.spec = spec
        self.start = pd.Timestamp(start)
        self.end = pd.Timestamp(end)
        self.strict = strict
        self.batch_size = batch_size
        self.now = now
        self.progress = progress
        self.summary = ValidationSummary()
        self.totals = WriteResult()
        self.buffer: list[pd.DataFrame] = []
        self.buffered = 0
        self.pending_invalid = 0
        self.rejected: list[pd.DataFrame] = []  # refused bars waiting for the next batch's transaction
        self.rejected_rows = 0
        self.last_ts: pd.Timestamp | None = None
        self.dropped_outside_range = 0
        self.dropped_out_of_order = 0
        self.last_heartbeat = time.monotonic()

    def execute(self) -> None:
        request = _fetch_request(self.spec, self.start.to_pydatetime(), self.end.to_pydatetime())
        self._stop_if_asked()
        for page in self.provider.fetch(request):
            self._take(page)
            self._stop_if_asked()
        self._flush(final=True)

    def _stop_if_asked(self) -> None:
        """Between pages: if the worker is stopping, commit what we hold and end resumable."""
        reason = stop_requested()
        if reason is None:
            return
        self._flush(final=True)
        checkpoint = self.state.checkpoint_ts
        resume = (f"resumable from checkpoint {checkpoint.isoformat()}" if checkpoint
                  else "nothing committed; a rerun starts at the range start")
        raise BackfillStopped(f"worker stopping ({reason}): {self.totals.inserted:,} bars inserted, {resume}")

    def _take(self, page: pd.DataFrame) -> None:
        if not page.empty:
            in_range = (page["ts"] >= self.start) & (page["ts"] < self.end)
            self.dropped_outside_range += int((~in_range).sum())
            page = page[in_range]
        result = validate_bars(page, self.spec.timeframe, now=self.now, alignment=self.spec.alignment)
        self.summary.add(result)
        if result.invalid_count and self.strict:
            examples = result.examples(3)
            raise StrictValidationError(
                f"--strict: {result.invalid_count} invalid bar(s) in a provider page, e.g. {examples}"
            )
        self.pending_invalid += result.invalid_count
        if result.invalid_count:
            self.rejected.append(result.invalid)
            self.rejected_rows += result.invalid_count
        valid = result.valid
        if self.last_ts is not None and not valid.empty:
            # Pages come in ascending order; a bar at or before one already taken is a repeat.
            fresh = valid["ts"] > self.last_ts
            self.dropped_out_of_order += int((~fresh).sum())
            valid = valid[fresh]
        if not valid.empty:
            self.last_ts = valid["ts"].iloc[-1]
            self.buffer.append(valid)
            self.buffered += len(valid)
        if self.buffered >= self.batch_size:
            self._flush()
        elif self.rejected_rows >= self.batch_size:
            self._flush(final=True)  # a batch's worth of refused bars: commit them with what we hold
        elif time.monotonic() - self.last_heartbeat > HEARTBEAT_EVERY_SECONDS:
            self.state.heartbeat()
            self.last_heartbeat = time.monotonic()

    def _flush(self, final: bool = False) -> None:
        while self.buffered >= self.batch_size or (final and (self.buffered or self.pending_invalid)):
            frame = pd.concat(self.buffer, ignore_index=True) if len(self.buffer) > 1 else self.buffer[0] \
                if self.buffer else None
            if frame is not None and len(frame) > self.batch_size:
                batch, rest = frame.iloc[: self.batch_size], frame.iloc[self.batch_size:]
                self.buffer, self.buffered = [rest], len(rest)
            else:
                batch, self.buffer, self.buffered = frame, [], 0
            self._commit(batch)

    def _commit(self, batch: pd.DataFrame | None) -> None:
        with transaction.atomic():
            written = WriteResult()
            checkpoint = self.state.checkpoint_ts
            if batch is not None and not batch.empty:
                written = write_bars(self.spec.symbol, self.spec.timeframe, batch, source=self.spec.provider)
                checkpoint = batch["ts"].iloc[-1].to_pydatetime()
            if self.rejected:
                # Quarantined in the batch's transaction: refused bars and candles commit together.
                quarantine_bars(self.spec.symbol, self.spec.timeframe, pd.concat(self.rejected, ignore_index=True),
                                execution_id=self.state.execution_id, provider=self.spec.provider)
            # Bars and checkpoint commit together: the checkpoint never claims an unwritten bar.
            self.state.record_progress(
                checkpoint_ts=checkpoint,
                inserted=written.inserted,
                updated=written.updated,
                invalid=self.pending_invalid,
            )
        self.pending_invalid = 0
        self.rejected, self.rejected_rows = [], 0
        self.totals = self.totals + written
        self.last_heartbeat = time.monotonic()
        if self.progress:
            self.progress(self.state, self.totals)


def run_backfill(
    symbol: str,
    timeframe: str,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    strict: bool = False,
    batch_size: int | None = None,
    now: datetime | None = None,
    execution_id=None,
    requested_by: str = "",
    progress: Callable[[BackfillState, WriteResult], None] | None = None,
    **overrides: Unpack[SeriesOverrides],
) -> BackfillResult:
    """Drive one series through pending → in_progress → completed|failed.

    ``overrides`` (provider, provider_options, asset_class, calendar) override the watchlist entry
    (``resolve_series``).

    With ``execution_id``, runs that already-claimed pending execution (API/queue path); otherwise
    claims the series first. Never raises for a failed or refused run: the result says what happened.
    Raises ``BackfillError`` only for a request that is unusable before anything is claimed.
    """
    started = time.monotonic()
    now = now or timezone.now()
    batch_size = batch_size or conf.BACKFILL_BATCH_SIZE

    if execution_id is not None:
        state = BackfillState.objects.get(execution_id=execution_id)
        symbol, timeframe = state.symbol, state.timeframe
        overrides["asset_class"] = overrides.get("asset_class") or state.asset_class
        overrides["provider"] = overrides.get("provider") or state.provider or None
        start = start or state.range_start
        end = end or state.range_end
    spec = resolve_series(symbol, timeframe, **overrides)
    if execution_id is None:
        check_range(spec, start, end, now=now)  # before anything is claimed
    # SIGTERM from here on asks the run to stop between pages (see integrity.shutdown).
    with stop_on_sigterm():
        if execution_id is None:
            try:
                # The claim reaps dead executions of the series first ...
                state = create_backfill_state(symbol, timeframe, spec.asset_class, provider=spec.provider,
                                              range_start=start, range_end=end, requested_by=requested_by)
            except BackfillRefused as refused:
                return BackfillResult(
                    symbol=symbol, timeframe=timeframe, status="refused", error=str(refused),
                    active_execution_id=str(refused.active.execution_id) if refused.active else None,
                    duration_seconds=round(time.monotonic() - started, 3),
                )
        # ... so the previous execution is read after it: a run the claim just reaped is the one
        # to resume from.
        previous = _latest_finished(symbol, timeframe)
        result = BackfillResult(symbol=symbol, timeframe=timeframe, status="failed",
                                execution_id=str(state.execution_id), retry_count=state.retry_count)
        try:
            state = update_backfill_state(state.execution_id, status=BackfillStatus.IN_PROGRESS)
        except InvalidTransition as exc:
            result.error = str(exc)
            return result

        run = None
        failure: BaseException | None = None
        try:
            if execution_id is not None:  # claimed earlier (or written by hand): fails with the reason
                check_range(spec, start, end, now=now)
            provider_impl = get_provider(spec.provider)
            range_start, range_end, resumed_from = plan_range(spec, start=start, end=end, now=now,
                                                              previous=previous, provider=provider_impl)
            details = dict(state.details or {})
            details.update({"calendar": spec.calendar, "batch_size": batch_size, "requested_start": iso(start),
                            "bar_alignment": spec.alignment})
            if spec.provider_options.get("timestamp_label") == "close":
                # Recorded: the stored open times were moved back from the file's close stamps.
                details["timestamp_label"] = "close"
            changes = {"range_start": range_start, "range_end": range_end, "provider": spec.provider}
            if resumed_from:
                details["resumed_from"] = resumed_from.isoformat()
                # The bars up to it are committed: a run stopped before its own first batch still
                # hands the resume point on.
                changes["checkpoint_ts"] = state.checkpoint_ts = resumed_from
            BackfillState.objects.filter(pk=state.pk).update(details=details, **changes)
            state.range_start, state.range_end = range_start, range_end  # progress callbacks read them
            result.range_start, result.range_end = iso(range_start), iso(range_end)
            result.resumed_from = iso(resumed_from)
            run = _Run(state, spec, provider_impl, start=range_start, end=range_end, strict=strict,
                       batch_size=batch_size, now=now, progress=progress)
            if range_start < range_end:
                run.execute()
        except BaseException as exc:  # noqa: B036 — every way a run can end is recorded; fatal ones re-raised below
            failure = exc
        finally:
            if run is not None:
                result.inserted, result.updated = run.totals.inserted, run.totals.updated
                result.invalid = run.summary.invalid_count
                result.invalid_reasons = run.summary.reason_counts
        result.status, result.error = _record_outcome(state, run, failure)
        result.duration_seconds = round(time.monotonic() - started, 3)
    if failure is not None and not isinstance(failure, Exception):
        raise failure
    return result



def run_backfill_execution(execution_id: str) -> dict[str, Any]:
    """Run an execution claimed earlier (``claim_backfill``; queued by ``integrity.tasks``). Returns the result.

    Only a pending execution runs: one cancelled (``integrity.backfill.cancel``) or reaped while its
    task waited in the queue is left as it is, and the task reports it skipped."""
    state = BackfillState.objects.get(execution_id=execution_id)
    if state.status != BackfillStatus.PENDING:
        return BackfillResult(symbol=state.symbol, timeframe=state.timeframe, status="skipped",
                              execution_id=str(state.execution_id), retry_count=state.retry_count,
                              error=f"not run: the execution is {state.status}"
                                    + (f" ({state.error_message})" if state.error_message else "")).as_dict()
    return run_backfill(state.symbol, state.timeframe, execution_id=state.execution_id).as_dict()


def claim_backfill(symbol: str, timeframe: str, *, start: datetime | None = None, end: datetime | None = None,
                   provider: str | None = None, requested_by: str = "", reap: bool = True) -> BackfillState:
    """Claim a series now for a run later (a pending execution; ``integrity.tasks`` queues it). Raises
    BackfillRefused / BackfillError before anything is claimed. ``reap=False``: the caller has just
    reaped (a fan-out claiming many series reaps once)."""
    spec = resolve_series(symbol, timeframe, provider=provider)
    check_range(spec, start, end)
    return create_backfill_state(symbol, timeframe, spec.asset_class, provider=spec.provider,
                                 range_start=start, range_end=end, requested_by=requested_by, reap=reap)
