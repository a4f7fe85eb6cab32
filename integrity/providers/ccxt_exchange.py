"""The ccxt exchange behind the ``ccxt`` provider: which exchange, market, timeframe and page size
an instrument's options name, where its requests go, its keys, and the one shared ccxt instance per
exchange and configuration. The library (a slow import, 100+ exchange classes) is imported on
first use only (``ccxt_library``).

Where requests go: ccxt's own URLs for the exchange, unless the operator sets
``CCXT_<EXCHANGE>_API_URL`` (Django setting, else the environment; e.g. ``CCXT_KRAKEN_API_URL``) or
an instrument's ``base_url`` passes the rule of ``options.resolve_base_url`` (shared with the HTTP
providers). Such a URL replaces the scheme, host and port of *every* API URL ccxt knows for the
exchange (markets, candles, private), keeping each one's path after the URL's own path:
``http://proxy:8080`` turns Kraken's ``https://api.kraken.com/0/public/OHLC`` into
``http://proxy:8080/0/public/OHLC``. Redirects are not followed.

Keys (optional; public market data needs none): ``CCXT_<EXCHANGE>_API_KEY``, ``_SECRET``,
``_PASSWORD`` (a passphrase), ``_UID``, read from Django settings, else the environment — never from
options (stored in the database, shown in the admin). With keys, every API URL must be https or a
loopback host. Key values are replaced by ``***`` in every error text (``base.redact``) and in what
ccxt and urllib3 log (a filter on their loggers).

Shared instances (``venue``): one ccxt instance per exchange and configuration per process, shared
by every fetch (``backfill --concurrency`` threads included), one request at a time, so that ccxt's
own rate limiter (``enableRateLimit``) spaces the requests of them all.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from integrity.conf import conf

from .base import ProviderConfigError, excerpt, redact
from .options import check_keys_transport, page_limit, parse_base_url, resolve_base_url

NAME = "ccxt"
# Our timeframes and ccxt's unified names for them (an exchange offers a subset: ``timeframes``).
TIMEFRAMES = {"1m": "1m", "5m": "5m", "15m": "15m", "1h": "1h", "4h": "4h", "1d": "1d"}
DEFAULT_LIMIT = 100  # bars per request when ccxt declares no maximum for the exchange
UNDECLARED_MAX_LIMIT = 1000
CREDENTIALS = {"apiKey": "API_KEY", "secret": "SECRET", "password": "PASSWORD", "uid": "UID"}
DEFAULT_EXCHANGE_SETTING = "CCXT_DEFAULT_EXCHANGE"  # the exchange of an instrument without the option
_EXCHANGE_ID = re.compile(r"[a-z][a-z0-9_]{1,40}")
_MARKET = re.compile(r"[A-Za-z0-9._-]{1,30}/[A-Za-z0-9._-]{1,30}(:[A-Za-z0-9._-]{1,30})?(-[A-Za-z0-9._-]{1,30})*")


def ccxt_library():
    import ccxt  # the library, on first use

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
    if not isinstance(value, str) or not _EXCHANGE_ID.fullmatch(value) or value not in ccxt_library().exchanges:
        raise ProviderConfigError(f"exchange {excerpt(repr(raw), limit=60)} is not a ccxt exchange id; expected one "
                                  f"of ccxt.exchanges, e.g. coinbaseexchange, kraken, binance", provider=NAME)
    return value


def exchange_class(exchange_id: str):
    return getattr(ccxt_library(), exchange_id)


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


def check_ohlcv(exchange_id: str, exchange) -> None:
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


def check_transport(api: Any) -> None:
    for url in _urls_of(api):
        check_keys_transport(parse_base_url(url, NAME, "API URL", allow_userinfo=True), NAME, "API URL")


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
            exchange = exchange_class(exchange_id)({"enableRateLimit": rate_limit, "timeout": timeout_ms,
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

