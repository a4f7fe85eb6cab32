"""Backfill benchmark: run_backfill throughput against a raw COPY, and peak memory of a big run.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/marketdata_bench \\
        python bench/bench_backfill.py [--bars 1000000] [--memory-bars 5000000] [--json]

Throughput: ``integrity.backfill.run_backfill`` of a synthetic 24/7 1m series over a fixed
historical range (end 2024-01-01 00:00 UTC, start ``--bars`` minutes earlier), timed end to end
(claim, generation, validation, staging COPY, merge, checkpoints, finish), against a baseline
measured in the same run: the same rows, generated beforehand and rendered to a COPY text buffer
(untimed), loaded with one ``COPY candles (...) FROM STDIN`` into the same table with its index.
The two alternate, ``--rounds`` times each, from an empty table whose planner statistics are
reset to "never analyzed" (TRUNCATE keeps pg_statistic, so otherwise the merge's plans would depend
on whichever ANALYZE last ran here); the best of each is compared.

Memory: a fresh interpreter runs a backfill of ``--memory-bars`` bars and reports its peak RSS;
another fresh interpreter only sets Django up and connects, to show the fixed overhead. The peak
is read from /proc/self/status VmHWM: ``ru_maxrss`` survives exec on Linux and would report the
(bigger) parent's high-water mark in the child; it is kept in the JSON as ``ru_maxrss_mb``.
The memory run is killed after ``--memory-timeout`` seconds (its peak so far is reported).

Exit status: 0 once the figures are printed (targets are reported, not asserted), 1 if anything
errored (a failed backfill, a row-count or checksum mismatch, a child that crashed or timed out),
2 if the benchmark cannot run here (not PostgreSQL, not a benchmark database).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime, timedelta

import common

SYMBOL = "BENCHSYN"
TIMEFRAME = "1m"
CALENDAR = "24/7"
PROVIDER_OPTIONS = {"seed": 7}
RANGE_END = datetime(2024, 1, 1, tzinfo=UTC)
RATIO_TARGET = 2.0
RSS_TARGET_MB = 300.0
COPY_COLUMNS = "symbol, timeframe, ts, open, high, low, close, volume, source, ingested_at, updated_at"


BenchFailure = common.BenchFailure


def bar_range(bars: int) -> tuple[datetime, datetime]:
    """A fixed historical [start, end) holding exactly ``bars`` 24/7 1m bars."""
    return RANGE_END - timedelta(minutes=bars), RANGE_END


def register_instrument() -> None:
    from integrity.models import Instrument

    Instrument.objects.update_or_create(
        symbol=SYMBOL,
        defaults={
            "asset_class": "crypto",
            "calendar": CALENDAR,
            "timeframes": [TIMEFRAME],
            "provider": "synthetic",
            "provider_options": PROVIDER_OPTIONS,
            "active": True,
        },
    )


def fingerprint() -> tuple:
    """What the table holds for the series: count, first/last ts and the sums of every value."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*), min(ts), max(ts), sum(open), sum(high), sum(low), sum(close), sum(volume)"
            " FROM candles WHERE symbol = %s AND timeframe = %s",
            [SYMBOL, TIMEFRAME],
        )
        return tuple(cursor.fetchone())


def same_fingerprint(a: tuple, b: tuple) -> bool:
    if a[:3] != b[:3]:
        return False
    return all(abs(x - y) <= 1e-9 * max(1.0, abs(x)) for x, y in zip(a[3:], b[3:], strict=True))


def run_backfill_once(bars: int, batch_size: int | None) -> tuple[float, object]:
    from integrity.backfill import run_backfill

    start, end = bar_range(bars)
    with common.timer() as t:
        result = run_backfill(SYMBOL, TIMEFRAME, start=start, end=end, batch_size=batch_size,
                              requested_by="bench")
    if result.status != "completed":
        raise BenchFailure(f"run_backfill did not complete: {result.status}: {result.error}")
    if result.inserted != bars or result.invalid:
        raise BenchFailure(f"run_backfill inserted {result.inserted} bars (expected {bars}), "
                           f"{result.invalid} invalid")
    return t["seconds"], result


RENDER_ROWS = 100_000


