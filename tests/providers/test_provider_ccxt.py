"""The ccxt provider against a real local HTTP server that answers like Coinbase Exchange.

The server speaks Coinbase Exchange's documented REST format, which ccxt's ``coinbaseexchange``
class reads: ``GET /products`` and ``GET /currencies`` (ccxt's markets), and
``GET /products/{product_id}/candles?granularity=&start=&end=`` answering
``[[time, low, high, open, close, volume], …]`` newest first, at most 300 candles, times in epoch
seconds. ccxt's API URL is pointed at it by the operator's setting ``CCXT_COINBASEEXCHANGE_API_URL``:
no request leaves the machine (every API URL ccxt knows for the exchange is rewritten, and each
test's server log shows every request it made).

The classes marked ``end_to_end`` run ``run_backfill`` against the database (transactional: the
backfill commits per batch) and are kept few because each costs a database flush."""

from __future__ import annotations

import json
import logging
import time
from io import StringIO

import pandas as pd
import pytest
from django.core.management import call_command
from werkzeug import Response

from integrity.backfill import run_backfill
from integrity.models import BackfillState, Instrument, SymbolFailureTracking
from integrity.providers import FetchRequest, ProviderConfigError, get_provider
from integrity.providers.ccxt import parse_ohlcv, validate_options
from integrity.providers.ccxt_exchange import TIMEFRAMES, api_urls
from integrity.timeframes import timeframe_seconds
from tests.exchanges import CANDLES, CURRENCIES, PRODUCTS, START, FakeCoinbase, candle, serve_markets
from tests.exchanges import COINBASE_URL_SETTING as URL_SETTING
from tests.exchanges import serve_coinbase as serve
from tests.helpers import ProviderFetch, SlowFirst, add_instrument, assert_same_bars, stored_bars, utc

end_to_end = pytest.mark.django_db(transaction=True)

EXCHANGE = "coinbaseexchange"
END = utc(2024, 1, 3)  # 48 hourly bars from START
HOUR = 3600
INSTRUMENTS = "/api/v1/instruments/"

API_KEY = "ccxtKEY7QXW3SECRETKEYID"
SECRET = "c2VjcmV0+Zk\\3Lm/p'Vx=Nd\"Y7hF2sG5cB=="
PASSPHRASE = "pass-phrase-9f8e7d"


@pytest.fixture(autouse=True)
def local_exchange(local_coinbase):
    return local_coinbase


def expected(start=START, end=END, step=HOUR) -> pd.DataFrame:
    rows = [candle(t, step) for t in range(int(start.timestamp()), int(end.timestamp()), step)]
    return pd.DataFrame({
        "ts": pd.to_datetime([r[0] for r in rows], unit="s", utc=True).astype("datetime64[ns, UTC]"),
        "open": [r[3] for r in rows], "high": [r[2] for r in rows], "low": [r[1] for r in rows],
        "close": [r[4] for r in rows], "volume": [r[5] for r in rows],
    })


def candle_requests(httpserver) -> int:
    return sum(1 for request, _ in httpserver.log if CANDLES.match(request.path))


_ccxt = ProviderFetch("ccxt", symbol="BTC-USD", timeframe="1h", start=START, end=END, calendar="24/7",
                      asset_class="crypto", exchange=EXCHANGE)
fetch, fetched, fetch_error = _ccxt.fetch, _ccxt.fetched, _ccxt.fetch_error


def instrument(symbol="BTC-USD", **options):
    return add_instrument(symbol, provider="ccxt", exchange=EXCHANGE, **options)


def backfill(symbol="BTC-USD", timeframe="1h", start=START, end=END):
    result = run_backfill(symbol, timeframe, start=start, end=end)
    return result, BackfillState.objects.get(execution_id=result.execution_id)


def drain(httpserver, requests: int) -> None:
    """Wait until the server has answered ``requests`` requests: a request the client gave up on
    (timeout) is still queued at the single-threaded server and must not leak into the next test."""
    deadline = time.monotonic() + 5
    while len(httpserver.log) < requests and time.monotonic() < deadline:
        time.sleep(0.01)


def reply(status: int, body: str = "", headers: dict | None = None) -> Response:
    return Response(body, status=status, headers=headers or {}, content_type="application/json")


