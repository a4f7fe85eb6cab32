"""Settings for marketdata-integrity. Every knob is an environment variable (see README).

The app's own settings (backfill, quality, providers, health, API) are declared in ``integrity.conf``:
there each one has its default and its meaning, once. Here they are only read from the environment
(``envsetting`` takes the declared default and type) and grouped; Django's own settings stay as
Django documents them."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from integrity.conf import SETTINGS as declared_settings
from integrity.conf import conf

from .env import envbool, envfloat, envint, envlist, envproxyheader, envrate, envsetting, envstr

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
    "integrity.apps.IntegrityAdminConfig",  # django.contrib.admin, its site an IntegrityAdminSite
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
    "rangefilter",  # the admin's date-range list filters (integrity.admin.base.UTCDateRangeFilter)
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

CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    # Shared by every process: the django-q2 clusters' heartbeats (Stat) with the database broker, so
    # the web process can tell whether a worker is alive (integrity.queue). `migrate` creates the table.
    "workers": {"BACKEND": "django.core.cache.backends.db.DatabaseCache", "LOCATION": "integrity_worker_stats"},
}
REDIS_URL = envstr("REDIS_URL", "") or ""

# Django's ModelBackend reading a user's permissions in one query instead of two (every API request
# checks one): integrity/auth.py.
AUTHENTICATION_BACKENDS = ["integrity.auth.ModelBackendOneQuery"]

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
# Dates and times as the admin shows them: "2026-03-02 14:00 UTC", "2026-03-02" (marketdata_site/formats).
FORMAT_MODULE_PATH = ["marketdata_site.formats"]

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

# --- Integrity (each setting's default, type and meaning: integrity.conf) ---------------------------
# Every setting integrity.conf declares (its default, type and meaning: docs/configuration.md) is
# read from the environment variable of its name; the few with another form are set below.
own_form = {"API_NUM_PROXIES", "API_THROTTLE_ANON", "API_THROTTLE_FAILED_AUTH", "BACKFILL_LOOKBACK_DAYS",
            "BACKFILL_MAX_BARS", "CANDLE_RETENTION", "PROVIDER_LIMITS_REDIS_URL", "QUALITY_THRESHOLDS",
            "STALE_AVAILABILITY_DELAY_MINUTES", "RECONCILE_TOLERANCE_PCT", "RECONCILE_VOLUME_TOLERANCE_PCT"}
globals().update({name: envsetting(name) for name in declared_settings if name not in own_form})
# Per timeframe: BACKFILL_LOOKBACK_DAYS_1M … _1D.
BACKFILL_LOOKBACK_DAYS = {tf: envint(f"BACKFILL_LOOKBACK_DAYS_{tf.upper()}", days)
                          for tf, days in conf.default("BACKFILL_LOOKBACK_DAYS").items()}
# Candle retention in days per timeframe (PostgreSQL partitions): CANDLE_RETENTION_1M … _1D; 0 keeps all.
CANDLE_RETENTION = {tf: envint(f"CANDLE_RETENTION_{tf.upper()}", days)
                    for tf, days in conf.default("CANDLE_RETENTION").items()}
# BACKFILL_MAX_BARS for every timeframe, BACKFILL_MAX_BARS_1M … _1D for one.
BACKFILL_MAX_BARS = {tf: envint(f"BACKFILL_MAX_BARS_{tf.upper()}", envint("BACKFILL_MAX_BARS", bars))
                     for tf, bars in conf.default("BACKFILL_MAX_BARS").items()}

# --- Integrity: data quality ----------------------------------------------------------------------
# Per asset class detector thresholds: a Python mapping, set it here (or in a settings module that
# imports this one); no environment form.
QUALITY_THRESHOLDS = conf.default("QUALITY_THRESHOLDS")
# Reconciliation tolerances per asset class (percent): RECONCILE_TOLERANCE_PCT_EQUITY, _CRYPTO, _FOREX
# and RECONCILE_VOLUME_TOLERANCE_PCT_EQUITY, … (negative: volume not compared).
RECONCILE_TOLERANCE_PCT, RECONCILE_VOLUME_TOLERANCE_PCT = (
    {asset_class: envfloat(f"{name}_{asset_class.upper()}", pct) for asset_class, pct in conf.default(name).items()}
    for name in ("RECONCILE_TOLERANCE_PCT", "RECONCILE_VOLUME_TOLERANCE_PCT"))

# --- Market-data providers (integrity.providers; docs/providers.md) -------------------------------
# Request pace and Binance's weight budget shared through this Redis (integrity.providers.limits): the
# broker's unless set ("off": per process).
PROVIDER_LIMITS_REDIS_URL = envstr("PROVIDER_LIMITS_REDIS_URL", "") or REDIS_URL
# Per exchange, read where used (settings, else the environment): CCXT_<EXCHANGE>_API_URL and the
# keys CCXT_<EXCHANGE>_API_KEY / _SECRET / _PASSWORD / _UID.

# --- django-q2 -----------------------------------------------------------------------------------
Q_CLUSTER = {
    "name": envstr("Q_CLUSTER_NAME", "marketdata"),
    "workers": envint("Q_WORKERS", 2),
    # Tasks a cluster takes from the queue ahead of its free workers (django-q2's default: workers²). Kept
    # small so that clusters on several hosts share the work and a lost cluster takes little with it.
    "queue_limit": envint("Q_QUEUE_LIMIT", envint("Q_WORKERS", 2), minimum=1),
    "timeout": envint("Q_TIMEOUT", 3300),
    "retry": envint("Q_RETRY", 3600),
    "max_attempts": 1,
    "catch_up": False,
    "save_limit": envint("Q_SAVE_LIMIT", 1000),
    "orm": "default",
    "cache": "workers",  # where the database broker keeps the clusters' stats (Redis keeps its own)
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
# Throttling (integrity.api.throttling); counts live in the cache (CACHES: per process by default).
API_THROTTLE_ANON = envrate("API_THROTTLE_ANON", conf.default("API_THROTTLE_ANON"))
API_THROTTLE_FAILED_AUTH = envrate("API_THROTTLE_FAILED_AUTH", conf.default("API_THROTTLE_FAILED_AUTH"))
API_NUM_PROXIES = envsetting("API_NUM_PROXIES", minimum=0)
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
    "ENUM_NAME_OVERRIDES": {"TimeframeEnum": "integrity.timeframes.Timeframe",
                            "BackfillStatusEnum": "integrity.models.BackfillStatus",
                            "ResolutionReasonEnum": "integrity.models.anomalies.ResolutionReason",
                            # provider and reference_provider: one choice set, one name
                            "ProviderEnum": "integrity.providers.PROVIDER_NAMES"},
    "COMPONENT_SPLIT_REQUEST": True,
}

# --- Health monitoring, alerts, schedules, metrics (integrity.health/alerts/schedules/metrics) ---
# Per asset class: STALE_AVAILABILITY_DELAY_MINUTES_EQUITY, _CRYPTO, _FOREX.
STALE_AVAILABILITY_DELAY_MINUTES = {
    asset_class: envint(f"STALE_AVAILABILITY_DELAY_MINUTES_{asset_class.upper()}", minutes)
    for asset_class, minutes in conf.default("STALE_AVAILABILITY_DELAY_MINUTES").items()}
# Django's mail backend, used by the email alert channel.
EMAIL_BACKEND = envstr("EMAIL_BACKEND", "django.core.mail.backends.smtp.EmailBackend")
EMAIL_HOST = envstr("EMAIL_HOST", "localhost")
EMAIL_PORT = envint("EMAIL_PORT", 25)
EMAIL_HOST_USER = envstr("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = envstr("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = envbool("EMAIL_USE_TLS", "False")
EMAIL_USE_SSL = envbool("EMAIL_USE_SSL", "False")
EMAIL_TIMEOUT = envint("EMAIL_TIMEOUT", 10)
DEFAULT_FROM_EMAIL = envstr("DEFAULT_FROM_EMAIL", "marketdata-integrity@localhost")
# django-q2 schedules (UTC cron expressions), written by `manage.py setup_schedules`.
