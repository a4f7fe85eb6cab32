"""Settings for marketdata-integrity. Every knob is an environment variable (see README)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from .env import envbool, envfloat, envint, envlist, envproxyheader, envrate, envstr

BASE_DIR = Path(__file__).resolve().parent.parent

DEV_SECRET_KEY = "dev-insecure-secret-key-change-me"
SECRET_KEY = envstr("SECRET_KEY", DEV_SECRET_KEY)
DEBUG = envbool("DEBUG", "True")
if not DEBUG and SECRET_KEY == DEV_SECRET_KEY:
    raise ImproperlyConfigured(
        "SECRET_KEY is the development default while DEBUG is off: set SECRET_KEY to a long random value"
    )
ALLOWED_HOSTS = envlist("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1],testserver")
CSRF_TRUSTED_ORIGINS = envlist("CSRF_TRUSTED_ORIGINS", "")

# --- HTTPS (README "Deployment": all off by default, so plain-HTTP development keeps working) -----
# Behind a TLS-terminating proxy: the META name of the header it sets to "https", e.g.
# HTTP_X_FORWARDED_PROTO. Only set it when the proxy always sets (overwrites) that header.
SECURE_PROXY_SSL_HEADER = envproxyheader("SECURE_PROXY_SSL_HEADER")
SECURE_SSL_REDIRECT = envbool("SECURE_SSL_REDIRECT", "False")
# Answered over plain HTTP even with the redirect on: the container HEALTHCHECK and a Prometheus
# scrape reach the app directly, not through the TLS proxy (regexes on the path without its "/").
SECURE_REDIRECT_EXEMPT = envlist("SECURE_REDIRECT_EXEMPT", r"^healthz$,^metrics$")
SECURE_HSTS_SECONDS = envint("SECURE_HSTS_SECONDS", 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = envbool("SECURE_HSTS_INCLUDE_SUBDOMAINS", "False")
SECURE_HSTS_PRELOAD = envbool("SECURE_HSTS_PRELOAD", "False")
SESSION_COOKIE_SECURE = envbool("SESSION_COOKIE_SECURE", "False")
CSRF_COOKIE_SECURE = envbool("CSRF_COOKIE_SECURE", "False")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_q",
    "integrity",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Serves collected static files (admin, API docs) from gunicorn: no separate web server needed.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "marketdata_site.urls"
WSGI_APPLICATION = "marketdata_site.wsgi.application"
ASGI_APPLICATION = "marketdata_site.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -----------------------------------------------------------------------------------
# SQLite file in the project folder by default; DATABASE_URL=postgres://user@host:5432/db switches
# to PostgreSQL (psycopg 3).
DATABASE_URL = envstr("DATABASE_URL") or f"sqlite:///{BASE_DIR / 'db.sqlite3'}"
_db = dj_database_url.parse(DATABASE_URL, conn_max_age=envint("DB_CONN_MAX_AGE", 0))
if _db["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets readers (admin, API) run while a backfill writes; the busy timeout makes concurrent
    # writers wait for the lock instead of failing at once.
    _db.setdefault("OPTIONS", {})
    _db["OPTIONS"].update(
        {
            "timeout": envint("SQLITE_TIMEOUT", 30),
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )
    # Tests use a file (not the shared-cache in-memory default) so threads and worker processes
    # lock, wait and see each other's commits the way production does.
    # One file per test process, so parallel runs in one checkout never share it.
    _db["TEST"] = {"NAME": str(BASE_DIR / f".test_db.{os.getpid()}.sqlite3")}
DATABASES = {"default": _db}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
REDIS_URL = envstr("REDIS_URL", "") or ""

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(envstr("STATIC_ROOT", str(BASE_DIR / "staticfiles")))
# WhiteNoise warns at start-up while STATIC_ROOT is not collected yet (development, tests): not news.
warnings.filterwarnings("ignore", message="No directory at", module="whitenoise.base")
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    # Compressed copies, no manifest: templates render even where collectstatic has not run (tests).
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

# --- Logging: stdout, readable by default, one JSON object per line with LOG_FORMAT=json ----------
LOG_LEVEL = envstr("LOG_LEVEL", "INFO")
LOG_FORMAT = envstr("LOG_FORMAT", "text")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "text": {"format": "%(asctime)s %(levelname)-7s %(name)s: %(message)s"},
        "json": {"()": "marketdata_site.logging.JsonFormatter"},
    },
    "handlers": {
        "stdout": {
            "class": "logging.StreamHandler",
            "stream": "ext://sys.stdout",
            "formatter": "json" if LOG_FORMAT == "json" else "text",
        }
    },
    "root": {"handlers": ["stdout"], "level": LOG_LEVEL},
    "loggers": {
        "django": {"level": envstr("DJANGO_LOG_LEVEL", "WARNING")},
        "django_q": {"level": envstr("DJANGO_Q_LOG_LEVEL", "WARNING")},
    },
}

# --- Integrity: backfill --------------------------------------------------------------------------
BACKFILL_BATCH_SIZE = envint("BACKFILL_BATCH_SIZE", 10_000)
# An in_progress execution whose heartbeat is older than this is considered dead and reaped.
BACKFILL_HEARTBEAT_TIMEOUT_SECONDS = envint("BACKFILL_HEARTBEAT_TIMEOUT_SECONDS", 300)
# Incremental runs restart this many bars before the last stored bar to pick up revisions.
BACKFILL_OVERLAP_BARS = envint("BACKFILL_OVERLAP_BARS", 3)
# How far back a series with no stored bars starts, per timeframe (days).
BACKFILL_LOOKBACK_DAYS = {
    "1m": envint("BACKFILL_LOOKBACK_DAYS_1M", 7),
    "5m": envint("BACKFILL_LOOKBACK_DAYS_5M", 30),
    "15m": envint("BACKFILL_LOOKBACK_DAYS_15M", 60),
    "1h": envint("BACKFILL_LOOKBACK_DAYS_1H", 180),
    "4h": envint("BACKFILL_LOOKBACK_DAYS_4H", 365),
    "1d": envint("BACKFILL_LOOKBACK_DAYS_1D", 3650),
}
# The most bars ((end - start) / bar length) one explicit backfill request may ask for; a larger
# range is refused naming the setting (integrity.ranges). BACKFILL_MAX_BARS for every timeframe,
# BACKFILL_MAX_BARS_1M … _1D for one. 5,000,000 is ~9.5 years of 24/7 1m bars.
_BACKFILL_MAX_BARS = envint("BACKFILL_MAX_BARS", 5_000_000)
BACKFILL_MAX_BARS = {tf: envint(f"BACKFILL_MAX_BARS_{tf.upper()}", _BACKFILL_MAX_BARS)
                     for tf in ("1m", "5m", "15m", "1h", "4h", "1d")}
# Consecutive failures of a symbol at which an alert is raised (once, re-armed after a success).
FAILURE_ALERT_THRESHOLD = envint("FAILURE_ALERT_THRESHOLD", 3)
# A pending execution never picked up by a worker within this many seconds is failed by the reaper.
BACKFILL_PENDING_TIMEOUT_SECONDS = envint("BACKFILL_PENDING_TIMEOUT_SECONDS", 3600)
# Recording how a run ended survives a database outage: that many retries of the finishing writes,
# the first after BACKFILL_FINISH_BACKOFF seconds, doubled each time (at most 30 s between tries).
BACKFILL_FINISH_RETRIES = envint("BACKFILL_FINISH_RETRIES", 5)
BACKFILL_FINISH_BACKOFF = envfloat("BACKFILL_FINISH_BACKOFF", 0.5)
# Send a notice when a symbol that had alerted succeeds again.
ALERT_RECOVERY_NOTICES = envbool("ALERT_RECOVERY_NOTICES", "False")

# --- Integrity: data quality (defaults; see integrity.quality for per-class overrides) -----------
STALE_THRESHOLD_HOURS = envfloat("STALE_THRESHOLD_HOURS", 24.0)
OUTLIER_MOVE_THRESHOLD = envfloat("OUTLIER_MOVE_THRESHOLD", 0.20)
DETECTION_OVERLAP_BARS = envint("DETECTION_OVERLAP_BARS", 50)
# A big detection sweep (PostgreSQL, outside a transaction) splits its window pass by series over
# this many connections; smaller passes (fewer rows than DETECTION_PARALLEL_MIN_ROWS) use one.
DETECTION_PARALLEL_WORKERS = envint("DETECTION_PARALLEL_WORKERS", min(4, os.cpu_count() or 1))
DETECTION_PARALLEL_MIN_ROWS = envint("DETECTION_PARALLEL_MIN_ROWS", 500_000)

# --- HTTP market-data providers (integrity.providers.http / binance / alpaca; docs/providers.md) --
PROVIDER_HTTP_CONNECT_TIMEOUT = envfloat("PROVIDER_HTTP_CONNECT_TIMEOUT", 5.0)
PROVIDER_HTTP_READ_TIMEOUT = envfloat("PROVIDER_HTTP_READ_TIMEOUT", 30.0)
PROVIDER_HTTP_MAX_RETRIES = envint("PROVIDER_HTTP_MAX_RETRIES", 4)
PROVIDER_HTTP_BACKOFF_BASE = envfloat("PROVIDER_HTTP_BACKOFF_BASE", 0.5)
PROVIDER_HTTP_BACKOFF_MAX = envfloat("PROVIDER_HTTP_BACKOFF_MAX", 30.0)
PROVIDER_HTTP_RETRY_AFTER_MAX = envfloat("PROVIDER_HTTP_RETRY_AFTER_MAX", 60.0)
# Hosts (optionally host:port) an instrument's provider_options.base_url may point at besides the
# host of the provider's own *_BASE_URL setting. Empty: endpoints come from the settings only.
PROVIDER_ALLOWED_HOSTS = envlist("PROVIDER_ALLOWED_HOSTS", "")
# Folders whose CSV files an instrument edited through the API or the admin may name (file/directory
# options); the command line (an operator with a shell) may load any file.
CSV_DATA_DIRS = envlist("CSV_DATA_DIRS", "")
BINANCE_BASE_URL = envstr("BINANCE_BASE_URL", "https://api.binance.com")
BINANCE_MAX_REQUESTS_PER_SECOND = envfloat("BINANCE_MAX_REQUESTS_PER_SECOND", 10.0)
BINANCE_WEIGHT_LIMIT = envint("BINANCE_WEIGHT_LIMIT", 6000)
BINANCE_WEIGHT_THRESHOLD = envfloat("BINANCE_WEIGHT_THRESHOLD", 0.8)
ALPACA_DATA_BASE_URL = envstr("ALPACA_DATA_BASE_URL", "https://data.alpaca.markets")
ALPACA_API_KEY_ID = envstr("ALPACA_API_KEY_ID", "")
ALPACA_API_SECRET_KEY = envstr("ALPACA_API_SECRET_KEY", "")
ALPACA_MAX_REQUESTS_PER_SECOND = envfloat("ALPACA_MAX_REQUESTS_PER_SECOND", 3.0)
ALPACA_FEED = envstr("ALPACA_FEED", "iex")
ALPACA_ADJUSTMENT = envstr("ALPACA_ADJUSTMENT", "raw")

# --- django-q2 -----------------------------------------------------------------------------------
Q_CLUSTER = {
    "name": envstr("Q_CLUSTER_NAME", "marketdata"),
    "workers": envint("Q_WORKERS", 2),
    "timeout": envint("Q_TIMEOUT", 3300),
    "retry": envint("Q_RETRY", 3600),
    "max_attempts": 1,
    "catch_up": False,
    "save_limit": envint("Q_SAVE_LIMIT", 1000),
    "orm": "default",
}
if REDIS_URL:
    Q_CLUSTER.pop("orm")
    Q_CLUSTER["redis"] = REDIS_URL
# A task still running when the broker's retry window ends would be handed to a second worker.
if Q_CLUSTER["timeout"] >= Q_CLUSTER["retry"]:
    raise ImproperlyConfigured(
        f"Q_TIMEOUT ({Q_CLUSTER['timeout']}) must be below Q_RETRY ({Q_CLUSTER['retry']}): "
        "otherwise a running task is handed to a second worker"
    )

# --- REST framework ------------------------------------------------------------------------------
# Throttling (integrity.api.throttling): requests without credentials, and failed authentications
# (a wrong token, credentials no authenticator accepts) counted per client address, which blocks the
# address for the rest of the window. Counts live in the cache (CACHES: per process by default).
API_THROTTLE_ANON = envrate("API_THROTTLE_ANON", "60/min")
API_THROTTLE_FAILED_AUTH = envrate("API_THROTTLE_FAILED_AUTH", "10/min")
# Proxies in front of the app that append the client address to X-Forwarded-For. 0: the client is
# REMOTE_ADDR and X-Forwarded-For is ignored (a client could forge it to escape the throttles).
API_NUM_PROXIES = envint("API_NUM_PROXIES", 0, minimum=0)
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # First: refuses an address over its failed-authentication budget before any credential is
        # checked (a correct guess must not answer differently from a wrong one).
        "integrity.api.throttling.FailedAuthenticationGate",
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_THROTTLE_CLASSES": ["integrity.api.throttling.AnonymousRateThrottle"],
    "DEFAULT_THROTTLE_RATES": {"anon": API_THROTTLE_ANON, "failed_auth": API_THROTTLE_FAILED_AUTH},
    "NUM_PROXIES": API_NUM_PROXIES,
    # Bodies and query strings are refused (400) when they hold text no database column can store,
    # nest too deep or exceed DATA_UPLOAD_MAX_MEMORY_SIZE (413); see integrity.api.parsers.
    "DEFAULT_PARSER_CLASSES": [
        "integrity.api.parsers.JSONParser",
        "integrity.api.parsers.FormParser",
        "integrity.api.parsers.MultiPartParser",
    ],
    "DEFAULT_FILTER_BACKENDS": ["integrity.api.parsers.StorableQueryFilterBackend"],
    "EXCEPTION_HANDLER": "integrity.api.exceptions.api_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 100,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "marketdata-integrity API",
    "VERSION": "1.0.0",
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "ENUM_NAME_OVERRIDES": {"TimeframeEnum": "integrity.timeframes.Timeframe"},
    "COMPONENT_SPLIT_REQUEST": True,
}

# --- Health monitoring, alerts, schedules, metrics (integrity.health/alerts/schedules/metrics) ---
# A series is stale when its last bar is more than this many hours behind the newest bar its
# calendar expects to be complete (calendar-aware: weekends and holidays are not "behind").
HEALTH_STALE_HOURS = envfloat("HEALTH_STALE_HOURS", 6.0)
# Email channel: on when ALERT_EMAIL_RECIPIENTS (comma list) is set; sent via Django's mail backend.
ALERT_EMAIL_RECIPIENTS = envlist("ALERT_EMAIL_RECIPIENTS", "")
EMAIL_BACKEND = envstr("EMAIL_BACKEND", "django.core.mail.backends.smtp.EmailBackend")
EMAIL_HOST = envstr("EMAIL_HOST", "localhost")
EMAIL_PORT = envint("EMAIL_PORT", 25)
EMAIL_HOST_USER = envstr("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = envstr("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = envbool("EMAIL_USE_TLS", "False")
EMAIL_USE_SSL = envbool("EMAIL_USE_SSL", "False")
EMAIL_TIMEOUT = envint("EMAIL_TIMEOUT", 10)
DEFAULT_FROM_EMAIL = envstr("DEFAULT_FROM_EMAIL", "marketdata-integrity@localhost")
# Webhook channel: on when ALERT_WEBHOOK_URL is set; JSON POST with a Slack-compatible "text".
ALERT_WEBHOOK_URL = envstr("ALERT_WEBHOOK_URL", "")
ALERT_WEBHOOK_TIMEOUT = envfloat("ALERT_WEBHOOK_TIMEOUT", 5.0)
ALERT_WEBHOOK_RETRIES = envint("ALERT_WEBHOOK_RETRIES", 2)  # extra attempts on connection errors/429/5xx
ALERT_WEBHOOK_BACKOFF = envfloat("ALERT_WEBHOOK_BACKOFF", 0.5)  # seconds, doubled each retry
# django-q2 schedules (UTC cron expressions), written by `manage.py setup_schedules`.
SCHEDULE_ENRICHMENT_CRON = envstr("SCHEDULE_ENRICHMENT_CRON", "30 1 * * *")
SCHEDULE_BACKFILL_CRON = envstr("SCHEDULE_BACKFILL_CRON", "0 2 * * *")
SCHEDULE_HEALTH_CRON = envstr("SCHEDULE_HEALTH_CRON", "0 0,6,12,18 * * *")
# /metrics: bearer token required when set; when unset, loopback clients only.
METRICS_TOKEN = envstr("METRICS_TOKEN", "")
