"""Vendor files as they come: each layout generated from the calendars themselves, loaded with
``manage.py backfill --file``, then judged with ``detect_anomalies --full``.

Each layout is written the way its vendors write it (header, timestamp format, zone, anchoring,
half days, lunch breaks); the bars are the calendar's own, so the expected stored bars are known
exactly. For every layout: the stored bars equal the file's bars (moved to UTC open times), a
complete file gives zero findings, and a file with planted faults gives exactly those faults:

* a row deleted               -> one ``gap`` of one bar at its time;
* a row written twice         -> both copies refused at ingest (``duplicate_ts``: nothing says which
                                 copy is right), so one bar missing at its time;
* a row with high/low swapped -> refused at ingest (``high_below_low``), one bar missing at its time;

the refused rows counted in the run's one ``invalid_ohlc`` finding, with their rules.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import pandas as pd
import pytest
from django.core.management import CommandError, call_command

from integrity.calendars import expected_bars
from integrity.models import Candle, DataAnomaly
from integrity.providers.synthetic import synthetic_bars
from tests.helpers import utc

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("default_thresholds")]



@dataclass
class Layout:
    """One vendor layout: which series, how its file is written, how it is loaded."""

    name: str
    calendar: str
    timeframe: str
    start: datetime
    end: datetime
    header: list[str]
    stamp: object  # callable: UTC open times (DatetimeIndex) -> the file's timestamp strings
    args: list[str] = field(default_factory=list)  # extra backfill arguments
    alignment: str = "clock"
    asset_class: str = "equity"
    sep: str = ","
    base_price: float = 100.0
    faults_at: tuple[int, int, int] = (5, 40, 77)  # rows (of the complete file) to delete / double / break

    def bars(self) -> pd.DataFrame:
        frame = synthetic_bars(self.name, self.timeframe, self.calendar, self.start, self.end, self.alignment,
                               base_price=self.base_price)
        # The generator is the calendar: the file holds exactly the expected bars.
        expected = expected_bars(self.calendar, self.timeframe, self.start, self.end, self.alignment)
        assert pd.DatetimeIndex(frame["ts"]).equals(expected.as_unit("ns"))
        return frame

    def write(self, path, frame: pd.DataFrame) -> None:
        cells = pd.DataFrame({"ts": self.stamp(pd.DatetimeIndex(frame["ts"]))})
        for column in ("open", "high", "low", "close"):
            cells[column] = frame[column].map(repr)
        extra = {"Adj Close": frame["close"].map(repr)} if "Adj Close" in self.header else {}
        for name, values in extra.items():
            cells[name] = values
        cells["volume"] = frame["volume"].map(lambda v: str(int(v)))
        order = ["ts", "open", "high", "low", "close", *extra, "volume"]
        lines = [self.sep.join(self.header)]
        lines += [self.sep.join(row) for row in cells[order].itertuples(index=False, name=None)]
        path.write_text("\n".join(lines) + "\n")

    def load(self, path) -> tuple[int, list[dict]]:
        out = io.StringIO()
        args = ["backfill", "--symbol", self.name, "--timeframe", self.timeframe, "--file", str(path),
                "--asset-class", self.asset_class, "--calendar", self.calendar,
                "--start", self.start.isoformat(), "--end", self.end.isoformat(), "--format", "json", *self.args]
        if self.alignment != "clock":
            args += ["--bar-alignment", self.alignment]
        try:
            call_command(*args, stdout=out, stderr=io.StringIO())
            code = 0
        except CommandError as exc:  # exit 1: a series failed
            code = exc.returncode
        return code, json.loads(out.getvalue())


def _strftime(fmt: str, tz: str = "UTC", shift: pd.Timedelta | None = None):
    def stamp(index: pd.DatetimeIndex) -> list[str]:
        moved = index + shift if shift is not None else index
        return list(moved.tz_convert(tz).strftime(fmt))
    return stamp


def _yahoo(index: pd.DatetimeIndex) -> list[str]:
    """Yahoo's intraday export: New York wall time with its offset, '2024-11-29 09:30:00-05:00'."""
    local = index.tz_convert("America/New_York")
    return [t.isoformat(sep=" ") for t in local]


def _dukascopy(index: pd.DatetimeIndex) -> list[str]:
    """Dukascopy's export: day first, UTC, milliseconds: '02.01.2024 17:00:00.000'."""
    return [t.strftime("%d.%m.%Y %H:%M:%S.") + f"{t.microsecond // 1000:03d}" for t in index.tz_convert("UTC")]


