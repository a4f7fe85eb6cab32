"""Detector thresholds and the series the detectors look at.

Thresholds resolve in layers, later wins:

1. ``DEFAULT_THRESHOLDS`` below, with ``outlier_move`` from the ``OUTLIER_MOVE_THRESHOLD`` setting
   (``integrity.conf``);
2. ``settings.QUALITY_THRESHOLDS["default"]``;
3. ``settings.QUALITY_THRESHOLDS[<asset class>]`` ("equity", "crypto", "forex");
4. the instrument's own ``Instrument.quality_thresholds``.

Unknown keys and values of the wrong type are logged and ignored while resolving (one mistyped
instrument must not stop a scan of the whole watchlist); ``validate_thresholds`` is the strict
check for forms and ``Instrument.clean``.

``series_contexts`` also gives each series its instrument's closures (one query for the watchlist).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from ..calendars import is_known_calendar
from ..conf import conf
from ..models import SeriesStats, closures_by_symbol
from ..series import WatchedInstrument, newest_bars_of, watchlist
from ..timeframes import TIMEFRAME_DELTAS
from .findings import SeriesContext

logger = logging.getLogger(__name__)

DEFAULT_THRESHOLDS: dict[str, Any] = {
    # outlier, threshold test: |close / previous close - 1| (or the open's) above this is flagged.
    "outlier_move": conf.default("OUTLIER_MOVE_THRESHOLD"),
    # outlier, volatility test: |log return| above z × the series' robust volatility (1.4826 × MAD of
    # per-bar log returns) that the next close takes back is a bad tick. 10 keeps fat-tailed
    # intraday data (where 6-8 sigma bars happen weekly) quiet while a real bad tick is far beyond.
    "outlier_robust_z": 10.0,
    # ... "takes back": the next close is within this fraction of the jump from the previous close.
    "outlier_revert_tolerance": 0.3,
    # ... and never for moves smaller than this (in a near-flat series every tick is many sigma).
    "outlier_vol_min_move": 0.005,
    # ... with a volatility computed from at least this many returns (when series_stats has none),
    "outlier_min_bars": 30,
    # ... out of the newest this-many bars of the series.
    "outlier_vol_sample": 5000,
    # price ratios named in descriptions: k means a k:1 split (price / k) or 1:k reverse split (× k).
    "outlier_split_ratios": [2, 3, 4, 5, 10],
    # price ratios read as a unit error (pence vs pounds, cents vs dollars, milli-units).
    "outlier_unit_factors": [100, 1000],
    # how close (relative) a ratio must be to one of those to be named.
    "outlier_ratio_tolerance": 0.03,
    # gap severity, by the trading time the missing bars cover (quality/trading_time.py), in typical
    # trading days: this many bars in a row or a quarter of a trading day medium; a trading day or
    # more high; this many trading days (a trading week) or more critical.
    "gap_medium_bars": 2,
    "gap_medium_days": 0.25,
    "gap_high_days": 1.0,
    "gap_critical_days": 5.0,
    # how many rows / groups a finding lists in its details.
    "sample_limit": 20,
}

_SETTING_DEFAULTS = {"outlier_move": "OUTLIER_MOVE_THRESHOLD"}
_LIST_KEYS = {"outlier_split_ratios", "outlier_unit_factors"}
_INT_KEYS = {"outlier_min_bars", "outlier_vol_sample", "gap_medium_bars", "sample_limit"}


def base_thresholds() -> dict[str, Any]:
    """``DEFAULT_THRESHOLDS`` with the scalar settings that predate ``QUALITY_THRESHOLDS`` applied."""
    base = {k: list(v) if isinstance(v, list) else v for k, v in DEFAULT_THRESHOLDS.items()}
    for key, name in _SETTING_DEFAULTS.items():
        base[key] = getattr(conf, name)
    return base


def _coerce(key: str, value: Any) -> Any:
    """The value in the type the detectors use, or ValueError."""
    if key not in DEFAULT_THRESHOLDS:
        raise ValueError(f"unknown threshold {key!r}; expected one of {', '.join(sorted(DEFAULT_THRESHOLDS))}")
    if key in _LIST_KEYS:
        if isinstance(value, str) or not isinstance(value, Iterable):
            raise ValueError(f"threshold {key!r} must be a list of numbers, got {value!r}")
        numbers = [float(v) for v in value]
        if any(not n > 1 for n in numbers):
            raise ValueError(f"threshold {key!r} must list numbers greater than 1, got {value!r}")
        return numbers
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"threshold {key!r} must be a number, got {value!r}")
    if value < 0:
        raise ValueError(f"threshold {key!r} must not be negative, got {value!r}")
    return int(value) if key in _INT_KEYS else float(value)


def validate_thresholds(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Strictly check a dict of overrides (for forms and model validation); returns it coerced."""
    if not isinstance(overrides, Mapping):
        raise ValueError("thresholds must be a JSON object")
    return {key: _coerce(key, value) for key, value in overrides.items()}


