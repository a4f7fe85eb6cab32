"""Self-healing repair (issue 12 §3): an anomaly's range re-fetched from the instrument's provider — a
real local HTTP server answering like Binance, and a CSV file — then re-checked. One behaviour per test."""

from __future__ import annotations

import json
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone
from werkzeug import Response

from integrity.backfill import run_backfill
from integrity.conf import conf
from integrity.health.job import run_health_monitoring
from integrity.models import BackfillState, Candle, DataAnomaly, SymbolFailureTracking
from integrity.quality.anomalies import detect_data_anomalies
from integrity.repair import auto_repair, repair_anomalies, repair_anomaly
from integrity.timeframes import floor_to_timeframe
from tests.exchanges import KLINES, FakeBinance
from tests.exchanges import serve_binance as serve
from tests.helpers import add_instrument, utc

pytestmark = pytest.mark.django_db

START, END = utc(2024, 1, 1), utc(2024, 1, 5)  # 96 hourly bars
HOLE = (utc(2024, 1, 2, 3), utc(2024, 1, 2, 23))  # 20 bars a foreign writer deletes


@pytest.fixture(autouse=True)
def no_retries(local_binance):
    local_binance.PROVIDER_HTTP_MAX_RETRIES = 0


def binance_series(httpserver, fake=None, start=START, end=END, **thresholds):
    serve(httpserver, fake or FakeBinance())
    add_instrument("BTC-USD", provider="binance", base_url=httpserver.url_for(""))
    if thresholds:
        from integrity.models import Instrument
        Instrument.objects.filter(symbol="BTC-USD").update(quality_thresholds=thresholds)
    result = run_backfill("BTC-USD", "1h", start=start, end=end)
    assert result.ok, result.error


def foreign_delete(symbol, timeframe, start, end) -> int:
    """Delete stored bars as another writer would: one plain DELETE, no backfill, nothing recorded."""
    rows = Candle.objects.filter(symbol=symbol, timeframe=timeframe, ts__gte=start, ts__lt=end)
    return rows._raw_delete(rows.db)


def repair(*args) -> list[dict]:
    out = StringIO()
    try:
        call_command("repair_anomalies", *args, "--format", "json", stdout=out)
    except CommandError as exc:
        assert exc.returncode == 1, exc
    return json.loads(out.getvalue())


def gap() -> DataAnomaly:
    return DataAnomaly.objects.get(anomaly_type="gap")



def gap_while_the_source_is_down(httpserver) -> None:
    """A stored Binance series with a hole a foreign writer made, detected; then the source answers 503."""
    binance_series(httpserver)
    foreign_delete("BTC-USD", "1h", *HOLE)
    detect_data_anomalies(full=True)
    httpserver.clear_all_handlers()
    httpserver.expect_request(KLINES).respond_with_response(Response("down", status=503))

class TestFixed:
    def test_20_deleted_bars_come_back_from_binance_and_the_gap_is_resolved_fixed(self, httpserver):
        binance_series(httpserver)
        assert foreign_delete("BTC-USD", "1h", *HOLE) == 20
        detect_data_anomalies(full=True)
        assert gap().affected_rows == 20

        [outcome] = repair("--types", "gap")

        assert Candle.objects.filter(symbol="BTC-USD", timeframe="1h").count() == 96
        anomaly = gap()
        assert (anomaly.resolution_status, anomaly.resolution_reason, outcome["outcome"]) == (
            "resolved", "fixed", "fixed")
        [attempt] = anomaly.details["repairs"]
        assert attempt["execution_id"] == outcome["execution_id"] and attempt["outcome"] == "fixed"
        execution = BackfillState.objects.get(execution_id=outcome["execution_id"])
        assert f"anomaly #{anomaly.pk}" in execution.requested_by and execution.status == "completed"

    def test_20_deleted_bars_come_back_from_a_csv_file_and_the_gap_is_resolved_fixed(self, tmp_path):
        path = tmp_path / "ETH.csv"
        stamps = [START + timedelta(hours=i) for i in range(96)]
        path.write_text("Date,Open,High,Low,Close,Volume\n" + "".join(
            f"{ts:%Y-%m-%d %H:%M:%S},100,101,99,100.5,10\n" for ts in stamps))
        add_instrument("ETH-USD", provider="csv", file=str(path))
        assert run_backfill("ETH-USD", "1h", start=START, end=END).ok
        foreign_delete("ETH-USD", "1h", *HOLE)
        detect_data_anomalies(full=True)

        [outcome] = repair("--symbol", "ETH-USD", "--types", "gap")

        assert Candle.objects.filter(symbol="ETH-USD", timeframe="1h").count() == 96
        assert (outcome["outcome"], gap().resolution_reason) == ("fixed", "fixed")


