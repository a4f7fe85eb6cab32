"""Repairs: one anomaly (synchronously, or claimed now and run later by the queue), a selection (the
command), and the health job's automatic repair of new gap and invalid-bar anomalies; each attempt
recorded on its anomaly."""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from ..backfill import BackfillError, BackfillResult, claim_backfill, run_backfill
from ..conf import conf
from ..models import (
    AnomalyType,
    BackfillState,
    BackfillStatus,
    DataAnomaly,
    HealthCheckRun,
    ResolutionStatus,
)
from ..quality.findings import Finding
from ..quality.record import UNRESOLVED
from ..series import chunks
from ..timeframes import floor_to_timeframe, iso, timeframe_delta
from .recheck import FIXED, MISSING_AT_SOURCE, Verdict, recheck

logger = logging.getLogger(__name__)

# What a re-fetch can repair (stale is the schedule's business, duplicates the cleanup's).
REPAIRABLE_TYPES = (AnomalyType.GAP, AnomalyType.OUTLIER, AnomalyType.INVALID_OHLC, AnomalyType.OFF_CALENDAR)
# What the health job repairs by itself before it alerts.
AUTO_TYPES = (AnomalyType.GAP, AnomalyType.INVALID_OHLC)
FAILED, BUSY, PLANNED = "failed", "busy", "planned"
REPAIRER = "repair"  # resolved_by of what a repair resolves
# Attempts the health job may try again after the back-off (the others wait for a person).
RETRYABLE = (FAILED, BUSY)


class RepairError(Exception):
    """This anomaly cannot be repaired. ``conflict``: because of its state (resolved), not the request."""

    def __init__(self, message: str, *, conflict: bool = False):
        super().__init__(message)
        self.conflict = conflict


@dataclass
class RepairOutcome:
    anomaly_id: int
    symbol: str
    timeframe: str
    anomaly_type: str
    # fixed | missing_at_source | confirmed_at_source | still_present | failed | busy | planned (dry run)
    outcome: str
    range_start: str | None
    range_end: str | None
    execution_id: str | None = None
    note: str = ""

    @property
    def resolved(self) -> bool:
        return self.outcome in (FIXED, MISSING_AT_SOURCE)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "resolved": self.resolved}


def repair_range(anomaly: DataAnomaly, now: datetime | None = None) -> tuple[datetime, datetime]:
    """``[start, end)`` a repair fetches: the anomaly's bars, ``BACKFILL_OVERLAP_BARS`` either side
    (never past the bar in progress). Raises ``RepairError`` for an anomaly no re-fetch can repair."""
    if anomaly.resolution_status not in UNRESOLVED:
        raise RepairError(f"anomaly {anomaly.pk} is {anomaly.resolution_status}: nothing to repair", conflict=True)
    if anomaly.anomaly_type not in REPAIRABLE_TYPES:
        raise RepairError(f"a {anomaly.anomaly_type} anomaly cannot be repaired by a re-fetch; repairable: "
                          f"{', '.join(REPAIRABLE_TYPES)}")
    if anomaly.period_start is None:
        raise RepairError(f"anomaly {anomaly.pk} has no period to re-fetch")
    tf = anomaly.timeframe
    step = timeframe_delta(tf)
    overlap = conf.BACKFILL_OVERLAP_BARS * step
    start = floor_to_timeframe(anomaly.period_start, tf) - overlap
    end = floor_to_timeframe(anomaly.period_end or anomaly.period_start, tf) + step + overlap
    return start, min(end, floor_to_timeframe(now or timezone.now(), tf) + step)


def requested_by(anomaly: DataAnomaly, by: str = "") -> str:
    return (f"repair of anomaly #{anomaly.pk}" + (f" for {by}" if by else ""))[:150]


def repaired_anomaly_id(state: BackfillState) -> int | None:
    """The anomaly an execution repairs (as ``requested_by`` names it), or None for a plain backfill."""
    match = re.match(r"repair of anomaly #(\d+)\b", state.requested_by or "")
    return int(match.group(1)) if match else None


