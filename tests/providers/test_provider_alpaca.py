"""The Alpaca stock-bars provider against a real local HTTP server that answers like Alpaca's
/v2/stocks/{symbol}/bars (key headers checked, page tokens, RFC 3339 times).

Most behaviours are checked on the provider itself (``fetch`` → pages); the classes marked
``end_to_end`` go through ``run_backfill`` and the database (transactional: the backfill commits per
batch), and are kept few because each costs a database flush."""

from __future__ import annotations

import json
import logging
import time

import httpx
import pandas as pd
import pytest
from werkzeug import Request, Response

from integrity.backfill import run_backfill
from integrity.models import BackfillState
from integrity.providers import FetchRequest, ProviderConfigError, get_provider
from integrity.providers.alpaca import parse_bars_page, rate_limit_wait, to_session_dates, validate_options
from tests.helpers import (
    ALPACA_KEY_ID,
    ALPACA_SECRET,
    ProviderFetch,
    add_instrument,
    assert_same_bars,
    stored_bars,
    utc,
)

# The classes that touch the database (backfill runs, stored candles, executions).
end_to_end = pytest.mark.django_db(transaction=True)

KEY_ID, SECRET = ALPACA_KEY_ID, ALPACA_SECRET
BARS = "/v2/stocks/AAPL/bars"
SESSIONS = ["2024-01-02", "2024-01-03", "2024-01-04", "2024-01-05"]
START, END = utc(2024, 1, 2), utc(2024, 1, 6)


@pytest.fixture(autouse=True)
def local_alpaca(fast_http, alpaca_keys, sleeps, httpserver):
    # The operator points the provider at the local server (options may then name the same endpoint).
    fast_http.ALPACA_DATA_BASE_URL = httpserver.url_for("")
    fast_http.ALPACA_MAX_REQUESTS_PER_SECOND = 0


def bar(t: str, i: int) -> dict:
    o = 185.0 + i * 0.25
    c = o + (i % 5 - 2) * 0.125
    return {"t": t, "o": o, "h": max(o, c) + 0.5, "l": min(o, c) - 0.375, "c": c, "v": 10_000 + i * 17,
            "n": 120 + i, "vw": round((o + c) / 2, 4)}


def hourly_bars(hours_utc=range(14, 21)) -> list[dict]:
    """Regular-session hour bars of XNYS in January (14:30–21:00 UTC): 14:00 … 20:00."""
    stamps = [f"{day}T{hour:02d}:00:00Z" for day in SESSIONS for hour in hours_utc]
    return [bar(t, i) for i, t in enumerate(stamps)]


def daily_bars() -> list[dict]:
    # Alpaca stamps a daily bar at midnight New York: 05:00Z in winter, 04:00Z in summer.
    stamps = [f"{day}T05:00:00Z" for day in SESSIONS] + ["2024-07-01T04:00:00Z", "2024-07-02T04:00:00Z"]
    return [bar(t, i) for i, t in enumerate(stamps)]


def frame_of(bars: list[dict], ts=None) -> pd.DataFrame:
    return pd.DataFrame({
        "ts": pd.to_datetime(ts if ts is not None else [b["t"] for b in bars], utc=True).astype("datetime64[ns, UTC]"),
        **{name: [float(b[k]) for b in bars] for name, k in
           [("open", "o"), ("high", "h"), ("low", "l"), ("close", "c"), ("volume", "v")]},
    })


class FakeAlpaca:
    """Serves ``bars`` with Alpaca's paging: ``limit`` per page and an opaque next_page_token."""

    def __init__(self, bars: list[dict], pages: list[dict] | None = None):
        self.bars = bars
        self.pages = pages  # canned replies, served in order, instead of computed ones
        self.requests: list[Request] = []

    def __call__(self, request: Request) -> Response:
        self.requests.append(request)
        if (request.headers.get("APCA-API-KEY-ID"), request.headers.get("APCA-API-SECRET-KEY")) != (KEY_ID, SECRET):
            return Response(json.dumps({"message": "forbidden."}), status=403, content_type="application/json")
        if self.pages is not None:
            return Response(json.dumps(self.pages[len(self.requests) - 1]), content_type="application/json")
        args = request.args
        start, end = pd.Timestamp(args["start"]), pd.Timestamp(args["end"])  # both inclusive, as Alpaca's
        chosen = [b for b in self.bars if start <= pd.Timestamp(b["t"]) <= end]
        offset = int(args["page_token"].removeprefix("tok-")) if "page_token" in args else 0
        limit = int(args["limit"])
        page = chosen[offset: offset + limit]
        more = offset + limit < len(chosen)
        body = {"bars": page, "symbol": "AAPL", "next_page_token": f"tok-{offset + limit}" if more else None}
        return Response(json.dumps(body), content_type="application/json")


