"""Enrichment: per-series statistics in ``series_stats``.

First/last bar and counts come from one GROUP BY over the candle table; expected bars from the
instrument's calendar; robust volatility (1.4826 × the median absolute deviation of the log returns,
a volatility estimate that bad ticks cannot inflate) from a bounded sample of the newest closes of
each series, for all series in one statement read through the (symbol, timeframe, ts) index, so the
cost does not grow with a series' history.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from datetime import datetime

from django.db.models import Count, Max, Min
from django.utils import timezone

from ..calendars import count_expected_bars
from ..models import Candle, Instrument, SeriesStats
from ..timeframes import timeframe_delta
from .findings import as_json
from .sql import robust_volatilities

VOLATILITY_SAMPLE_BARS = 5000


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
        return as_json(self, [f.name for f in fields(self)])


def series_volatilities(pairs: list[tuple[str, str]],
                        sample: int = VOLATILITY_SAMPLE_BARS) -> dict[tuple[str, str], tuple[int, float]]:
    """(returns used, robust volatility) of many series in one statement (``sql.robust_volatilities``);
    series with fewer than 2 returns or a non-finite estimate are left out. Enrichment stores it in
    series_stats and the outlier detector computes it here for series that have none there, so both
    always agree."""
    found = robust_volatilities(Candle._meta.db_table, [(i, s, tf) for i, (s, tf) in enumerate(pairs)], sample)
    return {pairs[i]: (n, sigma) for i, (n, sigma) in found.items() if n >= 2 and math.isfinite(sigma)}


def enrich_series(symbol: str | None = None, timeframe: str | None = None) -> list[SeriesEnrichment]:
    """Recompute statistics for the watchlist's series (optionally one symbol/timeframe).

    One GROUP BY for first/last bar and counts, one statement for every series' robust volatility,
    the calendar for expected bars, one upsert into series_stats.
    """
    instruments = Instrument.objects.all()
    if symbol:
        instruments = instruments.filter(symbol=symbol)
    calendars = {i.symbol: i.calendar for i in instruments}
    if not calendars:
        return []
    rows = Candle.objects.filter(symbol__in=calendars)
    if timeframe:
        rows = rows.filter(timeframe=timeframe)
    aggregates = list(rows.values("symbol", "timeframe").annotate(
        first=Min("ts"), last=Max("ts"), n=Count("id"), distinct=Count("ts", distinct=True)
    ).order_by("symbol", "timeframe"))
    volatilities = {pair: sigma for pair, (_, sigma)
                    in series_volatilities([(row["symbol"], row["timeframe"]) for row in aggregates]).items()}
    results = []
    now = timezone.now()
    for row in aggregates:
        calendar = calendars[row["symbol"]]
        expected = count_expected_bars(calendar, row["timeframe"], row["first"],
                                       row["last"] + timeframe_delta(row["timeframe"]))
        coverage = round(100.0 * row["distinct"] / expected, 3) if expected else None
        results.append(SeriesEnrichment(
            symbol=row["symbol"], timeframe=row["timeframe"], first_ts=row["first"], last_ts=row["last"],
            bar_count=row["n"], expected_bars=expected, coverage_pct=coverage,
            robust_volatility=volatilities.get((row["symbol"], row["timeframe"])),
        ))
    fields = ["first_ts", "last_ts", "bar_count", "expected_bars", "coverage_pct", "robust_volatility", "updated_at"]
    SeriesStats.objects.bulk_create(
        [SeriesStats(symbol=e.symbol, timeframe=e.timeframe, first_ts=e.first_ts, last_ts=e.last_ts,
                     bar_count=e.bar_count, expected_bars=e.expected_bars, coverage_pct=e.coverage_pct,
                     robust_volatility=e.robust_volatility, updated_at=now) for e in results],
        update_conflicts=True, unique_fields=["symbol", "timeframe"], update_fields=fields,
    )
    return results
