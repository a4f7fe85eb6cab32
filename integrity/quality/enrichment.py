"""Enrichment: per-series statistics in ``series_stats``.

First/last bar and counts come from one GROUP BY over the candle table; expected bars from the
instrument's calendar; robust volatility (1.4826 × median |log return|, a volatility estimate that
bad ticks cannot inflate) from a bounded sample of the newest closes of each series, read through
the (symbol, timeframe, ts) index, so the cost does not grow with a series' history.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from django.db.models import Count, Max, Min
from django.utils import timezone

from ..calendars import count_expected_bars
from ..models import Candle, Instrument, SeriesStats
from ..timeframes import timeframe_delta

VOLATILITY_SAMPLE_BARS = 5000
MAD_TO_SIGMA = 1.4826


@dataclass
class SeriesEnrichment:
    symbol: str
    timeframe: str
    first_ts: datetime | None
    last_ts: datetime | None
    bar_count: int
    expected_bars: int | None
    coverage_pct: float | None
    robust_volatility: float | None

    def as_dict(self) -> dict:
        return {
            "symbol": self.symbol,
            "timeframe": self.timeframe,
            "first_ts": self.first_ts.isoformat() if self.first_ts else None,
            "last_ts": self.last_ts.isoformat() if self.last_ts else None,
            "bar_count": self.bar_count,
            "expected_bars": self.expected_bars,
            "coverage_pct": self.coverage_pct,
            "robust_volatility": self.robust_volatility,
        }


def robust_volatility(symbol: str, timeframe: str, sample: int = VOLATILITY_SAMPLE_BARS) -> float | None:
    closes = list(
        Candle.objects.filter(symbol=symbol, timeframe=timeframe, close__gt=0)
        .order_by("-ts")
        .values_list("close", flat=True)[: sample + 1]
    )
    if len(closes) < 3:
        return None
    values = np.asarray(closes[::-1], dtype="float64")
    values = values[np.isfinite(values)]
    returns = np.diff(np.log(values))
    returns = returns[np.isfinite(returns)]
    if returns.size < 2:
        return None
    return float(MAD_TO_SIGMA * np.median(np.abs(returns - np.median(returns))))


def enrich_series(symbol: str | None = None, timeframe: str | None = None) -> list[SeriesEnrichment]:
    """Recompute statistics for the watchlist's series (optionally one symbol/timeframe)."""
    instruments = Instrument.objects.all()
    if symbol:
        instruments = instruments.filter(symbol=symbol)
    calendars = {i.symbol: i.calendar for i in instruments}
    if not calendars:
        return []
    rows = Candle.objects.filter(symbol__in=calendars)
    if timeframe:
        rows = rows.filter(timeframe=timeframe)
    aggregates = rows.values("symbol", "timeframe").annotate(
        first=Min("ts"), last=Max("ts"), n=Count("id"), distinct=Count("ts", distinct=True)
    )
    results = []
    now = timezone.now()
    for row in aggregates.order_by("symbol", "timeframe"):
        calendar = calendars[row["symbol"]]
        expected = count_expected_bars(calendar, row["timeframe"], row["first"],
                                       row["last"] + timeframe_delta(row["timeframe"]))
        coverage = round(100.0 * row["distinct"] / expected, 3) if expected else None
        vol = robust_volatility(row["symbol"], row["timeframe"])
        enrichment = SeriesEnrichment(
            symbol=row["symbol"], timeframe=row["timeframe"], first_ts=row["first"], last_ts=row["last"],
            bar_count=row["n"], expected_bars=expected, coverage_pct=coverage,
            robust_volatility=None if vol is None or math.isnan(vol) else vol,
        )
        SeriesStats.objects.update_or_create(
            symbol=enrichment.symbol, timeframe=enrichment.timeframe,
            defaults={
                "first_ts": enrichment.first_ts, "last_ts": enrichment.last_ts,
                "bar_count": enrichment.bar_count, "expected_bars": enrichment.expected_bars,
                "coverage_pct": enrichment.coverage_pct, "robust_volatility": enrichment.robust_volatility,
                "updated_at": now,
            },
        )
        results.append(enrichment)
    return results
