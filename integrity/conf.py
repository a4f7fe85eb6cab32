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
    SETTINGS["X"].doc               # the meaning: docs/configuration.md's tables are generated from
                                    # SETTINGS and GROUPS (python manage.py settings_doc)

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
ASSET_CLASSES = ("equity", "crypto", "forex")  # the keys of the per-asset-class settings
AVAILABILITY_DELAY_MINUTES = {"equity": 15, "crypto": 1, "forex": 5}
# Reconciliation tolerances, percent. Prices: crypto venues differ by a few basis points (0.1 % is
# agreement, not a finding); an equity's vendors and forex feeds round alike. Volume (-1: not
# compared): venues trade different volumes, so crypto and forex (tick counts) are off; an equity's
# consolidated volume differs between vendors by late trades and odd lots, hence a loose 10 %.
RECONCILE_TOLERANCE_PCT = {"equity": 0.05, "crypto": 0.1, "forex": 0.05}
RECONCILE_VOLUME_TOLERANCE_PCT = {"equity": 10.0, "crypto": -1.0, "forex": -1.0}


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
    doc: str  # the meaning, as docs/configuration.md shows it (generated: manage.py settings_doc)
    group: str  # a key of GROUPS: the section of docs/configuration.md
    shown_default: str | None = None  # the default as the docs show it, when not the value itself
    variable: str | None = None  # how the docs name it, when the environment spells it otherwise

    def value(self, raw: Any) -> Any:
        return self.coerce(self.name, raw)


class _PerKey:
    """A mapping key -> integer (timeframes, asset classes), or -> number with ``number=_float``; a key
    the setting leaves out keeps its default. ``what`` names the keys in the error."""

    def __init__(self, default: Mapping[str, Any], what: str, keys: tuple[str, ...],
                 number: Callable[[str, Any], Any] = _int):
        self.default, self.what, self.keys, self.number = dict(default), what, keys, number

    def __call__(self, name: str, value: Any) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            kind = "integers" if self.number is _int else "numbers"
            raise SettingError(f"setting {name} must map {self.what} ({', '.join(self.keys)}) to {kind}, "
                               f"got {value!r}")
        return {**self.default, **{str(k): self.number(f"{name}[{k!r}]", v) for k, v in value.items()}}


# The sections of docs/configuration.md the app's settings are listed in: title, then a line of prose.
GROUPS: dict[str, tuple[str, str]] = {
    "api": ("API", ""),
    "backfill": ("Backfill", ""),
    "quality": ("Data quality",
                "Gap severity is judged by the trading time the missing bars cover, in typical trading days of "
                "the instrument's calendar (`integrity/quality/trading_time.py`: trading minutes of the missing "
                "bars over the calendar's average trading minutes per day; 24 hours for `24/7` and `24/5`), so "
                "one missing session is the same finding on `1d` and `1h`. The thresholds are "
                "`QUALITY_THRESHOLDS` keys (and per-instrument thresholds): `gap_critical_days` (default `5`: "
                "a trading week) or more is critical, `gap_high_days` (`1`: a whole session) or more high, "
                "`gap_medium_days` (`0.25`) or more — or at least `gap_medium_bars` (`2`) missing bars in a "
                "row — medium, anything less low."),
    "health": ("Health monitoring, alerts and schedules",
               "The email channel sends through Django's mail backend (`EMAIL_*`, above)."),
    "storage": ("Candle storage (PostgreSQL partitions)",
                "PostgreSQL only (SQLite keeps one plain table): see [operations.md](operations.md#candle-partitions)."),
    "providers": ("Market-data providers",
                  "Read when a provider runs; see [providers.md](providers.md) for how the providers use them."),
}
SETTINGS: dict[str, Setting] = {}
_COERCE_BY_TYPE = {bool: _bool, int: _int, float: _float, str: _str, list: _list, dict: _as_is}


def _declare(group: str, declarations: list[tuple]) -> None:
    """Settings of one group: ``(name, default, meaning)``, optionally followed by keyword overrides
    (``shown_default``, ``variable``); the type (and coercion) is the default's."""
    for name, default, doc, *overrides in declarations:
        coerce = _COERCE_BY_TYPE[type(default)]
        SETTINGS[name] = Setting(name, default, coerce, doc, group, **(overrides[0] if overrides else {}))


