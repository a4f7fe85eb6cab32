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
- A run that stored nothing because validation rejected every bar fails, with the reasons counted.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pandas as pd
from django.db import (
    DatabaseError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    connections,
    transaction,
)
from django.db.models import Max, Q
from django.utils import timezone

from .calendars import calendar_for_asset_class, last_completed_bar, validate_calendar_code
from .conf import conf
from .failures import track_symbol_failure
from .models import (
    ACTIVE_STATUSES,
    AnomalyType,
    AssetClass,
    BackfillState,
    BackfillStatus,
    Candle,
    DataAnomaly,
    Instrument,
    InvalidTransition,
    Severity,
    Timeframe,
)
from .providers import FetchRequest, Provider, get_provider
from .quality.findings import fingerprint as anomaly_fingerprint
from .ranges import RangeError, check_backfill_range
from .shutdown import stop_on_sigterm, stop_requested
from .timeframes import BarAlignment, floor_to_timeframe, timeframe_delta
from .validation import ValidationSummary, validate_bars
from .writer import WriteResult, write_bars

logger = logging.getLogger(__name__)

HEARTBEAT_EVERY_SECONDS = 5.0


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
    status: str  # completed | failed | refused
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
    return f"{socket.gethostname()}:{os.getpid()}"


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


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
    pending never picked up within BACKFILL_PENDING_TIMEOUT_SECONDS → failed "never started".
    Each reaped execution counts as a failure of its symbol.
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
    for state in BackfillState.objects.filter(dead_running | never_started):
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
            track_symbol_failure(state.symbol, success=False, error=message)
    return reaped


