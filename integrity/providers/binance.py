"""Binance spot klines (public market data, no API key).

Endpoint: ``GET {base_url}/api/v3/klines?symbol=BTCUSDT&interval=1h&startTime=…&endTime=…&limit=1000``.
A kline is ``[openTime, open, high, low, close, volume, closeTime, quoteVolume, trades, …]`` with
times in epoch milliseconds and numbers as strings; ``openTime`` is our ``ts`` (Binance's daily
klines open at 00:00 UTC, our daily convention).

Paging: ``startTime`` walks forward (next start = last open time + interval) and ``endTime`` is
the range end minus 1 ms (Binance's ``endTime`` is inclusive, our end is exclusive). The fetch
ends when the next start reaches the end or on an empty page (the start is past the last kline).
A page shorter than ``limit`` does not end it (a lower cap on the server side would otherwise
truncate the range silently). A page whose last open time is not after the previous
page's (or before the requested start) fails with "pagination cursor did not advance": a server
that ignores ``startTime`` can never make us loop.

Options (``Instrument.provider_options``, overriding settings):
    base_url         default setting ``BINANCE_BASE_URL`` (https://api.binance.com); another host
                     only when listed in ``PROVIDER_ALLOWED_HOSTS``
    provider_symbol  the Binance symbol, when the default mapping is wrong
    limit            klines per request, 1..1000 (default 1000)

Symbol mapping (default): upper-case, split at ``-`` or ``/``, quote ``USD`` becomes ``USDT``,
joined: ``BTC-USD`` → ``BTCUSDT``, ``ETH/BTC`` → ``ETHBTC``, ``BNBUSDT`` stays.

Limits, as Binance documents them:
    - request weight: each klines request costs ``BINANCE_KLINES_WEIGHT`` (2); at most
      ``BINANCE_WEIGHT_THRESHOLD`` × ``BINANCE_WEIGHT_LIMIT`` (default 0.8 × 6000) is sent per
      calendar minute — by every process together when ``REDIS_URL`` is set (``limits.WeightBudget``),
      else by each process — and a request that would go over waits for the next minute. Every reply
      also carries ``X-MBX-USED-WEIGHT-1M`` (weight used by this IP in the current minute, whoever sent
      it): at the same ceiling the next request waits for the next minute window too.
    - 429: back off; the shared HTTP client honours ``Retry-After`` (see ``http_policy``).
    - 418: the IP is banned for having kept going after 429s. Never retried: the fetch fails at once
      with an error naming the ban and its ``Retry-After``.
    - a client-side pace of ``BINANCE_MAX_REQUESTS_PER_SECOND`` (default 10) requests a second (for all
      processes together when ``REDIS_URL`` is set, ``limits.Pacer``).

Parsing: a reply that is not a JSON array of arrays, a kline with fewer than 6 fields, an open
time that is not an integer, or a price of a non-scalar JSON type fails the fetch (nothing from
that page is stored). A price or volume string that is not a number, or null, becomes NaN, so
validation rejects that bar alone and the rest of the page is stored.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pandas as pd

from integrity.conf import conf

from ..timeframes import timeframe_seconds
from . import base
from .base import FetchRequest, ProviderConfigError, ProviderError, excerpt, make_bar_frame, reading_reply
from .http import HttpClient
from .http_policy import HttpConfig, number_setting
from .limits import WeightBudget
from .options import check_option_names, page_limit, resolve_base_url

logger = logging.getLogger(__name__)

NAME = "binance"
DEFAULT_BASE_URL = conf.default("BINANCE_BASE_URL")
KLINES_PATH = "/api/v3/klines"
MAX_LIMIT = 1000
INTERVALS = {"1m": "1m", "5m": "5m", "15m": "15m", "1h": "1h", "4h": "4h", "1d": "1d"}
WEIGHT_HEADER = "X-MBX-USED-WEIGHT-1M"
_SYMBOL = re.compile(r"[A-Z0-9]{2,30}")


def binance_symbol(symbol: str) -> str:
    """Our symbol to Binance's: ``BTC-USD`` → ``BTCUSDT`` (quote USD means USDT on Binance)."""
    parts = [p for p in re.split(r"[-/]", symbol.strip().upper()) if p]
    if len(parts) == 2 and parts[1] == "USD":
        parts[1] = "USDT"
    return "".join(parts)


