"""Alpaca market data v2: historical stock bars (needs an API key).

Endpoint: ``GET {base_url}/v2/stocks/{symbol}/bars?timeframe=1Hour&start=…&end=…&limit=10000
&adjustment=raw&feed=iex&sort=asc[&page_token=…]`` with the headers ``APCA-API-KEY-ID`` and
``APCA-API-SECRET-KEY``. Reply: ``{"bars": [{"t", "o", "h", "l", "c", "v", "n", "vw"}, …],
"symbol": "AAPL", "next_page_token": "…" | null}`` (``bars`` may be null when there is nothing).

Why Alpaca rather than Polygon: its page token is an opaque string passed back as a parameter
(easy to check for repeats), whereas Polygon's ``next_url`` is a whole server-chosen URL we would
have to vet before sending our key to it; and its free IEX feed works without a paid plan.

Keys: ``ALPACA_API_KEY_ID`` and ``ALPACA_API_SECRET_KEY``, read from Django settings when set
there, else from the environment. They are never logged nor put into an error message: every
error text, echoed bodies and values quoted from a reply included, goes through ``base.redact``.
Missing keys fail the fetch with a ``ProviderConfigError`` before any request is sent. Keys are
deliberately not read from ``provider_options``: those are stored in the database and shown in the
admin. They are sent only over https, or to a loopback host (see ``options``), and only to the
endpoint of ``ALPACA_DATA_BASE_URL`` or a host the operator listed in ``PROVIDER_ALLOWED_HOSTS``.

Time stamps: intraday bars are stamped with their open time in UTC, as we store them. Daily bars
are stamped at midnight New York time (04:00 or 05:00 UTC); each is re-stamped with its session
date at 00:00 UTC, our convention. A daily bar stamped at another New York time is left as it is,
so validation rejects it as misaligned unless it already sits at 00:00 UTC.

Range: ``start`` is the range start, ``end`` the range end minus one second (Alpaca's ``end`` is
inclusive, ours exclusive). For daily bars [D1 00:00, D2 00:00) asks for the sessions D1..D2-1,
whose bars are stamped D 04:00/05:00 UTC.

Extended hours: Alpaca's intraday bars include pre- and post-market trading; our exchange
calendars expect regular-session bars only. By default (``extended_hours`` false) an aligned
intraday bar the instrument's calendar does not expect (e.g. a 1h bar at 08:00 UTC for XNYS) is
dropped here, so it is not stored and then reported as off-calendar. Note that the first bar of a
session (the 13:00 or 14:00 UTC hour bar for XNYS) still aggregates the pre-market minutes it
contains: Alpaca's bars cannot be split. Misaligned bars are kept, for validation to reject.

Rate limits: the plan's requests per minute (200 on the free plan), paced client-side by
``ALPACA_MAX_REQUESTS_PER_SECOND`` (default 3). A 429 is retried after its ``Retry-After`` or, as
Alpaca sends it, after its ``X-RateLimit-Reset`` (Unix seconds when the window reopens); without
either, after exponential backoff.

Paging: follow ``next_page_token`` until it is null. A token seen before, or a page whose last bar
is not after the previous page's, fails with "pagination cursor did not advance". An empty page
*with* a next token is suspicious (Alpaca documents a null token once there is no more data) but
harmless when the token is new, so up to ``MAX_EMPTY_PAGES_IN_A_ROW`` (3) in a row are followed;
more fail the fetch rather than walk an endless chain of empty pages.

Options (``Instrument.provider_options``, overriding settings):
    base_url         default setting ``ALPACA_DATA_BASE_URL`` (https://data.alpaca.markets); another
                     host only when listed in ``PROVIDER_ALLOWED_HOSTS``, https unless loopback
    provider_symbol  the Alpaca symbol (default: ours, upper-cased)
    feed             default setting ``ALPACA_FEED`` ("iex"; "sip" needs a paid plan)
    adjustment       default setting ``ALPACA_ADJUSTMENT`` ("raw": as traded; split/dividend/all
                     rewrite history whenever a corporate action happens)
    limit            bars per request, 1..10000 (default 10000)
    extended_hours   keep intraday bars outside the calendar's sessions (default false)

Parsing: a reply that is not an object with a ``bars`` array (or null), a bar that is not an
object or misses one of t/o/h/l/c/v, an unparseable ``t``, a non-scalar value, or a non-string
token fails the fetch. A price or volume that is null or a non-numeric string becomes NaN:
validation rejects that bar alone.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np
import pandas as pd

from integrity.conf import conf

from ..calendars import CRYPTO_CALENDAR, is_expected_bar
from ..timeframes import timeframe_ns
from .base import (
    FetchRequest,
    ProviderConfigError,
    ProviderError,
    excerpt,
    make_bar_frame,
    reading_reply,
    redact,
    reply_number,
)
from .http import HttpClient
from .http_policy import HttpConfig
from .options import check_option_names, page_limit, resolve_base_url

NAME = "alpaca"
DEFAULT_BASE_URL = conf.default("ALPACA_DATA_BASE_URL")
MAX_LIMIT = 10_000
MAX_EMPTY_PAGES_IN_A_ROW = 3
TIMEFRAMES = {"1m": "1Min", "5m": "5Min", "15m": "15Min", "1h": "1Hour", "4h": "4Hour", "1d": "1Day"}
KEY_ID = "ALPACA_API_KEY_ID"
SECRET_KEY = "ALPACA_API_SECRET_KEY"
SESSION_TZ = "America/New_York"
_FIELDS = ("o", "h", "l", "c", "v")


def _rfc3339(value) -> str:
    stamp = pd.Timestamp(value)
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return stamp.strftime("%Y-%m-%dT%H:%M:%SZ")


def _number(value: Any, index: int, field: str, path: str) -> float:
    """A bar number (``base.reply_number``): null and junk strings become NaN."""
    try:
        return reply_number(value)
    except TypeError:
        raise ProviderError(f"unexpected bar shape: '{field}' of bar {index} is {type(value).__name__}, "
                            f"expected a number", provider=NAME, path=path) from None


def parse_bars_page(payload: Any, path: str) -> tuple[pd.DataFrame, str | None]:
    """One reply to (bars with Alpaca's raw UTC stamps, next page token), or ``ProviderError``."""
    if not isinstance(payload, dict):
        raise ProviderError(f"unexpected reply shape: expected a JSON object, got {type(payload).__name__}",
                            provider=NAME, path=path, body_excerpt=excerpt(payload))
    if "bars" not in payload:
        raise ProviderError("unexpected reply shape: no 'bars' field", provider=NAME, path=path,
                            body_excerpt=excerpt(payload))
    bars = payload["bars"] if payload["bars"] is not None else []
    token = payload.get("next_page_token")
    if not isinstance(bars, list):
        raise ProviderError(f"unexpected reply shape: 'bars' is {type(bars).__name__}, expected an array",
                            provider=NAME, path=path)
    if token is not None and not isinstance(token, str):
        raise ProviderError(f"unexpected reply shape: 'next_page_token' is {type(token).__name__}",
                            provider=NAME, path=path)
    n = len(bars)
    stamps: list[str] = []
    values = np.empty((n, 5), dtype="float64")
    for i, bar in enumerate(bars):
        if not isinstance(bar, dict):
            raise ProviderError(f"unexpected bar shape: bar {i} is {type(bar).__name__}, expected an object",
                                provider=NAME, path=path, body_excerpt=excerpt(bar))
        missing = [f for f in ("t", *_FIELDS) if f not in bar]
        if missing:
            raise ProviderError(f"unexpected bar shape: bar {i} is missing {', '.join(missing)}",
                                provider=NAME, path=path, body_excerpt=excerpt(bar))
        if not isinstance(bar["t"], str):
            raise ProviderError(f"unexpected bar shape: 't' of bar {i} is {excerpt(repr(bar['t']), limit=60)}, "
                                f"expected an RFC 3339 time", provider=NAME, path=path)
        stamps.append(bar["t"])
        for j, field in enumerate(_FIELDS):
            values[i, j] = _number(bar[field], i, field, path)
    ts = pd.to_datetime(pd.Series(stamps, dtype="object"), utc=True, format="ISO8601", errors="coerce")
    bad = ts.isna().to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ProviderError(f"unparseable bar time {excerpt(repr(stamps[i]), limit=60)} in bar {i}", provider=NAME,
                            path=path)
    frame = make_bar_frame(ts, *values.T) if n else make_bar_frame([], [], [], [], [], [])
    return frame, token or None


def to_session_dates(ts: pd.Series) -> pd.Series:
    """Daily bars stamped at midnight New York → their session date at 00:00 UTC."""
    local = ts.dt.tz_convert(SESSION_TZ)
    midnight = (local == local.dt.normalize()).to_numpy()
    dates = local.dt.tz_localize(None).dt.normalize().dt.tz_localize("UTC").astype("datetime64[ns, UTC]")
    return ts.where(~midnight, dates)


RATE_LIMIT_RESET_HEADER = "X-RateLimit-Reset"


def rate_limit_wait(response: httpx.Response, now: float | None = None) -> float | None:
    """Seconds until Alpaca's rate-limit window reopens, from a 429's ``X-RateLimit-Reset``.

    Alpaca answers a 429 with ``X-RateLimit-Reset`` (Unix seconds when the minute window resets)
    rather than ``Retry-After``; waiting for it beats blind backoff that would only earn more 429s.
    None (→ backoff) when absent, unparseable or already past.
    """
    if response.status_code != 429:
        return None
    raw = response.headers.get(RATE_LIMIT_RESET_HEADER)
    try:
        reset = float(raw) if raw is not None else math.nan
    except ValueError:
        return None
    wait = reset - (time.time() if now is None else now)
    if not math.isfinite(wait) or wait <= 0:
        return None
    return wait


def explain_status(response: httpx.Response, path: str) -> str | None:
    status = response.status_code
    if status in (401, 403):
        return (f"Alpaca refused the credentials (HTTP {status}): check {KEY_ID} / {SECRET_KEY} and that "
                f"the plan includes the requested feed")
    if status in (400, 422):
        message = None
        try:
            body = response.json()
            message = body.get("message") if isinstance(body, dict) else None
        except ValueError:
            pass
        return f"Alpaca rejected the request (HTTP {status})" + (f": {excerpt(str(message))}" if message else "")
    if status == 404:
        return "Alpaca does not know this endpoint or symbol (HTTP 404)"
    return None


OPTIONS = ("base_url", "provider_symbol", "limit", "feed", "adjustment", "extended_hours")
ADJUSTMENTS = ("raw", "split", "dividend", "all")


def _check_choices(options: dict[str, Any]) -> None:
    adjustment = options.get("adjustment")
    if adjustment not in (None, "") and adjustment not in ADJUSTMENTS:
        raise ProviderConfigError(f"adjustment must be one of {', '.join(ADJUSTMENTS)}, got {adjustment!r}",
                                  provider=NAME)
    feed = options.get("feed")
    if feed not in (None, "") and not (isinstance(feed, str) and feed.strip().isidentifier()):
        raise ProviderConfigError(f"feed must be a feed name such as iex or sip, got {feed!r}", provider=NAME)
    extended = options.get("extended_hours")
    if extended is not None and not isinstance(extended, bool) and not (
            isinstance(extended, str) and extended.strip().lower() in _BOOL_WORDS):
        raise ProviderConfigError(f"extended_hours must be true or false, got {extended!r}", provider=NAME)


_BOOL_WORDS = ("1", "0", "true", "false", "yes", "no", "on", "off", "")


def validate_options(options: Any, symbol: str = "") -> None:
    """Check an instrument's ``provider_options`` for Alpaca (admin/API edits): names and values.

    API keys are not options (options are stored in the database and shown in the admin)."""
    options = check_option_names(options, OPTIONS, NAME)
    if options.get("base_url"):
        resolve_base_url(options, "ALPACA_DATA_BASE_URL", DEFAULT_BASE_URL, NAME, sends_keys=True)
    provider_symbol = options.get("provider_symbol")
    if provider_symbol is not None and not (isinstance(provider_symbol, str) and provider_symbol.strip()):
        raise ProviderConfigError(f"provider_symbol must be a non-empty string, got {provider_symbol!r}",
                                  provider=NAME)
    page_limit(options, MAX_LIMIT, NAME)
    _check_choices(options)


class AlpacaProvider:
    name = NAME
    asset_class = "equity"  # the asset class of an instrument registered for this provider
    bar_alignment = "clock"  # Alpaca's intraday bars sit on the clock grid (a 1h bar at 14:00 UTC)

    def __init__(self, **defaults: Any):
        self.defaults = defaults

    def fetch(self, request: FetchRequest) -> Iterator[pd.DataFrame]:
        # Configuration, the keys included, is checked here, before any request is sent.
        options = {**self.defaults, **(request.options or {})}
        timeframe = TIMEFRAMES.get(request.timeframe)
        if timeframe is None:
            raise ProviderConfigError(f"timeframe {request.timeframe!r} has no Alpaca equivalent; expected "
                                      f"one of {', '.join(TIMEFRAMES)}", provider=NAME)
        key_id, secret = conf.credential(KEY_ID), conf.credential(SECRET_KEY)
        missing = [name for name, value in ((KEY_ID, key_id), (SECRET_KEY, secret)) if not value]
        if missing:
            raise ProviderConfigError(f"missing Alpaca API credentials: set {' and '.join(missing)} in the "
                                      f"environment", provider=NAME)
        symbol = str(options.get("provider_symbol") or request.symbol).strip().upper()
        if not symbol:
            raise ProviderConfigError("empty symbol", provider=NAME)
        limit = page_limit(options, MAX_LIMIT, NAME)
        _check_choices(options)
        params = {
            "timeframe": timeframe,
            "start": _rfc3339(request.start),
            "end": _rfc3339(pd.Timestamp(request.end) - timedelta(seconds=1)),
            "limit": limit,
            "adjustment": str(options.get("adjustment") or conf.ALPACA_ADJUSTMENT),
            "feed": str(options.get("feed") or conf.ALPACA_FEED),
            "sort": "asc",
        }
        base_url = resolve_base_url(options, "ALPACA_DATA_BASE_URL", DEFAULT_BASE_URL, NAME, sends_keys=True)
        config = HttpConfig.from_settings(NAME, "ALPACA_MAX_REQUESTS_PER_SECOND")
        filter_sessions = (not _truthy(options.get("extended_hours")) and request.timeframe != "1d"
                           and request.calendar != CRYPTO_CALENDAR)
        path = f"/v2/stocks/{quote(symbol, safe='')}/bars"

        def client() -> HttpClient:
            return HttpClient(
                NAME, base_url, config,
                headers={"APCA-API-KEY-ID": key_id, "APCA-API-SECRET-KEY": secret},
                secrets=(key_id, secret), explain_status=explain_status, retry_after_of=rate_limit_wait,
            )

        return self._pages(request, client, path, params, filter_sessions)

    def _pages(self, request: FetchRequest, make_client, path: str, params: dict[str, Any],
               filter_sessions: bool) -> Iterator[pd.DataFrame]:
        end = pd.Timestamp(request.end)
        end = end.tz_localize("UTC") if end.tzinfo is None else end.tz_convert("UTC")
        token: str | None = None
        seen: set[str] = set()
        previous_last: pd.Timestamp | None = None
        empty_in_a_row = 0
        with make_client() as client:
            while True:
                query = dict(params, page_token=token) if token else params
                payload, response = client.get_json(path, query)
                url_path = response.url.path
                with reading_reply(NAME, url_path):
                    frame, next_token = parse_bars_page(payload, url_path)
                if frame.empty:
                    empty_in_a_row += 1
                    if next_token and empty_in_a_row > MAX_EMPTY_PAGES_IN_A_ROW:
                        raise ProviderError(
                            f"{empty_in_a_row} empty pages in a row, each with a next_page_token: giving up "
                            f"rather than follow an endless chain", provider=NAME, path=url_path,
                            status=response.status_code)
                else:
                    empty_in_a_row = 0
                    if not frame["ts"].is_monotonic_increasing:
                        frame = frame.sort_values("ts", kind="stable").reset_index(drop=True)
                    last = frame["ts"].iloc[-1]
                    if previous_last is not None and last <= previous_last:
                        raise ProviderError(
                            f"pagination cursor did not advance: the page after token {_short(token)} ends at "
                            f"{last.isoformat()}, not after the previous page's {previous_last.isoformat()}",
                            provider=NAME, path=url_path, status=response.status_code)
                    previous_last = last
                    yield self._stamp(frame, request, filter_sessions)
                if not next_token:
                    return
                if next_token in seen or next_token == token:
                    raise ProviderError(
                        f"pagination cursor did not advance: next_page_token {_short(next_token)} was already "
                        f"followed", provider=NAME, path=url_path, status=response.status_code)
                if previous_last is not None and previous_last >= end:
                    return  # past the range: nothing more we would keep
                seen.add(next_token)
                token = next_token

    def _stamp(self, frame: pd.DataFrame, request: FetchRequest, filter_sessions: bool) -> pd.DataFrame:
        if request.timeframe == "1d":
            frame = frame.assign(ts=to_session_dates(frame["ts"]))
            if not frame["ts"].is_monotonic_increasing:
                frame = frame.sort_values("ts", kind="stable").reset_index(drop=True)
            return frame
        if filter_sessions:
            step = timeframe_ns(request.timeframe)
            aligned = (frame["ts"].array.asi8 % step) == 0
            expected = is_expected_bar(request.calendar, request.timeframe, frame["ts"])
            frame = frame[expected | ~aligned].reset_index(drop=True)
        return frame


def _short(token: str | None) -> str:
    if token is None:
        return "(first page)"
    token = redact(token)  # before shortening: a cut secret would no longer be recognised
    return repr(token if len(token) <= 24 else token[:21] + "...")


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)
