"""The health-monitoring job: staleness (calendar-aware), failures, anomalies, status, isolation."""

from __future__ import annotations

import io
import json
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext

from integrity.failures import track_symbol_failure
from integrity.health.job import run_health_monitoring
from integrity.health.staleness import assess_staleness
from integrity.models import (
    BackfillState,
    BackfillStatus,
    Candle,
    DataAnomaly,
    HealthCheckRun,
    SeriesStats,
    SymbolFailureTracking,
)
from integrity.quality.anomalies import DetectionResult
from integrity.series import newest_bars, newest_bars_orm
from tests.helpers import add_instrument, utc

pytestmark = pytest.mark.django_db

# A Wednesday noon: the newest complete 1h bar of a 24/7 series opens at 11:00.
NOW = utc(2024, 6, 5, 12, 0)


def add_bars(symbol: str, timeframe: str, times) -> None:
    Candle.objects.bulk_create([
        Candle(symbol=symbol, timeframe=timeframe, ts=ts, open=100, high=101, low=99, close=100, volume=10)
        for ts in times
    ])


def hourly_until(last, hours: int = 24):
    return [last - timedelta(hours=h) for h in range(hours)]


def add_anomaly(symbol="BTC-USD", severity="critical", status="open", anomaly_type="gap", key="k"):
    return DataAnomaly.objects.create(
        symbol=symbol, timeframe="1h", anomaly_type=anomaly_type, severity=severity, description="test",
        resolution_status=status, fingerprint=f"{symbol}-{severity}-{anomaly_type}-{key}",
    )


@pytest.fixture
def quiet_scan(monkeypatch):
    """The anomaly suite replaced by a scan that finds nothing (status tests judge stored anomalies)."""
    calls = []

    def scan(**kwargs):
        calls.append(kwargs)
        return DetectionResult(dry_run=False, full=False)

    monkeypatch.setattr("integrity.quality.anomalies.detect_data_anomalies", scan)
    return calls


@pytest.fixture
def fresh_crypto():
    add_instrument("BTC-USD")
    add_bars("BTC-USD", "1h", hourly_until(utc(2024, 6, 5, 11)))


def stale_names(report) -> set[tuple[str, str]]:
    return {(s["symbol"], s["timeframe"]) for s in report.stale_series.series}


