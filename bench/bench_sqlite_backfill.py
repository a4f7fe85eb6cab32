"""The embedded default against production: the same synthetic 1m backfill on SQLite and PostgreSQL.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/marketdata_bench \\
        python bench/bench_sqlite_backfill.py [--bars 500000] [--rounds 1] [--json]

Each database gets a fresh interpreter (Django has one default database per process) that runs
``integrity.backfill.run_backfill`` of the synthetic 24/7 1m series of ``bench_backfill.py``
(``BENCHSYN``, the same bars: the range ends 2024-01-01 00:00 UTC and starts ``--bars`` minutes
earlier), timed end to end, twice:

- *backfill*: into an empty table (every batch is new bars: the writer's insert path);
- *rewrite*: the same range again over the stored series (every batch overlaps stored bars, so it
  is staged and merged; nothing is inserted or updated). This is the path that was quadratic on
  SQLite (the merge walked the whole stored series for every staged row).

After every committed batch the child notes the time and how many bars of the range are done (from
the checkpoint), which gives the per-bar time of the run's first and second half (the median of its
batches' per-bar times): a writer whose cost grows with the stored series shows a second half slower
than the first.

PostgreSQL: the benchmark database of DATABASE_URL, truncated, planner statistics reset and
checkpointed before each run (as bench_backfill.py). SQLite: a new file in a temporary directory
(``--sqlite-dir`` to choose where), migrated before the timed runs, with the project's own SQLite
settings (WAL, synchronous=NORMAL, IMMEDIATE transactions), deleted afterwards.

Figures: SQLite / PostgreSQL for each run (target <= 4.0 for the backfill) and, per database and run,
second-half / first-half per-bar time (target <= 1.2: linear in bars). The stored series must be
the same on both databases (count, first/last ts, sums of every value column).

Exit status: 0 once the figures are printed (targets are reported, not asserted), 1 if anything
errored (a run that did not complete or wrote the wrong count, different rows on the two databases,
a child that crashed or timed out), 2 if the benchmark cannot run here (not PostgreSQL, not a
benchmark database).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta

import common
from bench_backfill import SYMBOL, TIMEFRAME, bar_range, fingerprint, register_instrument, same_fingerprint

RATIO_TARGET = 4.0
HALF_RATIO_TARGET = 1.2
PHASES = ("backfill", "rewrite")
CHILD_APPLICATION_NAME = "bench_sqlite_backfill_child"
ENGINES = ("postgresql", "sqlite")
LABELS = {"postgresql": "PostgreSQL", "sqlite": "SQLite"}


BenchFailure = common.BenchFailure


# --- the child: one database, both runs -------------------------------------------------------------


def timed_run(bars: int, batch_size: int | None, phase: str) -> dict:
    """One run_backfill of the range, timed, with a (seconds, bars done) mark after every batch."""
    from integrity.backfill import run_backfill

    start, end = bar_range(bars)
    step = timedelta(minutes=1)
    marks: list[tuple[float, int]] = []
    started = time.perf_counter()

    def progress(state, _totals) -> None:
        done = int((state.checkpoint_ts - start) / step) + 1 if state.checkpoint_ts else 0
        marks.append((time.perf_counter() - started, done))

    result = run_backfill(SYMBOL, TIMEFRAME, start=start, end=end, batch_size=batch_size,
                          requested_by="bench", progress=progress)
    seconds = time.perf_counter() - started
    if result.status != "completed":
        raise BenchFailure(f"{phase}: run_backfill did not complete: {result.status}: {result.error}")
    expected = (bars, 0) if phase == "backfill" else (0, 0)
    if (result.inserted, result.updated) != expected or result.invalid:
        raise BenchFailure(f"{phase}: run_backfill inserted {result.inserted} and updated {result.updated} bars "
                           f"(expected {expected[0]} and {expected[1]}), {result.invalid} invalid")
    return {"seconds": seconds, **halves(marks, bars)}


def halves(marks: list[tuple[float, int]], bars: int) -> dict:
    """Per-bar time of the run's first half of bars and of its second half.

    Each half's figure is the median over its batches of (batch seconds / batch bars): a writer whose
    cost grows with the stored series moves every batch of the second half, while a short burst of a
    neighbour on a shared machine moves a few batches only. A load lasting half a run still shows: on
    two cores at load 4 the ratio swung between 0.7 and 1.5 for the (linear) PostgreSQL writer too.
    """
    if not marks or marks[-1][1] != bars:
        raise BenchFailure(f"progress marks do not reach {bars} bars: {marks[-3:]}")
    first: list[float] = []
    second: list[float] = []
    previous_t, previous_n = 0.0, 0
    for t, n in marks:
        if n > previous_n:
            (first if n <= bars / 2 else second).append((t - previous_t) / (n - previous_n))
        previous_t, previous_n = t, n
    result = {"batches": len(marks), "first_half_us_per_bar": None, "second_half_us_per_bar": None,
              "half_ratio": None}
    if first and second:  # a run of one or two batches has no halves to compare
        result.update(first_half_us_per_bar=statistics.median(first) * 1e6,
                      second_half_us_per_bar=statistics.median(second) * 1e6)
        result["half_ratio"] = result["second_half_us_per_bar"] / result["first_half_us_per_bar"]
    return result


def normalised_fingerprint() -> list:
    """``bench_backfill.fingerprint`` with the times as aware ISO strings (SQLite returns text)."""
    values = list(fingerprint())
    for i in (1, 2):
        value = values[i]
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        if value is not None:
            value = (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC).isoformat()
        values[i] = value
    return values


def child(args) -> int:
    def work(payload: dict) -> None:
        if args.child == "postgresql":
            common.prepare(args.database_url, allow_any_database=args.allow_any_database, migrate=False)
            common.truncate(reset_statistics=True)
            common.checkpoint()
        else:
            from django.core.management import call_command

            common.setup_django(args.sqlite_url, vendor="sqlite")
            call_command("migrate", interactive=False, verbosity=0)
        common.import_backfill_app()
        register_instrument()
        for phase in PHASES:
            payload[phase] = timed_run(args.bars, args.batch_size, phase)
        payload["fingerprint"] = normalised_fingerprint()
        if payload["fingerprint"][0] != args.bars:
            raise BenchFailure(f"the table holds {payload['fingerprint'][0]} bars of the series, expected {args.bars}")

    return common.run_child({"kind": args.child}, work, quiet=(BenchFailure,))


# --- the parent ---------------------------------------------------------------------------------------


def run_child(args, kind: str, sqlite_url: str) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--child", kind, "--bars", str(args.bars),
               "--sqlite-url", sqlite_url]
    if args.batch_size:
        command += ["--batch-size", str(args.batch_size)]
    if args.allow_any_database:
        command.append("--allow-any-database")
    env = dict(os.environ, DATABASE_URL=args.database_url, PGAPPNAME=CHILD_APPLICATION_NAME)
    try:
        proc = subprocess.run(command, env=env, capture_output=True, text=True,
                              timeout=args.timeout or None)
    except subprocess.TimeoutExpired:
        common.terminate_backends(CHILD_APPLICATION_NAME)
        raise BenchFailure(f"the {LABELS[kind]} child timed out after {args.timeout:.0f} s "
                           "(raise --timeout, 0 = none)") from None
    payload = common.parse_result(proc.stdout)
    if proc.returncode != 0 or payload is None or payload.get("error"):
        detail = (payload or {}).get("error") or (proc.stderr.strip()[-2000:] or proc.stdout.strip()[-2000:])
        raise BenchFailure(f"the {LABELS[kind]} child exited {proc.returncode}: {detail}")
    return payload


def _line(kind: str, phase: str, figures: dict, bars: int) -> str:
    half = figures["half_ratio"]
    half_text = "n/a (too few batches)" if half is None else (
        f"{figures['first_half_us_per_bar']:.1f} -> {figures['second_half_us_per_bar']:.1f} us/bar, "
        f"2nd/1st half {half:.2f}")
    return (f"{LABELS[kind]:>10} {phase:<8} {figures['seconds']:8.2f} s ({bars / figures['seconds']:>9,.0f} bars/s)"
            f"   {half_text}")


def compare(args, report: dict, sqlite_url: str) -> None:
    from django.conf import settings
    from django.db import connection

    bars = args.bars
    start, end = bar_range(bars)
    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        version = cursor.fetchone()[0]
    print(f"SQLite vs PostgreSQL: run_backfill of {bars:,} {TIMEFRAME} bars of {SYMBOL} (24/7 synthetic), "
          f"[{start:%Y-%m-%d %H:%M}, {end:%Y-%m-%d %H:%M}) UTC, batch {args.batch_size or settings.BACKFILL_BATCH_SIZE:,}",
          flush=True)
    print(f"  PostgreSQL {version} (database {connection.settings_dict['NAME']}, autovacuum "
          f"{common.server_setting('autovacuum')}); SQLite {sqlite3.sqlite_version} ({sqlite_url})", flush=True)
    report.update(bars=bars, postgresql=version, sqlite=sqlite3.sqlite_version,
                  batch_size=args.batch_size or settings.BACKFILL_BATCH_SIZE, rounds=args.rounds)
    runs: dict[str, list[dict]] = {kind: [] for kind in ENGINES}
    for round_no in range(1, args.rounds + 1):
        for kind in ENGINES:
            if kind == "sqlite":
                _remove_sqlite(sqlite_url)
            payload = run_child(args, kind, sqlite_url)
            runs[kind].append(payload)
            for phase in PHASES:
                print(f"  round {round_no}: {_line(kind, phase, payload[phase], bars)}", flush=True)
        if not same_fingerprint(tuple(runs["sqlite"][-1]["fingerprint"]), tuple(runs["postgresql"][-1]["fingerprint"])):
            raise BenchFailure(f"SQLite and PostgreSQL stored different rows: {runs['sqlite'][-1]['fingerprint']} "
                               f"vs {runs['postgresql'][-1]['fingerprint']}")
    print("  best of each:")
    for phase in PHASES:
        best = {kind: min((run[phase] for run in runs[kind]), key=lambda f: f["seconds"]) for kind in ENGINES}
        ratio = best["sqlite"]["seconds"] / best["postgresql"]["seconds"]
        for kind in ENGINES:
            print(f"    {_line(kind, phase, best[kind], bars)}")
        target = f" (target <= {RATIO_TARGET})" if phase == "backfill" else ""
        flag = "  ** above target **" if phase == "backfill" and ratio > RATIO_TARGET else ""
        print(f"  {phase}: ratio SQLite / PostgreSQL = {ratio:.2f}{target}{flag}", flush=True)
        halves_text = []
        for kind in ENGINES:
            half = best[kind]["half_ratio"]
            over = half is not None and half > HALF_RATIO_TARGET
            halves_text.append(f"{LABELS[kind]} {'n/a' if half is None else f'{half:.2f}'}{' **' if over else ''}")
        print(f"  {phase}: per-bar time 2nd half / 1st half = {', '.join(halves_text)} "
              f"(target <= {HALF_RATIO_TARGET}: linear in bars)", flush=True)
        report[phase] = {
            "ratio_sqlite_postgresql": round(ratio, 3),
            **{f"{kind}_{key}": (round(value, 3) if isinstance(value, float) else value)
               for kind in ENGINES for key, value in best[kind].items()},
            **{f"{kind}_seconds_all": [round(run[phase]["seconds"], 3) for run in runs[kind]] for kind in ENGINES},
        }
    report.update(ratio_target=RATIO_TARGET, half_ratio_target=HALF_RATIO_TARGET)


def _remove_sqlite(url: str) -> None:
    path = url.removeprefix("sqlite:///")  # sqlite:////abs/path -> /abs/path
    for suffix in ("", "-wal", "-shm"):
        try:
            os.remove(path + suffix)
        except FileNotFoundError:
            pass


def add_arguments(parser) -> None:
    parser.add_argument("--bars", type=int, default=500_000, help="bars in each run (default 500k)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds on each database (best is kept)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: BACKFILL_BATCH_SIZE")
    parser.add_argument("--timeout", type=float, default=1800,
                        help="seconds before a child (both runs on one database) is killed (default 1800; 0: none)")
    parser.add_argument("--sqlite-dir", default=None, help="where the SQLite file goes (default: a temporary directory)")
    parser.add_argument("--keep-data", action="store_true",
                        help="leave the last run's candles in PostgreSQL and the SQLite file in place")
    parser.add_argument("--child", choices=ENGINES, help=argparse.SUPPRESS)
    parser.add_argument("--sqlite-url", help=argparse.SUPPRESS)


def check(args) -> str | None:
    if args.bars < 2 or args.rounds < 1:
        return "--bars must be at least 2 and --rounds at least 1"
    return None


def _sqlite_url(args) -> str:
    """The SQLite file of this run, in --sqlite-dir or in a temporary directory made once."""
    if not getattr(args, "sqlite_url_of_run", None):
        directory = args.sqlite_dir or tempfile.mkdtemp(prefix="bench_sqlite_backfill_")
        os.makedirs(directory, exist_ok=True)
        args.sqlite_directory = directory
        args.sqlite_url_of_run = "sqlite:///" + os.path.abspath(os.path.join(directory, "bench_sqlite_backfill.sqlite3"))
    return args.sqlite_url_of_run


def run(args, report: dict) -> None:
    compare(args, report, _sqlite_url(args))


def finish(args, report: dict) -> None:
    if args.keep_data:
        return
    try:
        common.truncate()
    finally:
        _remove_sqlite(_sqlite_url(args))
        if not args.sqlite_dir:
            shutil.rmtree(args.sqlite_directory, ignore_errors=True)


def summary(args, report: dict) -> list[dict]:
    backfill, rewrite = report["backfill"], report["rewrite"]
    half = backfill["sqlite_half_ratio"]  # None when the run had too few batches to split in halves
    return [common.summary_row(
        f"`bench_sqlite_backfill.py`, {report['bars']:,} 1m bars",
        f"backfill SQLite / PostgreSQL = {backfill['ratio_sqlite_postgresql']:.2f} "
        f"({backfill['sqlite_seconds']:.1f} s vs {backfill['postgresql_seconds']:.1f} s), SQLite 2nd / 1st half "
        f"per bar = {'n/a' if half is None else f'{half:.2f}'}; rewrite {rewrite['ratio_sqlite_postgresql']:.2f} "
        f"({rewrite['sqlite_seconds']:.1f} s vs {rewrite['postgresql_seconds']:.1f} s)",
        f"≤ {report['ratio_target']}; ≤ {report['half_ratio_target']}")]


def main(argv=None) -> int:
    return common.main("sqlite_backfill", __doc__, add_arguments, run, argv, check=check, child=child,
                       finish=finish, summary=summary)


if __name__ == "__main__":
    sys.exit(main())
