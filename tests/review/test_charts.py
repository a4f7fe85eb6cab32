"""The anomaly charts read like a chart: price ticks on a 1-2-5 step, UTC time ticks, a session-
compressed axis for exchange series (nights and weekends take no room, session breaks dashed, a
missing bar is a hole one bar wide), a linear axis for 24/7 series, and an invalid_ohlc chart drawn over
the window of the bars it quarantined."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET

import pytest

from integrity.backfill import run_backfill
from integrity.charts import anomaly_chart_svg
from integrity.charts.ticks import price_ticks
from integrity.models import AnomalyType, Candle, DataAnomaly, Instrument
from integrity.quality.anomalies import detect_data_anomalies
from tests.helpers import add_instrument, make_anomaly, utc

pytestmark = pytest.mark.django_db

SVG = "{http://www.w3.org/2000/svg}"


class Svg:
    """A rendered chart, parsed: bars by time, holes, breaks, tick labels."""

    def __init__(self, markup: str):
        self.markup = markup
        self.root = ET.fromstring(markup)

    def all(self, tag: str, cls: str) -> list[ET.Element]:
        return [e for e in self.root.iter(SVG + tag) if cls in (e.get("class") or "").split()]

    @property
    def axis(self) -> str:
        return self.root.get("data-axis")

    def bar_x(self) -> dict[str, float]:
        """x of each drawn bar (its wick), by its time."""
        return {g.get("data-ts"): float(g.find(SVG + "line").get("x1")) for g in self.all("g", "bar")}

    def texts(self, cls: str) -> list[str]:
        return [e.text for e in self.all("text", cls)]

    def holes(self) -> list[tuple[float, float, int]]:
        return [(float(r.get("x")), float(r.get("x")) + float(r.get("width")), int(r.get("data-missing")))
                for r in self.all("rect", "missing-bars")]


def chart_of(anomaly_type: str) -> Svg:
    return Svg(anomaly_chart_svg(DataAnomaly.objects.get(anomaly_type=anomaly_type)))


@pytest.fixture
def equity_gap() -> Svg:
    """AAPL 1h on XNYS (bars 14:00 … 20:00 UTC in January), 2024-01-02 to 2024-01-12, the Monday
    2024-01-08 16:00 bar missing: the gap's chart."""
    add_instrument("AAPL", "equity", "XNYS", gaps=[["2024-01-08T16:00:00Z", "2024-01-08T17:00:00Z"]])
    run_backfill("AAPL", "1h", start=utc(2024, 1, 2), end=utc(2024, 1, 13), now=utc(2024, 1, 13, 1))
    detect_data_anomalies(now=utc(2024, 1, 13, 1), types=["gap"])
    return chart_of("gap")


@pytest.fixture
def crypto_gap() -> Svg:
    """BTC-USD 1h (24/7), 2024-01-01 to 2024-01-05, five bars from 2024-01-03 10:00 missing."""
    add_instrument(gaps=[["2024-01-03T10:00:00Z", "2024-01-03T15:00:00Z"]])
    run_backfill("BTC-USD", "1h", start=utc(2024, 1, 1), end=utc(2024, 1, 6), now=utc(2024, 1, 6, 1))
    detect_data_anomalies(now=utc(2024, 1, 6, 1), types=["gap"])
    return chart_of("gap")


# --- price ticks --------------------------------------------------------------------------------


@pytest.mark.parametrize("lo,hi,labels", [
    (0.0, 100.0, ["0", "20", "40", "60", "80", "100"]),
    (59_512.3, 60_841.7, ["59,600", "59,800", "60,000", "60,200", "60,400", "60,600", "60,800"]),
    (1.0812, 1.0857, ["1.082", "1.083", "1.084", "1.085"]),
    (-0.3, 0.3, ["-0.3", "-0.2", "-0.1", "0.0", "0.1", "0.2", "0.3"]),
])
def test_price_ticks_step_by_1_2_5_and_label_at_the_steps_precision(lo, hi, labels):
    assert price_ticks(lo, hi)[1] == labels


def test_every_chart_has_price_ticks_on_a_round_step(equity_gap):
    values = [float(t.replace(",", "")) for t in equity_gap.texts("y-label")]
    steps = {round(b - a, 9) for a, b in zip(values, values[1:], strict=False)}
    assert len(values) >= 4 and len(steps) == 1
    [step] = steps
    mantissa = step / 10 ** math.floor(math.log10(step))
    assert round(mantissa, 6) in (1, 2, 5)


# --- the session-compressed axis (exchange series) ----------------------------------------------


def test_an_exchange_series_is_drawn_on_a_session_axis(equity_gap):
    assert equity_gap.axis == "session" and "session axis" in equity_gap.markup


def test_the_friday_close_and_the_monday_open_bars_are_neighbours(equity_gap):
    x = equity_gap.bar_x()
    slot = x["2024-01-05T20:00:00Z"] - x["2024-01-05T19:00:00Z"]
    assert slot > 0
    assert x["2024-01-08T14:00:00Z"] - x["2024-01-05T20:00:00Z"] == pytest.approx(slot, abs=0.15)


def test_a_missing_hour_is_a_hole_one_bar_wide_between_its_neighbours(equity_gap):
    x = equity_gap.bar_x()
    slot = x["2024-01-08T15:00:00Z"] - x["2024-01-08T14:00:00Z"]
    [(x0, x1, missing)] = equity_gap.holes()
    assert missing == 1 and x1 - x0 == pytest.approx(slot, abs=0.15)
    assert x["2024-01-08T15:00:00Z"] < x0 < x1 < x["2024-01-08T17:00:00Z"]