class TestMissingAtSource:
    LACKING = [utc(2024, 1, 2, h) for h in range(10, 15)]

    def lacking(self):
        lacking_ms = {int(ts.timestamp() * 1000) for ts in self.LACKING}
        return FakeBinance(edit=lambda rows: [r for r in rows if r[0] not in lacking_ms])

    def test_bars_the_source_lacks_resolve_the_gap_missing_at_source(self, httpserver):
        binance_series(httpserver, self.lacking())
        detect_data_anomalies(full=True)
        assert gap().affected_rows == 5

        [outcome] = repair("--types", "gap")

        anomaly = gap()
        assert (outcome["outcome"], anomaly.resolution_status, anomaly.resolution_reason) == (
            "missing_at_source", "resolved", "missing_at_source")

    def test_a_neighbouring_gap_reaching_into_the_overlap_is_left_alone(self, httpserver):
        # The source lacks 10:00–14:00 (gap A) and 16:00 onwards for a day (gap C, one bar after A):
        # repairing A re-fetches A ± the overlap, which touches C's first bars but not the rest of it.
        self.LACKING = [*self.LACKING, *(utc(2024, 1, 2, 16) + timedelta(hours=h) for h in range(24))]
        binance_series(httpserver, self.lacking())
        detect_data_anomalies(full=True)
        first, neighbour = DataAnomaly.objects.filter(anomaly_type="gap").order_by("period_start")

        repair_anomaly(first, by="test")

        neighbour.refresh_from_db()
        assert neighbour.resolution_status == "open"

    def recent_series_with_a_critical_hole(self, httpserver):
        # Recent bars (the series is fresh), and a 5-bar hole judged critical for this instrument.
        end = floor_to_timeframe(timezone.now(), "1h")
        start = end - timedelta(hours=48)
        self.LACKING = [start + timedelta(hours=h) for h in range(20, 25)]
        binance_series(httpserver, self.lacking(), start=start, end=None, gap_critical_days=0.1,
                       gap_high_days=0.05)

    def test_without_auto_repair_the_health_job_pages_for_the_hole(self, httpserver, settings):
        settings.REPAIR_AUTO = False
        self.recent_series_with_a_critical_hole(httpserver)

        report = run_health_monitoring()

        assert [a["kind"] for a in report.alerts] == ["critical_anomaly"]
        assert report.repairs == {"enabled": False}

    def test_the_health_job_repairs_them_before_it_alerts_and_the_next_run_sends_nothing(self, httpserver):
        self.recent_series_with_a_critical_hole(httpserver)

        first = run_health_monitoring()

        assert first.repairs["by_outcome"] == {"missing_at_source": 1}
        assert not [a for a in first.alerts if a["kind"] == "critical_anomaly"]
        assert gap().resolution_reason == "missing_at_source"
        second = run_health_monitoring()
        assert second.alerts == [] and second.anomaly_scan["dismissed"] == 1
        assert not DataAnomaly.objects.filter(anomaly_type="gap", resolution_status="open").exists()


class TestStaysOpen:
    def test_an_outlier_the_source_confirms_stays_open_with_the_value(self, tmp_path):
        path = tmp_path / "SPY.csv"
        lines = []
        for i in range(96):
            ts = START + timedelta(hours=i)
            close = 150.0 if i == 50 else 100.0
            lines.append(f"{ts:%Y-%m-%d %H:%M:%S},100,{max(close, 101)},99,{close},10\n")
        path.write_text("Date,Open,High,Low,Close,Volume\n" + "".join(lines))
        add_instrument("SPY-X", provider="csv", file=str(path))
        assert run_backfill("SPY-X", "1h", start=START, end=END).ok
        detect_data_anomalies(full=True, types=["outlier"])
        outlier = DataAnomaly.objects.get(anomaly_type="outlier")

        [outcome] = repair("--types", "outlier")

        outlier.refresh_from_db()
        assert (outcome["outcome"], outlier.resolution_status) == ("confirmed_at_source", "open")
        assert outlier.resolution_note.startswith("confirmed at source: 150.0")
        assert outlier.details["confirmed_at_source"] == 150.0

    def test_a_provider_failure_leaves_it_open_with_the_attempt_and_counts_a_failure(self, httpserver):
        gap_while_the_source_is_down(httpserver)

        [outcome] = repair("--types", "gap")

        anomaly = gap()
        assert (outcome["outcome"], anomaly.resolution_status) == ("failed", "open")
        [attempt] = anomaly.details["repairs"]
        assert attempt["outcome"] == "failed" and attempt["execution_id"] == outcome["execution_id"]
        assert BackfillState.objects.get(execution_id=outcome["execution_id"]).status == "failed"
        assert SymbolFailureTracking.objects.get(symbol="BTC-USD").consecutive_failures == 1

    def test_repair_attempts_survive_the_scans_that_update_the_anomaly(self, httpserver):
        gap_while_the_source_is_down(httpserver)
        repair("--types", "gap")

        detect_data_anomalies(full=True)

        assert [a["outcome"] for a in gap().details["repairs"]] == ["failed"]


