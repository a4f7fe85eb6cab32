"""The detectors' window pass (PostgreSQL and SQLite): one statement for many series.

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
index, so no sort of the whole selection is needed (a hash join plus one big sort costs more than
a plain window pass).
A big sweep outside a transaction deals its series over ``DETECTION_PARALLEL_WORKERS`` connections
(one backend, hence one core, runs one statement): same rows, same order, all cores.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime

from django.db import connection, connections, transaction

from ..conf import conf
from ..series import chunks
from .sql import (
    INVALID_OHLC_PG,
    INVALID_OHLC_SQLITE,
    SQLITE_CHUNK,
    is_postgres,
    ns_array,
    to_db,
    values_cte,
)


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


_ODD_PG = "date_bin(s.grid, c.ts, timestamptz '1970-01-01 00:00:00+00') <> c.ts"
_ODD_SQLITE = "((CAST(strftime('%%s', c.ts) AS INTEGER) %% b.grid_s) <> 0 OR length(c.ts) > 19)"


def _row_columns(bad: str, odd: str) -> str:
    """The columns the window pass computes for a candle ``c`` over its series in ts order (``win``):
    the OHLC-rule and alignment flags (``bad``, ``odd``: SQL, or a constant when not asked for), the
    previous ts and close, the next close and the row number."""
    return (f"{bad} AS bad, {odd} AS odd, lag(c.ts) OVER win AS pt, lag(c.close) OVER win AS pc, "
            "lead(c.close) OVER win AS nc, row_number() OVER win AS rn")


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
        for chunk in chunks(specs, SQLITE_CHUNK):
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
                      {_row_columns(INVALID_OHLC_PG if bad else 'false', _ODD_PG if odd else 'false')}
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
    values, params = values_cte(
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
                   {_row_columns(INVALID_OHLC_SQLITE if bad else '0', _ODD_SQLITE if odd else '0')}
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
