"""Alert channels (log, email, webhook) and the de-duplication rules, against real local servers."""

from __future__ import annotations

import email
import json
import logging
import socket
import threading
from datetime import timedelta

import pytest
from django.core import mail

from integrity.alerts import Alert, get_channels, send_alert, webhook_payload
from integrity.failures import track_symbol_failure
from integrity.health.job import run_health_monitoring
from integrity.models import Candle, DataAnomaly, SeriesStats, SymbolFailureTracking
from integrity.quality.anomalies import DetectionResult
from tests.helpers import add_instrument, utc

pytestmark = pytest.mark.django_db

NOW = utc(2024, 6, 5, 12, 0)  # newest complete 24/7 1h bar: 11:00


def add_bars(symbol, last, hours=12, timeframe="1h"):
    Candle.objects.bulk_create([
        Candle(symbol=symbol, timeframe=timeframe, ts=last - timedelta(hours=h), open=1, high=1, low=1, close=1,
               volume=1)
        for h in range(hours)
    ])


def add_anomaly(symbol="BTC-USD", severity="critical", status="open", key="a"):
    return DataAnomaly.objects.create(symbol=symbol, timeframe="1h", anomaly_type="gap", severity=severity,
                                      description="3 bars missing", resolution_status=status,
                                      fingerprint=f"{symbol}-{key}")


def kinds(report) -> list[str]:
    return [a["kind"] for a in report.alerts]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(autouse=True)
def quiet_scan(monkeypatch):
    monkeypatch.setattr("integrity.quality.anomalies.detect_data_anomalies",
                        lambda **kw: DetectionResult(dry_run=False, full=False))


@pytest.fixture
def email_on(settings):
    settings.ALERT_EMAIL_RECIPIENTS = ["ops@example.com", "oncall@example.com"]
    settings.DEFAULT_FROM_EMAIL = "integrity@example.com"
    return settings


@pytest.fixture
def fast_webhook(settings):
    settings.ALERT_WEBHOOK_BACKOFF = 0.01
    settings.ALERT_WEBHOOK_TIMEOUT = 2
    settings.ALERT_WEBHOOK_RETRIES = 2
    return settings


# --- a real (tiny) SMTP server -----------------------------------------------------------------


class SMTPSink:
    """Just enough SMTP (RFC 5321 without extensions) for smtplib to deliver to; keeps what arrives."""

    def __init__(self):
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(5)
        self.port = self.server.getsockname()[1]
        self.messages: list[dict] = []
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                self.session(conn.makefile("rb"), conn)

    def session(self, reader, conn):
        def reply(line: str):
            conn.sendall(line.encode() + b"\r\n")

        reply("220 sink ESMTP")
        envelope = {"from": None, "to": [], "data": b""}
        while True:
            line = reader.readline()
            if not line:
                return
            command = line.decode(errors="replace").strip()
            verb = command[:4].upper()
            if verb == "EHLO":
                reply("250-sink")
                reply("250 8BITMIME")
            elif verb == "HELO":
                reply("250 sink")
            elif verb == "MAIL":
                envelope = {"from": command.split(":", 1)[1].strip(), "to": [], "data": b""}
                reply("250 OK")
            elif verb == "RCPT":
                envelope["to"].append(command.split(":", 1)[1].strip().strip("<>"))
                reply("250 OK")
            elif verb == "DATA":
                reply("354 end with <CRLF>.<CRLF>")
                chunks = []
                while True:
                    data_line = reader.readline()
                    if data_line in (b".\r\n", b".\n", b""):
                        break
                    chunks.append(data_line[1:] if data_line.startswith(b"..") else data_line)
                envelope["data"] = b"".join(chunks)
                self.messages.append(envelope)
                reply("250 OK queued")
            elif verb == "QUIT":
                reply("221 bye")
                return
            else:  # RSET, NOOP, ...
                reply("250 OK")

    def close(self):
        self.server.close()