# --- behaviour ------------------------------------------------------------------------------------


@end_to_end
class TestMultiPageBackfill:
    def test_a_multi_page_series_round_trips_exactly_into_candles(self, httpserver):
        fake = serve(httpserver)
        instrument(limit=10)
        result, state = backfill()
        assert result.status == "completed" and state.status == "completed", result.error
        assert_same_bars(stored_bars("BTC-USD", "1h"), expected())
        assert state.records_inserted == 48 and state.invalid_bars == 0 and state.provider == "ccxt"
        assert len(fake.candle_queries()) == 5  # 10 + 10 + 10 + 10 + 8
        # Every request went to the local server: the markets (once) and the candle pages.
        assert sorted(r.path for r, _ in httpserver.log if not CANDLES.match(r.path)) == ["/currencies", "/products"]


class TestPaging:
    def test_it_asks_coinbase_for_consecutive_windows_of_limit_bars(self, httpserver):
        fake = serve(httpserver)
        pages = fetch(limit=20)
        assert [len(p) for p in pages] == [20, 20, 8]
        starts = [pd.Timestamp(q["start"]) for q in fake.candle_queries()]
        assert starts == [pd.Timestamp(START) + pd.Timedelta(hours=h) for h in (0, 20, 40)]
        assert {q["granularity"] for q in fake.candle_queries()} == {"3600"}
        assert {q["product"] for q in fake.candle_queries()} == {"BTC-USD"}

    def test_by_default_a_page_is_the_exchanges_maximum_as_ccxt_declares_it(self, httpserver):
        fake = serve(httpserver)
        frame = fetched(start=START, end=utc(2024, 1, 15))  # 336 hours: 300 + 36
        pd.testing.assert_frame_equal(frame, expected(START, utc(2024, 1, 15)), check_exact=True)
        assert len(fake.candle_queries()) == 2

    def test_it_stops_at_the_request_end(self, httpserver):
        fake = serve(httpserver)  # the exchange has bars past the end
        frame = fetched(limit=10, end=utc(2024, 1, 1, 15))
        pd.testing.assert_frame_equal(frame, expected(START, utc(2024, 1, 1, 15)), check_exact=True)
        assert len(fake.candle_queries()) == 2

    def test_daily_candles_open_at_00_00_utc(self, httpserver):
        serve(httpserver)
        frame = fetched(timeframe="1d", start=utc(2024, 1, 1), end=utc(2024, 1, 8), limit=3)
        pd.testing.assert_frame_equal(frame, expected(utc(2024, 1, 1), utc(2024, 1, 8), 86400), check_exact=True)

    def test_a_window_without_bars_does_not_end_the_fetch(self, httpserver):
        quiet = (int(utc(2024, 1, 1, 10).timestamp()), int(utc(2024, 1, 2, 6).timestamp()))  # 20 h without trades
        fake = serve(httpserver, FakeCoinbase(edit=lambda rows: [r for r in rows if not quiet[0] <= r[0] < quiet[1]]))
        frame = fetched(limit=10)
        full = expected()
        kept = ~full["ts"].between(pd.Timestamp(utc(2024, 1, 1, 10)), pd.Timestamp(utc(2024, 1, 2, 5)))
        pd.testing.assert_frame_equal(frame, full[kept].reset_index(drop=True), check_exact=True)
        assert len(fake.candle_queries()) == 5

    def test_a_range_before_the_listing_walks_on_to_the_first_bars(self, httpserver):
        serve(httpserver, FakeCoinbase(first=utc(2024, 1, 2)))
        frame = fetched(limit=10)
        pd.testing.assert_frame_equal(frame, expected(utc(2024, 1, 2), END), check_exact=True)


