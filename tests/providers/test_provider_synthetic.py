"""The synthetic provider: deterministic bars on the calendar, with faults exactly where asked."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from integrity.calendars import expected_bars
from integrity.providers import get_provider
from integrity.providers.base import BAR_COLUMNS, FetchRequest, ProviderConfigError, ProviderError
from integrity.providers.synthetic import SPIKE_FACTOR, SyntheticProvider, synthetic_bars


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


MONDAY, SATURDAY = utc(2024, 3, 4), utc(2024, 3, 9)


def request(start=MONDAY, end=SATURDAY, symbol="BTCUSD", timeframe="1h", calendar="24/7",
            **options) -> FetchRequest:
    return FetchRequest(symbol=symbol, timeframe=timeframe, start=start, end=end, calendar=calendar,
                        options=options)


def collect(provider, req) -> tuple[list[pd.DataFrame], Exception | None]:
    pages = []
    try:
        for page in provider.fetch(req):
            pages.append(page)
    except ProviderError as exc:
        return pages, exc
    return pages, None


def at(frame: pd.DataFrame, ts: str) -> pd.Series:
    return frame.loc[frame["ts"] == pd.Timestamp(ts, tz="UTC")].iloc[0]


class TestDeterminism:
    def test_it_returns_the_same_bars_whatever_the_split(self):
        whole = synthetic_bars("AAPL", "5m", "XNYS", utc(2024, 7, 1), utc(2024, 7, 12))
        left = synthetic_bars("AAPL", "5m", "XNYS", utc(2024, 7, 1), utc(2024, 7, 5, 15, 35))
        right = synthetic_bars("AAPL", "5m", "XNYS", utc(2024, 7, 5, 15, 35), utc(2024, 7, 12))
        pd.testing.assert_frame_equal(whole, pd.concat([left, right], ignore_index=True))

    def test_it_returns_the_same_bars_whatever_the_page_size(self):
        big = synthetic_bars("EURUSD", "15m", "24/5", utc(2024, 3, 1), utc(2024, 3, 20), page_size=100_000)
        small = synthetic_bars("EURUSD", "15m", "24/5", utc(2024, 3, 1), utc(2024, 3, 20), page_size=7)
        pd.testing.assert_frame_equal(big, small)

    def test_it_returns_the_same_bars_from_a_new_provider(self):
        first = synthetic_bars("BTCUSD", "1m", "24/7", utc(2024, 1, 1), utc(2024, 1, 2), seed=3)
        second = synthetic_bars("BTCUSD", "1m", "24/7", utc(2024, 1, 1), utc(2024, 1, 2), seed=3)
        pd.testing.assert_frame_equal(first, second)

    def test_it_varies_with_the_seed(self):
        a = synthetic_bars("BTCUSD", "1h", "24/7", utc(2024, 1, 1), utc(2024, 1, 2), seed=1)
        b = synthetic_bars("BTCUSD", "1h", "24/7", utc(2024, 1, 1), utc(2024, 1, 2), seed=2)
        assert not np.allclose(a["close"], b["close"])

    def test_it_varies_with_the_symbol(self):
        a = synthetic_bars("BTCUSD", "1h", "24/7", utc(2024, 1, 1), utc(2024, 1, 2))
        b = synthetic_bars("ETHUSD", "1h", "24/7", utc(2024, 1, 1), utc(2024, 1, 2))
        assert not np.allclose(a["close"], b["close"])

    def test_it_agrees_across_timeframes(self):
        daily = synthetic_bars("BTCUSD", "1d", "24/7", utc(2024, 1, 1), utc(2024, 1, 3))
        minutes = synthetic_bars("BTCUSD", "1m", "24/7", utc(2024, 1, 1), utc(2024, 1, 3))
        assert daily["open"].tolist() == minutes["open"].iloc[[0, 1440]].tolist()


@pytest.fixture(scope="module")
def bars():
    """Two months of clean minute bars with a high volatility, to stress the OHLC invariants."""
    return synthetic_bars("BTCUSD", "1m", "24/7", utc(2024, 1, 1), utc(2024, 3, 1), volatility=0.03)


class TestCleanBars:
    def test_it_uses_the_bar_frame_layout(self, bars):
        assert list(bars.columns) == BAR_COLUMNS
        assert str(bars["ts"].dtype) == "datetime64[ns, UTC]"
        assert all(bars[c].dtype == np.float64 for c in BAR_COLUMNS[1:])

    def test_it_keeps_high_above_the_body(self, bars):
        assert (bars["high"] > bars[["open", "close"]].max(axis=1)).all()

    def test_it_keeps_low_below_the_body(self, bars):
        assert (bars["low"] < bars[["open", "close"]].min(axis=1)).all()

    def test_it_keeps_prices_positive_and_near_the_base(self, bars):
        assert bars["low"].min() > 50 and bars["high"].max() < 200

    def test_it_has_positive_volume(self, bars):
        assert (bars["volume"] > 0).all()

    def test_it_opens_where_the_previous_bar_closed(self, bars):
        np.testing.assert_array_equal(bars["open"].to_numpy()[1:], bars["close"].to_numpy()[:-1])

    def test_it_moves_by_the_volatility(self):
        daily = synthetic_bars("BTCUSD", "1d", "24/7", utc(2020, 1, 1), utc(2024, 1, 1), volatility=0.02)
        deviation = np.log(daily["close"] / daily["open"]).std()
        assert 0.01 < deviation < 0.04

    def test_it_scales_with_the_base_price(self):
        bars = synthetic_bars("BTCUSD", "1h", "24/7", utc(2024, 1, 1), utc(2024, 1, 2), base_price=40_000)
        assert 20_000 < bars["close"].median() < 80_000


class TestCalendar:
    @pytest.mark.parametrize(
        ("calendar", "timeframe", "start", "end"),
        [
            ("XNYS", "1h", utc(2024, 6, 24), utc(2024, 7, 15)),
            ("XNYS", "1d", utc(2023, 1, 1), utc(2024, 1, 1)),
            ("24/5", "15m", utc(2024, 3, 1), utc(2024, 3, 20)),
            ("24/7", "4h", utc(2024, 1, 1), utc(2024, 2, 1)),
        ],
    )
    def test_it_returns_exactly_the_expected_bars(self, calendar, timeframe, start, end):
        bars = synthetic_bars("X", timeframe, calendar, start, end)
        pd.testing.assert_index_equal(pd.DatetimeIndex(bars["ts"]), expected_bars(calendar, timeframe, start, end),
                                      check_names=False)

    def test_it_yields_ascending_pages_of_at_most_page_size(self):
        pages, _ = collect(SyntheticProvider(page_size=10), request())
        assert [len(p) for p in pages] == [10] * 12
        ts = pd.concat(pages)["ts"]
        assert ts.is_monotonic_increasing and ts.is_unique

    def test_it_yields_nothing_for_a_closed_market(self):
        pages, _ = collect(SyntheticProvider(), request(utc(2024, 7, 4), utc(2024, 7, 5), calendar="XNYS"))
        assert pages == []

    def test_it_refuses_an_unknown_calendar(self):
        with pytest.raises(ProviderConfigError, match="unknown calendar"):
            SyntheticProvider().fetch(request(calendar="MARS"))

    def test_it_is_registered(self):
        provider = get_provider("synthetic", seed=5)
        assert provider.name == "synthetic"


class TestGaps:
    def test_it_omits_bars_in_the_given_ranges(self):
        clean = synthetic_bars("X", "1h", "24/7", utc(2024, 3, 4), utc(2024, 3, 5))
        gapped = synthetic_bars("X", "1h", "24/7", utc(2024, 3, 4), utc(2024, 3, 5),
                                gaps=[["2024-03-04T05:00:00Z", "2024-03-04T08:00:00Z"]])
        missing = set(clean["ts"]) - set(gapped["ts"])
        assert sorted(missing) == [pd.Timestamp(f"2024-03-04 0{h}:00", tz="UTC") for h in (5, 6, 7)]

    def test_it_leaves_the_other_bars_unchanged(self):
        clean = synthetic_bars("X", "1h", "24/7", utc(2024, 3, 4), utc(2024, 3, 5))
        gapped = synthetic_bars("X", "1h", "24/7", utc(2024, 3, 4), utc(2024, 3, 5),
                                gaps=[[utc(2024, 3, 4, 5), utc(2024, 3, 4, 8)]])
        pd.testing.assert_frame_equal(gapped, clean[clean["ts"].isin(gapped["ts"])].reset_index(drop=True))

    def test_it_omits_a_hashed_fraction_consistently(self):
        whole = synthetic_bars("X", "1m", "24/7", utc(2024, 3, 1), utc(2024, 3, 8), gap_rate=0.1)
        part = synthetic_bars("X", "1m", "24/7", utc(2024, 3, 3), utc(2024, 3, 8), gap_rate=0.1)
        assert 0.08 < 1 - len(whole) / (7 * 1440) < 0.12
        assert set(part["ts"]) == {t for t in whole["ts"] if t >= pd.Timestamp("2024-03-03", tz="UTC")}


class TestSpikes:
    START, END = utc(2024, 3, 4), utc(2024, 3, 5)

    def test_it_multiplies_close_and_high_of_the_given_bar(self):
        clean = synthetic_bars("X", "1h", "24/7", self.START, self.END)
        spiked = synthetic_bars("X", "1h", "24/7", self.START, self.END, spikes=["2024-03-04T10:00:00+00:00"])
        bar, ref = at(spiked, "2024-03-04 10:00"), at(clean, "2024-03-04 10:00")
        assert bar["close"] == ref["close"] * SPIKE_FACTOR
        assert bar["high"] == ref["high"] * SPIKE_FACTOR
        assert (bar["open"], bar["low"], bar["volume"]) == (ref["open"], ref["low"], ref["volume"])

    def test_it_reverts_on_the_next_bar(self):
        clean = synthetic_bars("X", "1h", "24/7", self.START, self.END)
        spiked = synthetic_bars("X", "1h", "24/7", self.START, self.END, spikes=["2024-03-04T10:00:00Z"])
        assert at(spiked, "2024-03-04 11:00")["open"] == at(clean, "2024-03-04 11:00")["open"]

    def test_it_changes_nothing_else(self):
        clean = synthetic_bars("X", "1h", "24/7", self.START, self.END)
        spiked = synthetic_bars("X", "1h", "24/7", self.START, self.END, spikes=["2024-03-04T10:00:00Z"])
        changed = (clean != spiked).any(axis=1)
        assert spiked.loc[changed, "ts"].tolist() == [pd.Timestamp("2024-03-04 10:00", tz="UTC")]

    def test_it_spikes_a_hashed_fraction(self):
        clean = synthetic_bars("X", "1m", "24/7", self.START, self.END)
        spiked = synthetic_bars("X", "1m", "24/7", self.START, self.END, spike_rate=0.01)
        ratio = spiked["close"] / clean["close"]
        assert set(np.round(ratio, 9)) == {1.0, SPIKE_FACTOR}
        assert 5 <= (ratio > 1).sum() <= 30


class TestInvalidBars:
    START, END = utc(2024, 3, 4), utc(2024, 3, 5)

    def test_it_swaps_high_and_low_of_the_given_bars(self):
        clean = synthetic_bars("X", "1h", "24/7", self.START, self.END)
        broken = synthetic_bars("X", "1h", "24/7", self.START, self.END,
                                invalid=["2024-03-04T03:00:00Z", "2024-03-04T20:00:00Z"])
        bad = broken["high"] < broken["low"]
        assert broken.loc[bad, "ts"].dt.hour.tolist() == [3, 20]
        assert at(broken, "2024-03-04 03:00")["high"] == at(clean, "2024-03-04 03:00")["low"]

    def test_it_leaves_the_other_bars_valid(self):
        clean = synthetic_bars("X", "1h", "24/7", self.START, self.END)
        broken = synthetic_bars("X", "1h", "24/7", self.START, self.END, invalid=["2024-03-04T03:00:00Z"])
        keep = broken["ts"] != pd.Timestamp("2024-03-04 03:00", tz="UTC")
        pd.testing.assert_frame_equal(broken[keep], clean[keep])

    def test_it_breaks_a_hashed_fraction(self):
        broken = synthetic_bars("X", "1m", "24/7", self.START, self.END, invalid_rate=0.02)
        assert 10 <= (broken["high"] < broken["low"]).sum() <= 50


class TestRevision:
    def test_it_changes_volume_only(self):
        first = synthetic_bars("X", "1h", "24/7", utc(2024, 3, 4), utc(2024, 3, 5))
        revised = synthetic_bars("X", "1h", "24/7", utc(2024, 3, 4), utc(2024, 3, 5), revision=1)
        pd.testing.assert_frame_equal(first.drop(columns="volume"), revised.drop(columns="volume"))
        assert (first["volume"] != revised["volume"]).mean() > 0.9
        assert (revised["volume"] > 0).all()


class TestInjectedFailure:
    def test_it_raises_after_the_given_number_of_pages(self):
        pages, error = collect(SyntheticProvider(page_size=10, fail_after_pages=3), request())
        assert len(pages) == 3
        assert isinstance(error, ProviderError)
        assert "synthetic failure injected after 3 pages" in str(error)
        assert error.provider == "synthetic"

    def test_it_raises_before_the_first_page_when_zero(self):
        pages, error = collect(SyntheticProvider(page_size=10, fail_after_pages=0), request())
        assert pages == [] and error is not None

    def test_it_does_not_raise_when_fewer_pages_exist(self):
        pages, error = collect(SyntheticProvider(page_size=1000, fail_after_pages=3), request())
        assert len(pages) == 1 and error is None

    def test_it_takes_options_from_the_request(self):
        pages, error = collect(SyntheticProvider(page_size=1000), request(page_size=10, fail_after_pages=2))
        assert [len(p) for p in pages] == [10, 10] and error is not None


class TestPageDelay:
    def test_it_sleeps_before_each_page(self, monkeypatch):
        sleeps = []
        monkeypatch.setattr("integrity.providers.synthetic.time.sleep", sleeps.append)
        pages, _ = collect(SyntheticProvider(page_size=50, page_delay=0.25), request())
        assert len(pages) == 3 and sleeps == [0.25] * 3
