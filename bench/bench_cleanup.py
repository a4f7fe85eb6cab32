"""Duplicate-cleanup benchmark: cleanup_duplicate_records against one raw window-function DELETE.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/marketdata_bench \\
        python bench/bench_cleanup.py [--rows 2000000] [--dup-pct 1] [--rounds 2] [--batch-size 1000]

Data: ``--rows`` candles (default 2M) over 10 symbols of 1m bars, of which ``--dup-pct`` percent
(default 1 %) are extra copies of existing bars (one extra copy per duplicated bar, spread evenly,
appended after the originals like a legacy reload; a third of the copies ingested later than the
original, a third earlier, a third at the same instant so the id tie-break matters). The rows are
rendered to a COPY text buffer once (untimed, by PostgreSQL itself) and loaded with ``COPY`` into an emptied table before every timed run
(``TRUNCATE … RESTART IDENTITY``, so every load gives the same ids), then ``VACUUM ANALYZE`` and a
checkpoint (untimed).

Timed, ``--rounds`` times each, alternating, best of each kept:
- ``cleanup_duplicate_records(batch_size=…)``: the service end to end (numbering pass, per-batch
  lock + rank, DELETE, log inserts, one commit per batch);
- the baseline, one statement in autocommit, ranking like the service (valid copies first):
  ``DELETE FROM candles c USING (SELECT id, row_number() OVER (PARTITION BY symbol, timeframe, ts
  ORDER BY CASE WHEN <invalid OHLC> THEN 1 ELSE 0 END, ingested_at DESC, id DESC) rn FROM candles
  AS c) d WHERE c.id = d.id AND d.rn > 1``.

Both must leave the same surviving ids (checked); the cleanup must log every deleted id (checked).
Prints ``ratio cleanup / raw DELETE = X.XX (target <= 1.5)``.

Exit status: 0 once the figures are printed (the target is reported, not asserted), 1 if a check
failed or anything errored, 2 if the benchmark cannot run here (not PostgreSQL, not a bench database).
"""

from __future__ import annotations

import sys
import time

import common

RATIO_TARGET = 1.5
SYMBOLS = 10
TIMEFRAME = "1m"
COPY_COLUMNS = "symbol, timeframe, ts, open, high, low, close, volume, source, ingested_at, updated_at"
COPY_CHUNK_BYTES = 1 << 20
BENCH_TABLES = ("candles", "duplicate_records_log")
# The same ranking as the service (valid copies first, then newest), in one statement.
RAW_DELETE = (
    "DELETE FROM candles c USING (SELECT id, row_number() OVER (PARTITION BY symbol, timeframe, ts "
    "ORDER BY CASE WHEN {invalid} THEN 1 ELSE 0 END, ingested_at DESC, id DESC) rn FROM candles AS c) d "
    "WHERE c.id = d.id AND d.rn > 1"
)


