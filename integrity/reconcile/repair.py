"""Repair from the reference: a person's explicit decision, with a note, to take the reference's
bars for a ``source_mismatch`` anomaly's range. Never automatic.

It is a tracked backfill like any other (``integrity.backfill.run_backfill`` with ``reference=True``:
the same claim — one active execution per series —, validation, writer, checkpoints and failure
tracking), fetching from the instrument's reference provider and options; the execution's
``requested_by`` names the anomaly and who asked, its ``details["reference_repair"]`` keeps the
note. The attempt is appended to the anomaly's ``details["repairs"]`` (as every repair is); a
completed one resolves the anomaly ``fixed`` with the note."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.utils import timezone

from ..backfill import BackfillError, run_backfill
from ..models import AnomalyType, BackfillState, BackfillStatus, DataAnomaly, Instrument, ResolutionStatus
from ..quality.record import UNRESOLVED
from ..repair.service import REPAIRER, record_repair_attempt
from ..timeframes import floor_to_timeframe, iso, timeframe_delta
from .reference import ReconcileError


def reference_range(anomaly: DataAnomaly) -> tuple[datetime, datetime]:
    """``[start, end)`` of the anomaly's bars; ``ReconcileError`` when it cannot be taken from the
    reference (another type, resolved, no period, no reference source)."""
    if anomaly.anomaly_type != AnomalyType.SOURCE_MISMATCH:
        raise ReconcileError(f"anomaly {anomaly.pk} is a {anomaly.anomaly_type} anomaly; only a "
                             f"{AnomalyType.SOURCE_MISMATCH} anomaly can be repaired from the reference")
    if anomaly.resolution_status not in UNRESOLVED:
        raise ReconcileError(f"anomaly {anomaly.pk} is {anomaly.resolution_status}: nothing to repair",
                             conflict=True)
    if anomaly.period_start is None:
        raise ReconcileError(f"anomaly {anomaly.pk} has no period to take from the reference")
    if (anomaly.details or {}).get("kind") == "missing_reference":
        raise ReconcileError(f"anomaly {anomaly.pk}: the reference lacks these bars, there is nothing to take "
                             "from it (a backfill never deletes stored bars)")
    if not Instrument.objects.filter(symbol=anomaly.symbol).exclude(reference_provider="").exists():
        raise ReconcileError(f"{anomaly.symbol} has no reference source")
    tf = anomaly.timeframe
    start = floor_to_timeframe(anomaly.period_start, tf)
    return start, floor_to_timeframe(anomaly.period_end or anomaly.period_start, tf) + timeframe_delta(tf)


def repair_from_reference(anomaly: DataAnomaly, note: str, *, by: str = "",
                          now: datetime | None = None) -> dict[str, Any]:
    """Write the reference's bars for the anomaly's range (see the module). Raises ``ReconcileError``
    without a note or for an anomaly that cannot be repaired so; returns the outcome."""
    note = (note or "").strip()
    if not note:
        raise ReconcileError("a note is required: say why the reference's bars are the right ones")
    start, end = reference_range(anomaly)
    now = now or timezone.now()
    asked = f"reference repair of anomaly #{anomaly.pk}" + (f" for {by}" if by else "")
    try:
        result = run_backfill(anomaly.symbol, anomaly.timeframe, start=start, end=end, now=now,
                              requested_by=asked[:150], reference=True)
    except BackfillError as exc:
        raise ReconcileError(str(exc)) from None
    outcome = {"anomaly_id": anomaly.pk, "symbol": anomaly.symbol, "timeframe": anomaly.timeframe,
               "range_start": iso(start), "range_end": iso(end), "execution_id": result.execution_id,
               "status": result.status, "inserted": result.inserted, "updated": result.updated,
               "error": result.error or "", "note": note, "by": by}
    if result.execution_id:
        state = BackfillState.objects.filter(execution_id=result.execution_id)
        details = dict(state.values_list("details", flat=True).first() or {})
        details["reference_repair"] = {"anomaly_id": anomaly.pk, "note": note, "by": by}
        state.update(details=details)
    _record_attempt(anomaly, outcome, result.status == BackfillStatus.COMPLETED, now)
    outcome["resolved"] = anomaly.resolution_status == ResolutionStatus.RESOLVED
    return outcome


def _record_attempt(anomaly: DataAnomaly, outcome: dict[str, Any], completed: bool, now: datetime) -> None:
    attempt = {"at": iso(now), "execution_id": outcome["execution_id"], "source": "reference",
               "outcome": "fixed" if completed else outcome["status"],
               "range": [outcome["range_start"], outcome["range_end"]], "note": outcome["note"],
               "by": outcome["by"]}
    resolution = dict(resolution_status=ResolutionStatus.RESOLVED, resolution_reason="fixed",
                      resolved_by=outcome["by"] or REPAIRER, resolved_at=now,
                      resolution_note=f"taken from the reference: {outcome['note']}") if completed else {}
    record_repair_attempt(anomaly, attempt, now=now, resolution=resolution)
