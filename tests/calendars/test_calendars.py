"""Expected bars per calendar: exchange sessions, the 24/7 crypto clock and the 24/5 forex week."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from integrity.calendars import (
    calendar_for_asset_class,
    count_expected_bars,
    expected_bars,
    is_expected_bar,
    is_known_calendar,
    last_completed_bar,
    previous_expected_bar,
    validate_calendar_code,
)


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def stamps(*values: str) -> list[pd.Timestamp]:
    return [pd.Timestamp(v, tz="UTC") for v in values]


class TestCalendarCodes:
    def test_it_knows_exchange_codes_and_aliases(self):
        assert is_known_calendar("XNYS")
        assert is_known_calendar("XLON")
        assert is_known_calendar("NYSE")

    def test_it_knows_its_own_calendars(self):
        assert is_known_calendar("24/7")
        assert is_known_calendar("24/5")

    def test_it_rejects_unknown_codes(self):
        assert not is_known_calendar("NOPE")
        assert not is_known_calendar("")

    def test_it_explains_an_invalid_code(self):
        with pytest.raises(ValueError, match="XNYS.*24/7.*24/5"):
            validate_calendar_code("NOPE")

    def test_it_accepts_a_valid_code(self):
        assert validate_calendar_code("XNYS") is None  # no ValueError
        assert validate_calendar_code("24/5") is None
        assert is_known_calendar("XNYS") and is_known_calendar("24/5")

    def test_it_refuses_an_invalid_code_when_asked_for_bars(self):
        with pytest.raises(ValueError, match="unknown calendar"):
            expected_bars("NOPE", "1d", utc(2024, 1, 1), utc(2024, 2, 1))

    def test_it_refuses_an_unknown_timeframe(self):
        with pytest.raises(ValueError, match="unknown timeframe"):
            expected_bars("XNYS", "2h", utc(2024, 1, 1), utc(2024, 2, 1))


class TestAssetClassCalendars:
    def test_it_maps_the_asset_classes(self):
        assert calendar_for_asset_class("equity") == "XNYS"
        assert calendar_for_asset_class("crypto") == "24/7"
        assert calendar_for_asset_class("forex") == "24/5"

    def test_it_rejects_an_unknown_asset_class(self):
        with pytest.raises(ValueError, match="asset class"):
            calendar_for_asset_class("bonds")


class TestExchangeDailyBars:
    def test_it_skips_independence_day(self):
        bars = expected_bars("XNYS", "1d", utc(2024, 7, 1), utc(2024, 7, 8))
        assert list(bars) == stamps("2024-07-01", "2024-07-02", "2024-07-03", "2024-07-05")

    def test_it_skips_thanksgiving_but_keeps_the_half_day_after(self):
        bars = expected_bars("XNYS", "1d", utc(2024, 11, 25), utc(2024, 11, 30))
        assert list(bars) == stamps("2024-11-25", "2024-11-26", "2024-11-27", "2024-11-29")

    def test_it_counts_the_sessions_of_2023(self):
        assert count_expected_bars("XNYS", "1d", utc(2023, 1, 1), utc(2024, 1, 1)) == 250

    def test_it_stamps_sessions_at_midnight_utc(self):
        bars = expected_bars("XNYS", "1d", utc(2024, 7, 1), utc(2024, 7, 2))
        assert str(bars.tz) == "UTC"
        assert bars[0] == pd.Timestamp("2024-07-01", tz="UTC")

    def test_it_excludes_the_end(self):
        bars = expected_bars("XNYS", "1d", utc(2024, 7, 1), utc(2024, 7, 3))
        assert list(bars) == stamps("2024-07-01", "2024-07-02")

    def test_it_reaches_more_than_twenty_years_back(self):
        # 2004 had 252 sessions: the extra closure was President Reagan's funeral on 2004-06-11.
        assert count_expected_bars("XNYS", "1d", utc(2004, 1, 1), utc(2005, 1, 1)) == 252
        june = expected_bars("XNYS", "1d", utc(2004, 6, 9), utc(2004, 6, 15))
        assert list(june) == stamps("2004-06-09", "2004-06-10", "2004-06-14")

    def test_it_widens_a_calendar_already_built_for_recent_years(self):
        # exchange_calendars builds 20 years back by default; a request older than that rebuilds it.
        assert count_expected_bars("XNYS", "1d", utc(2024, 1, 1), utc(2025, 1, 1)) == 252
        assert count_expected_bars("XNYS", "1d", utc(1995, 1, 1), utc(1996, 1, 1)) == 252
        assert count_expected_bars("XNYS", "1d", utc(2004, 1, 1), utc(2014, 1, 1)) == 2517

    def test_it_knows_old_half_days_and_closures_minute_by_minute(self):
        assert count_expected_bars("XNYS", "1m", utc(2004, 6, 11), utc(2004, 6, 12)) == 0  # Reagan's funeral
        assert count_expected_bars("XNYS", "1m", utc(2004, 11, 26), utc(2004, 11, 27)) == 210  # 13:00 close
        assert count_expected_bars("XNYS", "1m", utc(2012, 10, 29), utc(2012, 10, 31)) == 0  # Hurricane Sandy

    def test_it_is_empty_for_an_empty_range(self):
        assert len(expected_bars("XNYS", "1d", utc(2024, 7, 5), utc(2024, 7, 1))) == 0


class TestExchangeIntradayBars:
    def test_it_has_390_minutes_in_a_regular_session(self):
        assert count_expected_bars("XNYS", "1m", utc(2024, 7, 10), utc(2024, 7, 11)) == 390

    def test_it_opens_at_14_utc_in_winter(self):
        bars = expected_bars("XNYS", "1h", utc(2024, 1, 10), utc(2024, 1, 11))
        assert list(bars) == stamps(*(f"2024-01-10 {h}:00" for h in range(14, 21)))

    def test_it_opens_at_13_utc_in_summer(self):
        bars = expected_bars("XNYS", "1h", utc(2024, 7, 10), utc(2024, 7, 11))
        assert list(bars) == stamps(*(f"2024-07-10 {h}:00" for h in range(13, 20)))

    def test_it_stops_early_on_a_half_day(self):
        # 2024-11-29 closes 13:00 New York = 18:00 UTC, so the last hour bucket is 17:00 UTC.
        bars = expected_bars("XNYS", "1h", utc(2024, 11, 29), utc(2024, 11, 30))
        assert list(bars) == stamps(*(f"2024-11-29 {h}:00" for h in range(14, 18)))
        assert count_expected_bars("XNYS", "1m", utc(2024, 11, 29), utc(2024, 11, 30)) == 210

    def test_it_has_no_bars_on_a_holiday(self):
        assert count_expected_bars("XNYS", "1m", utc(2024, 7, 4), utc(2024, 7, 5)) == 0

    def test_it_expects_buckets_that_hold_part_of_a_session(self):
        bars = expected_bars("XNYS", "4h", utc(2024, 1, 10), utc(2024, 1, 11))
        assert list(bars) == stamps("2024-01-10 12:00", "2024-01-10 16:00", "2024-01-10 20:00")

    def test_it_keeps_only_bars_opening_inside_the_range(self):
        bars = expected_bars("XNYS", "1h", utc(2024, 7, 10, 15, 30), utc(2024, 7, 10, 17))
        assert list(bars) == stamps("2024-07-10 16:00")

    def test_it_skips_a_lunch_break(self):
        # Hong Kong trades 09:30-12:00 and 13:00-16:00 local (UTC+8).
        bars = expected_bars("XHKG", "1h", utc(2024, 7, 2), utc(2024, 7, 3))
        assert list(bars) == stamps(*(f"2024-07-02 {h:02d}:00" for h in (1, 2, 3, 5, 6, 7)))

    def test_it_counts_a_year_of_minutes(self):
        # 250 sessions of 390 minutes, less two 13:00 closes (2023-07-03, 2023-11-24) of 180 each.
        assert count_expected_bars("XNYS", "1m", utc(2023, 1, 1), utc(2024, 1, 1)) == 250 * 390 - 2 * 180

    def test_it_returns_sorted_unique_utc_times(self):
        bars = expected_bars("XNYS", "5m", utc(2024, 7, 1), utc(2024, 8, 1))
        assert bars.is_monotonic_increasing and bars.is_unique
        assert str(bars.dtype) == "datetime64[ns, UTC]"


class TestCryptoBars:
    def test_it_expects_every_minute_of_a_day(self):
        assert count_expected_bars("24/7", "1m", utc(2024, 3, 10), utc(2024, 3, 11)) == 1440

    def test_it_expects_every_hour_of_a_week(self):
        assert count_expected_bars("24/7", "1h", utc(2024, 3, 4), utc(2024, 3, 11)) == 168

    def test_it_expects_every_day_of_a_leap_year(self):
        assert count_expected_bars("24/7", "1d", utc(2024, 1, 1), utc(2025, 1, 1)) == 366

    def test_it_starts_at_the_first_aligned_bar(self):
        bars = expected_bars("24/7", "15m", utc(2024, 1, 1, 0, 7), utc(2024, 1, 1, 1))
        assert list(bars) == stamps("2024-01-01 00:15", "2024-01-01 00:30", "2024-01-01 00:45")


class TestForexWeek:
    def test_it_pauses_from_friday_to_sunday_17_new_york_across_spring_dst(self):
        # Friday 2024-03-08 closes 17:00 EST = 22:00 UTC; DST starts that Sunday, which opens
        # 17:00 EDT = 21:00 UTC.
        bars = expected_bars("24/5", "1h", utc(2024, 3, 8, 19), utc(2024, 3, 11))
        assert list(bars[:6]) == stamps(
            "2024-03-08 19:00", "2024-03-08 20:00", "2024-03-08 21:00",
            "2024-03-10 21:00", "2024-03-10 22:00", "2024-03-10 23:00",
        )

    def test_it_pauses_from_friday_to_sunday_17_new_york_across_autumn_dst(self):
        # Friday 2024-11-01 closes 17:00 EDT = 21:00 UTC; DST ends that Sunday, which opens
        # 17:00 EST = 22:00 UTC.
        bars = expected_bars("24/5", "1h", utc(2024, 11, 1, 19), utc(2024, 11, 4))
        assert list(bars[:4]) == stamps(
            "2024-11-01 19:00", "2024-11-01 20:00", "2024-11-03 22:00", "2024-11-03 23:00",
        )

    def test_it_has_no_minutes_on_saturday(self):
        assert count_expected_bars("24/5", "1m", utc(2024, 3, 9), utc(2024, 3, 10)) == 0

    def test_it_trades_five_full_days_a_week(self):
        assert count_expected_bars("24/5", "1m", utc(2024, 1, 7), utc(2024, 1, 14)) == 5 * 1440

    def test_it_is_not_exchange_calendars_24_5(self):
        # exchange_calendars' "24/5" is Monday-Friday UTC and would expect nothing on a Sunday.
        bars = expected_bars("24/5", "1h", utc(2024, 1, 7), utc(2024, 1, 8))
        assert list(bars) == stamps("2024-01-07 22:00", "2024-01-07 23:00")

    def test_it_has_daily_bars_monday_to_friday(self):
        bars = expected_bars("24/5", "1d", utc(2024, 3, 4), utc(2024, 3, 18))
        assert [b.day_name() for b in bars] == ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"] * 2

    def test_it_ignores_holidays(self):
        assert pd.Timestamp("2024-12-25", tz="UTC") in expected_bars("24/5", "1d", utc(2024, 12, 23), utc(2024, 12, 28))


class TestIsExpectedBar:
    def test_it_masks_exchange_bars(self):
        ts = pd.DatetimeIndex(
            ["2024-07-01 13:00", "2024-07-01 19:00", "2024-07-01 20:00", "2024-07-04 14:00",
             "2024-07-01 14:30", None],
            tz="UTC",
        )
        mask = is_expected_bar("XNYS", "1h", ts)
        assert mask.dtype == bool
        assert mask.tolist() == [True, True, False, False, False, False]

    @pytest.mark.parametrize("calendar", ["XNYS", "24/5", "XHKG", "24/7"])
    def test_it_agrees_with_expected_bars(self, calendar):
        candidates = pd.date_range("2024-03-01", "2024-04-01", freq="15min", tz="UTC", inclusive="left")
        expected = expected_bars(calendar, "15m", utc(2024, 3, 1), utc(2024, 4, 1))
        np.testing.assert_array_equal(is_expected_bar(calendar, "15m", candidates), candidates.isin(expected))

    def test_it_handles_times_decades_apart(self):
        ts = pd.DatetimeIndex(["2004-06-11", "2004-06-14", "2024-07-04", "2024-07-05"], tz="UTC")
        assert is_expected_bar("XNYS", "1d", ts).tolist() == [False, True, False, True]

    def test_it_masks_daily_bars_of_its_own_calendars(self):
        ts = pd.DatetimeIndex(["2024-03-08", "2024-03-09", "2024-03-10 12:00"], tz="UTC")
        assert is_expected_bar("24/5", "1d", ts).tolist() == [True, False, False]
        assert is_expected_bar("24/7", "1d", ts).tolist() == [True, True, False]

    def test_it_accepts_an_empty_index(self):
        assert len(is_expected_bar("XNYS", "1h", pd.DatetimeIndex([], tz="UTC"))) == 0


class TestLastCompletedBar:
    def test_it_returns_fridays_last_hour_on_saturday(self):
        assert last_completed_bar("XNYS", "1h", utc(2024, 7, 6, 12)) == utc(2024, 7, 5, 19)

    def test_it_returns_fridays_session_on_saturday(self):
        assert last_completed_bar("XNYS", "1d", utc(2024, 7, 6, 12)) == utc(2024, 7, 5)

    def test_it_counts_a_bar_complete_when_its_end_has_passed(self):
        assert last_completed_bar("XNYS", "1h", utc(2024, 7, 10, 15)) == utc(2024, 7, 10, 14)
        assert last_completed_bar("XNYS", "1h", utc(2024, 7, 10, 14, 59)) == utc(2024, 7, 10, 13)

    def test_it_waits_for_the_close_of_a_session(self):
        assert last_completed_bar("XNYS", "1d", utc(2024, 7, 10, 19, 59)) == utc(2024, 7, 9)
        assert last_completed_bar("XNYS", "1d", utc(2024, 7, 10, 20)) == utc(2024, 7, 10)

    def test_it_returns_yesterday_for_crypto_daily_bars(self):
        assert last_completed_bar("24/7", "1d", utc(2024, 7, 10, 0, 1)) == utc(2024, 7, 9)

    def test_it_returns_the_previous_hour_for_crypto(self):
        assert last_completed_bar("24/7", "1h", utc(2024, 7, 10, 10, 30)) == utc(2024, 7, 10, 9)

    def test_it_closes_forex_days_at_17_new_york(self):
        # Friday 2024-07-05 closes 17:00 EDT = 21:00 UTC.
        assert last_completed_bar("24/5", "1d", utc(2024, 7, 5, 20, 59)) == utc(2024, 7, 4)
        assert last_completed_bar("24/5", "1d", utc(2024, 7, 5, 21)) == utc(2024, 7, 5)
        assert last_completed_bar("24/5", "1d", utc(2024, 7, 8, 12)) == utc(2024, 7, 5)

    def test_it_returns_the_last_forex_hour_before_the_weekend(self):
        assert last_completed_bar("24/5", "1h", utc(2024, 7, 7, 12)) == utc(2024, 7, 5, 20)

    def test_it_returns_a_utc_datetime(self):
        result = last_completed_bar("XNYS", "1h", utc(2024, 7, 6))
        assert isinstance(result, datetime)
        assert result.utcoffset().total_seconds() == 0


class TestPreviousExpectedBar:
    def test_it_skips_a_holiday(self):
        assert previous_expected_bar("XNYS", "1d", utc(2024, 7, 5)) == utc(2024, 7, 3)

    def test_it_skips_a_weekend(self):
        assert previous_expected_bar("XNYS", "1h", utc(2024, 7, 8, 13)) == utc(2024, 7, 5, 19)

    def test_it_is_strictly_before(self):
        assert previous_expected_bar("24/7", "1m", utc(2024, 7, 8, 10)) == utc(2024, 7, 8, 9, 59)

    def test_it_returns_none_when_nothing_came_before(self):
        # exchange_calendars cannot build Hong Kong before 1960.
        assert previous_expected_bar("XHKG", "1d", utc(1960, 1, 1)) is None
