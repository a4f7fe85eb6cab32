"""Review that sticks (issue 12 §2): a resolution has a reason; any reason but ``fixed`` is never
reopened by a scan, a ``fixed`` problem that comes back reopens as a regression. One behaviour per test."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command

from integrity.backfill import run_backfill
from integrity.models import Candle, DataAnomaly, ResolutionReason
from integrity.quality.anomalies import detect_data_anomalies
from integrity.quality.review import review_anomalies
from tests.helpers import add_instrument, make_anomaly, utc

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("default_thresholds")]

START, END = utc(2024, 1, 1), utc(2024, 1, 5)
SPIKE = utc(2024, 1, 3, 12)
NOW = utc(2024, 1, 5, 1)


def series(**faults):
    add_instrument(**faults)
    assert run_backfill("BTC-USD", "1h", start=START, end=END, now=NOW).ok


def open_of(anomaly_type: str):
    return DataAnomaly.objects.filter(anomaly_type=anomaly_type, resolution_status="open")


def delete_bars(start, end) -> None:
    rows = Candle.objects.filter(symbol="BTC-USD", timeframe="1h", ts__gte=start, ts__lt=end)
    rows._raw_delete(rows.db)


class TestSticky:
    @pytest.mark.parametrize("reason", ["false_positive", "expected"])
    def test_a_dismissed_outlier_is_not_recreated_by_a_full_scan(self, reason):
        series(spikes=[SPIKE.isoformat()])
        detect_data_anomalies(now=NOW, types=["outlier"])
        [outlier] = open_of("outlier")
        outlier.resolve(by="analyst", reason=reason)

        result = detect_data_anomalies(now=NOW, full=True)

        assert not open_of("outlier").exists()
        assert result.dismissed == 1 and not [f for f in result.findings if f.anomaly_type == "outlier"]
        assert DataAnomaly.objects.filter(anomaly_type="outlier").count() == 1

    def test_a_dismissed_outlier_is_not_recreated_by_an_incremental_scan_either(self):
        series(spikes=[SPIKE.isoformat()])
        detect_data_anomalies(now=NOW)
        open_of("outlier").get().resolve(reason="false_positive")
        run_backfill("BTC-USD", "1h", start=START, end=END, now=NOW)  # the series changed: rescanned

        result = detect_data_anomalies(now=NOW)

        assert result.series_rescanned == 1 and result.dismissed == 1
        assert not open_of("outlier").exists()

    def test_detect_anomalies_says_how_many_findings_it_left_out(self):
        series(spikes=[SPIKE.isoformat()])
        detect_data_anomalies(now=NOW, types=["outlier"])
        open_of("outlier").get().resolve(reason="false_positive")
        out = io.StringIO()

        call_command("detect_anomalies", "--full", "--types", "outlier", "--as-of", NOW.isoformat(), stdout=out)

        assert "1 left out (resolved for good as false positive, expected or missing at source)" in out.getvalue()

    def test_an_outlier_resolved_fixed_that_is_still_there_reopens_as_a_regression(self):
        series(spikes=[SPIKE.isoformat()])
        detect_data_anomalies(now=NOW, types=["outlier"])
        open_of("outlier").get().resolve(reason="fixed")

        detect_data_anomalies(now=NOW, full=True, types=["outlier"])

        assert open_of("outlier").get().regressions == 1


class TestRegression:
    def test_a_fixed_gap_that_comes_back_reopens_as_a_regression(self):
        series()
        delete_bars(utc(2024, 1, 2), utc(2024, 1, 2, 5))
        detect_data_anomalies(now=NOW, full=True)
        run_backfill("BTC-USD", "1h", start=START, end=END, now=NOW)  # the gap is filled again
        detect_data_anomalies(now=NOW)
        fixed = DataAnomaly.objects.get(anomaly_type="gap")
        assert (fixed.resolution_status, fixed.resolution_reason) == ("resolved", "fixed")

        delete_bars(utc(2024, 1, 2), utc(2024, 1, 2, 5))
        detect_data_anomalies(now=NOW, full=True)

        back = open_of("gap").get()
        assert back.pk != fixed.pk and back.fingerprint == fixed.fingerprint and back.regressions == 1

    def test_a_new_problem_is_not_a_regression(self):
        series()
        delete_bars(utc(2024, 1, 2), utc(2024, 1, 2, 5))

        detect_data_anomalies(now=NOW, full=True)

        assert open_of("gap").get().regressions == 0


class TestReasons:
    def test_a_scan_resolves_what_it_no_longer_finds_as_fixed(self):
        series()
        delete_bars(utc(2024, 1, 2), utc(2024, 1, 2, 5))
        detect_data_anomalies(now=NOW, full=True)
        run_backfill("BTC-USD", "1h", start=START, end=END, now=NOW)

        detect_data_anomalies(now=NOW)

        assert DataAnomaly.objects.get(anomaly_type="gap").resolution_reason == "fixed"

    def test_resolving_without_a_reason_means_fixed(self):
        anomaly = make_anomaly()
        anomaly.resolve(by="someone")
        anomaly.refresh_from_db()
        assert anomaly.resolution_reason == ResolutionReason.FIXED

    def test_an_unknown_reason_is_refused_naming_the_reasons(self):
        anomaly = make_anomaly()
        with pytest.raises(ValueError, match="false_positive, expected, missing_at_source"):
            anomaly.resolve(reason="because")
        anomaly.refresh_from_db()
        assert anomaly.resolution_status == "open"

    def test_a_bulk_resolution_records_its_reason_and_says_it(self):
        a, b = make_anomaly(), make_anomaly()
        outcome = review_anomalies(DataAnomaly.objects.all(), "resolved", by="root", reason="expected")
        assert set(DataAnomaly.objects.values_list("resolution_reason", flat=True)) == {"expected"}
        assert outcome.summary().endswith("UTC, as expected).") and f"#{a.pk}, #{b.pk}" in outcome.summary()


class TestDryRun:
    def test_a_dry_run_does_not_report_a_dismissed_outlier(self):
        series(spikes=[SPIKE.isoformat()])
        detect_data_anomalies(now=NOW, types=["outlier"])
        open_of("outlier").get().resolve(reason="false_positive")

        result = detect_data_anomalies(now=NOW, full=True, types=["outlier"], dry_run=True)

        assert (result.found, result.dismissed) == (0, 1)
