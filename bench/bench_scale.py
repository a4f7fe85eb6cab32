"""Figures at scale: the store grown to 10M, 25M, 50M 1m bars, every service against its baseline at
each size, in the same run (PostgreSQL, the partitioned candle store).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/marketdata_bench \\
        python bench/bench_scale.py [--sizes 10M,25M] [--series 500] [--backfill-bars 100000]
                                    [--changed 100] [--dups 100000] [--anomalies 1000000] [--no-flat]

The store holds ``--series`` 24/7 1m series (S0000 …, crypto) ending 2024-06-01 00:00 UTC; it grows
to each size in turn by adding older bars to every series with one ``INSERT … SELECT`` over
``generate_series`` per size (smooth prices: valid, no outliers; partitions made first, as our
writer does). An unpartitioned twin, ``bench_candles_flat`` (the table before migration 0007: key
``id``, the (symbol, timeframe, ts) index), gets the same rows, for the size comparison only.

At each size, timed in the same run:
- backfill: ``run_backfill`` of one more series (``BENCHSYN``, ``--backfill-bars`` synthetic bars;
  ``bench_backfill``'s functions) against one raw ``COPY`` of the same rows (target ≤ 2×);
- detection: the full sweep (``detect_data_anomalies(full=True)``, recording, which also primes the
  incremental scan) against one window pass over the same rows (``bench_detection.WINDOW_PASS``;
  target ≤ 2×); then one health run primes alerts, ``--changed`` series each get a duplicated bar from
  another writer, and the health run after that is timed (target ≤ 2 s, flat across sizes);
- cleanup: ``--dups`` duplicated bars (older copies: the originals are kept) removed by
  ``cleanup_duplicate_records`` against the same duplicates removed by ``bench_cleanup``'s one
  hand-written DELETE (target ≤ 1.5×);
- API: the anomaly list at ``--anomalies`` anomalies (``bench_api``'s load and median of 20 requests;
  target ≤ 50 ms), then the anomalies are emptied again;
- disk: bytes per bar (table + indexes) of the partitioned store and of the unpartitioned twin.

On the shared 2-core development machine (load ≈ 12) the 10M size took 12 minutes and 25M another 23
(growing the store, both copies, is most of it: ``--no-flat`` halves that); 50M needs about an hour
more and ~30 GB of disk for both stores: ``--sizes 10M,25M,50M``. Sizes must increase (the store grows).
It ends with a markdown table of the curve (paste it into bench/README.md).
"""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime, timedelta

import bench_api
import bench_backfill
import bench_cleanup
import bench_detection
import common
from common import BenchFailure, timer

END = datetime(2024, 6, 1, tzinfo=UTC)
NOW = END + timedelta(minutes=30)  # every series fresh
FLAT = "bench_candles_flat"
COLUMNS = "symbol, timeframe, ts, open, high, low, close, volume, source, ingested_at, updated_at"
TARGETS = {"backfill": 2.0, "detection": 2.0, "health_seconds": 2.0, "cleanup": 1.5, "api_ms": 50.0}
EXTRA_TABLES = ("instruments", "health_check_runs", "data_anomalies", "rejected_candles")


