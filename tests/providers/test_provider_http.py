"""The shared HTTP client of the providers, against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import dataclasses
import json
import logging
import socket
import threading
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from werkzeug import Response

from integrity.providers import PROVIDER_NAMES, ProviderConfigError, ProviderError, get_provider
from integrity.providers.http import USER_AGENT, HttpClient
from integrity.providers.http_policy import HttpConfig, RateLimiter, parse_retry_after
from integrity.providers.options import resolve_base_url
from tests.helpers import Hang

pytestmark = pytest.mark.usefixtures("fast_http", "sleeps")


def make_client(httpserver, **overrides) -> HttpClient:
    config = dataclasses.replace(HttpConfig.from_settings("test"), **overrides)
    return HttpClient("test", httpserver.url_for(""), config)


class TestSuccess:
    def test_it_returns_the_decoded_json_and_sends_the_user_agent(self, httpserver):
        httpserver.expect_request("/v1/things", query_string={"a": "1"}).respond_with_json({"ok": True})
        with make_client(httpserver) as client:
            payload, response = client.get_json("/v1/things", {"a": 1})
        assert payload == {"ok": True} and response.status_code == 200
        [(request, _)] = httpserver.log
        assert request.headers["User-Agent"] == USER_AGENT == "marketdata-integrity/1.0"

    def test_a_base_url_with_a_path_prefix_is_kept(self, httpserver):
        httpserver.expect_request("/proxy/binance/api").respond_with_json([])
        client = HttpClient("test", httpserver.url_for("/proxy/binance/"), HttpConfig.from_settings("test"))
        with client:
            assert client.get_json("/api")[0] == []


class TestRetries:
    def test_it_retries_a_5xx_then_succeeds(self, httpserver, sleeps):
        httpserver.expect_ordered_request("/x").respond_with_data("busy", status=503)
        httpserver.expect_ordered_request("/x").respond_with_data("oops", status=500)
        httpserver.expect_ordered_request("/x").respond_with_json({"ok": 1})
        with make_client(httpserver) as client:
            assert client.get_json("/x")[0] == {"ok": 1}
        assert len(httpserver.log) == 3
        assert len(sleeps) == 2

    def test_it_sleeps_for_the_retry_after_seconds_of_a_429(self, httpserver, sleeps):
        httpserver.expect_ordered_request("/x").respond_with_data("slow down", status=429,
                                                                  headers={"Retry-After": "7"})
        httpserver.expect_ordered_request("/x").respond_with_json({})
        with make_client(httpserver) as client:
            client.get("/x")
        assert sleeps == [7.0]

    def test_it_honours_a_retry_after_http_date(self, httpserver, sleeps):
        when = format_datetime(datetime.now(UTC) + timedelta(seconds=20), usegmt=True)
        httpserver.expect_ordered_request("/x").respond_with_data("", status=503, headers={"Retry-After": when})
        httpserver.expect_ordered_request("/x").respond_with_json({})
        with make_client(httpserver) as client:
            client.get("/x")
        [slept] = sleeps
        assert 17 <= slept <= 20

    def test_without_retry_after_it_backs_off_exponentially_with_jitter(self, httpserver, sleeps):
        httpserver.expect_request("/x").respond_with_data("", status=502)
        with make_client(httpserver, backoff_base=1.0, backoff_max=5.0) as client, pytest.raises(ProviderError):
            client.get("/x")
        # d = min(5, 1 × 2^n); equal jitter with jitter() = 0.5 sleeps 0.75 d.
        assert sleeps == [0.75, 1.5, 3.0, 3.75]

    def test_it_gives_up_after_max_retries(self, httpserver, sleeps):
        httpserver.expect_request("/x").respond_with_data("down for maintenance", status=503)
        with make_client(httpserver, max_retries=2) as client, pytest.raises(ProviderError) as caught:
            client.get("/x")
        assert len(httpserver.log) == 3
        assert "giving up after 3 attempt(s)" in str(caught.value)
        assert caught.value.status == 503

    def test_a_retry_after_beyond_the_cap_fails_at_once(self, httpserver, sleeps, settings):
        settings.PROVIDER_HTTP_RETRY_AFTER_MAX = 60
        httpserver.expect_request("/x").respond_with_data("", status=429, headers={"Retry-After": "3600"})
        with make_client(httpserver) as client, pytest.raises(ProviderError) as caught:
            client.get("/x")
        assert len(httpserver.log) == 1 and sleeps == []
        assert "asked to wait 3600s" in str(caught.value)


class TestNoRetry:
    @pytest.mark.parametrize("status", [400, 401, 403, 404, 418, 422])
    def test_it_does_not_retry_a_4xx_other_than_429(self, httpserver, sleeps, status):
        httpserver.expect_request("/x").respond_with_data("bad", status=status)
        with make_client(httpserver) as client, pytest.raises(ProviderError) as caught:
            client.get("/x")
        assert len(httpserver.log) == 1 and sleeps == []
        assert caught.value.status == status

    def test_it_does_not_follow_a_redirect(self, httpserver):
        httpserver.expect_request("/x").respond_with_data("", status=302, headers={"Location": "http://elsewhere/"})
        with make_client(httpserver) as client, pytest.raises(ProviderError) as caught:
            client.get("/x")
        assert caught.value.status == 302 and len(httpserver.log) == 1


class TestTimeouts:
    def test_it_retries_a_read_timeout_then_succeeds(self, httpserver, monkeypatch):
        released = threading.Event()
        calls = []

        def handler(request):
            calls.append(1)
            if len(calls) == 1:
                released.wait(5)  # longer than the read timeout, until the client gave up on us
            return Response(json.dumps({"ok": True}), content_type="application/json")

        def sleep(seconds):  # the client's backoff: the first attempt has timed out by now
            released.set()

        monkeypatch.setattr(HttpClient, "sleep", staticmethod(sleep))
        httpserver.expect_request("/slow").respond_with_handler(handler)
        try:
            with make_client(httpserver, read_timeout=0.3) as client:
                assert client.get_json("/slow")[0] == {"ok": True}
        finally:
            released.set()
        assert len(calls) == 2

    def test_a_timeout_on_every_attempt_fails_with_a_clear_error(self, httpserver):
        hang = Hang("{}")
        httpserver.expect_request("/slow").respond_with_handler(hang)
        try:
            with make_client(httpserver, read_timeout=0.2, max_retries=1) as client, \
                    pytest.raises(ProviderError) as caught:
                client.get("/slow")
        finally:
            hang.release(httpserver, 2)
        message = str(caught.value)
        assert "read timeout (0.2s); giving up after 2 attempt(s)" in message
        assert "path=/slow" in message and caught.value.status is None

    def test_a_refused_connection_is_retried_then_reported(self, sleeps):
        with socket.socket() as probe:  # a port nobody listens on
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        config = HttpConfig(max_retries=2, backoff_base=0.01, connect_timeout=1, read_timeout=1)
        with HttpClient("test", f"http://127.0.0.1:{port}", config) as client, \
                pytest.raises(ProviderError) as caught:
            client.get("/x")
        assert "connection error (ConnectError" in str(caught.value)
        assert len(sleeps) == 2


class TestErrorContents:
    def test_the_error_names_provider_path_status_and_body_but_not_the_query(self, httpserver):
        httpserver.expect_request("/api/v3/klines").respond_with_data('{"code":-1121,"msg":"Invalid symbol."}',
                                                                       status=400)
        with make_client(httpserver) as client, pytest.raises(ProviderError) as caught:
            client.get("/api/v3/klines", {"symbol": "NOPE", "token": "s3cr3t"})
        error = caught.value
        assert (error.provider, error.path, error.status) == ("test", "/api/v3/klines", 400)
        assert "Invalid symbol." in error.body_excerpt
        message = str(error)
        assert message.startswith("[test] request rejected: HTTP 400 ")
        assert "path=/api/v3/klines" in message and "status=400" in message and "Invalid symbol." in message
        assert "NOPE" not in message and "s3cr3t" not in message and "127.0.0.1" not in message

    def test_the_body_excerpt_is_short(self, httpserver):
        httpserver.expect_request("/x").respond_with_data("x" * 10_000, status=404)
        with make_client(httpserver) as client, pytest.raises(ProviderError) as caught:
            client.get("/x")
        assert len(caught.value.body_excerpt) == 200

    def test_secrets_are_redacted_from_messages_and_logs(self, httpserver, caplog):
        caplog.set_level(logging.DEBUG)
        httpserver.expect_request("/x").respond_with_data("bad key KEY-123 / SECRET-456", status=500)
        config = HttpConfig(max_retries=1, backoff_base=0.01)
        client = HttpClient("test", httpserver.url_for(""), config, headers={"X-Key": "KEY-123"},
                            secrets=["KEY-123", "SECRET-456"])
        with client, pytest.raises(ProviderError) as caught:
            client.get("/x")
        assert "KEY-123" not in str(caught.value) and "SECRET-456" not in str(caught.value)
        assert "bad key *** / ***" in str(caught.value)
        assert "KEY-123" not in caplog.text and "SECRET-456" not in caplog.text


class TestJsonBodies:
    def test_a_body_that_is_not_json_fails_clearly(self, httpserver):
        httpserver.expect_request("/x").respond_with_data("<html>maintenance</html>", content_type="text/html")
        with make_client(httpserver) as client, pytest.raises(ProviderError) as caught:
            client.get_json("/x")
        assert "malformed JSON" in str(caught.value) and "maintenance" in caught.value.body_excerpt
        assert caught.value.status == 200

    def test_a_body_cut_mid_json_fails_clearly(self, httpserver):
        httpserver.expect_request("/x").respond_with_data('[[1704067200000,"1.0","2.0"', content_type="application/json")
        with make_client(httpserver) as client, pytest.raises(ProviderError) as caught:
            client.get_json("/x")
        assert "malformed JSON in the reply (not JSON, or truncated)" in str(caught.value)
        assert len(httpserver.log) == 1  # a complete reply that is bad JSON is not retried


    def test_a_body_cut_short_by_the_connection_is_retried_then_reported(self, httpserver, sleeps):
        def cut(request):
            response = Response(b'[[1704067200000,"42000.0"', content_type="application/json")
            response.headers["Content-Length"] = "1000"  # the connection closes after 25 bytes
            return response

        httpserver.expect_request("/x").respond_with_handler(cut)
        with make_client(httpserver, max_retries=1) as client, pytest.raises(ProviderError) as caught:
            client.get_json("/x")
        assert "connection error (RemoteProtocolError: peer closed connection without sending complete " \
               "message body" in str(caught.value)
        assert len(httpserver.log) == 2 and len(sleeps) == 1


class TestRateLimit:
    def test_the_limiter_spaces_requests_one_interval_apart(self):
        limiter = RateLimiter(4.0, clock=lambda: 100.0)  # a clock that does not move
        assert [limiter.reserve() for _ in range(4)] == [0.0, 0.25, 0.5, 0.75]

    def test_the_limiter_does_not_wait_when_requests_are_slow_enough(self):
        now = [100.0]
        limiter = RateLimiter(2.0, clock=lambda: now[0])
        waits = []
        for _ in range(3):
            waits.append(limiter.reserve())
            now[0] += 1.0
        assert waits == [0.0, 0.0, 0.0]

    def test_a_rate_of_zero_disables_the_limit(self):
        limiter = RateLimiter(0.0, clock=lambda: 0.0)
        assert [limiter.reserve() for _ in range(3)] == [0.0, 0.0, 0.0]

    def test_clients_of_one_provider_share_the_limit(self, httpserver, sleeps):
        httpserver.expect_request("/x").respond_with_json({})
        config = HttpConfig(max_requests_per_second=2)
        for _ in range(3):
            with HttpClient("shared", httpserver.url_for(""), config) as client:
                client.get("/x")
        # Each client books a slot 0.5 s after the previous one (nothing really sleeps here).
        assert len(sleeps) == 2 and 0 < sleeps[0] <= 0.5 and 0.5 < sleeps[1] <= 1.0


class TestRetryAfterParsing:
    def test_it_reads_seconds(self):
        assert parse_retry_after("12") == 12.0

    def test_it_reads_an_http_date(self):
        now = datetime(2024, 1, 1, 12, 0, tzinfo=UTC)
        assert parse_retry_after("Mon, 01 Jan 2024 12:00:30 GMT", now=now) == 30.0

    def test_a_date_in_the_past_means_no_wait(self):
        assert parse_retry_after("Mon, 01 Jan 2001 12:00:30 GMT") == 0.0

    def test_garbage_is_ignored(self):
        assert parse_retry_after("soon") is None and parse_retry_after(None) is None


class TestConfiguration:
    def test_the_option_wins_over_the_setting(self, settings):
        settings.SOME_BASE_URL = "https://setting.example"
        settings.PROVIDER_ALLOWED_HOSTS = ["option.example"]
        assert resolve_base_url({"base_url": "http://option.example/"}, "SOME_BASE_URL", "https://d", "t") \
            == "http://option.example"
        assert resolve_base_url({}, "SOME_BASE_URL", "https://d", "t") == "https://setting.example"
        assert resolve_base_url({}, "UNSET_BASE_URL", "https://default.example", "t") == "https://default.example"

    @pytest.mark.parametrize("url", ["ftp://x.example", "not a url", "https://x.example/?a=1", ""])
    def test_an_unusable_base_url_is_a_config_error(self, url):
        with pytest.raises(ProviderConfigError):
            resolve_base_url({"base_url": url or " "}, "UNSET_BASE_URL", "", "t")

    def test_a_non_numeric_setting_is_a_config_error(self, settings):
        settings.PROVIDER_HTTP_MAX_RETRIES = "many"
        with pytest.raises(ProviderConfigError, match="PROVIDER_HTTP_MAX_RETRIES"):
            HttpConfig.from_settings("test")

    def test_settings_are_read_at_call_time(self, settings):
        settings.PROVIDER_HTTP_READ_TIMEOUT = 1.5
        settings.PROVIDER_HTTP_MAX_RETRIES = 7
        config = HttpConfig.from_settings("test", "TEST_MAX_REQUESTS_PER_SECOND", 3.0)
        assert (config.read_timeout, config.max_retries, config.max_requests_per_second) == (1.5, 7, 3.0)

    def test_the_registry_knows_the_http_providers(self):
        assert {"binance", "alpaca"} <= set(PROVIDER_NAMES)
        assert get_provider("binance").name == "binance"
        assert get_provider("alpaca").name == "alpaca"