class TestCursorThatDoesNotAdvance:
    @end_to_end
    def test_a_server_that_ignores_start_ends_safely_after_one_pass_over_the_range(self, httpserver):
        serve_markets(httpserver)
        first_page = [candle(int(START.timestamp()) + i * HOUR, HOUR) for i in range(10)][::-1]
        httpserver.expect_request(CANDLES).respond_with_json(first_page)  # whatever start it is asked for
        instrument(limit=10)
        result, state = backfill()
        assert result.status == "completed", result.error
        assert_same_bars(stored_bars("BTC-USD", "1h"), expected(START, utc(2024, 1, 1, 10)))
        assert candle_requests(httpserver) == 5  # never more requests than windows in the range
        # The bars it never sent are missing, for the gap detector to report.

    def test_a_page_before_the_cursor_fails_instead_of_looping(self, httpserver, monkeypatch):
        # ccxt's classes drop bars before ``since``; one that did not would hand back the same page
        # forever. Stand-in for such a class: fetch_ohlcv ignoring ``since``.
        serve_markets(httpserver)
        page = [[int(START.timestamp()) * 1000, 1.0, 2.0, 0.5, 1.5, 3.0]]
        monkeypatch.setattr("ccxt.coinbaseexchange.fetch_ohlcv", lambda self, *a, **k: page)
        error = fetch_error(limit=10, start=utc(2024, 1, 1, 5))
        assert "pagination cursor did not advance" in str(error)


class TestRetries:
    @pytest.mark.parametrize("status", [500, 502, 503, 504])
    def test_a_5xx_is_retried_then_the_fetch_succeeds(self, httpserver, sleeps, status):
        serve(httpserver, FakeCoinbase(replies=[reply(status, "<html>Bad Gateway</html>")]))
        assert len(fetched()) == 48
        assert candle_requests(httpserver) == 2 and len(sleeps) == 1

    def test_the_backoff_is_the_http_providers(self, httpserver, sleeps, settings):
        settings.PROVIDER_HTTP_BACKOFF_BASE = 2
        serve(httpserver, FakeCoinbase(replies=[reply(503) for _ in range(3)]))
        fetch()
        assert sleeps == [1.5, 3.0, 6.0]  # base × 2^n with jitter 0.5: ¾ of each doubling

    def test_a_timeout_is_retried(self, httpserver, settings, monkeypatch):
        settings.PROVIDER_HTTP_READ_TIMEOUT = 0.3
        serve_markets(httpserver)
        with SlowFirst(FakeCoinbase(), monkeypatch) as handler:
            httpserver.expect_request(CANDLES).respond_with_handler(handler)
            assert len(fetched()) == 48

    @pytest.mark.parametrize(("status", "kind"), [(429, "RateLimitExceeded"), (418, "DDoSProtection")])
    def test_a_rate_limit_or_ddos_reply_is_retried(self, httpserver, sleeps, caplog, status, kind):
        serve(httpserver, FakeCoinbase(replies=[reply(status, '{"message":"Public rate limit exceeded"}')]))
        with caplog.at_level(logging.WARNING, logger="integrity.providers.ccxt"):
            assert len(fetched()) == 48
        assert len(sleeps) == 1 and candle_requests(httpserver) == 2
        assert kind in caplog.text and "retry 1/4" in caplog.text

    def test_a_429_waits_for_its_retry_after(self, httpserver, sleeps):
        serve(httpserver, FakeCoinbase(replies=[reply(429, '{"message":"Public rate limit exceeded"}',
                                                      {"Retry-After": "3"})]))
        fetch()
        assert sleeps == [3.0]

    def test_a_retry_after_beyond_the_cap_fails_at_once(self, httpserver, sleeps):
        serve(httpserver, FakeCoinbase(replies=[reply(429, '{"message":"slow down"}', {"Retry-After": "3600"})]))
        error = fetch_error()
        assert "asked to wait 3600s before retrying (Retry-After)" in str(error) and sleeps == []

    def test_retries_are_bounded(self, httpserver, sleeps, settings):
        settings.PROVIDER_HTTP_MAX_RETRIES = 2
        serve_markets(httpserver)
        httpserver.expect_request(CANDLES).respond_with_data("<html>down</html>", status=503)
        error = fetch_error()
        assert candle_requests(httpserver) == 3 and len(sleeps) == 2
        assert "ExchangeNotAvailable" in str(error) and "giving up after 3 attempt(s)" in str(error)

    def test_the_markets_request_is_retried_too(self, httpserver, sleeps):
        outage = iter([reply(502)])
        httpserver.expect_request("/currencies").respond_with_handler(
            lambda request: next(outage, None) or Response(json.dumps(CURRENCIES), content_type="application/json"))
        httpserver.expect_request("/products").respond_with_json(PRODUCTS)
        httpserver.expect_request(CANDLES).respond_with_handler(FakeCoinbase())
        assert len(fetched()) == 48 and len(sleeps) == 1

    def test_an_exchange_error_is_named_and_not_retried(self, httpserver, sleeps):
        serve_markets(httpserver)
        httpserver.expect_request(CANDLES).respond_with_json({"message": "Unsupported granularity"}, status=400)
        error = fetch_error()
        assert candle_requests(httpserver) == 1 and sleeps == []
        message = str(error)
        assert message.startswith("[ccxt] coinbaseexchange fetch_ohlcv: rejected by the exchange (ExchangeError:")
        assert "Unsupported granularity" in message and "not retried" in message
        assert "path=/products/BTC-USD/candles" in message
        assert "granularity=" not in message and httpserver.host not in message  # no query, no host

    def test_ccxt_rate_limiting_is_on_by_default_and_paces_every_request(self, httpserver, settings, monkeypatch):
        import ccxt

        del settings.CCXT_ENABLE_RATE_LIMIT
        throttled: list[float] = []
        monkeypatch.setattr(ccxt.Exchange, "throttle", lambda self, cost=None: throttled.append(cost))
        serve(httpserver)
        fetch(limit=10)
        assert len(throttled) == len(httpserver.log) == 7  # currencies, products, 5 candle pages


