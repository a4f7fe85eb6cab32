"""The anomaly lifecycle through ``detect_data_anomalies`` and ``manage.py detect_anomalies``:
idempotent runs, updates, auto-resolution, reviewer states, incremental scans with overlap, full rescans."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from io import StringIO

import pytest
from django.core.management import call_command

from integrity.cleanup import cleanup_duplicate_records
from integrity.models import Candle, DataAnomaly, DuplicateRecordLog
from integrity.providers.synthetic import synthetic_bars
from integrity.quality.anomalies import detect_data_anomalies
from tests.helpers import add_instrument, utc

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("default_thresholds")]

START, END = utc(2024, 1, 1), utc(2024, 1, 11)  # 240 hourly 24/7 bars
NOW = utc(2024, 1, 11, 0, 30)



@pytest.fixture
def btc():
    add_instrument("BTC-USD", "crypto", "24/7", timeframes=("1h",))
    load(START, END)


def load(start: datetime, end: datetime, skip: tuple[datetime, ...] = ()) -> None:
    frame = synthetic_bars("BTC-USD", "1h", "24/7", start, end)
    Candle.objects.bulk_create([
        Candle(symbol="BTC-USD", timeframe="1h", ts=r.ts.to_pydatetime(), open=r.open, high=r.high, low=r.low,
               close=r.close, volume=r.volume)
        for r in frame.itertuples(index=False) if r.ts.to_pydatetime() not in skip])


def bars():
    return Candle.objects.filter(symbol="BTC-USD", timeframe="1h")


def open_gaps():
    return DataAnomaly.objects.filter(anomaly_type="gap").exclude(resolution_status="resolved").order_by("period_start")


class TestIdempotence:
    def test_two_incremental_runs_create_one_anomaly_and_update_it(self, btc):
        bars().filter(ts=utc(2024, 1, 5, 3)).delete()
        first = detect_data_anomalies(now=NOW)
        load(END, END + timedelta(hours=1))  # a new bar: the series changed, the second run rereads it
        second = detect_data_anomalies(now=NOW + timedelta(minutes=5))
        assert (first.created, first.updated, second.created, second.updated, second.resolved) == (1, 0, 0, 1, 0)
        gap = DataAnomaly.objects.get()
        assert gap.detected_at == NOW and gap.last_seen_at == NOW + timedelta(minutes=5)

    def test_a_problem_that_grows_updates_its_anomaly(self, btc):
        bars().filter(ts=utc(2024, 1, 5, 3)).delete()
        detect_data_anomalies(now=NOW)
        bars().filter(ts=utc(2024, 1, 5, 4)).delete()  # the same gap, one bar longer
        # A delete leaves no new id for an incremental scan to notice: a full rescan finds it.
        result = detect_data_anomalies(now=NOW, full=True)
        assert (result.created, result.updated) == (0, 1)
        gap = DataAnomaly.objects.get()
        assert (gap.affected_rows, gap.period_end, gap.resolution_status) == (2, utc(2024, 1, 5, 4), "open")


class TestReviewersAndAutoResolution:
    def test_an_acknowledged_anomaly_found_again_is_updated_and_stays_acknowledged(self, btc):
        bars().filter(ts=utc(2024, 1, 5, 3)).delete()
        detect_data_anomalies(now=NOW)
        DataAnomaly.objects.get().acknowledge(by="alice", note="exchange maintenance")
        load(END, END + timedelta(hours=1))  # a new bar: the series is reread
        result = detect_data_anomalies(now=NOW + timedelta(hours=1))
        gap = DataAnomaly.objects.get()
        assert (result.created, result.updated) == (0, 1)
        assert (gap.resolution_status, gap.acknowledged_by, gap.last_seen_at) == (
            "acknowledged", "alice", NOW + timedelta(hours=1))

    def test_an_acknowledged_anomaly_no_longer_found_is_resolved_automatically(self, btc):
        bars().filter(ts=utc(2024, 1, 5, 3)).delete()
        detect_data_anomalies(now=NOW)
        DataAnomaly.objects.get().acknowledge(by="alice")
        load(utc(2024, 1, 5, 3), utc(2024, 1, 5, 4))  # back-filled
        result = detect_data_anomalies(now=NOW)
        gap = DataAnomaly.objects.get()
        assert result.resolved == 1
        assert (gap.resolution_status, gap.resolved_by, gap.acknowledged_by) == ("resolved", "auto", "alice")

    def test_cleaned_duplicates_are_resolved_by_the_next_scan(self, btc):
        row = bars().get(ts=utc(2024, 1, 4))
        row.pk = None
        row.save()
        detect_data_anomalies(now=NOW, types=["duplicate"])
        # Cleaned by someone else's DELETE (no cleanup run to resolve it): the next scan notices.
        Candle.objects.filter(pk=row.pk).delete()
        result = detect_data_anomalies(now=NOW)
        anomaly = DataAnomaly.objects.get(anomaly_type="duplicate")
        assert (result.resolved, anomaly.resolution_status, anomaly.resolution_note) == (
            1, "resolved", "no longer detected")

    def test_a_cleanup_resolves_and_the_next_scan_does_not_reopen(self, btc):
        row = bars().get(ts=utc(2024, 1, 4))
        row.pk = None
        row.save()
        detect_data_anomalies(now=NOW)
        assert cleanup_duplicate_records().anomalies_resolved == 1
        assert len(DuplicateRecordLog.objects.get().duplicate_ids) == 1
        assert DataAnomaly.objects.get(anomaly_type="duplicate").resolution_status == "resolved"
        result = detect_data_anomalies(now=NOW)
        assert (result.created, result.findings) == (0, [])


class TestIncrementalScans:
    def test_new_data_is_scanned_with_overlap_so_a_hole_at_the_boundary_is_found(self, btc):
        detect_data_anomalies(now=NOW)  # scanned up to 01-10 23:00
        # The next load starts two bars late: 01-11 00:00 and 01:00 never arrive.
        load(END, utc(2024, 1, 13), skip=(END, END + timedelta(hours=1)))
        result = detect_data_anomalies(now=utc(2024, 1, 13, 0, 30))
        assert not result.full
        [gap] = open_gaps()
        assert (gap.period_start, gap.period_end, gap.affected_rows) == (END, END + timedelta(hours=1), 2)

    def test_a_move_at_the_first_new_bar_is_judged_against_the_last_scanned_one(self, btc):
        detect_data_anomalies(now=NOW)
        load(END, utc(2024, 1, 12))
        Candle.objects.filter(ts__gte=END).update(open=1.0, high=1.0, low=1.0, close=1.0)  # new source, new scale
        detect_data_anomalies(now=utc(2024, 1, 12, 0, 30))
        [outlier] = DataAnomaly.objects.filter(anomaly_type="outlier")
        assert outlier.period_start == END

    def test_old_history_is_not_rescanned_by_default_but_is_with_full(self, btc):
        detect_data_anomalies(now=NOW)
        bars().filter(ts=utc(2024, 1, 3, 5)).delete()  # far behind the incremental window
        incremental = detect_data_anomalies(now=NOW)
        assert (incremental.findings, incremental.created) == ([], 0)
        full = detect_data_anomalies(now=NOW, full=True)
        assert full.full and full.created == 1
        [gap] = open_gaps()
        assert (gap.period_start, gap.affected_rows) == (utc(2024, 1, 3, 5), 1)


    def test_bars_written_while_a_scan_runs_are_covered_by_the_next_one(self, btc, monkeypatch):
        from integrity.quality import detectors

        real = detectors.run_detectors
        hole = END + timedelta(hours=10)

        def scan_while_a_backfill_writes(*args, **kwargs):
            found = real(*args, **kwargs)
            # 100 new bars, more than the incremental overlap, with one missing, land mid-scan.
            load(END, END + timedelta(hours=100), skip=(hole,))
            return found

        monkeypatch.setattr(detectors, "run_detectors", scan_while_a_backfill_writes)
        detect_data_anomalies(now=NOW)
        monkeypatch.setattr(detectors, "run_detectors", real)
        detect_data_anomalies(now=NOW)
        [gap] = open_gaps()
        assert (gap.period_start, gap.affected_rows) == (hole, 1)


class TestCommandJson:
    def test_each_finding_has_the_documented_fields_with_their_values(self, btc):
        bars().filter(ts__gte=utc(2024, 1, 3, 10), ts__lt=utc(2024, 1, 3, 15)).delete()
        out = StringIO()
        call_command("detect_anomalies", "--format", "json", "--types", "gap,duplicate", "--full", stdout=out)
        [row] = json.loads(out.getvalue())
        assert {k: row[k] for k in ("symbol", "timeframe", "anomaly_type", "severity", "period_start",
                                    "period_end", "affected_rows", "description")} == {
            "symbol": "BTC-USD", "timeframe": "1h", "anomaly_type": "gap", "severity": "medium",
            "period_start": "2024-01-03T10:00:00+00:00", "period_end": "2024-01-03T14:00:00+00:00",
            "affected_rows": 5,
            "description": "5 missing 1h bars from 2024-01-03 10:00 UTC to 2024-01-03 14:00 UTC",
        }
        assert DataAnomaly.objects.get().fingerprint == row["fingerprint"]

    def test_dry_run_json_writes_nothing(self, btc):
        bars().filter(ts=utc(2024, 1, 3, 10)).delete()
        out = StringIO()
        call_command("detect_anomalies", "--format", "json", "--types", "gap", "--dry-run", stdout=out)
        assert [r["affected_rows"] for r in json.loads(out.getvalue())] == [1]
        assert not DataAnomaly.objects.exists()

    def test_an_unknown_type_is_a_usage_error(self, btc):
        from django.core.management.base import CommandError

        with pytest.raises(CommandError, match="unknown anomaly type") as error:
            call_command("detect_anomalies", "--types", "gaps", stdout=StringIO())
        assert error.value.returncode == 2
