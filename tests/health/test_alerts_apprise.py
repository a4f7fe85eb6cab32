"""The apprise alert channel, against a local HTTP endpoint (apprise's ``json://`` URL)."""

from __future__ import annotations

import json
import logging

import pytest

from integrity.alerts import Alert, get_channels, send_alert
from tests.helpers import unused_port

pytestmark = pytest.mark.django_db

TOKEN = "s3cr3tT0kenXYZ"  # noqa: S105 — a made-up token the logs and errors must never show


def json_url(httpserver, path: str, secret: str = "") -> str:
    auth = f"user:{secret}@" if secret else ""
    return f"json://{auth}{httpserver.host}:{httpserver.port}{path}"


def alert() -> Alert:
    return Alert(kind="symbol_failing", subject="AAPL: 3 consecutive backfill failures", message="timeout",
                 context={"symbol": "AAPL"})


def test_the_channel_is_on_when_urls_are_set(settings):
    settings.ALERT_APPRISE_URLS = ["json://127.0.0.1:9/hook"]
    assert [name for name, _ in get_channels()] == ["log", "apprise"]


def test_the_channel_is_off_without_urls(settings):
    settings.ALERT_APPRISE_URLS = []
    assert "apprise" not in [name for name, _ in get_channels()]


def test_the_alert_reaches_the_endpoint(settings, httpserver):
    settings.ALERT_APPRISE_URLS = [json_url(httpserver, "/notify")]
    httpserver.expect_request("/notify", method="POST").respond_with_data("ok")
    assert send_alert(alert()) == {"log": "sent", "apprise": "sent"}
    [(request, _response)] = httpserver.log
    body = json.loads(request.get_data())
    assert body["title"] == "[marketdata high] AAPL: 3 consecutive backfill failures"
    assert body["message"].startswith("[HIGH] AAPL: 3 consecutive backfill failures\ntimeout")
    assert '"symbol": "AAPL"' in body["message"]
    assert body["type"] == "failure"


def test_a_failing_url_fails_the_channel_and_the_other_urls_and_channels_still_get_it(settings, httpserver):
    settings.ALERT_APPRISE_URLS = [json_url(httpserver, "/broken"), json_url(httpserver, "/notify")]
    settings.ALERT_WEBHOOK_URL = httpserver.url_for("/hook")
    httpserver.expect_request("/broken").respond_with_data("no", status=500)
    httpserver.expect_request("/notify").respond_with_data("ok")
    httpserver.expect_request("/hook").respond_with_data("ok")
    outcome = send_alert(alert())
    assert outcome["apprise"] == "failed: apprise delivery failed for 1 of 2 URL(s): URL #1 (json): not delivered"
    assert outcome["webhook"] == "sent" and outcome["log"] == "sent"
    assert sorted(request.path for request, _ in httpserver.log) == ["/broken", "/hook", "/notify"]


def test_an_invalid_url_is_reported_as_such(settings):
    settings.ALERT_APPRISE_URLS = [f"nosuchscheme://{TOKEN}"]
    outcome = send_alert(alert())
    assert outcome["apprise"] == ("failed: apprise delivery failed for 1 of 1 URL(s): "
                                  "URL #1 (nosuchscheme): not a valid apprise URL")


def test_tokens_in_urls_never_reach_logs_or_errors(settings, httpserver, caplog):
    refused = f"json://user:{TOKEN}@127.0.0.1:{unused_port()}/{TOKEN}-path"
    settings.ALERT_APPRISE_URLS = [json_url(httpserver, f"/{TOKEN}", secret=TOKEN), refused]
    httpserver.expect_request(f"/{TOKEN}").respond_with_data("no", status=503)
    with caplog.at_level(logging.DEBUG):
        outcome = send_alert(alert())
    assert outcome["apprise"].startswith("failed: apprise delivery failed for 2 of 2 URL(s)")
    assert TOKEN not in outcome["apprise"]
    ours = [r for r in caplog.records if r.name != "werkzeug"]  # not the test server's own access log
    assert any(r.name == "apprise" for r in ours)  # apprise did log, masked
    assert not [r.getMessage() for r in ours if TOKEN in r.getMessage() or TOKEN in str(r.exc_info)]