class TestCommand:
    def test_dry_run_lists_the_range_and_fetches_nothing(self, httpserver):
        binance_series(httpserver)
        foreign_delete("BTC-USD", "1h", *HOLE)
        detect_data_anomalies(full=True)
        executions = BackfillState.objects.count()

        [planned] = repair("--types", "gap", "--dry-run")

        overlap = conf.BACKFILL_OVERLAP_BARS
        assert planned["outcome"] == "planned"
        assert planned["range_start"] == (HOLE[0] - timedelta(hours=overlap)).isoformat()
        assert planned["range_end"] == (HOLE[1] + timedelta(hours=overlap)).isoformat()
        assert BackfillState.objects.count() == executions and gap().resolution_status == "open"

    def test_an_unknown_type_is_a_usage_error(self):
        with pytest.raises(CommandError, match="cannot repair stale") as error:
            call_command("repair_anomalies", "--types", "stale", stdout=StringIO())
        assert error.value.returncode == 2

    def test_repair_anomalies_helper_repairs_only_the_series_asked(self, httpserver):
        binance_series(httpserver)
        foreign_delete("BTC-USD", "1h", *HOLE)
        detect_data_anomalies(full=True)
        assert repair_anomalies(symbol="OTHER") == []


class TestAutoRepair:
    def recent_series(self, httpserver, holes):
        end = floor_to_timeframe(timezone.now(), "1h")
        start = end - timedelta(hours=48)
        binance_series(httpserver, start=start, end=None)
        for hour in holes:
            foreign_delete("BTC-USD", "1h", start + timedelta(hours=hour), start + timedelta(hours=hour + 2))
        detect_data_anomalies(full=True)  # another writer's deletes: only a full scan sees them
        return start

    def test_a_failed_attempt_is_retried_only_after_the_backoff(self, httpserver, settings):
        self.recent_series(httpserver, [10])
        gap_ids = list(DataAnomaly.objects.filter(anomaly_type="gap").values_list("id", flat=True))
        httpserver.clear_all_handlers()
        httpserver.expect_request(KLINES).respond_with_response(Response("down", status=503))

        assert auto_repair(gap_ids)["by_outcome"] == {"failed": 1}
        assert auto_repair([])["attempted"] == 0  # within REPAIR_BACKOFF
        settings.REPAIR_BACKOFF = 0
        assert auto_repair([])["by_outcome"] == {"failed": 1}
        assert len(gap().details["repairs"]) == 2

    def test_at_most_repair_max_per_run_are_repaired_in_one_run(self, httpserver, settings):
        settings.REPAIR_MAX_PER_RUN = 1
        self.recent_series(httpserver, [10, 20])
        gap_ids = list(DataAnomaly.objects.filter(anomaly_type="gap").values_list("id", flat=True))

        report = auto_repair(gap_ids)

        assert (report["attempted"], report["deferred"], report["by_outcome"]) == (1, 1, {"fixed": 1})

    def test_a_range_longer_than_repair_auto_max_bars_is_left_to_a_person(self, httpserver, settings):
        settings.REPAIR_AUTO_MAX_BARS = 5  # the 2-bar hole's range is 2 bars + 3 of overlap each side
        self.recent_series(httpserver, [10])
        gap_ids = list(DataAnomaly.objects.filter(anomaly_type="gap").values_list("id", flat=True))

        report = auto_repair(gap_ids)

        assert (report["attempted"], report["too_long_for_auto_repair"]) == (0, gap_ids)
        assert gap().resolution_status == "open" and "repairs" not in gap().details