@end_to_end
class TestFailedExecutions:
    def test_a_market_the_exchange_does_not_list_fails_naming_it(self, httpserver):
        serve(httpserver)
        instrument("DOGE-USD")
        result, state = backfill("DOGE-USD")
        assert result.status == "failed" and state.status == "failed"
        assert state.error_message.startswith(
            "[ccxt] coinbaseexchange does not list the market DOGE/USD (instrument DOGE-USD); set the option market")
        assert candle_requests(httpserver) == 0

    def test_a_persistent_outage_fails_the_execution_with_the_retries_named(self, httpserver, settings):
        settings.PROVIDER_HTTP_MAX_RETRIES = 1
        serve_markets(httpserver)
        httpserver.expect_request(CANDLES).respond_with_data("<html>502 Bad Gateway</html>", status=502)
        instrument()
        result, state = backfill()
        assert state.status == "failed"
        assert "ExchangeNotAvailable" in state.error_message
        assert "giving up after 2 attempt(s)" in state.error_message
        assert "path=/products/BTC-USD/candles" in state.error_message and httpserver.host not in state.error_message

    def test_keys_never_appear_in_error_messages_failure_tracking_or_logs(self, httpserver, settings, caplog):
        settings.CCXT_COINBASEEXCHANGE_API_KEY = API_KEY
        settings.CCXT_COINBASEEXCHANGE_SECRET = SECRET
        settings.CCXT_COINBASEEXCHANGE_PASSWORD = PASSPHRASE
        serve_markets(httpserver)
        echo = json.dumps({"message": f"bad request for key {API_KEY} secret {SECRET} passphrase {PASSPHRASE}"})
        httpserver.expect_request(CANDLES).respond_with_data(echo, status=400, content_type="application/json")
        instrument()
        with caplog.at_level(logging.DEBUG):
            result, state = backfill()
        assert state.status == "failed" and "***" in state.error_message
        tracked = SymbolFailureTracking.objects.get(symbol="BTC-USD")
        texts = [state.error_message, result.error, tracked.last_error or "", caplog.text,
                 *(r.getMessage() for r in caplog.records)]
        for secret in (API_KEY, SECRET, PASSPHRASE, json.dumps(SECRET)[1:-1]):
            assert not any(secret in text for text in texts), secret


