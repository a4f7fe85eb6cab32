"""``/metrics``: access rules (bearer token, else loopback only) and the Prometheus exposition."""

from __future__ import annotations

import re

import pytest

from integrity.failures import track_symbol_failure
from integrity.health.job import run_health_monitoring
from integrity.models import BackfillState, Candle, DataAnomaly, HealthCheckRun
from integrity.quality.anomalies import DetectionResult
from tests.helpers import add_instrument, utc

pytestmark = pytest.mark.django_db

METRIC_NAMES = (
    "marketdata_watched_series",
    "marketdata_stale_series",
    "marketdata_open_anomalies",
    "marketdata_failing_symbols",
    "marketdata_failing_symbols_at_threshold",
    "marketdata_backfills",
    "marketdata_last_health_run_timestamp_seconds",
    "marketdata_last_health_run_duration_seconds",
    "marketdata_last_health_run_status",
    "marketdata_metrics_collector_errors",
)
SAMPLE = re.compile(r'^([a-z_]+)(\{[a-z_]+="[^"]*"\})? (-?[0-9.e+]+)$')


def samples(text: str) -> dict[str, float]:
    """{'name{label="x"}': value} for every sample line; asserts the format of every line."""
    found = {}
    for line in text.splitlines():
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            continue
        match = SAMPLE.match(line)
        assert match, f"not a Prometheus sample line: {line!r}"
        found[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return found


@pytest.fixture(autouse=True)
def no_token(settings):
    settings.METRICS_TOKEN = ""


class TestTokenRequired:
    @pytest.fixture(autouse=True)
    def token(self, settings):
        settings.METRICS_TOKEN = "s3cret-token"

    def test_it_is_401_without_a_token(self, client):
        response = client.get("/metrics")
        assert response.status_code == 401
        assert response["WWW-Authenticate"].startswith("Bearer")

    def test_it_is_401_with_a_wrong_token(self, client):
        assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer nope").status_code == 401

    def test_it_is_401_for_loopback_clients_too(self, client):
        assert client.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 401

    def test_the_right_token_is_served_from_anywhere(self, client):
        response = client.get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret-token", REMOTE_ADDR="203.0.113.9")
        assert response.status_code == 200


class TestLoopbackOnlyWithoutToken:
    @pytest.mark.parametrize("address", ["127.0.0.1", "::1", "127.0.0.53"])
    def test_loopback_clients_are_served(self, client, address):
        assert client.get("/metrics", REMOTE_ADDR=address).status_code == 200

    @pytest.mark.parametrize("address", ["10.0.0.5", "203.0.113.9", "2001:db8::1", ""])
    def test_other_clients_are_forbidden(self, client, address):
        assert client.get("/metrics", REMOTE_ADDR=address).status_code == 403

    def test_only_get_is_allowed(self, client):
        assert client.post("/metrics").status_code == 405


class TestExposition:
    @pytest.fixture
    def populated(self, monkeypatch):
        monkeypatch.setattr("integrity.quality.anomalies.detect_data_anomalies",
                            lambda **kw: DetectionResult(dry_run=False, full=False))
        add_instrument("BTC-USD")
        add_instrument("ETH-USD")
        Candle.objects.create(symbol="BTC-USD", timeframe="1h", ts=utc(2024, 6, 5, 11), open=1, high=1, low=1,
                              close=1, volume=1)  # long stale by now; ETH-USD has no bars at all
        for i, severity in enumerate(["high", "critical", "critical"]):
            DataAnomaly.objects.create(symbol="BTC-USD", timeframe="1h", anomaly_type="gap", severity=severity,
                                       description="d", fingerprint=f"f{i}")
        for _ in range(3):
            track_symbol_failure("AAA", success=False)
        track_symbol_failure("BBB", success=False)
        BackfillState.objects.create(symbol="BTC-USD", timeframe="1h", asset_class="crypto")
        return run_health_monitoring()

    def test_it_is_prometheus_text(self, client):
        response = client.get("/metrics")
        assert response["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        text = response.content.decode()
        for name in METRIC_NAMES:
            assert f"# TYPE {name} gauge" in text
            assert f"# HELP {name} " in text
        samples(text)  # every line parses

    def test_it_reports_the_state_of_the_store(self, client, populated):
        found = samples(client.get("/metrics").content.decode())
        assert found["marketdata_watched_series"] == 2
        assert found["marketdata_stale_series"] == 2
        assert found['marketdata_open_anomalies{severity="critical"}'] == 2
        assert found['marketdata_open_anomalies{severity="high"}'] == 1
        assert found['marketdata_open_anomalies{severity="low"}'] == 0
        assert found["marketdata_failing_symbols"] == 2
        assert found["marketdata_failing_symbols_at_threshold"] == 1
        assert found['marketdata_backfills{status="pending"}'] == 1
        assert found['marketdata_backfills{status="completed"}'] == 0
        assert found['marketdata_last_health_run_status{status="critical"}'] == 1
        assert found['marketdata_last_health_run_status{status="healthy"}'] == 0
        finished = HealthCheckRun.objects.get().finished_at.timestamp()
        assert found["marketdata_last_health_run_timestamp_seconds"] == pytest.approx(finished)

    def test_before_any_health_run_the_timestamp_is_zero(self, client):
        found = samples(client.get("/metrics").content.decode())
        assert found["marketdata_last_health_run_timestamp_seconds"] == 0
        assert all(v == 0 for k, v in found.items() if k.startswith("marketdata_last_health_run_status"))

    def test_a_failing_collector_is_flagged_and_the_others_still_report(self, client, monkeypatch):
        def broken(now, errors=None):
            raise RuntimeError("boom")

        monkeypatch.setattr("integrity.health.staleness.assess_staleness", broken)
        response = client.get("/metrics")
        assert response.status_code == 200
        found = samples(response.content.decode())
        assert found['marketdata_metrics_collector_errors{collector="stale_series"}'] == 1
        assert found['marketdata_metrics_collector_errors{collector="backfills"}'] == 0
        assert "marketdata_stale_series" not in found
        assert 'marketdata_open_anomalies{severity="critical"}' in found