def build_copy_buffer(bars: int) -> tuple[list[bytes], float, float]:
    """The series' rows as COPY text chunks for the candle table (generation and rendering, untimed).

    Floats are written with ``repr`` (shortest round-trip form, what ``DataFrame.to_csv`` writes),
    so the table ends up with exactly the values the backfill stores; ``fingerprint`` checks it.
    The constant columns are pasted around each row: ``to_csv`` on the full frame is ~3x slower,
    and rendering is not what the baseline measures. Chunks keep this process's memory modest.
    """
    import numpy as np
    from django.utils import timezone

    from integrity.providers.synthetic import synthetic_bars

    start, end = bar_range(bars)
    with common.timer() as gen:
        frame = synthetic_bars(SYMBOL, TIMEFRAME, CALENDAR, start, end, **PROVIDER_OPTIONS)
    if len(frame) != bars:
        raise BenchFailure(f"synthetic_bars returned {len(frame)} bars, expected {bars}")
    chunks = []
    with common.timer() as render:
        now = timezone.now().isoformat()
        prefix, suffix = f"{SYMBOL}\t{TIMEFRAME}\t", f"\tsynthetic\t{now}\t{now}\n"
        seconds = frame["ts"].dt.as_unit("s").array.asi8.astype("datetime64[s]")
        for offset in range(0, bars, RENDER_ROWS):
            part = slice(offset, offset + RENDER_ROWS)
            ts = np.datetime_as_string(seconds[part], unit="s").tolist()  # 2024-01-01T00:00:00 (UTC)
            columns = [frame[c].to_numpy()[part].tolist() for c in ("open", "high", "low", "close", "volume")]
            chunks.append("".join([
                f"{prefix}{t}+00\t{o!r}\t{h!r}\t{lo!r}\t{c!r}\t{v!r}{suffix}"
                for t, o, h, lo, c, v in zip(ts, *columns, strict=True)
            ]).encode())
    return chunks, gen["seconds"], render["seconds"]


def copy_once(chunks: list[bytes]) -> float:
    """One raw COPY of the prepared rows into candles, committed (the only timed part)."""
    from django.db import connection, transaction

    with common.timer() as t:
        with transaction.atomic(), connection.cursor() as cursor:
            with cursor.cursor.copy(f"COPY candles ({COPY_COLUMNS}) FROM STDIN") as copy:
                for chunk in chunks:
                    copy.write(chunk)
    return t["seconds"]


def throughput(args, report: dict) -> None:
    from django.conf import settings

    bars = args.bars
    batch_size = args.batch_size or settings.BACKFILL_BATCH_SIZE
    start, end = bar_range(bars)
    print(f"throughput: {bars:,} {TIMEFRAME} bars of {SYMBOL} ({CALENDAR} synthetic), "
          f"[{start:%Y-%m-%d %H:%M}, {end:%Y-%m-%d %H:%M}) UTC, batch {batch_size:,}", flush=True)
    register_instrument()
    data, gen_seconds, render_seconds = build_copy_buffer(bars)
    print(f"  baseline rows prepared (untimed): generation {gen_seconds:.2f} s, "
          f"COPY text {render_seconds:.2f} s, {sum(map(len, data)) / 1e6:.0f} MB", flush=True)
    backfill_times, copy_times = [], []
    for round_no in range(1, args.rounds + 1):
        common.truncate(reset_statistics=True)
        common.checkpoint()
        seconds, _result = run_backfill_once(bars, args.batch_size)
        backfill_times.append(seconds)
        backfilled = fingerprint()

        common.truncate(("candles",), reset_statistics=True)
        common.checkpoint()
        copy_times.append(copy_once(data))
        copied = fingerprint()
        if not same_fingerprint(backfilled, copied):
            raise BenchFailure(f"run_backfill and the raw COPY stored different rows: {backfilled} vs {copied}")
        if copied[0] != bars:
            raise BenchFailure(f"raw COPY stored {copied[0]} rows, expected {bars}")
        print(f"  round {round_no}: run_backfill {seconds:7.2f} s ({bars / seconds:>10,.0f} bars/s)   "
              f"raw COPY {copy_times[-1]:6.2f} s ({bars / copy_times[-1]:>10,.0f} bars/s)", flush=True)
    best_backfill, best_copy = min(backfill_times), min(copy_times)
    ratio = best_backfill / best_copy
    print(f"  best:    run_backfill {best_backfill:7.2f} s ({bars / best_backfill:>10,.0f} bars/s)   "
          f"raw COPY {best_copy:6.2f} s ({bars / best_copy:>10,.0f} bars/s)")
    print(f"  ratio run_backfill / raw COPY = {ratio:.2f} (target <= {RATIO_TARGET})", flush=True)
    report.update(
        bars=bars,
        batch_size=batch_size,
        rounds=args.rounds,
        backfill_seconds=round(best_backfill, 3),
        copy_seconds=round(best_copy, 3),
        backfill_seconds_all=[round(s, 3) for s in backfill_times],
        copy_seconds_all=[round(s, 3) for s in copy_times],
        backfill_bars_per_second=round(bars / best_backfill),
        copy_bars_per_second=round(bars / best_copy),
        ratio=round(ratio, 3),
        ratio_target=RATIO_TARGET,
    )


