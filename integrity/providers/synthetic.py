"""A deterministic synthetic provider for demos, tests and benchmarks.

Every value of a bar is a pure function of (seed, symbol, timeframe, ts, revision), computed with
a counter-based hash (splitmix64 over the bar time), so any range, split into any pages, yields the
same bars: fetching [a, c) equals fetching [a, b) then [b, c). Bars follow the request's calendar
exactly (``expected_bars``) unless faults are injected.

Prices: ``level(t) = base_price * exp(drift(t) + noise(t))`` where ``drift`` is a slow sum of
sines and ``noise`` is multi-scale value noise (1 minute up to a year) whose amplitude grows with
the square root of its scale, so ``volatility`` is roughly the daily log-return deviation at every
timeframe. ``level`` depends on (seed, symbol) only, so timeframes agree with each other (a daily
bar opens at the 00:00 minute's open). A bar opens at ``level(ts)`` and closes at
``level(ts + timeframe)``; hashed wicks put high strictly above and low strictly below the body.

Faults, all deterministic (lists of times are ISO strings or datetimes, taken as UTC):
    gaps / gap_rate          bars in the [start, end) pairs, or a hashed fraction, are omitted
    spikes / spike_rate      close and high multiplied by 1.5 (the next open is not affected)
    invalid / invalid_rate   high and low swapped, so high < low
    revision                 mixed into the volume only: a provider revising its bars
    fail_after_pages         ProviderError once that many pages were yielded (0: before any)
    page_delay               seconds slept before each page
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd

from ..calendars import expected_ns, validate_calendar_code
from ..timeframes import NS_PER_SECOND, timeframe_seconds, to_ns
from .base import BAR_COLUMNS, FetchRequest, ProviderConfigError, ProviderError, empty_bar_frame

SPIKE_FACTOR = 1.5
_BLOCK_ROWS = 50_000

_DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "page_size": 5000,
    "base_price": 100.0,
    "volatility": 0.01,
    "gaps": None,
    "spikes": None,
    "invalid": None,
    "gap_rate": 0.0,
    "spike_rate": 0.0,
    "invalid_rate": 0.0,
    "revision": 0,
    "fail_after_pages": None,
    "page_delay": 0.0,
}

# Value-noise scales in seconds: 1m, 5m, 15m, 1h, 4h, 1d, 1w, 30d, 1y.
_NOISE_SCALES = (60, 300, 900, 3600, 14_400, 86_400, 604_800, 2_592_000, 31_536_000)
_DAY = 86_400.0

# Stream ids keep the hashed quantities independent of each other.
_S_WICK_HI, _S_WICK_LO, _S_VOLUME, _S_GAP, _S_SPIKE, _S_INVALID = range(101, 107)

_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser (uint64 in, uint64 out); wrapping multiplication is intended."""
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


_MASK = (1 << 64) - 1


