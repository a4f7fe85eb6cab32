"""The candle writer: batched, idempotent, set-based.

``write_bars`` merges one batch of validated bars of one series into ``candles``:
- a bar whose (symbol, timeframe, ts) is not stored yet is inserted;
- a stored bar whose values differ (the provider revised it) is updated, counted apart;
- an identical stored bar is left alone, so re-running a range inserts and updates nothing.

Both databases first ask whether anything of the series is stored in the batch's ts range. If not (a
backfill moving forward, a new series: the common case) every bar is new and goes straight into
candles: PostgreSQL binary COPY, SQLite one executemany INSERT. Otherwise the bars are staged in a
session temporary table and merged (PostgreSQL: one statement that updates and inserts; SQLite: one
UPDATE … FROM and one INSERT … SELECT). Every merge statement is bounded to the batch's ts range and
joins through the (symbol, timeframe, ts) index, so a batch costs what the batch holds, not what the
series already holds: a long backfill stays linear in bars.
Callers wrap each batch in a transaction (the backfill also writes its checkpoint in it), so a crash
loses at most the batch in flight and never leaves half a batch behind.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd
from django.db import connection
from django.utils import timezone

from .models import Candle
from .partitions import ensure_partitions

_CANDLES = Candle._meta.db_table
_TEMP = "integrity_incoming_bars"
_VALUE_COLUMNS = ("open", "high", "low", "close", "volume")


@dataclass(frozen=True)
class WriteResult:
    inserted: int = 0
    updated: int = 0

    def __add__(self, other: WriteResult) -> WriteResult:
        return WriteResult(self.inserted + other.inserted, self.updated + other.updated)


def write_bars(symbol: str, timeframe: str, frame: pd.DataFrame, source: str = "") -> WriteResult:
    """Merge validated bars (bar-frame layout, unique ts) into the candle table. Needs a transaction."""
    if frame.empty:
        return WriteResult()
    if not connection.in_atomic_block:
        raise RuntimeError("write_bars must run inside transaction.atomic(): a batch is all-or-nothing")
    if connection.vendor == "postgresql":
        # First, before the batch touches candles: the partitions its bars belong in (a catalog probe
        # when they exist), so our own bars never land in a default partition.
        ensure_partitions(timeframe, frame["ts"].min().to_pydatetime(), frame["ts"].max().to_pydatetime())
        return _write_postgresql(symbol, timeframe, frame, source)
    return _write_sqlite(symbol, timeframe, frame, source)


# --- PostgreSQL ----------------------------------------------------------------------------------

_CANDLE_COLUMNS = "symbol, timeframe, ts, open, high, low, close, volume, source, ingested_at, updated_at"

# Every statement is bounded to the batch's own ts range, so the (symbol, timeframe, ts) index keeps
# each batch's cost proportional to the batch, not to the series already stored (without the range
# the planner may scan the whole series once per batch: quadratic over a long backfill).
_RANGE_HAS_ROWS = f"""
SELECT EXISTS (SELECT 1 FROM {_CANDLES}
                WHERE symbol = %s AND timeframe = %s AND ts >= %s AND ts <= %s)
