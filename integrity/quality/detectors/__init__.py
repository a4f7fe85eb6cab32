"""Calendar-aware data-quality detectors. They read candles and return findings; they never write.

``run_detectors(contexts, types=None, now=None)`` judges the given series (``SeriesContext``) for the
anomaly types asked (default: all) and shares their database work (``scan``): this is what the
health job and ``detect_data_anomalies`` call. ``DETECTORS`` maps each anomaly type to the module
function that builds its findings from a scan, in ``DETECTOR_TYPES`` order. One module per type
says what it finds and its severities.

``ctx.since``: only problems at or after ``since`` are reported (gaps whose interval ends at or after
it, bars at or after it), except ``stale`` and ``duplicate``, which are whole-series judgements.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime

from django.utils import timezone

from ..findings import Finding, SeriesContext
from . import duplicate, gap, invalid_ohlc, off_calendar, outlier, stale
from .scan import (
    DETECTOR_TYPES,
    DUPLICATE,
    GAP,
    INVALID_OHLC,
    OFF_CALENDAR,
    OUTLIER,
    STALE,
    Scan,
)

__all__ = [
    "DETECTORS", "DETECTOR_TYPES", "DUPLICATE", "GAP", "INVALID_OHLC", "OFF_CALENDAR", "OUTLIER", "STALE",
    "run_detectors",
]

DETECTORS: dict[str, Callable[[Scan], list[Finding]]] = {
    GAP: gap.findings,
    OFF_CALENDAR: off_calendar.findings,
    OUTLIER: outlier.findings,
    STALE: stale.findings,
    INVALID_OHLC: invalid_ohlc.findings,
    DUPLICATE: duplicate.findings,
}


def _types(types: Iterable[str] | None) -> set[str]:
    if types is None:
        return set(DETECTOR_TYPES)
    wanted = {str(t) for t in types}
    unknown = sorted(wanted - set(DETECTOR_TYPES))
    if unknown:
        raise ValueError(f"unknown anomaly type(s) {', '.join(unknown)}; expected {', '.join(DETECTOR_TYPES)}")
    return wanted


def run_detectors(contexts: Sequence[SeriesContext], types: Iterable[str] | None = None,
                  now: datetime | None = None,
                  newest: Mapping[tuple[str, str], datetime | None] | None = None) -> list[Finding]:
    """Run the detectors of ``types`` (default: all) over the series, sharing one window pass.

    ``newest``: the newest stored bar per (symbol, timeframe) when the caller already read it (None:
    no bar); series not in it are probed. Findings come grouped by type in ``DETECTOR_TYPES``
    order, then by series as given, then by time.
    """
    wanted = _types(types)
    scan = Scan(contexts, now or timezone.now(), wanted, newest)
    if not scan.series:
        return []
    if wanted & {GAP, OFF_CALENDAR, OUTLIER, INVALID_OHLC}:
        scan.window()
    found: list[Finding] = []
    for anomaly_type in DETECTOR_TYPES:
        if anomaly_type in wanted:
            found.extend(DETECTORS[anomaly_type](scan))
    return found