@pytest.fixture
def smtp_sink():
    sink = SMTPSink()
    yield sink
    sink.close()


# --- channels ----------------------------------------------------------------------------------


class TestChannelSelection:
    def test_only_the_log_channel_is_on_by_default(self, settings):
        settings.ALERT_EMAIL_RECIPIENTS = []
        settings.ALERT_WEBHOOK_URL = ""
        assert [name for name, _ in get_channels()] == ["log"]

    def test_email_is_on_when_recipients_are_set(self, email_on):
        assert [name for name, _ in get_channels()] == ["log", "email"]

    def test_a_comma_separated_recipient_string_is_accepted(self, settings):
        settings.ALERT_EMAIL_RECIPIENTS = "a@example.com, b@example.com"
        send_alert(Alert(kind="t", subject="s", message="m"))
        assert mail.outbox[0].to == ["a@example.com", "b@example.com"]

    def test_webhook_is_on_when_its_url_is_set(self, settings):
        settings.ALERT_WEBHOOK_URL = "http://127.0.0.1:1/hook"
        assert [name for name, _ in get_channels()] == ["log", "webhook"]


class TestLogChannel:
    def test_every_alert_is_logged(self, caplog):
        with caplog.at_level(logging.WARNING, logger="integrity.alerts"):
            outcome = send_alert(Alert(kind="series_stale", subject="AAPL 1d stale", message="30 h behind"))
        assert outcome == {"log": "sent"}
        assert "ALERT series_stale: AAPL 1d stale" in caplog.text


class TestEmailChannel:
    def test_it_sends_the_alert_to_the_recipients(self, email_on):
        outcome = send_alert(Alert(kind="critical_anomaly", subject="critical gap on AAPL 1h", message="3 bars missing",
                                   severity="critical", context={"symbol": "AAPL"}))
        assert outcome == {"log": "sent", "email": "sent"}
        [message] = mail.outbox
        assert message.to == ["ops@example.com", "oncall@example.com"]
        assert message.from_email == "integrity@example.com"
        assert message.subject == "[marketdata critical] critical gap on AAPL 1h"
        assert "[CRITICAL] critical gap on AAPL 1h\n3 bars missing" in message.body
        assert '"symbol": "AAPL"' in message.body

    def test_it_delivers_over_real_smtp(self, email_on, smtp_sink):
        email_on.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
        email_on.EMAIL_HOST, email_on.EMAIL_PORT = "127.0.0.1", smtp_sink.port
        email_on.EMAIL_USE_TLS = email_on.EMAIL_USE_SSL = False
        email_on.EMAIL_HOST_USER = email_on.EMAIL_HOST_PASSWORD = ""
        outcome = send_alert(Alert(kind="series_stale", subject="AAPL 1d stale", message="no bar since Friday"))
        assert outcome["email"] == "sent"
        [received] = smtp_sink.messages
        assert received["from"] == "<integrity@example.com>"
        assert received["to"] == ["ops@example.com", "oncall@example.com"]
        parsed = email.message_from_bytes(received["data"])
        assert parsed["Subject"] == "[marketdata high] AAPL 1d stale"
        assert "no bar since Friday" in parsed.get_payload(decode=True).decode()

    def test_an_unreachable_smtp_server_fails_the_channel_only(self, email_on, fast_webhook, httpserver):
        email_on.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
        email_on.EMAIL_HOST, email_on.EMAIL_PORT, email_on.EMAIL_TIMEOUT = "127.0.0.1", free_port(), 2
        email_on.ALERT_WEBHOOK_URL = httpserver.url_for("/hook")
        httpserver.expect_request("/hook", method="POST").respond_with_data("ok")
        outcome = send_alert(Alert(kind="t", subject="s", message="m"))
        assert outcome["log"] == "sent"
        assert outcome["email"].startswith("failed:")
        assert outcome["webhook"] == "sent"