LAYOUTS = [
    # Alpaca/Polygon-style minute export: ISO UTC with Z; Thanksgiving and the 13:00 close inside.
    Layout("XNYS1M", "XNYS", "1m", utc(2024, 11, 26), utc(2024, 12, 3),
           ["timestamp", "open", "high", "low", "close", "volume"], _strftime("%Y-%m-%dT%H:%M:%SZ"),
           faults_at=(100, 700, 1300)),
    # Yahoo/IB hourly: session-anchored (09:30 … 15:30, 12:30 the last on the half day), with offsets.
    Layout("XNYS1H", "XNYS", "1h", utc(2024, 11, 18), utc(2024, 12, 10),
           ["Datetime", "Open", "High", "Low", "Close", "Adj Close", "Volume"], _yahoo, alignment="session",
           faults_at=(3, 30, 60)),
    # London 5-minute bars in naive London wall time across the end of BST (2024-10-27).
    Layout("XLON5M", "XLON", "5m", utc(2024, 10, 24), utc(2024, 10, 30),
           ["Date", "Open", "High", "Low", "Close", "Volume"], _strftime("%Y-%m-%d %H:%M:%S", "Europe/London"),
           ["--tz", "Europe/London"], base_price=50.0, faults_at=(10, 150, 300)),
    # Hong Kong 5-minute bars stamped at their close (09:35 … 12:00, 13:05 … 16:00), naive HK time.
    Layout("XHKG5M", "XHKG", "5m", utc(2024, 11, 25), utc(2024, 11, 30),
           ["time", "open", "high", "low", "close", "volume"],
           _strftime("%Y-%m-%d %H:%M", "Asia/Hong_Kong", shift=pd.Timedelta(minutes=5)),
           ["--tz", "Asia/Hong_Kong", "--timestamp-label", "close"], base_price=400.0, faults_at=(20, 100, 200)),
    # Dukascopy hourly EURUSD: day-first dates in UTC over a month (days 1-12 and 13-31 alike).
    Layout("EURUSD", "24/5", "1h", utc(2024, 1, 2), utc(2024, 2, 1),
           ["Gmt time", "Open", "High", "Low", "Close", "Volume"], _dukascopy, ["--date-format", "dukascopy"],
           asset_class="forex", base_price=1.09, faults_at=(30, 200, 400)),
]


def stored(symbol: str) -> pd.DataFrame:
    rows = list(Candle.objects.filter(symbol=symbol).order_by("ts")
                .values_list("ts", "open", "high", "low", "close", "volume"))
    frame = pd.DataFrame(rows, columns=["ts", "open", "high", "low", "close", "volume"])
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True).astype("datetime64[ns, UTC]")
    return frame


def detect(now: datetime) -> list[dict]:
    out = io.StringIO()
    try:
        call_command("detect_anomalies", "--full", "--format", "json", "--as-of", now.isoformat(), stdout=out)
    except CommandError:  # exit 1: a high or critical finding; the findings are printed all the same
        pass
    return json.loads(out.getvalue())


def as_of(layout: Layout) -> datetime:
    """Right after the file's last bar has closed: nothing is stale yet."""
    return layout.end


@pytest.mark.parametrize("layout", LAYOUTS, ids=[layout.name for layout in LAYOUTS])
class TestVendorLayouts:
    def test_every_bar_of_the_file_is_stored_exactly(self, layout, tmp_path):
        frame = layout.bars()
        layout.write(tmp_path / "bars.csv", frame)
        code, result = layout.load(tmp_path / "bars.csv")
        assert code == 0
        [run] = result
        assert (run["status"], run["inserted"], run["invalid"]) == ("completed", len(frame), 0)
        got = stored(layout.name)
        assert got["ts"].equals(frame["ts"]), "bar times differ from the file's"
        np.testing.assert_array_equal(got[["open", "high", "low", "close", "volume"]].to_numpy(),
                                      frame[["open", "high", "low", "close", "volume"]].to_numpy())

    def test_a_complete_file_gives_no_finding(self, layout, tmp_path):
        layout.write(tmp_path / "bars.csv", layout.bars())
        layout.load(tmp_path / "bars.csv")
        assert detect(as_of(layout)) == []

    def test_planted_faults_give_exactly_those_findings(self, layout, tmp_path):
        frame = layout.bars()
        deleted, doubled, broken = layout.faults_at
        times = frame["ts"]
        faulty = frame.copy()
        high, low = faulty.at[broken, "high"], faulty.at[broken, "low"]
        faulty.at[broken, "high"], faulty.at[broken, "low"] = low, high
        faulty = pd.concat([faulty, faulty.loc[[doubled]]]).drop(index=deleted).sort_values("ts", kind="stable").reset_index(drop=True)
        layout.write(tmp_path / "bars.csv", faulty)
        layout.load(tmp_path / "bars.csv")

        findings = detect(as_of(layout))
        gaps = sorted((f["period_start"], f["affected_rows"]) for f in findings if f["anomaly_type"] == "gap")
        # The refused rows' holes are the invalid_ohlc finding's (issue 12 §4), not gaps: one gap.
        assert gaps == [(times[deleted].isoformat(), 1)]
        assert sorted({f["anomaly_type"] for f in findings}) == ["gap"]
        [invalid] = DataAnomaly.objects.filter(anomaly_type="invalid_ohlc")
        assert invalid.affected_rows == 3
        assert (invalid.period_start, invalid.period_end) == (min(times[doubled], times[broken]).to_pydatetime(),
                                                              max(times[doubled], times[broken]).to_pydatetime())
        assert invalid.details["reason_counts"] == {"high_below_low": 1, "high_below_open_close": 1,
                                                    "low_above_open_close": 1, "duplicate_ts": 2}