def serve(httpserver, fake: FakeAlpaca, path=BARS) -> FakeAlpaca:
    httpserver.expect_request(path, method="GET").respond_with_handler(fake)
    return fake


_alpaca = ProviderFetch("alpaca", symbol="AAPL", timeframe="1h", start=START, end=END, calendar="XNYS",
                        asset_class="equity")
fetch, fetched, fetch_error = _alpaca.fetch, _alpaca.fetched, _alpaca.fetch_error


def instrument(httpserver, symbol="AAPL", timeframes=("1h",), **options):
    return add_instrument(symbol, asset_class="equity", calendar="XNYS", timeframes=timeframes,
                          provider="alpaca", base_url=httpserver.url_for(""), **options)


def backfill(symbol="AAPL", timeframe="1h", start=START, end=END):
    result = run_backfill(symbol, timeframe, start=start, end=end)
    return result, BackfillState.objects.get(execution_id=result.execution_id)


class TestMultiPage:
    def test_it_follows_page_tokens_to_the_end(self, httpserver):
        data = hourly_bars()
        fake = serve(httpserver, FakeAlpaca(data))
        pages = fetch(httpserver, limit=10)
        assert [len(p) for p in pages] == [10, 10, 8]
        pd.testing.assert_frame_equal(pd.concat(pages, ignore_index=True), frame_of(data), check_exact=True)
        assert [r.args.get("page_token") for r in fake.requests] == [None, "tok-10", "tok-20"]

    def test_it_sends_the_key_headers_and_the_documented_parameters(self, httpserver):
        fake = serve(httpserver, FakeAlpaca(hourly_bars()))
        fetch(httpserver)
        [request] = fake.requests
        assert request.headers["APCA-API-KEY-ID"] == KEY_ID and request.headers["APCA-API-SECRET-KEY"] == SECRET
        assert request.headers["User-Agent"] == "marketdata-integrity/1.0"
        assert dict(request.args) == {"timeframe": "1Hour", "start": "2024-01-02T00:00:00Z",
                                      "end": "2024-01-05T23:59:59Z", "limit": "10000", "adjustment": "raw",
                                      "feed": "iex", "sort": "asc"}

    def test_feed_adjustment_and_symbol_can_be_set_per_instrument(self, httpserver):
        fake = serve(httpserver, FakeAlpaca(hourly_bars()), path="/v2/stocks/BRK.B/bars")
        fetch(httpserver, symbol="BRK-B", provider_symbol="BRK.B", feed="sip", adjustment="split")
        [request] = fake.requests
        assert (request.args["feed"], request.args["adjustment"]) == ("sip", "split")

    def test_feed_and_adjustment_default_to_the_settings(self, httpserver, settings):
        settings.ALPACA_FEED = "delayed_sip"
        settings.ALPACA_ADJUSTMENT = "all"
        fake = serve(httpserver, FakeAlpaca(hourly_bars()))
        fetch(httpserver)
        [request] = fake.requests
        assert (request.args["feed"], request.args["adjustment"]) == ("delayed_sip", "all")

    def test_the_base_url_setting_is_used_without_an_option(self, httpserver):
        serve(httpserver, FakeAlpaca(hourly_bars()))
        assert len(fetched(httpserver, base_url=None)) == 28


@end_to_end
class TestMultiPageBackfill:
    def test_it_stores_every_bar_of_a_multi_page_range_exactly(self, httpserver):
        data = hourly_bars()
        fake = serve(httpserver, FakeAlpaca(data))
        instrument(httpserver, limit=10)
        result, state = backfill()
        assert result.status == "completed", result.error
        assert_same_bars(stored_bars("AAPL", "1h"), frame_of(data))
        assert state.records_inserted == 28 and state.invalid_bars == 0 and state.provider == "alpaca"
        assert len(fake.requests) == 3


@end_to_end
class TestDailyBars:
    def test_daily_bars_are_stored_at_their_session_date_00_00_utc(self, httpserver):
        data = daily_bars()
        serve(httpserver, FakeAlpaca(data))
        instrument(httpserver, timeframes=("1d",))
        result, _ = backfill(timeframe="1d", start=utc(2024, 1, 1), end=utc(2024, 7, 3))
        assert result.status == "completed", result.error
        sessions = [*SESSIONS, "2024-07-01", "2024-07-02"]
        assert_same_bars(stored_bars("AAPL", "1d"), frame_of(data, ts=sessions))


