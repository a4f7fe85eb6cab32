"""Bars from a CSV file per symbol.

File: ``file`` if given, else ``<directory>/<SYMBOL>.csv`` (path separators in the symbol, as in
``EUR/USD``, become ``_``: ``EUR_USD.csv``). Options in ``request.options`` override the
constructor's (``file``, ``directory``, ``tz``, ``date_format``, ``timestamp_label``, ``page_size``).

Format: a header row; the first column is the timestamp whatever its header says (even empty,
as pandas writes an index); ``open``/``high``/``low``/``close``/``volume`` are found by name in any
letter case among the other columns; anything else (``Adj Close``) is ignored. Timestamps may be:
  - a date only (``2024-01-02``, ``2024/01/02``): the daily bar of that session, 00:00 UTC of that
    date whatever ``tz`` says;
  - a date-time with an offset or ``Z``: converted to UTC;
  - a naive date-time: local time in ``tz`` (default UTC), converted to UTC. In the hour that
    repeats when clocks go back, the first occurrence of a wall time (in file order) is taken as
    daylight time and a repeat as standard time, as a file in time order means; a wall time that
    does not exist (clocks go forward) is an error naming the line;
  - a number: epoch seconds, or milliseconds / microseconds / nanoseconds when its magnitude says
    so (>= 1e11 / 1e14 / 1e17; 1e11 seconds would be the year 5138). ``20240102`` is a number
    too, so write dates with separators.
  - a numeric date with the day and the month in either order (``13/01/2024``, ``01.13.2024
    09:30``, ``1/2/2024``; separators ``/ . -``, a four-digit year): the order is decided from the
    file's own rows, never guessed. A first field above 12 anywhere makes the file day-first, a
    second field above 12 month-first (the reader's ``note`` says which, naming the row that
    decided it); a file where neither appears is refused naming a few ambiguous rows, and so is one
    with both. A two-digit year is refused too. ``date_format`` removes the question: ``day-first``
    or ``month-first``, a named layout (``dukascopy`` = ``%d.%m.%Y %H:%M:%S.%f``) or any strftime
    layout, which every value must then match (a layout without a time of day reads dates only, a
    ``%z`` layout reads offsets).
Anything else is an error naming the line and the value. Price or volume cells that are not
numbers become NaN: validation rejects those bars and the rest are stored.

A daily bar is its session date. For a ``1d`` request a date-time at midnight of its own zone
(naive in ``tz``, or with an offset: ``2024-01-02 00:00:00-05:00`` as yfinance writes it) is that
date at 00:00 UTC, the series' daily stamp, rather than the UTC instant (05:00).

Bar labels: ``timestamp_label="open"`` (the default) reads each timestamp as the bar's open time;
``"close"`` as its close (many intraday vendor files stamp 09:35 on the 09:30-09:35 bar): each is
moved back to the open the bar had on the series' grid (``calendars.bar_opens_from_closes``: one
bar length, or to the interval open for a session's shortened last bar). Daily bars are dates and
are never moved.

A file is checked whole before its first page is yielded (``inspect`` does the same without
yielding, for the command to run before it registers anything): readable UTF-8 text (a binary file
is refused naming the first NUL byte), a header with the required columns, every timestamp
readable, the date order decidable.

Rows whose cells are all empty are skipped; a row with values but no timestamp is an error.

Streaming: a first pass reads the file in chunks and parses only the timestamps, to check them
(so a bad line fails the fetch before any page is yielded) and to learn whether the rows within
[start, end) appear in ascending order. If they do (the usual case), a second pass streams the
rows in chunks of ``page_size`` and memory stays bounded by the page size. If they do not, the
file is read whole, stably sorted by ts and paged: memory then grows with the file.

Memory: the scan remembers, besides a few counters, only the rows in the repeated fall-back hour.
Pages hold ``page_size`` bars, except that a run of equal timestamps is never split across pages,
so validation sees every copy of a duplicate together (a page may then be a little longer).
Line numbers in messages count the header as line 1 and assume no quoted field spans lines.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd

from integrity.calendars import bar_opens_from_closes
from integrity.conf import conf
from integrity.providers.base import (
    BAR_COLUMNS,
    FetchRequest,
    ProviderConfigError,
    ProviderError,
    empty_bar_frame,
)

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("open", "high", "low", "close", "volume")
DEFAULT_PAGE_SIZE = 50_000

# ``date_format`` values that name a layout, and those that only say the order of day and month.
DATE_LAYOUTS = {"dukascopy": "%d.%m.%Y %H:%M:%S.%f"}
DATE_ORDERS = {"day-first": "dmy", "month-first": "mdy"}
_TIME_DIRECTIVES = set("HIMSfpXc")  # strptime directives that read a time of day

_DATE_ONLY = r"\d{4}[-/]\d{1,2}[-/]\d{1,2}"
# A time of day followed by a zone designator: "...09:30Z", "...09:30:00+01:00", "...09:30 -0500".
_HAS_OFFSET = r".*\d:\d{2}(?::\d{2}(?:[.,]\d+)?)?\s*(?:[zZ]|UTC|GMT|[+-]\d{2}(?::?\d{2})?)"
_NUMBER = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
_ISO_START = r"\d{4}-\d{2}-\d{2}(?:$|[T ]\d)"
_OFFSET_SUFFIX = r"(?:[zZ]|[+-]\d{2}(?::?\d{2})?)\s*$"
_ZONE_TAIL = r"\s*(?:[zZ]|UTC|GMT|[+-]\d{2}(?::?\d{2})?)$"  # only after a time of day (_HAS_OFFSET)
_ORDER_WORDS = {"dmy": "day-first", "mdy": "month-first"}
# Epoch magnitude thresholds: at or above each, the number is in the next finer unit.
_EPOCH_UNITS = ((1e11, "s"), (1e14, "ms"), (1e17, "us"), (float("inf"), "ns"))
_TS_DTYPE = "datetime64[ns, UTC]"
_MIN_SCAN_CHUNK = 10_000
# A numeric date whose first two fields are the day and the month in some order: 13/01/2024,
# 01.13.2024 09:30, 1-2-2024T09:30. Groups: first, second, year, the rest (a time of day).
_NUMERIC_DATE = r"^\s*(\d{1,2})[./-](\d{1,2})[./-](\d{4})((?:[T\s].*)?)$"
_NUMERIC_DATE_SHORT_YEAR = r"^\s*\d{1,2}([./-])\d{1,2}\1\d{2}(?:[T\s].*)?$"
_NUMERIC_DATE_PREFIX = r"\s*\d{1,2}[./-]\d{1,2}[./-]\d{2}"
_DETECT_CHUNK = 200_000
_EXAMPLES = 3
_SNIFF_BYTES = 1 << 16


@dataclass(frozen=True)
class DateFormat:
    """How to read text timestamps: ``order`` (dmy/mdy) for numeric dates, or a strftime ``layout``."""

    text: str
    order: str | None = None
    layout: str | None = None

    @property
    def has_time(self) -> bool:
        return self.layout is None or bool(_directives(self.layout) & _TIME_DIRECTIVES)

    @property
    def has_offset(self) -> bool:
        return self.layout is not None and bool(_directives(self.layout) & {"z", "Z"})


def _directives(layout: str) -> set[str]:
    return set(re.findall(r"%[-#]?([A-Za-z])", layout.replace("%%", "")))


def parse_date_format(value: Any) -> DateFormat | None:
    """A ``date_format`` option: None/"" (decide from the file), ``day-first``/``month-first``, a
    named layout or a strftime layout. Raises ``ProviderConfigError`` naming the problem."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise ProviderConfigError(f"date_format must be text, got {value!r}", provider="csv")
    text = value.strip()
    if text.lower() in DATE_ORDERS:
        return DateFormat(text=text.lower(), order=DATE_ORDERS[text.lower()])
    layout = DATE_LAYOUTS.get(text.lower(), text)
    hint = (f"use day-first, month-first, a named layout ({', '.join(DATE_LAYOUTS)}) or a strftime layout "
            f"such as '%d/%m/%Y %H:%M'")
    if "%" not in layout:
        raise ProviderConfigError(f"unknown date_format {text!r}: {hint}", provider="csv")
    # Round trip a date whose fields all differ: the layout must name a year, a month and a day.
    sample = datetime(2031, 12, 25, 13, 45, 56, 789000, tzinfo=UTC)
    try:
        parsed = datetime.strptime(sample.strftime(layout), layout)
    except ValueError as exc:
        raise ProviderConfigError(f"date_format {text!r} is not a usable strftime layout ({exc}): {hint}",
                                  provider="csv") from None
    if (parsed.year, parsed.month, parsed.day) != (2031, 12, 25):
        raise ProviderConfigError(f"date_format {text!r} must give the year, the month and the day "
                                  f"(e.g. %Y, %m, %d): {hint}", provider="csv")
    return DateFormat(text=text, layout=layout)