class TestConfiguration:
    def test_a_timeframe_the_exchange_does_not_offer_is_refused_before_any_request(self, httpserver):
        serve(httpserver)
        with pytest.raises(ProviderConfigError) as caught:
            fetch(timeframe="4h")
        assert str(caught.value) == ("[ccxt] exchange coinbaseexchange has no 4h candles; of our timeframes it offers "
                                     "1m, 5m, 15m, 1h, 1d (ccxt: 1m, 5m, 15m, 1h, 6h, 1d)")
        assert httpserver.log == []

    def test_the_market_option_overrides_the_symbol_mapping(self, httpserver):
        fake = serve(httpserver)
        assert len(fetched(symbol="ETHER", market="ETH/USD", limit=100)) == 48
        assert {q["product"] for q in fake.candle_queries()} == {"ETH-USD"}

    def test_an_instrument_without_the_option_uses_the_default_exchange_setting(self, httpserver, settings):
        settings.CCXT_DEFAULT_EXCHANGE = EXCHANGE
        serve(httpserver)
        request = FetchRequest("BTC-USD", "1h", START, END, options={})
        assert len(pd.concat(get_provider("ccxt").fetch(request))) == 48

    def test_an_unmappable_symbol_is_refused_before_any_request(self, httpserver):
        with pytest.raises(ProviderConfigError, match="cannot map 'BTCUSD' to a ccxt market.*set the option market"):
            fetch(symbol="BTCUSD")
        assert httpserver.log == []

    def test_markets_are_loaded_once_per_process_until_they_expire(self, httpserver, settings):
        serve(httpserver)
        fetch(limit=100)
        fetch(limit=100)
        assert sum(1 for r, _ in httpserver.log if r.path == "/products") == 1
        settings.CCXT_MARKETS_TTL_SECONDS = 0
        fetch(limit=100)
        assert sum(1 for r, _ in httpserver.log if r.path == "/products") == 2

    def test_without_a_setting_ccxts_own_urls_are_kept(self):
        import ccxt

        assert api_urls(ccxt.coinbaseexchange(), None) == {"public": "https://api.exchange.coinbase.com",
                                                            "private": "https://api.exchange.coinbase.com"}

    def test_a_setting_replaces_every_origin_and_keeps_the_paths(self):
        import ccxt

        rewritten = api_urls(ccxt.kraken(), "http://127.0.0.1:8080/proxy")
        assert rewritten["public"] == "http://127.0.0.1:8080/proxy"
        assert all(url.startswith("http://127.0.0.1:8080/proxy") for url in rewritten.values())
        assert api_urls(ccxt.bitstamp(), "http://127.0.0.1:8080")["public"] == "http://127.0.0.1:8080/api"

    def test_a_base_url_option_on_another_host_is_refused_before_any_request(self, httpserver, settings):
        setattr(settings, URL_SETTING, "http://127.0.0.1:9")  # nothing listens there
        serve(httpserver)
        with pytest.raises(ProviderConfigError, match="or point at a host listed in PROVIDER_ALLOWED_HOSTS"):
            fetch(base_url=httpserver.url_for(""))
        assert httpserver.log == []

    def test_a_base_url_option_on_a_host_the_operator_allows_is_used(self, httpserver, settings):
        setattr(settings, URL_SETTING, "http://127.0.0.1:9")
        settings.PROVIDER_ALLOWED_HOSTS = [httpserver.host]
        serve(httpserver)
        assert len(fetched(base_url=httpserver.url_for(""))) == 48

    def test_keys_go_only_over_https_or_to_a_loopback_host(self, settings):
        settings.CCXT_KRAKEN_API_KEY = API_KEY
        settings.CCXT_KRAKEN_API_URL = "http://md-proxy.internal:8080"
        with pytest.raises(ProviderConfigError, match="would send the API keys over plain http") as caught:
            fetch(exchange="kraken")
        assert API_KEY not in str(caught.value)

    def test_parse_ohlcv_keeps_a_bad_number_for_validation_and_refuses_a_bad_shape(self):
        frame = parse_ohlcv([[1704067200000, 1.0, None, 0.5, "n/a", 3.0]])
        assert frame["high"].isna().all() and frame["close"].isna().all() and frame["open"].iloc[0] == 1.0
        with pytest.raises(ValueError, match="candle 0 is not"):
            parse_ohlcv([[1704067200000, 1.0]])
        with pytest.raises(ValueError, match="time of candle 0"):
            parse_ohlcv([["2024-01-01", 1, 1, 1, 1, 1]])


