"""Anomaly records: idempotent detection, auto-resolution, incremental scans, review lifecycle."""

from __future__ import annotations

import json
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from integrity.backfill import run_backfill
from integrity.models import Candle, DataAnomaly, InvalidTransition, ResolutionStatus, SeriesStats
from integrity.quality.anomalies import detect_data_anomalies
from integrity.quality.enrichment import enrich_series
from integrity.quality.findings import Finding
from integrity.quality.record import resolve_cleaned_duplicates, upsert_finding
from tests.helpers import add_instrument, utc

pytestmark = pytest.mark.django_db(transaction=True)

START, END = utc(2024, 1, 1), utc(2024, 1, 11)
NOW = utc(2024, 1, 11, 0, 30)
HOLE = (utc(2024, 1, 3, 10), utc(2024, 1, 3, 15))  # 5 missing hourly bars: 10:00 … 14:00


def load(**faults):
    add_instrument(**faults)
    run_backfill("BTC-USD", "1h", start=START, end=END, now=NOW)


def gaps():
    return DataAnomaly.objects.filter(anomaly_type="gap").order_by("period_start")


def make_finding(**kwargs) -> Finding:
    values = {"symbol": "BTC-USD", "timeframe": "1h", "anomaly_type": "gap", "severity": "medium",
              "description": "5 missing", "affected_rows": 5, "period_start": HOLE[0], "key": HOLE[0].isoformat()}
    values.update(kwargs)
    return Finding(**values)


class TestRecordingFindings:
    def test_a_new_finding_creates_an_open_anomaly(self):
        created, anomaly_id = upsert_finding(make_finding(), NOW)
        anomaly = DataAnomaly.objects.get(pk=anomaly_id)
        assert created and anomaly.resolution_status == ResolutionStatus.OPEN
        assert anomaly.fingerprint == make_finding().fingerprint

    def test_the_same_finding_again_updates_instead_of_duplicating(self):
        upsert_finding(make_finding(), NOW)
        created, _ = upsert_finding(make_finding(affected_rows=6, severity="high"), NOW + timedelta(hours=1))
        assert not created
        anomaly = DataAnomaly.objects.get()
        assert (anomaly.affected_rows, anomaly.severity) == (6, "high")
        assert anomaly.last_seen_at == NOW + timedelta(hours=1)

    def test_a_problem_that_returns_after_resolution_opens_a_new_anomaly(self):
        _, first = upsert_finding(make_finding(), NOW)
        DataAnomaly.objects.get(pk=first).resolve(by="alice")
        created, second = upsert_finding(make_finding(), NOW)
        assert created and second != first


class TestDetectDataAnomalies:
    def test_a_complete_series_yields_no_anomaly(self):
        load()
        result = detect_data_anomalies(now=NOW)
        assert result.findings == [] and not DataAnomaly.objects.exists()

    def test_a_gap_is_recorded_with_its_period_and_count(self):
        load(gaps=[[HOLE[0].isoformat(), HOLE[1].isoformat()]])
        detect_data_anomalies(now=NOW)
        [gap] = gaps()
        assert (gap.period_start, gap.period_end, gap.affected_rows) == (HOLE[0], utc(2024, 1, 3, 14), 5)

    def test_running_twice_creates_nothing_new(self):
        load(gaps=[[HOLE[0].isoformat(), HOLE[1].isoformat()]])
        first = detect_data_anomalies(now=NOW)
        second = detect_data_anomalies(now=NOW, full=True)
        assert (first.created, second.created, second.updated) == (1, 0, 1)
        assert DataAnomaly.objects.count() == 1

    def test_dry_run_reports_findings_and_writes_nothing(self):
        load(gaps=[[HOLE[0].isoformat(), HOLE[1].isoformat()]])
        result = detect_data_anomalies(now=NOW, dry_run=True)
        assert [f.anomaly_type for f in result.findings] == ["gap"]
        assert not DataAnomaly.objects.exists() and not SeriesStats.objects.exists()

    def test_a_backfilled_gap_is_resolved_automatically(self):
        load(gaps=[[HOLE[0].isoformat(), HOLE[1].isoformat()]])
        detect_data_anomalies(now=NOW)
        run_backfill("BTC-USD", "1h", start=START, end=END, now=NOW, provider_options={"gaps": []})
        result = detect_data_anomalies(now=NOW)
        gap = gaps().get()
        assert result.resolved == 1
        assert (gap.resolution_status, gap.resolved_by, gap.resolution_note) == ("resolved", "auto",
                                                                                  "no longer detected")

    def test_an_old_open_gap_is_rechecked_by_an_incremental_scan(self):
        load(gaps=[[HOLE[0].isoformat(), HOLE[1].isoformat()]])
        detect_data_anomalies(now=NOW)
        later = NOW + timedelta(days=20)
        run_backfill("BTC-USD", "1h", start=END, end=utc(2024, 1, 31), now=later)
        # Still missing, far behind the incremental window: found again, not resolved.
        result = detect_data_anomalies(now=later)
        assert gaps().get().resolution_status == "open" and result.resolved == 0

    def test_an_incremental_scan_finds_problems_in_new_data(self):
        load()
        detect_data_anomalies(now=NOW)
        later = NOW + timedelta(days=5)
        add_hole = [[utc(2024, 1, 13).isoformat(), utc(2024, 1, 13, 3).isoformat()]]
        run_backfill("BTC-USD", "1h", start=END, end=utc(2024, 1, 16), now=later,
                     provider_options={"gaps": add_hole})
        detect_data_anomalies(now=later)
        [gap] = gaps()
        assert (gap.period_start, gap.affected_rows) == (utc(2024, 1, 13), 3)

    def test_it_records_when_each_series_was_scanned(self):
        load()
        detect_data_anomalies(now=NOW)
        stats = SeriesStats.objects.get(symbol="BTC-USD", timeframe="1h")
        assert stats.last_scan_at == NOW and stats.last_scanned_ts == END - timedelta(hours=1)

    def test_an_unknown_type_is_refused(self):
        with pytest.raises(ValueError, match="unknown anomaly type"):
            detect_data_anomalies(types=["vibes"])

    def test_cleaned_duplicates_resolve_their_anomaly(self):
        load()
        row = Candle.objects.first()
        row.pk = None
        row.save()
        detect_data_anomalies(now=NOW, types=["duplicate"])
        assert DataAnomaly.objects.get(anomaly_type="duplicate").resolution_status == "open"
        Candle.objects.filter(pk=row.pk).delete()
        assert resolve_cleaned_duplicates("BTC-USD") == 1