OPTION_NAMES = ("file", "directory", "tz", "date_format", "timestamp_label", "page_size")


def validate_options(options: Any, symbol: str = "") -> None:
    """Check an instrument's ``provider_options`` for csv (admin/API edits): the values it reads,
    and that a file or folder it names lies inside one of ``CSV_DATA_DIRS`` (an API user must not
    be able to make the server read, and quote in errors, any file it can open)."""
    if not isinstance(options, dict):
        raise ProviderConfigError("provider_options must be a JSON object", provider="csv")
    unknown = sorted(str(k) for k in options if k not in OPTION_NAMES)
    if unknown:
        raise ProviderConfigError(f"unknown option(s) {', '.join(unknown)}; csv accepts {', '.join(OPTION_NAMES)}",
                                  provider="csv")
    if options.get("tz") is not None:
        check_time_zone(options["tz"])
    parse_date_format(options.get("date_format"))
    check_timestamp_label(options.get("timestamp_label"))
    if options.get("page_size") is not None:
        check_page_size(options["page_size"])
    for key in ("file", "directory"):
        if options.get(key) is not None and not isinstance(options[key], str):
            raise ProviderConfigError(f"{key} must be a path (text), got {options[key]!r}", provider="csv")
        if options.get(key):
            check_data_path(key, options[key])


def check_data_path(key: str, path: str) -> str:
    """``path`` resolved (symlinks and ``..`` followed) if it lies inside one of ``CSV_DATA_DIRS``."""
    allowed = [os.path.realpath(d) for d in conf.CSV_DATA_DIRS]
    if not os.path.isabs(path):
        raise ProviderConfigError(f"{key} must be an absolute path, got {path!r}", provider="csv")
    resolved = os.path.realpath(path)
    if not any(resolved == root or resolved.startswith(root + os.sep) for root in allowed):
        where = ", ".join(allowed) if allowed else "none: CSV_DATA_DIRS is empty"
        raise ProviderConfigError(
            f"{key} {path!r} is outside the folders CSV_DATA_DIRS allows ({where}); the API and the admin may "
            "only name CSV files there (manage.py backfill --file loads any file)", provider="csv")
    return resolved


TIMESTAMP_LABELS = ("open", "close")


def check_timestamp_label(value: Any) -> str:
    """The ``timestamp_label`` option: what a file's timestamp marks, the bar's open or its close."""
    label = "open" if value is None or value == "" else value
    if label not in TIMESTAMP_LABELS:
        raise ProviderConfigError(f"timestamp_label must be 'open' or 'close' (what a row's timestamp marks), "
                                  f"got {value!r}", provider="csv")
    return label


def check_time_zone(tz: Any) -> str:
    tz = str(tz or "UTC")
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ProviderConfigError(f"unknown time zone {tz!r} (use an IANA name such as America/New_York)",
                                  provider="csv") from None
    return tz


def check_page_size(raw: Any) -> int:
    try:
        size = int(raw)
    except (TypeError, ValueError):
        size = 0
    if size < 1:
        raise ProviderConfigError(f"page_size must be a positive integer, got {raw!r}", provider="csv")
    return size


@dataclass(frozen=True)
class CsvInspection:
    """What a whole-file check found: the bars, their first and last time, how dates were read."""

    path: str
    bars: int
    first: datetime | None
    last: datetime | None
    note: str | None