def _per_timeframe(group: str, name: str, default: Mapping[str, int], unit: str, doc: str,
                   general: bool = False) -> None:
    """A mapping timeframe -> integer; the environment sets it per timeframe (``NAME_1M`` … ``NAME_1D``)
    and, with ``general``, for every timeframe at once (``NAME``)."""
    each = ", ".join(f"`{name}_{tf.upper()}`" for tf in TIMEFRAMES)
    variable = (f"`{name}` (settings: a mapping timeframe → {unit}; environment: "
                + (f"`{name}` for all, " if general else "") + f"{each})")
    values = set(default.values())
    shown = str(values.pop()) if len(values) == 1 else ", ".join(str(default[tf]) for tf in TIMEFRAMES)
    SETTINGS[name] = Setting(name, dict(default), _PerKey(default, "timeframes", TIMEFRAMES), doc, group, shown,
                             variable)


_declare("api", [
    ("API_THROTTLE_ANON", "60/min",
     "API requests without credentials per client address (`N/s`, `N/min`, `N/hour`, `N/day`, or `off`); "
     "over it: 429 with `Retry-After`."),
    ("API_THROTTLE_FAILED_AUTH", "10/min",
     "refused API credentials (a wrong token, an `Authorization` no enabled scheme accepts) per client "
     "address; over it the address gets 429 on every API request, right credentials included, until the "
     "window passes."),
    ("API_NUM_PROXIES", 0,
     "proxies in front that append to `X-Forwarded-For`; the client address for throttling is the entry "
     "that many from the end. `0`: `REMOTE_ADDR`, and a client-sent `X-Forwarded-For` is ignored."),
    ("METRICS_TOKEN", "",
     "when set, `/metrics` requires `Authorization: Bearer <token>`; when empty, only loopback clients are "
     "served."),
])

_declare("backfill", [
    ("BACKFILL_BATCH_SIZE", 10_000, "bars per committed batch (memory is bounded by this, not by the range)."),
    ("BACKFILL_HEARTBEAT_TIMEOUT_SECONDS", 300,
     "an in_progress execution without heartbeat this long is reaped as failed."),
    ("BACKFILL_PENDING_TIMEOUT_SECONDS", 3600,
     "a pending execution no worker picked up this long is reaped as failed (\"never started\"; not a "
     "failure of the symbol)."),
    ("BACKFILL_REQUEUE_MAX_RETRIES", 3,
     "a scheduled run whose worker was lost (reaped) is claimed and queued again by the recovery schedule "
     "(`integrity.recover`), resuming from its checkpoint, until the series has failed this many times in a "
     "row; then it waits for its next scheduled run."),
    ("WORKER_NAME", "",
     "how this process names itself in an execution's `worker` (`<name>:<pid>`): empty, the machine's host "
     "name. Give each host (container) a stable, distinct name.", {"shown_default": "the host name"}),
    ("BACKFILL_FINISH_RETRIES", 5,
     "a database outage while a run records how it ended: retries of those writes, so the execution keeps "
     "the real error instead of waiting for the reaper."),
    ("BACKFILL_FINISH_BACKOFF", 0.5,
     "seconds before the first of those retries, doubled each time (at most 30 s between tries)."),
    ("BACKFILL_OVERLAP_BARS", 3,
     "incremental runs restart this many bars before the last stored bar, to pick up revisions."),
])
_per_timeframe("backfill", "BACKFILL_LOOKBACK_DAYS", {"1m": 7, "5m": 30, "15m": 60, "1h": 180, "4h": 365, "1d": 3650},
               "days", "days back a series with no bars starts, per timeframe (remote providers; a CSV file "
               "starts at its first bar).")
_per_timeframe("backfill", "BACKFILL_MAX_BARS", dict.fromkeys(TIMEFRAMES, 5_000_000), "bars",
               "the most bars, `(end − start) ÷ bar length`, one explicit backfill request may ask for (API, "
               "admin, CLI); a larger range is refused naming the setting; the per-timeframe variable overrides "
               "the general one. 5,000,000 is ~9.5 years of 24/7 1m bars.", general=True)
_declare("backfill", [
    ("CSV_DATA_DIRS", [],
     "comma-separated absolute folders whose files a csv instrument edited through the API or the admin may "
     "name (`provider_options.file` / `directory`); anything else, `..` tricks and symlinks out included, is "
     "refused with a 400 or a form error. Empty: only `manage.py backfill --file` (an operator with a shell) "
     "can point an instrument at a file."),
])

