"""Numeric dates read as byte arrays: the fast path for fixed-width timestamps (zero-padded
``DD.MM.YYYY hh:mm``, a strftime layout of fixed-width fields), with array operations instead of
per-value string calls. Used by ``csv_time``; every value these refuse goes through its slower
general parsing.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

# A numeric date whose first two fields are the day and the month in some order: 13/01/2024,
# 01.13.2024 09:30, 1-2-2024T09:30. Groups: first, second, year, the rest (a time of day).
NUMERIC_DATE = r"^\s*(\d{1,2})[./-](\d{1,2})[./-](\d{4})((?:[T\s].*)?)$"


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


def padded_dates(text: pd.Series) -> tuple[np.ndarray, np.ndarray] | None:
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


def date_fields(text: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(is a numeric date, first field, second field) per value, for the day/month decision."""
    found = np.zeros(len(text), dtype=bool)
    first = np.full(len(text), np.nan)
    second = np.full(len(text), np.nan)
    padded = padded_dates(text)
    if padded is not None:
        rows, chars = padded
        digits = chars.astype(np.int64) - ord("0")
        found[rows] = True
        first[rows] = digits[:, 0] * 10 + digits[:, 1]
        second[rows] = digits[:, 3] * 10 + digits[:, 4]
    rest = ~found & text.notna().to_numpy()
    if rest.any():
        parts = text[rest].str.extract(NUMERIC_DATE)
        hit = parts[0].notna().to_numpy()
        rows = np.flatnonzero(rest)[hit]
        found[rows] = True
        first[rows] = pd.to_numeric(parts[0][hit]).to_numpy()
        second[rows] = pd.to_numeric(parts[1][hit]).to_numpy()
    return found, first, second


_FIXED_FIELDS = {"Y": 4, "m": 2, "d": 2, "H": 2, "M": 2, "S": 2}


def fixed_layout(layout: str) -> tuple[list[tuple[str, str, int]], int, bool] | None:
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


def parse_fixed(text: pd.Series, parts: list[tuple[str, str, int]], width: int,
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