class CsvProvider:
    name = "csv"

    def __init__(self, file: str | None = None, directory: str | None = None, tz: str = "UTC",
                 page_size: int = DEFAULT_PAGE_SIZE, date_format: str | None = None,
                 timestamp_label: str = "open", **ignored: Any):
        self.file = file
        self.directory = directory
        self.tz = tz
        self.page_size = page_size
        self.date_format = date_format
        self.timestamp_label = timestamp_label

    # -- configuration -------------------------------------------------------------------------

    def _setting(self, request: FetchRequest, key: str):
        options = request.options or {}
        value = options.get(key)
        return value if value is not None else getattr(self, key)

    def resolve_path(self, request: FetchRequest) -> str:
        file = self._setting(request, "file")
        if file:
            return os.fspath(file)
        directory = self._setting(request, "directory")
        if not directory:
            raise ProviderConfigError("set either 'file' or 'directory' for the csv provider",
                                      provider=self.name)
        stem = request.symbol.replace("/", "_").replace("\\", "_")
        if not stem or stem in {".", ".."}:
            raise ProviderConfigError(f"symbol {request.symbol!r} cannot name a file", provider=self.name)
        return os.path.join(os.fspath(directory), f"{stem}.csv")

    def _page_size(self, request: FetchRequest) -> int:
        return check_page_size(self._setting(request, "page_size"))

    def _tz(self, request: FetchRequest) -> str:
        return check_time_zone(self._setting(request, "tz"))

    def _reader(self, request: FetchRequest) -> _CsvReader:
        # Every option is checked before the file is opened.
        tz = self._tz(request)
        date_format = parse_date_format(self._setting(request, "date_format"))
        to_open = None
        if check_timestamp_label(self._setting(request, "timestamp_label")) == "close" and request.timeframe != "1d":
            def to_open(closes: np.ndarray) -> np.ndarray:
                return bar_opens_from_closes(request.calendar, request.timeframe, closes, request.alignment)
        return _CsvReader(self.resolve_path(request), tz, provider=self.name, date_format=date_format,
                          daily=request.timeframe == "1d", to_open=to_open)

    # -- fetching ------------------------------------------------------------------------------

    def fetch(self, request: FetchRequest) -> Iterator[pd.DataFrame]:
        page_size = self._page_size(request)
        reader = self._reader(request)
        start, end = _utc(request.start), _utc(request.end)

        scan = reader.scan(start, end, page_size)
        if reader.note:
            logger.info("%s %s: %s", request.symbol, reader.path, reader.note)
        if scan.first_row is None:
            return
        if scan.in_order:
            rows = reader.stream(start, end, page_size, scan.first_row, scan.last_row)
        else:
            rows = iter([reader.read_all_sorted(start, end)])
        yield from _pages(rows, page_size)

    def first_bar_ts(self, request: FetchRequest) -> datetime | None:
        """The earliest bar in the file (any order), or None for a file without bars.

        A file is the whole source: a series loaded from one for the first time starts at its first
        bar rather than at the configured lookback, so an old history is not cut silently.
        """
        page_size = self._page_size(request)
        scan = self._reader(request).scan(*_WHOLE_FILE, page_size)
        return None if scan.min_ts is None else pd.Timestamp(scan.min_ts, tz="UTC").to_pydatetime()

    def inspect(self, request: FetchRequest) -> CsvInspection:
        """Check the whole file as a fetch would, without yielding bars: every option, the header,
        every timestamp, the date order. Raises ``ProviderError`` (``ProviderConfigError`` for an
        option or a missing file) naming the problem; a file without a single bar is refused too.
        The command runs it before it registers an instrument or claims a series."""
        page_size = self._page_size(request)
        reader = self._reader(request)
        scan = reader.scan(*_WHOLE_FILE, page_size)
        if not scan.count:
            raise reader._error("CSV file has a header but no bars")
        as_dt = lambda ns: pd.Timestamp(ns, tz="UTC").to_pydatetime()  # noqa: E731
        return CsvInspection(path=reader.path, bars=scan.count, first=as_dt(scan.min_ts), last=as_dt(scan.max_ts),
                             note=reader.note)


_WHOLE_FILE = (pd.Timestamp.min.tz_localize("UTC"), pd.Timestamp.max.tz_localize("UTC"))


class _Scan:
    def __init__(self):
        self.first_row: int | None = None  # data row index of the first row within range
        self.last_row: int | None = None
        self.in_order = True
        self.min_ts: int | None = None  # ns since the epoch, over the rows within range
        self.max_ts: int | None = None
        self.count = 0  # rows within range
        self._last_ts: int | None = None

    def add(self, offset: int, ts: pd.Series, in_range: np.ndarray) -> None:
        positions = np.flatnonzero(in_range)
        if not len(positions):
            return
        if self.first_row is None:
            self.first_row = offset + int(positions[0])
        self.last_row = offset + int(positions[-1])
        values = ts.array.asi8[positions]
        low, high = int(values.min()), int(values.max())
        self.min_ts = low if self.min_ts is None else min(self.min_ts, low)
        self.max_ts = high if self.max_ts is None else max(self.max_ts, high)
        self.count += len(positions)
        if self.in_order:
            ascending = bool((np.diff(values) >= 0).all())
            follows = self._last_ts is None or values[0] >= self._last_ts
            self.in_order = ascending and follows
        self._last_ts = int(values[-1])


