"""The data-quality detectors: thresholds, series contexts and the six anomaly types.

Series are built from the calendars themselves (the synthetic provider follows ``expected_bars``), so
a complete series must yield nothing and every injected fault must yield exactly its finding.
"""

from __future__ import annotations

import json
import math
from datetime import datetime

import pandas as pd
import pytest
from django.db import connection

from integrity.calendars import counting, expected_bars
from integrity.models import Candle, Instrument, SeriesStats
from integrity.providers.synthetic import synthetic_bars
from integrity.quality import sql
from integrity.quality.detectors import DETECTORS, run_detectors
from integrity.quality.enrichment import series_volatilities
from integrity.quality.findings import SeriesContext
from integrity.quality.thresholds import (
    DEFAULT_THRESHOLDS,
    resolve_thresholds,
    series_contexts,
    validate_thresholds,
)
from tests.conftest import is_postgres
from tests.helpers import add_instrument, make_anomaly, utc

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("default_thresholds")]

CALENDARS = {"equity": "XNYS", "crypto": "24/7", "forex": "24/5"}



def ctx(symbol="BTC-USD", timeframe="1h", asset_class="crypto", since=None, vol=None, **overrides):
    return SeriesContext(
        symbol=symbol, timeframe=timeframe, calendar=CALENDARS[asset_class], asset_class=asset_class,
        thresholds=resolve_thresholds(asset_class, overrides), robust_volatility=vol, since=since,
    )


START, END = utc(2024, 1, 1), utc(2024, 1, 11)  # the default series: 240 hourly bars, 24/7


def bars(symbol="BTC-USD", timeframe="1h", asset_class="crypto", start=START, end=END, **options) -> pd.DataFrame:
    return synthetic_bars(symbol, timeframe, CALENDARS[asset_class], start, end, **options)


def store(frame: pd.DataFrame, symbol="BTC-USD", timeframe="1h") -> None:
    Candle.objects.bulk_create(
        [Candle(symbol=symbol, timeframe=timeframe, ts=r.ts.to_pydatetime(), open=r.open, high=r.high,
                low=r.low, close=r.close, volume=r.volume, source="test")
         for r in frame.itertuples(index=False)],
        batch_size=5000,
    )


def scale_from(frame: pd.DataFrame, ts: datetime, factor: float, until: datetime | None = None) -> pd.DataFrame:
    """Prices of the bars from ``ts`` (until ``until``, exclusive) multiplied by ``factor``."""
    frame = frame.copy()
    mask = frame["ts"] >= pd.Timestamp(ts)
    if until is not None:
        mask &= frame["ts"] < pd.Timestamp(until)
    for column in ("open", "high", "low", "close"):
        frame.loc[mask, column] *= factor
    return frame


def spike_close(frame: pd.DataFrame, ts: datetime, factor: float) -> pd.DataFrame:
    """One bar's close (and its high, to stay a valid bar) multiplied by ``factor``."""
    frame = frame.copy()
    i = frame.index[frame["ts"] == pd.Timestamp(ts)][0]
    frame.loc[i, "close"] *= factor
    frame.loc[i, "high"] = max(frame.loc[i, "high"], frame.loc[i, "close"])
    frame.loc[i, "low"] = min(frame.loc[i, "low"], frame.loc[i, "close"])
    return frame


def drop(frame: pd.DataFrame, start: datetime, end: datetime) -> pd.DataFrame:
    keep = (frame["ts"] < pd.Timestamp(start)) | (frame["ts"] >= pd.Timestamp(end))
    return frame[keep].reset_index(drop=True)


def add_bar(symbol: str, timeframe: str, ts: datetime, price=100.0, **values) -> Candle:
    fields = {"open": price, "high": price * 1.01, "low": price * 0.99, "close": price, "volume": 10.0}
    fields.update(values)
    return Candle.objects.create(symbol=symbol, timeframe=timeframe, ts=ts, **fields)


def summary(findings) -> list[tuple]:
    return [(f.anomaly_type, f.period_start, f.period_end, f.affected_rows, f.severity) for f in findings]


# --- thresholds --------------------------------------------------------------------------------


class TestThresholds:
    def test_it_starts_from_the_defaults(self):
        assert resolve_thresholds("crypto", {}) == DEFAULT_THRESHOLDS

    def test_the_scalar_settings_set_the_base(self, settings):
        settings.OUTLIER_MOVE_THRESHOLD = 0.35
        assert resolve_thresholds("equity", {})["outlier_move"] == 0.35

    def test_asset_class_settings_override_the_default_settings(self, settings):
        settings.QUALITY_THRESHOLDS = {"default": {"outlier_move": 0.3}, "crypto": {"outlier_move": 0.5}}
        assert resolve_thresholds("crypto", {})["outlier_move"] == 0.5
        assert resolve_thresholds("equity", {})["outlier_move"] == 0.3

    def test_instrument_overrides_win_over_settings(self, settings):
        settings.QUALITY_THRESHOLDS = {"crypto": {"outlier_move": 0.5}}
        assert resolve_thresholds("crypto", {"outlier_move": 0.1})["outlier_move"] == 0.1

    def test_it_ignores_unknown_keys_and_bad_values_with_a_warning(self, caplog):
        resolved = resolve_thresholds("crypto", {"outlier_mvoe": 0.1, "outlier_move": "soon"})
        assert "outlier_mvoe" not in resolved
        assert resolved["outlier_move"] == DEFAULT_THRESHOLDS["outlier_move"]
        assert "outlier_mvoe" in caplog.text and "'outlier_move' must be a number" in caplog.text

    def test_validate_refuses_an_unknown_key(self):
        with pytest.raises(ValueError, match="unknown threshold 'outlier_mvoe'"):
            validate_thresholds({"outlier_mvoe": 0.1})

    def test_validate_coerces_values(self):
        assert validate_thresholds({"gap_medium_bars": 3.0, "outlier_split_ratios": [2, 3]}) == {
            "gap_medium_bars": 3, "outlier_split_ratios": [2.0, 3.0]}