class TestDailyStamps:
    def test_a_daily_bar_already_at_00_00_utc_is_kept_and_one_at_another_time_is_left_to_validation(self):
        ts = pd.Series(pd.to_datetime(["2024-01-02T05:00:00Z", "2024-01-03T00:00:00Z", "2024-01-04T15:00:00Z"],
                                      utc=True))
        assert [t.isoformat() for t in to_session_dates(ts)] == [
            "2024-01-02T00:00:00+00:00", "2024-01-03T00:00:00+00:00", "2024-01-04T15:00:00+00:00"]


class TestExtendedHours:
    def test_bars_outside_the_regular_session_are_dropped_by_default(self, httpserver):
        data = hourly_bars(range(9, 24))  # Alpaca's 04:00–19:00 New York extended day
        serve(httpserver, FakeAlpaca(data))
        regular = [b for b in data if 14 <= pd.Timestamp(b["t"]).hour <= 20]
        pd.testing.assert_frame_equal(fetched(httpserver), frame_of(regular), check_exact=True)

    def test_extended_hours_keeps_them(self, httpserver):
        data = hourly_bars(range(9, 24))
        serve(httpserver, FakeAlpaca(data))
        assert len(fetched(httpserver, extended_hours=True)) == len(data) == 60


@end_to_end
class TestCredentials:
    def test_a_missing_key_fails_the_execution_before_any_request(self, httpserver, settings):
        settings.ALPACA_API_KEY_ID = ""
        settings.ALPACA_API_SECRET_KEY = ""
        serve(httpserver, FakeAlpaca(hourly_bars()))
        instrument(httpserver)
        result, state = backfill()
        assert result.status == "failed"
        assert state.error_message == ("[alpaca] missing Alpaca API credentials: set ALPACA_API_KEY_ID and "
                                       "ALPACA_API_SECRET_KEY in the environment")
        assert len(httpserver.log) == 0

    def test_rejected_keys_fail_without_retry_and_the_message_never_contains_them(self, httpserver, settings,
                                                                                  sleeps):
        settings.ALPACA_API_SECRET_KEY = SECRET + "-wrong"
        httpserver.expect_request(BARS).respond_with_data(
            json.dumps({"message": f"forbidden: key {KEY_ID} with secret {SECRET}-wrong"}), status=403)
        instrument(httpserver)
        result, state = backfill()
        assert result.status == "failed" and len(httpserver.log) == 1 and sleeps == []
        message = state.error_message
        assert "Alpaca refused the credentials (HTTP 403)" in message and "ALPACA_API_KEY_ID" in message
        assert "status=403" in message and f"path={BARS}" in message and "forbidden: key ***" in message
        assert KEY_ID not in message and SECRET not in message


class TestKeySources:
    def test_only_the_missing_key_is_named(self, settings):
        settings.ALPACA_API_SECRET_KEY = ""
        with pytest.raises(ProviderConfigError, match="set ALPACA_API_SECRET_KEY in the environment"):
            get_provider("alpaca").fetch(FetchRequest("AAPL", "1h", START, END, calendar="XNYS"))

    def test_keys_are_read_from_the_environment_when_settings_have_none(self, httpserver, settings, monkeypatch):
        del settings.ALPACA_API_KEY_ID
        del settings.ALPACA_API_SECRET_KEY
        monkeypatch.setenv("ALPACA_API_KEY_ID", KEY_ID)
        monkeypatch.setenv("ALPACA_API_SECRET_KEY", SECRET)
        serve(httpserver, FakeAlpaca(hourly_bars()))
        assert len(fetched(httpserver)) == 28

    def test_the_keys_are_never_logged(self, httpserver, caplog):
        caplog.set_level(logging.DEBUG)
        httpserver.expect_ordered_request(BARS).respond_with_data(f"upstream error for {KEY_ID}", status=500)
        serve(httpserver, FakeAlpaca(hourly_bars()))
        assert len(fetched(httpserver)) == 28
        assert "retry 1/4" in caplog.text
        assert KEY_ID not in caplog.text and SECRET not in caplog.text