def build_copy_buffer(rows: int, dup_pct: float) -> tuple[bytes, int]:
    """COPY text for ``rows`` candles of which ``dup_pct`` % are extra copies. Returns (data, copies).

    PostgreSQL renders it (``COPY (SELECT …) TO STDOUT``): deterministic arithmetic, no randomness,
    and much faster than formatting two million rows in Python. The originals come first, then the
    copies (like a legacy reload appended later). The buffer is built once and every load replays
    it, so every load has the same rows with the same ids.
    """
    import io

    from django.db import connection

    copies = max(1, int(round(rows * dup_pct / 100)))
    unique = rows - copies
    per_symbol = -(-unique // SYMBOLS)
    step = unique // copies
    query = f"""
        WITH base AS (
            SELECT i,
                   'BENCH' || lpad((i / {per_symbol})::text, 2, '0') AS symbol,
                   timestamptz '2020-01-01 00:00:00+00' + (i % {per_symbol}) * interval '1 minute' AS ts,
                   (100 + ((i * 7919) % 10007) / 100.0)::float8 AS px,
                   ((i * 104729) % 9973 + 1)::float8 AS volume
              FROM generate_series(0::bigint, {unique - 1}) AS i
        ), dups AS (
            SELECT b.*, row_number() OVER (ORDER BY i) - 1 AS k
              FROM base AS b WHERE i % {step} = {step // 2} ORDER BY i LIMIT {copies}
        )
        SELECT symbol, '{TIMEFRAME}', ts, px, px + 0.1, px - 0.1, px, volume, 'bench', ingested, ingested
          FROM (
                SELECT 0 AS part, i, symbol, ts, px, volume, timestamptz '2024-06-01 00:00:00+00' AS ingested
                  FROM base
                UNION ALL
                -- a third later (the copy is kept), a third earlier (the original is kept), a third
                -- tied (the copy has the higher id, so it is kept)
                SELECT 1, i, symbol, ts, px + 0.01, volume,
                       timestamptz '2024-06-01 00:00:00+00' + (ARRAY[60, -60, 0])[k % 3 + 1] * interval '1 second'
                  FROM dups
               ) AS r
    """
    buffer = io.BytesIO()
    with connection.cursor() as cursor:
        with cursor.cursor.copy(f"COPY ({query}) TO STDOUT") as copy:
            for chunk in copy:
                buffer.write(chunk)
    return buffer.getvalue(), copies


def load(data: bytes) -> None:
    """Empty the tables and COPY the rows in; vacuum, analyze and checkpoint (all untimed)."""
    from django.db import connection, transaction

    common.truncate(BENCH_TABLES)
    view = memoryview(data)
    with transaction.atomic(), connection.cursor() as cursor:
        with cursor.cursor.copy(f"COPY candles ({COPY_COLUMNS}) FROM STDIN") as copy:
            for offset in range(0, len(view), COPY_CHUNK_BYTES):
                copy.write(view[offset:offset + COPY_CHUNK_BYTES])
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE candles")
        cursor.execute("VACUUM ANALYZE duplicate_records_log")
    common.checkpoint()


def survivors_fingerprint() -> tuple[int, int]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*), coalesce(sum(id), 0) FROM candles")
        return tuple(cursor.fetchone())


def check_cleanup(result, copies: int) -> list[str]:
    from django.db import connection

    problems = []
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*), coalesce(sum(array_length(duplicate_ids, 1)), 0) FROM duplicate_records_log")
        logs, logged_ids = cursor.fetchone()
        cursor.execute("SELECT count(*) FROM (SELECT 1 FROM candles GROUP BY symbol, timeframe, ts "
                       "HAVING count(*) > 1) d")
        left = cursor.fetchone()[0]
        cursor.execute("SELECT count(*) FROM candles c JOIN (SELECT unnest(duplicate_ids) AS id "
                       "FROM duplicate_records_log) l ON l.id = c.id")
        logged_but_present = cursor.fetchone()[0]
    expected = (copies, copies, copies, 0, 0)
    got = (result.groups_total, result.rows_deleted, logs, left, logged_but_present)
    if got[:3] != expected[:3] or logged_ids != copies or left or logged_but_present:
        problems.append(f"cleanup: groups/rows/log rows/dup groups left/logged ids present = {got}, "
                        f"logged ids {logged_ids}; expected {copies} groups, rows and ids, nothing left")
    return problems


def time_cleanup(batch_size: int) -> tuple[float, object]:
    from integrity.cleanup import cleanup_duplicate_records

    started = time.perf_counter()
    result = cleanup_duplicate_records(batch_size=batch_size)
    return time.perf_counter() - started, result


def time_raw_delete() -> tuple[float, int]:
    from django.db import connection

    from integrity.quality.sql import invalid_ohlc_sql

    statement = RAW_DELETE.format(invalid=invalid_ohlc_sql())
    started = time.perf_counter()
    with connection.cursor() as cursor:  # autocommit: the statement commits on its own
        cursor.execute(statement)
        deleted = cursor.rowcount
    return time.perf_counter() - started, deleted


