"""Reading the timestamp column of a CSV file: numeric dates and their day/month order, epoch
numbers and their unit, ``date_format`` layouts, time zones and the repeated fall-back hour.

The rules a user sees are described in ``integrity.providers.csv`` (the provider); this module
owns their implementation. ``TimestampParser`` is mixed into the provider's file reader, which
supplies the file (``_chunks``, ``_error``) and the options (``tz``, ``date_format``, ``daily``,
``to_open``) and the state the parser keeps (``_order``, ``note``, the fall-back hour bookkeeping).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from integrity.providers.base import ProviderConfigError
from integrity.providers.csv_fixed_width import (
    NUMERIC_DATE,
    date_fields,
    fixed_layout,
    padded_dates,
    parse_fixed,
)

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
_NUMERIC_DATE_SHORT_YEAR = r"^\s*\d{1,2}([./-])\d{1,2}\1\d{2}(?:[T\s].*)?$"
_NUMERIC_DATE_PREFIX = r"\s*\d{1,2}[./-]\d{1,2}[./-]\d{2}"
_DETECT_CHUNK = 200_000
_EXAMPLES = 3


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



class TimestampParser:
    """UTC timestamps from the first column of a CSV file, one chunk at a time (see the module
    docstring for what the host reader supplies)."""

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
        padded = padded_dates(text)
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
        parts = text[candidates].str.extract(NUMERIC_DATE)
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
            found, first, second = date_fields(text)
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
        fixed = fixed_layout(layout.layout)
        parsed = parse_fixed(text, *fixed) if fixed else None
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
