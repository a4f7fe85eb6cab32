"""Vendor-specific SQL for the detectors (PostgreSQL and SQLite), kept apart from their logic.

Everything here is set-based: one statement covers many series, which are passed as arrays
(PostgreSQL ``unnest``) or as a ``VALUES`` list (SQLite, in chunks that stay below its parameter
limit). Times go in as aware datetimes and come out as int64 nanoseconds since the epoch (UTC);
SQLite stores Django datetimes as text ``YYYY-MM-DD HH:MM:SS[.ffffff]`` (naive UTC), which sorts
and compares like the time it denotes.

The window pass (``window_candidates``) is the detectors' one expensive statement: for each series
it reads the bars from ``since`` (minus one bar of overlap) once, in ts order, and returns only the
rows some detector must look at (rows of a duplicate group come in index order on PostgreSQL, where
a (ts, id) order would add a sort per series, and by id on SQLite):

    first / last row of the window (bounds)          pt IS NULL / nc IS NULL
    gap candidates                                    ts - previous ts > one bar, or an unaligned
                                                      ts whose bar time is after the previous ts
    duplicate rows (the 2nd, 3rd ... of a group)      ts = previous ts
    rows breaking the OHLC rules (``bad``)            ``validation.ohlc_sql_predicate``
    unaligned bar times (``odd``)                     ts not a multiple of the bar length
    outlier candidates                                |close - prev close| > move * prev close, the
                                                      same for the open, or a smaller move
                                                      (> vmin) that the next close takes back

On PostgreSQL the window runs per series inside a LATERAL subquery over the (symbol, timeframe, ts)
index, so no sort of the whole selection is needed (a hash join plus one big sort costs over twice
a plain window pass). Measured on 200 series × 10,000 1m bars: about 1.35× the CPU of a bare
``lag``/``lead`` pass over the same rows; the invalid-OHLC comparisons are ~0.15× of that.
A big sweep outside a transaction deals its series over ``DETECTION_PARALLEL_WORKERS`` connections
(one backend, hence one core, runs one statement): same rows, same order, all cores.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pandas as pd
from django.db import connection, transaction

from ..conf import conf
from ..timeframes import ns_to_datetime
from ..validation import ohlc_sql_predicate

# SQLite: series per statement (8 parameters each, well below the 999 of old SQLite builds).
_SQLITE_CHUNK = 100
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


def _chunks(items: Sequence, size: int) -> Iterable[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _values_cte(name: str, columns: Sequence[str], rows: Sequence[Sequence]) -> tuple[str, list]:
    """``name(columns) AS (VALUES (...), ...)`` and its flattened parameters (SQLite)."""
    placeholder = "(" + ", ".join(["%s"] * len(columns)) + ")"
    sql = f"{name}({', '.join(columns)}) AS (VALUES {', '.join([placeholder] * len(rows))})"
    return sql, [v for row in rows for v in row]


# --- the window pass ---------------------------------------------------------------------------


@dataclass(frozen=True)
class WindowSpec:
    """One series as the window pass needs it."""

    idx: int
    symbol: str
    timeframe: str
    step_seconds: int
    since: datetime | None
    move: float | None  # outlier threshold test (None: no outlier candidates)
    vmin: float | None  # outlier volatility test: smallest move worth a look
    tol: float | None  # ... that the next close takes back to within tol of the jump
    # The grid a stored time must sit on not to be "unaligned" (odd): the bar length on the clock
    # grid, one minute for session-anchored bars (where in the session is the calendar's call).
    grid_seconds: int | None = None

    @property
    def grid(self) -> int:
        return self.grid_seconds or self.step_seconds


@dataclass(frozen=True)
class WindowRow:
    idx: int
    id: int
    ts: int  # ns
    pt: int | None  # previous row's ts (ns)
    open: float
    close: float
    pc: float | None  # previous close
    nc: float | None  # next close
    rn: int  # row number in the window, from 1
    is_gap: bool
    is_dup: bool
    bad: bool
    odd: bool


_BAD_PG = ohlc_sql_predicate("postgresql")
_BAD_SQLITE = ohlc_sql_predicate("sqlite")


def invalid_ohlc_sql() -> str:
    """True for a ``candles`` row aliased ``c`` that breaks the OHLC rules of ``integrity.validation``."""
    return _BAD_PG if is_postgres() else _BAD_SQLITE


_ODD_PG = "date_bin(s.grid, c.ts, timestamptz '1970-01-01 00:00:00+00') <> c.ts"
_ODD_SQLITE = "((CAST(strftime('%%s', c.ts) AS INTEGER) %% b.grid_s) <> 0 OR length(c.ts) > 19)"


def _outlier_predicate(w: str, s: str) -> str:
    # Ordered so that a quiet bar costs two comparisons; ``lo`` = min(move, vmin). Not abs(pc): a
    # non-positive or NaN previous close makes the row a candidate, and Python discards it.
    return (
        f"(abs({w}.close - {w}.pc) > {s}.lo * {w}.pc"
        f" AND (abs({w}.close - {w}.pc) > {s}.move * {w}.pc"
        f" OR abs({w}.nc - {w}.pc) <= {s}.tol * abs({w}.close - {w}.pc)))"
        f" OR abs({w}.open - {w}.pc) > {s}.move * {w}.pc"
    )


# Below this many rows to read, PostgreSQL's JIT compilation (~1 s for this statement, triggered by
# the planner's blind per-series estimates) costs more than it saves.
JIT_MIN_ROWS = 500_000


def window_candidates(table: str, specs: Sequence[WindowSpec], *, gaps: bool, bad: bool, odd: bool,
                      outliers: bool, expected_rows: int | None = None) -> list[WindowRow]:
    """The candidate rows of every series (see the module docstring), ordered by series and ts.

    ``expected_rows``: an upper bound of the rows the pass reads, when the caller knows one.
    """
    if not specs:
        return []
    if is_postgres():
        jit = expected_rows is None or expected_rows >= JIT_MIN_ROWS
        kwargs = {"gaps": gaps, "bad": bad, "odd": odd, "outliers": outliers, "jit": jit}
        workers = _parallel_workers(specs, expected_rows)
        if workers > 1:
            raw = _window_pg_parallel(table, specs, workers, **kwargs)
        else:
            raw = _window_pg(table, specs, **kwargs)
    else:
        raw = []
        for chunk in _chunks(specs, _SQLITE_CHUNK):
            raw.extend(_window_sqlite(table, chunk, gaps=gaps, bad=bad, odd=odd, outliers=outliers))
    if not raw:
        return []
    ts = ns_array([r[2] for r in raw])
    prev = [r[3] for r in raw]
    present = [i for i, p in enumerate(prev) if p is not None]
    pts: list[int | None] = [None] * len(raw)
    for i, value in zip(present, ns_array([prev[i] for i in present]), strict=True):
        pts[i] = int(value)
    return [
        WindowRow(idx=int(r[0]), id=int(r[1]), ts=int(ts[i]), pt=pts[i], open=r[4], close=r[5], pc=r[6],
                  nc=r[7], rn=int(r[8]), is_gap=bool(r[9]), is_dup=bool(r[10]), bad=bool(r[11]),
                  odd=bool(r[12]))
        for i, r in enumerate(raw)
    ]


def _window_where(w: str, s: str, gap_sql: str, *, gaps: bool, bad: bool, odd: bool, outliers: bool) -> str:
    parts = [f"{w}.pt IS NULL", f"{w}.nc IS NULL", f"{w}.ts = {w}.pt"]
    if gaps:
        parts.append(gap_sql)
    if bad:
        parts.append(f"{w}.bad")
    if odd:
        parts.append(f"{w}.odd")
    if outliers:
        parts.append(_outlier_predicate(w, s))
    return " OR ".join(f"({p})" for p in parts)


def _window_pg(table, specs, *, gaps, bad, odd, outliers, jit=True) -> list[tuple]:
    # An unaligned ts can follow the previous one by less than a bar and still skip a bar time.
    gap_sql = ("(w.pt < w.ts - s.step"
               " OR (w.odd AND date_bin(s.step, w.ts, timestamptz '1970-01-01 00:00:00+00') > w.pt))")
    where = _window_where("w", "s", gap_sql, gaps=gaps, bad=bad, odd=odd, outliers=outliers)
    sql = f"""
        WITH s AS (
            -- A seconds-only interval: ts - step is then plain integer arithmetic (no calendar days).
            SELECT *, make_interval(secs => step_s) AS step, make_interval(secs => grid_s) AS grid,
                   least(move, vmin) AS lo
              FROM unnest(%s::int[], %s::text[], %s::text[], %s::int[], %s::timestamptz[],
                          %s::float8[], %s::float8[], %s::float8[], %s::int[])
                   AS u(idx, symbol, timeframe, step_s, since, move, vmin, tol, grid_s)
        )
        SELECT s.idx, w.id, w.ts, w.pt, w.open, w.close, w.pc, w.nc, w.rn,
               COALESCE({gap_sql}, false), COALESCE(w.ts = w.pt, false), w.bad, w.odd
          FROM s
         CROSS JOIN LATERAL (
               SELECT c.id, c.ts, c.open, c.close,
                      {_BAD_PG if bad else 'false'} AS bad,
                      {_ODD_PG if odd else 'false'} AS odd,
                      lag(c.ts) OVER win AS pt,
                      lag(c.close) OVER win AS pc,
                      lead(c.close) OVER win AS nc,
                      row_number() OVER win AS rn
                 FROM {table} c
                WHERE c.symbol = s.symbol AND c.timeframe = s.timeframe
                  AND c.ts >= COALESCE(
                        (SELECT max(p.ts) FROM {table} p
                          WHERE p.symbol = s.symbol AND p.timeframe = s.timeframe AND p.ts < s.since),
                        s.since, '-infinity'::timestamptz)
               WINDOW win AS (ORDER BY c.ts)
         ) w
         WHERE {where}
         ORDER BY s.idx, w.rn
    """
    params = [
        [sp.idx for sp in specs], [sp.symbol for sp in specs], [sp.timeframe for sp in specs],
        [sp.step_seconds for sp in specs], [sp.since for sp in specs],
        [sp.move for sp in specs], [sp.vmin for sp in specs], [sp.tol for sp in specs],
        [sp.grid for sp in specs],
    ]
    if jit:
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchall()
    # set_config(..., true) lasts until the end of the transaction: restore it right after.
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('jit'), set_config('jit', 'off', true)")
        previous = cursor.fetchone()[0]
        cursor.execute(sql, params)
        rows = cursor.fetchall()
        cursor.execute("SELECT set_config('jit', %s, true)", [previous])
        return rows


def _parallel_workers(specs: Sequence[WindowSpec], expected_rows: int | None) -> int:
    """How many connections the window pass may use (1: this one only).

    The pass is one statement per series run back to back by one backend, so a big sweep uses one
    core. Split by series over several connections it uses them all. Only outside a transaction:
    other connections cannot see this one's uncommitted rows (and a caller's atomic block means it
    wants one snapshot). Only for big passes: each extra connection costs a connect.
    """
    workers = conf.DETECTION_PARALLEL_WORKERS
    min_rows = conf.DETECTION_PARALLEL_MIN_ROWS
    if workers <= 1 or len(specs) < 2 or connection.in_atomic_block:
        return 1
    if expected_rows is not None and expected_rows < min_rows:
        return 1
    return min(workers, len(specs))


def _window_pg_parallel(table, specs, workers: int, **kwargs) -> list[tuple]:
    """``_window_pg`` over ``workers`` connections, series dealt round-robin; same rows, same order."""
    from concurrent.futures import ThreadPoolExecutor

    from django.db import connections

    def one(part: Sequence[WindowSpec]) -> list[tuple]:
        try:
            return _window_pg(table, part, **kwargs)
        finally:
            connections.close_all()  # this thread's own connection

    parts = [specs[i::workers] for i in range(workers)]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="window-pass") as pool:
        chunks = list(pool.map(one, parts))
    rows = [row for chunk in chunks for row in chunk]
    rows.sort(key=lambda r: (r[0], r[8]))  # (series idx, row number): the order one statement gives
    return rows


def _window_sqlite(table, specs, *, gaps, bad, odd, outliers) -> list[tuple]:
    values, params = _values_cte(
        "s", ("idx", "symbol", "timeframe", "step_s", "since", "move", "vmin", "tol", "grid_s"),
        [(sp.idx, sp.symbol, sp.timeframe, sp.step_seconds, to_db(sp.since), sp.move, sp.vmin, sp.tol,
          sp.grid) for sp in specs],
    )
    # julianday arithmetic is exact to well under a millisecond at today's dates.
    gap_sql = ("((julianday(w.ts) - julianday(w.pt)) * 86400.0 > w.step_s + 0.001"
               " OR (w.odd AND (CAST(strftime('%%s', w.ts) AS INTEGER) / w.step_s) * w.step_s"
               " > CAST(strftime('%%s', w.pt) AS INTEGER)))")
    where = _window_where("w", "w", gap_sql, gaps=gaps, bad=bad, odd=odd, outliers=outliers)
    sql = f"""
        WITH {values},
        b AS (
            SELECT s.*, COALESCE(
                       (SELECT max(p.ts) FROM {table} p
                         WHERE p.symbol = s.symbol AND p.timeframe = s.timeframe AND p.ts < s.since),
                       s.since, '') AS scan_from
              FROM s
        ),
        w AS (
            SELECT b.idx, b.step_s, b.grid_s, b.move, min(b.move, b.vmin) AS lo, b.tol, c.id, c.ts, c.open, c.close,
                   {_BAD_SQLITE if bad else '0'} AS bad,
                   {_ODD_SQLITE if odd else '0'} AS odd,
                   lag(c.ts) OVER win AS pt,
                   lag(c.close) OVER win AS pc,
                   lead(c.close) OVER win AS nc,
                   row_number() OVER win AS rn
              FROM b JOIN {table} c
                ON c.symbol = b.symbol AND c.timeframe = b.timeframe AND c.ts >= b.scan_from
            WINDOW win AS (PARTITION BY b.idx ORDER BY c.ts, c.id)
        )
        SELECT w.idx, w.id, w.ts, w.pt, w.open, w.close, w.pc, w.nc, w.rn,
               COALESCE({gap_sql}, 0), COALESCE(w.ts = w.pt, 0), w.bad, w.odd
          FROM w
         WHERE {where}
         ORDER BY w.idx, w.rn
    """
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


# --- small whole-series queries ----------------------------------------------------------------


def _series_rows(pairs: Sequence[tuple[int, str, str]], select: str, tail: str = "") -> list[tuple]:
    """Run ``SELECT {select} FROM u ... {tail}`` with ``u(idx, symbol, timeframe)`` the given series."""
    if not pairs:
        return []
    if is_postgres():
        sql = (f"WITH u AS (SELECT * FROM unnest(%s::int[], %s::text[], %s::text[]) AS x(idx, symbol, timeframe)) "
               f"SELECT {select} FROM u {tail}")
        params = [[p[0] for p in pairs], [p[1] for p in pairs], [p[2] for p in pairs]]
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchall()
    rows: list[tuple] = []
    for chunk in _chunks(pairs, _SQLITE_CHUNK * 2):
        values, params = _values_cte("u", ("idx", "symbol", "timeframe"), chunk)
        with connection.cursor() as cursor:
            cursor.execute(f"WITH {values} SELECT {select} FROM u {tail}", params)
            rows.extend(cursor.fetchall())
    return rows


def last_bars(table: str, pairs: Sequence[tuple[int, str, str]]) -> dict[int, int]:
    """Newest stored ts (ns) per series idx; one index probe per series."""
    rows = _series_rows(
        pairs,
        f"u.idx, (SELECT max(c.ts) FROM {table} c WHERE c.symbol = u.symbol AND c.timeframe = u.timeframe)",
    )
    found = [(int(idx), ts) for idx, ts in rows if ts is not None]
    return {idx: int(ns) for (idx, _), ns in zip(found, ns_array([ts for _, ts in found]), strict=True)}


def duplicate_groups(table: str, pairs: Sequence[tuple[int, str, str]]) -> list[tuple[int, int, int]]:
    """(idx, ts ns, rows) of every (symbol, timeframe, ts) stored more than once, whole series."""
    if is_postgres():
        # Per series: a sorted group over an index-only scan, no hash table over the selection.
        rows = _series_rows(
            pairs, "u.idx, g.ts, g.n",
            f"CROSS JOIN LATERAL (SELECT c.ts, count(*) AS n FROM {table} c "
            "WHERE c.symbol = u.symbol AND c.timeframe = u.timeframe GROUP BY c.ts HAVING count(*) > 1) g "
            "ORDER BY u.idx, g.ts",
        )
    else:
        rows = _series_rows(
            pairs, "u.idx, c.ts, count(*)",
            f"JOIN {table} c ON c.symbol = u.symbol AND c.timeframe = u.timeframe "
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
        for chunk in _chunks(groups, _SQLITE_CHUNK * 2):
            values, params = _values_cte("g", ("idx", "symbol", "timeframe", "ts"),
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
    for chunk in _chunks(list(ids), _ID_CHUNK):
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
    for chunk in _chunks(list(pairs), _SQLITE_CHUNK):
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


def existing_series(table: str, pairs: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """Which (symbol, timeframe) pairs have at least one stored row (one index probe each)."""
    if not pairs:
        return []
    found: list[tuple[str, str]] = []
    if is_postgres():
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT p.symbol, p.timeframe FROM unnest(%s::text[], %s::text[]) AS p(symbol, timeframe) "
                f"WHERE EXISTS (SELECT 1 FROM {table} c WHERE c.symbol = p.symbol AND c.timeframe = p.timeframe)",
                [[p[0] for p in pairs], [p[1] for p in pairs]])
            return [(str(s), str(t)) for s, t in cursor.fetchall()]
    for chunk in _chunks(list(pairs), _SQLITE_CHUNK * 2):
        values, params = _values_cte("p", ("symbol", "timeframe"), chunk)
        with connection.cursor() as cursor:
            cursor.execute(
                f"WITH {values} SELECT p.symbol, p.timeframe FROM p WHERE EXISTS "
                f"(SELECT 1 FROM {table} c WHERE c.symbol = p.symbol AND c.timeframe = p.timeframe)",
                params)
            found.extend((str(s), str(t)) for s, t in cursor.fetchall())
    return found


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
        for chunk in _chunks(list(rows), _SQLITE_CHUNK):
            values, params = _values_cte("v", ["id", *columns], [[r["id"], *(value(c, r) for c in columns)]
                                                                 for r in chunk])
            cursor.execute(f"WITH {values} UPDATE {table} SET {', '.join(sets)} FROM v "
                           f"WHERE {table}.id = v.id AND {table}.{unresolved} RETURNING {table}.id",
                           params + fixed_params)
            updated.update(int(r[0]) for r in cursor.fetchall())
    return updated
