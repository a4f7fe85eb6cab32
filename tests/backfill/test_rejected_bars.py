"""Bars refused at ingest (issue 12 §4): kept in the quarantine (``rejected_candles``) with their
values, rules and execution, reported once — as the run's invalid_ohlc finding, not again as gaps."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from django.db import transaction

from integrity.backfill import run_backfill
from integrity.models import AnomalyType, Candle, DataAnomaly, RejectedCandle
from integrity.quality.anomalies import detect_data_anomalies
from integrity.rejected import quarantine_bars
from tests.helpers import add_instrument, utc

pytestmark = pytest.mark.django_db(transaction=True)

START, END = utc(2024, 1, 1), utc(2024, 1, 11)  # 240 hourly bars, 24/7
BAD = [utc(2024, 1, 2, 5), utc(2024, 1, 3, 7), utc(2024, 1, 3, 8), utc(2024, 1, 6, 23)]


def backfill(**kwargs):
    return run_backfill("BTC-USD", "1h", start=START, end=END, batch_size=50, **kwargs)


def gaps() -> list:
    return [f for f in detect_data_anomalies(types=["gap"], full=True, dry_run=True).findings]


def test_each_rejected_bar_is_quarantined_with_its_values_rule_and_execution():
    add_instrument(invalid=[t.isoformat() for t in BAD])
    result = backfill()
    rows = list(RejectedCandle.objects.order_by("ts"))
    assert [r.ts for r in rows] == BAD
    # The synthetic provider swaps high and low: every rule that compares them is broken.
    assert {r.rules for r in rows} == {"high_below_low,high_below_open_close,low_above_open_close"}
    assert {str(r.execution_id) for r in rows} == {result.execution_id}
    assert all(r.high < r.low and r.raw_values["high"] == r.high for r in rows)
    assert {r.provider for r in rows} == {"synthetic"}


def test_the_invalid_ohlc_finding_spans_the_rejected_bars_only():
    add_instrument(invalid=[t.isoformat() for t in BAD])
    backfill()
    anomaly = DataAnomaly.objects.get(anomaly_type=AnomalyType.INVALID_OHLC)
    assert (anomaly.period_start, anomaly.period_end) == (BAD[0], BAD[-1])
    assert anomaly.affected_rows == len(BAD) and anomaly.details["quarantined"] == len(BAD)


def test_the_holes_rejected_bars_leave_are_not_reported_as_gaps():
    add_instrument(invalid=[t.isoformat() for t in BAD])
    backfill()
    assert not Candle.objects.filter(ts__in=BAD).exists()
    assert gaps() == []


def test_a_hole_at_a_quarantined_time_is_a_gap_again_once_its_invalid_ohlc_finding_is_resolved():
    add_instrument(invalid=[t.isoformat() for t in BAD])
    backfill()
    DataAnomaly.objects.get(anomaly_type=AnomalyType.INVALID_OHLC).resolve(reason="fixed")
    # (the good bars were stored since, then a foreign writer deleted them: the quarantine rows are history)
    assert len(gaps()) == 3  # 01-02 05:00, 01-03 07:00–08:00, 01-06 23:00


def test_a_hole_only_partly_made_of_rejected_bars_is_a_gap_caused_by_the_invalid_ohlc_finding():
    add_instrument(invalid=[t.isoformat() for t in BAD])
    result = backfill()
    Candle.objects.filter(ts=utc(2024, 1, 3, 9)).delete()  # next to the rejected 07:00 and 08:00
    [gap] = gaps()
    assert (gap.period_start, gap.period_end, gap.affected_rows) == (utc(2024, 1, 3, 7), utc(2024, 1, 3, 9), 3)
    assert gap.details["rejected_bars"] == 2
    assert [c["execution_id"] for c in gap.details["caused_by"]] == [result.execution_id]
    assert gap.details["caused_by"][0]["fingerprint"] == DataAnomaly.objects.get(
        anomaly_type=AnomalyType.INVALID_OHLC).fingerprint


def test_rerunning_the_same_backfill_does_not_duplicate_quarantine_rows():
    add_instrument(invalid=[t.isoformat() for t in BAD])
    backfill()
    second = backfill(provider_options={"invalid": [t.isoformat() for t in BAD]})
    assert RejectedCandle.objects.count() == len(BAD)
    assert {str(e) for e in RejectedCandle.objects.values_list("execution_id", flat=True)} == {second.execution_id}


def test_a_rerun_that_refuses_the_same_bars_again_reports_them_once():
    add_instrument(invalid=[t.isoformat() for t in BAD])
    first = backfill()
    second = backfill()
    open_findings = DataAnomaly.objects.filter(anomaly_type=AnomalyType.INVALID_OHLC, resolution_status="open")
    assert [str(a.execution_id) for a in open_findings] == [second.execution_id]
    earlier = DataAnomaly.objects.get(execution_id=first.execution_id)
    assert earlier.resolution_status == "resolved" and second.execution_id in earlier.resolution_note


def test_copies_of_one_bar_time_are_one_row_counting_them():
    frame = pd.DataFrame({"ts": pd.to_datetime([BAD[0], BAD[0]], utc=True), "open": [1.0, 2.0],
                          "high": [2.0, 3.0], "low": [0.5, 1.0], "close": [1.5, 2.5], "volume": [1.0, 1.0],
                          "reasons": ["duplicate_ts", "duplicate_ts"]})
    with transaction.atomic():
        assert quarantine_bars("BTC-USD", "1h", frame, execution_id="00000000-0000-0000-0000-000000000001") == 1
    row = RejectedCandle.objects.get()
    assert (row.copies, row.rules, row.open) == (2, "duplicate_ts", 2.0)


def test_values_that_are_not_finite_are_kept_as_they_came():
    frame = pd.DataFrame({"ts": pd.to_datetime([BAD[0]], utc=True), "open": [float("nan")],
                          "high": [float("inf")], "low": [-1.0], "close": [1.0], "volume": [float("-inf")],
                          "reasons": ["non_finite,non_positive_price"]})
    with transaction.atomic():
        quarantine_bars("BTC-USD", "1h", frame, execution_id="00000000-0000-0000-0000-000000000001")
    row = RejectedCandle.objects.get()
    assert row.raw_values == {"open": "nan", "high": "inf", "low": -1.0, "close": 1.0, "volume": "-inf"}
    assert (row.open, row.high, row.low, row.volume) == (None, None, -1.0, None)
    assert row.rule_list == ["non_finite", "non_positive_price"]
    assert not math.isnan(row.close)


def test_quarantine_rows_commit_with_their_batch_only():
    frame = pd.DataFrame({"ts": pd.to_datetime([BAD[0]], utc=True), "open": [1.0], "high": [0.5], "low": [1.0],
                          "close": [1.0], "volume": [1.0], "reasons": ["high_below_low"]})
    with pytest.raises(RuntimeError, match="transaction"):
        quarantine_bars("BTC-USD", "1h", frame, execution_id="00000000-0000-0000-0000-000000000001")
    with pytest.raises(RuntimeError, match="candle write failed"), transaction.atomic():
        quarantine_bars("BTC-USD", "1h", frame, execution_id="00000000-0000-0000-0000-000000000001")
        raise RuntimeError("candle write failed")  # the batch fails after the quarantine write: nothing stays
    assert not RejectedCandle.objects.exists()
