"""Whole-detector runs over series built from the calendars themselves, with and without faults.

Every series comes from the synthetic provider, which emits exactly ``expected_bars`` of the
calendar. A complete series must give no finding of ANY type (stale included, judged right after
its end); a series with injected faults (deleted bars, duplicated rows, spikes, invalid bars, bars
at closed times) must give exactly the injected problems, with their periods and counts, and
nothing else. The expected counts and times are worked out by hand from the exchange's published
schedule (holidays, 13:00 closes, DST), not read back from the code under test.
"""

from __future__ import annotations

from datetime import datetime

import pandas as pd
import pytest

from integrity.models import Candle
from integrity.providers.synthetic import synthetic_bars
from integrity.quality.detectors import run_detectors
from integrity.quality.findings import SeriesContext
from integrity.quality.thresholds import resolve_thresholds
from tests.helpers import utc

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("default_thresholds")]

CALENDARS = {"equity": "XNYS", "crypto": "24/7", "forex": "24/5"}



def ctx(symbol: str, timeframe: str, asset_class: str) -> SeriesContext:
    return SeriesContext(symbol=symbol, timeframe=timeframe, calendar=CALENDARS[asset_class],
                         asset_class=asset_class, thresholds=resolve_thresholds(asset_class, {}))


def load(symbol: str, timeframe: str, asset_class: str, start: datetime, end: datetime, **options) -> pd.DataFrame:
    frame = synthetic_bars(symbol, timeframe, CALENDARS[asset_class], start, end, **options)
    Candle.objects.bulk_create(
        [Candle(symbol=symbol, timeframe=timeframe, ts=r.ts.to_pydatetime(), open=r.open, high=r.high,
                low=r.low, close=r.close, volume=r.volume, source="test")
         for r in frame.itertuples(index=False)],
        batch_size=5000,
    )
    return frame


def series(symbol: str, timeframe: str):
    return Candle.objects.filter(symbol=symbol, timeframe=timeframe)


def delete(symbol: str, timeframe: str, start: datetime, end: datetime) -> int:
    """Delete the stored bars in [start, end); returns how many."""
    deleted, _ = series(symbol, timeframe).filter(ts__gte=start, ts__lt=end).delete()
    return deleted


def duplicate(symbol: str, timeframe: str, ts: datetime, copies: int = 1) -> None:
    row = series(symbol, timeframe).get(ts=ts)
    for _ in range(copies):
        row.pk = None
        row.save()


def add_flat_bar(symbol: str, timeframe: str, ts: datetime) -> None:
    """A bar at ``ts`` priced at the close before it: a calendar problem, never a price outlier."""
    price = series(symbol, timeframe).filter(ts__lt=ts).order_by("-ts").values_list("close", flat=True)[0]
    Candle.objects.create(symbol=symbol, timeframe=timeframe, ts=ts, open=price, high=price, low=price,
                          close=price, volume=1.0)


def spike(symbol: str, timeframe: str, ts: datetime, factor: float) -> None:
    """One bar's close × factor (its high/low widened to stay a valid bar): a one-bar spike."""
    row = series(symbol, timeframe).get(ts=ts)
    row.close *= factor
    row.high, row.low = max(row.high, row.close), min(row.low, row.close)
    row.save()


def scale_from(symbol: str, timeframe: str, ts: datetime, factor: float) -> None:
    """Every price from ``ts`` on × factor: a persistent level change (an unadjusted split)."""
    rows = series(symbol, timeframe).filter(ts__gte=ts)
    for row in rows:
        row.open, row.high, row.low, row.close = (row.open * factor, row.high * factor, row.low * factor,
                                                  row.close * factor)
    Candle.objects.bulk_update(rows, ["open", "high", "low", "close"])


def summary(findings) -> list[tuple]:
    return sorted((f.anomaly_type, f.period_start, f.period_end, f.affected_rows) for f in findings)


# --- complete series: nothing of any type -----------------------------------------------------


