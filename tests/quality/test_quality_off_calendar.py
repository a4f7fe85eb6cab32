"""Off-calendar detection reads only the parts of a series that can hold off-calendar bars.

The whole-window count identity (stored = expected - missing) flags a series; per-bucket counts
from one GROUP BY then narrow it down, so only the suspect buckets' timestamps are read back and
checked against the calendar, never the whole series.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from integrity.models import Candle
from integrity.providers.synthetic import synthetic_bars
from integrity.quality import sql, window
from integrity.quality.detectors import run_detectors
from integrity.quality.findings import SeriesContext
from integrity.quality.thresholds import resolve_thresholds
from tests.helpers import utc

pytestmark = pytest.mark.django_db

CALENDARS = {"equity": "XNYS", "forex": "24/5"}


def ctx(symbol: str, timeframe: str, asset_class: str, since: datetime | None = None) -> SeriesContext:
    return SeriesContext(symbol=symbol, timeframe=timeframe, calendar=CALENDARS[asset_class],
                         asset_class=asset_class, thresholds=resolve_thresholds(asset_class, {}), since=since)


def load(symbol: str, timeframe: str, asset_class: str, start: datetime, end: datetime) -> None:
    frame = synthetic_bars(symbol, timeframe, CALENDARS[asset_class], start, end)
    Candle.objects.bulk_create([
        Candle(symbol=symbol, timeframe=timeframe, ts=r.ts.to_pydatetime(), open=r.open, high=r.high, low=r.low,
               close=r.close, volume=r.volume) for r in frame.itertuples(index=False)])


def add(symbol: str, timeframe: str, *times: datetime) -> None:
    for ts in times:
        Candle.objects.create(symbol=symbol, timeframe=timeframe, ts=ts, open=100, high=100, low=100, close=100,
                              volume=1)


@pytest.fixture
def times_read(monkeypatch):
    """How many timestamps the detectors read back from the database, bar by bar."""
    read = []
    real = sql.distinct_times

    def counting(*args, **kwargs):
        for chunk in real(*args, **kwargs):
            read.append(len(chunk))
            yield chunk

    monkeypatch.setattr(sql, "distinct_times", counting)
    return read


def summary(findings) -> list[tuple]:
    return [(f.period_start, f.period_end, f.affected_rows) for f in findings]


class TestNarrowing:
    def test_only_the_suspect_day_of_a_minute_series_is_read(self, times_read):
        load("AAPL", "1m", "equity", utc(2024, 3, 4), utc(2024, 3, 16))  # 10 sessions, 3900 bars
        add("AAPL", "1m", utc(2024, 3, 9, 15))  # Saturday
        assert summary(run_detectors([ctx("AAPL", "1m", "equity")], ["off_calendar"])) == [
            (utc(2024, 3, 9, 15), utc(2024, 3, 9, 15), 1)]
        assert sum(times_read) == 1  # Saturday's bucket holds only that bar

    def test_a_complete_series_reads_no_timestamps(self, times_read):
        load("AAPL", "1m", "equity", utc(2024, 3, 4), utc(2024, 3, 9))
        assert run_detectors([ctx("AAPL", "1m", "equity")], ["off_calendar"]) == []
        assert times_read == []

    def test_a_series_with_gaps_reads_only_the_day_of_the_off_calendar_bar(self, times_read):
        load("AAPL", "1m", "equity", utc(2024, 3, 4), utc(2024, 3, 16))
        Candle.objects.filter(ts__gte=utc(2024, 3, 6, 15), ts__lt=utc(2024, 3, 6, 16)).delete()
        Candle.objects.filter(ts__gte=utc(2024, 3, 12, 14), ts__lt=utc(2024, 3, 12, 14, 5)).delete()
        add("AAPL", "1m", utc(2024, 3, 11, 21, 30))  # Monday, after the close
        found = run_detectors([ctx("AAPL", "1m", "equity")], types=["gap", "off_calendar"])
        assert [(f.anomaly_type, f.period_start, f.affected_rows) for f in found] == [
            ("gap", utc(2024, 3, 6, 15), 60), ("gap", utc(2024, 3, 12, 14), 5),
            ("off_calendar", utc(2024, 3, 11, 21, 30), 1)]
        assert sum(times_read) == 390 + 1  # Monday's session and the extra bar

    def test_a_run_across_midnight_spans_two_buckets_and_stays_one_finding(self, times_read):
        load("AAPL", "1m", "equity", utc(2024, 3, 4), utc(2024, 3, 16))
        add("AAPL", "1m", *(utc(2024, 3, 8, 23, m) for m in (57, 58, 59)), utc(2024, 3, 9), utc(2024, 3, 9, 0, 1))
        assert summary(run_detectors([ctx("AAPL", "1m", "equity")], ["off_calendar"])) == [
            (utc(2024, 3, 8, 23, 57), utc(2024, 3, 9, 0, 1), 5)]
        assert sum(times_read) == 390 + 5  # Friday and Saturday

    def test_buckets_before_since_are_not_read(self, times_read):
        load("AAPL", "1m", "equity", utc(2024, 3, 4), utc(2024, 3, 16))
        add("AAPL", "1m", utc(2024, 3, 9, 15), utc(2024, 3, 10, 15))
        found = run_detectors([ctx("AAPL", "1m", "equity", since=utc(2024, 3, 10))], ["off_calendar"])
        assert summary(found) == [(utc(2024, 3, 10, 15), utc(2024, 3, 10, 15), 1)]
        assert sum(times_read) == 1

    def test_a_daily_series_with_one_bad_bar_is_found(self):
        load("AAPL", "1d", "equity", utc(2004, 1, 1), utc(2014, 1, 1))
        add("AAPL", "1d", utc(2008, 7, 4))  # Independence Day
        assert summary(run_detectors([ctx("AAPL", "1d", "equity")], ["off_calendar"])) == [
            (utc(2008, 7, 4), utc(2008, 7, 4), 1)]

    def test_unaligned_bars_59_seconds_apart_around_a_missing_bar_are_all_found(self):
        # 23:59:30 and 00:00:29 are less than a bar apart, yet the 00:00 bar time between them is
        # empty: a gap, and two off-calendar bars in two day buckets.
        load("EURUSD", "1m", "forex", utc(2024, 3, 5, 12), utc(2024, 3, 6, 12))
        Candle.objects.filter(ts=utc(2024, 3, 6)).delete()
        add("EURUSD", "1m", utc(2024, 3, 5, 23, 59, 30), utc(2024, 3, 6, 0, 0, 29))
        found = run_detectors([ctx("EURUSD", "1m", "forex")], types=["gap", "off_calendar"])
        assert [(f.anomaly_type, *summary([f])[0]) for f in found] == [
            ("gap", utc(2024, 3, 6), utc(2024, 3, 6), 1),
            ("off_calendar", utc(2024, 3, 5, 23, 59, 30), utc(2024, 3, 6, 0, 0, 29), 2),
        ]


class TestShiftedBlocks:
    """A block of bars stamped 30 s late: off the calendar, and the bar times it should hold are missing."""

    @pytest.mark.parametrize(("symbol", "asset_class", "day"), [
        ("BTC-USD", "crypto", utc(2024, 3, 5)), ("EURUSD", "forex", utc(2024, 3, 5)),
        ("AAPL", "equity", utc(2024, 3, 5)),
    ])
    def test_one_gap_and_one_off_calendar_run(self, symbol, asset_class, day):
        calendars = {**CALENDARS, "crypto": "24/7"}
        frame = synthetic_bars(symbol, "1m", calendars[asset_class], day, day + timedelta(days=1))
        Candle.objects.bulk_create([
            Candle(symbol=symbol, timeframe="1m", ts=r.ts.to_pydatetime(), open=r.open, high=r.high, low=r.low,
                   close=r.close, volume=r.volume) for r in frame.itertuples(index=False)])
        start = day + timedelta(hours=15, minutes=1)  # inside every calendar's trading day
        shifted = Candle.objects.filter(symbol=symbol, ts__gte=start, ts__lt=start + timedelta(minutes=3))
        for row in shifted:
            row.ts += timedelta(seconds=30)
            row.save()
        context = SeriesContext(symbol=symbol, timeframe="1m", calendar=calendars[asset_class],
                                asset_class=asset_class, thresholds=resolve_thresholds(asset_class, {}))
        found = run_detectors([context], types=["gap", "off_calendar"])
        assert [(f.anomaly_type, f.period_start, f.period_end, f.affected_rows) for f in found] == [
            ("gap", start, start + timedelta(minutes=2), 3),
            ("off_calendar", start + timedelta(seconds=30), start + timedelta(minutes=2, seconds=30), 3),
        ]


class TestSetBased:
    def test_the_window_pass_returns_only_candidate_rows(self):
        load("AAPL", "1m", "equity", utc(2024, 3, 4), utc(2024, 3, 16))  # 3900 bars over two weekends
        Candle.objects.filter(ts=utc(2024, 3, 6, 15)).delete()
        spec = window.WindowSpec(idx=0, symbol="AAPL", timeframe="1m", step_seconds=60, since=None, move=0.2,
                              vmin=0.2, tol=0.3)
        rows = window.window_candidates(Candle._meta.db_table, [spec], gaps=True, bad=True, odd=True, outliers=True)
        # The bounds, every overnight and weekend jump (9 of them) and the deleted bar's successor.
        assert len(rows) == 2 + 9 + 1
        assert sum(1 for r in rows if r.is_gap) == 10
