"""Any crypto exchange the ccxt library supports, through its unified ``fetch_ohlcv``.

The module is named after the provider (``ccxt``) because the API, the admin and ``ranges`` find a
provider's ``validate_options`` / ``EARLIEST_BAR`` by importing ``integrity.providers.<name>``.
Imports are absolute, so ``import ccxt`` below is the library, never this module. The library
(~1 s to import, 100+ exchange classes) is imported on first use only.

Options (``Instrument.provider_options``):
    exchange   a ccxt exchange id (``ccxt.exchanges``) whose ccxt class offers ``fetchOHLCV``:
               ``coinbaseexchange``, ``kraken``, ``binance``, ``bitstamp`` … (default: the setting
               ``CCXT_DEFAULT_EXCHANGE``; required when that is empty)
    market     the exchange's unified ccxt symbol, when the default mapping is wrong
               (default: ``BTC-USD`` → ``BTC/USD``; ``BTC-USDT`` on Binance is ``BTC/USDT``)
    base_url   another endpoint: only another path on the host and port of the setting
               ``CCXT_<EXCHANGE>_API_URL`` (of ccxt's public API URL when that is empty), or a host
               listed in ``PROVIDER_ALLOWED_HOSTS`` (the rule of ``http.resolve_base_url``, shared
               with the HTTP providers)
    limit      bars per request, 1..the exchange's maximum as ccxt declares it (default that
               maximum; 1..1000, default 100, when ccxt declares none)

Where requests go: ccxt's own URLs for the exchange, unless the operator sets
``CCXT_<EXCHANGE>_API_URL`` (Django setting, else the environment; e.g. ``CCXT_KRAKEN_API_URL``) or
an instrument's ``base_url`` passes the rule above. Such a URL replaces the scheme, host and port of
*every* API URL ccxt knows for the exchange (markets, candles, private), keeping each one's path
after the URL's own path: ``http://proxy:8080`` turns Kraken's ``https://api.kraken.com/0/public/OHLC``
into ``http://proxy:8080/0/public/OHLC``. Redirects are not followed.

Keys (optional; public market data needs none): ``CCXT_<EXCHANGE>_API_KEY``, ``_SECRET``,
``_PASSWORD`` (a passphrase), ``_UID``, read from Django settings, else the environment — never from
options (stored in the database, shown in the admin). With keys, every API URL must be https or a
loopback host. Key values are replaced by ``***`` in every error text (``base.redact``) and in what
ccxt and urllib3 log (a filter on their loggers).

Paging: ``fetch_ohlcv(market, timeframe, since=cursor, limit=limit)``, the cursor starting at the
first bar open time at or after the range start and moving to the last returned bar + one bar.
ccxt returns only bars at or after ``since``, so the cursor always advances; a page whose last bar
is before the cursor anyway (an exchange class that does not filter) fails with "pagination cursor
did not advance". An empty page is a window without bars, not the end of the data: several
exchanges (Coinbase among them) answer a time *window* of ``limit`` bars and omit bars without
trades, so an illiquid stretch longer than a page would otherwise end the fetch for good. The
cursor then moves on by ``limit`` bars. Every request moves the cursor forward by at least one bar,
and the fetch ends when it reaches the range end: no reply can make it loop.

Rate limits and errors: ccxt's own rate limiter (``enableRateLimit``, the per-exchange request
spacing and endpoint costs ccxt ships), on one ccxt instance per exchange and configuration per
process (shared by every fetch, ``backfill --concurrency`` threads included, one request at a time).
ccxt's network errors (``NetworkError`` and its subclasses ``RequestTimeout``, ``DDoSProtection``,
``RateLimitExceeded``, ``ExchangeNotAvailable``, ``OnMaintenance``) are retried with the HTTP
providers' policy and settings (``PROVIDER_HTTP_MAX_RETRIES``, ``PROVIDER_HTTP_BACKOFF_*``,
``Retry-After`` honoured up to ``PROVIDER_HTTP_RETRY_AFTER_MAX``; ``HttpClient.backoff`` and
``HttpClient.sleep`` themselves). Exchange errors are not retried: ``BadSymbol`` and
``NotSupported`` fail as ``ProviderConfigError``, ``AuthenticationError`` names the key settings,
every other ``ExchangeError`` and an unusable reply fail as ``ProviderError``. Error texts carry the
URL *path* only (ccxt's own messages quote the whole URL with host and query string).
"""

from __future__ import annotations