class TestSeriesContexts:
    def test_it_builds_one_context_per_instrument_timeframe(self):
        add_instrument("AAPL", "equity", "XNYS", timeframes=("1d", "1h"))
        add_instrument("BTC-USD", "crypto", "24/7", timeframes=("1h",))
        got = [(c.symbol, c.timeframe, c.calendar, c.asset_class) for c in series_contexts()]
        assert got == [("AAPL", "1d", "XNYS", "equity"), ("AAPL", "1h", "XNYS", "equity"),
                       ("BTC-USD", "1h", "24/7", "crypto")]

    def test_it_adds_stored_timeframes_of_instruments_and_skips_unknown_symbols(self):
        add_instrument("BTC-USD", "crypto", "24/7", timeframes=("1h",))
        add_bar("BTC-USD", "1d", utc(2024, 1, 1))
        add_bar("NOT-LISTED", "1h", utc(2024, 1, 1))
        assert [(c.symbol, c.timeframe) for c in series_contexts()] == [("BTC-USD", "1d"), ("BTC-USD", "1h")]

    def test_it_filters_by_symbol_and_timeframe(self):
        add_instrument("AAPL", "equity", "XNYS", timeframes=("1d", "1h"))
        add_instrument("BTC-USD", "crypto", "24/7", timeframes=("1h",))
        assert [(c.symbol, c.timeframe) for c in series_contexts("AAPL", "1h")] == [("AAPL", "1h")]

    def test_it_skips_inactive_instruments_unless_named(self):
        add_instrument("OLD", "equity", "XNYS", timeframes=("1d",))
        Instrument.objects.filter(symbol="OLD").update(active=False)
        assert series_contexts() == []
        assert [c.symbol for c in series_contexts("OLD")] == ["OLD"]

    def test_it_carries_the_robust_volatility_from_series_stats(self):
        add_instrument("BTC-USD", "crypto", "24/7", timeframes=("1h", "1d"))
        SeriesStats.objects.create(symbol="BTC-USD", timeframe="1h", robust_volatility=0.004)
        vols = {c.timeframe: c.robust_volatility for c in series_contexts()}
        assert vols == {"1d": None, "1h": 0.004}

    def test_it_refuses_an_unknown_timeframe(self):
        with pytest.raises(ValueError, match="unknown timeframe '2h'"):
            series_contexts(timeframe="2h")

    def test_it_resolves_thresholds_per_instrument(self, settings):
        settings.QUALITY_THRESHOLDS = {"crypto": {"outlier_move": 2}}
        add_instrument("BTC-USD", "crypto", "24/7", timeframes=("1h",))
        add_instrument("ETH-USD", "crypto", "24/7", timeframes=("1h",))
        Instrument.objects.filter(symbol="ETH-USD").update(quality_thresholds={"outlier_move": 5})
        moves = {c.symbol: c.thresholds["outlier_move"] for c in series_contexts()}
        assert moves == {"BTC-USD": 2.0, "ETH-USD": 5.0}


# --- complete series: nothing to report ---------------------------------------------------------


class TestCompleteSeries:
    def test_a_complete_nyse_daily_decade_has_no_findings(self):
        frame = bars("AAPL", "1d", "equity", utc(2004, 1, 1), utc(2014, 1, 1))
        assert len(frame) == 2517
        store(frame, "AAPL", "1d")
        # New Year's Day 2014 is a holiday: the last session is still 2013-12-31, not stale.
        found = run_detectors([ctx("AAPL", "1d", "equity")], now=utc(2014, 1, 2, 9))
        assert found == []

    def test_complete_nyse_minutes_across_dst_a_holiday_and_a_half_day_have_no_findings(self):
        # 2024-03-10: DST starts; 2024-11-28: Thanksgiving; 2024-11-29: closes 13:00 New York.
        store(bars("DST", "1m", "equity", utc(2024, 3, 8), utc(2024, 3, 13)), "DST", "1m")
        store(bars("HOL", "1m", "equity", utc(2024, 11, 27), utc(2024, 12, 3)), "HOL", "1m")
        assert Candle.objects.count() == 3 * 390 + 2 * 390 + 210
        assert run_detectors([ctx("DST", "1m", "equity")], now=utc(2024, 3, 12, 20, 5)) == []
        assert run_detectors([ctx("HOL", "1m", "equity")], now=utc(2024, 12, 2, 21, 5)) == []

    def test_the_synthetic_series_follows_the_calendar(self):
        frame = bars("AAPL", "1h", "equity", utc(2024, 3, 4), utc(2024, 3, 16))
        assert list(frame["ts"]) == list(expected_bars("XNYS", "1h", utc(2024, 3, 4), utc(2024, 3, 16)))

    def test_a_complete_crypto_series_has_no_findings(self):
        store(bars())
        assert run_detectors([ctx()], now=utc(2024, 1, 11, 0, 30)) == []

    def test_a_complete_forex_series_across_a_weekend_has_no_findings(self):
        frame = bars("EURUSD", "1h", "forex", utc(2024, 3, 1), utc(2024, 3, 6))
        assert frame["ts"].dt.day_of_week.eq(5).sum() == 0  # nothing on Saturday
        store(frame, "EURUSD")
        assert run_detectors([ctx("EURUSD", "1h", "forex")], now=utc(2024, 3, 6, 0, 30)) == []