class TestWebhookChannel:
    def test_it_posts_slack_compatible_json_with_structured_fields(self, fast_webhook, httpserver):
        fast_webhook.ALERT_WEBHOOK_URL = httpserver.url_for("/hook")
        httpserver.expect_request("/hook", method="POST").respond_with_data("ok")
        alert = Alert(kind="symbol_failing", subject="AAPL: 3 consecutive backfill failures", message="timeout",
                      context={"symbol": "AAPL", "consecutive_failures": 3})
        assert send_alert(alert) == {"log": "sent", "webhook": "sent"}
        [(request, _response)] = httpserver.log
        assert request.headers["Content-Type"] == "application/json"
        body = json.loads(request.get_data())
        assert body["text"] == "[HIGH] AAPL: 3 consecutive backfill failures\ntimeout"
        assert body["kind"] == "symbol_failing" and body["severity"] == "high"
        assert body["context"] == {"symbol": "AAPL", "consecutive_failures": 3}
        assert set(body) == set(webhook_payload(alert))

    def test_it_retries_a_server_error_then_succeeds(self, fast_webhook, httpserver):
        fast_webhook.ALERT_WEBHOOK_URL = httpserver.url_for("/hook")
        httpserver.expect_ordered_request("/hook", method="POST").respond_with_data("busy", status=500)
        httpserver.expect_ordered_request("/hook", method="POST").respond_with_data("ok", status=200)
        assert send_alert(Alert(kind="t", subject="s", message="m"))["webhook"] == "sent"
        assert [response.status_code for _, response in httpserver.log] == [500, 200]

    def test_it_gives_up_after_the_configured_retries(self, fast_webhook, httpserver):
        fast_webhook.ALERT_WEBHOOK_URL = httpserver.url_for("/hook")
        fast_webhook.ALERT_WEBHOOK_RETRIES = 2
        httpserver.expect_request("/hook", method="POST").respond_with_data("down", status=503)
        outcome = send_alert(Alert(kind="t", subject="s", message="m"))
        assert outcome["webhook"].startswith("failed: webhook delivery failed after 3 attempt(s): HTTP 503")
        assert len(httpserver.log) == 3

    def test_a_hook_that_does_not_answer_is_timed_out_and_retried(self, fast_webhook):
        # A real listening socket that never answers: connects succeed (the backlog), reads time out.
        silent = socket.socket()
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        try:
            fast_webhook.ALERT_WEBHOOK_URL = f"http://127.0.0.1:{silent.getsockname()[1]}/hook"
            fast_webhook.ALERT_WEBHOOK_TIMEOUT = 0.2
            fast_webhook.ALERT_WEBHOOK_RETRIES = 1
            outcome = send_alert(Alert(kind="t", subject="s", message="m"))
        finally:
            silent.close()
        assert outcome["log"] == "sent"
        assert outcome["webhook"].startswith("failed: webhook delivery failed after 2 attempt(s): ReadTimeout")

    def test_a_client_error_is_not_retried(self, fast_webhook, httpserver):
        fast_webhook.ALERT_WEBHOOK_URL = httpserver.url_for("/hook")
        httpserver.expect_request("/hook", method="POST").respond_with_data("no such hook", status=404)
        outcome = send_alert(Alert(kind="t", subject="s", message="m"))
        assert "HTTP 404" in outcome["webhook"]
        assert len(httpserver.log) == 1

    def test_a_refused_connection_fails_the_channel_not_the_job_or_the_others(self, fast_webhook, email_on):
        fast_webhook.ALERT_WEBHOOK_URL = f"http://127.0.0.1:{free_port()}/hook"
        add_instrument("ETH-USD")
        add_bars("ETH-USD", utc(2024, 6, 4, 22))
        report = run_health_monitoring(now=NOW)
        assert report.errors == []
        [alert] = report.alerts
        assert alert["channels"]["log"] == "sent"
        assert alert["channels"]["email"] == "sent"
        assert alert["channels"]["webhook"].startswith("failed: webhook delivery failed after 3 attempt(s): Connect")
        assert len(mail.outbox) == 1
        assert report.status == "warning"