class TestOptionValidation:
    def test_the_documented_options_are_accepted(self, settings):
        settings.PROVIDER_ALLOWED_HOSTS = ["md-proxy.internal"]
        validate_options({"exchange": "coinbaseexchange", "market": "BTC/USD", "limit": 300,
                          "base_url": "https://md-proxy.internal/coinbase"}, symbol="BTC-USD")
        validate_options({"exchange": "binance", "market": "BTC/USDT"}, symbol="BTC-USD")

    @pytest.mark.parametrize(("options", "message"), [
        ({}, "missing option exchange"),
        ({"exchange": "nosuchexchange"}, "exchange 'nosuchexchange' is not a ccxt exchange id"),
        ({"exchange": "Kraken"}, "is not a ccxt exchange id"),
        ({"exchange": ["kraken"]}, "is not a ccxt exchange id"),
        ({"exchange": "kraken", "limt": 5}, "unknown option(s) limt; ccxt accepts exchange, market, base_url, limit"),
        ({"exchange": "kraken", "apiKey": "x"}, "unknown option(s) apiKey"),
        ({"exchange": "coinbaseexchange", "limit": 301}, "limit must be an integer 1..300"),
        ({"exchange": "kraken", "market": "BTC USD"}, "market must be a ccxt unified symbol"),
        ({"exchange": "kraken", "base_url": "https://evil.example"}, "is not allowed"),
    ])
    def test_bad_options_are_refused_naming_the_problem(self, options, message):
        with pytest.raises(ProviderConfigError) as caught:
            validate_options(options, symbol="BTC-USD")
        assert message in str(caught.value)


@pytest.mark.django_db
class TestTheApi:
    BODY = {"symbol": "BTC-USD", "asset_class": "crypto", "calendar": "24/7", "timeframes": ["1h"],
            "provider": "ccxt"}

    @pytest.fixture
    def client(self):
        from tests.helpers import client_for, user_with

        return client_for(user_with("view_instrument", "add_instrument", "change_instrument"))

    def test_it_accepts_an_exchange_by_id(self, client):
        response = client.post(INSTRUMENTS, {**self.BODY, "provider_options": {"exchange": "kraken"}}, format="json")
        assert response.status_code == 201, response.content
        assert Instrument.objects.get().provider_options == {"exchange": "kraken"}

    @pytest.mark.parametrize(("options", "message"), [
        ({"exchange": "nosuchexchange"}, "is not a ccxt exchange id"),
        ({"exchange": "kraken", "limt": 5}, "unknown option(s) limt"),
        ({"exchange": "kraken", "base_url": "https://evil.example"}, "or point at a host listed in PROVIDER_ALLOWED_HOSTS"),
    ])
    def test_it_refuses_bad_options_with_a_400(self, client, options, message):
        response = client.post(INSTRUMENTS, {**self.BODY, "provider_options": options}, format="json")
        assert response.status_code == 400
        [text] = response.json()["provider_options"]
        assert message in text and not Instrument.objects.exists()


@end_to_end
class TestBackfillCommand:
    def test_backfill_provider_ccxt_registers_and_fills_a_new_symbol(self, httpserver, settings):
        settings.CCXT_DEFAULT_EXCHANGE = EXCHANGE
        fake = serve(httpserver, FakeCoinbase(first=utc(2015, 1, 1)))  # bars up to now, as the real API
        out = StringIO()
        call_command("backfill", "--provider", "ccxt", "--symbols", "BTC-USD", "--timeframe", "1h", "--format",
                     "json", stdout=out)
        [row] = json.loads(out.getvalue())
        assert row["status"] == "completed", row
        lookback_hours = settings.BACKFILL_LOOKBACK_DAYS["1h"] * 24
        assert lookback_hours - 1 <= row["inserted"] <= lookback_hours
        registered = Instrument.objects.get(symbol="BTC-USD")
        assert (registered.provider, registered.asset_class, registered.calendar) == ("ccxt", "crypto", "24/7")
        assert len(fake.candle_queries()) == -(-row["inserted"] // 300)  # windows of 300 bars


def test_the_step_of_every_offered_timeframe_matches_ours():
    # ccxt and we name the same bar lengths the same way.
    import ccxt

    for ours, theirs in TIMEFRAMES.items():
        assert ccxt.Exchange.parse_timeframe(theirs) == timeframe_seconds(ours)