# --- gap ---------------------------------------------------------------------------------------


class TestGaps:
    def test_deleted_bars_make_one_finding_per_contiguous_run(self):
        frame = drop(drop(bars(), utc(2024, 1, 2, 10), utc(2024, 1, 2, 22)), utc(2024, 1, 5, 3), utc(2024, 1, 5, 4))
        store(frame)
        assert summary(run_detectors([ctx()], ["gap"])) == [
            ("gap", utc(2024, 1, 2, 10), utc(2024, 1, 2, 21), 12, "medium"),
            ("gap", utc(2024, 1, 5, 3), utc(2024, 1, 5, 3), 1, "low"),
        ]

    def test_the_description_names_count_timeframe_and_span(self):
        store(drop(bars(), utc(2024, 1, 2, 10), utc(2024, 1, 2, 22)))
        [gap] = run_detectors([ctx()], ["gap"])
        assert gap.description == "12 missing 1h bars from 2024-01-02 10:00 UTC to 2024-01-02 21:00 UTC"
        assert gap.key == "2024-01-02T10:00:00+00:00"
        assert gap.details["previous_bar"] == "2024-01-02T09:00:00+00:00"
        assert gap.details["next_bar"] == "2024-01-02T22:00:00+00:00"

    def test_severity_grows_with_the_missing_span(self):
        store(drop(drop(bars(), utc(2024, 1, 2), utc(2024, 1, 3, 1)), utc(2024, 1, 4), utc(2024, 1, 9, 12)))
        assert [(f.affected_rows, f.severity) for f in run_detectors([ctx()], ["gap"])] == [(25, "high"), (132, "critical")]

    def test_missing_bars_on_both_sides_of_a_weekend_form_one_gap(self):
        # Friday from 19:00 (EST session: bars 14:00..20:00 UTC) and Monday (EDT: 13:00..19:00) until
        # 14:59 UTC missing: 2 + 2 bars, closed in between.
        frame = drop(bars("AAPL", "1h", "equity", utc(2024, 3, 4), utc(2024, 3, 16)), utc(2024, 3, 8, 19),
                     utc(2024, 3, 11, 15))
        store(frame, "AAPL")
        [gap] = run_detectors([ctx("AAPL", "1h", "equity")], ["gap"])
        assert (gap.period_start, gap.period_end, gap.affected_rows) == (
            utc(2024, 3, 8, 19), utc(2024, 3, 11, 14), 4)

    def test_a_missing_session_on_a_daily_series_is_one_bar(self):
        store(drop(bars("AAPL", "1d", "equity", utc(2024, 1, 1), utc(2024, 3, 1)), utc(2024, 2, 5), utc(2024, 2, 6)),
              "AAPL", "1d")
        # A whole session of trading time: high, as the same session missing on 1h (issue 12 §4).
        assert summary(run_detectors([ctx("AAPL", "1d", "equity")], ["gap"])) == [
            ("gap", utc(2024, 2, 5), utc(2024, 2, 5), 1, "high")]

    def test_duplicates_do_not_confuse_the_gap_detection(self):
        frame = drop(bars(), utc(2024, 1, 3), utc(2024, 1, 3, 2))
        store(frame)
        store(frame[frame["ts"].isin([pd.Timestamp("2024-01-02 23:00", tz="UTC"),
                                      pd.Timestamp("2024-01-03 02:00", tz="UTC")])])
        assert summary(run_detectors([ctx()], ["gap"])) == [("gap", utc(2024, 1, 3), utc(2024, 1, 3, 1), 2, "medium")]

    def test_a_gap_threshold_override_changes_the_severity(self):
        store(drop(bars(), utc(2024, 1, 2, 10), utc(2024, 1, 2, 22)))
        [gap] = run_detectors([ctx(gap_high_days=0.5)], ["gap"])
        assert gap.severity == "high"

    def test_it_judges_many_series_in_one_run(self):
        store(drop(bars("A"), utc(2024, 1, 2), utc(2024, 1, 2, 1)), "A")
        store(drop(bars("B"), utc(2024, 1, 3), utc(2024, 1, 3, 1)), "B")
        store(bars("C"), "C")
        found = run_detectors([ctx("A"), ctx("B"), ctx("C")], ["gap"])
        assert [(f.symbol, f.period_start) for f in found] == [("A", utc(2024, 1, 2)), ("B", utc(2024, 1, 3))]


