import json
import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from integrity.providers.base import BAR_COLUMNS, empty_bar_frame, make_bar_frame
from integrity.validation import REASON_CODES, ValidationSummary, validate_bars

NOW = datetime(2024, 6, 1, tzinfo=UTC)
T0 = datetime(2024, 1, 1, tzinfo=UTC)


def bars(*rows, step=timedelta(hours=1)):
    """rows: (open, high, low, close, volume) or (ts, open, high, low, close, volume)."""
    ts, values = [], []
    for i, row in enumerate(rows):
        if len(row) == 6:
            ts.append(row[0])
            values.append(row[1:])
        else:
            ts.append(T0 + i * step)
            values.append(row)
    cols = list(zip(*values, strict=True)) if values else [[]] * 5
    return make_bar_frame(ts, *cols)


GOOD = (10.0, 12.0, 9.0, 11.0, 100.0)


def reasons_of(frame, timeframe="1h", now=NOW):
    result = validate_bars(frame, timeframe, now=now)
    return [r.split(",") for r in result.invalid["reasons"]]


class TestValidBars:
    def test_it_passes_valid_bars_untouched(self):
        frame = bars(GOOD, (10.0, 10.0, 10.0, 10.0, 0.0), (5.0, 6.0, 4.0, 4.5, 1.5))
        result = validate_bars(frame, "1h", now=NOW)
        assert result.invalid_count == 0
        pd.testing.assert_frame_equal(result.valid, frame)

    def test_it_returns_valid_bars_sorted_by_ts_with_a_fresh_index(self):
        frame = bars((T0 + timedelta(hours=2), *GOOD), (T0, *GOOD), (T0 + timedelta(hours=1), *GOOD))
        result = validate_bars(frame, "1h", now=NOW)
        assert list(result.valid["ts"]) == [T0, T0 + timedelta(hours=1), T0 + timedelta(hours=2)]
        assert list(result.valid.index) == [0, 1, 2]

    def test_it_keeps_the_bar_frame_layout(self):
        result = validate_bars(bars(GOOD, (1.0, 0.5, 1.0, 1.0, 1.0)), "1h", now=NOW)
        assert list(result.valid.columns) == BAR_COLUMNS
        assert str(result.valid["ts"].dtype) == "datetime64[ns, UTC]"
        assert list(result.invalid.columns) == [*BAR_COLUMNS, "reasons"]

    def test_it_accepts_daily_bars_at_midnight_utc(self):
        frame = bars(GOOD, GOOD, step=timedelta(days=1))
        assert validate_bars(frame, "1d", now=NOW).invalid_count == 0


class TestNonFinite:
    @pytest.mark.parametrize("column", ["open", "high", "low", "close", "volume"])
    @pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
    def test_it_rejects_nan_and_inf_in_any_value(self, column, value):
        frame = bars(GOOD)
        frame.loc[0, column] = value
        assert "non_finite" in reasons_of(frame)[0]

    def test_it_rejects_a_nan_high_even_though_comparisons_with_nan_are_false(self):
        result = validate_bars(bars((10.0, np.nan, 9.0, 11.0, 1.0)), "1h", now=NOW)
        assert result.valid.empty
        assert result.invalid_count == 1


class TestMissingTs:
    def test_it_rejects_a_missing_ts(self):
        frame = bars((None, *GOOD), (T0, *GOOD))
        assert reasons_of(frame) == [["missing_ts"]]

    def test_it_does_not_call_two_missing_ts_duplicates(self):
        frame = bars((None, *GOOD), (None, *GOOD))
        assert reasons_of(frame) == [["missing_ts"], ["missing_ts"]]


class TestPriceRules:
    @pytest.mark.parametrize("column", ["open", "high", "low", "close"])
    def test_it_rejects_a_non_positive_price(self, column):
        frame = bars((10.0, 12.0, 9.0, 11.0, 1.0))
        frame.loc[0, column] = 0.0
        assert "non_positive_price" in reasons_of(frame)[0]

    def test_it_rejects_high_below_low(self):
        assert reasons_of(bars((10.0, 9.0, 10.0, 9.5, 1.0)))[0] == [
            "high_below_low", "high_below_open_close", "low_above_open_close"]

    def test_it_rejects_high_below_open(self):
        assert reasons_of(bars((12.0, 11.0, 9.0, 10.0, 1.0))) == [["high_below_open_close"]]

    def test_it_rejects_high_below_close(self):
        assert reasons_of(bars((10.0, 11.0, 9.0, 12.0, 1.0))) == [["high_below_open_close"]]

    def test_it_rejects_low_above_open(self):
        assert reasons_of(bars((9.0, 12.0, 9.5, 11.0, 1.0))) == [["low_above_open_close"]]

    def test_it_rejects_low_above_close(self):
        assert reasons_of(bars((10.0, 12.0, 9.5, 9.0, 1.0))) == [["low_above_open_close"]]

    def test_it_rejects_negative_volume(self):
        assert reasons_of(bars((10.0, 12.0, 9.0, 11.0, -1.0))) == [["negative_volume"]]

    def test_it_accepts_zero_volume(self):
        assert reasons_of(bars((10.0, 12.0, 9.0, 11.0, 0.0))) == []


