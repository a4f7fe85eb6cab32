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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
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
from integrity.providers.csv_time import DateFormat, TimestampParser, parse_date_format
from integrity.timeframes import utc_timestamp

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("open", "high", "low", "close", "volume")
DEFAULT_PAGE_SIZE = 50_000

_MIN_SCAN_CHUNK = 10_000
_SNIFF_BYTES = 1 << 16


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
        start, end = utc_timestamp(request.start), utc_timestamp(request.end)

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


class _CsvReader(TimestampParser):
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