class TestStaleness:
    def test_it_flags_a_series_whose_due_bar_is_missing_longer_than_the_grace(self, quiet_scan):
        add_instrument("ETH-USD")
        # The 23:00 and 00:00 bars were due at the 02:00 backfill: missing for 10 h at noon.
        add_bars("ETH-USD", "1h", hourly_until(utc(2024, 6, 4, 22)))
        report = run_health_monitoring(now=NOW)
        assert report.stale_series.count == 1
        [series] = report.stale_series.series
        assert series["symbol"] == "ETH-USD"
        assert series["hours_stale"] == 10.0
        assert series["expected_bar"] == utc(2024, 6, 5, 0).isoformat()
        assert series["due_at"] == utc(2024, 6, 5, 2).isoformat()

    def test_it_does_not_flag_a_series_within_the_grace(self, quiet_scan):
        add_instrument("ETH-USD")
        add_bars("ETH-USD", "1h", hourly_until(utc(2024, 6, 4, 22)))  # due at 02:00: 1.5 h ago
        assert run_health_monitoring(now=utc(2024, 6, 5, 3, 30)).stale_series.count == 0

    def test_the_grace_comes_from_the_setting(self, quiet_scan, settings):
        settings.STALE_GRACE_MINUTES = 60
        add_instrument("ETH-USD")
        add_bars("ETH-USD", "1h", hourly_until(utc(2024, 6, 4, 22)))
        assert run_health_monitoring(now=utc(2024, 6, 5, 3, 30)).stale_series.count == 1

    def test_a_saturday_morning_is_not_stale_for_an_equity_whose_last_bar_is_fridays(self, quiet_scan):
        add_instrument("AAPL", asset_class="equity", calendar="XNYS", timeframes=("1d", "1h"))
        add_bars("AAPL", "1d", [utc(2024, 6, d) for d in (3, 4, 5, 6, 7)])  # Mon..Fri sessions
        add_bars("AAPL", "1h", [utc(2024, 6, 7, h) for h in range(13, 20)])  # Friday 13:00..19:00 UTC
        report = run_health_monitoring(now=utc(2024, 6, 8, 10))  # Saturday, 38 h after Friday's close
        assert report.stale_series.count == 0
        assert report.stale_series.watched == 2

    def test_the_same_equity_is_stale_on_tuesday_when_mondays_bars_are_missing(self, quiet_scan):
        add_instrument("AAPL", asset_class="equity", calendar="XNYS", timeframes=("1d", "1h"))
        add_bars("AAPL", "1d", [utc(2024, 6, d) for d in (3, 4, 5, 6, 7)])
        add_bars("AAPL", "1h", [utc(2024, 6, 7, h) for h in range(13, 20)])
        report = run_health_monitoring(now=utc(2024, 6, 11, 10))
        assert stale_names(report) == {("AAPL", "1d"), ("AAPL", "1h")}
        by_tf = {s["timeframe"]: s for s in report.stale_series.series}
        assert by_tf["1d"]["hours_stale"] == 8.0  # Monday's session, due at Tuesday's 02:00 backfill
        assert by_tf["1d"]["expected_bar"] == utc(2024, 6, 10).isoformat()

    def test_a_forex_series_is_not_stale_over_its_weekend(self, quiet_scan):
        add_instrument("EURUSD", asset_class="forex", calendar="24/5", timeframes=("1h",))
        add_bars("EURUSD", "1h", hourly_until(utc(2024, 6, 7, 20)))  # the week closes Friday 21:00 UTC
        assert run_health_monitoring(now=utc(2024, 6, 9, 12)).stale_series.count == 0

    def test_a_series_with_no_bars_is_stale(self, quiet_scan):
        add_instrument("NEW-USD")
        report = run_health_monitoring(now=NOW)
        [series] = report.stale_series.series
        assert series["symbol"] == "NEW-USD"
        assert series["last_bar"] is None and series["hours_stale"] is None

    def test_inactive_instruments_are_not_watched(self, quiet_scan):
        instrument = add_instrument("OLD-USD")
        instrument.active = False
        instrument.save()
        report = run_health_monitoring(now=NOW)
        assert report.stale_series.watched == 0
        assert report.stale_series.count == 0

    def test_the_last_bars_of_the_whole_watchlist_come_from_one_query(self):
        for i in range(6):
            add_instrument(f"S{i}", timeframes=("1h", "4h", "1d"))
            add_bars(f"S{i}", "1h", hourly_until(utc(2024, 6, 5, 11), hours=5))
        with CaptureQueriesContext(connection) as queries:
            series = newest_bars()
        assert len(queries.captured_queries) == 1
        assert len(series) == 18
        assert {s.last_bar for s in series if s.timeframe == "1h"} == {utc(2024, 6, 5, 11)}
        assert {s.last_bar for s in series if s.timeframe != "1h"} == {None}

    def test_the_portable_group_by_fallback_finds_the_same_last_bars(self):
        for i in range(3):
            add_instrument(f"S{i}", timeframes=("1h", "1d"))
            add_bars(f"S{i}", "1h", hourly_until(utc(2024, 6, 5, 11 - i), hours=5))
        SeriesStats.objects.create(symbol="S1", timeframe="1h", stale_alert_sent_at=utc(2024, 6, 1))

        def key(items):
            return [(s.symbol, s.timeframe, s.last_bar, s.stats_id, s.stale_alert_sent_at) for s in items]

        assert key(newest_bars_orm()) == key(newest_bars())

    def test_a_timeframe_listed_twice_is_one_series(self):
        add_instrument("BTC-USD", timeframes=("1h", "1h"))
        assert [(s.symbol, s.timeframe) for s in newest_bars()] == [("BTC-USD", "1h")]

    def test_an_unknown_calendar_is_reported_and_the_other_series_are_still_judged(self):
        add_instrument("BAD", calendar="NOPE")
        add_instrument("ETH-USD")
        add_bars("ETH-USD", "1h", hourly_until(utc(2024, 6, 4, 22)))
        errors = []
        series = assess_staleness(NOW, errors)
        assert [(s.symbol, s.stale) for s in series] == [("ETH-USD", True)]
        assert errors and "NOPE" in errors[0]["error"]


