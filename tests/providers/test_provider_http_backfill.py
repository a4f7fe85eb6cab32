"""Both HTTP providers end to end, against a real HTTP server on 127.0.0.1.

Every test runs a tracked backfill (``run_backfill``: provider → validation → writer →
``BackfillState``) against a local server that answers in the provider's documented format
(Binance ``/api/v3/klines``, Alpaca ``/v2/stocks/{symbol}/bars``), once per provider, and asserts
both what was stored (bar for bar) and what the execution recorded (status, error_message, counts,
checkpoint). Failing runs use small batches so that committed batches exist: they must stay, the
bad page must add nothing, and the next run must resume and end with exactly the provider's bars.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable

import pandas as pd
import pytest
from werkzeug import Request, Response

from integrity.backfill import run_backfill
from integrity.models import AnomalyType, BackfillState, DataAnomaly, SymbolFailureTracking
from integrity.providers.http import HttpClient
from tests.helpers import Hang, add_instrument, assert_same_bars, stored_bars, utc
from tests.providers import test_provider_alpaca as ta
from tests.providers import test_provider_binance as tb

pytestmark = pytest.mark.django_db(transaction=True)

PAGE = 10  # bars per request: several pages per range
BATCH = 5  # bars per committed batch: a failing run has committed batches behind it


@pytest.fixture(autouse=True)
def local_providers(fast_http, alpaca_keys, sleeps, httpserver):
    # The operator points both providers at the local server; the instruments' base_url names it too.
    fast_http.BINANCE_BASE_URL = fast_http.ALPACA_DATA_BASE_URL = httpserver.url_for("")
    fast_http.PROVIDER_HTTP_MAX_RETRIES = 2
    fast_http.BINANCE_MAX_REQUESTS_PER_SECOND = 0
    fast_http.ALPACA_MAX_REQUESTS_PER_SECOND = 0


# --- the two sources, behind one face ------------------------------------------------------------


class BinanceSource:
    name, symbol, path = "binance", "BTC-USD", tb.KLINES
    start, end = tb.START, tb.END  # 48 hourly klines: pages of 10, 10, 10, 10, 8
    pages = 5

    def fake(self, corrupt: bool = False):
        return tb.FakeBinance(edit=self._corrupt if corrupt else None)

    def stuck(self) -> Callable[[Request], Response]:
        """A server that ignores startTime: the same first page, whatever is asked."""
        step = 3_600_000
        first = int(self.start.timestamp() * 1000)
        page = [tb.kline(first + i * step, step) for i in range(PAGE)]
        return lambda request: Response(json.dumps(page), content_type="application/json")

    def expected(self) -> pd.DataFrame:
        return tb.expected(self.start, self.end)

    # A kline with 3 of its fields, and what the error says about it.
    misshaped = ('[[1704103200000,"42000.00","42010.50"]]', "kline 0 is not an array of at least 6 fields")

    def instrument(self, httpserver):
        return add_instrument(self.symbol, provider="binance", base_url=httpserver.url_for(""), limit=PAGE)

    bad_times = (utc(2024, 1, 1, 5), utc(2024, 1, 2, 7))

    def _corrupt(self, rows):
        for row in rows:
            if row[0] == int(self.bad_times[0].timestamp() * 1000):
                row[2], row[3] = row[3], row[2]  # high < low
            if row[0] == int(self.bad_times[1].timestamp() * 1000):
                row[4] = "n/a"  # a close that is not a number
        return rows


class AlpacaSource:
    name, symbol, path = "alpaca", "AAPL", ta.BARS
    start, end = ta.START, ta.END  # 28 regular-session hour bars: pages of 10, 10, 8
    pages = 3

    def fake(self, corrupt: bool = False):
        data = ta.hourly_bars()
        if corrupt:
            for bar in data:
                if bar["t"] == self.bad_times[0].strftime("%Y-%m-%dT%H:%M:%SZ"):
                    bar["h"], bar["l"] = bar["l"], bar["h"]
                if bar["t"] == self.bad_times[1].strftime("%Y-%m-%dT%H:%M:%SZ"):
                    bar["c"] = "n/a"
        return ta.FakeAlpaca(data)

    def stuck(self) -> Callable[[Request], Response]:
        """A server whose page token never moves on: the same page and the same token, every time."""
        page = {"bars": ta.hourly_bars()[:PAGE], "symbol": "AAPL", "next_page_token": "QUFQTHwyMDI0"}
        return lambda request: Response(json.dumps(page), content_type="application/json")

    def expected(self) -> pd.DataFrame:
        return ta.frame_of(ta.hourly_bars())

    # A bar without its volume, and what the error says about it.
    misshaped = ('{"bars": [{"t": "2024-01-03T17:00:00Z", "o": 1, "h": 2, "l": 0.5, "c": 1.5}], '
                 '"next_page_token": null}', "bar 0 is missing v")

    def instrument(self, httpserver):
        return add_instrument(self.symbol, asset_class="equity", calendar="XNYS", provider="alpaca",
                              base_url=httpserver.url_for(""), limit=PAGE)

    bad_times = (utc(2024, 1, 2, 17), utc(2024, 1, 4, 15))


SOURCES = [BinanceSource(), AlpacaSource()]


@pytest.fixture(params=SOURCES, ids=lambda s: s.name)
def source(request):
    return request.param


class Scripted:
    """Answers the n-th request (1-based) from ``script`` when it has an entry, else from ``fallback``."""

    def __init__(self, fallback, script: dict[int, Response | Callable[[Request], Response]]):
        self.fallback = fallback
        self.script = script
        self.count = 0

    def __call__(self, request: Request) -> Response:
        self.count += 1
        reply = self.script.get(self.count)
        if reply is None:
            return self.fallback(request)
        return reply if isinstance(reply, Response) else reply(request)


def serve(httpserver, source, handler) -> None:
    httpserver.expect_request(source.path, method="GET").respond_with_handler(handler)


def backfill(source, **kwargs) -> tuple[object, BackfillState]:
    result = run_backfill(source.symbol, "1h", start=source.start, end=source.end, **kwargs)
    return result, BackfillState.objects.get(execution_id=result.execution_id)


def assert_completed(state: BackfillState, source, stored: int, invalid: int = 0) -> None:
    assert state.status == "completed", state.error_message
    assert state.error_message in (None, "")
    assert (state.records_inserted, state.invalid_bars, state.provider) == (stored, invalid, source.name)
    assert state.completed_at is not None


def assert_failed(state: BackfillState, source, *fragments: str) -> str:
    """The execution failed with a message naming the provider and the URL path, never the query."""
    assert state.status == "failed" and state.completed_at is not None
    message = state.error_message
    assert message.startswith(f"[{source.name}] "), message
    assert f"path={source.path}" in message, message
    for fragment in fragments:
        assert fragment in message, message
    assert "?" not in message and "&" not in message  # no query string
    assert "localhost" not in message and "127.0.0.1" not in message  # the path, not the URL
    return message


def assert_committed_first_page(state: BackfillState, source) -> None:
    """The batches committed before the failure are stored, and the checkpoint says so."""
    first_page = source.expected().iloc[:PAGE]
    assert_same_bars(stored_bars(source.symbol, "1h"), first_page)
    assert state.records_inserted == PAGE
    assert pd.Timestamp(state.checkpoint_ts) == first_page["ts"].iloc[-1]


def resume_and_finish(httpserver, source) -> None:
    """The next run, against a healthy server, resumes from the checkpoint and ends exact."""
    httpserver.clear()
    serve(httpserver, source, source.fake())
    result, state = backfill(source)
    assert_completed(state, source, stored=len(source.expected()) - PAGE)
    assert state.retry_count == 1 and result.resumed_from is not None
    assert_same_bars(stored_bars(source.symbol, "1h"), source.expected())


# --- the scenarios -------------------------------------------------------------------------------


class TestMultiPageSuccess:
    def test_every_page_is_stored_exactly_and_the_execution_completes(self, httpserver, source):
        fake = source.fake()
        serve(httpserver, source, fake)
        source.instrument(httpserver)
        result, state = backfill(source)
        assert result.status == "completed", result.error
        assert_same_bars(stored_bars(source.symbol, "1h"), source.expected())
        assert_completed(state, source, stored=len(source.expected()))
        assert pd.Timestamp(state.checkpoint_ts) == source.expected()["ts"].iloc[-1]
        assert len(httpserver.log) == source.pages
        assert SymbolFailureTracking.objects.get(symbol=source.symbol).consecutive_failures == 0


class TestRateLimiting:
    def test_a_429_with_retry_after_is_waited_out_and_the_run_completes(self, httpserver, source, sleeps):
        busy = Response('{"code":-1003,"message":"too many requests"}', status=429, headers={"Retry-After": "7"},
                        content_type="application/json")
        serve(httpserver, source, Scripted(source.fake(), {2: busy}))  # the second page is refused once
        source.instrument(httpserver)
        result, state = backfill(source)
        assert result.status == "completed", result.error
        assert sleeps == [7.0]  # exactly the server's Retry-After, no extra backoff
        assert_same_bars(stored_bars(source.symbol, "1h"), source.expected())
        assert_completed(state, source, stored=len(source.expected()))
        assert len(httpserver.log) == source.pages + 1

    def test_a_retry_after_beyond_the_cap_fails_at_once_keeping_committed_batches(self, httpserver, source,
                                                                                  sleeps):
        busy = Response('{"message":"too many requests"}', status=429, headers={"Retry-After": "3600"},
                        content_type="application/json")
        serve(httpserver, source, Scripted(source.fake(), {2: busy}))
        source.instrument(httpserver)
        result, state = backfill(source, batch_size=BATCH)
        assert result.status == "failed"
        assert_failed(state, source, "HTTP 429", "asked to wait 3600s", "status=429", "too many requests")
        assert sleeps == [] and len(httpserver.log) == 2  # not slept through, not retried early
        assert_committed_first_page(state, source)
        resume_and_finish(httpserver, source)


class TestServerErrors:
    def test_5xx_replies_are_retried_then_the_run_completes(self, httpserver, source, sleeps):
        serve(httpserver, source, Scripted(source.fake(), {
            1: Response("<html>502 Bad Gateway</html>", status=502),
            2: Response("", status=503),
        }))
        source.instrument(httpserver)
        result, state = backfill(source)
        assert result.status == "completed", result.error
        assert_same_bars(stored_bars(source.symbol, "1h"), source.expected())
        assert_completed(state, source, stored=len(source.expected()))
        assert len(httpserver.log) == source.pages + 2 and len(sleeps) == 2

    def test_a_5xx_that_persists_fails_with_status_and_body_and_keeps_committed_batches(self, httpserver, source):
        down = Response("<html><h1>503 Service Temporarily Unavailable</h1></html>", status=503)
        serve(httpserver, source, Scripted(source.fake(), {2: down, 3: down, 4: down}))
        source.instrument(httpserver)
        result, state = backfill(source, batch_size=BATCH)
        assert result.status == "failed"
        assert_failed(state, source, "HTTP 503 SERVICE UNAVAILABLE; giving up after 3 attempt(s)", "status=503",
                      "body='<html><h1>503 Service Temporarily Unavailable</h1></html>'")
        assert_committed_first_page(state, source)
        tracking = SymbolFailureTracking.objects.get(symbol=source.symbol)
        assert tracking.consecutive_failures == 1 and tracking.last_error == state.error_message
        resume_and_finish(httpserver, source)


class TestTimeouts:
    def test_a_read_timeout_is_retried_then_the_run_completes(self, httpserver, source, settings, monkeypatch):
        settings.PROVIDER_HTTP_READ_TIMEOUT = 0.3
        released = threading.Event()

        def hang(request):
            released.wait(5)  # longer than the read timeout: the client gives up on this one
            return Response("[]", content_type="application/json")

        monkeypatch.setattr(HttpClient, "sleep", staticmethod(lambda seconds: released.set()))
        serve(httpserver, source, Scripted(source.fake(), {1: hang}))
        source.instrument(httpserver)
        try:
            result, state = backfill(source)
        finally:
            released.set()
        assert result.status == "completed", result.error
        assert_same_bars(stored_bars(source.symbol, "1h"), source.expected())
        assert_completed(state, source, stored=len(source.expected()))

    def test_timeouts_on_every_attempt_fail_the_run_with_a_clear_error(self, httpserver, source, settings):
        settings.PROVIDER_HTTP_READ_TIMEOUT = 0.2
        settings.PROVIDER_HTTP_MAX_RETRIES = 1
        hang = Hang()
        serve(httpserver, source, hang)
        source.instrument(httpserver)
        try:
            result, state = backfill(source)
        finally:
            hang.release(httpserver, 2)
        assert result.status == "failed"
        message = assert_failed(state, source, "read timeout (0.2s); giving up after 2 attempt(s)")
        assert "status=" not in message  # no reply, so no status to report
        assert stored_bars(source.symbol, "1h").empty and state.records_inserted == 0


def html_page(request):
    return Response("<html><body>Down for maintenance</body></html>", content_type="text/html")


def truncated(fake):
    def handler(request):
        return Response(fake(request).get_data()[:120], content_type="application/json")
    return handler


class TestUnusableBodies:
    @pytest.mark.parametrize("kind", ["not-json", "truncated"])
    def test_a_malformed_or_truncated_page_fails_the_run_and_stores_nothing_of_it(self, httpserver, source, kind):
        fake = source.fake()
        bad = html_page if kind == "not-json" else truncated(fake)
        serve(httpserver, source, Scripted(fake, {2: bad}))
        source.instrument(httpserver)
        result, state = backfill(source, batch_size=BATCH)
        assert result.status == "failed"
        excerpt = "Down for maintenance" if kind == "not-json" else "body="
        assert_failed(state, source, "malformed JSON in the reply (not JSON, or truncated)", "status=200", excerpt)
        assert len(httpserver.log) == 2  # a complete 200 that is unusable is not retried
        assert_committed_first_page(state, source)
        resume_and_finish(httpserver, source)


    def test_a_page_with_a_misshaped_bar_fails_the_run_and_stores_nothing_of_it(self, httpserver, source):
        body, problem = source.misshaped
        serve(httpserver, source, Scripted(source.fake(), {2: Response(body, content_type="application/json")}))
        source.instrument(httpserver)
        result, state = backfill(source, batch_size=BATCH)
        assert result.status == "failed"
        assert_failed(state, source, problem)
        assert len(httpserver.log) == 2
        assert_committed_first_page(state, source)


class TestEmptyPages:
    def test_binance_an_empty_page_ends_the_run_with_every_kline_before_it(self, httpserver):
        source = BinanceSource()
        last = utc(2024, 1, 2, 3)  # the pair stopped trading: Binance answers [] from there on
        serve(httpserver, source, tb.FakeBinance(last=last))
        source.instrument(httpserver)
        result, state = backfill(source)
        assert result.status == "completed", result.error
        expected = source.expected()
        expected = expected[expected["ts"] <= pd.Timestamp(last)]
        assert_same_bars(stored_bars(source.symbol, "1h"), expected)
        assert_completed(state, source, stored=len(expected))
        assert len(httpserver.log) == 4  # 10, 10, 8, then the empty page

    def test_alpaca_an_endless_chain_of_empty_pages_fails_the_run(self, httpserver):
        source = AlpacaSource()
        tokens = iter(range(100))

        def empty_with_a_new_token(request):
            return Response(json.dumps({"bars": [], "symbol": "AAPL", "next_page_token": f"T{next(tokens)}"}),
                            content_type="application/json")

        serve(httpserver, source, Scripted(empty_with_a_new_token, {1: source.fake()}))
        source.instrument(httpserver)
        result, state = backfill(source, batch_size=BATCH)
        assert result.status == "failed"
        assert_failed(state, source, "4 empty pages in a row, each with a next_page_token", "status=200")
        assert len(httpserver.log) == 5
        assert_committed_first_page(state, source)


class TestPaginationCursor:
    def test_a_cursor_that_never_advances_fails_the_run_instead_of_looping(self, httpserver, source):
        serve(httpserver, source, source.stuck())
        source.instrument(httpserver)
        result, state = backfill(source, batch_size=BATCH)
        assert result.status == "failed"
        assert_failed(state, source, "pagination cursor did not advance", "status=200")
        assert len(httpserver.log) == 2  # the first page, then the repeat that gives it away
        assert_committed_first_page(state, source)  # the first page was real data; the repeat adds nothing


class TestInvalidBars:
    def test_invalid_bars_in_a_good_page_are_rejected_and_the_rest_stored(self, httpserver, source):
        serve(httpserver, source, source.fake(corrupt=True))
        source.instrument(httpserver)
        result, state = backfill(source)
        assert result.status == "completed", result.error
        good = source.expected()
        good = good[~good["ts"].isin([pd.Timestamp(t) for t in source.bad_times])]
        assert_same_bars(stored_bars(source.symbol, "1h"), good)
        assert_completed(state, source, stored=len(good), invalid=2)
        assert result.invalid_reasons["high_below_low"] == 1 and result.invalid_reasons["non_finite"] == 1
        [anomaly] = DataAnomaly.objects.filter(symbol=source.symbol, anomaly_type=AnomalyType.INVALID_OHLC)
        assert anomaly.affected_rows == 2 and anomaly.execution_id == state.execution_id


class TestBinanceBan:
    def test_a_418_fails_the_run_at_once_without_any_retry(self, httpserver, sleeps):
        source = BinanceSource()
        banned = Response('{"code":-1003,"msg":"Way too many requests; IP banned until 1704070000000."}',
                          status=418, headers={"Retry-After": "1800"}, content_type="application/json")
        serve(httpserver, source, Scripted(source.fake(), {1: banned}))
        source.instrument(httpserver)
        result, state = backfill(source)
        assert result.status == "failed"
        assert_failed(state, source, "IP banned by Binance (HTTP 418", "retry after 1800s", "status=418",
                      "IP banned until")
        assert len(httpserver.log) == 1 and sleeps == []
        assert stored_bars(source.symbol, "1h").empty


class TestAlpacaKeys:
    def test_a_missing_key_fails_the_run_before_any_request_and_stores_nothing(self, httpserver, settings,
                                                                                caplog):
        caplog.set_level(logging.DEBUG)
        settings.ALPACA_API_SECRET_KEY = ""
        source = AlpacaSource()
        serve(httpserver, source, source.fake())
        source.instrument(httpserver)
        result, state = backfill(source)
        assert result.status == "failed" and state.status == "failed"
        assert state.error_message == ("[alpaca] missing Alpaca API credentials: set ALPACA_API_SECRET_KEY in "
                                       "the environment")
        assert len(httpserver.log) == 0
        assert stored_bars(source.symbol, "1h").empty and state.records_inserted == 0
        assert ta.KEY_ID not in caplog.text  # the key that is there is not printed either

    def test_the_keys_never_reach_logs_error_message_or_failure_tracking(self, httpserver, caplog):
        caplog.set_level(logging.DEBUG)  # httpx and httpcore debug lines included
        source = AlpacaSource()
        echo = f"key {ta.KEY_ID} secret {ta.SECRET}"
        serve(httpserver, source, Scripted(source.fake(), {
            1: Response(f"upstream failure ({echo})", status=500),
            2: Response(json.dumps({"message": f"forbidden: {echo}"}), status=403, content_type="application/json"),
        }))
        source.instrument(httpserver)
        result, state = backfill(source)
        assert result.status == "failed"
        message = assert_failed(state, source, "Alpaca refused the credentials (HTTP 403)", "status=403",
                                "forbidden: key *** secret ***")
        request = httpserver.log[0][0]
        assert request.headers["APCA-API-KEY-ID"] == ta.KEY_ID  # they were sent, as headers
        assert "retry 1/2" in caplog.text  # the 500 was logged…
        for secret in (ta.KEY_ID, ta.SECRET):
            assert secret not in caplog.text  # …without the keys it echoed
            assert secret not in message and secret not in result.error
            assert secret not in SymbolFailureTracking.objects.get(symbol=source.symbol).last_error
            assert secret not in json.dumps(BackfillState.objects.get(pk=state.pk).details)