class TestTsRules:
    def test_it_rejects_an_intraday_ts_off_the_grid(self):
        frame = bars((T0 + timedelta(minutes=30), *GOOD))
        assert reasons_of(frame, "1h") == [["misaligned_ts"]]

    def test_it_rejects_a_4h_bar_not_on_a_multiple_of_4_hours(self):
        frame = bars((T0 + timedelta(hours=1), *GOOD), (T0 + timedelta(hours=4), *GOOD))
        assert reasons_of(frame, "4h") == [["misaligned_ts"]]

    def test_it_rejects_a_daily_bar_not_at_midnight_utc(self):
        frame = bars((T0 + timedelta(hours=5), *GOOD))
        assert reasons_of(frame, "1d") == [["misaligned_ts"]]

    def test_it_rejects_sub_second_offsets(self):
        frame = bars((pd.Timestamp(T0) + pd.Timedelta(1, "ns"), *GOOD))
        assert reasons_of(frame, "1m") == [["misaligned_ts"]]

    def test_it_rejects_a_ts_after_now(self):
        frame = bars((NOW, *GOOD), (NOW + timedelta(hours=1), *GOOD))
        assert reasons_of(frame, "1h") == [["future_ts"]]

    def test_it_defaults_now_to_the_current_time(self):
        future = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(hours=2)
        result = validate_bars(bars((future, *GOOD)), "1h")
        assert result.reason_counts() == {"future_ts": 1}

    def test_it_rejects_every_copy_of_a_duplicate_ts(self):
        frame = bars((T0, *GOOD), (T0 + timedelta(hours=1), *GOOD), (T0, 10.0, 13.0, 9.0, 11.0, 5.0))
        result = validate_bars(frame, "1h", now=NOW)
        assert list(result.valid["ts"]) == [T0 + timedelta(hours=1)]
        assert list(result.invalid["reasons"]) == ["duplicate_ts", "duplicate_ts"]


class TestSeveralReasons:
    def test_it_lists_every_reason_for_one_bar(self):
        frame = bars((NOW + timedelta(minutes=90), -1.0, 5.0, 6.0, 7.0, -3.0))
        assert reasons_of(frame, "1h") == [[
            "non_positive_price", "high_below_low", "high_below_open_close", "low_above_open_close",
            "negative_volume", "misaligned_ts", "future_ts",
        ]]

    def test_it_keeps_rejected_bars_in_their_original_order(self):
        frame = bars((T0 + timedelta(hours=3), 1.0, 0.5, 1.0, 1.0, 1.0),
                     (T0 + timedelta(hours=1), *GOOD),
                     (T0, 1.0, 2.0, 1.0, 1.0, -1.0))
        result = validate_bars(frame, "1h", now=NOW)
        assert list(result.invalid["ts"]) == [T0 + timedelta(hours=3), T0]

    def test_it_keeps_the_offending_values_in_the_invalid_frame(self):
        result = validate_bars(bars((10.0, 9.0, 10.0, 9.5, 7.0)), "1h", now=NOW)
        assert result.invalid.loc[0, ["open", "high", "low", "close", "volume"]].tolist() == [
            10.0, 9.0, 10.0, 9.5, 7.0]

    def test_it_has_one_reason_code_per_rule(self):
        assert len(set(REASON_CODES)) == len(REASON_CODES) == 10


class TestEmptyFrame:
    def test_it_validates_an_empty_frame(self):
        result = validate_bars(empty_bar_frame(), "1h", now=NOW)
        assert result.valid.empty and result.invalid.empty
        assert result.invalid_count == 0
        assert result.reason_counts() == {}
        assert result.examples() == []
        assert list(result.invalid.columns) == [*BAR_COLUMNS, "reasons"]

    def test_it_rejects_an_unknown_timeframe(self):
        with pytest.raises(ValueError, match="unknown timeframe"):
            validate_bars(empty_bar_frame(), "2h")


class TestReasonCountsAndExamples:
    def test_it_counts_bars_per_reason(self):
        frame = bars(GOOD, (10.0, 9.0, 10.0, 9.5, 1.0), (10.0, 12.0, 9.0, 11.0, -1.0),
                     (10.0, 12.0, 9.0, 11.0, -2.0))
        assert validate_bars(frame, "1h", now=NOW).reason_counts() == {
            "high_below_low": 1, "high_below_open_close": 1, "low_above_open_close": 1,
            "negative_volume": 2,
        }

    def test_it_limits_examples(self):
        frame = bars(*[(1.0, 2.0, 1.0, 1.0, -1.0)] * 5)
        assert len(validate_bars(frame, "1h", now=NOW).examples(limit=3)) == 3

    def test_it_renders_examples_as_json(self):
        frame = bars((None, np.nan, np.inf, -np.inf, 1.0, 2.0), (T0, 1.0, 0.5, 1.0, 1.0, 1.0))
        examples = validate_bars(frame, "1h", now=NOW).examples()
        assert json.loads(json.dumps(examples, allow_nan=False)) == [
            {"ts": None, "open": "nan", "high": "inf", "low": "-inf", "close": 1.0, "volume": 2.0,
             "reasons": ["missing_ts", "non_finite", "non_positive_price"]},
            {"ts": "2024-01-01T00:00:00+00:00", "open": 1.0, "high": 0.5, "low": 1.0, "close": 1.0,
             "volume": 1.0, "reasons": ["high_below_low", "high_below_open_close"]},
        ]