class TestCompleteSeriesYieldNothing:
    def test_nyse_minutes_across_christmas_eve_13_00_close_and_christmas(self):
        # 12-23 full (390), 12-24 closes 13:00 EST (14:30..17:59 UTC: 210), 12-25 closed, 12-26/27 full.
        frame = load("XMAS", "1m", "equity", utc(2024, 12, 23), utc(2024, 12, 28))
        assert len(frame) == 3 * 390 + 210
        assert frame["ts"][390 + 209] == pd.Timestamp("2024-12-24 17:59", tz="UTC")
        assert frame["ts"][390 + 210] == pd.Timestamp("2024-12-26 14:30", tz="UTC")
        assert run_detectors([ctx("XMAS", "1m", "equity")], now=utc(2024, 12, 27, 21, 5)) == []

    def test_nyse_minutes_across_the_autumn_dst_change(self):
        # Friday 2024-11-01 opens 13:30 UTC (EDT); Monday 11-04 opens 14:30 UTC (EST).
        frame = load("FALL", "1m", "equity", utc(2024, 11, 1), utc(2024, 11, 6))
        assert len(frame) == 3 * 390
        assert (frame["ts"][0], frame["ts"][390]) == (pd.Timestamp("2024-11-01 13:30", tz="UTC"),
                                                      pd.Timestamp("2024-11-04 14:30", tz="UTC"))
        assert run_detectors([ctx("FALL", "1m", "equity")], now=utc(2024, 11, 5, 21, 5)) == []

    def test_nyse_hours_across_the_july_3rd_half_day_and_independence_day(self):
        # 07-03 closes 13:00 EDT = 17:00 UTC: hour buckets 13..16 UTC; 07-04 closed.
        frame = load("JULY", "1h", "equity", utc(2024, 7, 1), utc(2024, 7, 9))
        assert len(frame) == 7 + 7 + 4 + 7 + 7
        assert run_detectors([ctx("JULY", "1h", "equity")], now=utc(2024, 7, 8, 20, 5)) == []

    def test_a_crypto_minute_series_across_a_day_and_a_half(self):
        frame = load("BTC-USD", "1m", "crypto", utc(2024, 3, 9, 12), utc(2024, 3, 11))
        assert len(frame) == 36 * 60
        assert run_detectors([ctx("BTC-USD", "1m", "crypto")], now=utc(2024, 3, 11, 0, 5)) == []

    def test_forex_minutes_across_the_spring_dst_weekend(self):
        # Fri 03-08 until 17:00 EST (22:00 UTC): 1320; Sun 03-10 from 17:00 EDT (21:00 UTC): 180; Mon 1440.
        frame = load("EURUSD", "1m", "forex", utc(2024, 3, 8), utc(2024, 3, 12), base_price=1.08)
        assert len(frame) == 1320 + 180 + 1440
        assert run_detectors([ctx("EURUSD", "1m", "forex")], now=utc(2024, 3, 12, 0, 5)) == []

    def test_forex_minutes_across_the_autumn_dst_weekend(self):
        # Fri 11-01 until 17:00 EDT (21:00 UTC): 1260; Sun 11-03 from 17:00 EST (22:00 UTC): 120; Mon 1440.
        frame = load("EURUSD", "1m", "forex", utc(2024, 11, 1), utc(2024, 11, 5), base_price=1.08)
        assert len(frame) == 1260 + 120 + 1440
        assert run_detectors([ctx("EURUSD", "1m", "forex")], now=utc(2024, 11, 5, 0, 5)) == []

    def test_forex_daily_bars_over_weeks_and_holidays(self):
        frame = load("EURUSD", "1d", "forex", utc(2024, 12, 16), utc(2025, 1, 6), base_price=1.08)
        assert len(frame) == 15  # three Monday-Friday weeks; Christmas and New Year trade
        # Monday 01-06's forex day closes 17:00 New York on 01-06: the 01-03 bar is the newest due.
        assert run_detectors([ctx("EURUSD", "1d", "forex")], now=utc(2025, 1, 5, 23)) == []


# --- fault injection: exactly the injected problems --------------------------------------------