class TestRetries:
    def test_a_429_is_retried_after_the_retry_after_seconds(self, httpserver, sleeps):
        httpserver.expect_ordered_request(BARS).respond_with_data(
            '{"message":"too many requests."}', status=429, headers={"Retry-After": "2"})
        serve(httpserver, FakeAlpaca(hourly_bars()))
        assert len(fetched(httpserver)) == 28
        assert sleeps == [2.0]

    def test_a_429_without_retry_after_waits_for_alpacas_rate_limit_reset(self, httpserver, sleeps):
        reset = int(time.time()) + 30  # Alpaca's X-RateLimit-Reset: Unix seconds when the window reopens
        httpserver.expect_ordered_request(BARS).respond_with_data(
            '{"message":"too many requests."}', status=429,
            headers={"X-RateLimit-Limit": "200", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(reset)})
        serve(httpserver, FakeAlpaca(hourly_bars()))
        assert len(fetched(httpserver)) == 28
        [wait] = sleeps
        assert 20 < wait <= 30  # the reset, not a 0.01 s backoff that would only earn another 429

    def test_a_rate_limit_reset_beyond_the_cap_fails_at_once(self, httpserver, sleeps):
        httpserver.expect_request(BARS).respond_with_data(
            '{"message":"too many requests."}', status=429,
            headers={"X-RateLimit-Reset": str(int(time.time()) + 3600)})
        error = fetch_error(httpserver)
        assert "before retrying (rate-limit reset header)" in str(error) and error.status == 429
        assert sleeps == [] and len(httpserver.log) == 1

    @pytest.mark.parametrize(("status", "reset", "wait"), [
        (429, "1030", 30.0), (429, "990", None), (429, "soon", None), (429, None, None), (503, "1030", None)])
    def test_the_rate_limit_reset_is_read_only_from_a_429(self, status, reset, wait):
        headers = {"X-RateLimit-Reset": reset} if reset is not None else {}
        assert rate_limit_wait(httpx.Response(status, headers=headers), now=1000.0) == wait

    def test_a_5xx_is_retried_then_the_fetch_succeeds(self, httpserver):
        httpserver.expect_ordered_request(BARS).respond_with_data("internal error", status=500)
        serve(httpserver, FakeAlpaca(hourly_bars()))
        assert len(fetched(httpserver)) == 28 and len(httpserver.log) == 2

    def test_a_422_is_not_retried_and_carries_alpacas_message(self, httpserver, sleeps):
        httpserver.expect_request(BARS).respond_with_data('{"message":"invalid timeframe"}', status=422)
        error = fetch_error(httpserver)
        assert len(httpserver.log) == 1 and sleeps == []
        assert "Alpaca rejected the request (HTTP 422): invalid timeframe" in str(error)
        assert error.status == 422 and error.path == BARS


class TestPagination:
    def test_a_page_token_that_repeats_fails_instead_of_looping(self, httpserver):
        data = hourly_bars()
        pages = [{"bars": data[:5], "next_page_token": "A"}, {"bars": data[5:10], "next_page_token": "B"},
                 {"bars": data[10:15], "next_page_token": "A"}]
        serve(httpserver, FakeAlpaca([], pages=pages))
        error = fetch_error(httpserver)
        assert "pagination cursor did not advance: next_page_token 'A' was already followed" in str(error)
        assert len(httpserver.log) == 3

    def test_a_page_that_does_not_move_forward_in_time_fails(self, httpserver):
        data = hourly_bars()
        pages = [{"bars": data[:5], "next_page_token": "A"}, {"bars": data[:5], "next_page_token": "B"}]
        serve(httpserver, FakeAlpaca([], pages=pages))
        assert "pagination cursor did not advance" in str(fetch_error(httpserver))

    def test_an_empty_page_with_a_token_is_followed(self, httpserver):
        data = hourly_bars()
        pages = [{"bars": data[:14], "next_page_token": "A"}, {"bars": [], "next_page_token": "B"},
                 {"bars": data[14:], "next_page_token": None}]
        serve(httpserver, FakeAlpaca([], pages=pages))
        assert len(fetched(httpserver)) == 28

    def test_an_endless_chain_of_empty_pages_fails(self, httpserver):
        pages = [{"bars": None, "next_page_token": f"T{i}"} for i in range(10)]
        serve(httpserver, FakeAlpaca([], pages=pages))
        assert "4 empty pages in a row" in str(fetch_error(httpserver))
        assert len(httpserver.log) == 4

    def test_no_bars_at_all_is_an_empty_fetch(self, httpserver):
        serve(httpserver, FakeAlpaca([], pages=[{"bars": None, "symbol": "AAPL", "next_page_token": None}]))
        assert fetch(httpserver) == []