def _number(value: Any, row: int, field: str, path: str) -> float:
    """A kline number (``base.reply_number``): strings and JSON numbers parse, junk strings and null
    become NaN."""
    try:
        return base.reply_number(value)
    except TypeError:
        raise ProviderError(
            f"unexpected kline shape: {field} of kline {row} is a JSON {_json_type(value)}, "
            f"expected a number string", provider=NAME, path=path,
        ) from None


def parse_klines(payload: Any, path: str = KLINES_PATH) -> pd.DataFrame:
    """A klines reply to a bar frame (ascending ts), or ``ProviderError`` for an unusable reply."""
    if not isinstance(payload, list):
        raise ProviderError(
            f"unexpected reply shape: expected a JSON array of klines, got a JSON {_json_type(payload)}",
            provider=NAME, path=path, body_excerpt=excerpt(payload),
        )
    n = len(payload)
    ts = np.empty(n, dtype="int64")
    values = np.empty((n, 5), dtype="float64")
    fields = ("open", "high", "low", "close", "volume")
    for i, row in enumerate(payload):
        if not isinstance(row, list) or len(row) < 6:
            raise ProviderError(
                f"unexpected kline shape: kline {i} is not an array of at least 6 fields",
                provider=NAME, path=path, body_excerpt=excerpt(row),
            )
        open_time = row[0]
        if isinstance(open_time, bool) or not isinstance(open_time, int):
            raise ProviderError(
                f"unexpected kline shape: open time of kline {i} is {excerpt(repr(open_time), limit=60)}, "
                f"expected integer milliseconds", provider=NAME, path=path, body_excerpt=excerpt(row),
            )
        ts[i] = open_time
        for j, name in enumerate(fields):
            values[i, j] = _number(row[j + 1], i, name, path)
    try:
        stamps = pd.to_datetime(ts, unit="ms", utc=True)
    except (OverflowError, ValueError, pd.errors.OutOfBoundsDatetime):
        raise ProviderError("kline open time out of range", provider=NAME, path=path) from None
    frame = make_bar_frame(stamps, *values.T)
    if not frame["ts"].is_monotonic_increasing:
        frame = frame.sort_values("ts", kind="stable").reset_index(drop=True)
    return frame