_declare("quality", [
    ("OUTLIER_MOVE_THRESHOLD", 0.20, "default close-to-close move that is an outlier (0.20 = 20 %)."),
    ("QUALITY_THRESHOLDS", {},
     'detector threshold overrides: `{"default": {...}, "equity"\\|"crypto"\\|"forex": {...}}` (keys of '
     "`integrity.quality.thresholds.DEFAULT_THRESHOLDS`); an instrument's own thresholds win over both. "
     "Not read from the environment: set it in the settings module."),
    ("DETECTION_OVERLAP_BARS", 50,
     "an incremental detection pass re-reads this many bars before the changed ones (and before each "
     "unresolved anomaly)."),
    ("DETECTION_WATERMARK_SLACK", 50_000,
     "candle ids an unchanged series' detection watermark may lag the scan's before it is moved up to it "
     "(bounds the rows the change-detection statement reads)."),
    ("DETECTION_PARALLEL_WORKERS", min(4, os.cpu_count() or 1),
     "PostgreSQL connections a big detection sweep splits its window pass over (by series; only outside a "
     "transaction). `1` turns it off.", {"shown_default": "number of cores, at most 4"}),
    ("DETECTION_PARALLEL_MIN_ROWS", 500_000,
     "a window pass expected to read fewer rows uses one connection (a full scan always counts as big)."),
])

_declare("health", [
    ("STALE_GRACE_MINUTES", 120,
     "a series is stale when a bar that is due (closed on its calendar, published after the availability "
     "delay, and past a scheduled backfill run) has been missing for more than this many minutes after that "
     "run, or when it has no bar at all (`integrity.staleness`; the stale detector, the health job, the "
     "dashboard and `/metrics` all use it)."),
])
SETTINGS["STALE_AVAILABILITY_DELAY_MINUTES"] = Setting(
    "STALE_AVAILABILITY_DELAY_MINUTES", dict(AVAILABILITY_DELAY_MINUTES),
    _PerKey(AVAILABILITY_DELAY_MINUTES, "asset classes", ASSET_CLASSES),
    "minutes a source needs to publish a closed bar, per asset class, unless the instrument sets its own "
    "`availability_delay_minutes`.", "health",
    ", ".join(f"{k} {v}" for k, v in AVAILABILITY_DELAY_MINUTES.items()),
    "`STALE_AVAILABILITY_DELAY_MINUTES` (settings: a mapping asset class → minutes; environment: "
    + ", ".join(f"`STALE_AVAILABILITY_DELAY_MINUTES_{k.upper()}`" for k in ASSET_CLASSES) + ")")

def _per_asset_class_pct(name: str, default: Mapping[str, float], doc: str) -> None:
    """A mapping asset class -> percent; the environment sets it per class (``NAME_EQUITY`` …)."""
    SETTINGS[name] = Setting(
        name, dict(default), _PerKey(default, "asset classes", ASSET_CLASSES, _float), doc, "quality",
        ", ".join(f"{k} {v:g}" if v >= 0 else f"{k} off (-1)" for k, v in default.items()),
        f"`{name}` (settings: a mapping asset class → percent; environment: "
        + ", ".join(f"`{name}_{k.upper()}`" for k in ASSET_CLASSES) + ")")


_per_asset_class_pct("RECONCILE_TOLERANCE_PCT", RECONCILE_TOLERANCE_PCT,
                     "reconciliation: the relative price difference (open, high, low, close), in percent of the "
                     "reference's price, that still counts as agreement, per asset class, unless the instrument "
                     "sets its own `reconcile_tolerance` ([reconciliation.md](reconciliation.md)).")
_per_asset_class_pct("RECONCILE_VOLUME_TOLERANCE_PCT", RECONCILE_VOLUME_TOLERANCE_PCT,
                     "reconciliation: the relative volume difference, in percent, that still counts as "
                     "agreement, per asset class; a negative value compares no volume (two venues trade "
                     "different volumes).")
_declare("quality", [
    ("RECONCILE_WINDOW_DAYS", 7,
     "the window the scheduled reconciliation (and `manage.py reconcile` without `--start`/`--since`) "
     "compares: the last this-many days up to the last completed bar."),
])