class TestFailingSymbols:
    def test_it_lists_symbols_with_consecutive_failures_and_their_counts(self, quiet_scan, fresh_crypto):
        track_symbol_failure("AAA", success=False, error="provider down")
        for _ in range(3):
            track_symbol_failure("BBB", success=False, error="timeout")
        report = run_health_monitoring(now=NOW)
        failing = report.failing_symbols
        assert failing.count == 2
        assert failing.at_threshold == 1
        assert [(f["symbol"], f["consecutive_failures"], f["at_threshold"]) for f in failing.symbols] == [
            ("BBB", 3, True), ("AAA", 1, False)]
        assert failing.symbols[0]["last_error"] == "timeout"

    def test_a_symbol_that_succeeded_again_is_not_listed(self, quiet_scan, fresh_crypto):
        track_symbol_failure("AAA", success=False)
        track_symbol_failure("AAA", success=True)
        assert run_health_monitoring(now=NOW).failing_symbols.count == 0


class TestAnomalies:
    def test_it_runs_the_anomaly_suite_incrementally(self, quiet_scan, fresh_crypto):
        run_health_monitoring(now=NOW)
        [call] = quiet_scan
        assert "full" not in call and call["now"] == NOW  # no full=True: the suite's incremental default

    def test_it_shares_the_newest_bars_it_read_with_the_scan(self, quiet_scan, fresh_crypto):
        run_health_monitoring(now=NOW)
        [call] = quiet_scan
        newest = Candle.objects.filter(symbol="BTC-USD", timeframe="1h").latest("ts").ts
        assert call["newest_bars"][("BTC-USD", "1h")] == newest

    def test_the_scan_can_be_skipped(self, quiet_scan, fresh_crypto):
        add_anomaly(severity="critical")
        report = run_health_monitoring(now=NOW, scan_anomalies=False)
        assert quiet_scan == []
        assert report.anomaly_scan is None
        assert report.anomalies.by_severity["critical"] == 1  # stored anomalies still count

    def test_it_totals_open_anomalies_by_severity_and_type(self, quiet_scan, fresh_crypto):
        add_anomaly(severity="critical", anomaly_type="gap", key="1")
        add_anomaly(severity="high", anomaly_type="outlier", key="2")
        add_anomaly(severity="high", anomaly_type="gap", key="3")
        add_anomaly(severity="critical", status="acknowledged", key="4")
        add_anomaly(severity="critical", status="resolved", key="5")
        anomalies = run_health_monitoring(now=NOW).anomalies
        assert anomalies.open == 3
        assert anomalies.by_severity == {"low": 0, "medium": 0, "high": 2, "critical": 1}
        assert anomalies.by_type == {"gap": 2, "outlier": 1}

    def test_the_real_suite_records_anomalies_of_the_watchlist(self, fresh_crypto, settings):
        settings.REPAIR_AUTO = False  # the hole stays (auto-repair would re-fetch it: tests/quality/test_repair.py)
        # A bar missing in the middle of the series: the suite's gap detector records it.
        Candle.objects.filter(symbol="BTC-USD", ts=utc(2024, 6, 5, 5)).delete()
        report = run_health_monitoring(now=NOW)
        assert not [e for e in report.errors if e["check"] == "anomaly_scan"], report.errors
        assert report.anomaly_scan["series_scanned"] == 1
        assert DataAnomaly.objects.filter(symbol="BTC-USD", anomaly_type="gap").exists()
        assert report.anomalies.by_type.get("gap", 0) >= 1


    def test_the_scan_is_incremental_old_history_is_not_rescanned(self, fresh_crypto, settings):
        settings.DETECTION_OVERLAP_BARS = 3
        add_bars("BTC-USD", "1h", hourly_until(utc(2024, 6, 4, 11), hours=24))  # 48 h of history in all
        first = run_health_monitoring(now=NOW)
        assert first.anomaly_scan["created"] == 0
        assert SeriesStats.objects.get(symbol="BTC-USD", timeframe="1h").last_scanned_ts == utc(2024, 6, 5, 11)
        # A hole 30 bars back: far outside the incremental window (last scanned bar - 3 bars).
        Candle.objects.filter(symbol="BTC-USD", ts=utc(2024, 6, 4, 5)).delete()
        second = run_health_monitoring(now=NOW)
        assert second.anomaly_scan["series_scanned"] == 1
        assert not DataAnomaly.objects.filter(anomaly_type="gap").exists()
        # ... which a full scan does find: the hole was detectable, the health job just did not reread it.
        from integrity.quality.anomalies import detect_data_anomalies

        detect_data_anomalies(full=True, now=NOW)
        assert DataAnomaly.objects.filter(symbol="BTC-USD", anomaly_type="gap").exists()