def _json_type(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number")


def explain_status(response: httpx.Response, path: str) -> str | None:
    """Binance's meaning of a non-retryable status, for the error message."""
    status = response.status_code
    if status == 418:
        retry_after = response.headers.get("Retry-After")
        until = f"; Binance says retry after {retry_after}s" if retry_after else ""
        return (f"IP banned by Binance (HTTP 418: requests kept coming after 429 rate-limit replies){until}; "
                f"not retrying — lower BINANCE_MAX_REQUESTS_PER_SECOND or run fewer workers")
    try:
        body = response.json()
    except ValueError:
        return None
    if isinstance(body, dict) and "msg" in body:
        return (f"rejected by Binance: HTTP {status}: {excerpt(str(body.get('msg')))} "
                f"(code {excerpt(str(body.get('code')), limit=20)})")
    return None


OPTIONS = ("base_url", "provider_symbol", "limit")


def _mapped_symbol(symbol: str, options: dict[str, Any]) -> str:
    mapped = str(options.get("provider_symbol") or binance_symbol(symbol)).strip().upper()
    if not _SYMBOL.fullmatch(mapped):
        raise ProviderConfigError(f"cannot map {symbol!r} to a Binance symbol (got {mapped!r}); "
                                  f"set provider_symbol, e.g. BTCUSDT", provider=NAME)
    return mapped


def validate_options(options: Any, symbol: str = "") -> None:
    """Check an instrument's ``provider_options`` for Binance (admin/API edits): names and values."""
    options = check_option_names(options, OPTIONS, NAME)
    if options.get("base_url"):
        resolve_base_url(options, "BINANCE_BASE_URL", DEFAULT_BASE_URL, NAME)
    if symbol or options.get("provider_symbol"):
        _mapped_symbol(symbol, options)
    page_limit(options, MAX_LIMIT, NAME)


class BinanceProvider:
    name = NAME
    asset_class = "crypto"  # the asset class of an instrument registered for this provider
    bar_alignment = "clock"  # klines sit on the UTC clock grid

    def __init__(self, **defaults: Any):
        self.defaults = defaults

    def _options(self, request: FetchRequest) -> dict[str, Any]:
        return {**self.defaults, **(request.options or {})}

    def fetch(self, request: FetchRequest) -> Iterator[pd.DataFrame]:
        # Configuration is checked here, before any request is sent.
        options = self._options(request)
        interval = INTERVALS.get(request.timeframe)
        if interval is None:
            raise ProviderConfigError(f"timeframe {request.timeframe!r} has no Binance interval; expected one "
                                      f"of {', '.join(INTERVALS)}", provider=NAME)
        symbol = _mapped_symbol(request.symbol, options)
        limit = page_limit(options, MAX_LIMIT, NAME)
        base_url = resolve_base_url(options, "BINANCE_BASE_URL", DEFAULT_BASE_URL, NAME)
        config = HttpConfig.from_settings(NAME, "BINANCE_MAX_REQUESTS_PER_SECOND")
        weight_limit = number_setting("BINANCE_WEIGHT_LIMIT", provider=NAME, minimum=1)
        weight_threshold = number_setting("BINANCE_WEIGHT_THRESHOLD", provider=NAME)
        weight = int(number_setting("BINANCE_KLINES_WEIGHT", provider=NAME, minimum=0, integer=True))
        return self._pages(request, symbol, interval, limit, base_url, config, weight_limit * weight_threshold,
                           weight)

    def _pages(self, request: FetchRequest, symbol: str, interval: str, limit: int, base_url: str,
               config: HttpConfig, weight_ceiling: float, weight: int) -> Iterator[pd.DataFrame]:
        step_ms = timeframe_seconds(request.timeframe) * 1000
        start_ms = _ms(request.start)
        end_ms = _ms(request.end)
        cursor = -(-start_ms // step_ms) * step_ms  # first bar open time at or after start
        previous_last: int | None = None
        client = HttpClient(NAME, base_url, config, explain_status=explain_status, request_weight=weight)
        if weight:
            client.weight_budget = WeightBudget(NAME, client.endpoint_key, weight_ceiling)
        with client:
            while cursor < end_ms:
                params = {"symbol": symbol, "interval": interval, "startTime": cursor,
                          "endTime": end_ms - 1, "limit": limit}
                payload, response = client.get_json(KLINES_PATH, params)
                with reading_reply(NAME, response.url.path):
                    frame = parse_klines(payload, response.url.path)
                if frame.empty:
                    return  # the start is past the last kline
                last = int(frame["ts"].iloc[-1].value // 1_000_000)
                if last < cursor or (previous_last is not None and last <= previous_last):
                    raise ProviderError(
                        f"pagination cursor did not advance: asked for klines from startTime={cursor}, the "
                        f"page ends at open time {last}"
                        + (f", previous page ended at {previous_last}" if previous_last is not None else ""),
                        provider=NAME, path=response.url.path, status=response.status_code,
                    )
                yield frame
                # A short page is not taken as the end: a proxy or a lower server-side cap would
                # then silently truncate the range. The next request costs little (the range end
                # is usually reached first) and an empty page ends the fetch.
                previous_last = last
                cursor = last + step_ms
                if cursor < end_ms:
                    self._respect_weight(client, response, weight_ceiling)

    def _respect_weight(self, client: HttpClient, response: httpx.Response, ceiling: float) -> None:
        """Wait for the next minute window when this IP's used weight nears Binance's limit."""
        raw = response.headers.get(WEIGHT_HEADER)
        try:
            used = int(raw) if raw is not None else None
        except ValueError:
            used = None
        if used is None or used < ceiling:
            return
        now = time.time()
        wait = min(61.0, 60.0 - now % 60.0 + 1.0)  # windows roll over on the minute; 1 s of margin
        logger.warning("%s: used request weight %d is at or above %g; waiting %.1fs for the next minute",
                       NAME, used, ceiling, wait)
        client.sleep(wait)


def _ms(value) -> int:
    stamp = pd.Timestamp(value)
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return int(stamp.value // 1_000_000)