# --- off_calendar ------------------------------------------------------------------------------


class TestOffCalendar:
    def test_a_saturday_bar_on_xnys_is_off_calendar(self):
        store(bars("AAPL", "1d", "equity", utc(2024, 3, 1), utc(2024, 3, 16)), "AAPL", "1d")
        add_bar("AAPL", "1d", utc(2024, 3, 9))
        [found] = run_detectors([ctx("AAPL", "1d", "equity")], ["off_calendar"])
        assert (found.period_start, found.period_end, found.affected_rows, found.key) == (
            utc(2024, 3, 9), utc(2024, 3, 9), 1, "2024-03-09T00:00:00+00:00")
        assert "XNYS" in found.description

    def test_a_saturday_bar_makes_no_gap(self):
        store(bars("AAPL", "1d", "equity", utc(2024, 3, 1), utc(2024, 3, 16)), "AAPL", "1d")
        add_bar("AAPL", "1d", utc(2024, 3, 9))
        assert run_detectors([ctx("AAPL", "1d", "equity")], ["gap"]) == []

    def test_consecutive_off_calendar_bars_form_one_finding(self):
        store(bars("AAPL", "1m", "equity", utc(2024, 3, 8), utc(2024, 3, 12)), "AAPL", "1m")
        for minute in range(5):  # Friday after the close
            add_bar("AAPL", "1m", utc(2024, 3, 8, 21, minute))
        add_bar("AAPL", "1m", utc(2024, 3, 9, 15))  # Saturday
        assert summary(run_detectors([ctx("AAPL", "1m", "equity")], ["off_calendar"])) == [
            ("off_calendar", utc(2024, 3, 8, 21), utc(2024, 3, 8, 21, 4), 5, "medium"),
            ("off_calendar", utc(2024, 3, 9, 15), utc(2024, 3, 9, 15), 1, "medium"),
        ]

    def test_it_finds_an_off_calendar_bar_in_a_series_with_gaps(self):
        # The count shortcut (stored - (expected - missing)) must not be fooled by a gap.
        frame = drop(bars("AAPL", "1h", "equity", utc(2024, 3, 4), utc(2024, 3, 16)), utc(2024, 3, 6), utc(2024, 3, 7))
        store(frame, "AAPL")
        add_bar("AAPL", "1h", utc(2024, 3, 10, 3))  # Sunday night
        found = run_detectors([ctx("AAPL", "1h", "equity")], types=["gap", "off_calendar"])
        assert [(f.anomaly_type, f.period_start) for f in found] == [
            ("gap", utc(2024, 3, 6, 14)), ("off_calendar", utc(2024, 3, 10, 3))]

    def test_an_unaligned_bar_in_a_session_is_off_calendar(self):
        store(bars("AAPL", "1h", "equity", utc(2024, 3, 4), utc(2024, 3, 9)), "AAPL")
        add_bar("AAPL", "1h", utc(2024, 3, 5, 16, 30))
        assert [f.period_start for f in run_detectors([ctx("AAPL", "1h", "equity")], ["off_calendar"])] == [
            utc(2024, 3, 5, 16, 30)]

    def test_a_run_split_across_streamed_chunks_stays_one_finding(self, monkeypatch):
        monkeypatch.setattr(sql, "TS_CHUNK", 7)
        store(bars("AAPL", "1h", "equity", utc(2024, 3, 4), utc(2024, 3, 16)), "AAPL")
        for hour in range(24):  # all of Saturday
            add_bar("AAPL", "1h", utc(2024, 3, 9, hour))
        assert summary(run_detectors([ctx("AAPL", "1h", "equity")], ["off_calendar"])) == [
            ("off_calendar", utc(2024, 3, 9), utc(2024, 3, 9, 23), 24, "medium")]

    def test_an_unaligned_bar_on_24_7_is_off_calendar(self):
        store(bars())
        add_bar("BTC-USD", "1h", utc(2024, 1, 5, 10, 30))
        assert summary(run_detectors([ctx()], ["off_calendar"])) == [
            ("off_calendar", utc(2024, 1, 5, 10, 30), utc(2024, 1, 5, 10, 30), 1, "medium")]

    def test_a_bar_in_the_forex_weekend_is_off_calendar(self):
        store(bars("EURUSD", "1h", "forex", utc(2024, 3, 1), utc(2024, 3, 6)), "EURUSD")
        add_bar("EURUSD", "1h", utc(2024, 3, 2, 12), price=1.08)  # Saturday
        [found] = run_detectors([ctx("EURUSD", "1h", "forex")], ["off_calendar"])
        assert found.period_start == utc(2024, 3, 2, 12)


# --- outlier -----------------------------------------------------------------------------------