class TestStatus:
    def test_it_is_healthy_when_nothing_is_wrong(self, quiet_scan, fresh_crypto):
        assert run_health_monitoring(now=NOW).status == "healthy"

    def test_a_stale_series_makes_it_a_warning(self, quiet_scan, fresh_crypto):
        add_instrument("ETH-USD")
        add_bars("ETH-USD", "1h", hourly_until(utc(2024, 6, 4, 22)))
        assert run_health_monitoring(now=NOW).status == "warning"

    def test_a_high_open_anomaly_makes_it_a_warning(self, quiet_scan, fresh_crypto):
        add_anomaly(severity="high")
        assert run_health_monitoring(now=NOW).status == "warning"

    def test_a_single_failure_makes_it_a_warning(self, quiet_scan, fresh_crypto):
        track_symbol_failure("AAA", success=False)
        assert run_health_monitoring(now=NOW).status == "warning"

    def test_a_critical_open_anomaly_makes_it_critical(self, quiet_scan, fresh_crypto):
        add_anomaly(severity="critical")
        assert run_health_monitoring(now=NOW).status == "critical"

    def test_an_acknowledged_critical_anomaly_does_not(self, quiet_scan, fresh_crypto):
        add_anomaly(severity="critical", status="acknowledged")
        assert run_health_monitoring(now=NOW).status == "healthy"

    def test_a_symbol_at_the_failure_threshold_makes_it_critical(self, quiet_scan, fresh_crypto):
        for _ in range(3):
            track_symbol_failure("AAA", success=False)
        assert run_health_monitoring(now=NOW).status == "critical"

    def test_a_check_that_errored_makes_it_critical(self, monkeypatch, fresh_crypto):
        monkeypatch.setattr("integrity.quality.anomalies.detect_data_anomalies",
                            lambda **kw: (_ for _ in ()).throw(RuntimeError("boom")))
        assert run_health_monitoring(now=NOW).status == "critical"


class TestCheckIsolation:
    def test_a_check_that_raises_is_recorded_and_the_others_still_run(self, monkeypatch):
        def broken_scan(**kwargs):
            raise RuntimeError("detectors exploded")

        monkeypatch.setattr("integrity.quality.anomalies.detect_data_anomalies", broken_scan)
        add_instrument("ETH-USD")
        add_bars("ETH-USD", "1h", hourly_until(utc(2024, 6, 4, 22)))
        track_symbol_failure("AAA", success=False)
        add_anomaly(symbol="ETH-USD", severity="critical")

        report = run_health_monitoring(now=NOW)

        assert [(e["check"], e["error"]) for e in report.errors] == [
            ("anomaly_scan", "RuntimeError: detectors exploded")]
        assert report.stale_series.count == 1  # ran before
        assert report.failing_symbols.count == 1
        assert report.anomalies.by_severity["critical"] == 1  # ran after
        assert {a["kind"] for a in report.alerts} == {"series_stale", "critical_anomaly"}
        run = HealthCheckRun.objects.get(pk=report.run_id)
        assert run.status == "critical"
        assert run.errors[0]["check"] == "anomaly_scan"
        assert "detectors exploded" in run.errors[0]["traceback"]

    def test_a_failing_staleness_check_does_not_stop_the_anomaly_alerts(self, monkeypatch, quiet_scan):
        def broken():
            raise ConnectionError("replica gone")

        monkeypatch.setattr("integrity.series.newest_bars", broken)
        add_anomaly(severity="critical")
        report = run_health_monitoring(now=NOW)
        assert [e["check"] for e in report.errors] == ["staleness"]
        assert [a["kind"] for a in report.alerts] == ["critical_anomaly"]
        assert DataAnomaly.objects.get().alert_sent_at is not None


class TestReaping:
    def test_it_reaps_a_backfill_whose_worker_stopped_heartbeating(self, quiet_scan, fresh_crypto):
        state = BackfillState.objects.create(symbol="BTC-USD", timeframe="1h", asset_class="crypto")
        state.mark_started(worker="gone:1")
        BackfillState.objects.filter(pk=state.pk).update(heartbeat_at=utc(2024, 1, 1))
        report = run_health_monitoring()
        assert [r["execution_id"] for r in report.reaped_backfills] == [str(state.execution_id)]
        state.refresh_from_db()
        assert state.status == BackfillStatus.FAILED
        assert SymbolFailureTracking.objects.get(symbol="BTC-USD").consecutive_failures == 1


