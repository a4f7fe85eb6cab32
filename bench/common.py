"""Shared helpers for the benchmarks: the common ``main()`` opening, database selection and creation,
Django setup, timing, RSS.

Every ``bench/bench_*.py`` starts through :func:`main`: it parses the arguments (the script's own plus
``--allow-any-database`` and ``--json``), selects and prepares the database, prints one header line,
runs the benchmark into a report dict, prints its errors and, with ``--json``, the report as one JSON
line. The report's ``summary`` rows (``{"benchmark", "figure", "target"}``, see :func:`summary_row`)
are what ``bench/run_all.py --markdown`` prints as the "last measured" table of bench/README.md.

The benchmarks truncate tables, so they refuse to run against a database whose name does not
contain "bench" unless told otherwise (``--allow-any-database`` or BENCH_ALLOW_ANY_DATABASE=1).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote, urlsplit

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/marketdata_bench"
RESULT_MARKER = "BENCH_RESULT "

# Every table a backfill writes to; truncated before each run so runs start from the same state.
BACKFILL_TABLES = (
    "candles",
    "backfill_state_persistent",
    "data_anomalies",
    "duplicate_records_log",
    "symbol_failure_tracking",
    "series_stats",
)


class BenchSetupError(Exception):
    """The benchmark cannot run here (wrong database, unreachable server, ...)."""


class BenchFailure(Exception):
    """A benchmark ran but its result is not usable (a check failed); ``details`` go into the report."""

    def __init__(self, message: str, **details):
        super().__init__(message)
        self.details = details


# --- the shared opening of every benchmark ---------------------------------------------------------

def main(
    name: str,
    doc: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace, dict], None],
    argv: list[str] | None = None,
    *,
    check: Callable[[argparse.Namespace], str | None] | None = None,
    child: Callable[[argparse.Namespace], int] | None = None,
    finish: Callable[[argparse.Namespace, dict], None] | None = None,
    summary: Callable[[argparse.Namespace, dict], list[dict]] | None = None,
) -> int:
    """The opening and closing every benchmark shares; returns the exit status (0, 1 or 2).

    ``add_arguments`` adds the script's own options; ``check`` returns an error message for unusable
    ones (exit 2, argparse's usage error). With ``child`` and ``--child`` set, the process is a child
    of the benchmark and only ``child(args)`` runs. Otherwise: the database is checked and prepared
    (exit 2 when the benchmark cannot run here), ``run(args, report)`` fills the report (an exception
    is recorded in ``report["errors"]``), ``finish(args, report)`` cleans up (unless it raises, also
    recorded), ``summary(args, report)`` gives the rows of the "last measured" table. Exit 1 when
    the report holds errors.
    """
    parser = argparse.ArgumentParser(prog=f"bench_{name}.py", description=doc.split("\n\n")[0])
    add_arguments(parser)
    parser.add_argument("--allow-any-database", action="store_true",
                        help="run even if the database name does not contain 'bench' (tables are TRUNCATED)")
    parser.add_argument("--json", action="store_true", help="also print one JSON line with the figures")
    args = parser.parse_args(argv)
    args.database_url = database_url()
    problem = check(args) if check else None
    if problem:
        parser.error(problem)
    if child is not None and getattr(args, "child", None):
        return child(args)

    report: dict = {"benchmark": name, "errors": []}
    try:
        prepare(args.database_url, allow_any_database=args.allow_any_database)
    except BenchSetupError as exc:
        print(f"bench_{name}: {exc}", file=sys.stderr)
        return 2
    from django.db import connection

    version = server_setting("server_version")
    autovacuum = server_setting("autovacuum")
    report.update(postgresql=version, autovacuum=autovacuum)
    print(f"{name} benchmark: PostgreSQL {version}, database {connection.settings_dict['NAME']}, "
          f"autovacuum {autovacuum}", flush=True)
    for prefix, step in (("", run), ("cleanup: ", finish)):
        if step is None:
            continue
        try:
            step(args, report)
        except Exception as exc:  # noqa: BLE001 — reported, and the exit status says so
            if isinstance(exc, BenchFailure):
                report.update(exc.details)
            else:
                traceback.print_exc()
            report["errors"].append(f"{prefix}{exc.__class__.__name__}: {exc}")
    if summary is not None:
        try:
            report["summary"] = summary(args, report)
        except (KeyError, TypeError, ZeroDivisionError):
            report["summary"] = []  # a run that failed before its figures: nothing to tabulate
    for error in report["errors"]:
        print(f"  ERROR: {error}", flush=True)
    if args.json:
        print(json.dumps(report, default=str), flush=True)
    return 1 if report["errors"] else 0


def summary_row(benchmark: str, figure: str, target: str) -> dict:
    """One row of bench/README.md's "last measured" table (``run_all.py --markdown`` prints them)."""
    return {"benchmark": benchmark, "figure": figure, "target": target}


def database_url() -> str:
    return os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL


def _connect_kwargs(url: str, dbname: str | None = None) -> dict:
    parts = urlsplit(url)
    kwargs = {
        "host": parts.hostname or "127.0.0.1",
        "port": parts.port or 5432,
        "user": unquote(parts.username) if parts.username else "postgres",
        "dbname": dbname or unquote(parts.path.lstrip("/")),
    }
    if parts.password:
        kwargs["password"] = unquote(parts.password)
    return kwargs


def require_postgresql(url: str, *, allow_any_database: bool = False) -> str:
    """The database name, or ``BenchSetupError`` if the URL is not a benchmark PostgreSQL database."""
    scheme = urlsplit(url).scheme.lower()
    if scheme not in ("postgres", "postgresql", "pgsql"):
        raise BenchSetupError(
            f"the benchmarks need PostgreSQL (the production database); DATABASE_URL has scheme "
            f"{scheme or '(none)'!r}. Use e.g. DATABASE_URL={DEFAULT_DATABASE_URL}"
        )
    name = _connect_kwargs(url)["dbname"]
    if not name:
        raise BenchSetupError(f"DATABASE_URL {url!r} names no database")
    allowed = allow_any_database or os.environ.get("BENCH_ALLOW_ANY_DATABASE", "") in ("1", "true", "yes")
    if "bench" not in name.lower() and not allowed:
        raise BenchSetupError(
            f"refusing to benchmark database {name!r}: the benchmarks TRUNCATE candles and the backfill "
            "tables. Use a database whose name contains 'bench' (the default is marketdata_bench), or "
            "pass --allow-any-database / BENCH_ALLOW_ANY_DATABASE=1 if you really mean it."
        )
    return name


def ensure_database(url: str) -> bool:
    """Create the database named by ``url`` if it is missing (True if it was created)."""
    import psycopg
    from psycopg import sql

    target = _connect_kwargs(url)["dbname"]
    try:
        admin = psycopg.connect(**_connect_kwargs(url, dbname="postgres"), autocommit=True, connect_timeout=10)
    except psycopg.OperationalError as exc:
        raise BenchSetupError(f"cannot connect to PostgreSQL for {url!r}: {exc}".strip()) from None
    with admin:
        exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [target]).fetchone()
        if exists:
            return False
        try:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(target)))
        except psycopg.errors.DuplicateDatabase:
            return False  # created concurrently
    return True