class TestSummary:
    def test_it_merges_page_results(self):
        summary = ValidationSummary()
        summary.add(validate_bars(bars(GOOD, (1.0, 2.0, 1.0, 1.0, -1.0)), "1h", now=NOW))
        summary.add(validate_bars(bars((1.0, 2.0, 1.0, 1.0, -1.0), (1.0, 0.5, 1.0, 1.0, 1.0)), "1h",
                                  now=NOW))
        assert summary.valid_count == 1
        assert summary.invalid_count == 3
        assert summary.reason_counts == {"negative_volume": 2, "high_below_low": 1,
                                         "high_below_open_close": 1}

    def test_it_keeps_the_first_ten_examples_overall(self):
        summary = ValidationSummary()
        for page in range(3):
            frame = bars(*[((T0 + timedelta(hours=page * 10 + i)), 1.0, 2.0, 1.0, 1.0, -1.0)
                           for i in range(4)])
            summary.add(validate_bars(frame, "1h", now=NOW))
        assert summary.invalid_count == 12
        assert [e["ts"] for e in summary.examples] == [
            (T0 + timedelta(hours=h)).isoformat() for h in [0, 1, 2, 3, 10, 11, 12, 13, 20, 21]]

    def test_it_serialises_as_json(self):
        summary = ValidationSummary()
        summary.add(validate_bars(bars((np.nan, 2.0, 1.0, 1.0, 1.0)), "1h", now=NOW))
        summary.add(validate_bars(empty_bar_frame(), "1h", now=NOW))
        data = json.loads(json.dumps(summary.as_dict(), allow_nan=False))
        assert data["invalid_count"] == 1
        assert data["reason_counts"] == {"non_finite": 1}
        assert data["examples"][0]["open"] == "nan"

    def test_it_starts_empty(self):
        assert ValidationSummary().as_dict() == {
            "valid_count": 0, "invalid_count": 0, "reason_counts": {}, "examples": []}


class TestScale:
    def test_it_validates_a_million_bars_vectorised(self):
        n = 1_000_000
        ts = pd.date_range(T0, periods=n, freq="1min")
        close = np.full(n, 100.0)
        frame = make_bar_frame(ts, close, close + 1, close - 1, close, np.ones(n))
        frame.loc[::1000, "high"] = np.nan
        result = validate_bars(frame, "1m", now=NOW + timedelta(days=3650))
        assert result.reason_counts() == {"non_finite": 1000}
        assert len(result.valid) == n - 1000
        assert not math.isnan(result.valid["high"].sum())


class TestOhlcRulesOnStoredRows:
    """The OHLC rules are one list: the SQL predicate run on stored rows is derived from it and
    flags exactly the rows the rules reject."""

    ROWS = [
        GOOD,
        (10.0, 10.0, 10.0, 10.0, 0.0),
        (0.0, 12.0, 9.0, 11.0, 1.0),  # non_positive_price
        (10.0, 8.0, 9.0, 8.5, 1.0),  # high_below_low
        (13.0, 12.0, 9.0, 11.0, 1.0),  # high_below_open_close
        (10.0, 12.0, 9.0, 8.0, 1.0),  # low_above_open_close
        (10.0, 12.0, 9.0, 11.0, -1.0),  # negative_volume
        (10.0, float("inf"), 9.0, 11.0, 1.0),  # non_finite
        (10.0, 12.0, 9.0, 11.0, float("inf")),  # non_finite
    ]

    @pytest.mark.django_db
    def test_the_sql_predicate_flags_exactly_the_rows_the_rules_reject(self):
        from django.db import connection

        from integrity.models import Candle
        from integrity.quality.sql import invalid_ohlc_sql

        rejected_by_rules = set()
        for i, (o, h, lo, c, v) in enumerate(self.ROWS):
            row = Candle.objects.create(symbol="X", timeframe="1h", ts=T0 + timedelta(hours=i),
                                        open=o, high=h, low=lo, close=c, volume=v)
            if reasons_of(bars((o, h, lo, c, v))):
                rejected_by_rules.add(row.id)
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT c.id FROM {Candle._meta.db_table} c WHERE {invalid_ohlc_sql()}")
            flagged = {row[0] for row in cursor.fetchall()}
        assert flagged == rejected_by_rules and len(flagged) == len(self.ROWS) - 2