"""

_PG_MERGE = f"""
WITH upd AS (
    UPDATE {_CANDLES} AS c
       SET open = i.open, high = i.high, low = i.low, close = i.close, volume = i.volume,
           source = %(source)s, updated_at = %(now)s
      FROM {_TEMP} AS i
     WHERE c.symbol = %(symbol)s AND c.timeframe = %(timeframe)s
       AND c.ts >= %(first)s AND c.ts <= %(last)s AND c.ts = i.ts
       AND (c.open, c.high, c.low, c.close, c.volume)
           IS DISTINCT FROM (i.open, i.high, i.low, i.close, i.volume)
    RETURNING 1
), ins AS (
    INSERT INTO {_CANDLES} ({_CANDLE_COLUMNS})
    SELECT %(symbol)s, %(timeframe)s, i.ts, i.open, i.high, i.low, i.close, i.volume, %(source)s, %(now)s, %(now)s
      FROM {_TEMP} AS i
     WHERE NOT EXISTS (
           SELECT 1 FROM {_CANDLES} AS c
            WHERE c.symbol = %(symbol)s AND c.timeframe = %(timeframe)s
              AND c.ts >= %(first)s AND c.ts <= %(last)s AND c.ts = i.ts)
     ORDER BY i.ts
    RETURNING 1
)
SELECT (SELECT count(*) FROM ins), (SELECT count(*) FROM upd)
"""

_PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01 00:00 UTC, the origin of binary timestamps
_COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
_COPY_TRAILER = b"\xff\xff"


def _pg_timestamps(values: pd.Series) -> np.ndarray:
    """Aware datetimes as PostgreSQL binary timestamptz: int64 microseconds since 2000-01-01 UTC."""
    return values.dt.tz_convert("UTC").dt.as_unit("us").array.asi8 - _PG_EPOCH_US


def copy_binary(n: int, fields: list) -> bytes:
    """``n`` rows in PostgreSQL's binary COPY format, built by numpy without a Python loop.

    ``fields`` are, in column order: an int64 array (timestamptz, see ``_pg_timestamps``), a float64
    array (float8), a ``datetime`` (one timestamptz for every row) or ``str`` (one text value for
    every row). Binary floats are exact: no formatting, no rounding, and far cheaper than text.
    """
    dtype, values = [("count", ">i2")], {"count": len(fields)}
    for i, field in enumerate(fields):
        if isinstance(field, str):
            raw = field.encode()
            dtype.append((f"len{i}", ">i4"))
            values[f"len{i}"] = len(raw)
            if raw:
                dtype.append((f"val{i}", f"S{len(raw)}"))
                values[f"val{i}"] = raw
            continue
        if isinstance(field, datetime):
            field = np.int64(round(field.timestamp() * 1_000_000) - _PG_EPOCH_US)
            kind = ">i8"
        else:
            kind = ">i8" if field.dtype.kind in "iu" else ">f8"
        dtype += [(f"len{i}", ">i4"), (f"val{i}", kind)]
        values[f"len{i}"] = 8
        values[f"val{i}"] = field
    rows = np.empty(n, dtype=dtype)
    for name, value in values.items():
        rows[name] = value
    return _COPY_SIGNATURE + rows.tobytes() + _COPY_TRAILER


def _bar_fields(frame: pd.DataFrame) -> list:
    return [_pg_timestamps(frame["ts"]), *(frame[c].to_numpy(dtype="float64") for c in _VALUE_COLUMNS)]


def _write_postgresql(symbol: str, timeframe: str, frame: pd.DataFrame, source: str) -> WriteResult:
    now = timezone.now()
    first, last = frame["ts"].min().to_pydatetime(), frame["ts"].max().to_pydatetime()
    with connection.cursor() as cursor:
        raw = cursor.cursor  # the psycopg cursor under Django's wrapper
        cursor.execute(_RANGE_HAS_ROWS, [symbol, timeframe, first, last])
        if not cursor.fetchone()[0]:
            # Nothing stored in the batch's range (a backfill moving forward, a new series): every bar
            # is new, so COPY goes straight into candles. No other writer can race us here: the
            # series is held by this execution (one active backfill per series, DB-enforced).
            fields = [symbol, timeframe, *_bar_fields(frame), source, now, now]
            with raw.copy(f"COPY {_CANDLES} ({_CANDLE_COLUMNS}) FROM STDIN (FORMAT BINARY)") as copy:
                copy.write(copy_binary(len(frame), fields))
            return WriteResult(len(frame), 0)
        # Overlap with stored bars (incremental re-reads, revisions): stage, then one merge.
        # ON COMMIT DELETE ROWS: the staging rows never outlive the batch's transaction.
        cursor.execute(
            f"CREATE TEMPORARY TABLE IF NOT EXISTS {_TEMP} ("
            "ts timestamptz NOT NULL, open float8, high float8, low float8, close float8, volume float8"
            ") ON COMMIT DELETE ROWS"
        )
        cursor.execute(f"TRUNCATE {_TEMP}")
        with raw.copy(f"COPY {_TEMP} (ts, open, high, low, close, volume) FROM STDIN (FORMAT BINARY)") as copy:
            copy.write(copy_binary(len(frame), _bar_fields(frame)))
        cursor.execute(
            _PG_MERGE,
            {"symbol": symbol, "timeframe": timeframe, "source": source, "now": now,
             "first": first, "last": last},
        )
        inserted, updated = cursor.fetchone()
    return WriteResult(int(inserted), int(updated))


# --- SQLite --------------------------------------------------------------------------------------


def sqlite_ts(values: pd.Series) -> pd.Series:
    """Datetimes in the text form Django's SQLite backend stores (naive UTC, space separator)."""
    return values.dt.strftime("%Y-%m-%d %H:%M:%S")


