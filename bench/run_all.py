"""Run every bench/bench_*.py in turn (``make bench``), against one PostgreSQL benchmark database
(``bench_scale.py``, most of an hour, only with ``--only scale``).

    python bench/run_all.py [--json] [--markdown] [--only NAME] [-- extra args passed to every benchmark]
    python bench/run_all.py --markdown --from-json FILE [FILE …]   # the table from saved output, no run

DATABASE_URL is passed through (default postgres://postgres@127.0.0.1:5432/marketdata_bench).
Each benchmark prints its own figures. ``--markdown`` asks every benchmark for its JSON line and ends
with the "last measured" table of bench/README.md, built from the ``summary`` rows of those lines
(``--from-json`` reads them from files of saved output instead of running anything). The exit status
is 0 if every benchmark exited 0, else 1 (2 if there was no benchmark to run or no figure to print).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
# Run only when named (``--only scale``): it grows the store to tens of millions of bars (most of an hour).
ONLY_WHEN_NAMED = {"bench_scale"}
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/marketdata_bench"


def reports_in(text: str) -> list[dict]:
    """The benchmark reports (one JSON object a line, with a "benchmark" key) in a benchmark's output."""
    reports = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            data = json.loads(line)
        except ValueError:
            continue
        if isinstance(data, dict) and "benchmark" in data:
            reports.append(data)
    return reports


def markdown_table(reports: list[dict], *, when: datetime | None = None) -> str:
    """bench/README.md's "last measured" section: a heading with the run's context, then one row a figure."""
    when = when or datetime.now(UTC)
    versions = sorted({str(r["postgresql"]).split()[0] for r in reports if r.get("postgresql")})
    context = [f"PostgreSQL {', '.join(versions)}" if versions else None,
               f"{os.cpu_count()} cores",
               f"load ≈ {os.getloadavg()[0]:.0f}" if hasattr(os, "getloadavg") else None]
    lines = [f"## Last measured ({when:%Y-%m-%d}, {', '.join(c for c in context if c)})", "",
             "| benchmark | figure | target |", "|---|---|---|"]
    for report in reports:
        rows = report.get("summary") or []
        if report.get("errors"):
            lines.append(f"| `bench_{report['benchmark']}.py` | failed: {'; '.join(report['errors'])[:200]} | |")
        for row in rows:
            cells = [str(row.get(key, "")).replace("|", "\\|") for key in ("benchmark", "figure", "target")]
            lines.append(f"| {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def run_benchmarks(scripts: list[Path], args, extra: list[str]) -> tuple[list[str], list[dict]]:
    env = dict(os.environ)
    env["DATABASE_URL"] = os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
    print(f"run_all: {len(scripts)} benchmark(s), DATABASE_URL={env['DATABASE_URL']}, "
          f"{platform.node()}", flush=True)
    failed, reports = [], []
    want_json = args.json or args.markdown
    for script in scripts:
        command = [sys.executable, str(script), *(["--json"] if want_json else []), *extra]
        print(f"\n=== {script.name}", flush=True)
        started = time.monotonic()
        # Output is passed through line by line as it comes (progress stays visible) and kept for its JSON.
        with subprocess.Popen(command, env=env, cwd=BENCH_DIR.parent, stdout=subprocess.PIPE, text=True,
                              bufsize=1) as proc:
            captured = []
            for line in proc.stdout:
                print(line, end="", flush=True)
                captured.append(line)
        code = proc.returncode
        reports.extend(reports_in("".join(captured)))
        print(f"=== {script.name}: exit {code} in {time.monotonic() - started:.0f} s", flush=True)
        if code != 0:
            failed.append(f"{script.name} (exit {code})")
    return failed, reports


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Run every bench/bench_*.py in turn.")
    parser.add_argument("--json", action="store_true", help="ask every benchmark for its JSON line too")
    parser.add_argument("--markdown", action="store_true",
                        help="end with bench/README.md's 'last measured' table, from the benchmarks' JSON")
    parser.add_argument("--from-json", nargs="+", metavar="FILE", type=Path,
                        help="with --markdown: read saved benchmark output (JSON lines) instead of running")
    parser.add_argument("--only", action="append", default=[],
                        help="run only bench_NAME.py (repeatable), e.g. --only backfill")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="after --: arguments for every benchmark")
    args = parser.parse_args(argv)
    extra = args.extra[1:] if args.extra[:1] == ["--"] else args.extra
    if args.from_json and not args.markdown:
        parser.error("--from-json only makes sense with --markdown")

    if args.from_json:
        missing = [str(path) for path in args.from_json if not path.is_file()]
        if missing:
            print(f"run_all: no such file: {', '.join(missing)}", file=sys.stderr)
            return 2
        failed, reports = [], [r for path in args.from_json for r in reports_in(path.read_text(encoding="utf-8"))]
    else:
        scripts = sorted(BENCH_DIR.glob("bench_*.py"))
        if args.only:
            wanted = {name if name.startswith("bench_") else f"bench_{name}" for name in args.only}
            scripts = [s for s in scripts if s.stem in wanted]
        else:
            scripts = [s for s in scripts if s.stem not in ONLY_WHEN_NAMED]
        if not scripts:
            print("run_all: no benchmark to run", file=sys.stderr)
            return 2
        failed, reports = run_benchmarks(scripts, args, extra)

    if args.markdown:
        if not reports:
            print("run_all: no benchmark report (JSON line) to tabulate", file=sys.stderr)
            return 2
        print("\n" + markdown_table(reports), end="")
    if failed:
        print(f"\nrun_all: failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    if not args.from_json:
        print("\nrun_all: all benchmarks ran")
    return 0


if __name__ == "__main__":
    sys.exit(main())
