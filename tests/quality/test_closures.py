"""Closures in the detectors: recorded closed time is not expected by the gap step, nor by the
off-calendar counts, and a closure recorded (or removed) after a scan is picked up by the next
incremental scan, which resolves (or reopens) the gaps it explains.

The forex series are synthetic bars with Christmas and New Year's Day left out, as a forex source
publishes them; the 24/5 calendar itself expects both days.
"""

from __future__ import annotations

from datetime import datetime

import pandas as pd
import pytest

from integrity.calendars import is_expected_bar
from integrity.closures import add_closure, add_preset, remove_closure
from integrity.models import Candle, DataAnomaly, InstrumentClosure, ResolutionStatus
from integrity.providers.synthetic import synthetic_bars
from integrity.quality.anomalies import detect_data_anomalies
from integrity.timeframes import to_ns
from tests.helpers import add_instrument, utc

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("default_thresholds")]

START, END = utc(2024, 12, 16), utc(2025, 1, 10)  # Monday to Friday, Christmas and New Year inside
NOW = END  # judged right after the last bar: nothing is stale



def store(frame: pd.DataFrame, symbol: str, timeframe: str) -> None:
    Candle.objects.bulk_create(
        [Candle(symbol=symbol, timeframe=timeframe, ts=r.ts.to_pydatetime(), open=r.open, high=r.high,
                low=r.low, close=r.close, volume=r.volume, source="test")
         for r in frame.itertuples(index=False)],
        batch_size=5000,
    )


def holiday_closures() -> tuple[tuple[int, int], ...]:
    """The forex-holidays preset's closures for 2024-2025, read back from the table."""
    return tuple((to_ns(c.start), to_ns(c.end)) for c in InstrumentClosure.objects.order_by("start"))


def fx_series(timeframe: str = "1h", symbol: str = "EURUSD", with_holidays: bool = False) -> pd.DataFrame:
    """A clean forex series as a source publishes it: no bars on Christmas and New Year's Day."""
    add_instrument(symbol, "forex", "24/5", (timeframe,))
    frame = synthetic_bars(symbol, timeframe, "24/5", START, END)
    if not with_holidays:
        add_preset("forex-holidays", [2024, 2025], [symbol])
        keep = is_expected_bar("24/5", timeframe, frame["ts"], closures=holiday_closures())
        InstrumentClosure.objects.all().delete()
        frame = frame[keep]
    store(frame, symbol, timeframe)
    return frame


def gaps(symbol: str = "EURUSD", status: str = ResolutionStatus.OPEN) -> list[DataAnomaly]:
    return list(DataAnomaly.objects.filter(symbol=symbol, anomaly_type="gap", resolution_status=status)
                .order_by("period_start"))


def detect(full: bool = False, now: datetime = NOW):
    return detect_data_anomalies(full=full, now=now)


def test_a_clean_fx_series_raises_two_high_gaps_without_closures():
    fx_series()
    result = detect(full=True)
    assert [(f.anomaly_type, f.severity, f.affected_rows) for f in result.findings] == [
        ("gap", "high", 24), ("gap", "high", 24)]
    assert [f.period_start for f in result.findings] == [utc(2024, 12, 24, 22), utc(2024, 12, 31, 22)]


def test_a_clean_fx_series_raises_nothing_once_the_holidays_are_recorded():
    fx_series()
    add_preset("forex-holidays", [2024, 2025])
    assert detect(full=True).findings == []


def test_a_clean_fx_daily_series_raises_nothing_once_the_holidays_are_recorded():
    fx_series("1d")
    assert [f.affected_rows for f in detect(full=True).findings] == [1, 1]
    DataAnomaly.objects.all().delete()
    add_preset("forex-holidays", [2024, 2025])
    assert detect(full=True).findings == []


def test_recording_the_closures_resolves_the_open_gaps_at_the_next_incremental_scan():
    fx_series()
    detect()
    assert len(gaps()) == 2
    add_preset("forex-holidays", [2024, 2025])
    result = detect(now=utc(2025, 1, 10, 0, 30))
    assert result.resolved == 2 and gaps() == []
    assert {(a.resolved_by, a.resolution_note) for a in gaps(status=ResolutionStatus.RESOLVED)} == {
        ("auto", "no longer detected")}


def test_removing_a_closure_reopens_its_gap_at_the_next_incremental_scan():
    fx_series()
    add_preset("forex-holidays", [2024, 2025])
    detect()
    assert gaps() == []
    remove_closure(InstrumentClosure.objects.get(start=utc(2024, 12, 31, 22)))
    detect(now=utc(2025, 1, 10, 0, 30))
    assert [(a.period_start, a.severity) for a in gaps()] == [(utc(2024, 12, 31, 22), "high")]


def test_bars_stored_inside_a_closure_are_not_off_calendar():
    fx_series(with_holidays=True)  # the source did publish Christmas and New Year bars
    add_preset("forex-holidays", [2024, 2025])
    assert detect(full=True).findings == []


def test_a_bar_the_calendar_closes_is_still_off_calendar_with_closures_recorded():
    fx_series()
    add_preset("forex-holidays", [2024, 2025])
    saturday = utc(2024, 12, 28, 12)
    price = Candle.objects.filter(ts__lt=saturday).order_by("-ts").values_list("close", flat=True)[0]
    Candle.objects.create(symbol="EURUSD", timeframe="1h", ts=saturday, open=price, high=price, low=price,
                          close=price, volume=1)
    found = detect(full=True).findings
    assert [(f.anomaly_type, f.period_start) for f in found] == [("off_calendar", saturday)]


def test_an_outage_closure_removes_the_missing_xnys_session_gap():
    add_instrument("AAPL", "equity", "XNYS", ("1d",))
    frame = synthetic_bars("AAPL", "1d", "XNYS", utc(2024, 3, 1), utc(2024, 3, 29))
    store(frame[frame["ts"] != pd.Timestamp(utc(2024, 3, 13))], "AAPL", "1d")
    now = utc(2024, 3, 29)
    assert [(f.anomaly_type, f.period_start) for f in detect(full=True, now=now).findings] == [
        ("gap", utc(2024, 3, 13))]
    add_closure("AAPL", utc(2024, 3, 13, 13, 30), utc(2024, 3, 13, 20), reason="exchange outage")
    assert detect(full=True, now=now).findings == []
    assert gaps("AAPL") == []


def test_a_partial_outage_leaves_the_session_expected():
    add_instrument("AAPL", "equity", "XNYS", ("1d",))
    frame = synthetic_bars("AAPL", "1d", "XNYS", utc(2024, 3, 1), utc(2024, 3, 29))
    store(frame[frame["ts"] != pd.Timestamp(utc(2024, 3, 13))], "AAPL", "1d")
    add_closure("AAPL", utc(2024, 3, 13, 13, 30), utc(2024, 3, 13, 16), reason="morning halt")
    found = detect(full=True, now=utc(2024, 3, 29)).findings
    assert [(f.anomaly_type, f.period_start) for f in found] == [("gap", utc(2024, 3, 13))]


def test_closures_of_another_symbol_change_nothing():
    fx_series()
    add_instrument("GBPUSD", "forex", "24/5", ("1h",))
    add_preset("forex-holidays", [2024, 2025], ["GBPUSD"])
    assert [f.severity for f in detect(full=True).findings] == ["high", "high"]