def setup_django(url: str, *, vendor: str = "postgresql") -> None:
    """Point Django at ``url`` and set it up, production-like (DEBUG off: no query log).

    ``vendor``: the database Django must end up on (``sqlite`` only for a benchmark that compares the
    embedded default with PostgreSQL).
    """
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "marketdata_site.settings")
    os.environ.setdefault("DEBUG", "False")
    os.environ.setdefault("SECRET_KEY", "benchmark-only-secret-key-not-for-production-use-0123456789")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    import django

    django.setup()
    from django.db import connection

    if connection.vendor != vendor:
        raise BenchSetupError(f"Django is not using {vendor} (vendor {connection.vendor!r})")


def prepare(url: str, *, allow_any_database: bool = False, migrate: bool = True) -> None:
    """Check the URL, create the database if needed, set Django up and migrate."""
    require_postgresql(url, allow_any_database=allow_any_database)
    created = ensure_database(url)
    if created:
        print(f"created database {_connect_kwargs(url)['dbname']}", flush=True)
    setup_django(url)
    if migrate:
        from django.core.management import call_command

        call_command("migrate", interactive=False, verbosity=0)


def truncate(tables=BACKFILL_TABLES, *, reset_statistics: bool = False) -> bool:
    """Empty the tables; with ``reset_statistics``, also forget their planner statistics.

    TRUNCATE (and ANALYZE of an empty table) keeps pg_statistic, so without the reset the plans a
    run gets depend on whichever ANALYZE last ran in this database. The reset returns the tables to
    "never analyzed", like a fresh deployment. Needs superuser; returns whether it was done.
    """
    from django.db import DatabaseError, connection, transaction

    existing = set(connection.introspection.table_names())
    names = [t for t in tables if t in existing]
    if not names:
        return False
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {', '.join(names)} RESTART IDENTITY")
    if not reset_statistics:
        return False
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(
                "DELETE FROM pg_statistic WHERE starelid = ANY(%s::regclass[])", [names]
            )
    except DatabaseError:
        return False
    return True