CHILD_APPLICATION_NAME = "bench_backfill_child"


def run_child(args, kind: str) -> dict:
    """Run a child interpreter; on timeout kill it, keeping its peak RSS so far (Linux)."""
    command = [sys.executable, os.path.abspath(__file__), "--child", kind, "--memory-bars", str(args.memory_bars)]
    if args.batch_size:
        command += ["--batch-size", str(args.batch_size)]
    if args.allow_any_database:
        command.append("--allow-any-database")
    # PGAPPNAME tags the child's sessions, so a killed child's running statement can be ended.
    env = dict(os.environ, DATABASE_URL=args.database_url, PGAPPNAME=CHILD_APPLICATION_NAME)
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=err, text=True)
        started = time.monotonic()
        last_note, peak = started, None
        while proc.poll() is None:
            time.sleep(0.2)
            peak = common.peak_rss_mb(proc.pid) or peak
            elapsed = time.monotonic() - started
            if args.memory_timeout and elapsed > args.memory_timeout:
                proc.kill()
                proc.wait()
                common.terminate_backends(CHILD_APPLICATION_NAME)
                raise BenchFailure(
                    f"{kind} child timed out after {elapsed:.0f} s ({_progress()}); "
                    f"peak RSS so far {peak or float('nan'):.0f} MB (raise --memory-timeout, 0 = none)",
                    timed_out_after_seconds=round(elapsed, 1),
                    peak_rss_mb_so_far=None if peak is None else round(peak, 1),
                )
            if kind == "memory" and time.monotonic() - last_note >= 60:
                last_note = time.monotonic()
                print(f"    ... {elapsed:.0f} s: {_progress()}, RSS {common.current_rss_mb(proc.pid) or 0:.0f} MB",
                      flush=True)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    payload = common.parse_result(stdout)
    if proc.returncode != 0 or payload is None or payload.get("error"):
        detail = (payload or {}).get("error") or (stderr.strip()[-2000:] or stdout.strip()[-2000:])
        raise BenchFailure(f"{kind} child exited {proc.returncode}: {detail}")
    return payload


def _progress() -> str:
    """How far the running backfill of the benchmark series got (its committed batches)."""
    from integrity.models import BackfillState

    state = BackfillState.objects.filter(symbol=SYMBOL, timeframe=TIMEFRAME).order_by("-created_at").first()
    return f"{state.records_inserted:,} bars committed" if state else "not started"


def memory(args, report: dict) -> None:
    bars = args.memory_bars
    start, end = bar_range(bars)
    print(f"memory: run_backfill of {bars:,} {TIMEFRAME} bars, "
          f"[{start:%Y-%m-%d %H:%M}, {end:%Y-%m-%d %H:%M}) UTC, each in a fresh interpreter", flush=True)
    baseline = run_child(args, "baseline")
    print(f"  baseline (import Django + app, setup, connect): peak RSS = {baseline['peak_rss_mb']:.0f} MB",
          flush=True)
    register_instrument()
    common.truncate(reset_statistics=True)
    common.checkpoint()
    run = run_child(args, "memory")
    print(f"  backfill: peak RSS = {run['peak_rss_mb']:.0f} MB (target < {RSS_TARGET_MB:.0f} MB), "
          f"{run['peak_rss_mb'] - baseline['peak_rss_mb']:+.0f} MB over the baseline; "
          f"{run['seconds']:.1f} s, {bars / run['seconds']:,.0f} bars/s", flush=True)
    report.update(
        memory_bars=bars,
        peak_rss_mb=round(run["peak_rss_mb"], 1),
        baseline_rss_mb=round(baseline["peak_rss_mb"], 1),
        rss_before_run_mb=run.get("rss_before_mb"),
        ru_maxrss_mb=run.get("ru_maxrss_mb"),
        memory_run_seconds=round(run["seconds"], 3),
        rss_target_mb=RSS_TARGET_MB,
    )


