"""Shared fixtures. Tests run against whichever database DATABASE_URL selects (SQLite by default)."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.contrib.auth.models import User

from integrity.providers.ccxt_exchange import reset_venues
from integrity.providers.http_policy import reset_rate_limiters
from integrity.providers.limits import reset_shared_limits
from tests.exchanges import COINBASE_URL_SETTING
from tests.helpers import (
    ALPACA_KEY_ID,
    ALPACA_SECRET,
    record_http_sleeps,
    running_redis_server,
    use_default_thresholds,
)


def is_postgres() -> bool:
    return settings.DATABASES["default"]["ENGINE"].endswith("postgresql")


def pytest_collection_modifyitems(config, items):
    if is_postgres():
        return
    skip = pytest.mark.skip(reason="PostgreSQL-only mechanism; run with DATABASE_URL=postgres://…")
    for item in items:
        if "postgres_only" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _empty_cache():
    """The API throttles count requests in the cache: every test starts with nothing counted."""
    from django.core.cache import cache

    cache.clear()


@pytest.fixture
def no_cluster_heartbeats():
    """Forget the heartbeats a cluster another test started left in the shared ``workers`` cache (they
    last a few seconds after it stops): the test starts with no worker alive."""
    from django.core.cache import caches

    caches["workers"].clear()


@pytest.fixture
def redis_server(tmp_path):
    """A private ``redis-server`` for this test: (port, client); skipped where it is not installed."""
    with running_redis_server(tmp_path) as server:
        yield server


@pytest.fixture
def admin_client(client):
    """A client logged in as a superuser (made without a password: no slow hashing)."""
    client.force_login(User.objects.create_superuser("root", "root@example.com", None))
    return client


@pytest.fixture
def sleeps(monkeypatch):
    """Every sleep the HTTP client asks for, in seconds (nothing really sleeps)."""
    return record_http_sleeps(monkeypatch)


@pytest.fixture
def fast_http(settings):
    """Short HTTP timeouts and backoff for the providers' client; fresh rate limiters before and after."""
    settings.PROVIDER_HTTP_CONNECT_TIMEOUT = 2
    settings.PROVIDER_HTTP_READ_TIMEOUT = 2
    settings.PROVIDER_HTTP_BACKOFF_BASE = 0.01
    reset_rate_limiters()
    reset_shared_limits()
    yield settings
    reset_rate_limiters()
    reset_shared_limits()


@pytest.fixture
def alpaca_keys(settings, monkeypatch):
    """The operator's Alpaca keys are the ones the local Alpaca server accepts (never the environment's)."""
    settings.ALPACA_API_KEY_ID = ALPACA_KEY_ID
    settings.ALPACA_API_SECRET_KEY = ALPACA_SECRET
    monkeypatch.delenv("ALPACA_API_KEY_ID", raising=False)
    monkeypatch.delenv("ALPACA_API_SECRET_KEY", raising=False)
    return settings


@pytest.fixture
def default_thresholds(settings):
    """The detectors' thresholds, staleness settings and backfill schedule at their defaults, whatever
    the environment sets (``pytestmark = pytest.mark.usefixtures("default_thresholds")``)."""
    use_default_thresholds(settings)


@pytest.fixture
def local_binance(fast_http, sleeps, httpserver):
    """The operator points the Binance provider at the local server (``tests.exchanges.FakeBinance``;
    options may then name the same endpoint); its limiter is off (it has its own tests)."""
    fast_http.BINANCE_BASE_URL = httpserver.url_for("")
    fast_http.BINANCE_MAX_REQUESTS_PER_SECOND = 0
    return fast_http


@pytest.fixture
def local_coinbase(fast_http, sleeps, httpserver):
    """The operator points ccxt's Coinbase Exchange at the local server (``tests.exchanges.FakeCoinbase``);
    retries are fast and never sleep, ccxt's own limiter is off (it has its own test)."""
    settings = fast_http
    setattr(settings, COINBASE_URL_SETTING, httpserver.url_for(""))
    settings.PROVIDER_HTTP_MAX_RETRIES = 4
    settings.PROVIDER_ALLOWED_HOSTS = []
    settings.CCXT_ENABLE_RATE_LIMIT = False
    settings.CCXT_DEFAULT_EXCHANGE = ""
    reset_venues()
    yield settings
    reset_venues()