# The staging table's ts is declared like candles.ts (``datetime``, NUMERIC affinity). With a TEXT
# column the comparison candles.ts = i.ts takes candles' affinity and SQLite cannot use the staging
# table's primary key for it: the UPDATE then scans every staged row for every stored row it visits.
_SQLITE_STAGE = (
    f"CREATE TEMP TABLE IF NOT EXISTS {_TEMP} ("
    "ts datetime PRIMARY KEY, open REAL, high REAL, low REAL, close REAL, volume REAL)"
)

# Bounded like the PostgreSQL merge: the ts range keeps the index search on candles to the batch's
# own span (without it SQLite walks the whole stored series, once per batch: quadratic), and each
# stored row found there looks its staged twin up by primary key.
_SQLITE_MERGE_UPDATE = f"""
UPDATE {_CANDLES}
   SET open = i.open, high = i.high, low = i.low, close = i.close, volume = i.volume,
       source = %s, updated_at = %s
  FROM {_TEMP} AS i
 WHERE {_CANDLES}.symbol = %s AND {_CANDLES}.timeframe = %s
   AND {_CANDLES}.ts >= %s AND {_CANDLES}.ts <= %s AND {_CANDLES}.ts = i.ts
   AND ({_CANDLES}.open IS NOT i.open OR {_CANDLES}.high IS NOT i.high OR {_CANDLES}.low IS NOT i.low
        OR {_CANDLES}.close IS NOT i.close OR {_CANDLES}.volume IS NOT i.volume)
"""

_SQLITE_MERGE_INSERT = f"""
INSERT INTO {_CANDLES} ({_CANDLE_COLUMNS})
SELECT %s, %s, i.ts, i.open, i.high, i.low, i.close, i.volume, %s, %s, %s
  FROM {_TEMP} AS i
 WHERE NOT EXISTS (SELECT 1 FROM {_CANDLES} AS c
                    WHERE c.symbol = %s AND c.timeframe = %s AND c.ts = i.ts)
 ORDER BY i.ts
"""


def _write_sqlite(symbol: str, timeframe: str, frame: pd.DataFrame, source: str) -> WriteResult:
    now = timezone.now().replace(tzinfo=None).isoformat(" ")
    ts = sqlite_ts(frame["ts"])
    first, last = ts.min(), ts.max()  # this text form sorts like the times it denotes
    with connection.cursor() as cursor:
        cursor.execute(_RANGE_HAS_ROWS, [symbol, timeframe, first, last])
        if not cursor.fetchone()[0]:
            # Nothing stored in the batch's range: every bar is new, insert it directly. The series is
            # held by this execution (one active backfill per series) and the IMMEDIATE transaction
            # holds SQLite's write lock, so nothing can appear in the range meanwhile.
            rows = zip(
                [symbol] * len(frame), [timeframe] * len(frame), ts.tolist(),
                *(frame[c].tolist() for c in _VALUE_COLUMNS),
                [source] * len(frame), [now] * len(frame), [now] * len(frame),
                strict=True,
            )
            cursor.executemany(
                f"INSERT INTO {_CANDLES} ({_CANDLE_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                list(rows),
            )
            return WriteResult(len(frame), 0)
        # Overlap with stored bars (incremental re-reads, revisions): stage, then merge.
        rows = list(zip(ts.tolist(), *(frame[c].tolist() for c in _VALUE_COLUMNS), strict=True))
        cursor.execute(_SQLITE_STAGE)
        cursor.execute(f"DELETE FROM {_TEMP}")
        cursor.executemany(
            f"INSERT INTO {_TEMP} (ts, open, high, low, close, volume) VALUES (%s, %s, %s, %s, %s, %s)", rows
        )
        cursor.execute(_SQLITE_MERGE_UPDATE, [source, now, symbol, timeframe, first, last])
        updated = cursor.rowcount
        cursor.execute(_SQLITE_MERGE_INSERT, [symbol, timeframe, source, now, now, symbol, timeframe])
        inserted = cursor.rowcount
        cursor.execute(f"DELETE FROM {_TEMP}")
    return WriteResult(int(inserted), int(updated))
