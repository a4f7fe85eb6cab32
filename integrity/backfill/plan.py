"""What a backfill fetches: the series (watchlist entry and explicit overrides) and the range
[start, end) with its resume point; the explicit range's bounds (``integrity.ranges``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypedDict, Unpack

from django.db.models import Max

from ..calendars import calendar_for_asset_class, last_completed_bar, validate_calendar_code
from ..conf import conf
from ..models import BackfillState, BackfillStatus, Candle, Instrument
from ..providers import FetchRequest, Provider
from ..ranges import RangeError, check_backfill_range
from ..timeframes import BarAlignment, floor_to_timeframe, timeframe_delta
from .state import BackfillError


@dataclass
class SeriesSpec:
    symbol: str
    timeframe: str
    asset_class: str
    calendar: str
    provider: str
    provider_options: dict[str, Any]
    alignment: str = BarAlignment.CLOCK  # where intraday bars start (the instrument's bar_alignment)


class SeriesOverrides(TypedDict, total=False):
    """Explicit arguments that override a series' watchlist entry (None: the entry's value)."""

    provider: str | None
    provider_options: dict[str, Any] | None
    asset_class: str | None
    calendar: str | None
    # Fetch from the instrument's reference source (its provider and options, not merged with the
    # primary's): a person's repair from the reference (``integrity.reconcile.repair``).
    reference: bool


def resolve_series(symbol: str, timeframe: str, **overrides: Unpack[SeriesOverrides]) -> SeriesSpec:
    """What we know about a series: the watchlist entry, overridden by explicit arguments."""
    unknown = sorted(overrides.keys() - SeriesOverrides.__annotations__.keys())
    if unknown:
        raise TypeError(f"unexpected keyword arguments: {', '.join(unknown)}")
    provider, provider_options = overrides.get("provider"), overrides.get("provider_options")
    asset_class, calendar = overrides.get("asset_class"), overrides.get("calendar")
    instrument = Instrument.objects.filter(symbol=symbol).first()
    if overrides.get("reference"):
        if instrument is None or not instrument.reference_provider:
            raise BackfillError(f"{symbol} has no reference source to fetch from")
        provider, provider_options = instrument.reference_provider, None
    if instrument is None and asset_class is None:
        raise BackfillError(
            f"unknown instrument {symbol!r}: add it to the watchlist or pass --asset-class (and --calendar)"
        )
    asset_class = asset_class or instrument.asset_class
    calendar = calendar or (instrument.calendar if instrument else calendar_for_asset_class(asset_class))
    try:
        validate_calendar_code(calendar)
    except ValueError as exc:
        raise BackfillError(str(exc)) from None
    if overrides.get("reference"):
        options = dict(instrument.reference_options or {})
    else:
        options = dict(instrument.provider_options) if instrument else {}
        options.update(provider_options or {})
    return SeriesSpec(
        symbol=symbol,
        timeframe=timeframe,
        asset_class=asset_class,
        calendar=calendar,
        provider=provider or (instrument.provider if instrument else "synthetic"),
        provider_options=options,
        alignment=instrument.bar_alignment if instrument else BarAlignment.CLOCK,
    )


def plan_range(
    spec: SeriesSpec,
    *,
    start: datetime | None,
    end: datetime | None,
    now: datetime,
    previous: BackfillState | None,
    provider: Provider | None = None,
) -> tuple[datetime, datetime, datetime | None]:
    """[start, end) to fetch, and the checkpoint resumed from (if any).

    end: never past the last *completed* bar (bars still forming are never stored).
    start: explicit, else the last stored bar minus a small overlap (to pick up revisions), else
    the configured lookback — or, for a provider that knows its first bar (a CSV file), that bar,
    so a file's older history is not cut off. A failed previous run of the same range resumes
    from its checkpoint (the same range: the same requested start, also when that run was itself
    a resumption).
    """
    step = timeframe_delta(spec.timeframe)
    last_complete = last_completed_bar(spec.calendar, spec.timeframe, now, spec.alignment)
    hard_end = last_complete + step if last_complete else floor_to_timeframe(now, spec.timeframe)
    end = hard_end if end is None else min(end, hard_end)
    resumed_from = None
    resumable = (
        previous is not None
        and previous.status == BackfillStatus.FAILED
        and previous.checkpoint_ts is not None
    )
    if start is None:
        last_stored = Candle.objects.filter(symbol=spec.symbol, timeframe=spec.timeframe).aggregate(m=Max("ts"))["m"]
        if last_stored is not None:
            start = last_stored - conf.BACKFILL_OVERLAP_BARS * step
        else:
            first = _provider_first_bar(provider, spec, end)
            start = first if first is not None else now - timedelta(
                days=conf.BACKFILL_LOOKBACK_DAYS[spec.timeframe])
        if resumable and previous.range_start is not None and previous.checkpoint_ts >= start:
            resumed_from = previous.checkpoint_ts
    else:
        if resumable and start in (previous.range_start, _requested_start(previous)) \
                and previous.checkpoint_ts >= start:
            # The bars up to and including the checkpoint are committed; restart at it (idempotent).
            resumed_from = previous.checkpoint_ts
            start = previous.checkpoint_ts
    start = floor_to_timeframe(start, spec.timeframe)
    return start, end, resumed_from


def _requested_start(state: BackfillState) -> datetime | None:
    """The start its caller asked for: a resumed run's own range starts at the checkpoint."""
    requested = (state.details or {}).get("requested_start")
    return datetime.fromisoformat(requested) if requested else None


def _fetch_request(spec: SeriesSpec, start: datetime, end: datetime) -> FetchRequest:
    return FetchRequest(symbol=spec.symbol, timeframe=spec.timeframe, start=start, end=end,
                        calendar=spec.calendar, asset_class=spec.asset_class, options=spec.provider_options,
                        alignment=spec.alignment)


def _provider_first_bar(provider: Provider | None, spec: SeriesSpec, end: datetime) -> datetime | None:
    first_bar_ts = getattr(provider, "first_bar_ts", None)
    if first_bar_ts is None:
        return None
    return first_bar_ts(_fetch_request(spec, end, end))



def check_range(spec: SeriesSpec, start: datetime | None, end: datetime | None, now: datetime | None = None) -> None:
    """The bounds of an explicit range (``integrity.ranges``: API, admin, CLI and here alike)."""
    try:
        check_backfill_range(spec.timeframe, start, end, provider=spec.provider, now=now)
    except RangeError as exc:
        raise BackfillError(str(exc)) from None
