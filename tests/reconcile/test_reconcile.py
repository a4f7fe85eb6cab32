"""Reconciliation (issue #15): each kind of finding, tolerances, the anomaly lifecycle, dry runs, the
command's errors, and repair from the reference — against the local Binance primary and the
Coinbase-format reference (``tests.reconcile.pair``). One behaviour per test."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from integrity.models import AnomalyType, BackfillState, Candle, DataAnomaly, Instrument, ReferenceBar
from integrity.reconcile import ReconcileError, reconcile, repair_from_reference
from tests.helpers import utc
from tests.reconcile.pair import END, START, Plant, stored_pair

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("local_binance", "local_coinbase")]


def found(plant: Plant | None = None, httpserver=None, **reconcile_args) -> list:
    report = reconcile("BTC-USD", "1h", start=START, end=END, **reconcile_args)
    [series] = report.series
    assert series.status == "ok", series.error
    return series.findings


def mismatches():
    return DataAnomaly.objects.filter(anomaly_type=AnomalyType.SOURCE_MISMATCH)


def command(*args) -> tuple[int, dict | str]:
    out = StringIO()
    code = 0
    try:
        call_command("reconcile", *args, stdout=out)
    except CommandError as exc:
        code = exc.returncode
        if code == 2:
            return code, str(exc)
    text = out.getvalue()
    return code, json.loads(text) if "--format" in args else text


class TestFindings:
    def test_a_price_beyond_the_tolerance_names_the_field_both_values_and_the_difference(self, httpserver):
        stored_pair(httpserver, Plant(price={7: 1.01}))
        [finding] = found()
        assert finding.details["kind"] == "price" and finding.details["field"] == "close"
        assert finding.details["stored"] == pytest.approx(finding.details["reference"] * 1.01)
        assert finding.details["relative_difference"] == pytest.approx(0.01)
        assert finding.period_start == utc(2024, 1, 1, 7)
        assert "close" in finding.description and "1.000 %" in finding.description

    def test_a_bar_only_the_reference_has_is_missing_from_the_stored_series(self, httpserver):
        stored_pair(httpserver, Plant(missing_stored={5, 6}))
        [finding] = found()
        assert finding.details["kind"] == "missing_stored" and finding.affected_rows == 2
        assert (finding.period_start, finding.period_end) == (utc(2024, 1, 1, 5), utc(2024, 1, 1, 6))

    def test_a_bar_only_the_stored_series_has_is_missing_from_the_reference(self, httpserver):
        stored_pair(httpserver, Plant(missing_reference={9}))
        [finding] = found()
        assert finding.details["kind"] == "missing_reference" and finding.period_start == utc(2024, 1, 1, 9)

    @pytest.mark.parametrize("ratio", [0.5, 3.0, 100.0])
    def test_a_range_at_a_constant_ratio_is_one_finding(self, httpserver, ratio):
        stored_pair(httpserver, Plant(ratio=(range(30, 50), ratio)))
        [finding] = found()
        assert finding.details["kind"] == "ratio" and finding.details["ratio"] == ratio
        assert finding.affected_rows == 20 and finding.severity == "high"

    def test_a_range_shifted_by_whole_hours_is_one_finding_not_price_or_missing_ones(self, httpserver):
        stored_pair(httpserver, Plant(shift=range(10, 40)))
        [finding] = found()
        assert finding.details["kind"] == "time_shift" and finding.details["shift_hours"] == 1
        assert (finding.period_start, finding.period_end) == (utc(2024, 1, 1, 10), utc(2024, 1, 2, 15))


class TestTolerances:
    SMALL = Plant(price={12: 1.0008})  # 0.08 %: within crypto's 0.1 %

    def test_a_close_within_the_crypto_default_is_agreement(self, httpserver):
        stored_pair(httpserver, self.SMALL)
        assert found() == []

    def test_the_instruments_own_tolerance_wins(self, httpserver):
        stored_pair(httpserver, self.SMALL, reconcile_tolerance=0.05)
        [finding] = found()
        assert finding.details["tolerance_pct"] == 0.05

    def test_the_asset_class_default_comes_from_the_setting(self, httpserver, settings):
        settings.RECONCILE_TOLERANCE_PCT = {"crypto": 0.05}
        stored_pair(httpserver, self.SMALL)
        assert len(found()) == 1

    def test_crypto_volume_is_not_compared_by_default_but_can_be(self, httpserver, settings):
        stored_pair(httpserver)  # the two venues' volumes differ on every bar
        assert found() == []
        settings.RECONCILE_VOLUME_TOLERANCE_PCT = {"crypto": 5.0}
        findings = found()
        assert findings and {f.details["field"] for f in findings} == {"volume"}


class TestLifecycle:
    def test_a_mismatch_is_resolved_when_the_sources_agree_again(self, httpserver):
        stored_pair(httpserver, Plant(price={7: 1.01}))
        found()
        anomaly = mismatches().get()
        candle = Candle.objects.get(symbol="BTC-USD", ts=utc(2024, 1, 1, 7))
        Candle.objects.filter(pk=candle.pk).update(**{f["field"]: f["reference"] for f in anomaly.details["fields"]})
        report = reconcile("BTC-USD", "1h", start=START, end=END)
        anomaly.refresh_from_db()
        assert (report.resolved, anomaly.resolution_status, anomaly.resolution_reason) == (
            1, "resolved", "fixed")

    def test_the_same_mismatch_found_again_updates_its_anomaly(self, httpserver):
        stored_pair(httpserver, Plant(price={7: 1.01}))
        found()
        report = reconcile("BTC-USD", "1h", start=START, end=END)
        assert (report.created, report.updated, mismatches().count()) == (0, 1, 1)

    def test_a_mismatch_resolved_as_expected_is_never_recorded_again(self, httpserver):
        stored_pair(httpserver, Plant(price={7: 1.01}))
        found()
        mismatches().get().resolve(by="ann", reason="expected")
        report = reconcile("BTC-USD", "1h", start=START, end=END)
        assert (report.dismissed, report.series[0].findings, mismatches().count()) == (1, [], 1)

    def test_a_mismatch_outside_the_window_is_left_alone(self, httpserver):
        stored_pair(httpserver, Plant(price={7: 1.01}))
        found()
        reconcile("BTC-USD", "1h", start=utc(2024, 1, 2), end=END)
        assert mismatches().get().resolution_status == "open"

    def test_a_dry_run_writes_nothing(self, httpserver):
        stored_pair(httpserver, Plant(price={7: 1.01}, missing_reference={9}))
        candles = Candle.objects.count()
        report = reconcile("BTC-USD", "1h", start=START, end=END, dry_run=True)
        assert report.found == 2
        assert not mismatches().exists() and not ReferenceBar.objects.exists()
        assert Candle.objects.count() == candles

    def test_reference_bars_are_never_written_to_candles(self, httpserver):
        stored_pair(httpserver, Plant(missing_stored={5}))
        found()
        assert set(Candle.objects.values_list("source", flat=True)) == {"binance"}
        assert not Candle.objects.filter(ts=utc(2024, 1, 1, 5)).exists()
        assert not ReferenceBar.objects.exists()

    def test_instruments_without_a_reference_are_skipped(self, httpserver):
        stored_pair(httpserver)
        Instrument.objects.create(symbol="ETH-USD", asset_class="crypto", calendar="24/7", timeframes=["1h"])
        report = reconcile(start=START, end=END)
        assert report.skipped == ["ETH-USD"] and [s.symbol for s in report.series] == ["BTC-USD"]


class TestCommand:
    def test_it_exits_1_with_the_findings_as_json(self, httpserver):
        stored_pair(httpserver, Plant(price={7: 1.01}))
        code, out = command("--symbol", "BTC-USD", "--start", "2024-01-01", "--end", "2024-01-05",
                            "--format", "json")
        assert code == 1 and out["found"] == 1 and out["by_kind"] == {"price": 1}

    def test_it_exits_0_when_the_sources_agree(self, httpserver):
        stored_pair(httpserver)
        code, out = command("--symbol", "BTC-USD", "--start", "2024-01-01", "--end", "2024-01-05")
        assert code == 0 and "BTC-USD 1h vs ccxt" in out and "agrees" in out

    @pytest.mark.parametrize(("args", "message"), [
        (("--symbol", "NOPE"), "unknown instrument"),
        (("--timeframe", "2h"), "unknown timeframe"),
        (("--since", "yesterday"), "is not a duration"),
        (("--start", "2024-01-01", "--since", "7d"), "not both"),
        (("--start", "2024-01-05", "--end", "2024-01-01"), "empty range"),
        (("--start", "soon"), "is not an ISO date"),
        (("--repair", "1"), "no anomaly 1"),
    ])
    def test_bad_arguments_exit_2_naming_the_problem(self, httpserver, args, message):
        stored_pair(httpserver)
        code, out = command(*args)
        assert code == 2 and message in out

    def test_an_instrument_without_a_reference_is_refused(self, httpserver):
        Instrument.objects.create(symbol="ETH-USD", asset_class="crypto", calendar="24/7", timeframes=["1h"])
        code, out = command("--symbol", "ETH-USD")
        assert code == 2 and "no reference source" in out

    def test_a_failing_reference_fails_its_series_and_exits_1(self, httpserver, settings):
        stored_pair(httpserver)
        settings.CCXT_COINBASEEXCHANGE_API_URL = "http://127.0.0.1:9"  # nothing listens there
        code, out = command("--symbol", "BTC-USD", "--start", "2024-01-01", "--end", "2024-01-05",
                            "--format", "json")
        assert code == 1 and out["failed"] == 1 and out["series"][0]["status"] == "failed"
        assert not ReferenceBar.objects.exists()


class TestRepairFromReference:
    def planted(self, httpserver) -> DataAnomaly:
        stored_pair(httpserver, Plant(ratio=(range(30, 36), 2.0)))
        found()
        return mismatches().get()

    def test_it_requires_a_note(self, httpserver):
        anomaly = self.planted(httpserver)
        with pytest.raises(ReconcileError, match="a note is required"):
            repair_from_reference(anomaly, "  ")
        code, out = command("--repair", str(anomaly.pk))
        assert code == 2 and "a note is required" in out
        assert BackfillState.objects.count() == 1  # only the backfill that stored the series

    def test_it_writes_the_reference_bars_as_a_tracked_backfill_and_resolves_the_anomaly(self, httpserver):
        anomaly = self.planted(httpserver)
        outcome = repair_from_reference(anomaly, "Binance served unadjusted prices that day", by="ann")
        state = BackfillState.objects.get(execution_id=outcome["execution_id"])
        assert (state.status, state.provider, state.range_start, state.range_end) == (
            "completed", "ccxt", utc(2024, 1, 2, 6), utc(2024, 1, 2, 12))
        assert state.requested_by == f"reference repair of anomaly #{anomaly.pk} for ann"
        assert state.details["reference_repair"]["note"] == "Binance served unadjusted prices that day"
        anomaly.refresh_from_db()
        assert (anomaly.resolution_status, anomaly.resolved_by) == ("resolved", "ann")
        assert anomaly.details["repairs"][-1]["source"] == "reference"
        assert set(Candle.objects.filter(ts__gte=utc(2024, 1, 2, 6), ts__lt=utc(2024, 1, 2, 12))
                   .values_list("source", flat=True)) == {"ccxt"}
        assert found() == []

    def test_bars_the_reference_lacks_cannot_be_taken_from_it(self, httpserver):
        stored_pair(httpserver, Plant(missing_reference={9}))
        found()
        with pytest.raises(ReconcileError, match="the reference lacks these bars"):
            repair_from_reference(mismatches().get(), "take them")

    def test_only_a_source_mismatch_can_be_repaired_from_the_reference(self, httpserver):
        stored_pair(httpserver)
        gap = DataAnomaly.objects.create(symbol="BTC-USD", timeframe="1h", anomaly_type="gap", severity="low",
                                         description="gap", fingerprint="g", period_start=START)
        with pytest.raises(ReconcileError, match="only a source_mismatch"):
            repair_from_reference(gap, "why not")


class TestClassification:
    """The post-pass alone, on hand-made pairs (no database)."""

    @staticmethod
    def equity_series():
        from integrity.reconcile.reference import ReferenceSeries

        return ReferenceSeries(symbol="AAPL", timeframe="1d", asset_class="equity", calendar="XNYS", provider="csv",
                               options={}, tolerance_pct=0.05, volume_tolerance_pct=None)

    def test_a_bar_missing_where_the_calendar_expects_none_is_no_finding(self):
        import numpy as np

        from integrity.reconcile.classify import classify
        from integrity.reconcile.compare import Pair, ReferenceLookup
        from integrity.timeframes import to_ns

        saturday, monday = to_ns(utc(2024, 1, 6)), to_ns(utc(2024, 1, 8))
        bar = (185.0, 186.0, 184.0, 185.5, 1e6)
        pairs = [Pair(1, saturday, None, bar), Pair(2, monday, None, bar)]
        findings = classify(self.equity_series(), pairs, ReferenceLookup(np.empty(0, "int64"), np.empty((0, 5))))
        assert [(f.details["kind"], f.period_start) for f in findings] == [("missing_stored", utc(2024, 1, 8))]

    def test_daily_bars_are_never_read_as_time_shifted(self):
        from integrity.reconcile.classify import shift_candidates

        assert shift_candidates("1d") == [] and shift_candidates("4h") == [
            4 * 3_600_000_000_000, -4 * 3_600_000_000_000, 8 * 3_600_000_000_000, -8 * 3_600_000_000_000,
            12 * 3_600_000_000_000, -12 * 3_600_000_000_000]

    def test_bars_the_reference_lacks_in_a_flat_stretch_are_missing_not_shifted(self):
        import numpy as np

        from integrity.reconcile.classify import classify
        from integrity.reconcile.compare import Pair, ReferenceLookup
        from integrity.reconcile.reference import ReferenceSeries
        from integrity.timeframes import to_ns

        series = ReferenceSeries(symbol="BTC-USD", timeframe="1h", asset_class="crypto", calendar="24/7",
                                 provider="ccxt", options={}, tolerance_pct=0.1, volume_tolerance_pct=None)
        hours = [to_ns(utc(2024, 1, 1, h)) for h in range(12)]
        flat = (100.0, 100.0, 100.0, 100.0, 1.0)
        lookup = ReferenceLookup(np.array([t for h, t in enumerate(hours) if not 3 <= h <= 6], dtype="int64"),
                                 np.array([flat] * 8))
        pairs = [Pair(h, hours[h], flat, None) for h in range(3, 7)]
        [finding] = classify(series, pairs, lookup)
        assert (finding.details["kind"], finding.affected_rows) == ("missing_reference", 4)
