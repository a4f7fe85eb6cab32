"""Reconciliation runs: the window, each series' reference fetched and staged, compared in SQL,
classified, recorded as ``source_mismatch`` anomalies (``quality.record``: fingerprinted, sticky
review reasons, regressions) and those of the window no longer found resolved ``fixed``."""

from __future__ import annotations

import logging
import re
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from ..calendars import NO_CLOSURES, expected_ns, last_completed_bar
from ..models import (
    AnomalyType,
    Instrument,
    Timeframe,
    closures_by_symbol,
)
from ..providers import ProviderError
from ..quality.anomalies import DetectionResult
from ..quality.findings import Finding
from ..quality.record import auto_resolve, drop_dismissed, record_findings, unresolved_of
from ..ranges import RangeError, check_backfill_range
from ..timeframes import floor_to_timeframe, iso, timeframe_delta, to_ns
from .classify import MAX_SHIFT_HOURS, classify
from .compare import ReferenceLookup, disagreements, stage, unstage
from .reference import ReconcileError, ReferenceSeries, fetch_reference, reference_series

logger = logging.getLogger(__name__)

_SINCE = re.compile(r"^\s*(\d+)\s*([mhdw])\s*$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(value: str) -> timedelta:
    """``--since``: how far back from the last completed bar, ``<n>m|h|d|w`` (``7d``, ``48h``)."""
    match = _SINCE.match(str(value or ""))
    if not match or int(match.group(1)) == 0:
        raise ReconcileError(f"since {value!r} is not a duration such as 90m, 48h, 7d or 2w")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def reconcile_window(series: ReferenceSeries, start: datetime | None, end: datetime | None,
                     since: timedelta | None, now: datetime, default: timedelta) -> tuple[datetime, datetime]:
    """``[start, end)`` to compare: the given bounds (the backfill range rules), the end capped at the
    last completed bar; without a start, ``since`` (else ``default``) before the end."""
    if since is not None and start is not None:
        raise ReconcileError("give --start/--end or --since, not both")
    try:
        check_backfill_range(series.timeframe, start, end, now=now)
    except RangeError as exc:
        raise ReconcileError(str(exc)) from None
    step = timeframe_delta(series.timeframe)
    last = last_completed_bar(series.calendar, series.timeframe, now, series.alignment)
    hard_end = last + step if last else floor_to_timeframe(now, series.timeframe)
    end = hard_end if end is None else min(end, hard_end)
    start = floor_to_timeframe(start if start is not None else end - (since or default), series.timeframe)
    if start >= end:
        raise ReconcileError(f"empty window: {iso(start)} to {iso(end)} holds no completed bar")
    return start, end


@dataclass
class SeriesReconciliation:
    symbol: str
    timeframe: str
    reference_provider: str
    start: str | None = None
    end: str | None = None
    status: str = "ok"  # ok | failed (the reference could not be fetched)
    error: str = ""
    reference_bars: int = 0
    invalid_reference_bars: int = 0
    disagreeing_bars: int = 0
    findings: list[Finding] = field(default_factory=list)

    def by_kind(self) -> dict[str, int]:
        return dict(Counter(f.details["kind"] for f in self.findings))

    def as_dict(self) -> dict[str, Any]:
        values = {k: v for k, v in asdict(self).items() if k != "findings"}
        return {**values, "found": len(self.findings), "by_kind": self.by_kind(),
                "findings": [f.as_dict() for f in self.findings]}


@dataclass
class ReconcileReport:
    dry_run: bool
    series: list[SeriesReconciliation] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # instruments without a reference source
    # What recording did (``record``): anomalies created, updated, resolved (agreeing again), and
    # findings left out because a reviewer resolved them for good.
    created: int = 0
    updated: int = 0
    resolved: int = 0
    dismissed: int = 0

    @property
    def found(self) -> int:
        return sum(len(s.findings) for s in self.series)

    @property
    def failed(self) -> list[SeriesReconciliation]:
        return [s for s in self.series if s.status != "ok"]

    def as_dict(self) -> dict[str, Any]:
        kinds: Counter = Counter()
        for s in self.series:
            kinds.update(s.by_kind())
        totals = {name: getattr(self, name) for name in ("created", "updated", "resolved", "dismissed")}
        return {"dry_run": self.dry_run, "series_reconciled": len(self.series), "failed": len(self.failed),
                "found": self.found, "by_kind": dict(kinds), **totals, "skipped": self.skipped,
                "series": [s.as_dict() for s in self.series]}


def compare_staged(series: ReferenceSeries, run_id: uuid.UUID, lookup: ReferenceLookup,
                   start: datetime, end: datetime) -> tuple[int, list[Finding]]:
    """The disagreeing pairs (count) and findings of the series against the run's staged bars."""
    expected = expected_ns(series.calendar, series.timeframe, to_ns(start), to_ns(end), series.alignment,
                           series.closures)
    pairs = disagreements(series.symbol, series.timeframe, run_id, start, end, series.tolerance,
                          series.volume_tolerance, expected)
    return len(pairs), classify(series, pairs, lookup)


def compare_series(series: ReferenceSeries, start: datetime, end: datetime,
                   now: datetime) -> tuple[SeriesReconciliation, list[Finding]]:
    """Fetch the reference, stage it, compare and classify (nothing recorded yet).

    The reference bars are staged and deleted in one transaction: a run that dies leaves none. A
    reference that cannot be fetched gives a ``failed`` outcome with the (redacted) error."""
    outcome = SeriesReconciliation(series.symbol, series.timeframe, series.provider, iso(start), iso(end))
    try:
        frame = fetch_reference(series, start, end, now, pad=timedelta(hours=MAX_SHIFT_HOURS))
    except ProviderError as exc:
        outcome.status, outcome.error = "failed", str(exc)
        logger.warning("reconcile %s %s: the reference could not be fetched: %s", series.symbol,
                       series.timeframe, exc)
        return outcome, []
    outcome.invalid_reference_bars = series.invalid_reference_bars
    outcome.reference_bars = int(((frame["ts"] >= start) & (frame["ts"] < end)).sum()) if len(frame) else 0
    run_id = uuid.uuid4()
    with transaction.atomic():
        stage(run_id, frame)
        try:
            outcome.disagreeing_bars, findings = compare_staged(series, run_id, ReferenceLookup.of(frame), start, end)
        finally:
            unstage(run_id)
    return outcome, findings


Compared = tuple[SeriesReconciliation, list[Finding], datetime, datetime]


def record(report: ReconcileReport, compared: list[Compared], *, now: datetime) -> None:
    """Record the findings of every compared series at once (a dry run: only leave out those resolved
    for good), then resolve the unresolved ``source_mismatch`` anomalies of each series' window that
    were not found again. Counts go on ``report``; each outcome keeps the findings recorded."""
    result = DetectionResult(dry_run=report.dry_run, full=False,
                             findings=[f for _, findings, _, _ in compared for f in findings])
    if report.dry_run:
        drop_dismissed(result)
    else:
        seen = {f.fingerprint for f in result.findings}
        record_findings(result, [], [], now)
        result.resolved = _resolve_agreeing(compared, seen, now)
    kept: dict[tuple[str, str], list[Finding]] = {}
    for finding in result.findings:
        kept.setdefault((finding.symbol, finding.timeframe), []).append(finding)
    for outcome, _, _, _ in compared:
        outcome.findings = kept.get((outcome.symbol, outcome.timeframe), [])
    report.created += result.created
    report.updated += result.updated
    report.resolved += result.resolved
    report.dismissed += result.dismissed


def _resolve_agreeing(compared: list[Compared], seen: set[str], now: datetime) -> int:
    windows = {(o.symbol, o.timeframe): (start, end) for o, _, start, end in compared if o.status == "ok"}
    if not windows:
        return 0
    candidates = unresolved_of([AnomalyType.SOURCE_MISMATCH], {symbol for symbol, _ in windows}).filter(
        period_start__isnull=False)
    ids = []
    for pk, symbol, timeframe, fingerprint, period_start in candidates.values_list(
            "id", "symbol", "timeframe", "fingerprint", "period_start"):
        window = windows.get((symbol, timeframe))
        if window is not None and fingerprint not in seen and window[0] <= period_start < window[1]:
            ids.append(pk)
    return auto_resolve(ids, now, "no longer detected: agrees with the reference")


def plan_reconcile(symbol: str | None = None, timeframe: str | None = None, *, start: datetime | None = None,
                   end: datetime | None = None, since: str | timedelta | None = None,
                   now: datetime | None = None) -> tuple[list[tuple[ReferenceSeries, datetime, datetime]], list[str]]:
    """The series a reconciliation compares, each with its window, and the instruments skipped for
    having no reference: every active instrument with a reference source (or the one named, active or
    not), each of its timeframes (or ``timeframe``), over ``[start, end)`` or ``since`` (default
    ``RECONCILE_WINDOW_DAYS``). Raises ``ReconcileError`` for a request that cannot run (unknown symbol
    or timeframe, a named instrument without a reference, a bad window) — before anything is fetched."""
    from ..conf import conf

    now = now or timezone.now()
    if timeframe is not None and timeframe not in Timeframe.values:
        raise ReconcileError(f"unknown timeframe {timeframe!r}; expected one of {', '.join(Timeframe.values)}")
    if isinstance(since, str):
        since = parse_since(since)
    if symbol:
        instrument = Instrument.objects.filter(symbol=symbol).first()
        if instrument is None:
            raise ReconcileError(f"unknown instrument {symbol!r}")
        if not instrument.reference_provider:
            raise ReconcileError(f"{symbol} has no reference source (reference_provider is empty)")
        instruments = [instrument]
    else:
        instruments = list(Instrument.objects.filter(active=True).order_by("symbol"))
    jobs, skipped = [], []
    closures = closures_by_symbol([i.symbol for i in instruments if i.reference_provider])
    for instrument in instruments:
        if not instrument.reference_provider:
            skipped.append(instrument.symbol)
            continue
        timeframes = list(dict.fromkeys(instrument.timeframes or []))
        if timeframe is not None:
            if symbol and timeframe not in timeframes:
                raise ReconcileError(f"{symbol} has no {timeframe} series (its timeframes: "
                                     f"{', '.join(timeframes) or 'none'})")
            timeframes = [t for t in timeframes if t == timeframe]
        for tf in timeframes:
            series = reference_series(instrument, tf, closures.get(instrument.symbol, NO_CLOSURES))
            lo, hi = reconcile_window(series, start, end, since, now, timedelta(days=conf.RECONCILE_WINDOW_DAYS))
            jobs.append((series, lo, hi))
    return jobs, skipped


def reconcile(symbol: str | None = None, timeframe: str | None = None, *, start: datetime | None = None,
              end: datetime | None = None, since: str | timedelta | None = None, dry_run: bool = False,
              now: datetime | None = None) -> ReconcileReport:
    """Reconcile the series ``plan_reconcile`` chooses, one after the other, and record what disagrees.

    A reference that fails to deliver fails only its series (``status`` failed, the redacted error)."""
    now = now or timezone.now()
    jobs, skipped = plan_reconcile(symbol, timeframe, start=start, end=end, since=since, now=now)
    report = ReconcileReport(dry_run=dry_run, skipped=skipped)
    compared = []
    for series, lo, hi in jobs:
        outcome, findings = compare_series(series, lo, hi, now)
        report.series.append(outcome)
        compared.append((outcome, findings, lo, hi))
    record(report, compared, now=now)
    return report