def _latest_finished(symbol: str, timeframe: str) -> BackfillState | None:
    return (
        BackfillState.objects.filter(symbol=symbol, timeframe=timeframe, status__in=["completed", "failed"])
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


@dataclass
class SeriesSpec:
    symbol: str
    timeframe: str
    asset_class: str
    calendar: str
    provider: str
    provider_options: dict[str, Any]
    alignment: str = BarAlignment.CLOCK  # where intraday bars start (the instrument's bar_alignment)


def resolve_series(
    symbol: str,
    timeframe: str,
    *,
    provider: str | None = None,
    provider_options: dict[str, Any] | None = None,
    asset_class: str | None = None,
    calendar: str | None = None,
) -> SeriesSpec:
    """What we know about a series: the watchlist entry, overridden by explicit arguments."""
    instrument = Instrument.objects.filter(symbol=symbol).first()
    if instrument is None and asset_class is None:
        raise BackfillError(
            f"unknown instrument {symbol!r}: add it to the watchlist or pass --asset-class (and --calendar)"
        )
    asset_class = asset_class or instrument.asset_class
    calendar = calendar or (instrument.calendar if instrument else calendar_for_asset_class(asset_class))
    try:
        validate_calendar_code(calendar)
    except ValueError as exc:
        raise BackfillError(str(exc)) from None
    options = dict(instrument.provider_options) if instrument else {}
    options.update(provider_options or {})
    return SeriesSpec(
        symbol=symbol,
        timeframe=timeframe,
        asset_class=asset_class,
        calendar=calendar,
        provider=provider or (instrument.provider if instrument else "synthetic"),
        provider_options=options,
        alignment=instrument.bar_alignment if instrument else BarAlignment.CLOCK,
    )


def plan_range(
    spec: SeriesSpec,
    *,
    start: datetime | None,
    end: datetime | None,
    now: datetime,
    previous: BackfillState | None,
    provider: Provider | None = None,
) -> tuple[datetime, datetime, datetime | None]:
    """[start, end) to fetch, and the checkpoint resumed from (if any).

    end: never past the last *completed* bar (bars still forming are never stored).
    start: explicit, else the last stored bar minus a small overlap (to pick up revisions), else
    the configured lookback — or, for a provider that knows its first bar (a CSV file), that bar,
    so a file's older history is not cut off. A failed previous run of the same range resumes
    from its checkpoint (the same range: the same requested start, also when that run was itself
    a resumption).
    """
    step = timeframe_delta(spec.timeframe)
    last_complete = last_completed_bar(spec.calendar, spec.timeframe, now, spec.alignment)
    hard_end = last_complete + step if last_complete else floor_to_timeframe(now, spec.timeframe)
    end = hard_end if end is None else min(end, hard_end)
    resumed_from = None
    resumable = (
        previous is not None
        and previous.status == BackfillStatus.FAILED
        and previous.checkpoint_ts is not None
    )
    if start is None:
        last_stored = Candle.objects.filter(symbol=spec.symbol, timeframe=spec.timeframe).aggregate(m=Max("ts"))["m"]
        if last_stored is not None:
            start = last_stored - conf.BACKFILL_OVERLAP_BARS * step
        else:
            first = _provider_first_bar(provider, spec, end)
            start = first if first is not None else now - timedelta(
                days=conf.BACKFILL_LOOKBACK_DAYS[spec.timeframe])
        if resumable and previous.range_start is not None and previous.checkpoint_ts >= start:
            resumed_from = previous.checkpoint_ts
    else:
        if resumable and start in (previous.range_start, _requested_start(previous)) \
                and previous.checkpoint_ts >= start:
            # The bars up to and including the checkpoint are committed; restart at it (idempotent).
            resumed_from = previous.checkpoint_ts
            start = previous.checkpoint_ts
    start = floor_to_timeframe(start, spec.timeframe)
    return start, end, resumed_from


def _requested_start(state: BackfillState) -> datetime | None:
    """The start its caller asked for: a resumed run's own range starts at the checkpoint."""
    requested = (state.details or {}).get("requested_start")
    return datetime.fromisoformat(requested) if requested else None


def _fetch_request(spec: SeriesSpec, start: datetime, end: datetime) -> FetchRequest:
    return FetchRequest(symbol=spec.symbol, timeframe=spec.timeframe, start=start, end=end,
                        calendar=spec.calendar, asset_class=spec.asset_class, options=spec.provider_options,
                        alignment=spec.alignment)


def _provider_first_bar(provider: Provider | None, spec: SeriesSpec, end: datetime) -> datetime | None:
    first_bar_ts = getattr(provider, "first_bar_ts", None)
    if first_bar_ts is None:
        return None
    return first_bar_ts(_fetch_request(spec, end, end))


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
            # Bars and checkpoint commit together: the checkpoint never claims an unwritten bar.
            self.state.record_progress(
                checkpoint_ts=checkpoint,
                inserted=written.inserted,
                updated=written.updated,
                invalid=self.pending_invalid,
            )
        self.pending_invalid = 0
        self.totals = self.totals + written
        self.last_heartbeat = time.monotonic()
        if self.progress:
            self.progress(self.state, self.totals)


def run_backfill(
    symbol: str,
    timeframe: str,
    *,
    provider: str | None = None,
    provider_options: dict[str, Any] | None = None,
    asset_class: str | None = None,
    calendar: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    strict: bool = False,
    batch_size: int | None = None,
    now: datetime | None = None,
    execution_id=None,
    requested_by: str = "",
    progress: Callable[[BackfillState, WriteResult], None] | None = None,
) -> BackfillResult:
    """Drive one series through pending → in_progress → completed|failed.

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
        asset_class = asset_class or state.asset_class
        provider = provider or state.provider or None
        start = start or state.range_start
        end = end or state.range_end
    spec = resolve_series(symbol, timeframe, provider=provider, provider_options=provider_options,
                          asset_class=asset_class, calendar=calendar)
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
            details.update({"calendar": spec.calendar, "batch_size": batch_size, "requested_start": _iso(start),
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
            result.range_start, result.range_end = _iso(range_start), _iso(range_end)
            result.resumed_from = _iso(resumed_from)
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


def check_range(spec: SeriesSpec, start: datetime | None, end: datetime | None, now: datetime | None = None) -> None:
    """The bounds of an explicit range (``integrity.ranges``: API, admin, CLI and here alike)."""
    try:
        check_backfill_range(spec.timeframe, start, end, provider=spec.provider, now=now)
    except RangeError as exc:
        raise BackfillError(str(exc)) from None


def run_backfill_execution(execution_id: str) -> dict[str, Any]:
    """Run an execution claimed earlier (``claim_backfill``; queued by ``integrity.tasks``). Returns the result."""
    state = BackfillState.objects.get(execution_id=execution_id)
    return run_backfill(state.symbol, state.timeframe, execution_id=state.execution_id).as_dict()


def claim_backfill(symbol: str, timeframe: str, *, start: datetime | None = None, end: datetime | None = None,
                   provider: str | None = None, requested_by: str = "") -> BackfillState:
    """Claim a series now for a run later (a pending execution; ``integrity.tasks.request_backfill``
    queues it). Raises BackfillRefused / BackfillError before anything is claimed."""
    spec = resolve_series(symbol, timeframe, provider=provider)
    check_range(spec, start, end)
    return create_backfill_state(symbol, timeframe, spec.asset_class, provider=spec.provider,
                                 range_start=start, range_end=end, requested_by=requested_by)


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
    """One invalid_ohlc anomaly per execution, with reason counts and examples."""
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
    return DataAnomaly.objects.create(
        symbol=state.symbol,
        timeframe=state.timeframe,
        anomaly_type=AnomalyType.INVALID_OHLC,
        severity=severity,
        description=(
            f"{summary.invalid_count} invalid bar(s) from provider {state.provider or '?'} rejected by "
            f"backfill {state.execution_id} and not stored ({reasons})"
        ),
        affected_rows=summary.invalid_count,
        period_start=state.range_start,
        period_end=state.range_end,
        fingerprint=fingerprint,
        execution_id=state.execution_id,
        details={"source": "backfill", **summary.as_dict()},
    )
