"""Enrichment: ``series_stats`` per series (first/last bar, counts, expected bars, coverage, volatility)."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from integrity.models import Candle, SeriesStats
from integrity.providers.synthetic import synthetic_bars
from integrity.quality.anomalies import detect_data_anomalies
from integrity.quality.enrichment import enrich_series, series_volatilities
from integrity.quality.thresholds import DEFAULT_THRESHOLDS, series_contexts
from tests.helpers import add_instrument, utc

pytestmark = pytest.mark.django_db


def load(symbol: str, timeframe: str, calendar: str, start, end, **options) -> None:
    frame = synthetic_bars(symbol, timeframe, calendar, start, end, **options)
    Candle.objects.bulk_create([
        Candle(symbol=symbol, timeframe=timeframe, ts=r.ts.to_pydatetime(), open=r.open, high=r.high, low=r.low,
               close=r.close, volume=r.volume) for r in frame.itertuples(index=False)])


@pytest.fixture
def aapl():
    add_instrument("AAPL", "equity", "XNYS", timeframes=("1d",))
    load("AAPL", "1d", "XNYS", utc(2024, 1, 1), utc(2025, 1, 1))  # 252 sessions, 01-02 .. 12-31
    Candle.objects.filter(symbol="AAPL", ts=utc(2024, 6, 3)).delete()
    row = Candle.objects.get(symbol="AAPL", ts=utc(2024, 6, 4))
    row.pk = None
    row.save()  # a duplicate: counted as a row, not as coverage


class TestEnrichSeries:
    def test_it_counts_rows_expected_sessions_and_coverage(self, aapl):
        [stats] = enrich_series()
        assert (stats.first_ts, stats.last_ts) == (utc(2024, 1, 2), utc(2024, 12, 31))
        assert (stats.bar_count, stats.expected_bars) == (252, 252)
        assert stats.coverage_pct == pytest.approx(100 * 251 / 252, abs=0.001)
        stored = SeriesStats.objects.get(symbol="AAPL", timeframe="1d")
        assert (stored.bar_count, stored.expected_bars, stored.coverage_pct) == (252, 252, stats.coverage_pct)

    def test_its_volatility_is_the_one_the_outlier_test_uses(self, aapl):
        [stats] = enrich_series()
        # What the outlier detector computes for a series series_stats has no volatility for.
        [(_, detector_volatility)] = series_volatilities([("AAPL", "1d")],
                                                         DEFAULT_THRESHOLDS["outlier_vol_sample"]).values()
        assert stats.robust_volatility == pytest.approx(detector_volatility, rel=1e-9)
        [context] = series_contexts()
        assert context.robust_volatility == stats.robust_volatility

    def test_a_rerun_updates_the_row_and_keeps_the_scan_bookmark(self, aapl):
        detect_data_anomalies(now=utc(2025, 1, 2))
        enrich_series()
        Candle.objects.filter(symbol="AAPL", ts=utc(2024, 12, 31)).delete()
        [stats] = enrich_series()
        stored = SeriesStats.objects.get()
        assert (stored.last_ts, stored.bar_count, stats.expected_bars) == (utc(2024, 12, 30), 251, 251)
        assert stored.last_scanned_ts == utc(2024, 12, 31)

    def test_many_series_take_a_fixed_number_of_queries(self, django_assert_max_num_queries):
        for i in range(4):
            add_instrument(f"C{i}", "crypto", "24/7", timeframes=("1h",))
            load(f"C{i}", "1h", "24/7", utc(2024, 1, 1), utc(2024, 1, 3))
        # instruments, the GROUP BY, the volatility statement, the upsert
        with django_assert_max_num_queries(4):
            results = enrich_series()
        assert [(r.symbol, r.bar_count, r.coverage_pct) for r in results] == [
            (f"C{i}", 48, 100.0) for i in range(4)]

    def test_the_command_prints_the_stats_as_json(self, aapl):
        out = StringIO()
        call_command("enrich", "--format", "json", stdout=out)
        [row] = json.loads(out.getvalue())
        assert {k: row[k] for k in ("symbol", "timeframe", "first_ts", "last_ts", "bar_count", "expected_bars")} == {
            "symbol": "AAPL", "timeframe": "1d", "first_ts": "2024-01-02T00:00:00+00:00",
            "last_ts": "2024-12-31T00:00:00+00:00", "bar_count": 252, "expected_bars": 252}
        assert row["robust_volatility"] > 0


class TestEnrichCommandArguments:
    def test_an_unknown_symbol_is_a_usage_error_naming_it_and_the_known_ones(self):
        add_instrument("AAPL", "equity", "XNYS", timeframes=("1d",))
        add_instrument("BTC-USD")
        with pytest.raises(CommandError) as caught:
            call_command("enrich", "--symbol", "UNKNOWN", stdout=StringIO())
        assert caught.value.returncode == 2
        assert "'UNKNOWN'" in str(caught.value) and "AAPL, BTC-USD" in str(caught.value)
        assert not SeriesStats.objects.exists()

    def test_without_any_instrument_the_error_says_there_is_none(self):
        with pytest.raises(CommandError, match=r"known: \(none yet\)"):
            call_command("enrich", "--symbol", "AAPL", stdout=StringIO())

    def test_an_unknown_timeframe_is_a_usage_error(self):
        with pytest.raises(CommandError, match="unknown timeframe '7m'") as caught:
            call_command("enrich", "--timeframe", "7m", stdout=StringIO())
        assert caught.value.returncode == 2

    def test_a_known_symbol_without_bars_enriches_nothing_and_succeeds(self):
        add_instrument("BTC-USD")
        out = StringIO()
        call_command("enrich", "--symbol", "BTC-USD", stdout=out)
        assert out.getvalue().startswith("enriched 0 series")