class TestInjectedFaultsAreFoundExactly:
    def test_nyse_minutes_around_thanksgiving(self):
        # 11-25..11-27 full sessions (14:30-21:00 UTC), 11-28 Thanksgiving, 11-29 closes 13:00 EST
        # (18:00 UTC), then the weekend and Monday 12-02.
        load("AAPL", "1m", "equity", utc(2024, 11, 25), utc(2024, 12, 3))
        assert delete("AAPL", "1m", utc(2024, 11, 26, 15), utc(2024, 11, 26, 15, 1)) == 1
        # the last 10 minutes of the half day and the first 5 of Monday: one gap over the weekend
        assert delete("AAPL", "1m", utc(2024, 11, 29, 17, 50), utc(2024, 11, 29, 18)) == 10
        assert delete("AAPL", "1m", utc(2024, 12, 2, 14, 30), utc(2024, 12, 2, 14, 35)) == 5
        duplicate("AAPL", "1m", utc(2024, 11, 27, 16), copies=2)
        duplicate("AAPL", "1m", utc(2024, 12, 2, 15))
        spike("AAPL", "1m", utc(2024, 11, 27, 18), 1.5)
        series("AAPL", "1m").filter(ts=utc(2024, 11, 26, 16, 30)).update(high=1.0)  # below low
        add_flat_bar("AAPL", "1m", utc(2024, 11, 28, 15))  # Thanksgiving

        found = run_detectors([ctx("AAPL", "1m", "equity")], now=utc(2024, 12, 2, 21, 5))
        assert summary(found) == [
            ("duplicate", utc(2024, 11, 27, 16), utc(2024, 12, 2, 15), 3),
            ("gap", utc(2024, 11, 26, 15), utc(2024, 11, 26, 15), 1),
            ("gap", utc(2024, 11, 29, 17, 50), utc(2024, 12, 2, 14, 34), 15),
            ("invalid_ohlc", utc(2024, 11, 26, 16, 30), utc(2024, 11, 26, 16, 30), 1),
            ("off_calendar", utc(2024, 11, 28, 15), utc(2024, 11, 28, 15), 1),
            ("outlier", utc(2024, 11, 27, 18), utc(2024, 11, 27, 18), 1),
        ]
        outlier = next(f for f in found if f.anomaly_type == "outlier")
        assert "spike that reverts" in outlier.description

    def test_nyse_minutes_around_christmas_eve(self):
        load("MSFT", "1m", "equity", utc(2024, 12, 23), utc(2024, 12, 28))
        add_flat_bar("MSFT", "1m", utc(2024, 12, 24, 18))  # 13:00 New York: after the half day's close
        add_flat_bar("MSFT", "1m", utc(2024, 12, 25, 15))  # Christmas
        assert delete("MSFT", "1m", utc(2024, 12, 26, 14, 30), utc(2024, 12, 26, 14, 35)) == 5

        found = run_detectors([ctx("MSFT", "1m", "equity")], now=utc(2024, 12, 27, 21, 5))
        assert summary(found) == [
            ("gap", utc(2024, 12, 26, 14, 30), utc(2024, 12, 26, 14, 34), 5),
            ("off_calendar", utc(2024, 12, 24, 18), utc(2024, 12, 24, 18), 1),
            ("off_calendar", utc(2024, 12, 25, 15), utc(2024, 12, 25, 15), 1),
        ]

    def test_a_quiet_forex_series_over_two_weekends_one_of_them_a_dst_change(self):
        load("EURUSD", "1h", "forex", utc(2024, 3, 4), utc(2024, 3, 20), base_price=1.08, volatility=0.0005)
        # EST week: Friday 03-08's last bar is 21:00 UTC; the EDT Sunday 03-10 opens 21:00 UTC.
        assert delete("EURUSD", "1h", utc(2024, 3, 8, 21), utc(2024, 3, 8, 22)) == 1
        assert delete("EURUSD", "1h", utc(2024, 3, 10, 21), utc(2024, 3, 10, 22)) == 1
        # EDT week: 21:00 UTC Friday is after the close and 20:00 UTC Sunday before the open.
        add_flat_bar("EURUSD", "1h", utc(2024, 3, 15, 21))
        add_flat_bar("EURUSD", "1h", utc(2024, 3, 17, 20))
        spike("EURUSD", "1h", utc(2024, 3, 12, 10), 1.01)  # a 1% bad tick: ~100 sigma here
        duplicate("EURUSD", "1h", utc(2024, 3, 13, 5))
        series("EURUSD", "1h").filter(ts=utc(2024, 3, 7, 3)).update(volume=-1.0)

        found = run_detectors([ctx("EURUSD", "1h", "forex")], now=utc(2024, 3, 20, 0, 30))
        assert summary(found) == [
            ("duplicate", utc(2024, 3, 13, 5), utc(2024, 3, 13, 5), 1),
            ("gap", utc(2024, 3, 8, 21), utc(2024, 3, 10, 21), 2),
            ("invalid_ohlc", utc(2024, 3, 7, 3), utc(2024, 3, 7, 3), 1),
            ("off_calendar", utc(2024, 3, 15, 21), utc(2024, 3, 15, 21), 1),
            ("off_calendar", utc(2024, 3, 17, 20), utc(2024, 3, 17, 20), 1),
            ("outlier", utc(2024, 3, 12, 10), utc(2024, 3, 12, 10), 1),
        ]
        outlier = next(f for f in found if f.anomaly_type == "outlier")
        assert outlier.severity == "medium" and "spike that reverts" in outlier.description

    def test_a_crypto_minute_series(self):
        load("BTC-USD", "1m", "crypto", utc(2024, 3, 9), utc(2024, 3, 11))
        assert delete("BTC-USD", "1m", utc(2024, 3, 10, 7), utc(2024, 3, 10, 7, 3)) == 3
        duplicate("BTC-USD", "1m", utc(2024, 3, 9), copies=2)  # the very first bar
        row = series("BTC-USD", "1m").get(ts=utc(2024, 3, 9, 12))  # one bar priced in cents
        row.open, row.high, row.low, row.close = row.open * 100, row.high * 100, row.low * 100, row.close * 100
        row.save()
        row = series("BTC-USD", "1m").get(ts=utc(2024, 3, 10, 20))
        row.low = row.high  # above open and close
        row.save()
        add_flat_bar("BTC-USD", "1m", utc(2024, 3, 10, 12, 0, 30))  # not on the minute grid

        found = run_detectors([ctx("BTC-USD", "1m", "crypto")], now=utc(2024, 3, 11, 0, 5))
        assert summary(found) == [
            ("duplicate", utc(2024, 3, 9), utc(2024, 3, 9), 2),
            ("gap", utc(2024, 3, 10, 7), utc(2024, 3, 10, 7, 2), 3),
            ("invalid_ohlc", utc(2024, 3, 10, 20), utc(2024, 3, 10, 20), 1),
            ("off_calendar", utc(2024, 3, 10, 12, 0, 30), utc(2024, 3, 10, 12, 0, 30), 1),
            ("outlier", utc(2024, 3, 9, 12), utc(2024, 3, 9, 12), 1),
        ]
        outlier = next(f for f in found if f.anomaly_type == "outlier")
        assert outlier.severity == "critical" and "possible 100× unit error" in outlier.description

    def test_a_nyse_daily_decade(self):
        load("IBM", "1d", "equity", utc(2004, 1, 1), utc(2014, 1, 1))
        # Christmas 2004 fell on a Saturday: NYSE closed Friday 12-24, so these are 3 sessions in a row.
        assert delete("IBM", "1d", utc(2004, 12, 23), utc(2004, 12, 29)) == 3
        add_flat_bar("IBM", "1d", utc(2012, 10, 29))  # Hurricane Sandy: NYSE closed two days
        add_flat_bar("IBM", "1d", utc(2012, 10, 30))
        duplicate("IBM", "1d", utc(2008, 9, 15))
        series("IBM", "1d").filter(ts=utc(2006, 3, 1)).update(high=1.0)
        scale_from("IBM", "1d", utc(2010, 6, 1), 0.5)  # an unadjusted 2:1 split

        found = run_detectors([ctx("IBM", "1d", "equity")], now=utc(2014, 1, 2, 9))
        assert summary(found) == [
            ("duplicate", utc(2008, 9, 15), utc(2008, 9, 15), 1),
            ("gap", utc(2004, 12, 23), utc(2004, 12, 28), 3),
            ("invalid_ohlc", utc(2006, 3, 1), utc(2006, 3, 1), 1),
            ("off_calendar", utc(2012, 10, 29), utc(2012, 10, 30), 2),
            ("outlier", utc(2010, 6, 1), utc(2010, 6, 1), 1),
        ]
        outlier = next(f for f in found if f.anomaly_type == "outlier")
        assert "possible 2:1 split" in outlier.description
        gap = next(f for f in found if f.anomaly_type == "gap")
        assert gap.severity == "high"  # three trading days missing


