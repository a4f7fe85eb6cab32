"""CSV dates are never silently misread: day/month order decided from the file's own rows or given
by ``date_format`` (``--date-format``), ISO needing nothing, and a daily bar stored as its session
date whatever the file's time zone."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from io import StringIO

import pandas as pd
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from integrity.calendars import expected_bars
from integrity.models import BackfillState, Candle, Instrument
from integrity.providers import csv as csv_module
from integrity.providers import csv_time
from integrity.providers.base import FetchRequest, ProviderConfigError, ProviderError
from integrity.providers.csv import CsvProvider, parse_date_format
from tests.helpers import run_backfill_command as run
from tests.helpers import stored_bars, utc

HEADER = "Date,Open,High,Low,Close,Volume\n"


def request(timeframe="1h", **options):
    return FetchRequest(symbol="X", timeframe=timeframe, start=datetime(1990, 1, 1, tzinfo=UTC),
                        end=datetime(2100, 1, 1, tzinfo=UTC), options=options)


def write(tmp_path, stamps, name="X.csv", header=HEADER):
    path = tmp_path / name
    path.write_text(header + "".join(f"{s},1,2,0.5,1.5,10\n" for s in stamps))
    return path


def read(path, timeframe="1h", **options) -> list[pd.Timestamp]:
    pages = list(CsvProvider(file=str(path)).fetch(request(timeframe, **options)))
    return list(pd.concat(pages)["ts"]) if pages else []


def ts(*args):
    return pd.Timestamp(datetime(*args, tzinfo=UTC))


class TestIsoNeedsNothing:
    def test_iso_dates_with_days_up_to_12_are_read_as_written(self, tmp_path):
        path = write(tmp_path, ["2024-01-02 09:00", "2024-02-01 09:00", "2024-03-04 09:00"])
        assert read(path) == [ts(2024, 1, 2, 9), ts(2024, 2, 1, 9), ts(2024, 3, 4, 9)]


class TestOrderDecidedByTheFile:
    def test_a_day_above_12_makes_the_file_day_first_and_the_reader_says_so(self, tmp_path):
        path = write(tmp_path, ["12/01/2024", "13/01/2024", "01/02/2024"])
        provider = CsvProvider(file=str(path))
        inspection = provider.inspect(request("1d"))
        assert inspection.note == "dates read day-first (line 3: 13/01/2024)"
        assert read(path, "1d") == [ts(2024, 1, 12), ts(2024, 1, 13), ts(2024, 2, 1)]

    def test_a_second_field_above_12_makes_the_file_month_first(self, tmp_path):
        path = write(tmp_path, ["01/12/2024", "01/13/2024", "02/01/2024"])
        assert read(path, "1d") == [ts(2024, 1, 12), ts(2024, 1, 13), ts(2024, 2, 1)]
        assert CsvProvider(file=str(path)).inspect(request("1d")).note == \
            "dates read month-first (line 3: 01/13/2024)"

    def test_the_deciding_row_may_be_anywhere_in_the_file(self, tmp_path, monkeypatch):
        monkeypatch.setattr(csv_time, "_DETECT_CHUNK", 2)  # the evidence is in the last chunk read
        monkeypatch.setattr(csv_module, "_MIN_SCAN_CHUNK", 2)
        stamps = [f"{d:02d}.01.2024 10:00:00.000" for d in range(1, 13)] + ["13.01.2024 10:00:00.000"]
        path = write(tmp_path, stamps)
        assert read(path, page_size=2) == [ts(2024, 1, d, 10) for d in range(1, 14)]

    def test_a_file_with_no_day_above_12_is_refused_naming_ambiguous_rows(self, tmp_path):
        path = write(tmp_path, ["01/02/2024", "02/03/2024", "03/04/2024", "04/05/2024"])
        with pytest.raises(ProviderError) as error:
            read(path, "1d")
        message = str(error.value)
        assert "cannot tell whether the dates are day-first or month-first" in message
        assert "(4 ambiguous row(s), e.g. line 2 '01/02/2024', line 3 '02/03/2024', line 4 '03/04/2024')" in message
        assert "--date-format" in message

    def test_a_file_mixing_both_orders_is_refused_naming_both_rows(self, tmp_path):
        path = write(tmp_path, ["13/01/2024", "01/14/2024"])
        with pytest.raises(ProviderError, match=r"line 2 '13/01/2024' has the day first, line 3 '01/14/2024'"):
            read(path, "1d")

    def test_dates_that_read_the_same_both_ways_need_no_decision(self, tmp_path):
        path = write(tmp_path, ["05/05/2024", "06/06/2024"])
        assert read(path, "1d") == [ts(2024, 5, 5), ts(2024, 6, 6)]

    def test_a_two_digit_year_is_refused(self, tmp_path):
        path = write(tmp_path, ["13/01/24"])
        with pytest.raises(ProviderError, match="'13/01/24' at line 2 has a two-digit year"):
            read(path, "1d")

    def test_naive_numeric_date_times_are_local_time_in_tz(self, tmp_path):
        path = write(tmp_path, ["13/01/2024 09:30", "15/07/2024 09:30"])
        assert read(path, tz="America/New_York") == [ts(2024, 1, 13, 14, 30), ts(2024, 7, 15, 13, 30)]


class TestDateFormat:
    def test_day_first_reads_an_ambiguous_file(self, tmp_path):
        path = write(tmp_path, ["01/02/2024", "02/02/2024"])
        assert read(path, "1d", date_format="day-first") == [ts(2024, 2, 1), ts(2024, 2, 2)]

    def test_month_first_reads_an_ambiguous_file(self, tmp_path):
        path = write(tmp_path, ["01/02/2024", "02/02/2024"])
        assert read(path, "1d", date_format="month-first") == [ts(2024, 1, 2), ts(2024, 2, 2)]

    def test_a_given_order_refuses_a_date_that_contradicts_it(self, tmp_path):
        path = write(tmp_path, ["01/02/2024", "01/13/2024"])
        with pytest.raises(ProviderError, match=r"'01/13/2024' at line 3 \(expected .*numeric dates day-first\)"):
            read(path, "1d", date_format="day-first")

    def test_the_dukascopy_layout(self, tmp_path):
        path = write(tmp_path, ["01.02.2024 00:00:00.000", "01.02.2024 01:00:00.000"],
                     header="Gmt time,Open,High,Low,Close,Volume\n")
        assert read(path, date_format="dukascopy") == [ts(2024, 2, 1, 0), ts(2024, 2, 1, 1)]

    def test_a_strftime_layout_with_a_time_is_local_time_in_tz(self, tmp_path):
        path = write(tmp_path, ["02/01/2024 09:30", "03/01/2024 09:30"])
        assert read(path, date_format="%d/%m/%Y %H:%M", tz="America/New_York") == [
            ts(2024, 1, 2, 14, 30), ts(2024, 1, 3, 14, 30)]

    def test_a_strftime_layout_without_a_time_reads_session_dates(self, tmp_path):
        path = write(tmp_path, ["2024|01|02", "2024|01|03"])
        assert read(path, "1d", date_format="%Y|%m|%d", tz="Asia/Tokyo") == [ts(2024, 1, 2), ts(2024, 1, 3)]

    def test_a_layout_with_an_offset_is_converted_to_utc(self, tmp_path):
        path = write(tmp_path, ["02/01/2024 09:30 +0100"])
        assert read(path, date_format="%d/%m/%Y %H:%M %z") == [ts(2024, 1, 2, 8, 30)]

    def test_a_value_that_does_not_match_the_layout_names_line_and_layout(self, tmp_path):
        path = write(tmp_path, ["02/01/2024 09:30", "2024-01-03 09:30"])
        with pytest.raises(ProviderError, match=r"'2024-01-03 09:30' at line 3 \(expected date_format '%d/%m/%Y %H:%M'\)"):
            read(path, date_format="%d/%m/%Y %H:%M")

    def test_a_layout_refuses_a_13th_month_naming_the_line(self, tmp_path):
        path = write(tmp_path, ["12.01.2024 00:00:00.000", "01.13.2024 00:00:00.000"])
        with pytest.raises(ProviderError, match=r"'01.13.2024 00:00:00.000' at line 3 \(expected date_format"):
            read(path, date_format="dukascopy")

    def test_a_layout_tolerates_padding_and_unpadded_numbers_as_strptime_does(self, tmp_path):
        path = write(tmp_path, [" 13.01.2024 00:00:00.000", "2.2.2024 05:00:00.5"])
        assert read(path, date_format="dukascopy") == [ts(2024, 1, 13), ts(2024, 2, 2, 5, 0, 0, 500000)]

    @pytest.mark.parametrize("layout", ["%d.%m.%Y %H:%M:%S.%f", "%m/%d/%Y %H:%M", "%Y%m%d %H%M%S", "%d-%m-%YT%H:%M:%S",
                                        "%Y/%m/%d"])
    def test_fixed_width_layouts_read_exactly_what_strptime_reads(self, tmp_path, layout):
        stamps = pd.date_range("1999-12-31 22:00", periods=400, freq="7h13min17s").as_unit("us")
        if "%f" in layout:
            stamps = stamps + pd.to_timedelta(range(400), unit="ms")
        text = [t.strftime(layout) for t in stamps]
        path = write(tmp_path, text)
        expected = [pd.Timestamp(datetime.strptime(t, layout), tz=UTC) for t in text]
        assert read(path, "1h", date_format=layout) == expected

    def test_padded_and_unpadded_numeric_dates_in_one_file(self, tmp_path):
        path = write(tmp_path, ["13/01/2024", "1/2/2024", "02/03/2024 10:00"])
        assert read(path, "1h") == [ts(2024, 1, 13), ts(2024, 2, 1), ts(2024, 3, 2, 10)]

    @pytest.mark.parametrize("value,words", [
        ("european", "unknown date_format 'european'"),
        ("%m/%Y", "must give the year, the month and the day"),
        ("%d/%m/%Y %Q", "not a usable strftime layout"),
        (5, "must be text"),
    ])
    def test_an_unusable_date_format_is_a_configuration_error(self, value, words):
        with pytest.raises(ProviderConfigError, match=words):
            parse_date_format(value)


class TestDailyBarsAreSessionDates:
    def test_a_date_only_value_is_the_session_date_whatever_tz(self, tmp_path):
        path = write(tmp_path, ["1/2/2024", "1/16/2024"])
        assert read(path, "1d", tz="America/New_York") == [ts(2024, 1, 2), ts(2024, 1, 16)]

    def test_a_daily_bar_at_local_midnight_is_its_session_date(self, tmp_path):
        path = write(tmp_path, ["2024-01-02 00:00:00", "2024-07-02 00:00:00"])
        assert read(path, "1d", tz="America/New_York") == [ts(2024, 1, 2), ts(2024, 7, 2)]

    def test_a_daily_bar_at_midnight_of_its_own_offset_is_its_session_date(self, tmp_path):
        # As yfinance writes a daily history: midnight New York with the offset of the day.
        path = write(tmp_path, ["2024-03-08 00:00:00-05:00", "2024-03-11 00:00:00-04:00"])
        assert read(path, "1d") == [ts(2024, 3, 8), ts(2024, 3, 11)]

    def test_an_intraday_request_keeps_midnight_as_an_instant(self, tmp_path):
        path = write(tmp_path, ["2024-01-02 00:00:00"])
        assert read(path, "1h", tz="America/New_York") == [ts(2024, 1, 2, 5)]


# --- through the command, as a user loads files --------------------------------------------------


def yahoo_daily_file(path, start, end) -> list[datetime]:
    """M/D/YYYY dates without a time, as a spreadsheet re-saves a Yahoo download."""
    sessions = expected_bars("XNYS", "1d", start, end)
    lines = ["Date,Open,High,Low,Close,Adj Close,Volume"]
    for i, day in enumerate(sessions):
        price = 180 + i
        lines.append(f"{day.month}/{day.day}/{day.year},{price},{price + 2},{price - 2},{price + 1},{price + 1},"
                     f"{1_000_000 + i}")
    path.write_text("\n".join(lines) + "\n")
    return list(sessions)


def fx_hourly_file(path, start, end, layout="%d.%m.%Y %H:%M:%S.000") -> list[datetime]:
    """A forex export: day-first date-times with milliseconds, UTC, one row per hour of the forex week."""
    hours = expected_bars("24/5", "1h", start, end)
    lines = ["Gmt time,Open,High,Low,Close,Volume"]
    for i, hour in enumerate(hours):
        price = 1.09 + (i % 10) / 10_000
        lines.append(f"{hour.strftime(layout)},{price:.5f},{price + 0.0005:.5f},{price - 0.0005:.5f},"
                     f"{price + 0.0001:.5f},{100 + i}")
    path.write_text("\n".join(lines) + "\n")
    return list(hours)


@pytest.mark.django_db(transaction=True)
class TestLoadingFiles:
    def test_a_yahoo_style_daily_file_in_new_york_time_stores_every_bar_at_its_session_date(self, tmp_path):
        sessions = yahoo_daily_file(tmp_path / "AAPL.csv", utc(2024, 1, 1), utc(2024, 2, 14))
        assert len(sessions) == 30
        code, out, err = run("--file", str(tmp_path / "AAPL.csv"), "--symbol", "AAPL", "--timeframe", "1d",
                             "--asset-class", "equity", "--calendar", "XNYS", "--tz", "America/New_York",
                             "--format", "json")
        assert code == 0, (out, err)
        [result] = json.loads(out)
        assert (result["status"], result["inserted"], result["invalid"]) == ("completed", 30, 0)
        assert list(stored_bars("AAPL", "1d")["ts"]) == [pd.Timestamp(s) for s in sessions]
        assert "AAPL: dates read month-first (line 11: 1/16/2024)" in err  # after MLK day

    def test_a_day_first_fx_file_is_read_day_first_and_says_so(self, tmp_path):
        hours = fx_hourly_file(tmp_path / "EURUSD.csv", utc(2024, 1, 1), utc(2024, 2, 1))
        code, out, err = run("--file", str(tmp_path / "EURUSD.csv"), "--symbol", "EURUSD", "--timeframe", "1h",
                             "--asset-class", "forex", "--calendar", "24/5", "--format", "json")
        assert code == 0, (out, err)
        [result] = json.loads(out)
        assert (result["inserted"], result["invalid"]) == (len(hours), 0)
        assert list(stored_bars("EURUSD", "1h")["ts"]) == [pd.Timestamp(h) for h in hours]
        # The 13th was a Saturday: the forex week reopens on Sunday the 14th at 22:00 UTC.
        assert "EURUSD: dates read day-first (line 240: 14.01.2024 22:00:00.000)" in err

    def test_an_fx_file_of_days_1_to_12_is_refused_and_nothing_is_registered(self, tmp_path):
        fx_hourly_file(tmp_path / "EURUSD.csv", utc(2024, 1, 1), utc(2024, 1, 13))
        with pytest.raises(CommandError, match="cannot tell whether the dates are day-first") as error:
            call_command("backfill", "--file", str(tmp_path / "EURUSD.csv"), "--symbol", "EURUSD",
                         "--timeframe", "1h", "--asset-class", "forex", "--calendar", "24/5",
                         stdout=StringIO(), stderr=StringIO())
        assert error.value.returncode == 1
        assert not Instrument.objects.exists() and not BackfillState.objects.exists()

    def test_the_same_file_loads_with_a_named_layout_and_later_runs_read_it_the_same_way(self, tmp_path):
        hours = fx_hourly_file(tmp_path / "EURUSD.csv", utc(2024, 1, 1), utc(2024, 1, 13))
        code, out, _ = run("--file", str(tmp_path / "EURUSD.csv"), "--symbol", "EURUSD", "--timeframe", "1h",
                           "--asset-class", "forex", "--calendar", "24/5", "--date-format", "dukascopy",
                           "--format", "json")
        assert code == 0 and json.loads(out)[0]["inserted"] == len(hours)
        assert Instrument.objects.get().provider_options["date_format"] == "dukascopy"
        assert list(stored_bars("EURUSD", "1h")["ts"]) == [pd.Timestamp(h) for h in hours]
        # The nightly run (no options on the command line) reads the stored layout.
        code, out, _ = run("--symbols", "EURUSD", "--timeframe", "1h", "--start", "2024-01-01",
                           "--end", (hours[-1] + timedelta(hours=1)).isoformat(), "--format", "json")
        assert code == 0 and (json.loads(out)[0]["inserted"], json.loads(out)[0]["updated"]) == (0, 0)

    def test_an_unusable_date_format_is_a_usage_error(self, tmp_path):
        fx_hourly_file(tmp_path / "EURUSD.csv", utc(2024, 1, 1), utc(2024, 1, 3))
        with pytest.raises(CommandError, match="--date-format: .*unknown date_format 'european'") as error:
            call_command("backfill", "--file", str(tmp_path / "EURUSD.csv"), "--symbol", "EURUSD",
                         "--asset-class", "forex", "--date-format", "european", stdout=StringIO(), stderr=StringIO())
        assert error.value.returncode == 2
        assert not Instrument.objects.exists()
        assert not Candle.objects.exists()