def checkpoint() -> None:
    """Flush dirty buffers so a timed run does not pay for the previous run's writes."""
    from django.db import connection

    try:
        with connection.cursor() as cursor:
            cursor.execute("CHECKPOINT")
    except Exception:  # noqa: BLE001 — needs superuser or pg_checkpoint; best effort only
        pass


@contextmanager
def timer() -> Iterator[dict]:
    box: dict = {}
    started = time.perf_counter()
    try:
        yield box
    finally:
        box["seconds"] = time.perf_counter() - started


def ru_maxrss_mb() -> float:
    """``getrusage(RUSAGE_SELF).ru_maxrss`` in MB (KiB on Linux, bytes on macOS).

    Caveat: on Linux the value survives ``execve`` and starts from the high-water mark of the process
    that exec'ed (the parent, forked or vforked), so in a child started from a big parent it reports
    the parent's size. ``peak_rss_mb`` avoids that.
    """
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / (1024 * 1024) if sys.platform == "darwin" else maxrss / 1024


def _proc_status_mb(field: str, pid: int | str = "self") -> float | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        return None
    return None


def peak_rss_mb(pid: int | str = "self") -> float:
    """Peak resident set size of this process image in MB.

    Linux: ``VmHWM`` (the same high-water mark as ``ru_maxrss``, but of this process image only);
    elsewhere ``ru_maxrss``.
    """
    hwm = _proc_status_mb("VmHWM", pid)
    return hwm if hwm is not None else ru_maxrss_mb()


def current_rss_mb(pid: int | str = "self") -> float | None:
    return _proc_status_mb("VmRSS", pid)


def emit_result(payload: dict) -> None:
    """The machine-readable line a child process hands back to its parent."""
    print(RESULT_MARKER + json.dumps(payload), flush=True)


def run_child(payload: dict, work: Callable[[dict], None], *, quiet: tuple[type[BaseException], ...] = ()) -> int:
    """Run a child process's ``work`` (it fills ``payload``), then hand ``payload`` back with
    ``emit_result``, with an ``error`` entry when the work raised (its traceback printed unless the
    exception is one of ``quiet``). The child's exit code: 0, or 1 when it failed."""
    try:
        work(payload)
    except Exception as exc:  # noqa: BLE001 — reported to the parent, which fails the benchmark
        if not isinstance(exc, quiet):
            traceback.print_exc()
        payload["error"] = f"{exc.__class__.__name__}: {exc}"
        emit_result(payload)
        return 1
    emit_result(payload)
    return 0


def import_backfill_app() -> None:
    """What every backfill child process loads (and connects) before it starts measuring."""
    from django.db import connection

    import integrity.backfill  # noqa: F401
    import integrity.providers.synthetic  # noqa: F401

    connection.ensure_connection()


def parse_result(stdout: str) -> dict | None:
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_MARKER):
            return json.loads(line[len(RESULT_MARKER):])
    return None


def server_setting(name: str) -> str:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting(%s)", [name])
        return cursor.fetchone()[0]


def terminate_backends(application_name: str) -> int:
    """End this database's sessions opened under ``application_name`` (a killed child's leftovers)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = %s AND pid <> pg_backend_pid()",
            [application_name],
        )
        return cursor.fetchone()[0]