class TestRunRecord:
    def test_it_persists_the_run_with_the_report_it_returns(self, quiet_scan, fresh_crypto):
        report = run_health_monitoring(now=NOW)
        run = HealthCheckRun.objects.get()
        assert run.pk == report.run_id
        assert run.status == report.status == "healthy"
        assert run.finished_at is not None and run.finished_at >= run.started_at
        assert run.duration_ms == report.duration_ms >= 0
        assert run.results == json.loads(json.dumps(report.as_dict()))
        assert run.errors == [] and run.alerts_sent == 0
        assert report.as_of == NOW

    def test_it_persists_what_it_found_and_the_alerts_it_sent(self, quiet_scan, fresh_crypto):
        add_instrument("ETH-USD")
        add_bars("ETH-USD", "1h", hourly_until(utc(2024, 6, 4, 21)))  # due at 02:00: 10 h ago
        for _ in range(2):
            track_symbol_failure("AAA", success=False, error="provider down")
        add_anomaly(symbol="ETH-USD", severity="critical", anomaly_type="gap", key="1")
        add_anomaly(symbol="ETH-USD", severity="medium", anomaly_type="outlier", key="2")

        report = run_health_monitoring(now=NOW)

        run = HealthCheckRun.objects.get(pk=report.run_id)
        assert run.status == "critical"
        assert run.started_at <= run.finished_at
        assert run.duration_ms == report.duration_ms
        stored = run.results
        assert stored["started_at"] == run.started_at.isoformat()
        assert stored["finished_at"] == run.finished_at.isoformat()
        assert [(s["symbol"], s["timeframe"], s["hours_stale"]) for s in stored["stale_series"]["series"]] == [
            ("ETH-USD", "1h", 10.0)]
        assert [(f["symbol"], f["consecutive_failures"]) for f in stored["failing_symbols"]["symbols"]] == [("AAA", 2)]
        assert stored["anomalies"]["open_by_severity"] == {"low": 0, "medium": 1, "high": 0, "critical": 1}
        assert stored["anomalies"]["open_by_type"] == {"gap": 1, "outlier": 1}
        assert run.alerts_sent == 2
        assert [(a["kind"], a["channels"]) for a in stored["alerts"]] == [
            ("series_stale", {"log": "sent"}), ("critical_anomaly", {"log": "sent"})]
        assert stored == json.loads(json.dumps(report.as_dict()))  # what it returns is what it stored

    def test_each_run_is_a_new_record(self, quiet_scan, fresh_crypto):
        run_health_monitoring(now=NOW)
        run_health_monitoring(now=NOW)
        assert HealthCheckRun.objects.count() == 2


class TestHealthCheckCommand:
    def run(self, *args, out=None) -> int:
        try:
            call_command("health_check", *args, stdout=out or io.StringIO())
        except CommandError as exc:
            return exc.returncode
        return 0

    def test_it_exits_0_when_healthy(self, quiet_scan):
        out = io.StringIO()
        assert self.run(out=out) == 0
        assert "health: HEALTHY" in out.getvalue()

    def test_it_exits_1_on_a_warning(self, quiet_scan):
        track_symbol_failure("AAA", success=False)
        assert self.run() == 1

    def test_it_exits_2_when_critical(self, quiet_scan):
        add_anomaly(severity="critical")
        assert self.run() == 2

    def test_skip_scan_leaves_the_anomaly_suite_out(self, quiet_scan):
        assert self.run("--skip-scan") == 0
        assert quiet_scan == []
        assert HealthCheckRun.objects.get().results["anomaly_scan"] is None

    def test_json_output_is_the_report(self, quiet_scan):
        track_symbol_failure("AAA", success=False, error="nope")
        out = io.StringIO()
        assert self.run("--format", "json", out=out) == 1
        report = json.loads(out.getvalue())
        assert report["status"] == "warning"
        assert report["failing_symbols"]["symbols"][0]["symbol"] == "AAA"
        assert report["run_id"] == HealthCheckRun.objects.get().pk
