import math
from datetime import UTC, datetime

import pandas as pd
import pytest

from integrity.providers import csv as csv_module
from integrity.providers.base import BAR_COLUMNS, FetchRequest, ProviderConfigError, ProviderError
from integrity.providers.csv import CsvProvider

START = datetime(2000, 1, 1, tzinfo=UTC)
END = datetime(2100, 1, 1, tzinfo=UTC)


def utc(*args):
    return pd.Timestamp(datetime(*args, tzinfo=UTC))


def request(symbol="AAPL", timeframe="1d", start=START, end=END, **options):
    return FetchRequest(symbol=symbol, timeframe=timeframe, start=start, end=end, options=options)


def write(tmp_path, text, name="AAPL.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def fetch(path, req=None, **kwargs):
    pages = list(CsvProvider(file=str(path), **kwargs).fetch(req or request()))
    return pages


def fetch_all(path, req=None, **kwargs):
    pages = fetch(path, req, **kwargs)
    return pd.concat(pages, ignore_index=True) if pages else None


def rows(*stamps):
    return "".join(f"{s},1,2,0.5,1.5,10\n" for s in stamps)


HEADER = "Date,Open,High,Low,Close,Volume\n"


class TestColumns:
    def test_it_reads_the_bar_frame_layout(self, tmp_path):
        frame = fetch_all(write(tmp_path, HEADER + "2024-01-02,1,2,0.5,1.5,10\n"))
        assert list(frame.columns) == BAR_COLUMNS
        assert str(frame["ts"].dtype) == "datetime64[ns, UTC]"
        assert frame.iloc[0].tolist()[1:] == [1.0, 2.0, 0.5, 1.5, 10.0]

    def test_it_accepts_an_unnamed_first_column(self, tmp_path):
        frame = fetch_all(write(tmp_path, ",Open,High,Low,Close,Volume\n" + rows("2024-01-02")))
        assert list(frame["ts"]) == [utc(2024, 1, 2)]

    def test_it_accepts_a_header_without_a_cell_for_the_first_column(self, tmp_path):
        frame = fetch_all(write(tmp_path, "Open,High,Low,Close,Volume\n" + rows("2024-01-02")))
        assert frame.iloc[0].tolist()[1:] == [1.0, 2.0, 0.5, 1.5, 10.0]

    def test_it_matches_column_names_in_any_letter_case_and_order(self, tmp_path):
        text = "timestamp,VOLUME,close,HiGh,LOW,oPEN\n2024-01-02,10,1.5,2,0.5,1\n"
        frame = fetch_all(write(tmp_path, text))
        assert frame.iloc[0].tolist()[1:] == [1.0, 2.0, 0.5, 1.5, 10.0]

    def test_it_ignores_extra_columns(self, tmp_path):
        text = "Date,Open,High,Low,Close,Adj Close,Volume\n2024-01-02,1,2,0.5,1.5,1.4,10\n"
        frame = fetch_all(write(tmp_path, text))
        assert frame.iloc[0].tolist()[1:] == [1.0, 2.0, 0.5, 1.5, 10.0]

    def test_it_turns_non_numeric_prices_into_nan(self, tmp_path):
        frame = fetch_all(write(tmp_path, HEADER + "2024-01-02,1,abc,0.5,,10\n2024-01-03,1,2,0.5,1.5,10\n"))
        assert math.isnan(frame.loc[0, "high"]) and math.isnan(frame.loc[0, "close"])
        assert frame.loc[1, "high"] == 2.0


class TestTimestamps:
    def test_it_reads_date_only_values_as_daily_bars_at_midnight_utc(self, tmp_path):
        frame = fetch_all(write(tmp_path, HEADER + rows("2024-01-02", "2024/01/03")))
        assert list(frame["ts"]) == [utc(2024, 1, 2), utc(2024, 1, 3)]

    def test_it_ignores_tz_for_date_only_values(self, tmp_path):
        frame = fetch_all(write(tmp_path, HEADER + rows("2024-01-02")), tz="Asia/Tokyo")
        assert list(frame["ts"]) == [utc(2024, 1, 2)]

    def test_it_reads_naive_date_times_as_utc_by_default(self, tmp_path):
        frame = fetch_all(write(tmp_path, HEADER + rows("2024-01-02 09:30:00")))
        assert list(frame["ts"]) == [utc(2024, 1, 2, 9, 30)]

    def test_it_converts_naive_date_times_from_tz_across_dst(self, tmp_path):
        path = write(tmp_path, HEADER + rows("2024-03-08 09:30", "2024-03-11 09:30"))
        frame = fetch_all(path, tz="America/New_York")
        assert list(frame["ts"]) == [utc(2024, 3, 8, 14, 30), utc(2024, 3, 11, 13, 30)]

    def test_it_tells_repeated_fall_back_hours_apart_by_their_order(self, tmp_path):
        path = write(tmp_path, HEADER + rows("2024-11-03 00:00", "2024-11-03 01:00", "2024-11-03 01:00",
                                             "2024-11-03 02:00"))
        frame = fetch_all(path, request(timeframe="1h"), tz="America/New_York")
        assert list(frame["ts"]) == [utc(2024, 11, 3, 4), utc(2024, 11, 3, 5), utc(2024, 11, 3, 6),
                                     utc(2024, 11, 3, 7)]

    def test_it_tells_repeated_fall_back_times_apart_across_read_chunks(self, tmp_path, monkeypatch):
        monkeypatch.setattr(csv_module, "_MIN_SCAN_CHUNK", 1)  # the scan reads 3 rows at a time too
        stamps = [f"2024-11-03 01:{m:02d}" for m in range(0, 60, 15)] * 2
        frame = fetch_all(write(tmp_path, HEADER + rows(*stamps)), tz="America/New_York", page_size=3)
        expected = [utc(2024, 11, 3, 5, m) for m in range(0, 60, 15)] + [
            utc(2024, 11, 3, 6, m) for m in range(0, 60, 15)]
        assert list(frame["ts"]) == expected

    def test_it_takes_a_lone_fall_back_time_as_daylight_time(self, tmp_path):
        path = write(tmp_path, HEADER + rows("2024-11-02 01:30", "2024-11-03 01:30"))
        frame = fetch_all(path, tz="America/New_York")
        assert list(frame["ts"]) == [utc(2024, 11, 2, 5, 30), utc(2024, 11, 3, 5, 30)]

    def test_it_resolves_fall_back_times_in_file_order_when_streaming_skips_chunks(self, tmp_path):
        stamps = [f"2024-11-03 01:{m:02d}" for m in range(0, 60, 15)] * 2
        req = request(start=datetime(2024, 11, 3, 6, tzinfo=UTC))
        frame = fetch_all(write(tmp_path, HEADER + rows(*stamps)), req, tz="America/New_York",
                          page_size=2)
        assert list(frame["ts"]) == [utc(2024, 11, 3, 6, m) for m in range(0, 60, 15)]

    def test_it_rejects_a_local_time_skipped_by_dst(self, tmp_path):
        path = write(tmp_path, HEADER + rows("2024-03-10 02:30"))
        with pytest.raises(ProviderError, match="does not exist .* at line 2"):
            fetch(path, tz="America/New_York")

    def test_it_converts_offset_timestamps_to_utc(self, tmp_path):
        path = write(tmp_path, HEADER + rows("2024-01-02T09:30:00-05:00", "2024-01-02T16:00:00+01:00",
                                             "2024-01-02T17:00:00Z"))
        frame = fetch_all(path, tz="Asia/Tokyo")  # tz applies to naive values only
        assert list(frame["ts"]) == [utc(2024, 1, 2, 14, 30), utc(2024, 1, 2, 15), utc(2024, 1, 2, 17)]

    def test_it_reads_epoch_seconds(self, tmp_path):
        frame = fetch_all(write(tmp_path, HEADER + rows("1704153600")))
        assert list(frame["ts"]) == [utc(2024, 1, 2)]

    def test_it_reads_epoch_milliseconds(self, tmp_path):
        frame = fetch_all(write(tmp_path, HEADER + rows("1704153600000")))
        assert list(frame["ts"]) == [utc(2024, 1, 2)]

    def test_it_rejects_an_unparseable_timestamp_naming_line_and_value(self, tmp_path):
        path = write(tmp_path, HEADER + rows("2024-01-02", "2024-01-03") + "\n" + rows("yesterday"))
        with pytest.raises(ProviderError, match=r"unparseable timestamp 'yesterday' at line 5"):
            fetch(path)

    def test_it_skips_blank_lines_but_rejects_a_row_without_a_timestamp(self, tmp_path):
        path = write(tmp_path, HEADER + rows("2024-01-02") + "\n,,,,,\n" + ",1,2,0.5,1.5,10\n")
        with pytest.raises(ProviderError, match=r"unparseable timestamp '' at line 5"):
            fetch(path)

    def test_it_rejects_a_bad_timestamp_before_yielding_any_page(self, tmp_path):
        path = write(tmp_path, HEADER + rows("2024-01-02", "2024-01-03", "2024-01-04", "2024-13-45"))
        pages = CsvProvider(file=str(path), page_size=1).fetch(request())
        with pytest.raises(ProviderError, match="line 5"):
            next(pages)


class TestRange:
    def test_it_yields_only_bars_within_start_inclusive_end_exclusive(self, tmp_path):
        path = write(tmp_path, HEADER + rows(*[f"2024-01-0{d}" for d in range(1, 7)]))
        frame = fetch_all(path, request(start=datetime(2024, 1, 2, tzinfo=UTC),
                                        end=datetime(2024, 1, 5, tzinfo=UTC)))
        assert list(frame["ts"]) == [utc(2024, 1, 2), utc(2024, 1, 3), utc(2024, 1, 4)]

    def test_it_yields_nothing_when_no_bar_is_in_range(self, tmp_path):
        path = write(tmp_path, HEADER + rows("2024-01-02"))
        assert fetch(path, request(start=datetime(2025, 1, 1, tzinfo=UTC))) == []

    def test_it_yields_nothing_for_a_header_only_file(self, tmp_path):
        assert fetch(write(tmp_path, HEADER)) == []


class TestPaging:
    def test_it_splits_five_rows_into_three_pages_of_two(self, tmp_path):
        path = write(tmp_path, HEADER + rows(*[f"2024-01-0{d}" for d in range(1, 6)]))
        pages = fetch(path, page_size=2)
        assert [len(p) for p in pages] == [2, 2, 1]
        assert list(pd.concat(pages)["ts"]) == [utc(2024, 1, d) for d in range(1, 6)]

    def test_it_takes_page_size_from_request_options(self, tmp_path):
        path = write(tmp_path, HEADER + rows(*[f"2024-01-0{d}" for d in range(1, 6)]))
        assert [len(p) for p in fetch(path, request(page_size=4))] == [4, 1]

    def test_it_never_splits_a_duplicate_ts_across_pages(self, tmp_path):
        path = write(tmp_path, HEADER + rows("2024-01-01", "2024-01-02", "2024-01-02", "2024-01-03"))
        pages = fetch(path, page_size=2)
        assert [list(p["ts"].dt.day) for p in pages] == [[1], [2, 2], [3]]

    def test_it_pages_in_range_rows_across_read_chunks(self, tmp_path):
        stamps = [f"2024-01-{d:02d}" for d in range(1, 31)]
        path = write(tmp_path, HEADER + rows(*stamps))
        pages = fetch(path, request(start=datetime(2024, 1, 4, tzinfo=UTC),
                                    end=datetime(2024, 1, 25, tzinfo=UTC)), page_size=4)
        assert [len(p) for p in pages] == [4, 4, 4, 4, 4, 1]
        assert pd.concat(pages)["ts"].is_monotonic_increasing


class TestUnsortedFile:
    def test_it_yields_rows_of_an_unsorted_file_in_ascending_order(self, tmp_path):
        path = write(tmp_path, HEADER + rows("2024-01-03", "2024-01-01", "2024-01-05", "2024-01-02",
                                             "2024-01-04"))
        pages = fetch(path, page_size=2)
        assert [len(p) for p in pages] == [2, 2, 1]
        assert list(pd.concat(pages)["ts"]) == [utc(2024, 1, d) for d in range(1, 6)]

    def test_it_sorts_a_file_in_descending_order(self, tmp_path):
        path = write(tmp_path, HEADER + rows("2024-01-03", "2024-01-02", "2024-01-01"))
        assert list(fetch_all(path)["ts"]) == [utc(2024, 1, 1), utc(2024, 1, 2), utc(2024, 1, 3)]


class TestFirstBar:
    def test_it_finds_the_earliest_bar_of_an_unsorted_file(self, tmp_path):
        path = write(tmp_path, HEADER + rows("1995-03-03", "1987-10-19", "2024-01-02"))
        assert CsvProvider(file=str(path)).first_bar_ts(request(start=END, end=END)) == utc(1987, 10, 19)

    def test_it_reads_naive_times_in_the_files_time_zone(self, tmp_path):
        path = write(tmp_path, HEADER + rows("2024-07-01 09:30", "2024-07-01 10:30"))
        first = CsvProvider(file=str(path), tz="America/New_York").first_bar_ts(request(timeframe="1h"))
        assert first == utc(2024, 7, 1, 13, 30)

    def test_it_is_none_for_a_file_without_bars(self, tmp_path):
        path = write(tmp_path, HEADER)
        assert CsvProvider(file=str(path)).first_bar_ts(request()) is None

    def test_it_names_a_bad_line(self, tmp_path):
        path = write(tmp_path, HEADER + rows("2024-01-02") + "not-a-date,1,2,0.5,1.5,10\n")
        with pytest.raises(ProviderError, match="line 3"):
            CsvProvider(file=str(path)).first_bar_ts(request())


class TestFileLocation:
    def test_it_reads_symbol_csv_from_the_directory(self, tmp_path):
        write(tmp_path, HEADER + rows("2024-01-02"), name="MSFT.csv")
        pages = list(CsvProvider(directory=str(tmp_path)).fetch(request(symbol="MSFT")))
        assert list(pages[0]["ts"]) == [utc(2024, 1, 2)]

    def test_it_replaces_path_separators_in_the_symbol(self, tmp_path):
        write(tmp_path, HEADER + rows("2024-01-02"), name="EUR_USD.csv")
        pages = list(CsvProvider(directory=str(tmp_path)).fetch(request(symbol="EUR/USD")))
        assert len(pages[0]) == 1

    def test_it_lets_request_options_override_the_file(self, tmp_path):
        path = write(tmp_path, HEADER + rows("2024-01-02"), name="other.csv")
        pages = list(CsvProvider(file="/nonexistent.csv").fetch(request(file=str(path))))
        assert len(pages[0]) == 1

    def test_it_lets_request_options_override_the_time_zone(self, tmp_path):
        path = write(tmp_path, HEADER + rows("2024-01-02 09:30"))
        frame = fetch_all(path, request(tz="America/New_York"), tz="Asia/Tokyo")
        assert list(frame["ts"]) == [utc(2024, 1, 2, 14, 30)]

    def test_it_ignores_unknown_constructor_options(self, tmp_path):
        path = write(tmp_path, HEADER + rows("2024-01-02"))
        assert len(fetch(path, api_key="unused")) == 1


class TestErrors:
    def test_it_names_the_path_of_a_missing_file(self, tmp_path):
        missing = tmp_path / "NOPE.csv"
        with pytest.raises(ProviderConfigError, match=f"not found: {missing}"):
            fetch(missing)

    def test_it_needs_a_file_or_a_directory(self):
        with pytest.raises(ProviderConfigError, match="'file' or 'directory'"):
            list(CsvProvider().fetch(request()))

    def test_it_names_missing_columns_and_the_header_found(self, tmp_path):
        path = write(tmp_path, "Date,Open,High,Low,Close\n2024-01-02,1,2,0.5,1.5\n")
        with pytest.raises(ProviderError, match=r"missing required column\(s\) volume.*"
                                                r"\['Date', 'Open', 'High', 'Low', 'Close'\]"):
            fetch(path)

    def test_it_rejects_an_empty_file(self, tmp_path):
        with pytest.raises(ProviderError, match="empty"):
            fetch(write(tmp_path, ""))

    def test_it_rejects_an_unknown_time_zone(self, tmp_path):
        with pytest.raises(ProviderConfigError, match="unknown time zone"):
            fetch(write(tmp_path, HEADER + rows("2024-01-02")), tz="Mars/Olympus")

    def test_it_rejects_a_non_positive_page_size(self, tmp_path):
        with pytest.raises(ProviderConfigError, match="page_size"):
            fetch(write(tmp_path, HEADER + rows("2024-01-02")), page_size=0)