_declare("health", [
    ("FAILURE_ALERT_THRESHOLD", 3,
     "consecutive failures of a symbol that raise an alert (once, re-armed after a success)."),
    ("ALERT_RECOVERY_NOTICES", False,
     "send a low-severity notice when an alerted symbol succeeds again and when a series that alerted as "
     "stale is fresh again."),
    ("ALERT_EMAIL_RECIPIENTS", [], "comma-separated addresses; when set, every alert is also emailed."),
    ("ALERT_WEBHOOK_URL", "",
     "when set, every alert is also POSTed there as JSON with a Slack-compatible `text`."),
    ("ALERT_WEBHOOK_TIMEOUT", 5.0, "seconds per webhook attempt."),
    ("ALERT_WEBHOOK_RETRIES", 2,
     "extra attempts after a connection error/timeout, 429 or 5xx (other 4xx are not retried)."),
    ("ALERT_WEBHOOK_BACKOFF", 0.5, "seconds before the first retry, doubled for each further one."),
    ("ALERT_APPRISE_URLS", [],
     "comma-separated apprise URLs (PagerDuty, Opsgenie, Teams, Telegram, ntfy, JSON, ...); when set, every "
     "alert is also sent to each of them through apprise. They hold tokens: errors name a URL by position "
     "and scheme only, and apprise's log lines are masked. A URL that itself contains a comma must be set in "
     "the settings module as a list."),
    ("REPAIR_AUTO", True,
     "the health job repairs new gap and invalid-bar anomalies (re-fetches their range, re-checks it) before "
     "it alerts, so a transient provider hole heals before anyone is paged."),
    ("REPAIR_MAX_PER_RUN", 100, "the most anomalies one health run repairs (the rest wait for the next run)."),
    ("REPAIR_AUTO_MAX_BARS", 50_000,
     "the longest range, in bars, the health job re-fetches itself; a longer one (rejected bars scattered "
     "over years) is listed in the run's `repairs.too_long_for_auto_repair` and left to "
     "`manage.py repair_anomalies` or the admin."),
    ("REPAIR_BACKOFF", 3600.0,
     "seconds after a failed automatic repair before the health job tries that anomaly again, doubled for "
     "each further failed attempt."),
    ("SCHEDULE_ENRICHMENT_CRON", "30 1 * * *",
     "enrichment schedule (UTC, five-field cron), written by `setup_schedules`."),
    ("SCHEDULE_BACKFILL_CRON", "0 2 * * *", "daily incremental backfill schedule (UTC)."),
    ("SCHEDULE_HEALTH_CRON", "0 0,6,12,18 * * *", "health-monitoring schedule (UTC)."),
    ("SCHEDULE_RECOVER_CRON", "*/5 * * * *",
     "recovery schedule (UTC): executions of lost workers reaped, scheduled series claimed again, lost "
     "queued tasks queued again (`integrity.backfill.recover`)."),
    ("SCHEDULE_RECONCILE_CRON", "0 4 * * *",
     "reconciliation with the reference sources (UTC), after the daily backfill; it skips instruments "
     "without a reference. `off`: not scheduled."),
    ("WORKER_QUEUE_WAIT_WARNING_SECONDS", 900,
     "with a django-q2 cluster alive, a queued task waiting longer than this many seconds makes the health "
     "job warn (the workers are busy or stuck); with none alive, any waiting work does."),
])

_declare("storage", [
    ("CANDLE_PARTITIONS_AHEAD", 3,
     "months of candle partitions `candle_partitions` (daily) keeps created ahead of today, per timeframe."),
    ("SCHEDULE_PARTITIONS_CRON", "45 0 * * *",
     "candle partition maintenance schedule (UTC): create ahead, move default-partition rows, retention."),
])
_per_timeframe("storage", "CANDLE_RETENTION", dict.fromkeys(TIMEFRAMES, 0), "days",
               "days of bars kept per timeframe; `candle_partitions` drops each partition (a month of "
               "1m/5m/15m bars, a year of 1h/4h/1d bars) whose every bar is older, and lists what it "
               "dropped. `0`: keep everything (the default). Deleting a partition is instant and leaves no "
               "bloat; keep it longer than `BACKFILL_LOOKBACK_DAYS` or backfills fetch the bars again.")