# --- de-duplication ------------------------------------------------------------------------------


class TestStaleSeriesAlertsOnce:
    @pytest.fixture
    def stale_eth(self):
        add_instrument("ETH-USD")
        add_bars("ETH-USD", utc(2024, 6, 4, 22))  # the bars due at 02:00 missing: 10 h at NOW

    def test_a_series_that_becomes_stale_alerts_once(self, stale_eth, email_on):
        first = run_health_monitoring(now=NOW)
        second = run_health_monitoring(now=NOW + timedelta(hours=1))
        assert kinds(first) == ["series_stale"]
        assert first.alerts[0]["subject"] == "1 series became stale: ETH-USD 1h"
        assert kinds(second) == []
        assert len(mail.outbox) == 1
        assert second.stale_series.count == 1  # still reported, just not re-alerted

    def test_the_series_stats_row_is_created_when_missing(self, stale_eth):
        assert not SeriesStats.objects.exists()
        run_health_monitoring(now=NOW)
        stats = SeriesStats.objects.get(symbol="ETH-USD", timeframe="1h")
        assert stats.stale_alert_sent_at is not None

    def test_it_is_re_armed_when_the_series_is_fresh_again(self, stale_eth):
        run_health_monitoring(now=NOW)
        add_bars("ETH-USD", utc(2024, 6, 5, 11), hours=10)  # caught up
        fresh = run_health_monitoring(now=NOW)
        assert fresh.stale_series.count == 0
        assert SeriesStats.objects.get(symbol="ETH-USD").stale_alert_sent_at is None
        stale_again = run_health_monitoring(now=NOW + timedelta(days=1))  # the next 02:00 run's bars missing
        assert kinds(stale_again) == ["series_stale"]

    def test_no_recovery_notice_by_default(self, stale_eth, settings):
        settings.ALERT_RECOVERY_NOTICES = False
        run_health_monitoring(now=NOW)
        add_bars("ETH-USD", utc(2024, 6, 5, 11), hours=10)
        assert kinds(run_health_monitoring(now=NOW)) == []

    def test_a_recovery_notice_is_sent_when_enabled(self, stale_eth, settings):
        settings.ALERT_RECOVERY_NOTICES = True
        run_health_monitoring(now=NOW)
        add_bars("ETH-USD", utc(2024, 6, 5, 11), hours=10)
        report = run_health_monitoring(now=NOW)
        assert kinds(report) == ["series_fresh"]
        assert report.alerts[0]["severity"] == "low"
        assert kinds(run_health_monitoring(now=NOW)) == []  # once

    def test_many_newly_stale_series_make_one_digest_alert(self):
        for i in range(5):
            add_instrument(f"C{i}-USD")
            add_bars(f"C{i}-USD", utc(2024, 6, 4, 12))
        [alert] = run_health_monitoring(now=NOW).alerts
        assert alert["subject"] == "5 series became stale: C0-USD 1h, C1-USD 1h, C2-USD 1h …"
        assert SeriesStats.objects.filter(stale_alert_sent_at__isnull=False).count() == 5