def parse_size(text: str) -> int:
    text = text.strip().upper()
    scale = {"K": 1_000, "M": 1_000_000}.get(text[-1:], 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


# --- the store -------------------------------------------------------------------------------------


def reset(series: int, flat: bool) -> None:
    from django.db import connection

    from integrity.models import Instrument

    common.truncate()
    common.truncate(EXTRA_TABLES)
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {FLAT}")
        if flat:
            cursor.execute(f"CREATE TABLE {FLAT} (LIKE candles INCLUDING DEFAULTS)")
            cursor.execute(f"ALTER TABLE {FLAT} ADD PRIMARY KEY (id)")
            cursor.execute(f"CREATE INDEX {FLAT}_series_idx ON {FLAT} (symbol, timeframe, ts)")
    Instrument.objects.bulk_create([
        Instrument(symbol=f"S{i:04d}", asset_class="crypto", calendar="24/7", timeframes=["1m"], provider="synthetic")
        for i in range(series)])


def grow(series: int, have: int, want: int, flat: bool) -> float:
    """Add bars ``have + 1`` … ``want`` (counted back from END) to every series; returns seconds."""
    from django.db import connection, transaction

    from integrity.partitions import ensure_partitions

    first = END - timedelta(minutes=want)
    with timer() as t:
        with transaction.atomic():
            ensure_partitions("1m", first, END)
        with connection.cursor() as cursor:
            cursor.execute("SELECT coalesce(max(id), 0) FROM candles")
            last_id = cursor.fetchone()[0]
            # One statement: per series, its older bars in time order (index inserts stay local).
            cursor.execute(
                f"INSERT INTO candles ({COLUMNS}) "
                "SELECT 'S' || lpad(s::text, 4, '0'), '1m', %s - b * interval '1 minute', p, p * 1.001, p * 0.999, "
                "p, 1000, 'bench', %s, %s "
                "FROM generate_series(0, %s) AS s CROSS JOIN LATERAL generate_series(%s + 0 * s, %s, -1) AS b "
                "CROSS JOIN LATERAL (SELECT 100 + 10 * sin(b / 997.0 + s) AS p) AS price",
                [END, END, END, series - 1, want, have + 1])
            if flat:
                cursor.execute(f"INSERT INTO {FLAT} SELECT * FROM candles WHERE id > %s", [last_id])
            cursor.execute("VACUUM ANALYZE candles")
            if flat:
                cursor.execute(f"VACUUM ANALYZE {FLAT}")
    return t["seconds"]


def bytes_per_bar(rows: int, flat: bool) -> dict:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree('candles') WHERE isleaf")
        partitioned = int(cursor.fetchone()[0])
        cursor.execute("SELECT count(*) FROM pg_partition_tree('candles') WHERE isleaf")
        leaves = cursor.fetchone()[0]
        result = {"partitioned": round(partitioned / rows, 1), "partitions": leaves}
        if flat:
            cursor.execute("SELECT pg_total_relation_size(%s)", [FLAT])
            result["unpartitioned"] = round(cursor.fetchone()[0] / rows, 1)
    return result


# --- the figures at one size ----------------------------------------------------------------------


def backfill_vs_copy(bars: int, chunks: list[bytes]) -> dict:
    from django.db import connection

    from integrity.models import Instrument

    def forget():
        with connection.cursor() as cursor:
            cursor.execute("DELETE FROM candles WHERE symbol = %s", [bench_backfill.SYMBOL])
            cursor.execute("DELETE FROM backfill_state_persistent WHERE symbol = %s", [bench_backfill.SYMBOL])

    bench_backfill.register_instrument()
    forget()
    common.checkpoint()
    backfill, _ = bench_backfill.run_backfill_once(bars, None)
    backfilled = bench_backfill.fingerprint()
    forget()
    common.checkpoint()
    copy = bench_backfill.copy_once(chunks)
    if not bench_backfill.same_fingerprint(backfilled, bench_backfill.fingerprint()):
        raise BenchFailure("run_backfill and the raw COPY stored different rows")
    forget()
    Instrument.objects.filter(symbol=bench_backfill.SYMBOL).delete()  # not part of the watched store
    return {"backfill_seconds": round(backfill, 2), "copy_seconds": round(copy, 2), "ratio": round(backfill / copy, 2)}


def detection_and_health(changed: int) -> dict:
    from django.db import connection

    from integrity.health.job import run_health_monitoring
    from integrity.quality.anomalies import detect_data_anomalies

    window, _ = bench_detection.best_of(bench_detection.window_pass, 1)
    with timer() as t:
        found = len(detect_data_anomalies(full=True, now=NOW).findings)
    sweep = t["seconds"]
    run_health_monitoring(now=NOW)  # settles the alerts the sweep's findings raise (untimed)
    with connection.cursor() as cursor:
        # ``changed`` series each get a copy of their newest bar from another writer.
        cursor.execute(
            f"INSERT INTO candles ({COLUMNS}) SELECT symbol, timeframe, ts, open, high, low, close, volume, "
            "'other', ingested_at - interval '1 day', updated_at FROM candles "
            "WHERE symbol IN (SELECT symbol FROM instruments ORDER BY symbol LIMIT %s) AND timeframe = '1m' "
            "AND ts = %s", [changed, END - timedelta(minutes=1)])
        copies = cursor.rowcount
    with timer() as t:
        report = run_health_monitoring(now=NOW)
    scan = report.anomaly_scan or {}
    with connection.cursor() as cursor:  # the copies go again (through the index): the store is as it was
        cursor.execute("DELETE FROM candles WHERE symbol IN (SELECT symbol FROM instruments) AND timeframe = '1m' "
                       "AND ts = %s AND source = 'other'", [END - timedelta(minutes=1)])
    if report.errors:
        raise BenchFailure(f"health run errors: {report.errors[0]['error']}")
    return {"window_seconds": round(window, 2), "sweep_seconds": round(sweep, 2), "findings": found,
            "ratio": round(sweep / window, 2), "changed": copies, "health_seconds": round(t["seconds"], 2),
            "rescanned": scan.get("series_rescanned"),
            "health_ms": {k: v for k, v in report.timings_ms.items() if v >= 100}}


def cleanup_vs_delete(dups: int, rows: int) -> dict:
    from django.db import connection

    def duplicate() -> int:
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO candles ({COLUMNS}) SELECT symbol, timeframe, ts, open, high, low, close, volume, "
                "'legacy', ingested_at - interval '1 day', updated_at FROM candles WHERE id %% %s = 0 LIMIT %s",
                [max(1, rows // dups), dups])
            made = cursor.rowcount
            cursor.execute("ANALYZE candles")
        common.checkpoint()
        return made

    def count() -> int:
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM candles")
            return cursor.fetchone()[0]

    made = duplicate()
    cleanup, result = bench_cleanup.time_cleanup(1000)
    if result.rows_deleted != made:
        raise BenchFailure(f"cleanup deleted {result.rows_deleted} rows, {made} duplicates planted")
    again = duplicate()
    delete, deleted = bench_cleanup.time_raw_delete()
    if deleted != again or count() != rows:
        raise BenchFailure(f"raw DELETE removed {deleted} rows of {again} duplicates")
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE duplicate_records_log")
    return {"duplicates": made, "cleanup_seconds": round(cleanup, 2), "delete_seconds": round(delete, 2),
            "ratio": round(cleanup / delete, 2)}


def anomaly_list(anomalies: int, client) -> dict:
    from django.db import connection

    with timer() as t:
        bench_api.load(anomalies)
    median_ms, queries = bench_api.measure(client, 20)
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE data_anomalies RESTART IDENTITY")
    return {"anomalies": anomalies, "median_ms": round(median_ms, 1), "queries": queries,
            "load_seconds": round(t["seconds"], 1)}


# --- the run ----------------------------------------------------------------------------------------


def add_arguments(parser) -> None:
    parser.add_argument("--sizes", default="10M,25M", help="store sizes in 1m bars, increasing (e.g. 10M,25M,50M)")
    parser.add_argument("--series", type=int, default=500)
    parser.add_argument("--backfill-bars", type=int, default=100_000)
    parser.add_argument("--changed", type=int, default=100)
    parser.add_argument("--dups", type=int, default=100_000)
    parser.add_argument("--anomalies", type=int, default=1_000_000)
    parser.add_argument("--no-flat", action="store_true", help="no unpartitioned twin (no size comparison)")


def check(args) -> str | None:
    try:
        args.size_list = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        return f"--sizes {args.sizes!r}: sizes such as 10M,25M"
    if not args.size_list or args.size_list != sorted(set(args.size_list)):
        return "--sizes must be increasing"
    if args.size_list[0] < args.series * 2 or min(args.series, args.backfill_bars, args.dups, args.anomalies) < 1:
        return "sizes of at least 2 bars per series; --series, --backfill-bars, --dups, --anomalies at least 1"
    if args.changed > args.series:
        return "--changed cannot exceed --series"
    return None


def run(args, report: dict) -> None:
    flat = not args.no_flat
    started = time.monotonic()
    print(f"{args.series} series of 1m bars; sizes {', '.join(f'{s:,}' for s in args.size_list)}; "
          f"unpartitioned twin {'yes' if flat else 'no'}", flush=True)
    reset(args.series, flat)
    chunks, _, _ = bench_backfill.build_copy_buffer(args.backfill_bars)
    client = bench_api.api_client()
    have, rows_done = 0, []
    for size in args.size_list:
        per_series = size // args.series
        rows = per_series * args.series
        print(f"\n== {rows:,} bars ({per_series:,} per series)", flush=True)
        load = grow(args.series, have, per_series, flat)
        have = per_series
        print(f"  grown in {load:.0f} s", flush=True)
        row = {"bars": rows, "load_seconds": round(load, 1)}
        row["backfill"] = backfill_vs_copy(args.backfill_bars, chunks)
        print(f"  backfill {args.backfill_bars:,} bars {row['backfill']['backfill_seconds']} s / raw COPY "
              f"{row['backfill']['copy_seconds']} s = {row['backfill']['ratio']}", flush=True)
        row["detection"] = detection_and_health(args.changed)
        d = row["detection"]
        print(f"  detection sweep {d['sweep_seconds']} s / window pass {d['window_seconds']} s = {d['ratio']} "
              f"({d['findings']} findings); health run after {d['changed']} series changed {d['health_seconds']} s "
              f"(re-read {d['rescanned']}; checks over 100 ms: {d['health_ms']})", flush=True)
        row["cleanup"] = cleanup_vs_delete(args.dups, rows)
        c = row["cleanup"]
        print(f"  cleanup of {c['duplicates']:,} duplicates {c['cleanup_seconds']} s / one DELETE "
              f"{c['delete_seconds']} s = {c['ratio']}", flush=True)
        row["api"] = anomaly_list(args.anomalies, client)
        print(f"  anomaly list at {args.anomalies:,} anomalies: median {row['api']['median_ms']} ms", flush=True)
        row["disk"] = bytes_per_bar(rows, flat)
        print(f"  bytes per bar: partitioned {row['disk']['partitioned']} ({row['disk']['partitions']} partitions)"
              + (f", unpartitioned {row['disk']['unpartitioned']}" if flat else ""), flush=True)
        row["elapsed_seconds"] = round(time.monotonic() - started)
        rows_done.append(row)
        report["sizes"] = rows_done
    print()
    print(curve_table(rows_done, args))


def curve_table(rows: list[dict], args) -> str:
    header = ("| bars | backfill / COPY (≤ 2) | sweep / window (≤ 2) | health after "
              f"{args.changed} changed (≤ 2 s) | cleanup / DELETE (≤ 1.5) | anomaly list, "
              f"{args.anomalies:,} (≤ 50 ms) | bytes/bar partitioned vs unpartitioned |")
    lines = [header, "|" + "---|" * 7]
    for r in rows:
        b, d, c, a, disk = r["backfill"], r["detection"], r["cleanup"], r["api"], r["disk"]
        lines.append(
            f"| {r['bars'] / 1e6:g}M | {b['ratio']} ({b['backfill_seconds']} s vs {b['copy_seconds']} s) "
            f"| {d['ratio']} ({d['sweep_seconds']} s vs {d['window_seconds']} s) | {d['health_seconds']} s "
            f"| {c['ratio']} ({c['cleanup_seconds']} s vs {c['delete_seconds']} s) | {a['median_ms']} ms "
            f"| {disk['partitioned']} vs {disk.get('unpartitioned', '–')} |")
    return "\n".join(lines)


def finish(args, report: dict) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {FLAT}")
    common.truncate()
    common.truncate(EXTRA_TABLES)


def summary(args, report: dict) -> list[dict]:
    return [common.summary_row(
        f"`bench_scale.py`, {r['bars'] / 1e6:g}M 1m bars, {args.series} series",
        f"backfill / COPY {r['backfill']['ratio']}; sweep / window {r['detection']['ratio']}; health after "
        f"{args.changed} changed {r['detection']['health_seconds']} s; cleanup / DELETE {r['cleanup']['ratio']}; "
        f"anomaly list {r['api']['median_ms']} ms; bytes/bar {r['disk']['partitioned']} partitioned vs "
        f"{r['disk'].get('unpartitioned', '–')}",
        "≤ 2; ≤ 2; ≤ 2 s; ≤ 1.5; ≤ 50 ms")
        for r in report["sizes"]]


def main(argv=None) -> int:
    return common.main("scale", __doc__, add_arguments, run, argv, check=check, finish=finish, summary=summary)


if __name__ == "__main__":
    sys.exit(main())
