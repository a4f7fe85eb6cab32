"""Auto-repair benchmark: the health job with 100 new gaps across 10,000 series, repaired before it
alerts, against the same job with ``REPAIR_AUTO`` off (PostgreSQL).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/marketdata_bench \\
        python bench/bench_repair.py [--series 10000] [--bars 200] [--gaps 100] [--json]

The watchlist and candles are ``bench_health.py``'s (SERIES series of BARS bars on three calendars,
instruments on the synthetic provider, so a repair really re-fetches). After a prime (a full first
scan and one health run), twice, each time on GAPS series not touched before: another writer deletes
one bar in the middle of each of them and writes one duplicate row (a new candle id, so the
incremental scan re-reads the series and finds the hole), then one health run —

- baseline: ``REPAIR_AUTO`` off: the scan records GAPS new gaps (and the duplicates);
- repaired: ``REPAIR_AUTO`` on: the same, and each new gap is re-fetched and re-checked before the
  alerts (``integrity.repair.auto_repair``).

The figure: the repaired run without its repairs (its time less the ``auto_repair`` check's) over the
baseline; target at most 2. The repairs' own time is reported beside it (per repair too). Exit status:
0 figures printed (the target reported, not asserted); 1 a phase errored or the repairs did not fix
the gaps; 2 cannot run here (not PostgreSQL, not a benchmark database).
"""

from __future__ import annotations

import sys

import bench_health
import common
from common import BenchFailure, timer, truncate

TARGET_RATIO = 2.0


def new_gaps(offset: int, count: int) -> int:
    """In ``count`` series from the ``offset``-th (by symbol, timeframe): one bar deleted mid-series and
    its oldest row duplicated (a new id: the series changed, re-read from there). Returns the series touched."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE TEMP TABLE touched AS SELECT symbol, timeframe FROM series_stats "
            "ORDER BY symbol, timeframe OFFSET %s LIMIT %s", [offset, count])
        cursor.execute(
            "DELETE FROM candles c USING (SELECT t.symbol, t.timeframe, (SELECT ts FROM candles x WHERE "
            "x.symbol = t.symbol AND x.timeframe = t.timeframe ORDER BY ts OFFSET 100 LIMIT 1) AS ts "
            "FROM touched t) d WHERE c.symbol = d.symbol AND c.timeframe = d.timeframe AND c.ts = d.ts")
        deleted = cursor.rowcount
        cursor.execute(
            "INSERT INTO candles (symbol, timeframe, ts, open, high, low, close, volume, source, ingested_at, "
            "updated_at) SELECT DISTINCT ON (c.symbol, c.timeframe) c.symbol, c.timeframe, c.ts, c.open, c.high, "
            "c.low, c.close, c.volume, c.source, c.ingested_at, c.updated_at FROM candles c JOIN touched t "
            "USING (symbol, timeframe) ORDER BY c.symbol, c.timeframe, c.ts")
        cursor.execute("DROP TABLE IF EXISTS touched")
    return deleted


def health_run(settings, auto: bool) -> dict:
    from integrity.health.job import run_health_monitoring

    settings.REPAIR_AUTO = auto
    with timer() as t:
        report = run_health_monitoring(now=bench_health.NOW)
    repairs = report.repairs or {}
    repair_seconds = report.timings_ms.get("auto_repair", 0) / 1000 if auto else 0.0
    return {"seconds": round(t["seconds"], 3), "repair_seconds": round(repair_seconds, 3),
            "without_repairs_seconds": round(t["seconds"] - repair_seconds, 3),
            "new_anomalies": (report.anomaly_scan or {}).get("new_anomalies"),
            "by_outcome": repairs.get("by_outcome", {}), "errors": [e["check"] for e in report.errors]}


def add_arguments(parser) -> None:
    parser.add_argument("--series", type=int, default=10_000)
    parser.add_argument("--bars", type=int, default=200)
    parser.add_argument("--gaps", type=int, default=100, help="new gaps in each measured run")
    parser.add_argument("--keep-data", action="store_true")


def check(args) -> str | None:
    if min(args.series, args.bars, args.gaps) < 1 or args.bars < 150 or 2 * args.gaps > args.series:
        return "--series, --bars (at least 150) and --gaps must be positive, with 2 × gaps ≤ series"
    return None


def run(args, report: dict) -> None:
    import logging

    from django.conf import settings

    from integrity.health.job import run_health_monitoring
    from integrity.quality.anomalies import detect_data_anomalies

    logging.getLogger("integrity").setLevel(logging.CRITICAL)
    settings.REPAIR_MAX_PER_RUN = max(args.gaps, 1)
    with timer() as t:
        counts = bench_health.load(args.series, args.bars)
    print(f"  loaded {counts['candles']:,} candles for {counts['series']:,} series in {t['seconds']:.1f}s", flush=True)
    detect_data_anomalies(now=bench_health.NOW)
    settings.REPAIR_AUTO = False
    run_health_monitoring(now=bench_health.NOW)

    new_gaps(0, args.gaps)
    baseline = health_run(settings, auto=False)
    print(f"  baseline (REPAIR_AUTO off): {baseline}", flush=True)
    new_gaps(args.gaps, args.gaps)
    repaired = health_run(settings, auto=True)
    print(f"  repaired (REPAIR_AUTO on): {repaired}", flush=True)
    ratio = round(repaired["without_repairs_seconds"] / baseline["seconds"], 2) if baseline["seconds"] else None
    per_repair = round(repaired["repair_seconds"] / args.gaps, 4)
    report["results"] = {**counts, "gaps": args.gaps, "baseline": baseline, "repaired": repaired,
                         "ratio_without_repairs": ratio, "seconds_per_repair": per_repair}
    verdict = "meets" if ratio is not None and ratio <= TARGET_RATIO else "MISSES"
    print(f"\n== summary\n  health run with {args.gaps} auto-repairs, repairs excluded / without repairs = {ratio} "
          f"[{verdict} the ≤ {TARGET_RATIO:g} target]; the repairs took {repaired['repair_seconds']:.2f}s "
          f"({per_repair * 1000:.0f} ms each)", flush=True)
    if repaired["by_outcome"].get("fixed", 0) != args.gaps:
        raise BenchFailure(f"expected {args.gaps} gaps fixed, got {repaired['by_outcome']}")


def finish(args, report: dict) -> None:
    if not args.keep_data:
        truncate()
        truncate(bench_health.EXTRA_TABLES)


def summary(args, report: dict) -> list[dict]:
    r = report["results"]
    return [common.summary_row(
        f"`bench_repair.py`, {r['series']:,} series, {r['gaps']} auto-repaired gaps",
        f"health run, repairs excluded / without repairs = {r['ratio_without_repairs']:.2f} "
        f"({r['seconds_per_repair'] * 1000:.0f} ms a repair)", f"≤ {TARGET_RATIO:g}")]


def main(argv=None) -> int:
    return common.main("repair", __doc__, add_arguments, run, argv, check=check, finish=finish, summary=summary)


if __name__ == "__main__":
    sys.exit(main())