import functools
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pandas as pd

from integrity.conf import conf

from ..timeframes import timeframe_seconds
from .base import (
    FetchRequest,
    ProviderConfigError,
    ProviderError,
    excerpt,
    make_bar_frame,
    redact,
)
from .http import (
    HttpClient,
    HttpConfig,
    check_keys_transport,
    check_option_names,
    number_setting,
    page_limit,
    parse_base_url,
    parse_retry_after,
    resolve_base_url,
)

logger = logging.getLogger(__name__)

NAME = "ccxt"
OPTIONS = ("exchange", "market", "base_url", "limit")
# Our timeframes and ccxt's unified names for them (an exchange offers a subset: ``timeframes``).
TIMEFRAMES = {"1m": "1m", "5m": "5m", "15m": "15m", "1h": "1h", "4h": "4h", "1d": "1d"}
DEFAULT_LIMIT = 100  # bars per request when ccxt declares no maximum for the exchange
UNDECLARED_MAX_LIMIT = 1000
CREDENTIALS = {"apiKey": "API_KEY", "secret": "SECRET", "password": "PASSWORD", "uid": "UID"}
MARKETS_TTL_SETTING = "CCXT_MARKETS_TTL_SECONDS"  # markets are reloaded after this many seconds
DEFAULT_EXCHANGE_SETTING = "CCXT_DEFAULT_EXCHANGE"  # the exchange of an instrument without the option
ERROR_CHARS = 300  # the longest excerpt of a ccxt error text an error carries
_EXCHANGE_ID = re.compile(r"[a-z][a-z0-9_]{1,40}")
_MARKET = re.compile(r"[A-Za-z0-9._-]{1,30}/[A-Za-z0-9._-]{1,30}(:[A-Za-z0-9._-]{1,30})?(-[A-Za-z0-9._-]{1,30})*")
_URL = re.compile(r"\bhttps?://[^\s'\"<>]+")


def _library():
    import ccxt  # the library (absolute import), not this module

    return ccxt


# --- names and settings ---------------------------------------------------------------------------


def setting_name(exchange_id: str, suffix: str) -> str:
    """``CCXT_<EXCHANGE>_<SUFFIX>``, e.g. ``CCXT_KRAKEN_API_URL``."""
    return f"CCXT_{exchange_id.upper()}_{suffix}"


def exchange_id_of(options: Mapping[str, Any]) -> str:
    """The ``exchange`` option (else the setting ``CCXT_DEFAULT_EXCHANGE``): a ccxt exchange id."""
    raw = options.get("exchange")
    if raw in (None, ""):
        raw = conf.CCXT_DEFAULT_EXCHANGE
    if raw in (None, ""):
        raise ProviderConfigError("missing option exchange: name a ccxt exchange id, e.g. "
                                  '{"exchange": "coinbaseexchange"} (kraken, binance, bitstamp …), or set '
                                  f"{DEFAULT_EXCHANGE_SETTING}", provider=NAME)
    value = raw.strip() if isinstance(raw, str) else raw
    if not isinstance(value, str) or not _EXCHANGE_ID.fullmatch(value) or value not in _library().exchanges:
        raise ProviderConfigError(f"exchange {excerpt(repr(raw), limit=60)} is not a ccxt exchange id; expected one "
                                  f"of ccxt.exchanges, e.g. coinbaseexchange, kraken, binance", provider=NAME)
    return value


def _exchange_class(exchange_id: str):
    return getattr(_library(), exchange_id)


def market_of(symbol: str, options: Mapping[str, Any]) -> str:
    """The ccxt unified symbol: the ``market`` option, else ``BTC-USD`` → ``BTC/USD``."""
    explicit = options.get("market")
    if explicit not in (None, ""):
        value = explicit.strip() if isinstance(explicit, str) else explicit
        if not isinstance(value, str) or not _MARKET.fullmatch(value):
            raise ProviderConfigError(f"market must be a ccxt unified symbol such as BTC/USD or BTC/USDT:USDT, got "
                                      f"{excerpt(repr(explicit), limit=60)}", provider=NAME)
        return value
    parts = [p for p in re.split(r"[-/]", symbol.strip().upper()) if p]
    mapped = "/".join(parts)
    if len(parts) != 2 or not _MARKET.fullmatch(mapped):
        raise ProviderConfigError(f"cannot map {symbol!r} to a ccxt market (BASE-QUOTE → BASE/QUOTE); set the "
                                  f"option market, e.g. BTC/USDT", provider=NAME)
    return mapped