class _CsvReader:
    def __init__(self, path: str, tz: str, provider: str, date_format: DateFormat | None = None,
                 daily: bool = False, to_open: Callable[[np.ndarray], np.ndarray] | None = None):
        self.path = path
        self.to_open = to_open  # close-labelled rows: bar close times (ns) -> bar open times
        self.tz = tz
        self.provider = provider
        self.date_format = date_format
        self.daily = daily  # a 1d request: midnight of a bar's own zone is its session date
        # Day/month order of numeric dates: given, or decided from the whole file when first needed.
        self._order: str | None = date_format.order if date_format else None
        self.note: str | None = None  # how the dates were read, when the file decided it
        self.header = self._read_header()
        self.width = len(self.header)
        self.columns = self._locate_columns()
        # Fall-back hour bookkeeping, see _second_occurrences.
        self._resolving_folds = True
        self._seen_walls = np.empty(0, dtype=np.int64)
        self._fold_rows: set[int] = set()

    def _error(self, message: str, cls=ProviderError) -> ProviderError:
        return cls(message, provider=self.provider, path=self.path)

    def _read_header(self) -> list[str]:
        if not os.path.isfile(self.path):
            raise self._error(f"CSV file not found: {self.path}", ProviderConfigError)
        self._refuse_binary()
        try:
            with open(self.path, newline="", encoding="utf-8-sig") as handle:
                lines = csv.reader(handle)
                header = next(lines, None)
                first = next(lines, None)
        except UnicodeDecodeError as exc:
            raise self._error(f"not a UTF-8 text file (byte 0x{exc.object[exc.start]:02x} at offset "
                              f"{exc.start} cannot be decoded): save it as UTF-8 CSV") from None
        except (OSError, csv.Error) as exc:
            raise self._error(f"cannot read CSV file: {exc}") from exc
        if not header or not any(cell.strip() for cell in header):
            raise self._error("CSV file is empty (no header row)")
        header = [cell.strip() for cell in header]
        # pandas writes an index without a header cell: "Open,High,..." over "2024-01-02,1,..."
        if first is not None and len(first) == len(header) + 1:
            header = ["", *header]
        return header

    def _refuse_binary(self) -> None:
        """A NUL byte never occurs in CSV text: it is a binary file (an archive, a spreadsheet)."""
        try:
            with open(self.path, "rb") as handle:
                head = handle.read(_SNIFF_BYTES)
        except OSError as exc:
            raise self._error(f"cannot read CSV file: {exc}") from exc
        nul = head.find(b"\x00")
        if nul >= 0:
            raise self._error(f"a binary file, not CSV text (a NUL byte at offset {nul})")

    def _locate_columns(self) -> list[int]:
        positions: dict[str, int] = {}
        for i, name in enumerate(self.header[1:], start=1):
            positions.setdefault(name.lower(), i)
        missing = [c for c in REQUIRED_COLUMNS if c not in positions]
        if missing:
            raise self._error(
                f"CSV file is missing required column(s) {', '.join(missing)}; the first column must "
                f"be the timestamp, then open, high, low, close, volume in any order and letter case; "
                f"header found: {self.header}"
            )
        return [positions[c] for c in REQUIRED_COLUMNS]

    def _read(self, usecols: list[int], chunksize: int | None, dtype=None):
        try:
            return pd.read_csv(
                self.path,
                header=None,
                skiprows=1,
                names=[f"c{i}" for i in range(self.width)],
                usecols=usecols,
                index_col=False,
                dtype=dtype,
                # No dtype: the C parser reads numeric columns natively (fast); a column with
                # any non-numeric cell comes back as strings and is coerced below.
                encoding="utf-8-sig",
                skip_blank_lines=False,  # keeps row index == line number - 2
                chunksize=chunksize,
            )
        except (OSError, ValueError, pd.errors.ParserError) as exc:
            raise self._error(f"cannot parse CSV file: {exc}") from exc

    def _chunks(self, usecols: list[int], chunksize: int, dtype=None) -> Iterator[tuple[int, pd.DataFrame]]:
        offset = 0
        reader = self._read(usecols, chunksize, dtype)
        try:
            with reader:
                for chunk in reader:
                    yield offset, chunk
                    offset += len(chunk)
        except UnicodeDecodeError:
            raise self._error(f"not a UTF-8 text file (a byte after line {offset + 1} cannot be "
                              f"decoded): save it as UTF-8 CSV") from None
        except (ValueError, pd.errors.ParserError) as exc:
            raise self._error(f"cannot parse CSV file: {exc}") from exc

    def _blank(self, chunk: pd.DataFrame) -> np.ndarray:
        return chunk.isna().all(axis=1).to_numpy()

    def scan(self, start: pd.Timestamp, end: pd.Timestamp, chunksize: int) -> _Scan:
        result = _Scan()
        # Nothing but counters outlives a chunk here, so chunks larger than a page cost little
        # and save time. All used columns are read (tokenising dominates the cost anyway) so
        # that "blank row" means the same here as when streaming.
        for offset, chunk in self._chunks([0, *self.columns], max(chunksize, _MIN_SCAN_CHUNK)):
            blank = self._blank(chunk)
            ts = self.parse_timestamps(chunk.iloc[:, 0], offset, blank)
            in_range = ~blank & (ts >= start).to_numpy() & (ts < end).to_numpy()
            result.add(offset, ts, in_range)
        self._resolving_folds = False
        return result

    def stream(self, start, end, chunksize: int, first_row: int, last_row: int) -> Iterator[pd.DataFrame]:
        for offset, chunk in self._chunks([0, *self.columns], chunksize):
            if offset + len(chunk) <= first_row:
                continue
            if offset > last_row:
                return
            yield self._bars(chunk, offset, start, end)

    def read_all_sorted(self, start, end) -> pd.DataFrame:
        bars = self._bars(self._read([0, *self.columns], None), 0, start, end)
        return bars.sort_values("ts", kind="stable").reset_index(drop=True)

    def _bars(self, chunk: pd.DataFrame, offset: int, start, end) -> pd.DataFrame:
        blank = self._blank(chunk)
        ts = self.parse_timestamps(chunk.iloc[:, 0], offset, blank)
        keep = ~blank & (ts >= start).to_numpy() & (ts < end).to_numpy()
        # usecols returns columns in file order; pick each by its file position.
        by_position = dict(zip(sorted([0, *self.columns]), range(chunk.shape[1]), strict=True))
        data = {"ts": ts[keep].reset_index(drop=True)}
        for name, position in zip(BAR_COLUMNS[1:], self.columns, strict=True):
            cells = chunk.iloc[keep, by_position[position]].reset_index(drop=True)
            if cells.dtype != np.float64:
                cells = pd.to_numeric(cells, errors="coerce").astype("float64")
            data[name] = cells
        return pd.DataFrame(data, columns=BAR_COLUMNS)

    # -- timestamps ----------------------------------------------------------------------------

    def parse_timestamps(self, raw: pd.Series, offset: int, blank: np.ndarray) -> pd.Series:
        """UTC timestamps for one chunk of the first column; raises on the first bad value."""
        raw = raw.reset_index(drop=True)
        if self.date_format is not None and self.date_format.layout is not None:
            out = self._parse_layout(raw, offset)
            expected = f"date_format {self.date_format.text!r}"
        elif pd.api.types.is_numeric_dtype(raw) and not pd.api.types.is_bool_dtype(raw):
            out = _parse_epoch(raw)
            expected = None
        else:
            text = raw.astype("str").where(raw.notna())
            out = self._parse_uniform(text, offset)
            if out is None:
                # Numeric dates (13/01/2024) become ISO in the file's day/month order first:
                # the flexible parser below would otherwise guess, month first.
                text = self._numeric_dates_to_iso(text, offset)
                out = self._parse_uniform(text, offset)
            if out is None:
                out = self._parse_each_kind(text, offset)
            if self.daily:
                out = self._aware_midnights_as_dates(text, out)
            expected = None
        bad = out.isna().to_numpy() & ~blank
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            if expected is None:
                expected = "a date, an ISO date-time or epoch seconds/milliseconds"
                if self._order:
                    expected += f"; numeric dates {_ORDER_WORDS[self._order]}"
            raise self._error(
                f"unparseable timestamp {_cell_text(raw.iloc[row])!r} at line {offset + row + 2}"
                f" (expected {expected})"
            )
        if self.to_open is not None:
            out = self._closes_to_opens(out)
        return out

    def _closes_to_opens(self, out: pd.Series) -> pd.Series:
        values = pd.DatetimeIndex(out).as_unit("ns")
        known = ~values.isna()
        if not known.any():
            return out
        ns = values.asi8.copy()
        ns[known] = self.to_open(ns[known])
        moved = pd.DatetimeIndex(ns.view("M8[ns]")).tz_localize("UTC")
        return pd.Series(moved.where(known), index=out.index).astype(_TS_DTYPE)

    # -- numeric dates: day/month order --------------------------------------------------------

    def _numeric_dates_to_iso(self, text: pd.Series, offset: int) -> pd.Series:
        """Numeric dates rewritten as ISO (``13/01/2024 09:30`` → ``2024-01-13 09:30``) in the
        file's day/month order; other values unchanged."""
        padded = _padded_dates(text)
        if padded is not None:
            # The usual machine export (zero-padded, DD.MM.YYYY…): rearranged as bytes, ~10x faster.
            rows, chars = padded
            day, month = (slice(0, 2), slice(3, 5)) if self._date_order() == "dmy" else (slice(3, 5), slice(0, 2))
            iso = chars.copy()
            iso[:, 0:4], iso[:, 4], iso[:, 5:7], iso[:, 7], iso[:, 8:10] = (
                chars[:, 6:10], ord("-"), chars[:, month], ord("-"), chars[:, day])
            text = text.copy()
            text.iloc[rows] = iso.view(f"S{iso.shape[1]}").ravel().astype("U")
            unhandled = text.notna().to_numpy(copy=True)
            unhandled[rows] = False
        else:
            unhandled = text.notna().to_numpy()
        if not unhandled.any():
            return text
        candidates = pd.Series(False, index=text.index)
        candidates[unhandled] = text[unhandled].str.match(_NUMERIC_DATE_PREFIX, na=False)
        if not candidates.any():
            return text
        short = text[candidates].str.match(_NUMERIC_DATE_SHORT_YEAR, na=False)
        if short.any():
            row = int(short.index[short.to_numpy()][0])
            raise self._error(
                f"timestamp {_cell_text(text.iloc[row])!r} at line {offset + row + 2} has a two-digit year: "
                f"pass a date_format (--date-format) that says how to read it, e.g. '%d/%m/%y %H:%M'")
        parts = text[candidates].str.extract(_NUMERIC_DATE)
        found = parts[0].notna()
        if not found.any():
            return text
        parts = parts[found]
        order = self._date_order()
        day, month = (parts[0], parts[1]) if order == "dmy" else (parts[1], parts[0])
        rest = parts[3].str.replace(r"^\s+", " ", regex=True)
        text = text.copy()
        text[parts.index] = parts[2] + "-" + month.str.zfill(2) + "-" + day.str.zfill(2) + rest
        return text

    def _date_order(self) -> str:
        """dmy or mdy: given by ``date_format``, else decided from every row of the file (once).

        Evidence: a first field above 12 (a day) or a second above 12 (a day, so month first).
        Neither anywhere (every date could be read both ways) or both (the file mixes orders)
        is an error naming the rows, never a guess.
        """
        if self._order is not None:
            return self._order
        day_first: tuple[int, str] | None = None  # (line, value) of the first evidence
        month_first: tuple[int, str] | None = None
        ambiguous: list[tuple[int, str]] = []
        ambiguous_rows = 0
        for offset, chunk in self._chunks([0], _DETECT_CHUNK, dtype=str):
            text = chunk.iloc[:, 0].reset_index(drop=True)
            found, first, second = _date_fields(text)
            if not found.any():
                continue
            with np.errstate(invalid="ignore"):
                is_day_first = found & (first > 12)
                is_month_first = found & (second > 12)
                unclear = found & (first <= 12) & (second <= 12) & (first != second)

            def example(mask, text=text, offset=offset):
                row = int(np.flatnonzero(mask)[0])
                return offset + row + 2, str(text.iloc[row]).strip()

            if day_first is None and is_day_first.any():
                day_first = example(is_day_first)
            if month_first is None and is_month_first.any():
                month_first = example(is_month_first)
            ambiguous_rows += int(unclear.sum())
            if len(ambiguous) < _EXAMPLES and unclear.any():
                rows = np.flatnonzero(unclear)[: _EXAMPLES - len(ambiguous)]
                ambiguous.extend((offset + int(r) + 2, str(text.iloc[int(r)]).strip()) for r in rows)
        if day_first and month_first:
            raise self._error(
                f"dates are neither all day-first nor all month-first: line {day_first[0]} "
                f"{day_first[1]!r} has the day first, line {month_first[0]} {month_first[1]!r} the month first")
        if day_first or month_first:
            self._order = "dmy" if day_first else "mdy"
            line, value = day_first or month_first
            self.note = f"dates read {_ORDER_WORDS[self._order]} (line {line}: {value})"
            return self._order
        if ambiguous:
            rows = ", ".join(f"line {line} {value!r}" for line, value in ambiguous)
            raise self._error(
                f"cannot tell whether the dates are day-first or month-first: no day above 12 in the file "
                f"({ambiguous_rows:,} ambiguous row(s), e.g. {rows}); pass a date_format (--date-format day-first or month-first, or a layout "
                f"such as '%d/%m/%Y %H:%M')")
        self._order = "dmy"  # every date reads the same both ways (05/05/2024)
        return self._order

    def _parse_layout(self, raw: pd.Series, offset: int) -> pd.Series:
        """Every value in the explicit strftime layout of ``date_format``."""
        layout = self.date_format
        text = raw.astype("str").where(raw.notna())
        fixed = _fixed_layout(layout.layout)
        parsed = _parse_fixed(text, *fixed) if fixed else None
        rest = text.notna() if parsed is None else (parsed.isna() & text.notna())
        if parsed is None or rest.any():  # no fast path, or values it refused (padding spaces, …)
            try:
                slow = pd.to_datetime(text[rest].str.strip(), format=layout.layout, errors="coerce",
                                      utc=layout.has_offset)
            except (ValueError, TypeError, OverflowError) as exc:
                raise self._error(f"cannot read timestamps with date_format {layout.text!r}: {exc}") from None
            if parsed is None:
                dtype = _TS_DTYPE if layout.has_offset else "datetime64[ns]"
                parsed = pd.Series(pd.NaT, index=text.index, dtype=dtype)
            parsed = parsed.copy()
            parsed[rest] = slow
        if layout.has_offset:
            return parsed.astype(_TS_DTYPE)
        if not layout.has_time:  # dates only: the daily bar of that session, whatever tz says
            return parsed.dt.tz_localize("UTC").astype(_TS_DTYPE)
        out = pd.Series(pd.NaT, index=raw.index, dtype=_TS_DTYPE)
        present = parsed.notna().to_numpy()
        if present.any():
            out[present] = self._localize(parsed[present].dt.as_unit("ns"), offset)
        return out

    def _aware_midnights_as_dates(self, text: pd.Series, out: pd.Series) -> pd.Series:
        """Daily bars stamped with an offset at midnight of their zone are their session date."""
        present = text.notna() & out.notna()
        aware = present & text.str.fullmatch(_HAS_OFFSET, na=False)
        if not aware.any():
            return out
        walls = pd.to_datetime(text[aware].str.strip().str.replace(_ZONE_TAIL, "", regex=True),
                               format="ISO8601", errors="coerce")
        midnight = walls.notna() & (walls == walls.dt.normalize())
        if midnight.any():
            out = out.copy()
            out[midnight.index[midnight.to_numpy()]] = walls[midnight].dt.tz_localize("UTC").astype(_TS_DTYPE)
        return out

    def _parse_uniform(self, raw: pd.Series, offset: int) -> pd.Series | None:
        """Fast path for the usual file, where every value has the same kind: all epoch numbers,
        or all ISO 8601 (dates and naive date-times, or all with a UTC offset). None otherwise."""
        present = raw.dropna()
        if present.empty:
            return pd.Series(pd.NaT, index=raw.index, dtype=_TS_DTYPE)
        first = str(present.iloc[0]).strip()
        if re.fullmatch(_NUMBER, first):
            numbers = pd.to_numeric(raw, errors="coerce")
            if int(numbers.notna().sum()) != len(present):
                return None
            return _parse_epoch(numbers)
        if not re.match(_ISO_START, first):
            return None
        try:
            parsed = pd.to_datetime(raw, format="ISO8601")
        except (ValueError, TypeError, OverflowError):
            # Offsets that change with DST ("-05:00" then "-04:00") are still uniform if every
            # value carries one.
            if not re.fullmatch(_HAS_OFFSET, first):
                return None
            if not bool(present.str.contains(_OFFSET_SUFFIX, regex=True).all()):
                return None
            try:
                parsed = pd.to_datetime(raw, format="ISO8601", utc=True)
            except (ValueError, TypeError, OverflowError):
                return None
        if not pd.api.types.is_datetime64_any_dtype(parsed):
            return None
        if parsed.dt.tz is not None:
            return parsed.dt.tz_convert("UTC").astype(_TS_DTYPE)
        if self.tz == "UTC":  # date-only values land on 00:00 UTC either way
            return parsed.dt.tz_localize("UTC").astype(_TS_DTYPE)
        out = pd.Series(pd.NaT, index=raw.index, dtype=_TS_DTYPE)
        date_only = (raw.str.len() <= len("YYYY-MM-DD")).fillna(False).to_numpy(dtype=bool)
        out[date_only] = parsed[date_only].dt.tz_localize("UTC").astype(_TS_DTYPE)
        if not date_only.all():
            out[~date_only] = self._localize(parsed[~date_only].dt.as_unit("ns"), offset)
        return out

    def _parse_each_kind(self, raw: pd.Series, offset: int) -> pd.Series:
        """Slow path: classify every value (epoch, date, with offset, naive) and parse each kind."""
        text = raw.fillna("").astype("str").str.strip()
        out = pd.Series(pd.NaT, index=text.index, dtype=_TS_DTYPE)

        numeric = text.str.fullmatch(_NUMBER).to_numpy()
        date_only = text.str.fullmatch(_DATE_ONLY).to_numpy()
        aware = ~numeric & ~date_only & text.str.fullmatch(_HAS_OFFSET).to_numpy()
        naive = ~numeric & ~date_only & ~aware & (text != "").to_numpy()

        if numeric.any():
            out[numeric] = _parse_epoch(pd.to_numeric(text[numeric], errors="coerce"))
        if date_only.any():
            dates = pd.to_datetime(text[date_only].str.replace("/", "-"), format="%Y-%m-%d",
                                   errors="coerce")
            out[date_only] = dates.dt.tz_localize("UTC").astype(_TS_DTYPE)
        if aware.any():
            out[aware] = _to_datetime(text[aware], utc=True).astype(_TS_DTYPE)
        if naive.any():
            out[naive] = self._localize(_to_datetime(text[naive], utc=False), offset)
        return out

    def _second_occurrences(self, naive: pd.Series, offset: int, positions: np.ndarray) -> np.ndarray:
        """Which ambiguous wall times (fall-back hour) are a repeat, hence standard time.

        The first time a wall time of the repeated hour is met in file order it is taken as
        daylight time, a repeat as standard time (Python's fold=0 / fold=1), which is right for
        a file in time order. The decision is made in the scan pass, in file order, and
        remembered by row, so a repeat split across chunks, or a chunk the stream skips, cannot
        change it.
        """
        rows = offset + naive.index.to_numpy(dtype=np.int64)[positions]  # index = row in chunk
        if self._resolving_folds:
            walls = naive.array.asi8[positions]
            repeat = pd.Series(walls).duplicated().to_numpy() | np.isin(walls, self._seen_walls)
            self._seen_walls = np.union1d(self._seen_walls, walls)
            self._fold_rows.update(int(r) for r in rows[repeat])
        else:
            repeat = np.isin(rows, np.fromiter(self._fold_rows, dtype=np.int64))
        second = np.zeros(len(naive), dtype=bool)
        second[positions[repeat]] = True
        return second

    def _localize(self, naive: pd.Series, offset: int) -> pd.Series:
        if naive.dt.tz is not None:  # mixed-format parsing may still find an offset
            return naive.dt.tz_convert("UTC").astype(_TS_DTYPE)
        if self.tz == "UTC":
            return naive.dt.tz_localize("UTC").astype(_TS_DTYPE)
        naive = naive.dt.as_unit("ns")
        if self.daily:
            midnight = (naive == naive.dt.normalize()).to_numpy()
            if midnight.any():  # a daily bar at local midnight is its session date
                out = pd.Series(pd.NaT, index=naive.index, dtype=_TS_DTYPE)
                out[midnight] = naive[midnight].dt.tz_localize("UTC").astype(_TS_DTYPE)
                if not midnight.all():
                    out[~midnight] = self._localize_wall_times(naive[~midnight], offset)
                return out
        return self._localize_wall_times(naive, offset)

    def _localize_wall_times(self, naive: pd.Series, offset: int) -> pd.Series:
        n = len(naive)
        as_dst = naive.dt.tz_localize(self.tz, ambiguous=np.ones(n, dtype=bool), nonexistent="NaT")
        as_std = naive.dt.tz_localize(self.tz, ambiguous=np.zeros(n, dtype=bool), nonexistent="NaT")
        ambiguous = (as_dst.notna() & (as_dst != as_std)).to_numpy()
        local = as_dst
        if ambiguous.any():
            second = self._second_occurrences(naive, offset, np.flatnonzero(ambiguous))
            local = as_dst.where(~second, as_std)
        gap = local.isna() & naive.notna()
        if gap.any():
            row = gap.index[gap.to_numpy()][0]
            raise self._error(
                f"local time {naive[row]} does not exist in {self.tz} (clocks go forward) at line "
                f"{offset + int(row) + 2}"
            )
        return local.dt.tz_convert("UTC").astype(_TS_DTYPE)


