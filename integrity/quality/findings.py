"""What detectors return: findings, not yet anomaly rows.

Detectors never write. ``integrity.quality.record`` turns findings into ``data_anomalies`` rows,
idempotently, using the fingerprint: the same problem found again updates its open anomaly.
``as_json`` is how the quality results (findings, detection runs, enrichment) become JSON.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..calendars import NO_CLOSURES, Closures
from ..timeframes import iso


def fingerprint(anomaly_type: str, symbol: str, timeframe: str, key: str = "",
                execution_id: object | None = None) -> str:
    """The identity of an anomaly: the same problem found again has the same fingerprint, so it
    updates its open anomaly instead of opening another.

    A detector's finding: the sha256 of ``type|symbol|timeframe|key``. Bars a backfill rejected
    (``execution_id`` given) are one problem per execution: ``<type>:execution:<id>``.
    """
    if execution_id is not None:
        return f"{anomaly_type}:execution:{execution_id}"
    return hashlib.sha256(f"{anomaly_type}|{symbol}|{timeframe}|{key}".encode()).hexdigest()


@dataclass
class SeriesContext:
    """One (symbol, timeframe) series with what the detectors need to judge it."""

    symbol: str
    timeframe: str
    calendar: str
    asset_class: str
    thresholds: dict[str, Any] = field(default_factory=dict)  # resolved: settings < asset class < instrument
    robust_volatility: float | None = None  # from series_stats (enrichment), when known
    since: datetime | None = None  # incremental scan: look at bars from here (already includes overlap)
    alignment: str = "clock"  # BarAlignment: where intraday bars start (clock grid or session open)
    availability_delay_minutes: int | None = None  # the instrument's own (None: its asset class's)
    closures: Closures = NO_CLOSURES  # the instrument's extra closed time (ns), see calendars.closures


@dataclass
class Finding:
    symbol: str
    timeframe: str
    anomaly_type: str  # an AnomalyType value
    severity: str  # a Severity value
    description: str
    affected_rows: int
    period_start: datetime | None = None
    period_end: datetime | None = None
    # Stable identity of *this* problem within (type, symbol, timeframe): e.g. the gap's first
    # missing bar, the outlier bar's ts, the duplicate group's ts. Same problem ⇒ same key.
    key: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.anomaly_type, self.symbol, self.timeframe, self.key)

    def as_dict(self) -> dict[str, Any]:
        return as_json(self, ("symbol", "timeframe", "anomaly_type", "severity", "period_start", "period_end",
                              "affected_rows", "description", "fingerprint", "details"))


def as_json(obj: Any, names: Iterable[str]) -> dict[str, Any]:
    """The attributes ``names`` of ``obj``, in that order, as JSON-ready values (datetimes as ISO text):
    what the quality results' ``as_dict`` return."""
    values = {name: getattr(obj, name) for name in names}
    return {name: iso(value) if isinstance(value, datetime) else value for name, value in values.items()}
