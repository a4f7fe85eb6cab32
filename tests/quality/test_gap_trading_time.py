"""Gap severity by missing trading time (issue 12 §4): a missing session weighs the same on every
timeframe, and ``detect_anomalies`` text output summarises before it lists."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from integrity.models import Candle
from integrity.providers.synthetic import synthetic_bars
from integrity.quality.detectors import run_detectors
from integrity.quality.findings import SeriesContext
from integrity.quality.thresholds import resolve_thresholds
from integrity.quality.trading_time import gap_severity
from tests.helpers import add_instrument, utc

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("default_thresholds")]

CALENDARS = {"equity": "XNYS", "crypto": "24/7", "forex": "24/5"}



def store_without(symbol, timeframe, asset_class, start, end, drop_from, drop_to) -> None:
    frame = synthetic_bars(symbol, timeframe, CALENDARS[asset_class], start, end)
    frame = frame[(frame["ts"] < drop_from) | (frame["ts"] >= drop_to)]
    Candle.objects.bulk_create([Candle(symbol=symbol, timeframe=timeframe, ts=r.ts.to_pydatetime(), open=r.open,
                                       high=r.high, low=r.low, close=r.close, volume=r.volume, source="test")
                                for r in frame.itertuples(index=False)])


def gap_of(symbol, timeframe, asset_class):
    ctx = SeriesContext(symbol=symbol, timeframe=timeframe, calendar=CALENDARS[asset_class],
                        asset_class=asset_class, thresholds=resolve_thresholds(asset_class))
    [gap] = run_detectors([ctx], ["gap"])
    return gap


@pytest.mark.parametrize("asset_class,start,end,day", [
    ("equity", utc(2024, 1, 2), utc(2024, 3, 1), utc(2024, 2, 6)),  # a regular NYSE session
    ("equity", utc(2023, 11, 1), utc(2023, 12, 15), utc(2023, 11, 24)),  # the half day after Thanksgiving
    ("forex", utc(2024, 1, 2), utc(2024, 3, 1), utc(2024, 2, 7)),  # a forex trading day (17:00-17:00 NY)
    ("crypto", utc(2024, 1, 2), utc(2024, 2, 1), utc(2024, 1, 10)),
])
def test_a_missing_whole_session_is_the_same_severity_on_1d_and_1h(asset_class, start, end, day):
    daily_to = utc(day.year, day.month, day.day + 1)
    store_without("D", "1d", asset_class, start, end, day, daily_to)
    # The same trading day on 1h: for forex it runs from 17:00 New York the evening before.
    hourly_from, hourly_to = (utc(2024, 2, 6, 22), utc(2024, 2, 7, 22)) if asset_class == "forex" else (day, daily_to)
    store_without("H", "1h", asset_class, start, end, hourly_from, hourly_to)
    daily, hourly = gap_of("D", "1d", asset_class), gap_of("H", "1h", asset_class)
    assert daily.affected_rows == 1 and hourly.affected_rows > 1
    assert daily.severity == hourly.severity
    assert daily.details["trading_days"] == pytest.approx(hourly.details["trading_days"], rel=0.01)


def test_a_regular_session_missing_is_high_and_a_half_day_medium():
    store_without("D", "1d", "equity", utc(2023, 11, 1), utc(2023, 12, 15), utc(2023, 11, 24), utc(2023, 11, 25))
    store_without("R", "1d", "equity", utc(2023, 11, 1), utc(2023, 12, 15), utc(2023, 11, 28), utc(2023, 11, 29))
    assert (gap_of("D", "1d", "equity").severity, gap_of("R", "1d", "equity").severity) == ("medium", "high")


@pytest.mark.parametrize("days,missing,expected", [
    (0.04, 1, "low"), (0.08, 2, "medium"), (0.3, 1, "medium"), (1.0, 1, "high"), (5.0, 1, "critical"),
])
def test_severity_follows_the_trading_day_thresholds(days, missing, expected):
    assert gap_severity(days, missing, resolve_thresholds("crypto")) == expected


# --- detect_anomalies text output ----------------------------------------------------------------


def many_gaps() -> None:
    add_instrument("BTC-USD")
    frame = synthetic_bars("BTC-USD", "1h", "24/7", utc(2024, 1, 1), utc(2024, 1, 11))
    frame = frame[frame.index % 5 != 2]  # 48 single missing bars
    Candle.objects.bulk_create([Candle(symbol="BTC-USD", timeframe="1h", ts=r.ts.to_pydatetime(), open=r.open,
                                       high=r.high, low=r.low, close=r.close, volume=r.volume)
                                for r in frame.itertuples(index=False)])


def test_text_output_summarises_by_type_and_severity_then_lists_at_most_limit():
    many_gaps()
    out = StringIO()
    call_command("detect_anomalies", "--types", "gap", "--dry-run", "--limit", "5", stdout=out)
    lines = out.getvalue().splitlines()
    assert "by type and severity:" in lines
    assert any(line.split()[:2] == ["gap", "48"] and "low 48" in line for line in lines)
    assert sum(line.startswith("  [") for line in lines) == 5
    assert lines[-1] == "  … and 43 more (use --format json for all)"


def test_json_output_lists_every_finding_whatever_the_limit():
    many_gaps()
    out = StringIO()
    call_command("detect_anomalies", "--types", "gap", "--dry-run", "--limit", "5", "--format", "json", stdout=out)
    assert len(json.loads(out.getvalue())) == 48


def test_a_negative_limit_is_a_usage_error():
    with pytest.raises(CommandError) as error:
        call_command("detect_anomalies", "--limit", "-1", stdout=StringIO())
    assert error.value.returncode == 2
