"""The candle writer: batched, idempotent, set-based.

``write_bars`` merges one batch of validated bars of one series into ``candles``:
- a bar whose (symbol, timeframe, ts) is not stored yet is inserted;
- a stored bar whose values differ (the provider revised it) is updated, counted apart;
- an identical stored bar is left alone, so re-running a range inserts and updates nothing.

PostgreSQL: COPY into a session temporary table, then one statement that updates and inserts.
SQLite: executemany into a temporary table, then one UPDATE … FROM and one INSERT … SELECT.
Callers wrap each batch in a transaction (the backfill also writes its checkpoint in it), so a crash
loses at most the batch in flight and never leaves half a batch behind.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from django.db import connection
from django.utils import timezone

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
        return _write_postgresql(symbol, timeframe, frame, source)
    return _write_sqlite(symbol, timeframe, frame, source)


# --- PostgreSQL ----------------------------------------------------------------------------------

_PG_MERGE = f"""
WITH upd AS (
    UPDATE candles AS c
       SET open = i.open, high = i.high, low = i.low, close = i.close, volume = i.volume,
           source = %(source)s, updated_at = %(now)s
      FROM {_TEMP} AS i
     WHERE c.symbol = %(symbol)s AND c.timeframe = %(timeframe)s AND c.ts = i.ts
       AND (c.open, c.high, c.low, c.close, c.volume)
           IS DISTINCT FROM (i.open, i.high, i.low, i.close, i.volume)
    RETURNING 1
), ins AS (
    INSERT INTO candles (symbol, timeframe, ts, open, high, low, close, volume, source, ingested_at, updated_at)
    SELECT %(symbol)s, %(timeframe)s, i.ts, i.open, i.high, i.low, i.close, i.volume, %(source)s, %(now)s, %(now)s
      FROM {_TEMP} AS i
     WHERE NOT EXISTS (
           SELECT 1 FROM candles AS c
            WHERE c.symbol = %(symbol)s AND c.timeframe = %(timeframe)s AND c.ts = i.ts)
     ORDER BY i.ts
    RETURNING 1
)
SELECT (SELECT count(*) FROM ins), (SELECT count(*) FROM upd)
"""


def frame_to_copy_text(frame: pd.DataFrame) -> str:
    """The bars as COPY text (tab separated). Floats keep full precision (repr round-trips)."""
    out = pd.DataFrame(
        {
            "ts": frame["ts"].dt.strftime("%Y-%m-%d %H:%M:%S+00"),
            **{c: frame[c] for c in _VALUE_COLUMNS},
        }
    )
    return out.to_csv(sep="\t", header=False, index=False, float_format=None, lineterminator="\n")


def _write_postgresql(symbol: str, timeframe: str, frame: pd.DataFrame, source: str) -> WriteResult:
    with connection.cursor() as cursor:
        # ON COMMIT DELETE ROWS: the staging rows never outlive the batch's transaction.
        cursor.execute(
            f"CREATE TEMPORARY TABLE IF NOT EXISTS {_TEMP} ("
            "ts timestamptz NOT NULL, open float8, high float8, low float8, close float8, volume float8"
            ") ON COMMIT DELETE ROWS"
        )
        cursor.execute(f"TRUNCATE {_TEMP}")
        raw = cursor.cursor  # the psycopg cursor under Django's wrapper
        with raw.copy(f"COPY {_TEMP} (ts, open, high, low, close, volume) FROM STDIN") as copy:
            copy.write(frame_to_copy_text(frame))
        cursor.execute(
            _PG_MERGE,
            {"symbol": symbol, "timeframe": timeframe, "source": source, "now": timezone.now()},
        )
        inserted, updated = cursor.fetchone()
    return WriteResult(int(inserted), int(updated))


# --- SQLite --------------------------------------------------------------------------------------


def sqlite_ts(values: pd.Series) -> pd.Series:
    """Datetimes in the text form Django's SQLite backend stores (naive UTC, space separator)."""
    return values.dt.strftime("%Y-%m-%d %H:%M:%S")


def _write_sqlite(symbol: str, timeframe: str, frame: pd.DataFrame, source: str) -> WriteResult:
    now = timezone.now().replace(tzinfo=None).isoformat(" ")
    rows = list(
        zip(
            sqlite_ts(frame["ts"]).tolist(),
            *(frame[c].tolist() for c in _VALUE_COLUMNS),
            strict=True,
        )
    )
    with connection.cursor() as cursor:
        cursor.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {_TEMP} ("
            "ts TEXT PRIMARY KEY, open REAL, high REAL, low REAL, close REAL, volume REAL)"
        )
        cursor.execute(f"DELETE FROM {_TEMP}")
        cursor.executemany(
            f"INSERT INTO {_TEMP} (ts, open, high, low, close, volume) VALUES (%s, %s, %s, %s, %s, %s)", rows
        )
        cursor.execute(
            f"""
            UPDATE candles
               SET open = i.open, high = i.high, low = i.low, close = i.close, volume = i.volume,
                   source = %s, updated_at = %s
              FROM {_TEMP} AS i
             WHERE candles.symbol = %s AND candles.timeframe = %s AND candles.ts = i.ts
               AND (candles.open IS NOT i.open OR candles.high IS NOT i.high OR candles.low IS NOT i.low
                    OR candles.close IS NOT i.close OR candles.volume IS NOT i.volume)
            """,
            [source, now, symbol, timeframe],
        )
        updated = cursor.rowcount
        cursor.execute(
            f"""
            INSERT INTO candles (symbol, timeframe, ts, open, high, low, close, volume, source, ingested_at,
                                 updated_at)
            SELECT %s, %s, i.ts, i.open, i.high, i.low, i.close, i.volume, %s, %s, %s
              FROM {_TEMP} AS i
             WHERE NOT EXISTS (SELECT 1 FROM candles AS c
                                WHERE c.symbol = %s AND c.timeframe = %s AND c.ts = i.ts)
             ORDER BY i.ts
            """,
            [symbol, timeframe, source, now, now, symbol, timeframe],
        )
        inserted = cursor.rowcount
        cursor.execute(f"DELETE FROM {_TEMP}")
    return WriteResult(int(inserted), int(updated))