class TestMalformedReplies:
    @pytest.mark.parametrize(("body", "message"), [
        ('{"bars": [{"t": "2024-01-02T14:00:00Z", "o": 1', "malformed JSON"),
        ('[]', "expected a JSON object, got list"),
        ('{"symbol": "AAPL"}', "no 'bars' field"),
        ('{"bars": {"AAPL": []}}', "'bars' is dict"),
        ('{"bars": [{"t": "2024-01-02T14:00:00Z", "o": 1, "h": 2, "l": 0.5, "c": 1.5}]}', "bar 0 is missing v"),
        ('{"bars": [{"t": "yesterday", "o": 1, "h": 2, "l": 0.5, "c": 1.5, "v": 3}]}', "unparseable bar time"),
        ('{"bars": [{"t": 1704204000, "o": 1, "h": 2, "l": 0.5, "c": 1.5, "v": 3}]}', "'t' of bar 0"),
        ('{"bars": [{"t": "2024-01-02T14:00:00Z", "o": [1], "h": 2, "l": 0.5, "c": 1.5, "v": 3}]}', "'o' of bar 0"),
        ('{"bars": [], "next_page_token": 7}', "'next_page_token' is int"),
    ], ids=["truncated", "array", "no-bars", "bars-object", "missing-field", "bad-time", "numeric-time",
            "array-price", "token"])
    def test_an_unusable_reply_fails_the_fetch_without_retrying(self, httpserver, body, message):
        httpserver.expect_request(BARS).respond_with_data(body, content_type="application/json")
        error = fetch_error(httpserver)
        assert message in str(error) and error.path == BARS
        assert len(httpserver.log) == 1


@end_to_end
class TestInvalidBars:
    def test_a_bar_with_bad_values_is_rejected_and_the_rest_stored(self, httpserver):
        data = hourly_bars()
        data[3]["h"], data[3]["l"] = data[3]["l"], data[3]["h"]  # high < low
        data[9]["c"] = "NaN-ish"  # a non-numeric price string
        serve(httpserver, FakeAlpaca(data))
        instrument(httpserver)
        result, state = backfill()
        assert result.status == "completed", result.error
        assert_same_bars(stored_bars("AAPL", "1h"), frame_of([b for i, b in enumerate(data) if i not in (3, 9)]))
        assert state.invalid_bars == 2 and state.records_inserted == 26


class TestConfiguration:
    def test_an_unknown_timeframe_is_a_config_error(self):
        with pytest.raises(ProviderConfigError, match="no Alpaca equivalent"):
            get_provider("alpaca").fetch(FetchRequest("AAPL", "2h", START, END, calendar="XNYS"))

    def test_a_null_bars_field_is_an_empty_page(self):
        frame, token = parse_bars_page({"bars": None, "next_page_token": None}, BARS)
        assert frame.empty and token is None


class TestOptionValidation:
    def test_the_documented_options_are_accepted(self, settings):
        settings.PROVIDER_ALLOWED_HOSTS = ["127.0.0.1"]  # another host only when the operator lists it
        accepted = {"base_url": "http://127.0.0.1:8080", "provider_symbol": "BRK.B", "limit": 500,
                    "feed": "sip", "adjustment": "split", "extended_hours": True}
        assert validate_options(accepted) is None  # no ProviderConfigError: every documented option passes
        assert validate_options({}) is None

    @pytest.mark.parametrize(("options", "message"), [
        ({"seed": 3}, "unknown option(s) seed; alpaca accepts base_url, provider_symbol, limit, feed"),
        ({"api_key": "x"}, "unknown option(s) api_key"),  # keys are settings, never stored options
        ({"limit": 20000}, "limit must be an integer 1..10000"),
        ({"limit": True}, "limit must be an integer 1..10000"),
        ({"adjustment": "splits"}, "adjustment must be one of raw, split, dividend, all"),
        ({"feed": "iex; sip"}, "feed must be a feed name"),
        ({"extended_hours": "maybe"}, "extended_hours must be true or false"),
        ({"base_url": "ftp://example.com"}, "base_url must be an http(s) URL"),
        ({"provider_symbol": ""}, "provider_symbol must be a non-empty string"),
        (["limit", 5], "provider_options must be a JSON object"),
    ])
    def test_bad_options_are_a_config_error_naming_the_problem(self, options, message):
        with pytest.raises(ProviderConfigError) as caught:
            validate_options(options)
        assert message in str(caught.value)

    def test_a_bad_adjustment_fails_the_fetch_before_any_request(self, httpserver):
        with pytest.raises(ProviderConfigError, match="adjustment must be one of"):
            fetch(httpserver, adjustment="splits")
        assert len(httpserver.log) == 0
