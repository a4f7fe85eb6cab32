"""Any crypto exchange the ccxt library supports, through its unified ``fetch_ohlcv``: the provider
(its options check and its paging) and the parsing of ccxt's candles.

The module is named after the provider (``ccxt``) because the API, the admin and ``ranges`` find a
provider's ``validate_options`` / ``EARLIEST_BAR`` by importing ``integrity.providers.<name>``.
Imports are absolute, so ``import ccxt`` in the provider's modules is the library, never this
module. The exchange, its endpoint rules, keys and shared instances are ``ccxt_exchange``'s; the
retries and the mapping of ccxt's errors to ours are ``ccxt_calls``'.

Options (``Instrument.provider_options``):
    exchange   a ccxt exchange id (``ccxt.exchanges``) whose ccxt class offers ``fetchOHLCV``:
               ``coinbaseexchange``, ``kraken``, ``binance``, ``bitstamp`` … (default: the setting
               ``CCXT_DEFAULT_EXCHANGE``; required when that is empty)
    market     the exchange's unified ccxt symbol, when the default mapping is wrong
               (default: ``BTC-USD`` → ``BTC/USD``; ``BTC-USDT`` on Binance is ``BTC/USDT``)
    base_url   another endpoint: only another path on the host and port of the setting
               ``CCXT_<EXCHANGE>_API_URL`` (of ccxt's public API URL when that is empty), or a host
               listed in ``PROVIDER_ALLOWED_HOSTS`` (the rule of ``options.resolve_base_url``, shared
               with the HTTP providers)
    limit      bars per request, 1..the exchange's maximum as ccxt declares it (default that
               maximum; 1..1000, default 100, when ccxt declares none)

Paging: ``fetch_ohlcv(market, timeframe, since=cursor, limit=limit)``, the cursor starting at the
first bar open time at or after the range start and moving to the last returned bar + one bar.
ccxt returns only bars at or after ``since``, so the cursor always advances; a page whose last bar
is before the cursor anyway (an exchange class that does not filter) fails with "pagination cursor
did not advance". An empty page is a window without bars, not the end of the data: several
exchanges (Coinbase among them) answer a time *window* of ``limit`` bars and omit bars without
trades, so an illiquid stretch longer than a page would otherwise end the fetch for good. The
cursor then moves on by ``limit`` bars. Every request moves the cursor forward by at least one bar,
and the fetch ends when it reaches the range end: no reply can make it loop.

Rate limits: ccxt's own rate limiter (``enableRateLimit``, the per-exchange request spacing and
endpoint costs ccxt ships) on the shared instance of ``ccxt_exchange.venue``.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Iterator
from typing import Any

import pandas as pd

from integrity.conf import conf

from ..timeframes import timeframe_seconds
from .base import FetchRequest, ProviderConfigError, excerpt, make_bar_frame, reply_number
from .ccxt_calls import Calls
from .ccxt_exchange import (
    NAME,
    api_urls,
    ccxt_library,
    check_ohlcv,
    check_transport,
    credentials_of,
    endpoint_of,
    exchange_class,
    exchange_id_of,
    limit_of,
    market_of,
    timeframe_of,
    venue,
)
from .http_policy import HttpConfig, number_setting
from .options import check_option_names

logger = logging.getLogger(__name__)

OPTIONS = ("exchange", "market", "base_url", "limit")
MARKETS_TTL_SETTING = "CCXT_MARKETS_TTL_SECONDS"  # markets are reloaded after this many seconds


def validate_options(options: Any, symbol: str = "") -> None:
    """Check an instrument's ``provider_options`` for ccxt (admin/API edits): names and values.

    Nothing here sends a request: the market itself is checked against the exchange's markets by
    the first fetch."""
    options = check_option_names(options, OPTIONS, NAME)
    exchange_id = exchange_id_of(options)
    exchange = exchange_class(exchange_id)()
    check_ohlcv(exchange_id, exchange)
    if symbol or options.get("market") not in (None, ""):
        market_of(symbol, options)
    limit_of(options, exchange)
    if options.get("base_url") not in (None, ""):
        endpoint_of(exchange_id, options, exchange, sends_keys=bool(credentials_of(exchange_id)))


# --- parsing --------------------------------------------------------------------------------------


class UnusableCandles(ValueError):
    """fetch_ohlcv returned something that is not a list of candles (the caller names the request)."""


def _number(value: Any, row: int, name: str) -> float:
    """A candle number (``base.reply_number``): None and junk strings become NaN."""
    try:
        return reply_number(value)
    except TypeError:
        raise UnusableCandles(f"{name} of candle {row} is {type(value).__name__}, expected a number") from None


def parse_ohlcv(rows: Any) -> pd.DataFrame:
    """ccxt's ``[[ms, open, high, low, close, volume], …]`` to a bar frame (ascending ts), or
    ``UnusableCandles``. A price or volume that is None or not a number becomes NaN, for validation
    to reject that bar alone."""
    if not isinstance(rows, list):
        raise UnusableCandles(f"fetch_ohlcv returned {type(rows).__name__}, expected a list")
    stamps: list[int] = []
    columns: list[list[float]] = [[], [], [], [], []]
    names = ("open", "high", "low", "close", "volume")
    for i, row in enumerate(rows):
        if not isinstance(row, (list, tuple)) or len(row) < 6:
            raise UnusableCandles(f"candle {i} is not [ms, open, high, low, close, volume]: {excerpt(row, limit=80)}")
        stamp = row[0]
        if isinstance(stamp, bool) or not isinstance(stamp, int):
            raise UnusableCandles(f"time of candle {i} is {excerpt(repr(stamp), limit=60)}, expected integer "
                                  f"milliseconds")
        stamps.append(stamp)
        for j, name in enumerate(names):
            columns[j].append(_number(row[j + 1], i, name))
    try:
        ts = pd.to_datetime(pd.Series(stamps, dtype="int64"), unit="ms", utc=True)
    except (OverflowError, ValueError, pd.errors.OutOfBoundsDatetime):
        raise UnusableCandles("candle time out of range") from None
    frame = make_bar_frame(ts, *columns)
    if not frame["ts"].is_monotonic_increasing:
        frame = frame.sort_values("ts", kind="stable").reset_index(drop=True)
    return frame


# --- the provider ---------------------------------------------------------------------------------


def _fetch_ohlcv(exchange, *, market: str, timeframe: str, since: int, limit: int) -> Any:
    return exchange.fetch_ohlcv(market, timeframe, since=since, limit=limit)


def _ms(value) -> int:
    stamp = pd.Timestamp(value)
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return int(stamp.value // 1_000_000)


class CcxtProvider:
    name = NAME
    asset_class = "crypto"  # the asset class of an instrument registered for this provider
    bar_alignment = "clock"  # exchange candles sit on the UTC clock grid (daily at 00:00 UTC)

    def __init__(self, **defaults: Any):
        self.defaults = defaults

    def fetch(self, request: FetchRequest) -> Iterator[pd.DataFrame]:
        # Configuration is checked here, before any request is sent.
        options = {**self.defaults, **(request.options or {})}
        exchange_id = exchange_id_of(options)
        template = exchange_class(exchange_id)()
        check_ohlcv(exchange_id, template)
        timeframe = timeframe_of(request.timeframe, exchange_id, template)
        market = market_of(request.symbol, options)
        limit = limit_of(options, template)
        credentials = credentials_of(exchange_id)
        endpoint = endpoint_of(exchange_id, options, template, sends_keys=bool(credentials))
        api = api_urls(template, endpoint)
        if credentials:
            check_transport(api)
        config = HttpConfig.from_settings(NAME)
        ttl = number_setting(MARKETS_TTL_SETTING, provider=NAME)
        shared = venue(exchange_id, api, credentials, int(config.read_timeout * 1000),
                       conf.CCXT_ENABLE_RATE_LIMIT)
        return self._pages(request, Calls(shared, exchange_id, config), market, timeframe, limit, ttl)

    def _pages(self, request: FetchRequest, calls: Calls, market: str, timeframe: str, limit: int,
               ttl: float) -> Iterator[pd.DataFrame]:
        self._load_markets(calls, ttl)
        self._check_market(calls, market, request.symbol)
        step_ms = timeframe_seconds(request.timeframe) * 1000
        end_ms = _ms(request.end)
        cursor = -(-_ms(request.start) // step_ms) * step_ms  # the first bar open time at or after start
        end = pd.Timestamp(end_ms, unit="ms", tz="UTC")
        empty_windows = 0
        while cursor < end_ms:
            since = cursor
            rows = calls("fetch_ohlcv", functools.partial(_fetch_ohlcv, market=market, timeframe=timeframe,
                                                          since=since, limit=limit))
            try:
                frame = parse_ohlcv(rows)
            except UnusableCandles as exc:
                raise calls.error(f"{calls.exchange_id} fetch_ohlcv {market} {timeframe}: unexpected candle shape: "
                                  f"{exc}") from None
            if frame.empty:
                # A window without bars (no trades, or before the listing): move on by a page. The
                # empty page still goes to the caller, which checks for a stop between pages.
                empty_windows += 1
                cursor += limit * step_ms
                yield frame
                continue
            last = int(frame["ts"].iloc[-1].value // 1_000_000)
            if last < cursor:
                raise calls.error(f"{calls.exchange_id} fetch_ohlcv {market} {timeframe}: pagination cursor did not "
                                  f"advance: asked for candles since {since}, the page ends at {last}")
            frame = frame[frame["ts"] < end].reset_index(drop=True)
            if not frame.empty:
                yield frame
            cursor = last + step_ms
        if empty_windows:
            logger.info("%s: %s %s %s: %d request(s) returned no candles (windows without trades, or a range "
                        "outside the exchange's history)", NAME, calls.exchange_id, market, timeframe, empty_windows)

    def _load_markets(self, calls: Calls, ttl: float) -> None:
        shared = calls.venue
        loaded_at = shared.markets_loaded_at
        if loaded_at is not None and time.monotonic() - loaded_at < ttl:
            return
        calls("load_markets", lambda exchange: exchange.load_markets(reload=loaded_at is not None))
        shared.markets_loaded_at = time.monotonic()

    def _check_market(self, calls: Calls, market: str, symbol: str) -> None:
        library = ccxt_library()
        try:
            with calls.venue.lock:
                calls.venue.exchange.market(market)
        except library.BadSymbol:
            raise calls.error(f"{calls.exchange_id} does not list the market {market} (instrument {symbol}); set the "
                              f"option market to a ccxt symbol the exchange lists, e.g. BTC/USDT", "",
                              ProviderConfigError) from None