_declare("providers", [
    ("PROVIDER_HTTP_CONNECT_TIMEOUT", 5.0, "seconds to open a connection."),
    ("PROVIDER_HTTP_READ_TIMEOUT", 30.0,
     "seconds to wait for each read of a reply (also write and pool waits)."),
    ("PROVIDER_HTTP_MAX_RETRIES", 4,
     "retries after the first attempt, on timeouts, connection errors, 429 and 5xx (`0`: no retry)."),
    ("PROVIDER_HTTP_BACKOFF_BASE", 0.5,
     "seconds; the n-th retry without `Retry-After` waits between ½ and 1 × base × 2ⁿ."),
    ("PROVIDER_HTTP_BACKOFF_MAX", 30.0, "seconds; cap of one backoff wait."),
    ("PROVIDER_HTTP_RETRY_AFTER_MAX", 60.0,
     "seconds; a `Retry-After` longer than this fails the fetch at once instead of holding the worker (the "
     "next run resumes from its checkpoint)."),
    ("PROVIDER_LIMITS_REDIS_URL", "",
     "the Redis through which the HTTP providers' request pace (`*_MAX_REQUESTS_PER_SECOND`) and Binance's "
     "weight budget are shared by every process on every host (keys "
     "`marketdata-integrity:limits:<provider>:<host:port>:…`); `off`: each process keeps its own, as it "
     "does while that Redis is unreachable (a warning is logged once).", {"shown_default": "`REDIS_URL`"}),
    ("PROVIDER_ALLOWED_HOSTS", [],
     "comma-separated hosts (`host` or `host:port`) an instrument's `provider_options.base_url` may point "
     "at besides the host and port of the provider's own base-URL setting. Empty: endpoints come from the "
     "settings only. Security: API keys are sent only over https, except to a loopback host (127.0.0.0/8, "
     "::1, localhost), whichever setting or option names the URL."),
    ("BINANCE_BASE_URL", "https://api.binance.com",
     "Binance API root (e.g. `https://api1.binance.com`, `https://data-api.binance.vision`, a proxy; tests "
     "point it at a local server)."),
    ("BINANCE_MAX_REQUESTS_PER_SECOND", 10.0,
     "client-side pace of Binance requests (`0`: off): for all processes together with `REDIS_URL` set "
     "(`PROVIDER_LIMITS_REDIS_URL`), else per process."),
    ("BINANCE_WEIGHT_LIMIT", 6000,
     "request weight Binance allows per IP per minute (it was `1200` before 2023)."),
    ("BINANCE_WEIGHT_THRESHOLD", 0.8,
     "fraction of the weight limit sent per calendar minute (by all processes together with `REDIS_URL` "
     "set, else per process); a request that would go over, or a reply whose `X-MBX-USED-WEIGHT-1M` "
     "reaches it, waits for the next minute."),
    ("BINANCE_KLINES_WEIGHT", 2, "request weight Binance charges for one klines request (`0`: not counted)."),
    ("ALPACA_DATA_BASE_URL", "https://data.alpaca.markets", "Alpaca market-data API root."),
    ("ALPACA_API_KEY_ID", "",
     "Alpaca key id, required by `alpaca` (never logged; missing → a clear error before any request)."),
    ("ALPACA_API_SECRET_KEY", "",
     "Alpaca secret key, required by `alpaca` (never logged; missing → a clear error before any request)."),
    ("ALPACA_MAX_REQUESTS_PER_SECOND", 3.0,
     "client-side pace of Alpaca requests (`0`: off; for all processes together with `REDIS_URL` set, else "
     "per process); the free plan allows 200 a minute."),
    ("ALPACA_FEED", "iex",
     "default `feed` unless an option names one (`iex` works on the free plan; `sip` needs a subscription)."),
    ("ALPACA_ADJUSTMENT", "raw",
     "default `adjustment` unless an option names one (`raw`, `split`, `dividend`, `all`)."),
    ("CCXT_DEFAULT_EXCHANGE", "", "`ccxt`: the exchange of an instrument without the `exchange` option."),
    ("CCXT_MARKETS_TTL_SECONDS", 3600.0,
     "`ccxt`: the exchange's market list (one or two requests, a few MB at Binance) is loaded once per "
     "process and reloaded after this long."),
    ("CCXT_ENABLE_RATE_LIMIT", True,
     "`ccxt`: its own rate limiter; switch off only in tests or behind a gateway that limits for you. "
     "(The per-exchange `CCXT_<EXCHANGE>_*` settings are listed below.)"),
])


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