class TestOutliers:
    def test_a_spike_that_reverts_in_a_quiet_series_is_a_bad_tick(self):
        store(spike_close(bars(volatility=0.001), utc(2024, 1, 5, 12), 1.06))
        [found] = run_detectors([ctx()], ["outlier"])
        assert (found.period_start, found.severity, found.key) == (
            utc(2024, 1, 5, 12), "medium", "2024-01-05T12:00:00+00:00")
        assert "spike that reverts (likely bad tick)" in found.description
        assert found.details["z"] > 10

    def test_a_large_spike_is_reported_once_not_again_on_its_way_back(self):
        store(bars(spikes=["2024-01-05T12:00:00Z"]))  # the synthetic provider's 1.5× close
        [found] = run_detectors([ctx()], ["outlier"])
        assert (found.period_start, found.severity) == (utc(2024, 1, 5, 12), "high")
        assert "revert" in found.description

    def test_a_persistent_25_percent_move_is_flagged_by_the_threshold(self):
        store(scale_from(bars(volatility=0.001), utc(2024, 1, 5, 12), 1.25))
        [found] = run_detectors([ctx()], ["outlier"])
        assert (found.period_start, found.severity) == (utc(2024, 1, 5, 12), "high")
        assert found.description.startswith("2024-01-05 12:00 UTC: close +25.")
        assert "threshold 20%" in found.description

    def test_a_persistent_move_below_the_threshold_is_not_a_bad_tick(self):
        store(scale_from(bars(volatility=0.001), utc(2024, 1, 5, 12), 1.10))
        assert run_detectors([ctx()], ["outlier"]) == []

    def test_a_persistent_move_in_a_volatile_series_is_not_flagged(self):
        store(scale_from(bars(volatility=0.1), utc(2024, 1, 5, 12), 1.12))
        assert run_detectors([ctx()], ["outlier"]) == []

    def test_a_reverting_move_in_a_volatile_series_is_not_flagged(self):
        store(spike_close(bars(volatility=0.1), utc(2024, 1, 5, 12), 1.10))
        assert run_detectors([ctx()], ["outlier"]) == []

    def test_the_same_reverting_move_in_a_quiet_series_is_flagged(self):
        store(spike_close(bars(volatility=0.001), utc(2024, 1, 5, 12), 1.10))
        assert [f.severity for f in run_detectors([ctx()], ["outlier"])] == ["medium"]

    def test_it_uses_the_volatility_from_series_stats_when_known(self):
        store(spike_close(bars(volatility=0.001), utc(2024, 1, 5, 12), 1.06))
        assert run_detectors([ctx(vol=0.05)], ["outlier"]) == []

    def test_a_2_to_1_split_is_named(self):
        store(scale_from(bars("AAPL", "1d", "equity", utc(2024, 1, 1), utc(2024, 4, 1)), utc(2024, 2, 5), 0.5),
              "AAPL", "1d")
        [found] = run_detectors([ctx("AAPL", "1d", "equity")], ["outlier"])
        assert (found.period_start, found.severity) == (utc(2024, 2, 5), "high")
        assert "possible 2:1 split" in found.description

    def test_a_reverse_split_is_named(self):
        store(scale_from(bars("AAPL", "1d", "equity", utc(2024, 1, 1), utc(2024, 4, 1)), utc(2024, 2, 5), 3.0),
              "AAPL", "1d")
        [found] = run_detectors([ctx("AAPL", "1d", "equity")], ["outlier"])
        assert "possible 1:3 reverse split" in found.description

    def test_a_100x_unit_error_is_critical(self):
        store(scale_from(bars(), utc(2024, 1, 5, 12), 100.0, until=utc(2024, 1, 5, 13)))
        [found] = run_detectors([ctx()], ["outlier"])
        assert (found.period_start, found.severity) == (utc(2024, 1, 5, 12), "critical")
        assert "possible 100× unit error" in found.description
        assert found.details["cause"] == "unit_error"

    def test_a_big_opening_gap_is_flagged(self):
        frame = bars("AAPL", "1d", "equity", utc(2024, 1, 1), utc(2024, 3, 1))
        i = frame.index[frame["ts"] == pd.Timestamp("2024-02-05", tz="UTC")][0]
        frame.loc[i, ["open", "high"]] = frame.loc[i - 1, "close"] * 1.3
        store(frame, "AAPL", "1d")
        [found] = run_detectors([ctx("AAPL", "1d", "equity")], ["outlier"])
        assert "open +30.0%" in found.description

    def test_the_move_threshold_is_configurable_per_asset_class(self, settings):
        settings.QUALITY_THRESHOLDS = {"crypto": {"outlier_move": 0.3}}
        add_instrument("BTC-USD", "crypto", "24/7", timeframes=("1h",))
        store(scale_from(bars(volatility=0.001), utc(2024, 1, 5, 12), 1.25))
        assert run_detectors(series_contexts(), ["outlier"]) == []

    def test_the_move_threshold_is_configurable_per_instrument(self, settings):
        settings.QUALITY_THRESHOLDS = {"crypto": {"outlier_move": 0.3}}
        add_instrument("BTC-USD", "crypto", "24/7", timeframes=("1h",))
        Instrument.objects.filter(symbol="BTC-USD").update(quality_thresholds={"outlier_move": 0.1})
        store(scale_from(bars(volatility=0.001), utc(2024, 1, 5, 12), 1.15))
        [found] = run_detectors(series_contexts(), ["outlier"])
        assert "threshold 10%" in found.description

    def test_robust_volatility_ignores_a_bad_tick(self):
        frame = bars(volatility=0.001)
        store(spike_close(frame, utc(2024, 1, 5, 12), 5.0), "SPIKED")
        store(frame, "CLEAN")
        volatility = {pair: sigma for pair, (_, sigma) in series_volatilities([("SPIKED", "1h"), ("CLEAN", "1h")]).items()}
        assert math.isclose(volatility[("SPIKED", "1h")], volatility[("CLEAN", "1h")], rel_tol=0.05)