def run(args, report: dict) -> None:
    print(f"data: {args.rows:,} candles ({SYMBOLS} symbols, {TIMEFRAME}), {args.dup_pct:g} % duplicated; "
          f"cleanup batch size {args.batch_size:,} groups", flush=True)
    with common.timer() as t:
        data, copies = build_copy_buffer(args.rows, args.dup_pct)
    print(f"  COPY text prepared (untimed): {t['seconds']:.1f} s, {len(data) / 1e6:.0f} MB, "
          f"{copies:,} duplicate rows", flush=True)
    cleanup_times, raw_times = [], []
    fingerprints = {}
    for round_no in range(1, args.rounds + 1):
        load(data)
        seconds, result = time_cleanup(args.batch_size)
        cleanup_times.append(seconds)
        fingerprints["cleanup"] = survivors_fingerprint()
        report["errors"].extend(check_cleanup(result, copies))
        print(f"  round {round_no}: cleanup_duplicate_records {seconds:.3f} s "
              f"({result.groups_total:,} groups, {result.rows_deleted:,} rows, {result.batches} batches)", flush=True)

        load(data)
        seconds, deleted = time_raw_delete()
        raw_times.append(seconds)
        fingerprints["raw"] = survivors_fingerprint()
        if deleted != copies:
            report["errors"].append(f"raw DELETE removed {deleted} rows, expected {copies}")
        print(f"  round {round_no}: raw DELETE {seconds:.3f} s ({deleted:,} rows)", flush=True)
        if fingerprints["cleanup"] != fingerprints["raw"]:
            report["errors"].append(f"survivors differ: cleanup {fingerprints['cleanup']} vs raw {fingerprints['raw']}")
    best_cleanup, best_raw = min(cleanup_times), min(raw_times)
    ratio = best_cleanup / best_raw
    report.update(rows=args.rows, duplicate_rows=copies, batch_size=args.batch_size,
                  cleanup_seconds=cleanup_times, raw_delete_seconds=raw_times,
                  best_cleanup_seconds=best_cleanup, best_raw_delete_seconds=best_raw, ratio=ratio,
                  target=RATIO_TARGET)
    print(f"best cleanup {best_cleanup:.3f} s, best raw DELETE {best_raw:.3f} s")
    print(f"ratio cleanup / raw DELETE = {ratio:.2f} (target <= {RATIO_TARGET})"
          + ("" if ratio <= RATIO_TARGET else "  ** above target **"), flush=True)


def add_arguments(parser) -> None:
    parser.add_argument("--rows", type=int, default=2_000_000, help="candles loaded (default 2M)")
    parser.add_argument("--dup-pct", type=float, default=1.0, help="percent of rows that are extra copies")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of each (best is kept)")
    parser.add_argument("--batch-size", type=int, default=1000, help="cleanup groups per transaction")
    parser.add_argument("--keep-data", action="store_true", help="leave the last run's candles in place")


def check(args) -> str | None:
    if args.rows < 100 or args.rounds < 1 or args.batch_size < 1 or not 0 < args.dup_pct < 50:
        return "--rows >= 100, --rounds >= 1, --batch-size >= 1 and 0 < --dup-pct < 50"
    return None


def finish(args, report: dict) -> None:
    if not args.keep_data:
        common.truncate(BENCH_TABLES)


def summary(args, report: dict) -> list[dict]:
    return [common.summary_row(
        f"`bench_cleanup.py`, {report['rows']:,} candles, {args.dup_pct:g} % dup",
        f"cleanup / raw DELETE = {report['ratio']:.2f}",
        f"≤ {report['target']}")]


def main(argv=None) -> int:
    return common.main("cleanup", __doc__, add_arguments, run, argv, check=check, finish=finish,
                       summary=summary)


if __name__ == "__main__":
    sys.exit(main())