def repair_anomaly(anomaly: DataAnomaly, *, by: str = "", now: datetime | None = None) -> RepairOutcome:
    """Repair now, in this process: backfill the range, re-check it, record the attempt."""
    start, end = repair_range(anomaly, now)
    try:
        result = run_backfill(anomaly.symbol, anomaly.timeframe, start=start, end=end, now=now,
                              requested_by=requested_by(anomaly, by))
    except BackfillError as exc:
        result = BackfillResult(symbol=anomaly.symbol, timeframe=anomaly.timeframe, status=FAILED, error=str(exc))
    return finish_repair(anomaly, result, start, end, now)


def claim_repair(anomaly: DataAnomaly, *, by: str = "") -> BackfillState:
    """Claim the anomaly's series for a repair run later (``integrity.tasks.request_repair`` queues it).
    Raises ``RepairError``, ``BackfillRefused`` (the series is busy) or ``BackfillError``."""
    start, end = repair_range(anomaly)
    return claim_backfill(anomaly.symbol, anomaly.timeframe, start=start, end=end,
                          requested_by=requested_by(anomaly, by))


def run_repair_execution(anomaly_id: int, execution_id: str) -> dict[str, Any]:
    """Run a repair ``claim_repair`` claimed, then re-check and record it (the queue's task)."""
    anomaly = DataAnomaly.objects.get(pk=anomaly_id)
    state = BackfillState.objects.get(execution_id=execution_id)
    if state.status != BackfillStatus.PENDING:
        # Cancelled (or reaped as never started) while queued: nothing to run, nothing to record.
        logger.info("repair of anomaly %s: execution %s is %s, not pending: skipped", anomaly_id, execution_id,
                    state.status)
        return {"anomaly_id": anomaly_id, "execution_id": str(execution_id), "outcome": "skipped",
                "status": state.status}
    start, end = state.range_start, state.range_end
    result = run_backfill(state.symbol, state.timeframe, execution_id=state.execution_id)
    return finish_repair(anomaly, result, start, end).as_dict()


def finish_repair(anomaly: DataAnomaly, result: BackfillResult, start: datetime, end: datetime,
                  now: datetime | None = None) -> RepairOutcome:
    """Turn a repair's backfill result into its outcome and record it on the anomaly."""
    now = now or timezone.now()
    outcome = RepairOutcome(anomaly_id=anomaly.pk, symbol=anomaly.symbol, timeframe=anomaly.timeframe,
                            anomaly_type=anomaly.anomaly_type, outcome=FAILED, range_start=iso(start),
                            range_end=iso(end), execution_id=result.execution_id)
    verdict = None
    if result.status == "refused":
        outcome.outcome, outcome.note = BUSY, result.error or "the series is busy"
    elif result.status != BackfillStatus.COMPLETED:
        outcome.outcome, outcome.note = FAILED, f"the re-fetch failed: {result.error}"
    else:
        verdict = recheck(anomaly, start, end, result, now)
        outcome.outcome, outcome.note = verdict.outcome, verdict.note
    _record_attempt(anomaly, outcome, verdict, now)
    if verdict is not None and verdict.missing_elsewhere:
        _resolve_missing_at_source(verdict.missing_elsewhere, outcome, now)
    logger.info("repair of anomaly %s (%s %s %s): %s", anomaly.pk, anomaly.symbol, anomaly.timeframe,
                anomaly.anomaly_type, outcome.outcome)
    return outcome


def _record_attempt(anomaly: DataAnomaly, outcome: RepairOutcome, verdict: Verdict | None, now: datetime) -> None:
    attempt = {"at": iso(now), "execution_id": outcome.execution_id, "outcome": outcome.outcome,
               "range": [outcome.range_start, outcome.range_end], "note": outcome.note}
    resolution: dict[str, Any] = {}
    if outcome.resolved:
        resolution.update(resolution_status=ResolutionStatus.RESOLVED, resolution_reason=outcome.outcome,
                          resolved_by=REPAIRER, resolved_at=now)
    if verdict is not None:
        resolution["resolution_note"] = verdict.note
    confirmed = {"confirmed_at_source": verdict.value} if verdict is not None and verdict.value is not None else {}
    record_repair_attempt(anomaly, attempt, now=now, details_update=confirmed, resolution=resolution)