# --- stale -------------------------------------------------------------------------------------


class TestStale:
    @pytest.fixture
    def friday_equity(self):
        store(bars("AAPL", "1d", "equity", utc(2024, 2, 1), utc(2024, 3, 9)), "AAPL", "1d")  # last: Fri 03-08

    def test_an_equity_ending_friday_is_not_stale_on_saturday_morning(self, friday_equity):
        assert run_detectors([ctx("AAPL", "1d", "equity")], ["stale"], now=utc(2024, 3, 9, 9)) == []

    def test_an_equity_ending_friday_is_not_stale_on_monday_evening(self, friday_equity):
        assert run_detectors([ctx("AAPL", "1d", "equity")], ["stale"], now=utc(2024, 3, 11, 22)) == []

    def test_an_equity_ending_friday_is_stale_the_next_wednesday(self, friday_equity):
        [found] = run_detectors([ctx("AAPL", "1d", "equity")], ["stale"], now=utc(2024, 3, 13, 9))
        assert found.key == "2024-03-08T00:00:00+00:00"
        assert (found.period_start, found.period_end, found.affected_rows) == (
            utc(2024, 3, 11), utc(2024, 3, 12), 2)
        # Monday's bar closed 20:00 UTC, published by 20:15, due at Tuesday's 02:00 backfill: 31 h ago.
        assert found.details["hours_stale"] == 31.0
        assert found.details["due_at"] == "2024-03-12T02:00:00+00:00"
        assert found.details["last_bar"] == "2024-03-08T00:00:00+00:00"
        assert found.details["expected_last_bar"] == "2024-03-12T00:00:00+00:00"
        assert found.severity == "high"

    def test_a_crypto_series_is_stale_once_a_due_bar_is_missing_for_longer_than_the_grace(self):
        store(bars())  # last bar 2024-01-10 23:00; the 00:00 bar is due at the 01-11 02:00 backfill
        assert run_detectors([ctx()], ["stale"], now=utc(2024, 1, 11, 3, 59)) == []
        [found] = run_detectors([ctx()], ["stale"], now=utc(2024, 1, 11, 4, 1))
        assert found.details["missing_bars"] == 1
        [found] = run_detectors([ctx()], ["stale"], now=utc(2024, 1, 12, 3))  # after the next day's run
        assert found.details["missing_bars"] == 25

    def test_the_grace_is_configurable(self, settings):
        settings.STALE_GRACE_MINUTES = 30
        store(bars())
        [found] = run_detectors([ctx()], ["stale"], now=utc(2024, 1, 11, 2, 31))
        assert found.details["grace_minutes"] == 30.0

    def test_a_series_without_bars_is_skipped(self):
        assert run_detectors([ctx()], ["stale"], now=utc(2024, 1, 11)) == []


# --- invalid_ohlc ------------------------------------------------------------------------------


class TestInvalidOhlc:
    def test_stored_invalid_rows_make_one_finding_with_samples(self):
        store(bars())
        broken = add_bar("BTC-USD", "1h", utc(2024, 1, 11, 5), high=90.0, low=110.0)
        negative = add_bar("BTC-USD", "1h", utc(2024, 1, 11, 6), volume=-1.0)
        [found] = run_detectors([ctx()], ["invalid_ohlc"])
        assert (found.key, found.affected_rows, found.severity) == ("stored", 2, "high")
        assert (found.period_start, found.period_end) == (utc(2024, 1, 11, 5), utc(2024, 1, 11, 6))
        assert [s["id"] for s in found.details["sample"]] == [broken.id, negative.id]
        assert found.details["reasons"] == {"high_below_low": 1, "high_below_open_close": 1,
                                            "low_above_open_close": 1, "negative_volume": 1}

    def test_non_positive_prices_are_invalid(self):
        add_bar("BTC-USD", "1h", utc(2024, 1, 1), price=0.0, high=0.0, low=0.0)
        [found] = run_detectors([ctx()], ["invalid_ohlc"])
        assert found.details["reasons"] == {"non_positive_price": 1}

    @pytest.mark.postgres_only  # SQLite stores NaN as NULL, which NOT NULL refuses: it cannot be stored
    def test_nan_prices_are_invalid(self):
        add_bar("BTC-USD", "1h", utc(2024, 1, 1))
        add_bar("BTC-USD", "1h", utc(2024, 1, 1, 1), close=float("nan"))
        add_bar("BTC-USD", "1h", utc(2024, 1, 1, 2), high=float("inf"))
        [found] = run_detectors([ctx()], ["invalid_ohlc"])
        assert found.affected_rows == 2
        assert found.details["reasons"] == {"non_finite": 2}

    def test_an_invalid_bar_is_not_also_an_outlier(self):
        store(bars())
        Candle.objects.filter(ts=utc(2024, 1, 5, 12)).update(close=-1.0)
        assert [f.anomaly_type for f in run_detectors([ctx()], types=["outlier", "invalid_ohlc"])] == [
            "invalid_ohlc"]