def _max_limit(exchange) -> int | None:
    """The most bars one ``fetch_ohlcv`` returns, as ccxt declares it for the exchange (spot)."""
    features = getattr(exchange, "features", None) or {}
    spot = features.get("spot") if isinstance(features, dict) else None
    ohlcv = spot.get("fetchOHLCV") if isinstance(spot, dict) else None
    value = ohlcv.get("limit") if isinstance(ohlcv, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def limit_of(options: Mapping[str, Any], exchange) -> int:
    declared = _max_limit(exchange)
    if options.get("limit") in (None, ""):
        return declared or DEFAULT_LIMIT
    return page_limit(options, declared or UNDECLARED_MAX_LIMIT, NAME)


def _check_ohlcv(exchange_id: str, exchange) -> None:
    if not exchange.has.get("fetchOHLCV"):
        raise ProviderConfigError(f"exchange {exchange_id} has no OHLCV endpoint in ccxt (fetchOHLCV)", provider=NAME)


def timeframe_of(timeframe: str, exchange_id: str, exchange) -> str:
    """ccxt's name for our timeframe, refused when the exchange does not offer it."""
    theirs = TIMEFRAMES.get(timeframe)
    offered = exchange.timeframes or {}
    if theirs is None or theirs not in offered:
        ours = [t for t, name in TIMEFRAMES.items() if name in offered]
        raise ProviderConfigError(
            f"exchange {exchange_id} has no {timeframe} candles; of our timeframes it offers "
            f"{', '.join(ours) or 'none'} (ccxt: {', '.join(offered) or 'none'})", provider=NAME)
    return theirs


def credentials_of(exchange_id: str) -> dict[str, str]:
    """The exchange's keys from ``CCXT_<EXCHANGE>_API_KEY`` etc. (settings, else the environment)."""
    found = {field_: conf.credential(setting_name(exchange_id, suffix)) for field_, suffix in CREDENTIALS.items()}
    return {field_: value for field_, value in found.items() if value}


# --- where requests go ----------------------------------------------------------------------------


def _map_urls(value: Any, rewrite: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return rewrite(value)
    if isinstance(value, dict):
        return {key: _map_urls(item, rewrite) for key, item in value.items()}
    if isinstance(value, list):
        return [_map_urls(item, rewrite) for item in value]
    return value


def _urls_of(value: Any) -> list[str]:
    found: list[str] = []
    _map_urls(value, lambda url: found.append(url) or url)
    return found


def _origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _own_api(exchange) -> Any:
    """ccxt's API URLs for the exchange, with its ``{hostname}`` filled in."""
    return _map_urls(exchange.urls.get("api"), exchange.implode_hostname)


def _default_endpoint(api: Any) -> str:
    """The origin of ccxt's public API URL (the first one when there is no ``public``)."""
    preferred = api.get("public") if isinstance(api, dict) else None
    urls = _urls_of(preferred) or _urls_of(api)
    if not urls:
        raise ProviderConfigError("ccxt declares no API URL for this exchange", provider=NAME)
    return _origin_of(urls[0])


def endpoint_of(exchange_id: str, options: Mapping[str, Any], exchange, *, sends_keys: bool) -> str | None:
    """The URL that replaces ccxt's API origins, or None to keep ccxt's own URLs.

    From the setting ``CCXT_<EXCHANGE>_API_URL`` (Django settings, else the environment) or the
    ``base_url`` option, under ``http.resolve_base_url``'s rule."""
    name = setting_name(exchange_id, "API_URL")
    configured = conf.credential(name)  # an operator's setting: settings, else the environment
    own = _default_endpoint(_own_api(exchange))
    chosen = resolve_base_url(options, name, configured or own, NAME, sends_keys=sends_keys)
    overridden = configured or options.get("base_url") not in (None, "")
    return chosen if overridden else None


def api_urls(exchange, endpoint: str | None) -> Any:
    """ccxt's API URLs, every origin replaced by ``endpoint`` (its path kept after the endpoint's)."""
    api = _own_api(exchange)
    if endpoint is None:
        return api
    root = endpoint.rstrip("/")

    def rewrite(url: str) -> str:
        parts = urlsplit(url)
        return root + parts.path + (f"?{parts.query}" if parts.query else "")

    return _map_urls(api, rewrite)


def _check_transport(api: Any) -> None:
    for url in _urls_of(api):
        check_keys_transport(parse_base_url(url, NAME, "API URL", allow_userinfo=True), NAME, "API URL")


# --- options (admin/API) --------------------------------------------------------------------------


def validate_options(options: Any, symbol: str = "") -> None:
    """Check an instrument's ``provider_options`` for ccxt (admin/API edits): names and values.

    Nothing here sends a request: the market itself is checked against the exchange's markets by
    the first fetch."""
    options = check_option_names(options, OPTIONS, NAME)
    exchange_id = exchange_id_of(options)
    exchange = _exchange_class(exchange_id)()
    _check_ohlcv(exchange_id, exchange)
    if symbol or options.get("market") not in (None, ""):
        market_of(symbol, options)
    limit_of(options, exchange)
    if options.get("base_url") not in (None, ""):
        endpoint_of(exchange_id, options, exchange, sends_keys=bool(credentials_of(exchange_id)))


# --- one ccxt instance per exchange and configuration -------------------------------------------


@dataclass
class Venue:
    """A ccxt exchange instance shared by the fetches of one process, one request at a time (ccxt
    instances are not thread-safe; its rate limiter spaces the requests of them all)."""

    exchange: Any
    secrets: tuple[str, ...]
    lock: threading.Lock = field(default_factory=threading.Lock)
    markets_loaded_at: float | None = None


_venues: dict[tuple, Venue] = {}
_venues_lock = threading.Lock()
# Every key handed to a ccxt instance: the log filter removes them. Replaced, never mutated, so a
# log record filtered in another thread never sees it change size.
_known_secrets: frozenset[str] = frozenset()


def venue(exchange_id: str, api: Any, credentials: Mapping[str, str], timeout_ms: int, rate_limit: bool) -> Venue:
    """The shared ccxt instance for this exchange and configuration (created on first use)."""
    global _known_secrets
    key = (exchange_id, repr(api), tuple(sorted(credentials.items())), timeout_ms, rate_limit)
    with _venues_lock:
        found = _venues.get(key)
        if found is None:
            exchange = _exchange_class(exchange_id)({"enableRateLimit": rate_limit, "timeout": timeout_ms,
                                                     **credentials})
            exchange.urls["api"] = api
            exchange.session.max_redirects = 0  # never follow a redirect (keys would go along)
            secrets = tuple(sorted({v for v in credentials.values() if v}))
            _known_secrets = _known_secrets | frozenset(secrets)
            found = _venues[key] = Venue(exchange, secrets)
        return found


def reset_venues() -> None:
    """Forget every shared ccxt instance and its markets (tests; a process never needs to)."""
    with _venues_lock:
        for shared in _venues.values():
            shared.exchange.session.close()
        _venues.clear()


class RedactingLogFilter(logging.Filter):
    """ccxt logs request headers at DEBUG and urllib3 the URLs it requests: remove every key."""

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = _known_secrets
        if secrets:
            message = record.getMessage()
            redacted = redact(message, secrets)
            if redacted != message:
                record.msg, record.args = redacted, None
        return True


for _name in ("ccxt.base.exchange", "urllib3.connectionpool"):
    _logger = logging.getLogger(_name)
    if not any(isinstance(f, RedactingLogFilter) for f in _logger.filters):
        _logger.addFilter(RedactingLogFilter())


# --- calls: retries and error mapping -------------------------------------------------------------


def _scrub(text: str, secrets: tuple[str, ...]) -> tuple[str, str]:
    """A ccxt error text with every URL cut to its path (no host, no query string), redacted and
    shortened; and the first URL's path."""
    paths: list[str] = []

    def to_path(match: re.Match) -> str:
        path = urlsplit(match.group(0)).path or "/"
        paths.append(path)
        return path

    return excerpt(_URL.sub(to_path, text), secrets, limit=ERROR_CHARS), (paths[0] if paths else "")


class Calls:
    """ccxt calls with the HTTP providers' retry policy; ccxt errors become ours."""

    backoff = HttpClient.backoff  # the same backoff: exponential, capped, equal jitter

    def __init__(self, shared: Venue, exchange_id: str, config: HttpConfig):
        self.venue = shared
        self.exchange_id = exchange_id
        self.config = config

    @staticmethod
    def jitter() -> float:
        return HttpClient.jitter()

    def error(self, message: str, path: str = "", cls: type[ProviderError] = ProviderError) -> ProviderError:
        return cls(redact(message, self.venue.secrets), provider=NAME, path=path)

    def __call__(self, what: str, call: Callable[[Any], Any]) -> Any:
        library = _library()
        exchange = self.venue.exchange
        attempts = self.config.max_retries + 1
        for attempt in range(attempts):
            retry_after = None
            with self.venue.lock:
                exchange.last_response_headers = exchange.last_request_url = None
                try:
                    return call(exchange)
                except library.NetworkError as exc:
                    text, path = self.scrub(exc)
                    problem = f"{exc.__class__.__name__}: {text}"
                    if isinstance(exc, (library.RateLimitExceeded, library.DDoSProtection)):
                        headers = exchange.last_response_headers or {}
                        retry_after = parse_retry_after(headers.get("Retry-After"))
                except library.BaseError as exc:
                    raise self.exchange_error(exc, what) from None
                except Exception as exc:  # ccxt choking on a reply it did not expect
                    text, path = self.scrub(exc)
                    raise self.error(f"{self.exchange_id} {what}: unusable reply ({exc.__class__.__name__}: "
                                     f"{text})", path) from None
            if retry_after is not None and retry_after > self.config.retry_after_max:
                raise self.error(f"{self.exchange_id} {what}: {problem}: the server asked to wait {retry_after:g}s "
                                 f"before retrying (Retry-After), more than PROVIDER_HTTP_RETRY_AFTER_MAX="
                                 f"{self.config.retry_after_max:g}s; giving up", path)
            if attempt + 1 >= attempts:
                raise self.error(f"{self.exchange_id} {what}: {problem}; giving up after {attempts} attempt(s)", path)
            delay = retry_after if retry_after is not None else self.backoff(attempt)
            logger.warning("%s: %s %s failed: %s; retry %d/%d in %.2fs", NAME, self.exchange_id, what, problem,
                           attempt + 1, self.config.max_retries, delay)
            HttpClient.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def scrub(self, exc: Exception) -> tuple[str, str]:
        """The error's text (URLs cut to their path, redacted, shortened) and the path it concerns."""
        text, path = _scrub(str(exc), self.venue.secrets)
        requested = self.venue.exchange.last_request_url
        if requested and not path:
            path = urlsplit(str(requested)).path
        return text, path

    def exchange_error(self, exc: Exception, what: str) -> ProviderError:
        library = _library()
        text, path = self.scrub(exc)
        kind = f"{exc.__class__.__name__}: {text}"
        if isinstance(exc, library.AuthenticationError):
            names = " / ".join(setting_name(self.exchange_id, s) for s in CREDENTIALS.values())
            return self.error(f"{self.exchange_id} refused the credentials ({kind}); check {names}", path,
                              ProviderConfigError)
        if isinstance(exc, (library.BadSymbol, library.NotSupported)):
            return self.error(f"{self.exchange_id} {what}: {kind}", path, ProviderConfigError)
        if isinstance(exc, library.ExchangeError):
            return self.error(f"{self.exchange_id} {what}: rejected by the exchange ({kind}); not retried", path)
        return self.error(f"{self.exchange_id} {what}: unusable reply ({kind})", path)


# --- parsing --------------------------------------------------------------------------------------


class UnusableCandles(ValueError):
    """fetch_ohlcv returned something that is not a list of candles (the caller names the request)."""


def _number(value: Any, row: int, name: str) -> float:
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise UnusableCandles(f"{name} of candle {row} is {type(value).__name__}, expected a number")
    try:
        return float(value)
    except ValueError:
        return math.nan  # validation rejects this bar (non_finite); the rest of the page is kept
    except OverflowError:
        return math.inf


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
        template = _exchange_class(exchange_id)()
        _check_ohlcv(exchange_id, template)
        timeframe = timeframe_of(request.timeframe, exchange_id, template)
        market = market_of(request.symbol, options)
        limit = limit_of(options, template)
        credentials = credentials_of(exchange_id)
        endpoint = endpoint_of(exchange_id, options, template, sends_keys=bool(credentials))
        api = api_urls(template, endpoint)
        if credentials:
            _check_transport(api)
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
        library = _library()
        try:
            with calls.venue.lock:
                calls.venue.exchange.market(market)
        except library.BadSymbol:
            raise calls.error(f"{calls.exchange_id} does not list the market {market} (instrument {symbol}); set the "
                              f"option market to a ccxt symbol the exchange lists, e.g. BTC/USDT", "",
                              ProviderConfigError) from None