# --- stale, against the calendar ---------------------------------------------------------------


class TestStaleAgainstTheCalendar:
    @pytest.fixture
    def forex_to_friday(self):
        # Last bar Friday 2024-03-08 21:00 UTC (the week closes 17:00 EST = 22:00 UTC); DST starts
        # Sunday 03-10, so the week reopens 17:00 EDT = 21:00 UTC and that bar completes 22:00 UTC.
        load("EURUSD", "1h", "forex", utc(2024, 3, 4), utc(2024, 3, 9), base_price=1.08)

    # The Sunday-evening bars are due at Monday's 02:00 backfill: late only past the grace after it.
    @pytest.mark.parametrize("now", [utc(2024, 3, 9, 12), utc(2024, 3, 10, 20), utc(2024, 3, 11, 3, 59)])
    def test_a_forex_series_is_not_stale_over_the_weekend(self, forex_to_friday, now):
        assert run_detectors([ctx("EURUSD", "1h", "forex")], ["stale"], now=now) == []

    def test_a_forex_series_is_stale_once_the_first_bars_of_the_week_are_missing_past_the_grace(
            self, forex_to_friday):
        [found] = run_detectors([ctx("EURUSD", "1h", "forex")], ["stale"], now=utc(2024, 3, 11, 4, 1))
        assert (found.period_start, found.period_end) == (utc(2024, 3, 10, 21), utc(2024, 3, 11))
        assert found.affected_rows == 4  # Sunday 21:00 .. Monday 00:00 UTC, fetched by 02:00

    @pytest.fixture
    def equity_to_wednesday(self):
        load("AAPL", "1d", "equity", utc(2024, 11, 1), utc(2024, 11, 28))  # last session: Wed 11-27

    @pytest.mark.parametrize("now", [utc(2024, 11, 28, 23), utc(2024, 11, 29, 23), utc(2024, 11, 30, 3, 59)])
    def test_thanksgiving_and_the_half_day_are_not_late_before_the_next_backfill(self, equity_to_wednesday, now):
        # Thursday is closed; Friday's session closes 13:00 EST = 18:00 UTC, so it is due at
        # Saturday's 02:00 backfill, and late only past the grace after it.
        assert run_detectors([ctx("AAPL", "1d", "equity")], ["stale"], now=now) == []

    def test_an_equity_series_is_stale_once_the_half_day_is_missing_past_the_grace(self, equity_to_wednesday):
        [found] = run_detectors([ctx("AAPL", "1d", "equity")], ["stale"], now=utc(2024, 11, 30, 4, 1))
        assert (found.period_start, found.period_end, found.affected_rows) == (
            utc(2024, 11, 29), utc(2024, 11, 29), 1)

    def test_with_an_hourly_backfill_the_half_day_is_due_after_its_13_00_close(self, equity_to_wednesday,
                                                                                  settings):
        # 18:00 UTC close + 15 min publication: due at the 19:00 run, stale past 21:00 (a full
        # session would close 21:00 UTC and be due at 22:00).
        settings.SCHEDULE_BACKFILL_CRON = "0 * * * *"
        assert run_detectors([ctx("AAPL", "1d", "equity")], ["stale"], now=utc(2024, 11, 29, 21)) == []
        [found] = run_detectors([ctx("AAPL", "1d", "equity")], ["stale"], now=utc(2024, 11, 29, 21, 1))
        assert found.details["due_at"] == "2024-11-29T19:00:00+00:00"

    def test_a_half_day_weekend_and_monday_make_no_stale_series(self):
        # Last bar: the 11-29 half day. Monday 12-02 closes 21:00 UTC and is due at Tuesday's 02:00
        # backfill, so nothing is late before Tuesday 04:00 UTC: four days without a bar, where a
        # naive 24 h rule fires three times.
        load("AAPL", "1d", "equity", utc(2024, 11, 1), utc(2024, 11, 30))
        assert run_detectors([ctx("AAPL", "1d", "equity")], ["stale"], now=utc(2024, 12, 3, 4)) == []
        [found] = run_detectors([ctx("AAPL", "1d", "equity")], ["stale"], now=utc(2024, 12, 4, 4, 1))
        # Monday's session and Tuesday's, due at Wednesday's backfill, are missing.
        assert (found.period_start, found.period_end, found.affected_rows) == (utc(2024, 12, 2), utc(2024, 12, 3), 2)