# --- duplicate ---------------------------------------------------------------------------------


class TestDuplicates:
    def test_duplicated_rows_make_one_finding_per_series_with_counts(self):
        frame = bars()
        store(frame)
        twice = frame[frame["ts"] == pd.Timestamp("2024-01-03 05:00", tz="UTC")]
        thrice = frame[frame["ts"] == pd.Timestamp("2024-01-07 00:00", tz="UTC")]
        store(pd.concat([twice, thrice, thrice]))
        [found] = run_detectors([ctx()], ["duplicate"])
        assert (found.key, found.affected_rows, found.severity) == ("duplicates", 3, "medium")
        assert (found.period_start, found.period_end) == (utc(2024, 1, 3, 5), utc(2024, 1, 7))
        assert found.details["groups"] == 2
        counts = [(g["ts"], g["count"], len(g["ids"])) for g in found.details["sample"]]
        assert counts == [("2024-01-03T05:00:00+00:00", 2, 2), ("2024-01-07T00:00:00+00:00", 3, 3)]

    def test_the_full_scan_and_the_whole_series_query_agree(self):
        frame = bars()
        store(frame)
        store(frame.iloc[[10, 10, 50]])
        make_anomaly(anomaly_type="duplicate", severity="medium")  # still open: judged on the whole series
        full = run_detectors([ctx()], ["duplicate"])
        incremental = run_detectors([ctx(since=utc(2024, 1, 10))], ["duplicate"])
        assert summary(full) == summary(incremental) == [
            ("duplicate", frame["ts"][10].to_pydatetime(), frame["ts"][50].to_pydatetime(), 3, "medium")]

    def test_without_an_open_duplicate_anomaly_an_incremental_check_reads_only_the_window(self):
        # The plan starts the window at the oldest row written since the last scan, which found no
        # duplicate: a new duplicate group always has a row in the window (bench/bench_scale.py).
        frame = bars()
        store(frame)
        store(frame.iloc[[10, 220]])  # 2024-01-01 10:00 (before the window) and 2024-01-10 04:00
        [found] = run_detectors([ctx(since=utc(2024, 1, 10))], ["duplicate"])
        assert (found.period_start, found.period_end, found.affected_rows) == \
            (frame["ts"][220].to_pydatetime(), frame["ts"][220].to_pydatetime(), 1)

    def test_a_resolved_duplicate_anomaly_does_not_widen_the_check(self):
        frame = bars()
        store(frame)
        store(frame.iloc[[10]])
        make_anomaly(anomaly_type="duplicate", severity="medium", resolution_status="resolved")
        assert run_detectors([ctx(since=utc(2024, 1, 10))], ["duplicate"]) == []

    def test_a_series_without_duplicates_has_none(self):
        store(bars())
        assert run_detectors([ctx()], ["duplicate"]) == []


# --- incremental scans -------------------------------------------------------------------------


class TestIncremental:
    @pytest.fixture
    def faulty(self):
        frame = bars(volatility=0.001)
        frame = drop(drop(frame, utc(2024, 1, 2, 5), utc(2024, 1, 2, 7)), utc(2024, 1, 8, 5), utc(2024, 1, 8, 7))
        frame = spike_close(spike_close(frame, utc(2024, 1, 3, 12), 1.3), utc(2024, 1, 9, 12), 1.3)
        store(frame)
        for day in (2, 8):  # unaligned bars priced like their neighbour, so they are no outliers
            price = frame.loc[frame["ts"] == pd.Timestamp(utc(2024, 1, day, 10)), "close"].item()
            add_bar("BTC-USD", "1h", utc(2024, 1, day, 10, 30), price=price)
        Candle.objects.filter(ts__in=[utc(2024, 1, 3, 20), utc(2024, 1, 9, 20)]).update(volume=-5)

    def test_a_full_scan_reports_both_halves(self, faulty):
        found = run_detectors([ctx()], types=["gap", "off_calendar", "outlier", "invalid_ohlc"])
        assert len(found) == 2 + 2 + 2 + 1

    def test_only_problems_at_or_after_since_are_reported(self, faulty):
        found = run_detectors([ctx(since=utc(2024, 1, 6))], types=["gap", "off_calendar", "outlier",
                                                                 "invalid_ohlc"])
        assert [(f.anomaly_type, f.period_start) for f in found] == [
            ("gap", utc(2024, 1, 8, 5)),
            ("off_calendar", utc(2024, 1, 8, 10, 30)),
            ("outlier", utc(2024, 1, 9, 12)),
            ("invalid_ohlc", utc(2024, 1, 9, 20)),
        ]
        assert found[-1].affected_rows == 1

    def test_a_gap_reaching_since_is_reported_whole_from_the_bar_before(self):
        store(drop(bars(), utc(2024, 1, 5), utc(2024, 1, 5, 4)))
        [gap] = run_detectors([ctx(since=utc(2024, 1, 5, 2))], ["gap"])
        assert (gap.period_start, gap.period_end, gap.affected_rows) == (utc(2024, 1, 5), utc(2024, 1, 5, 3), 4)

    def test_a_move_at_since_is_judged_against_the_bar_before(self):
        store(scale_from(bars(volatility=0.001), utc(2024, 1, 5, 12), 1.25))
        [found] = run_detectors([ctx(since=utc(2024, 1, 5, 12))], ["outlier"])
        assert found.period_start == utc(2024, 1, 5, 12)

    def test_off_calendar_bars_before_since_are_not_reported(self):
        store(bars("AAPL", "1d", "equity", utc(2024, 3, 1), utc(2024, 3, 30)), "AAPL", "1d")
        add_bar("AAPL", "1d", utc(2024, 3, 9))
        add_bar("AAPL", "1d", utc(2024, 3, 23))
        [found] = run_detectors([ctx("AAPL", "1d", "equity", since=utc(2024, 3, 16))], ["off_calendar"])
        assert found.period_start == utc(2024, 3, 23)


