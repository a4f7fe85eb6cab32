"""Closures in the calendar maths: an instrument's extra closed time removes the bars that have no
trading minute left, from every expected-bar function alike (lists, membership, counts, the newest
completed bar). Times are worked out by hand: the forex trading day of 25 December 2024 runs from
22:00 UTC on the 24th to 22:00 UTC on the 25th (17:00 New York, winter time).
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from integrity.calendars import (
    count_expected_bars,
    expected_bars,
    expected_ns,
    expected_stats,
    is_expected_bar,
    last_completed_bar,
    normalise_closures,
    previous_expected_bar,
)
from integrity.timeframes import to_ns
from tests.helpers import utc

CHRISTMAS = normalise_closures([(to_ns(utc(2024, 12, 24, 22)), to_ns(utc(2024, 12, 25, 22)))])
WEEK = (utc(2024, 12, 23), utc(2024, 12, 28))  # Monday to Saturday


def count(calendar, timeframe, start, end, closures=(), alignment="clock"):
    return len(expected_bars(calendar, timeframe, start, end, alignment, closures))


def test_normalise_sorts_merges_and_drops_empty_closures():
    assert normalise_closures([(30, 40), (10, 20), (15, 25), (25, 26), (50, 50), (60, 55)]) == ((10, 26), (30, 40))


def test_a_forex_christmas_closure_removes_the_24_hourly_bars_of_that_trading_day():
    assert count("24/5", "1h", *WEEK) - count("24/5", "1h", *WEEK, CHRISTMAS) == 24
    bars = expected_bars("24/5", "1h", *WEEK, closures=CHRISTMAS)
    assert utc(2024, 12, 24, 21) in bars and utc(2024, 12, 25, 22) in bars
    assert utc(2024, 12, 24, 22) not in bars and utc(2024, 12, 25, 21) not in bars


def test_a_forex_christmas_closure_removes_the_daily_bar_of_that_trading_day():
    assert list(expected_bars("24/5", "1d", *WEEK, closures=CHRISTMAS)) == [
        pd.Timestamp(utc(2024, 12, d)) for d in (23, 24, 26, 27)]


def test_a_bar_with_a_trading_minute_outside_the_closure_stays_expected():
    # 4h bars 20:00-24:00: 20:00-22:00 on the 24th trades, 22:00-24:00 on the 25th trades again.
    bars = expected_bars("24/5", "4h", *WEEK, closures=CHRISTMAS)
    assert utc(2024, 12, 24, 20) in bars and utc(2024, 12, 25, 20) in bars
    assert utc(2024, 12, 25, 0) not in bars and utc(2024, 12, 25, 16) not in bars


def test_a_24_7_daily_bar_stays_expected_unless_its_whole_utc_day_is_closed():
    assert count("24/7", "1d", *WEEK, CHRISTMAS) == count("24/7", "1d", *WEEK)
    whole_day = normalise_closures([(to_ns(utc(2024, 12, 25)), to_ns(utc(2024, 12, 26)))])
    assert count("24/7", "1d", *WEEK, whole_day) == count("24/7", "1d", *WEEK) - 1


def test_an_xnys_outage_over_a_whole_session_removes_its_daily_bar_and_its_hours():
    outage = normalise_closures([(to_ns(utc(2024, 3, 13, 13, 30)), to_ns(utc(2024, 3, 13, 20)))])
    span = (utc(2024, 3, 11), utc(2024, 3, 16))
    assert count("XNYS", "1d", *span) - count("XNYS", "1d", *span, outage) == 1
    assert count("XNYS", "1h", *span) - count("XNYS", "1h", *span, outage) == 7  # 13:00 ... 19:00 UTC
    assert count("XNYS", "1h", *span, alignment="session") - count("XNYS", "1h", *span, outage, "session") == 7


def test_a_partial_xnys_outage_keeps_the_session_and_its_partly_open_hours():
    halt = normalise_closures([(to_ns(utc(2024, 3, 13, 14, 30)), to_ns(utc(2024, 3, 13, 15, 30)))])
    day = (utc(2024, 3, 13), utc(2024, 3, 14))
    assert count("XNYS", "1d", *day, halt) == 1
    assert count("XNYS", "1h", *day, halt) == count("XNYS", "1h", *day) == 7  # 14:00 and 15:00 still trade
    assert count("XNYS", "1m", *day) - count("XNYS", "1m", *day, halt) == 60


@pytest.mark.parametrize(("calendar", "timeframe"), [("24/5", "1h"), ("24/7", "1h"), ("24/7", "1d"),
                                                      ("24/5", "1d"), ("XNYS", "15m")])
def test_counts_exclude_closures_like_the_bar_lists(calendar, timeframe):
    closures = normalise_closures([*CHRISTMAS, (to_ns(utc(2024, 12, 26, 3)), to_ns(utc(2024, 12, 27, 3)))])
    start, end = utc(2024, 12, 1), utc(2025, 1, 15)
    assert count_expected_bars(calendar, timeframe, start, end, closures=closures) == count(
        calendar, timeframe, start, end, closures)


def test_expected_stats_count_no_missing_bar_across_a_closure():
    lo, hi = np.array([to_ns(utc(2024, 12, 24, 21))]), np.array([to_ns(utc(2024, 12, 25, 22))])
    assert expected_stats("24/5", "1h", lo, hi, closed=False)[0].tolist() == [24]
    counts, firsts, lasts = expected_stats("24/5", "1h", lo, hi, closed=False, closures=CHRISTMAS)
    assert (counts.tolist(), firsts.tolist(), lasts.tolist()) == ([0], [-1], [-1])


def test_is_expected_bar_says_no_inside_a_closure():
    times = [utc(2024, 12, 25, 10), utc(2024, 12, 26, 10)]
    assert is_expected_bar("24/5", "1h", times).tolist() == [True, True]
    assert is_expected_bar("24/5", "1h", times, closures=CHRISTMAS).tolist() == [False, True]
    assert is_expected_bar("24/5", "1d", [utc(2024, 12, 25)], closures=CHRISTMAS).tolist() == [False]


def test_the_newest_completed_bar_skips_closed_bars():
    noon = utc(2024, 12, 25, 12)
    assert last_completed_bar("24/5", "1h", noon) == utc(2024, 12, 25, 11)
    assert last_completed_bar("24/5", "1h", noon, closures=CHRISTMAS) == utc(2024, 12, 24, 21)
    assert last_completed_bar("24/5", "1d", utc(2024, 12, 25, 23), closures=CHRISTMAS) == utc(2024, 12, 24)


def test_the_previous_expected_bar_looks_past_a_long_closure():
    month = normalise_closures([(to_ns(utc(2024, 3, 1)), to_ns(utc(2024, 3, 1) + timedelta(days=31)))])
    assert previous_expected_bar("24/7", "1h", utc(2024, 4, 1), closures=month) == utc(2024, 2, 29, 23)


def test_no_closures_change_nothing():
    lo, hi = to_ns(utc(2024, 1, 1)), to_ns(utc(2024, 2, 1))
    assert np.array_equal(expected_ns("XNYS", "1h", lo, hi), expected_ns("XNYS", "1h", lo, hi, closures=()))