def _ascii_matrix(text: pd.Series) -> tuple[np.ndarray, np.ndarray] | None:
    """(positions of the present values, their bytes as a zero-padded uint8 matrix), or None when
    there is no value or a value is not ASCII. Lets fixed-width dates be read with array operations
    instead of per-value string calls (about ten times faster)."""
    present = np.flatnonzero(text.notna().to_numpy())
    if not len(present):
        return None
    try:
        raw = text.to_numpy(dtype=object)[present].astype("S")
    except (UnicodeEncodeError, ValueError, TypeError):
        return None
    width = max(raw.dtype.itemsize, 1)
    return present, raw.view(np.uint8).reshape(len(raw), width)


def _is_digit(chars: np.ndarray) -> np.ndarray:
    return (chars >= ord("0")) & (chars <= ord("9"))


def _padded_dates(text: pd.Series) -> tuple[np.ndarray, np.ndarray] | None:
    """Rows that start with a zero-padded numeric date (``13.01.2024``, ``01/13/2024``) followed by
    the end of the value, a space or ``T``: (their positions, their bytes). None when there are none."""
    found = _ascii_matrix(text)
    if found is None or found[1].shape[1] < 10:
        return None
    present, chars = found
    ok = _is_digit(chars[:, [0, 1, 3, 4, 6, 7, 8, 9]]).all(axis=1)
    ok &= np.isin(chars[:, 2], np.frombuffer(b"./-", dtype=np.uint8)) & (chars[:, 5] == chars[:, 2])
    if chars.shape[1] > 10:
        ok &= np.isin(chars[:, 10], np.frombuffer(b"\x00 T", dtype=np.uint8))
    if not ok.any():
        return None
    return present[ok], chars[ok]