# --- the registry ------------------------------------------------------------------------------


class TestRegistry:
    def test_it_has_a_detector_for_every_anomaly_type(self):
        assert list(DETECTORS) == ["gap", "off_calendar", "outlier", "stale", "invalid_ohlc", "duplicate"]

    def test_run_detectors_refuses_an_unknown_type(self):
        with pytest.raises(ValueError, match="unknown anomaly type"):
            run_detectors([ctx()], types=["gaps"])

    def test_each_detector_alone_finds_what_run_detectors_finds(self):
        frame = drop(bars(volatility=0.001), utc(2024, 1, 2, 5), utc(2024, 1, 2, 7))
        store(spike_close(frame, utc(2024, 1, 3, 12), 1.3))
        store(frame.iloc[[3]])
        add_bar("BTC-USD", "1h", utc(2024, 1, 4, 10, 30), volume=-1)
        now = utc(2024, 1, 13)
        together = run_detectors([ctx()], now=now)
        alone = [f for anomaly_type in DETECTORS for f in run_detectors([ctx()], [anomaly_type], now=now)]
        assert [f.fingerprint for f in together] == [f.fingerprint for f in alone]
        assert sorted({f.anomaly_type for f in together}) == sorted(DETECTORS)

    def test_a_context_with_an_unknown_calendar_is_skipped(self, caplog):
        bad = ctx()
        bad.calendar = "NOPE"
        assert run_detectors([bad]) == []
        assert "unknown calendar" in caplog.text

    def test_a_run_over_many_series_takes_a_fixed_number_of_queries(self, django_assert_max_num_queries):
        for symbol in ("BTC-USD", "ETH-USD", "SOL-USD"):
            store(drop(bars(symbol), utc(2024, 1, 2), utc(2024, 1, 2, 3)), symbol)
        # The window pass, the newest bar of each series, one volatility sample (small reverting moves),
        # the quarantined bars in the gaps' holes.
        with django_assert_max_num_queries(4):
            found = run_detectors([ctx("BTC-USD"), ctx("ETH-USD"), ctx("SOL-USD")], now=utc(2024, 1, 11))
        assert [f.symbol for f in found] == ["BTC-USD", "ETH-USD", "SOL-USD"]

    def test_it_counts_long_spans_without_materialising_them(self, monkeypatch):
        monkeypatch.setattr(counting, "DENSE_LIMIT", 5)  # force the interval-by-interval path
        store(drop(bars("AAPL", "1h", "equity", utc(2024, 3, 4), utc(2024, 3, 16)), utc(2024, 3, 8, 19),
                   utc(2024, 3, 11, 15)), "AAPL")
        [gap] = run_detectors([ctx("AAPL", "1h", "equity")], ["gap"])
        assert (gap.period_start, gap.period_end, gap.affected_rows) == (
            utc(2024, 3, 8, 19), utc(2024, 3, 11, 14), 4)

    def test_findings_details_are_strict_json(self):
        frame = drop(bars(volatility=0.001), utc(2024, 1, 2, 5), utc(2024, 1, 2, 7))
        store(spike_close(frame, utc(2024, 1, 3, 12), 1.3))
        store(frame.iloc[[3]])
        add_bar("BTC-USD", "1h", utc(2024, 1, 4, 10, 30), volume=-1)
        if is_postgres():
            add_bar("BTC-USD", "1h", utc(2024, 1, 11, 1), open=float("nan"))
        for finding in run_detectors([ctx()], now=utc(2024, 1, 13)):
            json.dumps(finding.as_dict(), allow_nan=False)

    @pytest.mark.postgres_only  # JIT is a PostgreSQL planner feature
    def test_a_small_incremental_scan_leaves_the_session_jit_setting_alone(self):
        store(bars())
        with connection.cursor() as cursor:
            cursor.execute("SHOW jit")
            before = cursor.fetchone()[0]
            run_detectors([ctx(since=utc(2024, 1, 10))], ["gap"])
            cursor.execute("SHOW jit")
            assert cursor.fetchone()[0] == before