def record_repair_attempt(anomaly: DataAnomaly, attempt: dict[str, Any], *, now: datetime,
                          details_update: dict[str, Any] | None = None,
                          resolution: dict[str, Any] | None = None) -> None:
    """Append ``attempt`` to the anomaly's ``details["repairs"]`` (the row locked, so concurrent repairs
    never lose one), merge ``details_update`` into its details and, while it is unresolved, apply
    ``resolution`` (its review fields); ``anomaly`` is updated in memory too. Used by the re-fetch
    repair and by the repair from a reference source."""
    with transaction.atomic():
        row = DataAnomaly.objects.select_for_update().filter(pk=anomaly.pk).values(
            "details", "resolution_status").first()
        if row is None:
            return
        details = {**(row["details"] or {}), **(details_update or {})}
        details["repairs"] = [*details.get("repairs", []), attempt]
        changes: dict[str, Any] = {"details": details, "updated_at": now}
        if row["resolution_status"] in UNRESOLVED:
            changes.update(resolution or {})
        DataAnomaly.objects.filter(pk=anomaly.pk).update(**changes)
    for name, value in changes.items():
        setattr(anomaly, name, value)


def _resolve_missing_at_source(findings: list[Finding], outcome: RepairOutcome, now: datetime) -> None:
    """Gaps inside a repaired range that the source could not fill either: resolved
    ``missing_at_source`` (an open anomaly of one), or recorded so (a new one), so no scan reopens them."""
    note = f"the source has no such bars either (repair execution {outcome.execution_id})"
    resolved = {"resolution_status": ResolutionStatus.RESOLVED, "resolution_reason": MISSING_AT_SOURCE,
                "resolved_by": REPAIRER, "resolved_at": now, "resolution_note": note}
    for finding in findings:
        if DataAnomaly.objects.filter(fingerprint=finding.fingerprint, resolution_status__in=UNRESOLVED).update(
                updated_at=now, **resolved):
            continue
        DataAnomaly.objects.create(
            symbol=finding.symbol, timeframe=finding.timeframe, anomaly_type=finding.anomaly_type,
            severity=finding.severity, description=finding.description, affected_rows=finding.affected_rows,
            period_start=finding.period_start, period_end=finding.period_end, fingerprint=finding.fingerprint,
            details=finding.details, detected_at=now, last_seen_at=now, **resolved)


# --- a selection (the command) and the health job ------------------------------------------------


def repair_anomalies(symbol: str | None = None, timeframe: str | None = None, types: list[str] | None = None,
                     *, dry_run: bool = False, by: str = "", now: datetime | None = None) -> list[RepairOutcome]:
    """Repair every unresolved anomaly of ``types`` (default: every repairable type) with a period,
    one after the other; ``dry_run``: only say what would be re-fetched."""
    types = list(types or REPAIRABLE_TYPES)
    unknown = sorted(set(types) - set(REPAIRABLE_TYPES))
    if unknown:
        raise RepairError(f"cannot repair {', '.join(unknown)}; repairable: {', '.join(REPAIRABLE_TYPES)}")
    selection = DataAnomaly.objects.filter(resolution_status__in=UNRESOLVED, anomaly_type__in=types,
                                           period_start__isnull=False)
    if symbol:
        selection = selection.filter(symbol=symbol)
    if timeframe:
        selection = selection.filter(timeframe=timeframe)
    outcomes = []
    for anomaly in selection.order_by("symbol", "timeframe", "period_start", "id"):
        if dry_run:
            start, end = repair_range(anomaly, now)
            outcomes.append(RepairOutcome(anomaly.pk, anomaly.symbol, anomaly.timeframe, anomaly.anomaly_type,
                                          PLANNED, iso(start), iso(end), note=anomaly.description))
            continue
        anomaly.refresh_from_db()  # an earlier repair of the same series may have resolved it
        if anomaly.resolution_status in UNRESOLVED:
            outcomes.append(repair_anomaly(anomaly, by=by, now=now))
    return outcomes


