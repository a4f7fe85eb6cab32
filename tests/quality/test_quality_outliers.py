"""Outliers: the 20 % threshold tests, the robust-volatility bad-tick test and named likely causes."""

from __future__ import annotations

import pandas as pd
import pytest

from integrity.models import Candle, Instrument
from integrity.providers.synthetic import synthetic_bars
from integrity.quality.detectors import run_detectors
from integrity.quality.findings import SeriesContext
from integrity.quality.thresholds import DEFAULT_THRESHOLDS, resolve_thresholds, series_contexts
from tests.helpers import add_instrument, utc

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("default_thresholds")]

CALENDARS = {"equity": "XNYS", "crypto": "24/7", "forex": "24/5"}
BAR = utc(2024, 3, 12, 15)  # a Tuesday, 11:00 New York: inside every calendar's trading time



def ctx(symbol="EURUSD", asset_class="forex", timeframe="1h") -> SeriesContext:
    return SeriesContext(symbol=symbol, timeframe=timeframe, calendar=CALENDARS[asset_class],
                         asset_class=asset_class, thresholds=resolve_thresholds(asset_class, {}))


def frame(symbol="EURUSD", asset_class="forex", volatility=0.0005, timeframe="1h") -> pd.DataFrame:
    return synthetic_bars(symbol, timeframe, CALENDARS[asset_class], utc(2024, 3, 4), utc(2024, 3, 16),
                          base_price=1.08 if asset_class == "forex" else 100.0, volatility=volatility)


def store(bars: pd.DataFrame, symbol="EURUSD", timeframe="1h") -> None:
    Candle.objects.bulk_create([
        Candle(symbol=symbol, timeframe=timeframe, ts=r.ts.to_pydatetime(), open=r.open, high=r.high, low=r.low,
               close=r.close, volume=r.volume) for r in bars.itertuples(index=False)])


def at(bars: pd.DataFrame, ts) -> int:
    return int(bars.index[bars["ts"] == pd.Timestamp(ts)][0])


def one_bar_close(bars: pd.DataFrame, factor: float, ts=BAR) -> pd.DataFrame:
    """The bar's close × factor; the next bar is untouched, so the spike reverts."""
    bars = bars.copy()
    i = at(bars, ts)
    bars.loc[i, "close"] *= factor
    bars.loc[i, "high"] = max(bars.loc[i, "high"], bars.loc[i, "close"])
    bars.loc[i, "low"] = min(bars.loc[i, "low"], bars.loc[i, "close"])
    return bars


def persistent(bars: pd.DataFrame, factor: float, ts=BAR) -> pd.DataFrame:
    """Every price from the bar on × factor (its open too): a level change that stays."""
    bars = bars.copy()
    mask = bars["ts"] >= pd.Timestamp(ts)
    bars.loc[mask, ["open", "high", "low", "close"]] *= factor
    return bars


def close_move_to(bars: pd.DataFrame, change: float, ts=BAR) -> pd.DataFrame:
    """From the bar on, prices are rescaled so its close is exactly prev close × (1 + change); its open
    is the previous close (so only the close-to-close test can fire)."""
    bars = bars.copy()
    i = at(bars, ts)
    prev = bars.loc[i - 1, "close"]
    factor = prev * (1 + change) / bars.loc[i, "close"]
    bars.loc[i:, ["open", "high", "low", "close"]] *= factor
    bars.loc[i, "open"] = prev
    bars.loc[i, "high"] = max(bars.loc[i, ["open", "high", "close"]])
    bars.loc[i, "low"] = min(bars.loc[i, ["open", "low", "close"]])
    return bars


def open_move_to(bars: pd.DataFrame, change: float, ts=BAR) -> pd.DataFrame:
    """The bar opens at prev close × (1 + change) and closes back at the previous close."""
    bars = bars.copy()
    i = at(bars, ts)
    prev = bars.loc[i - 1, "close"]
    bars.loc[i, "open"] = prev * (1 + change)
    bars.loc[i, "close"] = prev
    bars.loc[i, "high"] = max(bars.loc[i, "high"], bars.loc[i, "open"], prev)
    bars.loc[i, "low"] = min(bars.loc[i, "low"], bars.loc[i, "open"], prev)
    return bars


def found(symbol="EURUSD", asset_class="forex"):
    return [(f.period_start, f.severity) for f in run_detectors([ctx(symbol, asset_class)], ["outlier"])]


