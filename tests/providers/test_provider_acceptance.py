"""Issue 4's acceptance and configuration, the way a user meets them.

- ``python manage.py backfill --provider binance --symbols BTC-USD --timeframe 1h``, run as a real
  process with ``BINANCE_BASE_URL`` pointing at a local server that answers like Binance, fills the
  series and records a completed execution.
- The provider and its options are per instrument, set through the API or the admin, and a
  backfill uses exactly what was set there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from io import StringIO

import pytest
from django.conf import settings as django_settings
from django.core.management import CommandError, call_command
from django.utils.html import escape
from rest_framework.test import APIClient

from integrity.backfill import run_backfill
from integrity.models import BackfillState, Candle, Instrument
from integrity.providers.http import HttpClient
from integrity.providers.http_policy import reset_rate_limiters
from tests.helpers import ROOT, assert_same_bars, client_for, stored_bars, user_with, worker_database_url
from tests.providers import test_provider_binance as tb

pytestmark = pytest.mark.django_db(transaction=True)

INSTRUMENTS = "/api/v1/instruments/"


@pytest.fixture(autouse=True)
def fast_http(settings, monkeypatch):
    settings.BINANCE_MAX_REQUESTS_PER_SECOND = 0
    reset_rate_limiters()
    monkeypatch.setattr(HttpClient, "sleep", staticmethod(lambda seconds: None))
    yield settings
    reset_rate_limiters()


def manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    environment = {**os.environ, "DJANGO_SETTINGS_MODULE": "marketdata_site.settings",
                   "DATABASE_URL": worker_database_url(), **env}
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=environment, capture_output=True,
                          text=True, timeout=120)


def api_client(*codenames: str) -> APIClient:
    return client_for(user_with(*codenames, name="editor"))


class TestTheAcceptanceCommand:
    COMMAND = ("backfill", "--provider", "binance", "--symbols", "BTC-USD", "--timeframe", "1h")

    def test_it_backfills_btc_usd_from_the_configured_base_url(self, httpserver):
        # BTC-USD is on the watchlist as `manage.py demo` puts it there: synthetic, with synthetic
        # options that --provider binance must simply ignore.
        Instrument.objects.create(symbol="BTC-USD", asset_class="crypto", calendar="24/7", timeframes=["1h"],
                                  provider="synthetic", provider_options={"seed": 3, "base_price": 60000.0})
        fake = tb.serve(httpserver, tb.FakeBinance(first=tb.utc(2017, 8, 17)))  # klines up to now, as the real API
        done = manage(*self.COMMAND, env={"BINANCE_BASE_URL": httpserver.url_for("/").rstrip("/")})
        assert done.returncode == 0, done.stdout + done.stderr
        assert "1 completed, 0 failed or refused" in done.stdout
        [state] = BackfillState.objects.filter(symbol="BTC-USD", timeframe="1h")
        assert (state.status, state.provider, state.error_message) == ("completed", "binance", None)
        assert state.requested_by == "manage.py backfill"
        stored = Candle.objects.filter(symbol="BTC-USD", timeframe="1h", source="binance").count()
        lookback_hours = django_settings.BACKFILL_LOOKBACK_DAYS["1h"] * 24
        assert stored == state.records_inserted and lookback_hours - 1 <= stored <= lookback_hours
        # Binance's documented page size, BTC-USD mapped to BTCUSDT, and nothing asked twice.
        assert {(q["symbol"], q["interval"], q["limit"]) for q in fake.queries} == {("BTCUSDT", "1h", "1000")}
        assert len(fake.queries) == -(-stored // 1000)
        assert len({q["startTime"] for q in fake.queries}) == len(fake.queries)

    def test_a_base_url_with_nothing_listening_fails_the_run_with_exit_code_1(self, settings):
        settings.BINANCE_BASE_URL = "http://127.0.0.1:9"  # nothing listens there
        settings.PROVIDER_HTTP_MAX_RETRIES = 0
        Instrument.objects.create(symbol="BTC-USD", asset_class="crypto", calendar="24/7", timeframes=["1h"])
        out = StringIO()
        with pytest.raises(CommandError) as exited:
            call_command(*self.COMMAND, "--format", "json", stdout=out, stderr=StringIO())
        assert exited.value.returncode == 1
        [row] = json.loads(out.getvalue())
        assert row["status"] == "failed" and row["error"].startswith("[binance] connection error")
        state = BackfillState.objects.get(execution_id=row["execution_id"])
        assert state.status == "failed" and state.error_message == row["error"]
        assert "path=/api/v3/klines" in state.error_message and not Candle.objects.exists()

    def test_an_unregistered_symbol_is_registered_with_the_providers_asset_class(self, httpserver, settings):
        settings.BINANCE_BASE_URL = httpserver.url_for("/").rstrip("/")
        tb.serve(httpserver, tb.FakeBinance(first=tb.utc(2017, 8, 17)))
        call_command(*self.COMMAND, "--format", "json")
        instrument = Instrument.objects.get(symbol="BTC-USD")
        assert (instrument.asset_class, instrument.calendar, instrument.provider) == ("crypto", "24/7", "binance")


class TestProviderConfigurationThroughTheApi:
    def test_the_provider_and_its_options_set_through_the_api_drive_the_backfill(self, httpserver, settings):
        settings.BINANCE_BASE_URL = httpserver.url_for("")  # the operator's endpoint, which base_url may name
        client = api_client("add_instrument", "change_instrument", "view_instrument")
        created = client.post(INSTRUMENTS, {
            "symbol": "ETH-USD", "asset_class": "crypto", "calendar": "24/7", "timeframes": ["1h"],
            "provider": "binance", "provider_options": {"base_url": httpserver.url_for("/"), "limit": 10},
        }, format="json")
        assert created.status_code == 201, created.content
        changed = client.patch(f"{INSTRUMENTS}ETH-USD/", {"provider_options": {
            "base_url": httpserver.url_for("/"), "provider_symbol": "ETHBTC", "limit": 20}}, format="json")
        assert changed.status_code == 200, changed.content
        assert changed.json()["provider_options"]["provider_symbol"] == "ETHBTC"
        fake = tb.serve(httpserver, tb.FakeBinance())
        result = run_backfill("ETH-USD", "1h", start=tb.START, end=tb.END)
        assert result.status == "completed", result.error
        assert {(q["symbol"], q["limit"]) for q in fake.queries} == {("ETHBTC", "20")}
        assert_same_bars(stored_bars("ETH-USD", "1h"), tb.expected())
        assert BackfillState.objects.get(execution_id=result.execution_id).provider == "binance"

    def test_an_unknown_provider_name_is_refused_with_the_known_ones(self):
        client = api_client("add_instrument", "change_instrument", "view_instrument")
        response = client.post(INSTRUMENTS, {"symbol": "ETH-USD", "asset_class": "crypto", "calendar": "24/7",
                                             "timeframes": ["1h"], "provider": "binanse"}, format="json")
        assert response.status_code == 400
        assert "binanse" in response.json()["provider"][0]
        assert not Instrument.objects.exists()

    def test_options_the_provider_cannot_use_are_refused(self):
        client = api_client("add_instrument", "change_instrument", "view_instrument")
        response = client.post(INSTRUMENTS, {"symbol": "ETH-USD", "asset_class": "crypto", "calendar": "24/7",
                                             "timeframes": ["1h"], "provider": "binance",
                                             "provider_options": {"limit": 5000}}, format="json")
        assert response.status_code == 400
        assert "limit must be an integer 1..1000" in json.dumps(response.json())
        assert not Instrument.objects.exists()


def admin_form(**overrides) -> dict[str, str]:
    data = {"symbol": "ETH-USD", "asset_class": "crypto", "calendar": "24/7", "timeframes": ["1h"],
            "provider": "binance", "provider_options": '{"limit": 500}', "quality_thresholds": "{}", "active": "on"}
    data.update(overrides)
    return data


class TestProviderConfigurationInTheAdmin:
    ADD = "/admin/integrity/instrument/add/"

    def test_provider_and_provider_options_are_editable(self, admin_client):
        page = admin_client.get(self.ADD)
        assert page.status_code == 200
        assert b'name="provider"' in page.content and b'name="provider_options"' in page.content
        response = admin_client.post(self.ADD, admin_form())
        assert response.status_code == 302, response.content[:2000]
        instrument = Instrument.objects.get(symbol="ETH-USD")
        assert (instrument.provider, instrument.provider_options) == ("binance", {"limit": 500})

    def test_an_unknown_provider_is_refused(self, admin_client):
        response = admin_client.post(self.ADD, admin_form(provider="binanse"))
        assert response.status_code == 200  # the form again, with the error
        assert "Select a valid choice. binanse is not one of the available choices." in response.content.decode()
        assert not Instrument.objects.exists()

    @pytest.mark.parametrize(("options", "message"), [
        ('{"limit": 5000}', "limit must be an integer 1..1000"),
        ('{"seed": 3}', "unknown option(s) seed; binance accepts base_url, provider_symbol, limit"),
    ])
    def test_options_the_provider_cannot_use_are_refused(self, admin_client, options, message):
        response = admin_client.post(self.ADD, admin_form(provider_options=options))
        assert response.status_code == 200  # the form again, with the error
        assert escape(message) in response.content.decode()
        assert not Instrument.objects.exists()