def _due_again(repairs: list[dict], now: datetime) -> bool:
    """After failed (or busy) attempts: due again once ``REPAIR_BACKOFF`` seconds, doubled per
    consecutive failed attempt, have passed since the last one."""
    failed = 0
    for attempt in reversed(repairs):
        if attempt.get("outcome") not in RETRYABLE:
            break
        failed += 1
    if not failed:
        return False  # never tried, or its last attempt ended with a verdict a person now owns
    last = datetime.fromisoformat(repairs[-1]["at"])
    return now >= last + timedelta(seconds=conf.REPAIR_BACKOFF * 2 ** (failed - 1))


def auto_repair(new_anomaly_ids: list[int], now: datetime | None = None) -> dict[str, Any]:
    """The health job's repairs, before it alerts: open gap and invalid-bar anomalies that are new
    (found by this run's scan, or rejected bars a backfill reported since the previous run) or whose
    earlier attempt failed and whose back-off has passed; at most ``REPAIR_MAX_PER_RUN``."""
    if not conf.REPAIR_AUTO:
        return {"enabled": False}
    now = now or timezone.now()
    open_auto = DataAnomaly.objects.filter(resolution_status=ResolutionStatus.OPEN, anomaly_type__in=AUTO_TYPES,
                                           period_start__isnull=False)
    due: dict[int, DataAnomaly] = {}
    for part in chunks(new_anomaly_ids):
        for anomaly in open_auto.filter(pk__in=part).order_by("id"):
            due[anomaly.pk] = anomaly
    # The run before the health job's own (which is the newest).
    previous = HealthCheckRun.objects.order_by("-started_at").values_list("started_at", flat=True)[1:2]
    rejected = open_auto.filter(anomaly_type=AnomalyType.INVALID_OHLC, execution_id__isnull=False).exclude(
        details__has_key="repairs")
    if previous:
        rejected = rejected.filter(created_at__gte=previous[0])
    for anomaly in rejected.order_by("id")[:conf.REPAIR_MAX_PER_RUN]:
        due.setdefault(anomaly.pk, anomaly)
    for anomaly in open_auto.filter(details__has_key="repairs").order_by("id"):
        if anomaly.pk not in due and _due_again(anomaly.details.get("repairs") or [], now):
            due[anomaly.pk] = anomaly
    # A range too long to re-fetch inside the health job (scattered rejected bars over years) is left
    # to a person: `repair_anomalies` or the admin's "Re-fetch this range".
    too_long = []
    for anomaly in list(due.values()):
        try:
            start, end = repair_range(anomaly, now)
        except RepairError:
            continue
        if (end - start) / timeframe_delta(anomaly.timeframe) > conf.REPAIR_AUTO_MAX_BARS:
            too_long.append(anomaly.pk)
            del due[anomaly.pk]
    cap = max(0, conf.REPAIR_MAX_PER_RUN)
    chosen = list(due.values())[:cap]
    outcomes = []
    for anomaly in chosen:
        try:
            outcomes.append(repair_anomaly(anomaly, by="health", now=now))
        except RepairError as exc:  # resolved meanwhile: nothing to do
            logger.info("auto-repair skipped anomaly %s: %s", anomaly.pk, exc)
    return {"enabled": True, "attempted": len(outcomes), "deferred": len(due) - len(chosen),
            "too_long_for_auto_repair": too_long,
            "by_outcome": dict(Counter(o.outcome for o in outcomes)),
            "repairs": [o.as_dict() for o in outcomes]}