def _apply(target: dict[str, Any], overrides: Any, origin: str) -> None:
    if not overrides:
        return
    if not isinstance(overrides, Mapping):
        logger.warning("ignoring %s quality thresholds: not a mapping (%r)", origin, overrides)
        return
    for key, value in overrides.items():
        try:
            target[key] = _coerce(key, value)
        except (TypeError, ValueError) as exc:
            logger.warning("ignoring %s quality threshold: %s", origin, exc)


def resolve_thresholds(asset_class: str | None, instrument_overrides: Mapping[str, Any] | None = None) -> dict:
    """Thresholds for one series: defaults < settings default < settings asset class < instrument."""
    resolved = base_thresholds()
    configured = conf.QUALITY_THRESHOLDS or {}
    if not isinstance(configured, Mapping):
        logger.warning("ignoring settings.QUALITY_THRESHOLDS: not a mapping")
        configured = {}
    _apply(resolved, configured.get("default"), "settings default")
    if asset_class:
        _apply(resolved, configured.get(asset_class), f"settings {asset_class}")
    _apply(resolved, instrument_overrides, "instrument")
    return resolved


def series_contexts(symbol: str | None = None, timeframe: str | None = None) -> list[SeriesContext]:
    """The series to judge: every active instrument × its timeframes (``integrity.series.watchlist``),
    plus the instrument's other timeframes that have stored candles. Candle series of symbols that are
    no instrument are not ours to judge (no calendar) and are skipped. Naming a symbol includes it
    even when inactive.
    """
    if timeframe and timeframe not in TIMEFRAME_DELTAS:
        raise ValueError(f"unknown timeframe {timeframe!r}; expected one of {', '.join(TIMEFRAME_DELTAS)}")
    timeframes = [timeframe] if timeframe else list(TIMEFRAME_DELTAS)
    instruments = watchlist([symbol], inactive_too=True) if symbol else watchlist()

    known: dict[str, bool] = {}
    wanted: dict[tuple[str, str], WatchedInstrument] = {}
    probe: list[tuple[str, str]] = []
    for instrument in instruments:
        if instrument.calendar not in known:
            known[instrument.calendar] = is_known_calendar(instrument.calendar)
        if not known[instrument.calendar]:
            logger.warning("skipping %s: unknown calendar %r", instrument.symbol, instrument.calendar)
            continue
        for tf in timeframes:
            if tf in instrument.timeframes:
                wanted[(instrument.symbol, tf)] = instrument
            else:
                probe.append((instrument.symbol, tf))
    by_symbol = {instrument.symbol: instrument for instrument in instruments}
    for pair, last in newest_bars_of(probe).items():
        if last is not None:
            wanted[pair] = by_symbol[pair[0]]

    stats = {}
    closures = {}
    if wanted:
        symbols = {s for s, _ in wanted}
        closures = closures_by_symbol(symbols)
        stats_rows = SeriesStats.objects.filter(robust_volatility__isnull=False)
        if len(symbols) <= 500:
            stats_rows = stats_rows.filter(symbol__in=symbols)
        stats = {(r[0], r[1]): r[2] for r in stats_rows.order_by().values_list("symbol", "timeframe",
                                                                                 "robust_volatility")}
    # Thresholds resolved once per instrument, and once per distinct (asset class, overrides): a
    # watchlist of thousands of instruments shares a handful of combinations.
    resolved: dict[tuple[str, str], dict] = {}
    per_instrument: dict[str, dict] = {}

    def thresholds_of(instrument: WatchedInstrument) -> dict:
        found = per_instrument.get(instrument.symbol)
        if found is None:
            asset_class, overrides = instrument.asset_class, instrument.quality_thresholds
            try:
                key = (asset_class, json.dumps(overrides, sort_keys=True) if overrides else "")
            except (TypeError, ValueError):
                key = None
            if key is None:
                found = resolve_thresholds(asset_class, overrides)
            else:
                if key not in resolved:
                    resolved[key] = resolve_thresholds(asset_class, overrides)
                found = resolved[key]
            per_instrument[instrument.symbol] = found
        return found

    return [
        SeriesContext(
            symbol=sym,
            timeframe=tf,
            calendar=instrument.calendar,
            asset_class=instrument.asset_class,
            # Shared (read-only) between the series of the same combination.
            thresholds=thresholds_of(instrument),
            robust_volatility=stats.get((sym, tf)),
            alignment=instrument.bar_alignment,
            availability_delay_minutes=instrument.availability_delay_minutes,
            closures=closures.get(sym, ()),
        )
        for (sym, tf), instrument in sorted(wanted.items())
    ]