def test_session_anchored_bars_are_neighbours_across_the_weekend_too():
    add_instrument("AAPL", "equity", "XNYS", gaps=[["2024-01-08T16:30:00Z", "2024-01-08T17:30:00Z"]])
    Instrument.objects.filter(symbol="AAPL").update(bar_alignment="session")  # NYSE 1h: 14:30 … 20:30 UTC
    run_backfill("AAPL", "1h", start=utc(2024, 1, 2), end=utc(2024, 1, 13), now=utc(2024, 1, 13, 1))
    detect_data_anomalies(now=utc(2024, 1, 13, 1), types=["gap"])
    chart = chart_of("gap")
    x = chart.bar_x()
    slot = x["2024-01-05T20:30:00Z"] - x["2024-01-05T19:30:00Z"]
    assert chart.axis == "session"
    assert x["2024-01-08T14:30:00Z"] - x["2024-01-05T20:30:00Z"] == pytest.approx(slot, abs=0.15)
    assert [h[2] for h in chart.holes()] == [1]


def test_session_breaks_are_dashed_between_sessions(equity_gap):
    breaks = equity_gap.all("line", "session-break")
    assert len(breaks) == 8  # 9 sessions, 2024-01-02 … 2024-01-12
    assert all(b.get("stroke-dasharray") for b in breaks)


def test_time_ticks_of_a_session_axis_name_trading_days_only(equity_gap):
    labels = equity_gap.texts("x-label")
    assert len(labels) >= 3
    assert all(re.fullmatch(r"(Mon|Tue|Wed|Thu|Fri) 01-\d\d", label) for label in labels), labels
    assert "2024" in equity_gap.texts("x-sublabel")


# --- the linear axis (24/7 series) --------------------------------------------------------------


def test_a_24_7_series_keeps_a_linear_axis_with_its_hole(crypto_gap):
    x = crypto_gap.bar_x()
    slot = x["2024-01-03T09:00:00Z"] - x["2024-01-03T08:00:00Z"]
    assert crypto_gap.axis == "linear" and not crypto_gap.all("line", "session-break")
    assert x["2024-01-03T15:00:00Z"] - x["2024-01-03T09:00:00Z"] == pytest.approx(6 * slot, abs=0.3)
    [(x0, x1, missing)] = crypto_gap.holes()
    assert missing == 5 and x1 - x0 == pytest.approx(5 * slot, abs=0.3)


def test_time_ticks_of_a_few_days_are_hours_with_the_date_under_each_new_day(crypto_gap):
    labels, dates = crypto_gap.texts("x-label"), crypto_gap.texts("x-sublabel")
    assert labels and all(re.fullmatch(r"\d\d:00", label) for label in labels), labels
    assert "Wed 2024-01-03" in dates and len(dates) == len(set(dates))


# --- invalid_ohlc: the window of the quarantined bars -------------------------------------------


@pytest.fixture
def refused_chart() -> Svg:
    """BTC-USD 1h loaded 2024-01-01 to 2024-01-25; the bars of 2024-01-15 05:00 and 09:00 refused."""
    add_instrument(invalid=["2024-01-15T05:00:00Z", "2024-01-15T09:00:00Z"])
    run_backfill("BTC-USD", "1h", start=utc(2024, 1, 1), end=utc(2024, 1, 25), now=utc(2024, 1, 25, 1))
    return chart_of(AnomalyType.INVALID_OHLC)


def test_an_invalid_ohlc_chart_spans_its_refused_bars_and_40_bars_either_side(refused_chart):
    times = sorted(refused_chart.bar_x())
    assert times[0] == "2024-01-13T13:00:00Z" and times[-1] == "2024-01-17T01:00:00Z"


def test_each_refused_bar_is_a_cross_in_the_hole_it_left(refused_chart):
    crosses = refused_chart.all("path", "rejected-bar")
    holes = refused_chart.holes()
    assert len(crosses) == 2 and [h[2] for h in holes] == [1, 1]
    for cross, (x0, x1, _) in zip(crosses, holes, strict=True):
        cx = float(re.match(r"M([\d.]+)", cross.get("d")).group(1)) + 4
        assert x0 <= cx <= x1
        assert cross.find(SVG + "title").text.startswith("refused at ingest: ")


def test_a_period_whose_every_bar_was_refused_is_charted_with_its_crosses_alone():
    add_instrument(invalid=["2024-01-01T00:00:00Z", "2024-01-01T01:00:00Z", "2024-01-01T02:00:00Z"])
    run_backfill("BTC-USD", "1h", start=utc(2024, 1, 1), end=utc(2024, 1, 1, 3), now=utc(2024, 1, 2))
    chart = chart_of(AnomalyType.INVALID_OHLC)
    assert not chart.all("g", "bar") and len(chart.all("path", "rejected-bar")) == 3
    assert chart.holes()[0][2] == 3 and chart.texts("y-label")


def test_a_symbol_off_the_watchlist_is_charted_on_a_linear_axis_with_its_ticks():
    for hour in (0, 1, 2, 6, 7):
        Candle.objects.create(symbol="GONE", timeframe="1h", ts=utc(2024, 1, 1, hour), open=10, high=11, low=9,
                              close=10.5, volume=1)
    chart = Svg(anomaly_chart_svg(make_anomaly(symbol="GONE", period_start=utc(2024, 1, 1, 3),
                                               period_end=utc(2024, 1, 1, 5))))
    assert chart.axis == "linear" and len(chart.bar_x()) == 5 and not chart.holes()
    assert chart.texts("x-label") and chart.texts("y-label")