def _date_fields(text: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(is a numeric date, first field, second field) per value, for the day/month decision."""
    found = np.zeros(len(text), dtype=bool)
    first = np.full(len(text), np.nan)
    second = np.full(len(text), np.nan)
    padded = _padded_dates(text)
    if padded is not None:
        rows, chars = padded
        digits = chars.astype(np.int64) - ord("0")
        found[rows] = True
        first[rows] = digits[:, 0] * 10 + digits[:, 1]
        second[rows] = digits[:, 3] * 10 + digits[:, 4]
    rest = ~found & text.notna().to_numpy()
    if rest.any():
        parts = text[rest].str.extract(_NUMERIC_DATE)
        hit = parts[0].notna().to_numpy()
        rows = np.flatnonzero(rest)[hit]
        found[rows] = True
        first[rows] = pd.to_numeric(parts[0][hit]).to_numpy()
        second[rows] = pd.to_numeric(parts[1][hit]).to_numpy()
    return found, first, second


_FIXED_FIELDS = {"Y": 4, "m": 2, "d": 2, "H": 2, "M": 2, "S": 2}


def _fixed_layout(layout: str) -> tuple[list[tuple[str, str, int]], int, bool] | None:
    """A strftime layout made only of zero-padded numeric fields and literals (``%d.%m.%Y
    %H:%M:%S.%f``): its parts as (``field``/``literal``, directive or character, position), its
    width before a trailing ``%f``, and whether it ends with one. None for anything of variable
    width or with names (``%b``, ``%y``, ``%p``, ``%z`` …): pandas reads those."""
    parts: list[tuple[str, str, int]] = []
    position, i, fraction = 0, 0, False
    while i < len(layout):
        if layout[i] == "%":
            code = layout[i + 1:i + 2]
            if code in _FIXED_FIELDS:
                parts.append(("field", code, position))
                position += _FIXED_FIELDS[code]
            elif code == "f" and i + 2 == len(layout):
                fraction = True
            elif code == "%":
                parts.append(("literal", "%", position))
                position += 1
            else:
                return None
            i += 2
        elif layout[i].isascii():
            parts.append(("literal", layout[i], position))
            position += 1
            i += 1
        else:
            return None
    return parts, position, fraction


def _parse_fixed(text: pd.Series, parts: list[tuple[str, str, int]], width: int,
                 fraction: bool) -> pd.Series | None:
    """Naive datetimes of the values that match a fixed layout exactly (NaT for the others), or
    None when the values are not ASCII text. Each value is checked byte by byte against the layout,
    rewritten as ISO 8601 and parsed by the fast ISO parser (which also refuses a 13th month)."""
    found = _ascii_matrix(text)
    out = pd.Series(pd.NaT, index=text.index, dtype="datetime64[ns]")
    if found is None:
        return None if text.notna().any() else out
    present, chars = found
    if chars.shape[1] < width + (1 if fraction else 0):
        return out  # every value is too short
    lengths = (chars != 0).sum(axis=1)
    if fraction:
        digits = chars[:, width:]
        ok = (lengths > width) & (lengths <= width + 9) & _is_digit(chars[:, width])
        ok &= (_is_digit(digits) | (digits == 0)).all(axis=1)
    else:
        ok = lengths == width
    fields: dict[str, np.ndarray] = {}
    for kind, value, position in parts:
        if kind == "literal":
            ok &= chars[:, position] == ord(value)
        else:
            span = chars[:, position:position + _FIXED_FIELDS[value]]
            ok &= _is_digit(span).all(axis=1)
            fields[value] = span
    if not ok.any():
        return out
    zeros = np.full((len(chars), 2), ord("0"), dtype=np.uint8)
    pieces = [fields["Y"], np.full((len(chars), 1), ord("-"), np.uint8), fields["m"],
              np.full((len(chars), 1), ord("-"), np.uint8), fields["d"]]
    if {"H", "M", "S"} & set(fields) or fraction:
        pieces += [np.full((len(chars), 1), ord(" "), np.uint8), fields.get("H", zeros),
                   np.full((len(chars), 1), ord(":"), np.uint8), fields.get("M", zeros),
                   np.full((len(chars), 1), ord(":"), np.uint8), fields.get("S", zeros)]
    if fraction:
        pieces += [np.full((len(chars), 1), ord("."), np.uint8), chars[:, width:]]
    iso = np.ascontiguousarray(np.hstack(pieces)[ok])
    strings = pd.Series(iso.view(f"S{iso.shape[1]}").ravel().astype("U"), index=text.index[present[ok]])
    out[strings.index] = pd.to_datetime(strings, format="ISO8601", errors="coerce").dt.as_unit("ns")
    return out


def _cell_text(value) -> str:
    return "" if pd.isna(value) else str(value).strip()


def _parse_epoch(numbers: pd.Series) -> pd.Series:
    """Epoch numbers to UTC, the unit chosen per value by its magnitude."""
    magnitude = numbers.abs()
    out = pd.Series(pd.NaT, index=numbers.index, dtype=_TS_DTYPE)
    lower = 0.0
    for upper, unit in _EPOCH_UNITS:
        band = ((magnitude >= lower) & (magnitude < upper)).to_numpy()
        if band.any():
            out[band] = pd.to_datetime(numbers[band], unit=unit, utc=True, errors="coerce").astype(_TS_DTYPE)
        lower = upper
    return out


def _to_datetime(text: pd.Series, utc: bool) -> pd.Series:
    """ISO 8601 first (fast); whatever it cannot read goes through the flexible parser.

    Values still unreadable stay NaT, for the caller to report with their line number.
    """
    parsed = pd.to_datetime(text, format="ISO8601", utc=utc, errors="coerce").dt.as_unit("ns")
    failed = parsed.isna() & (text != "")
    if not failed.any():
        return parsed
    try:
        retry = pd.to_datetime(text[failed], format="mixed", utc=utc, errors="coerce")
    except (ValueError, TypeError, OverflowError):  # e.g. naive and aware values mixed together
        return parsed
    if not pd.api.types.is_datetime64_any_dtype(retry) or retry.dt.tz != parsed.dt.tz:
        return parsed
    parsed = parsed.copy()
    parsed[failed] = retry.dt.as_unit("ns")
    return parsed


def _utc(value: datetime) -> pd.Timestamp:
    stamp = pd.Timestamp(value)
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return stamp.as_unit("ns")


def _pages(chunks: Iterator[pd.DataFrame], page_size: int) -> Iterator[pd.DataFrame]:
    """Regroup ascending bars into pages of ``page_size`` without splitting a run of equal ts."""
    buffer = empty_bar_frame()
    for chunk in chunks:
        if chunk.empty:
            continue
        buffer = chunk if buffer.empty else pd.concat([buffer, chunk], ignore_index=True)
        while len(buffer) > page_size:
            cut = _cut(buffer["ts"].array.asi8, page_size)
            if cut is None:  # a run of equal ts reaches the end of what we hold: read on
                break
            yield buffer.iloc[:cut].reset_index(drop=True)
            buffer = buffer.iloc[cut:].reset_index(drop=True)
    while not buffer.empty:
        cut = _cut(buffer["ts"].array.asi8, page_size) if len(buffer) > page_size else None
        cut = cut or len(buffer)
        yield buffer.iloc[:cut].reset_index(drop=True)
        buffer = buffer.iloc[cut:].reset_index(drop=True)


def _cut(ts: np.ndarray, page_size: int) -> int | None:
    """Where to end a page of ``ts`` (ascending, longer than page_size), or None if undecidable."""
    boundary = ts[page_size]
    run_start = int(np.searchsorted(ts, boundary, side="left"))
    if run_start > 0:
        return run_start
    run_end = int(np.searchsorted(ts, boundary, side="right"))
    return run_end if run_end < len(ts) else None