def _mix_int(z: int) -> int:
    """``_mix`` for one Python int (avoids numpy's scalar overflow warnings)."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def _stable_key(*parts: object) -> int:
    """A 64-bit key from the parts, stable across processes (unlike the salted ``hash()``)."""
    digest = hashlib.blake2b("\x1f".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def _uniform(key: int, counter: np.ndarray) -> np.ndarray:
    """Uniform floats in [0, 1), one per int64 counter: splitmix64 at position ``counter``."""
    z = counter.astype(np.uint64) * _GAMMA + np.uint64(key)
    return (_mix(z) >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)


def _knot_values(key: int, knot: np.ndarray, amplitude: float) -> tuple[np.ndarray, np.ndarray]:
    """Value noise at each point's knot and the knot after, in [-amplitude, amplitude].

    ``knot`` is sorted: each distinct knot is hashed once, and a knot's successor value is reused
    from the next distinct knot when they are consecutive (contiguous bars).
    """
    if len(knot) == 0:
        return np.empty(0), np.empty(0)
    change = np.empty(len(knot), dtype=bool)
    change[0] = True
    np.not_equal(knot[1:], knot[:-1], out=change[1:])
    every = bool(change.all())
    distinct = knot if every else knot[change]
    h0 = _uniform(key, distinct)
    h1 = np.empty_like(h0)
    consecutive = distinct[1:] == distinct[:-1] + 1
    h1[:-1][consecutive] = h0[1:][consecutive]
    missing = np.ones(len(distinct), dtype=bool)
    missing[:-1] = ~consecutive
    h1[missing] = _uniform(key, distinct[missing] + 1)
    v0 = (2.0 * amplitude) * h0 - amplitude
    v1 = (2.0 * amplitude) * h1 - amplitude
    if not every:
        where = np.cumsum(change) - 1
        v0, v1 = v0[where], v1[where]
    return v0, v1


def _as_ns_list(values) -> np.ndarray:
    if values is None:
        return np.empty(0, dtype="int64")
    if isinstance(values, str) or not hasattr(values, "__iter__"):
        values = [values]
    return np.array([to_ns(v) for v in values], dtype="int64")


def _as_ns_pairs(values) -> np.ndarray:
    pairs = []
    for pair in values or ():
        try:
            start, end = pair
        except (TypeError, ValueError):
            raise ProviderConfigError(
                f"gaps must be [start, end) pairs, got {pair!r}", provider="synthetic"
            ) from None
        pairs.append((to_ns(start), to_ns(end)))
    return np.array(pairs, dtype="int64").reshape(-1, 2)


class _Series:
    """The hash keys and parameters of one (seed, symbol, timeframe, revision) series."""

    def __init__(self, symbol: str, timeframe: str, opts: dict[str, Any]):
        seed = int(opts["seed"])
        self.step = timeframe_seconds(timeframe)
        self.base_price = float(opts["base_price"])
        self.volatility = float(opts["volatility"])
        path_key = _stable_key("path", seed, symbol)
        self.scale_keys = [_mix_int((path_key + (i + 1) * 0x9E3779B97F4A7C15) & _MASK)
                           for i in range(len(_NOISE_SCALES))]
        phases = _uniform(path_key, np.arange(2, dtype="int64"))
        self.phases = phases * 2 * np.pi
        bar_key = _stable_key("bar", seed, symbol, timeframe)
        self.keys = {s: _mix_int(bar_key ^ _mix_int(s)) for s in
                     (_S_WICK_HI, _S_WICK_LO, _S_GAP, _S_SPIKE, _S_INVALID)}
        self.keys[_S_VOLUME] = _stable_key("volume", seed, symbol, timeframe, int(opts["revision"]))

    def level(self, t: np.ndarray) -> np.ndarray:
        """Price level at times ``t`` (int64 seconds)."""
        t = np.asarray(t, dtype="int64")
        if len(t) > 1 and not bool(np.all(t[1:] >= t[:-1])):
            order = np.argsort(t, kind="stable")
            result = np.empty(len(t), dtype=np.float64)
            result[order] = self.level(t[order])
            return result
        seconds = t.astype(np.float64)
        p = self.phases
        # Slow trends (at most ~0.5% a day) so charts have shape without swamping the noise.
        log_level = (0.15 * np.sin(seconds * (2 * np.pi / (365.25 * _DAY)) + p[0])
                     + 0.04 * np.sin(seconds * (2 * np.pi / (47 * _DAY)) + p[1]))
        for scale, key in zip(_NOISE_SCALES, self.scale_keys, strict=True):
            knot = np.floor_divide(t, scale)
            frac = (t - knot * scale) * (1.0 / scale)
            v0, v1 = _knot_values(key, knot, self.volatility * np.sqrt(scale / _DAY))
            v1 -= v0
            v1 *= frac
            log_level += v0
            log_level += v1
        return self.base_price * np.exp(log_level)

    def u(self, stream: int, t: np.ndarray) -> np.ndarray:
        return _uniform(self.keys[stream], t)


OPTION_NAMES = tuple(_DEFAULTS)
_WHOLE_OPTIONS = ("seed", "page_size", "revision", "fail_after_pages")
_NUMBER_OPTIONS = ("base_price", "volatility", "gap_rate", "spike_rate", "invalid_rate", "page_delay")


def validate_options(options: Any, symbol: str = "") -> None:
    """Check an instrument's ``provider_options`` (admin/API edits): the values of the options it knows
    are ones a fetch can read (whole numbers, numbers, [start, end) gap pairs, bar times). Other names
    are ignored, as the provider ignores them (options left from another provider do no harm here)."""
    if not isinstance(options, dict):
        raise ProviderConfigError("provider_options must be a JSON object", provider="synthetic")
    options = {name: value for name, value in options.items() if name in _DEFAULTS}
    for name in _WHOLE_OPTIONS:
        value = options.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ProviderConfigError(f"{name} must be a whole number, got {value!r}", provider="synthetic")
    for name in _NUMBER_OPTIONS:
        value = options.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ProviderConfigError(f"{name} must be a number, got {value!r}", provider="synthetic")
    opts = SyntheticProvider(**options)._resolve(None)
    try:
        _as_ns_pairs(opts["gaps"]), _as_ns_list(opts["spikes"]), _as_ns_list(opts["invalid"])
    except (TypeError, ValueError) as exc:
        raise ProviderConfigError(f"gaps, spikes and invalid must hold bar times: {exc}", provider="synthetic") from None


class SyntheticProvider:
    name = "synthetic"

    def __init__(self, seed: int = 0, page_size: int = 5000, base_price: float = 100.0,
                 volatility: float = 0.01, gaps=None, spikes=None, invalid=None, gap_rate: float = 0.0,
                 spike_rate: float = 0.0, invalid_rate: float = 0.0, revision: int = 0,
                 fail_after_pages: int | None = None, page_delay: float = 0.0, **ignored):
        self.options = {
            "seed": seed, "page_size": page_size, "base_price": base_price, "volatility": volatility,
            "gaps": gaps, "spikes": spikes, "invalid": invalid, "gap_rate": gap_rate,
            "spike_rate": spike_rate, "invalid_rate": invalid_rate, "revision": revision,
            "fail_after_pages": fail_after_pages, "page_delay": page_delay,
        }

    def _resolve(self, overrides: dict[str, Any] | None) -> dict[str, Any]:
        opts = dict(self.options)
        opts.update({k: v for k, v in (overrides or {}).items() if k in _DEFAULTS})
        if int(opts["page_size"]) < 1:
            raise ProviderConfigError("page_size must be at least 1", provider=self.name)
        if float(opts["base_price"]) <= 0 or float(opts["volatility"]) < 0:
            raise ProviderConfigError("base_price must be > 0 and volatility >= 0", provider=self.name)
        return opts

    def fetch(self, request: FetchRequest) -> Iterator[pd.DataFrame]:
        opts = self._resolve(request.options)
        try:
            validate_calendar_code(request.calendar)
            series = _Series(request.symbol, request.timeframe, opts)
            lo, hi = to_ns(request.start), to_ns(request.end)
            gaps = _as_ns_pairs(opts["gaps"])
            spikes = _as_ns_list(opts["spikes"])
            invalid = _as_ns_list(opts["invalid"])
        except ValueError as exc:
            raise ProviderConfigError(str(exc), provider=self.name) from exc
        return self._pages(request, opts, series, lo, hi, gaps, spikes, invalid)

    def _pages(self, request, opts, series, lo, hi, gaps, spikes, invalid) -> Iterator[pd.DataFrame]:
        page_size = int(opts["page_size"])
        fail_after = opts["fail_after_pages"]
        fail_after = None if fail_after is None else int(fail_after)
        delay = float(opts["page_delay"] or 0.0)
        pages = 0

        def failure() -> ProviderError:
            return ProviderError(f"synthetic failure injected after {pages} pages", provider=self.name)

        if fail_after is not None and fail_after <= 0:
            raise failure()
        # Bars are computed in blocks of whole pages (at least ~50k rows): numpy's per-call overhead
        # dominates on small arrays, and memory stays bounded by the block.
        block = page_size * max(1, _BLOCK_ROWS // page_size)
        window = block * series.step * NS_PER_SECOND
        pending = np.empty(0, dtype="int64")
        cursor = lo
        while cursor < hi or len(pending):
            if cursor < hi and len(pending) < block:
                upper = min(cursor + window, hi)
                ts = expected_ns(request.calendar, request.timeframe, cursor, upper, request.alignment)
                cursor = upper
                ts = self._drop_gaps(ts, series, gaps, float(opts["gap_rate"]))
                pending = np.concatenate([pending, ts]) if len(pending) else ts
                continue
            chunk, pending = pending[:block], pending[block:]
            frame = self._bars(chunk, series, spikes, invalid, opts)
            for offset in range(0, len(frame), page_size):
                page = frame.iloc[offset:offset + page_size].reset_index(drop=True)
                if delay > 0:
                    time.sleep(delay)
                yield page
                pages += 1
                if fail_after is not None and pages >= fail_after:
                    raise failure()

    @staticmethod
    def _drop_gaps(ts: np.ndarray, series: _Series, gaps: np.ndarray, gap_rate: float) -> np.ndarray:
        keep = np.ones(len(ts), dtype=bool)
        for start, end in gaps:
            keep &= ~((ts >= start) & (ts < end))
        if gap_rate > 0:
            keep &= series.u(_S_GAP, ts // NS_PER_SECOND) >= gap_rate
        return ts if keep.all() else ts[keep]

    @staticmethod
    def _bars(ts_ns: np.ndarray, series: _Series, spikes: np.ndarray, invalid: np.ndarray,
              opts: dict[str, Any]) -> pd.DataFrame:
        step = series.step
        t = ts_ns // NS_PER_SECOND
        open_ = series.level(t)
        # A bar closes where the next one opens; only compute levels for bars without a successor.
        close = np.empty_like(open_)
        if len(t):
            contiguous = np.zeros(len(t), dtype=bool)
            contiguous[:-1] = t[1:] == t[:-1] + step
            close[contiguous] = open_[1:][contiguous[:-1]]
            close[~contiguous] = series.level(t[~contiguous] + step)
        bar_vol = series.volatility * np.sqrt(step / _DAY)
        wick_hi = bar_vol * (0.05 + 0.75 * series.u(_S_WICK_HI, t))
        wick_lo = bar_vol * (0.05 + 0.75 * series.u(_S_WICK_LO, t))
        # Guard against a zero volatility producing zero-width wicks: keep high > body > low.
        high = np.maximum(open_, close) * (1.0 + np.maximum(wick_hi, 1e-6))
        low = np.minimum(open_, close) * (1.0 - np.maximum(wick_lo, 1e-6))
        base_volume = 1_000_000.0 * step / _DAY
        volume = np.floor(base_volume * (0.3 + 1.4 * series.u(_S_VOLUME, t))) + 1.0

        spiked = np.isin(ts_ns, spikes)
        if float(opts["spike_rate"]) > 0:
            spiked |= series.u(_S_SPIKE, t) < float(opts["spike_rate"])
        if spiked.any():
            close = np.where(spiked, close * SPIKE_FACTOR, close)
            high = np.where(spiked, high * SPIKE_FACTOR, high)
        broken = np.isin(ts_ns, invalid)
        if float(opts["invalid_rate"]) > 0:
            broken |= series.u(_S_INVALID, t) < float(opts["invalid_rate"])
        if broken.any():
            high, low = np.where(broken, low, high), np.where(broken, high, low)

        frame = pd.DataFrame(
            {"ts": pd.DatetimeIndex(ts_ns.view("M8[ns]")).tz_localize("UTC"),
             "open": open_, "high": high, "low": low, "close": close, "volume": volume},
            columns=BAR_COLUMNS,
        )
        return frame


def synthetic_bars(symbol: str, timeframe: str, calendar: str, start, end, alignment: str = "clock",
                   **options) -> pd.DataFrame:
    """Every bar the synthetic provider (configured with ``options``) returns for [start, end)."""
    provider = SyntheticProvider(**options)
    request = FetchRequest(symbol=symbol, timeframe=timeframe, start=start, end=end, calendar=calendar,
                           alignment=alignment)
    pages = list(provider.fetch(request))
    if not pages:
        return empty_bar_frame()
    return pd.concat(pages, ignore_index=True)