class TestReviewLifecycle:
    def anomaly(self):
        return DataAnomaly.objects.get(pk=upsert_finding(make_finding(), NOW)[1])

    def test_open_to_acknowledged_to_resolved_records_who_and_when(self):
        anomaly = self.anomaly()
        anomaly.acknowledge(by="alice", note="exchange outage")
        anomaly.resolve(by="bob")
        anomaly.refresh_from_db()
        assert (anomaly.resolution_status, anomaly.acknowledged_by, anomaly.resolved_by) == (
            "resolved", "alice", "bob")
        assert anomaly.acknowledged_at <= anomaly.resolved_at
        assert anomaly.resolution_note == "exchange outage"

    def test_a_resolved_anomaly_cannot_be_acknowledged(self):
        anomaly = self.anomaly()
        anomaly.resolve(by="bob")
        with pytest.raises(InvalidTransition):
            anomaly.acknowledge(by="alice")

    def test_an_acknowledged_anomaly_cannot_be_acknowledged_again(self):
        anomaly = self.anomaly()
        anomaly.acknowledge(by="alice")
        with pytest.raises(InvalidTransition):
            anomaly.acknowledge(by="carol")


class TestCommands:
    def test_detect_anomalies_exits_0_when_nothing_high_is_found(self):
        load()
        out = StringIO()
        call_command("detect_anomalies", "--types", "gap", stdout=out)  # no CommandError: exit 0
        assert "0 finding(s) recorded" in out.getvalue()

    def test_detect_anomalies_exits_1_on_a_high_severity_finding(self):
        load(gaps=[[utc(2024, 1, 3).isoformat(), utc(2024, 1, 5).isoformat()]])
        with pytest.raises(CommandError) as exit_:
            call_command("detect_anomalies", "--types", "gap", stdout=StringIO())
        assert exit_.value.returncode == 1

    def test_detect_anomalies_json_lists_findings_with_the_documented_fields(self):
        load(gaps=[[HOLE[0].isoformat(), HOLE[1].isoformat()]])
        out = StringIO()
        try:
            call_command("detect_anomalies", "--format", "json", "--dry-run", "--types", "gap", stdout=out)
        except CommandError as exit_:
            assert exit_.returncode in (0, 1)  # 1 when a finding is high or critical
        [row] = json.loads(out.getvalue())
        assert {"symbol", "timeframe", "anomaly_type", "severity", "period_start", "period_end",
                "affected_rows", "description"} <= set(row)
        assert row["affected_rows"] == 5

    def test_detect_anomalies_as_of_replays_the_staleness_of_that_moment(self):
        load()  # hourly bars up to 2024-01-10 23:00
        out = StringIO()
        call_command("detect_anomalies", "--types", "stale", "--dry-run", "--format", "json",
                     "--as-of", "2024-01-11T00:30:00Z", stdout=out)
        assert json.loads(out.getvalue()) == []
        out = StringIO()
        try:
            call_command("detect_anomalies", "--types", "stale", "--dry-run", "--format", "json",
                         "--as-of", "2024-01-13T00:30:00Z", stdout=out)
        except CommandError:
            pass  # stale for two days: a high finding
        assert [row["anomaly_type"] for row in json.loads(out.getvalue())] == ["stale"]

    @pytest.mark.parametrize("value", ["yesterday", "2999-01-01"])
    def test_detect_anomalies_refuses_an_unusable_as_of_with_exit_2(self, value):
        with pytest.raises(CommandError, match="--as-of") as error:
            call_command("detect_anomalies", "--as-of", value, stdout=StringIO())
        assert error.value.returncode == 2

    def test_enrich_records_coverage_and_volatility(self):
        load(gaps=[[HOLE[0].isoformat(), HOLE[1].isoformat()]])
        [stats] = enrich_series()
        assert (stats.bar_count, stats.expected_bars) == (235, 240)
        assert stats.coverage_pct == pytest.approx(100 * 235 / 240, abs=0.01)
        assert stats.robust_volatility > 0
        stored = SeriesStats.objects.get(symbol="BTC-USD")
        assert stored.coverage_pct == stats.coverage_pct
