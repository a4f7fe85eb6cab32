"""Every setting the app reads: its name, default, type and meaning, declared once.

Usage (the API is stable; other modules rely on it)::

    from integrity.conf import conf

    conf.BACKFILL_BATCH_SIZE        # the value now: django.conf.settings.X (read at each access, so
                                    # tests' ``settings`` fixture and deployments see their value),
                                    # else the declared default; coerced to the declared type
    conf.raw("X")                   # the same, uncoerced (for callers that validate with their own error)
    conf.default("X")               # the declared default (settings.py reads the environment with it)
    conf.credential("X")            # a secret: the setting, else the environment variable of that name
    conf.lookup("X", default)       # a setting whose name is built at run time (CCXT_<EXCHANGE>_API_URL)
    SETTINGS["X"].doc               # the one-line meaning (docs are generated / checked from these)

A setting that is absent from ``django.conf.settings``, ``None`` or a blank string takes its default. A value of the wrong type is a ``SettingError`` naming the setting and
the rule. ``marketdata_site/settings.py`` reads each one from the environment variable of the same
name (12-factor) with ``conf.default(name)`` as the fallback, so each default is written here only.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

TIMEFRAMES = ("1m", "5m", "15m", "1h", "4h", "1d")  # the keys of the per-timeframe settings


class SettingError(ImproperlyConfigured, ValueError):
    """A setting holds a value of the wrong type; the message names the setting and the rule."""


def _int(name: str, value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise SettingError(f"setting {name} must be an integer, got {value!r}") from None


def _float(name: str, value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise SettingError(f"setting {name} must be a number, got {value!r}") from None


def _bool(name: str, value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() not in ("0", "false", "no", "off")
    return bool(value)


def _str(name: str, value: Any) -> str:
    return str(value).strip()


def _list(name: str, value: Any) -> list[str]:
    """A list of strings; a string is split at commas (the environment's form)."""
    items = value.split(",") if isinstance(value, str) else value
    try:
        return [str(item).strip() for item in items if str(item).strip()]
    except TypeError:
        raise SettingError(f"setting {name} must be a list of strings, got {value!r}") from None


def _as_is(name: str, value: Any) -> Any:
    return value


@dataclass(frozen=True)
class Setting:
    name: str
    default: Any
    coerce: Callable[[str, Any], Any]
    doc: str
    group: str

    def value(self, raw: Any) -> Any:
        return self.coerce(self.name, raw)


class _PerTimeframe:
    """A mapping timeframe -> integer; a timeframe the setting leaves out keeps its default."""

    def __init__(self, default: Mapping[str, int]):
        self.default = dict(default)

    def __call__(self, name: str, value: Any) -> dict[str, int]:
        if not isinstance(value, Mapping):
            raise SettingError(f"setting {name} must map timeframes ({', '.join(TIMEFRAMES)}) to integers, "
                               f"got {value!r}")
        return {**self.default, **{tf: _int(f"{name}[{tf!r}]", v) for tf, v in value.items()}}


SETTINGS: dict[str, Setting] = {}


def _declare(group: str, name: str, default: Any, coerce: Callable[[str, Any], Any], doc: str) -> None:
    SETTINGS[name] = Setting(name, default, coerce, doc, group)


def _per_timeframe(group: str, name: str, default: Mapping[str, int], doc: str) -> None:
    _declare(group, name, dict(default), _PerTimeframe(default), doc)


# --- backfill -------------------------------------------------------------------------------------
_declare("backfill", "BACKFILL_BATCH_SIZE", 10_000, _int, "Bars written per database batch by a backfill.")
_declare("backfill", "BACKFILL_HEARTBEAT_TIMEOUT_SECONDS", 300, _int,
         "An in_progress execution whose heartbeat is older than this many seconds is considered dead and reaped.")
_declare("backfill", "BACKFILL_PENDING_TIMEOUT_SECONDS", 3600, _int,
         "A pending execution no worker picked up within this many seconds is failed by the reaper.")
_declare("backfill", "BACKFILL_OVERLAP_BARS", 3, _int,
         "Incremental runs restart this many bars before the last stored bar, to pick up revisions.")
_per_timeframe("backfill", "BACKFILL_LOOKBACK_DAYS",
               {"1m": 7, "5m": 30, "15m": 60, "1h": 180, "4h": 365, "1d": 3650},
               "How far back (days) a series with no stored bars starts, per timeframe "
               "(environment: BACKFILL_LOOKBACK_DAYS_1M … _1D).")
_per_timeframe("backfill", "BACKFILL_MAX_BARS", dict.fromkeys(TIMEFRAMES, 5_000_000),
               "The most bars one explicit backfill request may ask for, per timeframe; a larger range is "
               "refused naming the setting (environment: BACKFILL_MAX_BARS for all, BACKFILL_MAX_BARS_1M … _1D).")
_declare("backfill", "BACKFILL_FINISH_RETRIES", 5, _int,
         "Retries of the writes that record how a run ended (survives a database outage).")
_declare("backfill", "BACKFILL_FINISH_BACKOFF", 0.5, _float,
         "Seconds before the first of those retries, doubled each time (at most 30 s between tries).")
_declare("backfill", "FAILURE_ALERT_THRESHOLD", 3, _int,
         "Consecutive failures of a symbol at which an alert is raised (once, re-armed after a success).")

# --- data quality ---------------------------------------------------------------------------------
_declare("quality", "STALE_THRESHOLD_HOURS", 24.0, _float,
         "The stale detector's default threshold (hours behind the calendar's newest complete bar).")
_declare("quality", "OUTLIER_MOVE_THRESHOLD", 0.20, _float,
         "The outlier detector's default relative move (0.20 = 20 %).")
_declare("quality", "QUALITY_THRESHOLDS", {}, _as_is,
         'Detector threshold overrides: {"default": {...}, "equity"|"crypto"|"forex": {...}} '
         "(keys of integrity.quality.thresholds.DEFAULT_THRESHOLDS); instrument overrides win.")
_declare("quality", "DETECTION_OVERLAP_BARS", 50, _int,
         "An incremental detection pass re-reads this many bars before the changed ones (and before "
         "each unresolved anomaly).")
_declare("quality", "DETECTION_WATERMARK_SLACK", 50_000, _int,
         "Ids an unchanged series' detection watermark may lag the scan's before it is moved up to it "
         "(bounds the rows the change-detection statement reads).")
_declare("quality", "DETECTION_PARALLEL_WORKERS", min(4, os.cpu_count() or 1), _int,
         "Connections a big detection sweep (PostgreSQL, outside a transaction) splits its window pass over.")
_declare("quality", "DETECTION_PARALLEL_MIN_ROWS", 500_000, _int,
         "Passes over fewer rows than this use one connection.")

# --- providers ------------------------------------------------------------------------------------
_declare("providers", "PROVIDER_HTTP_CONNECT_TIMEOUT", 5.0, _float, "HTTP providers: connect timeout (s).")
_declare("providers", "PROVIDER_HTTP_READ_TIMEOUT", 30.0, _float, "HTTP providers: read timeout (s).")
_declare("providers", "PROVIDER_HTTP_MAX_RETRIES", 4, _int,
         "HTTP providers: retries of a request on a network error, 429 or 5xx.")
_declare("providers", "PROVIDER_HTTP_BACKOFF_BASE", 0.5, _float,
         "HTTP providers: seconds before the first retry, doubled each time (with jitter).")
_declare("providers", "PROVIDER_HTTP_BACKOFF_MAX", 30.0, _float, "HTTP providers: the longest backoff (s).")
_declare("providers", "PROVIDER_HTTP_RETRY_AFTER_MAX", 60.0, _float,
         "HTTP providers: the longest Retry-After honoured (s); a longer one fails the request.")
_declare("providers", "PROVIDER_ALLOWED_HOSTS", [], _list,
         "Hosts (optionally host:port) an instrument's base_url option may point at besides the host of the "
         "provider's own *_BASE_URL setting; empty: endpoints come from the settings only.")
_declare("providers", "CSV_DATA_DIRS", [], _list,
         "Folders whose CSV files an instrument edited through the API or the admin may name; the command "
         "line may load any file.")
_declare("providers", "BINANCE_BASE_URL", "https://api.binance.com", _str, "Binance REST endpoint.")
_declare("providers", "BINANCE_MAX_REQUESTS_PER_SECOND", 10.0, _float,
         "Binance: client-side request rate limit.")
_declare("providers", "BINANCE_WEIGHT_LIMIT", 6000, _int, "Binance: request weight allowed per minute.")
_declare("providers", "BINANCE_WEIGHT_THRESHOLD", 0.8, _float,
         "Binance: share of the weight limit at which requests wait for the next minute.")
_declare("providers", "ALPACA_DATA_BASE_URL", "https://data.alpaca.markets", _str, "Alpaca market-data endpoint.")
_declare("providers", "ALPACA_API_KEY_ID", "", _str, "Alpaca key id (secret; never logged).")
_declare("providers", "ALPACA_API_SECRET_KEY", "", _str, "Alpaca secret key (secret; never logged).")
_declare("providers", "ALPACA_MAX_REQUESTS_PER_SECOND", 3.0, _float, "Alpaca: client-side request rate limit.")
_declare("providers", "ALPACA_FEED", "iex", _str, "Alpaca: the default feed (iex, sip, …) unless an option names one.")
_declare("providers", "ALPACA_ADJUSTMENT", "raw", _str,
         "Alpaca: the default corporate-action adjustment (raw, split, …) unless an option names one.")
_declare("providers", "CCXT_DEFAULT_EXCHANGE", "", _str,
         "ccxt: the exchange id of an instrument without the exchange option.")
_declare("providers", "CCXT_MARKETS_TTL_SECONDS", 3600.0, _float,
         "ccxt: an exchange's market list is reloaded after this many seconds.")
_declare("providers", "CCXT_ENABLE_RATE_LIMIT", True, _bool,
         "ccxt: its own rate limiter; off only for tests or a private gateway. (Per exchange, not declared "
         "here: CCXT_<EXCHANGE>_API_URL and the keys CCXT_<EXCHANGE>_API_KEY/_SECRET/_PASSWORD/_UID.)")

# --- health, alerts, schedules, metrics -----------------------------------------------------------
_declare("health", "HEALTH_STALE_HOURS", 6.0, _float,
         "A series is stale when its last bar is more than this many hours behind the newest bar its "
         "calendar expects to be complete.")
_declare("health", "ALERT_EMAIL_RECIPIENTS", [], _list,
         "Email alert channel: on when set (comma list); sent via Django's mail backend (EMAIL_*).")
_declare("health", "ALERT_WEBHOOK_URL", "", _str,
         "Webhook alert channel: on when set; JSON POST with a Slack-compatible text.")
_declare("health", "ALERT_WEBHOOK_TIMEOUT", 5.0, _float, "Webhook: timeout (s).")
_declare("health", "ALERT_WEBHOOK_RETRIES", 2, _int, "Webhook: extra attempts on connection errors, 429 or 5xx.")
_declare("health", "ALERT_WEBHOOK_BACKOFF", 0.5, _float, "Webhook: seconds before a retry, doubled each time.")
_declare("health", "ALERT_RECOVERY_NOTICES", False, _bool,
         "Send a notice when a symbol that had alerted succeeds again.")
_declare("health", "SCHEDULE_ENRICHMENT_CRON", "30 1 * * *", _str,
         "UTC cron of the enrichment task (series statistics), written by setup_schedules.")
_declare("health", "SCHEDULE_BACKFILL_CRON", "0 2 * * *", _str,
         "UTC cron of the incremental backfill of every active series, written by setup_schedules.")
_declare("health", "SCHEDULE_HEALTH_CRON", "0 0,6,12,18 * * *", _str,
         "UTC cron of the health job (staleness, failures, anomalies, alerts), written by setup_schedules.")
_declare("health", "WORKER_QUEUE_WAIT_WARNING_SECONDS", 900, _int,
         "With a django-q2 cluster alive, a queued task waiting longer than this many seconds makes the health "
         "job warn (the workers are busy or stuck); with none alive, any waiting work does.")
_declare("health", "METRICS_TOKEN", "", _str, "/metrics: bearer token required when set; unset: loopback clients only.")

# --- API ------------------------------------------------------------------------------------------
_declare("api", "API_THROTTLE_ANON", "60/min", _str,
         "Requests without credentials per client address (N/s, N/min, N/hour, N/day, or off).")
_declare("api", "API_THROTTLE_FAILED_AUTH", "10/min", _str,
         "Failed authentications per client address before it is blocked for the rest of the window.")
_declare("api", "API_NUM_PROXIES", 0, _int,
         "Proxies in front of the app that append the client address to X-Forwarded-For; 0: REMOTE_ADDR.")


class Conf:
    """Attribute access to the declared settings, read from ``django.conf.settings`` at each access."""

    def raw(self, name: str) -> Any:
        setting = SETTINGS[name]
        value = getattr(settings, name, None)
        if value is None or (isinstance(value, str) and not value.strip() and setting.coerce is not _as_is):
            return setting.default
        return value

    def default(self, name: str) -> Any:
        default = SETTINGS[name].default
        return dict(default) if isinstance(default, dict) else list(default) if isinstance(default, list) else default

    def lookup(self, name: str, default: Any = None) -> Any:
        """A setting whose name is built at run time (``CCXT_KRAKEN_API_URL``, a provider's ``*_BASE_URL``):
        the Django setting, else ``default`` (else, for a declared setting, its declared default); uncoerced."""
        value = getattr(settings, name, None)
        if value is None or (isinstance(value, str) and not value.strip()):
            return SETTINGS[name].default if default is None and name in SETTINGS else default
        return value

    def credential(self, name: str) -> str:
        """A secret (declared or per exchange, e.g. ``CCXT_KRAKEN_API_KEY``): the Django setting when set
        there, else the environment variable of that name (so a key never has to sit in a settings file)."""
        from_settings = getattr(settings, name, "") if settings.configured else ""
        return str(from_settings or os.environ.get(name, "") or "").strip()

    def __getattr__(self, name: str) -> Any:
        if name not in SETTINGS:
            raise AttributeError(f"{name} is not a declared setting (integrity.conf.SETTINGS)")
        setting = SETTINGS[name]
        raw = self.raw(name)
        return setting.value(raw) if raw is not setting.default else self.default(name)


conf = Conf()
