"""Bars from a CSV file per symbol.

File: ``file`` if given, else ``<directory>/<SYMBOL>.csv`` (path separators in the symbol, as in
``EUR/USD``, become ``_``: ``EUR_USD.csv``). Options in ``request.options`` override the
constructor's (``file``, ``directory``, ``tz``, ``page_size``).

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
Anything else is an error naming the line and the value. Price or volume cells that are not
numbers become NaN: validation rejects those bars and the rest are stored.

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
import os
import re
from collections.abc import Iterator
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd

from integrity.providers.base import (
    BAR_COLUMNS,
    FetchRequest,
    ProviderConfigError,
    ProviderError,
    empty_bar_frame,
)

REQUIRED_COLUMNS = ("open", "high", "low", "close", "volume")
DEFAULT_PAGE_SIZE = 50_000

_DATE_ONLY = r"\d{4}[-/]\d{1,2}[-/]\d{1,2}"
# A time of day followed by a zone designator: "...09:30Z", "...09:30:00+01:00", "...09:30 -0500".
_HAS_OFFSET = r".*\d:\d{2}(?::\d{2}(?:[.,]\d+)?)?\s*(?:[zZ]|UTC|GMT|[+-]\d{2}(?::?\d{2})?)"
_NUMBER = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
_ISO_START = r"\d{4}-\d{2}-\d{2}(?:$|[T ]\d)"
_OFFSET_SUFFIX = r"(?:[zZ]|[+-]\d{2}(?::?\d{2})?)\s*$"
# Epoch magnitude thresholds: at or above each, the number is in the next finer unit.
_EPOCH_UNITS = ((1e11, "s"), (1e14, "ms"), (1e17, "us"), (float("inf"), "ns"))
_TS_DTYPE = "datetime64[ns, UTC]"
_MIN_SCAN_CHUNK = 10_000


class CsvProvider:
    name = "csv"

    def __init__(self, file: str | None = None, directory: str | None = None, tz: str = "UTC",
                 page_size: int = DEFAULT_PAGE_SIZE, **ignored: Any):
        self.file = file
        self.directory = directory
        self.tz = tz
        self.page_size = page_size

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
        raw = self._setting(request, "page_size")
        try:
            size = int(raw)
        except (TypeError, ValueError):
            size = 0
        if size < 1:
            raise ProviderConfigError(f"page_size must be a positive integer, got {raw!r}",
                                      provider=self.name)
        return size

    def _tz(self, request: FetchRequest) -> str:
        tz = str(self._setting(request, "tz") or "UTC")
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise ProviderConfigError(f"unknown time zone {tz!r}", provider=self.name) from None
        return tz

    # -- fetching ------------------------------------------------------------------------------

    def fetch(self, request: FetchRequest) -> Iterator[pd.DataFrame]:
        path = self.resolve_path(request)
        page_size = self._page_size(request)
        tz = self._tz(request)
        reader = _CsvReader(path, tz, provider=self.name)
        start, end = _utc(request.start), _utc(request.end)

        scan = reader.scan(start, end, page_size)
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
        reader = _CsvReader(self.resolve_path(request), self._tz(request), provider=self.name)
        scan = reader.scan(pd.Timestamp.min.tz_localize("UTC"), pd.Timestamp.max.tz_localize("UTC"),
                           self._page_size(request))
        return None if scan.min_ts is None else pd.Timestamp(scan.min_ts, tz="UTC").to_pydatetime()


class _Scan:
    def __init__(self):
        self.first_row: int | None = None  # data row index of the first row within range
        self.last_row: int | None = None
        self.in_order = True
        self.min_ts: int | None = None  # ns since the epoch, over the rows within range
        self._last_ts: int | None = None

    def add(self, offset: int, ts: pd.Series, in_range: np.ndarray) -> None:
        positions = np.flatnonzero(in_range)
        if not len(positions):
            return
        if self.first_row is None:
            self.first_row = offset + int(positions[0])
        self.last_row = offset + int(positions[-1])
        values = ts.array.asi8[positions]
        low = int(values.min())
        self.min_ts = low if self.min_ts is None else min(self.min_ts, low)
        if self.in_order:
            ascending = bool((np.diff(values) >= 0).all())
            follows = self._last_ts is None or values[0] >= self._last_ts
            self.in_order = ascending and follows
        self._last_ts = int(values[-1])


class _CsvReader:
    def __init__(self, path: str, tz: str, provider: str):
        self.path = path
        self.tz = tz
        self.provider = provider
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
        try:
            with open(self.path, newline="", encoding="utf-8-sig") as handle:
                lines = csv.reader(handle)
                header = next(lines, None)
                first = next(lines, None)
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise self._error(f"cannot read CSV file: {exc}") from exc
        if not header or not any(cell.strip() for cell in header):
            raise self._error("CSV file is empty (no header row)")
        header = [cell.strip() for cell in header]
        # pandas writes an index without a header cell: "Open,High,..." over "2024-01-02,1,..."
        if first is not None and len(first) == len(header) + 1:
            header = ["", *header]
        return header

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

    def _read(self, usecols: list[int], chunksize: int | None):
        try:
            return pd.read_csv(
                self.path,
                header=None,
                skiprows=1,
                names=[f"c{i}" for i in range(self.width)],
                usecols=usecols,
                index_col=False,
                # No dtype: the C parser reads numeric columns natively (fast); a column with
                # any non-numeric cell comes back as strings and is coerced below.
                encoding="utf-8-sig",
                skip_blank_lines=False,  # keeps row index == line number - 2
                chunksize=chunksize,
            )
        except (OSError, ValueError, pd.errors.ParserError) as exc:
            raise self._error(f"cannot parse CSV file: {exc}") from exc

    def _chunks(self, usecols: list[int], chunksize: int) -> Iterator[tuple[int, pd.DataFrame]]:
        offset = 0
        reader = self._read(usecols, chunksize)
        try:
            with reader:
                for chunk in reader:
                    yield offset, chunk
                    offset += len(chunk)
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
        if pd.api.types.is_numeric_dtype(raw) and not pd.api.types.is_bool_dtype(raw):
            out = _parse_epoch(raw)
        else:
            out = self._parse_uniform(raw.astype("str").where(raw.notna()), offset)
        if out is None:
            out = self._parse_each_kind(raw, offset)
        bad = out.isna().to_numpy() & ~blank
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise self._error(
                f"unparseable timestamp {_cell_text(raw.iloc[row])!r} at line {offset + row + 2}"
                f" (expected a date, an ISO date-time or epoch seconds/milliseconds)"
            )
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
