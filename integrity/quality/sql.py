"""Vendor-specific SQL for the detectors (PostgreSQL and SQLite), kept apart from their logic.

Everything here is set-based: one statement covers many series, which are passed as arrays
(PostgreSQL ``unnest``) or as a ``VALUES`` list (SQLite, in chunks that stay below its parameter
limit). Times go in as aware datetimes and come out as int64 nanoseconds since the epoch (UTC);
SQLite stores Django datetimes as text ``YYYY-MM-DD HH:MM:SS[.ffffff]`` (naive UTC), which sorts
and compares like the time it denotes.

The detectors' window pass, their one expensive statement, is in ``quality.window``; it shares the
helpers below. ``invalid_ohlc_sql`` is the OHLC rules of ``integrity.validation`` as SQL.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

import numpy as np
import pandas as pd
from django.db import connection

from ..series import chunks
from ..timeframes import ns_to_datetime
from ..validation import ohlc_sql_predicate

# SQLite: series per statement (8 parameters each, well below the 999 of old SQLite builds).
SQLITE_CHUNK = 100
_ID_CHUNK = 500
# Timestamps per round trip when a series' times are streamed (off-calendar check).
TS_CHUNK = 100_000


def is_postgres() -> bool:
    return connection.vendor == "postgresql"


def to_db(value: datetime | None):
    """A datetime as the backend wants it in raw SQL (SQLite: Django's stored text form)."""
    if value is None or is_postgres():
        return value
    return connection.ops.adapt_datetimefield_value(value)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def ns_value(value) -> int | None:
    """A database time (aware or naive-UTC datetime, or SQLite text) as int ns since the epoch."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if isinstance(value, pd.Timestamp):
        return int(value.tz_localize(UTC).value if value.tzinfo is None else value.tz_convert(UTC).value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    delta = value - _EPOCH  # exact integer arithmetic, unlike timestamp()
    return ((delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds) * 1000


def ns_array(values: Sequence) -> np.ndarray:
    """Database times (datetimes or SQLite text) as int64 ns since the epoch (UTC)."""
    return np.fromiter((ns_value(v) for v in values), dtype="int64", count=len(values))


def values_cte(name: str, columns: Sequence[str], rows: Sequence[Sequence]) -> tuple[str, list]:
    """``name(columns) AS (VALUES (...), ...)`` and its flattened parameters (SQLite)."""
    placeholder = "(" + ", ".join(["%s"] * len(columns)) + ")"
    sql = f"{name}({', '.join(columns)}) AS (VALUES {', '.join([placeholder] * len(rows))})"
    return sql, [v for row in rows for v in row]


INVALID_OHLC_PG = ohlc_sql_predicate("postgresql")
INVALID_OHLC_SQLITE = ohlc_sql_predicate("sqlite")


def invalid_ohlc_sql() -> str:
    """True for a ``candles`` row aliased ``c`` that breaks the OHLC rules of ``integrity.validation``."""
    return INVALID_OHLC_PG if is_postgres() else INVALID_OHLC_SQLITE



# --- small whole-series queries ----------------------------------------------------------------


def _series_rows(pairs: Sequence[tuple[int, str, str, datetime | None]], select: str, tail: str = "") -> list[tuple]:
    """Run ``SELECT {select} FROM u ... {tail}`` with ``u(idx, symbol, timeframe, since)`` the given series."""
    if not pairs:
        return []
    if is_postgres():
        sql = (f"WITH u AS (SELECT * FROM unnest(%s::int[], %s::text[], %s::text[], %s::timestamptz[]) "
               f"AS x(idx, symbol, timeframe, since)) SELECT {select} FROM u {tail}")
        params = [[p[0] for p in pairs], [p[1] for p in pairs], [p[2] for p in pairs], [p[3] for p in pairs]]
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchall()
    # SQLite compares the stored text form: ``since`` in the same form (Django's adaptation).
    pairs = [(i, s, t, None if since is None else connection.ops.adapt_datetimefield_value(since))
             for i, s, t, since in pairs]
    rows: list[tuple] = []
    for chunk in chunks(pairs, SQLITE_CHUNK * 2):
        values, params = values_cte("u", ("idx", "symbol", "timeframe", "since"), chunk)
        with connection.cursor() as cursor:
            cursor.execute(f"WITH {values} SELECT {select} FROM u {tail}", params)
            rows.extend(cursor.fetchall())
    return rows


def duplicate_groups(table: str, pairs: Sequence[tuple[int, str, str, datetime | None]]) -> list[tuple[int, int, int]]:
    """(idx, ts ns, rows) of every (symbol, timeframe, ts) stored more than once, for each
    (idx, symbol, timeframe, since) from its ``since`` on (None: the whole series)."""
    if is_postgres():
        # Per series: a sorted group over an index-only scan, no hash table over the selection; the
        # coalesce keeps ``since`` an index bound (an OR with IS NULL would read the whole series).
        rows = _series_rows(
            pairs, "u.idx, g.ts, g.n",
            f"CROSS JOIN LATERAL (SELECT c.ts, count(*) AS n FROM {table} c "
            "WHERE c.symbol = u.symbol AND c.timeframe = u.timeframe AND c.ts >= coalesce(u.since, '-infinity') "
            "GROUP BY c.ts HAVING count(*) > 1) g ORDER BY u.idx, g.ts",
        )
    else:
        rows = _series_rows(
            pairs, "u.idx, c.ts, count(*)",
            f"JOIN {table} c ON c.symbol = u.symbol AND c.timeframe = u.timeframe AND c.ts >= coalesce(u.since, '') "
            "GROUP BY u.idx, c.ts HAVING count(*) > 1 ORDER BY u.idx, c.ts",
        )
    times = ns_array([r[1] for r in rows])
    return [(int(r[0]), int(t), int(r[2])) for r, t in zip(rows, times, strict=True)]


def group_ids(table: str, groups: Sequence[tuple[int, str, str, datetime]]) -> dict[tuple[int, int], list[int]]:
    """Row ids of the given (idx, symbol, timeframe, ts) groups, keyed by (idx, ts ns)."""
    if not groups:
        return {}
    if is_postgres():
        sql = (f"SELECT g.idx, c.ts, c.id FROM unnest(%s::int[], %s::text[], %s::text[], %s::timestamptz[]) "
               f"AS g(idx, symbol, timeframe, ts) JOIN {table} c "
               "ON c.symbol = g.symbol AND c.timeframe = g.timeframe AND c.ts = g.ts ORDER BY g.idx, c.ts, c.id")
        params = [[g[0] for g in groups], [g[1] for g in groups], [g[2] for g in groups], [g[3] for g in groups]]
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            rows = cursor.fetchall()
    else:
        rows = []
        for chunk in chunks(groups, SQLITE_CHUNK * 2):
            values, params = values_cte("g", ("idx", "symbol", "timeframe", "ts"),
                                         [(g[0], g[1], g[2], to_db(g[3])) for g in chunk])
            with connection.cursor() as cursor:
                cursor.execute(
                    f"WITH {values} SELECT g.idx, c.ts, c.id FROM g JOIN {table} c "
                    "ON c.symbol = g.symbol AND c.timeframe = g.timeframe AND c.ts = g.ts "
                    "ORDER BY g.idx, c.ts, c.id", params)
                rows.extend(cursor.fetchall())
    result: dict[tuple[int, int], list[int]] = {}
    for row, ts in zip(rows, ns_array([r[1] for r in rows]), strict=True):
        result.setdefault((int(row[0]), int(ts)), []).append(int(row[2]))
    return result


def rows_by_id(table: str, ids: Sequence[int]) -> list[tuple]:
    """(id, ts ns, open, high, low, close, volume) of the given rows, by id."""
    rows: list[tuple] = []
    for chunk in chunks(list(ids), _ID_CHUNK):
        marks = ", ".join(["%s"] * len(chunk))
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT id, ts, open, high, low, close, volume FROM {table} WHERE id IN ({marks})",
                           list(chunk))
            rows.extend(cursor.fetchall())
    times = ns_array([r[1] for r in rows])
    return sorted(((int(r[0]), int(t), *r[2:]) for r, t in zip(rows, times, strict=True)),
                  key=lambda r: (r[1], r[0]))


def distinct_times(table: str, symbol: str, timeframe: str, start: datetime | None,
                   chunk: int | None = None, end: datetime | None = None) -> Iterable[np.ndarray]:
    """The series' distinct ts (ns, ascending) in [start, end), streamed in chunks (keyset paging)."""
    chunk = chunk or TS_CHUNK
    lower, inclusive = start, True
    while True:
        op = ">=" if inclusive else ">"
        condition, params = "", [symbol, timeframe]
        if lower is not None:
            condition = f" AND ts {op} %s"
            params.append(to_db(lower))
        if end is not None:
            condition += " AND ts < %s"
            params.append(to_db(end))
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT DISTINCT ts FROM {table} WHERE symbol = %s AND timeframe = %s{condition} "
                f"ORDER BY ts LIMIT {int(chunk)}", params)
            raw = [r[0] for r in cursor.fetchall()]
        if not raw:
            return
        times = ns_array(raw)
        yield times
        if len(raw) < chunk:
            return
        lower, inclusive = ns_to_datetime(int(times[-1])), False


