"""Run every bench/bench_*.py in turn (``make bench``), against one PostgreSQL benchmark database.

    python bench/run_all.py [--json] [--only NAME] [-- extra args passed to every benchmark]

DATABASE_URL is passed through (default postgres://postgres@127.0.0.1:5432/marketdata_bench).
Each benchmark prints its own figures; the exit status is 0 if every benchmark exited 0, else 1
(2 if there was no benchmark to run).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/marketdata_bench"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Run every bench/bench_*.py in turn.")
    parser.add_argument("--json", action="store_true", help="ask every benchmark for its JSON line too")
    parser.add_argument("--only", action="append", default=[],
                        help="run only bench_NAME.py (repeatable), e.g. --only backfill")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="after --: arguments for every benchmark")
    args = parser.parse_args(argv)
    extra = args.extra[1:] if args.extra[:1] == ["--"] else args.extra

    scripts = sorted(BENCH_DIR.glob("bench_*.py"))
    if args.only:
        wanted = {name if name.startswith("bench_") else f"bench_{name}" for name in args.only}
        scripts = [s for s in scripts if s.stem in wanted]
    if not scripts:
        print("run_all: no benchmark to run", file=sys.stderr)
        return 2

    env = dict(os.environ)
    env["DATABASE_URL"] = os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
    print(f"run_all: {len(scripts)} benchmark(s), DATABASE_URL={env['DATABASE_URL']}", flush=True)
    failed = []
    for script in scripts:
        command = [sys.executable, str(script), *(["--json"] if args.json else []), *extra]
        print(f"\n=== {script.name}", flush=True)
        started = time.monotonic()
        code = subprocess.call(command, env=env, cwd=BENCH_DIR.parent)
        print(f"=== {script.name}: exit {code} in {time.monotonic() - started:.0f} s", flush=True)
        if code != 0:
            failed.append(f"{script.name} (exit {code})")
    if failed:
        print(f"\nrun_all: failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    print("\nrun_all: all benchmarks ran")
    return 0


if __name__ == "__main__":
    sys.exit(main())
