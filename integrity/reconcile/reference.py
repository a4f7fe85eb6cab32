"""Reference sources: what an instrument names besides its primary provider, its tolerances, and
fetching its bars through the same provider layer (retries, rate limits, redaction) — into memory
and the staging table, never into ``candles``."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

import pandas as pd

from ..calendars import NO_CLOSURES, Closures
from ..conf import conf
from ..models import Instrument, closures_for
from ..providers import FetchRequest, ProviderError, get_provider
from ..providers.base import empty_bar_frame
from ..timeframes import BarAlignment
from ..validation import validate_bars


class ReconcileError(Exception):
    """A reconciliation that cannot run as asked (no reference, a bad window or option): a usage
    error at every door (exit 2, a 400, a form error). ``conflict``: because of a state, not the input."""

    def __init__(self, message: str, *, conflict: bool = False):
        super().__init__(message)
        self.conflict = conflict


def price_tolerance_pct(instrument: Instrument) -> float:
    """The instrument's own ``reconcile_tolerance``, else its asset class's ``RECONCILE_TOLERANCE_PCT``."""
    if instrument.reconcile_tolerance is not None:
        return float(instrument.reconcile_tolerance)
    return float(conf.RECONCILE_TOLERANCE_PCT.get(instrument.asset_class, 0.0))


def volume_tolerance_pct(instrument: Instrument) -> float | None:
    """The asset class's ``RECONCILE_VOLUME_TOLERANCE_PCT``; None when volume is not compared."""
    value = float(conf.RECONCILE_VOLUME_TOLERANCE_PCT.get(instrument.asset_class, -1.0))
    return None if value < 0 else value


@dataclass
class ReferenceSeries:
    """One series and the reference it is compared with."""

    symbol: str
    timeframe: str
    asset_class: str
    calendar: str
    provider: str  # the reference provider
    options: dict
    tolerance_pct: float
    volume_tolerance_pct: float | None
    alignment: str = BarAlignment.CLOCK
    closures: Closures = NO_CLOSURES
    invalid_reference_bars: int = field(default=0)

    @property
    def tolerance(self) -> float:
        return self.tolerance_pct / 100.0

    @property
    def volume_tolerance(self) -> float | None:
        return None if self.volume_tolerance_pct is None else self.volume_tolerance_pct / 100.0


def reference_series(instrument: Instrument, timeframe: str, closures: Closures | None = None) -> ReferenceSeries:
    """The series ``(instrument, timeframe)`` with its reference; ``ReconcileError`` when it has none.
    ``closures``: the instrument's, when the caller read them for many instruments at once."""
    if not instrument.reference_provider:
        raise ReconcileError(f"{instrument.symbol} has no reference source (reference_provider is empty)")
    if timeframe not in (instrument.timeframes or []):
        raise ReconcileError(f"{instrument.symbol} has no {timeframe} series "
                             f"(its timeframes: {', '.join(instrument.timeframes or []) or 'none'})")
    return ReferenceSeries(
        symbol=instrument.symbol, timeframe=timeframe, asset_class=instrument.asset_class,
        calendar=instrument.calendar, provider=instrument.reference_provider,
        options=dict(instrument.reference_options or {}), tolerance_pct=price_tolerance_pct(instrument),
        volume_tolerance_pct=volume_tolerance_pct(instrument), alignment=instrument.bar_alignment,
        closures=closures_for(instrument.symbol) if closures is None else closures)


def fetch_reference(series: ReferenceSeries, start: datetime, end: datetime, now: datetime,
                    pad: timedelta = timedelta(0)) -> pd.DataFrame:
    """The reference's valid bars in ``[start - pad, end + pad)`` (never past ``now``), sorted by ts.

    The bars pass the same validation as a backfill's; refused ones are counted on ``series``
    (``invalid_reference_bars``) and left out, so a broken reference bar is never a finding about
    the stored one. Raises ``ProviderError`` (already redacted) when the source fails."""
    request = FetchRequest(series.symbol, series.timeframe, start - pad, min(end + pad, now),
                           calendar=series.calendar, asset_class=series.asset_class,
                           alignment=series.alignment, options=series.options)
    provider = get_provider(series.provider)
    pages, invalid = [], 0
    lo, hi = pd.Timestamp(request.start), pd.Timestamp(request.end)
    for page in provider.fetch(request):
        if page.empty:
            continue
        page = page[(page["ts"] >= lo) & (page["ts"] < hi)]
        result = validate_bars(page, series.timeframe, now=now, alignment=series.alignment)
        invalid += result.invalid_count
        if not result.valid.empty:
            pages.append(result.valid)
    series.invalid_reference_bars += invalid
    if not pages:
        return empty_bar_frame()
    frame = pd.concat(pages, ignore_index=True).sort_values("ts", kind="stable")
    return frame.drop_duplicates("ts", keep="last").reset_index(drop=True)


__all__ = ["ProviderError", "ReconcileError", "ReferenceSeries", "fetch_reference", "price_tolerance_pct",
           "reference_series", "volume_tolerance_pct"]