class TestCriticalAnomalyAlertsOnce:
    def test_a_new_critical_anomaly_alerts_once(self, email_on):
        anomaly = add_anomaly()
        first = run_health_monitoring(now=NOW)
        second = run_health_monitoring(now=NOW)
        assert kinds(first) == ["critical_anomaly"]
        assert first.alerts[0]["subject"] == "critical gap on BTC-USD 1h"
        assert kinds(second) == []
        anomaly.refresh_from_db()
        assert anomaly.alert_sent_at is not None
        assert len(mail.outbox) == 1

    def test_an_anomaly_already_alerted_is_not_alerted_again(self):
        anomaly = add_anomaly()
        DataAnomaly.objects.filter(pk=anomaly.pk).update(alert_sent_at=utc(2024, 6, 1))
        assert kinds(run_health_monitoring(now=NOW)) == []

    def test_high_anomalies_do_not_alert(self):
        add_anomaly(severity="high")
        assert kinds(run_health_monitoring(now=NOW)) == []

    def test_acknowledged_critical_anomalies_do_not_alert(self):
        add_anomaly(status="acknowledged")
        assert kinds(run_health_monitoring(now=NOW)) == []

    def test_an_anomaly_found_by_the_scan_in_the_same_run_is_alerted(self, monkeypatch):
        def scan(**kwargs):
            anomaly = add_anomaly(key="new")
            return DetectionResult(dry_run=False, full=False, created=1, new_anomaly_ids=[anomaly.pk])

        monkeypatch.setattr("integrity.quality.anomalies.detect_data_anomalies", scan)
        report = run_health_monitoring(now=NOW)
        assert kinds(report) == ["critical_anomaly"]
        assert report.anomaly_scan["new_anomalies"] == 1


class TestFailingSymbolAlertsOnce:
    def test_the_third_consecutive_failure_alerts_once(self, email_on):
        for _ in range(5):
            track_symbol_failure("AAPL", success=False, error="provider timeout")
        assert len(mail.outbox) == 1
        assert mail.outbox[0].subject == "[marketdata high] AAPL: 3 consecutive backfill failures"

    def test_the_health_job_does_not_resend_it(self, email_on):
        for _ in range(3):
            track_symbol_failure("AAPL", success=False)
        report = run_health_monitoring(now=NOW)
        assert kinds(report) == []
        assert report.failing_symbols.at_threshold == 1
        assert len(mail.outbox) == 1

    def test_a_symbol_over_a_lowered_threshold_is_alerted_once_by_the_health_job(self, settings):
        settings.FAILURE_ALERT_THRESHOLD = 5
        for _ in range(3):
            track_symbol_failure("AAPL", success=False)
        assert SymbolFailureTracking.objects.get(symbol="AAPL").alert_sent is False
        settings.FAILURE_ALERT_THRESHOLD = 3
        assert kinds(run_health_monitoring(now=NOW)) == ["symbol_failing"]
        assert kinds(run_health_monitoring(now=NOW)) == []

    def test_a_success_re_arms_it(self, email_on):
        for _ in range(3):
            track_symbol_failure("AAPL", success=False)
        track_symbol_failure("AAPL", success=True)
        for _ in range(3):
            track_symbol_failure("AAPL", success=False)
        assert len(mail.outbox) == 2


class TestSymbolRecoveryNotice:
    def fail_three_times(self):
        for _ in range(3):
            track_symbol_failure("AAPL", success=False, error="provider timeout")

    def test_an_alerted_symbol_that_succeeds_sends_a_notice_when_enabled(self, email_on):
        email_on.ALERT_RECOVERY_NOTICES = True
        self.fail_three_times()
        track_symbol_failure("AAPL", success=True)
        track_symbol_failure("AAPL", success=True)  # once: the second success has nothing to recover from
        assert [m.subject for m in mail.outbox] == ["[marketdata high] AAPL: 3 consecutive backfill failures",
                                                   "[marketdata low] AAPL recovered"]

    def test_no_notice_by_default(self, email_on):
        email_on.ALERT_RECOVERY_NOTICES = False
        self.fail_three_times()
        track_symbol_failure("AAPL", success=True)
        assert len(mail.outbox) == 1

    def test_no_notice_for_a_symbol_that_never_alerted(self, email_on):
        email_on.ALERT_RECOVERY_NOTICES = True
        track_symbol_failure("AAPL", success=False)
        track_symbol_failure("AAPL", success=True)
        assert mail.outbox == []