class TestTwentyPercentDefault:
    @pytest.mark.parametrize(("change", "flagged"), [(0.19, False), (0.21, True), (-0.19, False), (-0.21, True)])
    def test_close_to_close(self, change, flagged):
        store(close_move_to(frame("BTC-USD", "crypto", 0.001), change), "BTC-USD")
        assert found("BTC-USD", "crypto") == ([(BAR, "high")] if flagged else [])

    @pytest.mark.parametrize(("change", "flagged"), [(0.19, False), (0.21, True), (-0.21, True)])
    def test_open_to_previous_close(self, change, flagged):
        store(open_move_to(frame("BTC-USD", "crypto", 0.001), change), "BTC-USD")
        result = run_detectors([ctx("BTC-USD", "crypto")], ["outlier"])
        assert [(f.period_start, f.severity) for f in result] == ([(BAR, "high")] if flagged else [])
        if flagged:
            assert f"open {change * 100:+.1f}%" in result[0].description


class TestRobustVolatility:
    def test_a_reverting_one_bar_spike_in_a_quiet_fx_series_is_a_bad_tick(self):
        # Hourly sigma here is ~0.0001: a 0.8 % tick is ~80 sigma, far below the 20 % threshold.
        store(one_bar_close(frame(), 1.008))
        [finding] = run_detectors([ctx()], ["outlier"])
        assert (finding.period_start, finding.severity) == (BAR, "medium")
        assert finding.description.startswith("2024-03-12 15:00 UTC: spike that reverts (likely bad tick)")
        assert finding.details["z"] > DEFAULT_THRESHOLDS["outlier_robust_z"]
        assert finding.details["cause"] == "bad_tick"

    def test_the_same_move_that_persists_in_a_quiet_fx_series_is_not_a_bad_tick(self):
        store(persistent(frame(), 1.008))
        assert found() == []

    def test_the_same_reverting_spike_in_a_volatile_fx_series_is_noise(self):
        store(one_bar_close(frame(volatility=0.05), 1.008))
        assert found() == []

    @pytest.mark.parametrize("factor", [1.12, 0.88])
    def test_genuine_persistent_moves_in_a_volatile_series_are_not_flagged(self, factor):
        store(persistent(frame("BTC-USD", "crypto", volatility=0.15), factor), "BTC-USD")
        assert found("BTC-USD", "crypto") == []

    def test_the_robust_z_is_configurable_per_asset_class_and_instrument(self, settings):
        add_instrument("EURUSD", "forex", "24/5", timeframes=("1h",))
        add_instrument("GBPUSD", "forex", "24/5", timeframes=("1h",))
        store(one_bar_close(frame(), 1.008), "EURUSD")
        store(one_bar_close(frame("GBPUSD"), 1.008), "GBPUSD")
        settings.QUALITY_THRESHOLDS = {"forex": {"outlier_robust_z": 1000}}
        assert run_detectors(series_contexts(), ["outlier"]) == []
        Instrument.objects.filter(symbol="GBPUSD").update(quality_thresholds={"outlier_robust_z": 10})
        assert [f.symbol for f in run_detectors(series_contexts(), ["outlier"])] == ["GBPUSD"]


class TestLikelyCauses:
    @pytest.mark.parametrize(("factor", "text", "severity"), [
        (0.5, "possible 2:1 split", "high"),
        (1 / 3, "possible 3:1 split", "high"),
        (2.0, "possible 1:2 reverse split", "high"),
        (3.0, "possible 1:3 reverse split", "high"),
        (0.01, "possible 100× unit error", "critical"),
        (100.0, "possible 100× unit error", "critical"),
    ])
    def test_a_persistent_level_change_names_its_ratio(self, factor, text, severity):
        store(persistent(frame("AAPL", "equity", 0.01), factor), "AAPL")
        [finding] = run_detectors([ctx("AAPL", "equity")], ["outlier"])
        assert (finding.period_start, finding.severity) == (BAR, severity)
        assert text in finding.description
        assert finding.details["ratio"] == pytest.approx(factor, rel=0.03)

    def test_a_large_spike_that_reverts_is_named_and_reported_once(self):
        store(one_bar_close(frame("AAPL", "equity", 0.01), 1.5), "AAPL")
        [finding] = run_detectors([ctx("AAPL", "equity")], ["outlier"])
        assert (finding.period_start, finding.severity) == (BAR, "high")
        assert "spike that reverts (likely bad tick)" in finding.description

    def test_a_one_bar_100x_unit_error_is_named_as_both(self):
        bars = frame("AAPL", "equity", 0.01)
        store(persistent(bars, 100.0).where(bars["ts"] == pd.Timestamp(BAR), bars).astype(bars.dtypes), "AAPL")
        [finding] = run_detectors([ctx("AAPL", "equity")], ["outlier"])
        assert finding.severity == "critical"
        assert "possible 100× unit error" in finding.description and "spike that reverts" in finding.description

    def test_a_plain_big_move_names_the_threshold(self):
        store(close_move_to(frame("AAPL", "equity", 0.01), 0.35), "AAPL")
        [finding] = run_detectors([ctx("AAPL", "equity")], ["outlier"])
        assert "close +35.0% vs previous close (threshold 20%)" in finding.description
        assert finding.details["cause"] == "move"
