"""``/metrics`` through prometheus_client: per-series lag, backfill histograms, repair attempts by outcome."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from integrity.health.staleness import assess_staleness
from integrity.metrics import render_metrics
from integrity.models import BackfillState, Candle
from tests.health.test_metrics import samples
from tests.helpers import add_instrument, make_anomaly, utc

pytestmark = pytest.mark.django_db


def scrape() -> dict[str, float]:
    return samples(render_metrics())


def completed_backfill(started_ago: timedelta, seconds: float, rows: int, status="completed"):
    started = timezone.now() - started_ago
    BackfillState.objects.create(symbol="BTC-USD", timeframe="1h", asset_class="crypto", status=status,
                                 started_at=started, completed_at=started + timedelta(seconds=seconds),
                                 records_inserted=rows)


class TestSeriesLag:
    @pytest.fixture
    def watchlist(self):
        add_instrument("BTC-USD")
        add_instrument("ETH-USD")  # no bars at all
        Candle.objects.create(symbol="BTC-USD", timeframe="1h", ts=utc(2024, 6, 5, 11), open=1, high=1, low=1,
                              close=1, volume=1)

    def test_a_stale_series_reports_its_lag_in_seconds(self, watchlist):
        expected = next(s for s in assess_staleness(timezone.now()) if s.symbol == "BTC-USD").lag_hours * 3600
        assert scrape()['marketdata_series_lag_seconds{series="BTC-USD/1h"}'] == pytest.approx(expected, abs=60)

    def test_a_series_without_bars_has_no_lag_sample(self, watchlist):
        assert not any("ETH-USD" in name for name in scrape())

    def test_the_lags_are_also_a_histogram_across_the_series(self):
        add_instrument("BTC-USD")
        add_instrument("ETH-USD")
        add_instrument("SOL-USD")  # no bars: left out, as from the per-series gauge
        now = timezone.now().replace(minute=0, second=0, microsecond=0)
        for symbol, hours_ago in (("BTC-USD", 1), ("ETH-USD", 24 * 30)):
            Candle.objects.create(symbol=symbol, timeframe="1h", ts=now - timedelta(hours=hours_ago), open=1, high=1,
                                  low=1, close=1, volume=1)
        lags = {s.symbol: (s.lag_hours or 0) * 3600 for s in assess_staleness(timezone.now()) if s.last_bar}
        found = scrape()
        assert found["marketdata_series_lag_distribution_seconds_count"] == 2
        assert found["marketdata_series_lag_distribution_seconds_sum"] == pytest.approx(sum(lags.values()), abs=60)
        assert found['marketdata_series_lag_distribution_seconds_bucket{le="3600.0"}'] == 1  # BTC-USD, current
        assert found['marketdata_series_lag_distribution_seconds_bucket{le="604800.0"}'] == 1
        assert found['marketdata_series_lag_distribution_seconds_bucket{le="+Inf"}'] == 2


class TestBackfillHistograms:
    @pytest.fixture(autouse=True)
    def executions(self):
        completed_backfill(timedelta(minutes=10), seconds=90, rows=500)
        completed_backfill(timedelta(minutes=5), seconds=10, rows=5)
        completed_backfill(timedelta(hours=30), seconds=5000, rows=10**6)  # outside the window
        completed_backfill(timedelta(minutes=3), seconds=1, rows=0, status="failed")  # not completed

    def test_duration_counts_the_recent_completed_executions_in_buckets(self):
        found = scrape()
        assert found['marketdata_backfill_duration_seconds_bucket{le="5.0"}'] == 0
        assert found['marketdata_backfill_duration_seconds_bucket{le="15.0"}'] == 1
        assert found['marketdata_backfill_duration_seconds_bucket{le="120.0"}'] == 2
        assert found['marketdata_backfill_duration_seconds_bucket{le="+Inf"}'] == 2
        assert found["marketdata_backfill_duration_seconds_count"] == 2
        assert found["marketdata_backfill_duration_seconds_sum"] == pytest.approx(100)

    def test_rows_counts_the_recent_completed_executions_in_buckets(self):
        found = scrape()
        assert found['marketdata_backfill_rows_bucket{le="10.0"}'] == 1
        assert found['marketdata_backfill_rows_bucket{le="100.0"}'] == 1
        assert found['marketdata_backfill_rows_bucket{le="1000.0"}'] == 2
        assert found["marketdata_backfill_rows_count"] == 2
        assert found["marketdata_backfill_rows_sum"] == 505


class TestRepairAttempts:
    def test_attempts_recorded_on_anomalies_are_counted_by_outcome(self):
        make_anomaly(details={"repairs": [{"outcome": "failed"}, {"outcome": "fixed"}]})
        make_anomaly(details={"repairs": [{"outcome": "failed"}]})
        make_anomaly(details={})
        found = scrape()
        assert found['marketdata_repair_attempts{outcome="fixed"}'] == 1
        assert found['marketdata_repair_attempts{outcome="failed"}'] == 2
        assert found['marketdata_repair_attempts{outcome="busy"}'] == 0
        assert found['marketdata_metrics_collector_errors{collector="repairs"}'] == 0


class TestRegistry:
    def test_only_this_services_metrics_are_exposed(self):
        names = {name.split("{")[0] for name in scrape()}
        assert names and all(name.startswith("marketdata_") for name in names)

    def test_every_scrape_reports_afresh(self):
        completed_backfill(timedelta(minutes=5), seconds=10, rows=5)
        assert scrape()["marketdata_backfill_rows_count"] == 1
        completed_backfill(timedelta(minutes=4), seconds=10, rows=5)
        assert scrape()["marketdata_backfill_rows_count"] == 2