def bucket_counts(table: str, symbol: str, timeframe: str, start: datetime, end: datetime,
                  bucket_seconds: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct stored ts per epoch-aligned bucket of ``bucket_seconds`` in [start, end]: (bucket
    numbers, counts), ascending. One GROUP BY over the series' index range; one row per bucket comes
    back (for 1m bars, one per day), never the timestamps themselves. Times must be >= 1970."""
    if is_postgres():
        bucket = "floor(extract(epoch FROM ts) / %s)::bigint"
    else:
        bucket = "CAST(strftime('%%s', ts) AS INTEGER) / %s"
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {bucket} AS b, count(DISTINCT ts) FROM {table} "
            "WHERE symbol = %s AND timeframe = %s AND ts >= %s AND ts <= %s GROUP BY 1 ORDER BY 1",
            [int(bucket_seconds), symbol, timeframe, to_db(start), to_db(end)])
        rows = cursor.fetchall()
    return (np.fromiter((int(r[0]) for r in rows), dtype="int64", count=len(rows)),
            np.fromiter((int(r[1]) for r in rows), dtype="int64", count=len(rows)))


MAD_TO_SIGMA = 1.4826


def robust_volatilities(table: str, pairs: Sequence[tuple[int, str, str]], sample: int) -> dict[int, tuple[int, float]]:
    """Per series idx: (returns used, 1.4826 × MAD of the log returns of its newest ``sample`` + 1
    positive finite closes). Index-backed: reads ``sample`` rows per series whatever its length."""
    if not pairs:
        return {}
    limit = int(sample) + 1
    if is_postgres():
        sql = f"""
            WITH u AS (SELECT * FROM unnest(%s::int[], %s::text[], %s::text[]) AS x(idx, symbol, timeframe)),
            r AS MATERIALIZED (
                SELECT u.idx, ln(x.close / x.pc) AS r
                  FROM u CROSS JOIN LATERAL (
                       SELECT t.close, lag(t.close) OVER (ORDER BY t.ts) AS pc
                         FROM (SELECT c.ts, c.close FROM {table} c
                                WHERE c.symbol = u.symbol AND c.timeframe = u.timeframe
                                  AND c.close > 0 AND c.close < 'Infinity'::float8
                                ORDER BY c.ts DESC LIMIT {limit}) t
                  ) x
                 WHERE x.pc IS NOT NULL
            ),
            m AS (SELECT idx, count(*) AS n, percentile_cont(0.5) WITHIN GROUP (ORDER BY r) AS med
                    FROM r GROUP BY idx)
            SELECT m.idx, m.n, percentile_cont(0.5) WITHIN GROUP (ORDER BY abs(r.r - m.med))
              FROM r JOIN m ON m.idx = r.idx
             GROUP BY m.idx, m.n
        """
        with connection.cursor() as cursor:
            cursor.execute(sql, [[p[0] for p in pairs], [p[1] for p in pairs], [p[2] for p in pairs]])
            rows = cursor.fetchall()
        return {int(idx): (int(n), float(mad) * MAD_TO_SIGMA) for idx, n, mad in rows if mad is not None}
    result: dict[int, tuple[int, float]] = {}
    for chunk in chunks(list(pairs), SQLITE_CHUNK):
        # One statement, one index-backed LIMIT subquery per series.
        parts, params = [], []
        for idx, symbol, timeframe in chunk:
            parts.append(f"SELECT * FROM (SELECT {int(idx)} AS idx, ts, close FROM {table} "
                         f"WHERE symbol = %s AND timeframe = %s AND close > 0 AND close < 9e999 "
                         f"ORDER BY ts DESC LIMIT {limit})")
            params += [symbol, timeframe]
        with connection.cursor() as cursor:
            cursor.execute(" UNION ALL ".join(parts), params)
            rows = cursor.fetchall()
        closes: dict[int, list[tuple[str, float]]] = {}
        for idx, ts, close in rows:
            closes.setdefault(int(idx), []).append((ts, close))
        for idx, values in closes.items():
            ordered = np.asarray([c for _, c in sorted(values)], dtype="float64")
            returns = np.diff(np.log(ordered))
            if len(returns):
                mad = float(np.median(np.abs(returns - np.median(returns))))
                result[idx] = (len(returns), mad * MAD_TO_SIGMA)
    return result


def update_rows_by_id(table: str, rows: Sequence[dict], types: dict[str, str], constant: dict) -> set[int]:
    """``UPDATE table SET col = value`` for many rows at once, each by its ``id``, still unresolved.

    ``rows``: dicts with ``id`` and the columns of ``types`` (column -> PostgreSQL array element
    type; ``jsonb`` columns take Python values, dumped here); ``constant``: columns set to the same
    value on every row. One statement on PostgreSQL (unnest of arrays), batches on SQLite. Returns
    the ids updated (a row resolved meanwhile is not).
    """
    if not rows:
        return set()
    columns = list(types)

    def value(column: str, row: dict):
        raw = row[column]
        if types[column] == "jsonb":
            return json.dumps(raw)
        if isinstance(raw, datetime):
            return to_db(raw)
        return raw

    fixed = list(constant)
    fixed_params = [to_db(v) if isinstance(v, datetime) else v for v in constant.values()]
    unresolved = "resolution_status IN ('open', 'acknowledged')"
    updated: set[int] = set()
    with connection.cursor() as cursor:
        if is_postgres():
            arrays = ", ".join(["%s::bigint[]"] + [f"%s::{'text' if types[c] == 'jsonb' else types[c]}[]"
                                                  for c in columns])
            sets = [f"{c} = v.{c}" + ("::jsonb" if types[c] == "jsonb" else "") for c in columns]
            sets += [f"{c} = %s" for c in fixed]
            params = fixed_params + [[int(r["id"]) for r in rows]] + [[value(c, r) for r in rows] for c in columns]
            cursor.execute(
                f"UPDATE {table} AS a SET {', '.join(sets)} FROM unnest({arrays}) AS v(id, {', '.join(columns)}) "
                f"WHERE a.id = v.id AND a.{unresolved} RETURNING a.id", params)
            return {int(r[0]) for r in cursor.fetchall()}
        sets = [f"{c} = v.{c}" for c in columns] + [f"{c} = %s" for c in fixed]
        for chunk in chunks(list(rows), SQLITE_CHUNK):
            values, params = values_cte("v", ["id", *columns], [[r["id"], *(value(c, r) for c in columns)]
                                                                 for r in chunk])
            cursor.execute(f"WITH {values} UPDATE {table} SET {', '.join(sets)} FROM v "
                           f"WHERE {table}.id = v.id AND {table}.{unresolved} RETURNING {table}.id",
                           params + fixed_params)
            updated.update(int(r[0]) for r in cursor.fetchall())
    return updated
