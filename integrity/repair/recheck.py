"""The re-check after a repair's backfill: the anomaly's own detector over just the repaired range,
and what its verdict means (fixed, missing at source, confirmed at source, still present)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..backfill import BackfillResult
from ..models import AnomalyType, DataAnomaly, ResolutionReason
from ..quality.detectors import run_detectors
from ..quality.findings import Finding
from ..quality.thresholds import series_contexts

FIXED = ResolutionReason.FIXED.value
MISSING_AT_SOURCE = ResolutionReason.MISSING_AT_SOURCE.value
CONFIRMED_AT_SOURCE = "confirmed_at_source"
STILL_PRESENT = "still_present"


@dataclass
class Verdict:
    outcome: str  # FIXED | MISSING_AT_SOURCE | CONFIRMED_AT_SOURCE | STILL_PRESENT
    note: str
    value: Any = None  # what the source confirmed (an outlier's close, the invalid bars' description)
    # Other gaps inside the repaired range the source could not fill either (partly filled gaps).
    missing_elsewhere: list[Finding] = field(default_factory=list)


def recheck(anomaly: DataAnomaly, start: datetime, end: datetime, result: BackfillResult, now: datetime) -> Verdict:
    """Judge ``[start, end)`` again with the anomaly's detector, after ``result`` (a completed backfill
    of that range) wrote what the source has."""
    execution = f"repair execution {result.execution_id}"
    if anomaly.anomaly_type == AnomalyType.INVALID_OHLC and anomaly.execution_id is not None:
        # Bars a backfill rejected are not stored: the repair's own validation is the re-check.
        if not result.invalid:
            return Verdict(FIXED, f"the source now sends valid bars ({execution})")
        reasons = ", ".join(f"{code} ×{n}" for code, n in sorted(result.invalid_reasons.items()))
        value = f"{result.invalid} bar(s) rejected again ({reasons})"
        return Verdict(CONFIRMED_AT_SOURCE, f"confirmed at source: {value} ({execution})", value)

    contexts = series_contexts(symbol=anomaly.symbol, timeframe=anomaly.timeframe)
    if not contexts:  # no instrument (or no calendar) to judge the series by
        return Verdict(STILL_PRESENT, f"bars re-fetched ({execution}) but {anomaly.symbol} {anomaly.timeframe} "
                                      "is no series of the watchlist: nothing to re-check it with")
    contexts[0].since = start
    findings = run_detectors(contexts[:1], types=[anomaly.anomaly_type], now=now)
    # Only findings wholly inside the re-fetched range: a neighbouring gap that merely reaches into the
    # overlap margin was not re-fetched, so this repair says nothing about it.
    in_range = [f for f in findings if f.period_start is not None and f.period_start >= start
                and (f.period_end or f.period_start) <= end]
    same = next((f for f in in_range if f.fingerprint == anomaly.fingerprint), None)
    if anomaly.anomaly_type == AnomalyType.GAP:
        others = [f for f in in_range if f is not same]
        if same is not None:
            return Verdict(MISSING_AT_SOURCE, f"the source has no such bars either: {same.description} ({execution})",
                           missing_elsewhere=others)
        note = f"bars re-fetched and checked ({execution})"
        if others:
            note += f"; {sum(f.affected_rows for f in others)} bar(s) of the range are missing at the source"
        return Verdict(FIXED, note, missing_elsewhere=others)
    if same is None:
        return Verdict(FIXED, f"bars re-fetched and checked ({execution})")
    if anomaly.anomaly_type == AnomalyType.OUTLIER:
        value = same.details.get("close")
        return Verdict(CONFIRMED_AT_SOURCE, f"confirmed at source: {value} ({execution})", value)
    if anomaly.anomaly_type == AnomalyType.INVALID_OHLC:
        return Verdict(CONFIRMED_AT_SOURCE, f"confirmed at source: {same.description} ({execution})",
                       same.description)
    return Verdict(STILL_PRESENT, f"still stored after the re-fetch (a backfill never deletes bars): "
                                  f"{same.description} ({execution})")
