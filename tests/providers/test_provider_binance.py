"""The Binance klines provider against a real local HTTP server that answers like Binance's
/api/v3/klines (startTime/endTime/limit honoured, numbers as strings).

Most behaviours are checked on the provider itself (``fetch`` → pages); the classes marked
``end_to_end`` go through ``run_backfill`` / ``manage.py backfill`` and the database (transactional:
the backfill commits per batch), and are kept few because each costs a database flush."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from werkzeug import Response

from integrity.backfill import run_backfill
from integrity.models import BackfillState, Candle, Instrument
from integrity.providers import FetchRequest, ProviderConfigError, ProviderError, get_provider
from integrity.providers.binance import binance_symbol, parse_klines, validate_options
from integrity.timeframes import timeframe_seconds
from tests.exchanges import KLINES, START, FakeBinance, frame_of, kline
from tests.exchanges import serve_binance as serve
from tests.helpers import (
    Hang,
    ProviderFetch,
    SlowFirst,
    add_instrument,
    assert_same_bars,
    run_backfill_command,
    stored_bars,
    utc,
)

# The classes that touch the database (backfill runs, stored candles, executions).
end_to_end = pytest.mark.django_db(transaction=True)

END = utc(2024, 1, 3)  # 48 hourly klines from START


@pytest.fixture(autouse=True)
def _local_binance(local_binance):
    pass




_binance = ProviderFetch("binance", symbol="BTC-USD", timeframe="1h", start=START, end=END, calendar="24/7",
                         asset_class="crypto")
fetch, fetched, fetch_error = _binance.fetch, _binance.fetched, _binance.fetch_error


def instrument(httpserver, symbol="BTC-USD", **options):
    return add_instrument(symbol, provider="binance", base_url=httpserver.url_for(""), **options)


def backfill(symbol="BTC-USD", timeframe="1h", start=START, end=END, **kwargs):
    result = run_backfill(symbol, timeframe, start=start, end=end, **kwargs)
    return result, BackfillState.objects.get(execution_id=result.execution_id)


def expected(start=START, end=END, step="1h") -> pd.DataFrame:
    step_ms = timeframe_seconds(step) * 1000
    lo, hi = int(start.timestamp() * 1000), int(end.timestamp() * 1000)
    return frame_of([kline(t, step_ms) for t in range(lo, hi, step_ms)])


class TestMultiPage:
    def test_it_yields_every_kline_of_a_multi_page_range(self, httpserver):
        fake = serve(httpserver, FakeBinance())
        pages = fetch(httpserver, limit=10)
        assert [len(p) for p in pages] == [10, 10, 10, 10, 8]
        pd.testing.assert_frame_equal(pd.concat(pages, ignore_index=True), expected(), check_exact=True)
        assert len(fake.queries) == 5

    def test_it_walks_start_time_forward_by_the_last_open_time_plus_one_interval(self, httpserver):
        fake = serve(httpserver, FakeBinance())
        fetch(httpserver, limit=20)
        hour = 3_600_000
        start_ms, end_ms = int(START.timestamp() * 1000), int(END.timestamp() * 1000)
        assert [int(q["startTime"]) for q in fake.queries] == [start_ms, start_ms + 20 * hour, start_ms + 40 * hour]
        assert {q["endTime"] for q in fake.queries} == {str(end_ms - 1)}  # Binance's endTime is inclusive
        assert {(q["symbol"], q["interval"], q["limit"]) for q in fake.queries} == {("BTCUSDT", "1h", "20")}

    def test_it_asks_for_the_documented_maximum_page_size_by_default(self, httpserver):
        fake = serve(httpserver, FakeBinance())
        fetch(httpserver)
        assert [q["limit"] for q in fake.queries] == ["1000"]

    def test_daily_klines_keep_their_00_00_utc_open_time(self, httpserver):
        serve(httpserver, FakeBinance())
        frame = fetched(httpserver, timeframe="1d", start=utc(2024, 1, 1), end=utc(2024, 1, 8), limit=3)
        pd.testing.assert_frame_equal(frame, expected(utc(2024, 1, 1), utc(2024, 1, 8), "1d"), check_exact=True)


@end_to_end
class TestMultiPageBackfill:
    def test_it_stores_every_kline_of_a_multi_page_range_exactly(self, httpserver):
        fake = serve(httpserver, FakeBinance())
        instrument(httpserver, limit=10)
        result, state = backfill()
        assert result.status == "completed", result.error
        assert_same_bars(stored_bars("BTC-USD", "1h"), expected())
        assert state.records_inserted == 48 and state.invalid_bars == 0 and state.provider == "binance"
        assert len(fake.queries) == 5  # 10 + 10 + 10 + 10 + 8


class TestEndOfData:
    def test_an_empty_page_ends_the_fetch(self, httpserver):
        fake = serve(httpserver, FakeBinance(last=utc(2024, 1, 1, 19)))  # the pair stopped trading at 19:00
        frame = fetched(httpserver, limit=10)
        pd.testing.assert_frame_equal(frame, expected(START, utc(2024, 1, 1, 20)), check_exact=True)
        assert len(fake.queries) == 3  # 10, 10, then an empty page

    def test_a_short_page_does_not_end_the_fetch(self, httpserver):
        fake = FakeBinance()

        def capped_at_7(request):  # a server (or proxy) with a lower cap than the limit we asked for
            reply = fake(request)
            return Response(json.dumps(json.loads(reply.get_data())[:7]), content_type="application/json")

        httpserver.expect_request(KLINES).respond_with_handler(capped_at_7)
        assert len(fetched(httpserver, limit=10)) == 48

    def test_a_range_past_the_last_kline_is_one_empty_request(self, httpserver):
        fake = serve(httpserver, FakeBinance(last=utc(2023, 12, 31)))
        assert fetch(httpserver) == [] and len(fake.queries) == 1


class TestSymbolMapping:
    @pytest.mark.parametrize(("ours", "theirs"), [("BTC-USD", "BTCUSDT"), ("eth/btc", "ETHBTC"),
                                                  ("BNBUSDT", "BNBUSDT"), ("SOL-EUR", "SOLEUR")])
    def test_the_default_rule(self, ours, theirs):
        assert binance_symbol(ours) == theirs

    def test_provider_symbol_overrides_the_rule(self, httpserver):
        fake = serve(httpserver, FakeBinance())
        fetch(httpserver, provider_symbol="BTCFDUSD")
        assert {q["symbol"] for q in fake.queries} == {"BTCFDUSD"}

    def test_an_unmappable_symbol_is_a_config_error_before_any_request(self, httpserver):
        with pytest.raises(ProviderConfigError, match="provider_symbol"):
            fetch(httpserver, symbol="BTC USD?")
        assert len(httpserver.log) == 0


class TestBaseUrl:
    def test_the_setting_is_used_when_there_is_no_base_url_option(self, httpserver):
        serve(httpserver, FakeBinance())
        assert len(fetched(httpserver, base_url=None)) == 48

    def test_the_option_wins_over_the_setting_when_the_operator_allows_its_host(self, httpserver, settings):
        settings.BINANCE_BASE_URL = "http://127.0.0.1:9"  # nothing listens there
        settings.PROVIDER_ALLOWED_HOSTS = [httpserver.host]
        serve(httpserver, FakeBinance())
        assert len(fetched(httpserver)) == 48

    def test_an_option_on_another_host_is_refused_before_any_request(self, httpserver, settings):
        settings.BINANCE_BASE_URL = "http://127.0.0.1:9"
        serve(httpserver, FakeBinance())
        with pytest.raises(ProviderConfigError, match="or point at a host listed in PROVIDER_ALLOWED_HOSTS"):
            fetch(httpserver)
        assert len(httpserver.log) == 0

    def test_the_default_is_the_public_api(self, settings):
        del settings.BINANCE_BASE_URL
        from integrity.providers.options import resolve_base_url

        assert resolve_base_url({}, "BINANCE_BASE_URL", "https://api.binance.com", "binance") == \
            "https://api.binance.com"


class TestRateLimits:
    def test_a_429_is_retried_after_the_retry_after_seconds(self, httpserver, sleeps):
        httpserver.expect_ordered_request(KLINES).respond_with_data(
            '{"code":-1003,"msg":"Too many requests"}', status=429, headers={"Retry-After": "3"})
        serve(httpserver, FakeBinance())
        assert len(fetched(httpserver)) == 48
        assert sleeps == [3.0]

    def test_it_waits_for_the_next_minute_when_the_used_weight_nears_the_limit(self, httpserver, sleeps, settings):
        settings.BINANCE_WEIGHT_LIMIT = 6000
        settings.BINANCE_WEIGHT_THRESHOLD = 0.8
        serve(httpserver, FakeBinance(weight=5000))  # 5000 >= 0.8 × 6000
        assert len(fetched(httpserver, limit=24)) == 48
        [wait] = sleeps  # between the two pages, not after the last one
        assert 1 <= wait <= 61

    def test_it_does_not_wait_below_the_weight_threshold(self, httpserver, sleeps):
        serve(httpserver, FakeBinance(weight=1200))
        fetch(httpserver, limit=10)
        assert sleeps == []

    def test_requests_are_paced_by_the_client_side_rate(self, httpserver, sleeps, settings):
        settings.BINANCE_MAX_REQUESTS_PER_SECOND = 1  # slots 1 s apart: the test never really waits
        serve(httpserver, FakeBinance())
        fetch(httpserver, limit=16)
        assert len(sleeps) == 2 and 0 < sleeps[0] <= 1 < sleeps[1] <= 2

    def test_a_418_ban_fails_at_once_without_retrying(self, httpserver, sleeps):
        httpserver.expect_request(KLINES).respond_with_data(
            '{"code":-1003,"msg":"Way too many requests; IP banned until 1704070000000."}', status=418,
            headers={"Retry-After": "1800"})
        error = fetch_error(httpserver)
        assert len(httpserver.log) == 1 and sleeps == []
        assert error.status == 418
        assert str(error).startswith("[binance] IP banned by Binance (HTTP 418")
        assert "retry after 1800s" in str(error) and "IP banned until" in error.body_excerpt


class TestServerErrors:
    def test_a_5xx_is_retried_then_the_fetch_succeeds(self, httpserver):
        httpserver.expect_ordered_request(KLINES).respond_with_data("<html>502 Bad Gateway</html>", status=502)
        httpserver.expect_ordered_request(KLINES).respond_with_data("", status=503)
        serve(httpserver, FakeBinance())
        assert len(fetched(httpserver)) == 48
        assert len(httpserver.log) == 3

    def test_a_400_is_not_retried(self, httpserver, sleeps):
        httpserver.expect_request(KLINES).respond_with_data('{"code":-1121,"msg":"Invalid symbol."}', status=400)
        error = fetch_error(httpserver)
        assert len(httpserver.log) == 1 and sleeps == []
        assert str(error).startswith("[binance] rejected by Binance: HTTP 400: Invalid symbol. (code -1121)")

    def test_a_timeout_is_retried(self, httpserver, settings, monkeypatch):
        settings.PROVIDER_HTTP_READ_TIMEOUT = 0.3
        with SlowFirst(FakeBinance(), monkeypatch) as handler:
            httpserver.expect_request(KLINES).respond_with_handler(handler)
            assert len(fetched(httpserver)) == 48

    def test_timeouts_on_every_attempt_fail_with_a_clear_error(self, httpserver, settings):
        settings.PROVIDER_HTTP_READ_TIMEOUT = 0.2
        settings.PROVIDER_HTTP_MAX_RETRIES = 1
        hang = Hang()
        httpserver.expect_request(KLINES).respond_with_handler(hang)
        try:
            error = fetch_error(httpserver)
        finally:
            hang.release(httpserver, 2)
        assert "read timeout (0.2s); giving up after 2 attempt(s)" in str(error)
        assert error.path == KLINES and error.status is None


@end_to_end
class TestFailedExecution:
    def test_the_error_message_names_path_status_and_body_but_no_query(self, httpserver):
        httpserver.expect_request(KLINES).respond_with_data('{"code":-1121,"msg":"Invalid symbol."}', status=400,
                                                            content_type="application/json")
        instrument(httpserver)
        result, state = backfill()
        assert result.status == "failed" and state.status == "failed"
        message = state.error_message
        assert message.startswith("[binance] rejected by Binance: HTTP 400: Invalid symbol. (code -1121)")
        assert "path=/api/v3/klines" in message and "status=400" in message
        assert "body='{\"code\":-1121" in message
        assert "startTime" not in message and "BTCUSDT" not in message  # no query string

    def test_a_truncated_page_fails_the_execution_and_stores_nothing_from_it(self, httpserver):
        fake = FakeBinance()

        def truncate_second(request):
            reply = fake(request)
            if len(fake.queries) == 2:
                return Response(reply.get_data()[:100], content_type="application/json")
            return reply

        httpserver.expect_request(KLINES).respond_with_handler(truncate_second)
        instrument(httpserver, limit=10)
        result, state = backfill(batch_size=5)
        assert result.status == "failed" and "malformed JSON" in state.error_message
        assert "path=/api/v3/klines status=200" in state.error_message
        # The first page's batches were committed before the bad page; nothing of the bad page was.
        assert_same_bars(stored_bars("BTC-USD", "1h"), expected(START, utc(2024, 1, 1, 10)))


class TestMalformedReplies:
    @pytest.mark.parametrize(("body", "message"), [
        ("<html>Service Unavailable</html>", "malformed JSON"),
        ('[[1704067200000,"42000.00","42010.50","41990.75","42001.25","12.5",17040', "malformed JSON"),
        ('{"klines": []}', "expected a JSON array of klines, got a JSON object"),
        ('[[1704067200000,"42000.00","42010.50"]]', "kline 0 is not an array of at least 6 fields"),
        ('[{"t": 1704067200000}]', "kline 0 is not an array of at least 6 fields"),
        ('[["2024-01-01","42000.00","42010.50","41990.75","42001.25","12.5"]]', "open time of kline 0"),
        ('[[1704067200000,{"p":1},"42010.50","41990.75","42001.25","12.5"]]', "open of kline 0 is a JSON object"),
        ('[[9999999999999999,"1","1","1","1","1"]]', "open time out of range"),
    ], ids=["html", "truncated", "object", "short-kline", "kline-object", "string-open-time", "object-price",
            "absurd-time"])
    def test_an_unusable_reply_fails_the_fetch_without_retrying(self, httpserver, body, message):
        httpserver.expect_request(KLINES).respond_with_data(body, content_type="application/json")
        error = fetch_error(httpserver)
        assert message in str(error) and error.path == KLINES
        assert len(httpserver.log) == 1  # a complete but unusable reply is not retried


@end_to_end
class TestInvalidBars:
    def test_bad_klines_in_a_good_page_are_rejected_and_the_rest_stored(self, httpserver):
        def corrupt(rows):
            for row in rows:
                if row[0] == int(utc(2024, 1, 1, 5).timestamp() * 1000):
                    row[2], row[3] = row[3], row[2]  # high < low
                if row[0] == int(utc(2024, 1, 2, 7).timestamp() * 1000):
                    row[4] = "n/a"  # a non-numeric close
            return rows

        serve(httpserver, FakeBinance(edit=corrupt))
        instrument(httpserver)
        result, state = backfill()
        assert result.status == "completed", result.error
        good = expected()
        good = good[~good["ts"].isin([pd.Timestamp(utc(2024, 1, 1, 5)), pd.Timestamp(utc(2024, 1, 2, 7))])]
        assert_same_bars(stored_bars("BTC-USD", "1h"), good)
        assert state.invalid_bars == 2 and state.records_inserted == 46
        assert result.invalid_reasons["high_below_low"] == 1 and result.invalid_reasons["non_finite"] == 1


class TestPaginationCursor:
    def test_a_server_that_ignores_start_time_cannot_make_it_loop(self, httpserver):
        step = 3_600_000
        start_ms = int(START.timestamp() * 1000)
        httpserver.expect_request(KLINES).respond_with_json([kline(start_ms + i * step, step) for i in range(10)])
        error = fetch_error(httpserver, limit=10)
        assert "pagination cursor did not advance" in str(error)
        assert len(httpserver.log) == 2

    def test_a_full_page_ending_before_the_requested_start_fails(self, httpserver):
        step = 3_600_000
        old_ms = int(utc(2023, 12, 1).timestamp() * 1000)
        httpserver.expect_request(KLINES).respond_with_json([kline(old_ms + i * step, step) for i in range(10)])
        error = fetch_error(httpserver, limit=10)
        assert "pagination cursor did not advance" in str(error) and len(httpserver.log) == 1


class TestConfiguration:
    def test_an_unknown_timeframe_is_a_config_error(self):
        with pytest.raises(ProviderConfigError, match="no Binance interval"):
            get_provider("binance").fetch(FetchRequest("BTC-USD", "2h", START, END))

    def test_a_limit_above_the_documented_maximum_is_a_config_error(self):
        with pytest.raises(ProviderConfigError, match="limit must be an integer 1..1000"):
            get_provider("binance").fetch(FetchRequest("BTC-USD", "1h", START, END, options={"limit": 5000}))

    @pytest.mark.parametrize("limit", [0, -5, 2.5, "ten", True, [10]])
    def test_a_limit_that_is_not_an_integer_in_range_is_a_config_error(self, limit):
        with pytest.raises(ProviderConfigError, match="limit must be an integer 1..1000"):
            get_provider("binance").fetch(FetchRequest("BTC-USD", "1h", START, END, options={"limit": limit}))

    def test_the_documented_options_are_accepted(self, settings):
        settings.PROVIDER_ALLOWED_HOSTS = ["data-api.binance.vision"]  # another host only when listed
        accepted = {"base_url": "https://data-api.binance.vision", "provider_symbol": "BTCFDUSD", "limit": "500"}
        assert validate_options(accepted, symbol="BTC-USD") is None  # no ProviderConfigError: all pass

    @pytest.mark.parametrize(("options", "message"), [
        ({"seed": 3, "volatility": 0.1}, "unknown option(s) seed, volatility; binance accepts base_url, "
                                         "provider_symbol, limit"),
        ({"limit": 1001}, "limit must be an integer 1..1000"),
        ({"provider_symbol": "BTC USDT"}, "cannot map"),
        ({"base_url": "api.binance.com"}, "base_url must be an http(s) URL"),
        ({"base_url": "https://api.binance.com/?x=1"}, "must not carry a query string"),
    ])
    def test_bad_options_are_a_config_error_naming_the_problem(self, options, message):
        with pytest.raises(ProviderConfigError) as caught:
            validate_options(options, symbol="BTC-USD")
        assert message in str(caught.value)

    def test_an_unmappable_symbol_without_provider_symbol_is_reported(self):
        with pytest.raises(ProviderConfigError, match="set provider_symbol"):
            validate_options({}, symbol="BTC USD?")

    def test_parse_klines_rejects_a_non_list_reply(self):
        with pytest.raises(ProviderError, match="expected a JSON array"):
            parse_klines({"code": 0})


@end_to_end
class TestBackfillCommand:
    ARGS = ("--provider", "binance", "--symbols", "BTC-USD", "--timeframe", "1h", "--asset-class", "crypto",
            "--format", "json")

    def test_backfill_provider_binance_works_against_the_configured_base_url(self, httpserver, settings):
        fake = serve(httpserver, FakeBinance(first=utc(2017, 8, 17)))  # klines up to now, as the real API
        code, out, err = run_backfill_command(*self.ARGS)
        assert code == 0, out + err
        [row] = json.loads(out)
        assert row["status"] == "completed"
        lookback_hours = settings.BACKFILL_LOOKBACK_DAYS["1h"] * 24
        assert lookback_hours - 1 <= row["inserted"] <= lookback_hours
        assert Candle.objects.filter(symbol="BTC-USD", timeframe="1h").count() == row["inserted"]
        assert len(fake.queries) == -(-row["inserted"] // 1000)
        registered = Instrument.objects.get(symbol="BTC-USD")
        assert (registered.provider, registered.asset_class, registered.calendar) == ("binance", "crypto", "24/7")
        # A second run is incremental: from the last stored bar minus the overlap, one request.
        fake.queries.clear()
        code, out, _ = run_backfill_command(*self.ARGS)
        [row] = json.loads(out)
        assert code == 0 and row["inserted"] <= 1 and len(fake.queries) == 1