# --- the child processes --------------------------------------------------------------------------


def child(args) -> int:
    def work(payload: dict) -> None:
        common.prepare(args.database_url, allow_any_database=args.allow_any_database, migrate=False)
        common.import_backfill_app()  # the same in both children
        if args.child == "memory":
            payload["rss_before_mb"] = common.current_rss_mb()
            seconds, result = run_backfill_once(args.memory_bars, args.batch_size)
            payload.update(seconds=seconds, inserted=result.inserted)
        payload["peak_rss_mb"] = common.peak_rss_mb()
        payload["ru_maxrss_mb"] = round(common.ru_maxrss_mb(), 1)  # see common.ru_maxrss_mb's caveat

    return common.run_child({"kind": args.child}, work)


# --- main -------------------------------------------------------------------------------------------


def add_arguments(parser) -> None:
    parser.add_argument("--bars", type=int, default=1_000_000, help="bars in the throughput run (default 1M)")
    parser.add_argument("--memory-bars", type=int, default=5_000_000,
                        help="bars in the memory run (default 5M)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of each (best is kept)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: BACKFILL_BATCH_SIZE")
    parser.add_argument("--memory-timeout", type=float, default=900,
                        help="seconds before the memory run is killed (default 900; 0: no limit)")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--keep-data", action="store_true", help="leave the last run's candles in place")
    parser.add_argument("--child", choices=["memory", "baseline"], help=argparse.SUPPRESS)


def check(args) -> str | None:
    if args.bars < 1 or args.memory_bars < 1 or args.rounds < 1:
        return "--bars, --memory-bars and --rounds must be at least 1"
    return None


def run(args, report: dict) -> None:
    report["planner_statistics_reset"] = common.truncate(reset_statistics=True)
    if not report["planner_statistics_reset"]:
        print("  note: could not reset the planner statistics of candles (needs superuser): the merge's "
              "plans, hence the timings, depend on earlier ANALYZE runs in this database", flush=True)
    phases = [] if args.skip_throughput else [throughput]
    phases += [] if args.skip_memory else [memory]
    for phase in phases:
        try:
            phase(args, report)
        except Exception as exc:  # noqa: BLE001 — report, run the other phase, exit non-zero
            if isinstance(exc, BenchFailure):
                report.update({f"{phase.__name__}_{k}": v for k, v in exc.details.items()})
            else:
                traceback.print_exc()
            report["errors"].append(f"{phase.__name__}: {exc.__class__.__name__}: {exc}")
            print(f"  ERROR in {phase.__name__}: {exc}", flush=True)


def finish(args, report: dict) -> None:
    if not args.keep_data:
        common.truncate()


def summary(args, report: dict) -> list[dict]:
    rows = []
    if "ratio" in report:
        rows.append(common.summary_row(
            f"`bench_backfill.py` throughput, {report['bars']:,} bars",
            f"`run_backfill` / raw COPY = {report['ratio']:.2f} ({report['backfill_seconds']:.1f} s vs "
            f"{report['copy_seconds']:.1f} s)",
            f"≤ {report['ratio_target']}"))
    if "peak_rss_mb" in report:
        rows.append(common.summary_row(
            f"`bench_backfill.py` memory, {report['memory_bars']:,} bars",
            f"peak RSS {report['peak_rss_mb']:.0f} MB (fixed overhead {report['baseline_rss_mb']:.0f} MB)",
            f"< {report['rss_target_mb']:g} MB"))
    return rows


def main(argv=None) -> int:
    return common.main("backfill", __doc__, add_arguments, run, argv, check=check, child=child,
                       finish=finish, summary=summary)


if __name__ == "__main__":
    sys.exit(main())
