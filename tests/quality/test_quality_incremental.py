"""Incremental anomaly scans cost what changed: which series are re-read, and what stays as it was.

A series is re-read when it was never scanned, when candle rows with an id above its watermark exist
(any writer), or when a backfill of it ran since its last scan began; stale is judged for every
series on every scan; ``full=True`` rereads everything.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from django.db.models import Max

from integrity.backfill import run_backfill
from integrity.models import BackfillState, BackfillStatus, Candle, DataAnomaly, ResolutionStatus, SeriesStats
from integrity.providers.synthetic import synthetic_bars
from integrity.quality.anomalies import detect_data_anomalies
from integrity.quality.findings import Finding
from integrity.quality.record import upsert_finding
from tests.helpers import add_instrument, use_default_thresholds, utc

pytestmark = pytest.mark.django_db(transaction=True)

START, END = utc(2024, 1, 1), utc(2024, 1, 11)  # 240 hourly 24/7 bars
NOW = utc(2024, 1, 11, 0, 30)
LATER = NOW + timedelta(minutes=5)
OLD = utc(2024, 1, 3, 7)  # far outside the overlap of an incremental window


@pytest.fixture(autouse=True)
def small_overlap(settings):
    use_default_thresholds(settings)
    settings.DETECTION_OVERLAP_BARS = 3


def load(symbol: str, start: datetime, end: datetime) -> None:
    """Rows written by a plain ORM bulk insert, as a legacy loader would (no backfill record)."""
    frame = synthetic_bars(symbol, "1h", "24/7", start, end)
    Candle.objects.bulk_create([
        Candle(symbol=symbol, timeframe="1h", ts=r.ts.to_pydatetime(), open=r.open, high=r.high, low=r.low,
               close=r.close, volume=r.volume)
        for r in frame.itertuples(index=False)])


@pytest.fixture
def two_series():
    for symbol in ("BTC-USD", "ETH-USD"):
        add_instrument(symbol, "crypto", "24/7", timeframes=("1h",))
        load(symbol, START, END)
    first = detect_data_anomalies(now=NOW)
    assert first.series_rescanned == 2 and first.findings == []


def stats(symbol: str) -> SeriesStats:
    return SeriesStats.objects.get(symbol=symbol, timeframe="1h")


def open_of(anomaly_type: str, symbol: str = "BTC-USD"):
    return DataAnomaly.objects.filter(anomaly_type=anomaly_type, symbol=symbol).exclude(
        resolution_status=ResolutionStatus.RESOLVED)


def break_in_place(symbol: str, ts: datetime) -> None:
    """Make a stored bar invalid (high below low) without a new id or a backfill: invisible to the
    change detection, found by any scan that reads the bar."""
    Candle.objects.filter(symbol=symbol, timeframe="1h", ts=ts).update(high=1.0, low=2.0)


class TestWhatIsReread:
    def test_an_unchanged_series_is_not_reread(self, two_series):
        break_in_place("ETH-USD", utc(2024, 1, 10, 22))  # inside its incremental window, were it read
        load("BTC-USD", END, END + timedelta(hours=1))
        result = detect_data_anomalies(now=LATER)
        assert result.series_rescanned == 1
        assert (stats("BTC-USD").last_scan_at, stats("ETH-USD").last_scan_at) == (LATER, NOW)
        assert not open_of("invalid_ohlc", "ETH-USD").exists()

    def test_a_scan_with_nothing_new_rereads_no_series(self, two_series):
        result = detect_data_anomalies(now=LATER)
        assert (result.series_scanned, result.series_rescanned) == (2, 0)

    def test_a_new_bar_from_any_writer_is_rescanned_and_its_problem_found(self, two_series):
        frame = synthetic_bars("BTC-USD", "1h", "24/7", END, END + timedelta(hours=1))
        r = next(frame.itertuples(index=False))
        Candle.objects.bulk_create([Candle(symbol="BTC-USD", timeframe="1h", ts=r.ts.to_pydatetime(),
                                           open=r.open, high=r.low / 2, low=r.low, close=r.close,
                                           volume=r.volume)])
        result = detect_data_anomalies(now=LATER)
        [invalid] = open_of("invalid_ohlc")
        assert invalid.period_start == END and result.new_anomaly_ids == [invalid.id]

    def test_a_bar_inserted_in_old_history_by_another_writer_is_judged(self, two_series):
        # An unaligned bar 7 days back, far outside the overlap: the window widens to the new row.
        row = Candle.objects.get(symbol="BTC-USD", ts=OLD)
        Candle.objects.create(symbol="BTC-USD", timeframe="1h", ts=OLD + timedelta(minutes=30), open=row.open,
                              high=row.high, low=row.low, close=row.close, volume=row.volume)
        detect_data_anomalies(now=LATER)
        [off] = open_of("off_calendar")
        assert off.period_start == OLD + timedelta(minutes=30)

    def test_a_duplicate_written_in_old_history_is_found_by_the_next_incremental_scan(self, two_series):
        row = Candle.objects.get(symbol="BTC-USD", ts=OLD)
        row.pk = None
        row.save()  # a new id
        detect_data_anomalies(now=LATER)
        [duplicate] = open_of("duplicate")
        assert (duplicate.period_start, duplicate.affected_rows) == (OLD, 1)

    def test_full_rescans_every_series(self, two_series):
        break_in_place("ETH-USD", OLD)
        result = detect_data_anomalies(now=LATER, full=True)
        assert result.series_rescanned == 2
        assert open_of("invalid_ohlc", "ETH-USD").get().period_start == OLD

    def test_a_scan_of_some_types_leaves_the_rest_for_the_next_scan(self, two_series):
        load("BTC-USD", END, END + timedelta(hours=1))
        break_in_place("BTC-USD", END)
        detect_data_anomalies(now=LATER, types=["gap"])  # has not looked for invalid bars
        detect_data_anomalies(now=LATER)
        assert open_of("invalid_ohlc").get().period_start == END

    def test_unchanged_series_watermarks_follow_the_newest_id_once_far_behind(self, two_series, settings):
        load("BTC-USD", END, END + timedelta(hours=1))
        detect_data_anomalies(now=LATER)
        assert stats("ETH-USD").last_scanned_id < stats("BTC-USD").last_scanned_id  # within the slack
        settings.DETECTION_WATERMARK_SLACK = 0
        load("BTC-USD", END + timedelta(hours=1), END + timedelta(hours=2))
        detect_data_anomalies(now=LATER)
        newest = Candle.objects.aggregate(m=Max("id"))["m"]
        assert stats("ETH-USD").last_scanned_id == newest == stats("BTC-USD").last_scanned_id


class TestBackfills:
    @pytest.fixture
    def btc(self):
        add_instrument("BTC-USD", "crypto", "24/7", timeframes=("1h",))
        run_backfill("BTC-USD", "1h", start=START, end=END, now=NOW)
        detect_data_anomalies(now=NOW)

    def test_a_bar_revised_by_our_backfill_is_reexamined(self, btc):
        before = Candle.objects.aggregate(m=Max("id"))["m"]
        result = run_backfill("BTC-USD", "1h", start=START, end=END, now=NOW,
                              provider_options={"spikes": [OLD.isoformat()]})
        assert result.updated >= 1 and Candle.objects.aggregate(m=Max("id"))["m"] == before  # in place
        detect_data_anomalies(now=LATER)
        assert open_of("outlier").get().period_start == OLD

    def test_a_series_with_a_backfill_in_progress_is_reread_until_it_finished(self, btc):
        state = BackfillState.objects.create(symbol="BTC-USD", asset_class="crypto", timeframe="1h",
                                             status=BackfillStatus.IN_PROGRESS, range_start=START)
        # Still writing during both scans: each must reread it.
        assert detect_data_anomalies(now=LATER).series_rescanned == 1
        assert detect_data_anomalies(now=LATER).series_rescanned == 1
        state.status = BackfillStatus.COMPLETED
        state.save()  # finished after the last scan began
        assert detect_data_anomalies(now=LATER).series_rescanned == 1
        assert detect_data_anomalies(now=LATER).series_rescanned == 0


class TestWhatStaysAsItWas:
    def test_an_unresolved_gap_of_an_unchanged_series_is_not_auto_resolved(self, two_series):
        # Recorded earlier (say, before someone rewrote the bars in place): no scan has re-read it.
        hole = utc(2024, 1, 5)
        upsert_finding(Finding(symbol="ETH-USD", timeframe="1h", anomaly_type="gap", severity="low",
                               description="1 missing", affected_rows=1, period_start=hole, period_end=hole,
                               key=hole.isoformat()), NOW)
        load("BTC-USD", END, END + timedelta(hours=1))  # another series changed: a real scan runs
        result = detect_data_anomalies(now=LATER)
        assert result.resolved == 0 and open_of("gap", "ETH-USD").exists()
        assert detect_data_anomalies(now=LATER, full=True).resolved == 1

    def test_stale_is_still_judged_for_unchanged_series_as_time_passes(self, two_series):
        result = detect_data_anomalies(now=NOW + timedelta(days=3))
        assert result.series_rescanned == 0
        assert {a.symbol for a in DataAnomaly.objects.filter(anomaly_type="stale")} == {"BTC-USD", "ETH-USD"}

    def test_a_stale_series_found_again_has_its_details_updated(self, two_series):
        detect_data_anomalies(now=NOW + timedelta(days=3))
        detect_data_anomalies(now=NOW + timedelta(days=4))
        stale = open_of("stale").get()
        assert stale.last_seen_at == NOW + timedelta(days=4)
        assert isinstance(stale.details, dict) and stale.details["hours_stale"] == pytest.approx(94.5)
        assert stale.details["as_of"] == (NOW + timedelta(days=4)).isoformat()

    def test_a_stale_series_fresh_again_is_resolved_without_rereading_others(self, two_series):
        detect_data_anomalies(now=NOW + timedelta(days=3))
        load("BTC-USD", END, END + timedelta(days=3))
        result = detect_data_anomalies(now=NOW + timedelta(days=3))
        assert result.series_rescanned == 1 and result.resolved == 1
        assert not open_of("stale").exists() and open_of("stale", "ETH-USD").exists()


class TestBulkUpdate:
    def test_the_bulk_update_skips_anomalies_resolved_meanwhile(self):
        def finding(key: str) -> Finding:
            return Finding(symbol="BTC-USD", timeframe="1h", anomaly_type="gap", severity="low",
                           description="1 missing", affected_rows=1, key=key)

        _, kept = upsert_finding(finding("a"), NOW)
        _, gone = upsert_finding(finding("b"), NOW)
        DataAnomaly.objects.get(pk=gone).resolve(by="alice")
        from integrity.quality import sql
        from integrity.quality.record import _UPDATE_TYPES

        values = {"severity": "high", "description": "3 missing", "affected_rows": 3, "period_start": OLD,
                  "period_end": None, "details": {"n": 3}}
        done = sql.update_rows_by_id("data_anomalies", [{"id": kept, **values}, {"id": gone, **values}],
                                     _UPDATE_TYPES, {"last_seen_at": LATER, "updated_at": LATER})
        assert done == {kept}
        updated, untouched = DataAnomaly.objects.get(pk=kept), DataAnomaly.objects.get(pk=gone)
        assert (updated.severity, updated.affected_rows, updated.period_start, updated.details,
                updated.last_seen_at) == ("high", 3, OLD, {"n": 3}, LATER)
        assert (untouched.severity, untouched.last_seen_at) == ("low", NOW)

    def test_new_findings_already_created_by_a_concurrent_scan_update_that_anomaly(self):
        from integrity.quality.anomalies import DetectionResult
        from integrity.quality.record import _create_all

        def finding(key: str) -> Finding:
            return Finding(symbol="BTC-USD", timeframe="1h", anomaly_type="gap", severity="low",
                           description="1 missing", affected_rows=1, key=key)

        _, theirs = upsert_finding(finding("a"), NOW)  # created by the other scan after our read
        result = DetectionResult(dry_run=False, full=False)
        _create_all(result, [finding("a"), finding("b")], LATER)
        assert (result.created, result.updated) == (1, 1)
        assert DataAnomaly.objects.get(pk=theirs).last_seen_at == LATER
        assert DataAnomaly.objects.count() == 2
