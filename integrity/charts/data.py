"""What a chart reads: the series' calendar (instrument, bar alignment, closures), its stored bars in a
window and the bars refused at ingest; each a single indexed query."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np

from ..models import Candle, Instrument, closures_for
from ..rejected import rejected_points
from ..timeframes import BarAlignment, to_ns


@dataclass(frozen=True)
class SeriesCalendar:
    calendar: str | None  # None: the symbol is not on the watchlist (a linear axis, no holes)
    alignment: str
    closures: tuple


def series_calendar(symbol: str) -> SeriesCalendar:
    row = Instrument.objects.filter(symbol=symbol).values_list("calendar", "bar_alignment").first()
    if row is None:
        return SeriesCalendar(None, BarAlignment.CLOCK, ())
    return SeriesCalendar(row[0], row[1] or BarAlignment.CLOCK, closures_for(symbol))


@dataclass(frozen=True)
class Bars:
    """Stored bars, by time: int64 ns opens and float OHLC (NaN where NULL)."""

    ts: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray

    def __len__(self) -> int:
        return len(self.ts)

    @classmethod
    def from_rows(cls, rows) -> Bars:
        rows = sorted(rows, key=lambda r: r[0])
        ts = np.array([to_ns(r[0]) for r in rows], dtype="int64")
        values = np.array([[np.nan if v is None else v for v in r[1:5]] for r in rows], dtype="float64").reshape(-1, 4)
        return cls(ts, values[:, 0], values[:, 1], values[:, 2], values[:, 3])

    def finite_range(self) -> tuple[float, float] | None:
        values = np.concatenate([self.high, self.low, self.close])
        values = values[np.isfinite(values)]
        return (float(values.min()), float(values.max())) if len(values) else None


_COLUMNS = ("ts", "open", "high", "low", "close")


def bars_around(symbol: str, timeframe: str, start: datetime, end: datetime, context: int,
                inside_limit: int) -> tuple[Bars, bool]:
    """The stored bars in [start, end) (at most ``inside_limit``, from the start) and ``context`` bars
    either side; and whether the inside was cut at the limit."""
    series = Candle.objects.filter(symbol=symbol, timeframe=timeframe)
    before = list(series.filter(ts__lt=start).order_by("-ts").values_list(*_COLUMNS)[:context])
    inside = list(series.filter(ts__gte=start, ts__lt=end).order_by("ts").values_list(*_COLUMNS)[:inside_limit + 1])
    cut = len(inside) > inside_limit
    after = [] if cut else list(series.filter(ts__gte=end).order_by("ts").values_list(*_COLUMNS)[:context])
    return Bars.from_rows(before + inside[:inside_limit] + after), cut


def bars_between(symbol: str, timeframe: str, start: datetime, end: datetime, limit: int) -> Bars:
    """The newest ``limit`` stored bars in [start, end)."""
    rows = (Candle.objects.filter(symbol=symbol, timeframe=timeframe, ts__gte=start, ts__lt=end)
            .order_by("-ts").values_list(*_COLUMNS)[:limit])
    return Bars.from_rows(list(rows))


@dataclass(frozen=True)
class Refused:
    ts: int  # ns
    high: float | None
    low: float | None
    close: float | None
    rules: str


def refused_bars(symbol: str, timeframe: str, start: datetime, end: datetime, limit: int = 200) -> list[Refused]:
    return [Refused(to_ns(ts), high, low, close, rules)
            for ts, high, low, close, rules in rejected_points(symbol, timeframe, start, end, limit)]

