"""The anomaly list under a real gunicorn, against the floor of the stack (PostgreSQL).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/marketdata_bench python bench/bench_api_list.py \
        [--rows 10000] [--seconds 10] [--concurrency 16] [--workers 4] [--rounds 2]

Loads ROWS anomalies (COPY, as ``bench_api.py``), starts one gunicorn (``--workers`` sync workers,
DEBUG off, settings ``bench/floor_settings.py``) on a free local port and drives it at
``--concurrency`` clients for ``--seconds`` per measurement:

- *Measured:* ``GET /api/v1/anomalies/`` — the default page (100 rows), token-authenticated, as an
  on-call engineer's client asks for it.
- *Baseline (the floor):* ``GET /bench/floor/`` on the same gunicorn — a plain Django view returning
  the same 100 rows (same columns, same order) via ``.values()`` and ``JsonResponse``.

The two alternate ``--rounds`` times after a warm-up; each list measurement is divided by the floor
measured right after it and the median of those ratios is the figure (the load of a shared machine
drifts). Prints requests/s, p50 and p95 latency of each round, the medians and the ratio. Target:
the list serves at least 50 % of the floor's rate.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import warnings

import common
from bench_api import load

LIST_PATH = "/api/v1/anomalies/"
FLOOR_PATH = "/bench/floor/"
TARGET_RATIO = 0.5


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_gunicorn(args, port: int) -> subprocess.Popen:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "floor_settings", "DEBUG": "False",
           "LOG_LEVEL": "WARNING", "DATABASE_URL": args.database_url,
           "PYTHONPATH": os.pathsep.join([str(common.REPO_ROOT), str(common.BENCH_DIR)]),
           "PYTHONWARNINGS": "ignore:No directory at"}  # no collectstatic here: nothing static is asked
    command = [sys.executable, "-m", "gunicorn", "marketdata_site.wsgi:application", "--bind",
               f"127.0.0.1:{port}", "--workers", str(args.workers), "--worker-class", "sync",
               "--log-level", "warning", "--timeout", "60"]
    server = subprocess.Popen(command, cwd=common.REPO_ROOT, env=env, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise common.BenchFailure(f"gunicorn exited with {server.returncode}")
        try:
            status, _ = request(port, "/healthz", {})
            if status in (200, 503):
                return server
        except OSError:
            time.sleep(0.2)
    stop(server)
    raise common.BenchFailure("gunicorn did not answer within 60 s")


def stop(server: subprocess.Popen) -> None:
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def request(port: int, path: str, headers: dict) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def drive(port: int, path: str, headers: dict, concurrency: int, seconds: float) -> dict:
    """``concurrency`` threads requesting ``path`` back to back for ``seconds``: rate and latencies."""
    latencies: list[float] = []
    failures: list[int] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def client():
        mine, bad = [], []
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            status, _ = request(port, path, headers)
            mine.append(time.perf_counter() - started)
            if status != 200:
                bad.append(status)
        with lock:
            latencies.extend(mine)
            failures.extend(bad)

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if failures:
        raise common.BenchFailure(f"{path}: {len(failures)} responses were not 200 (e.g. {failures[0]})")
    latencies.sort()
    return {"requests": len(latencies), "rps": len(latencies) / elapsed,
            "p50_ms": statistics.median(latencies) * 1000,
            "p95_ms": latencies[int(0.95 * (len(latencies) - 1))] * 1000}


def check_same_rows(port: int, headers: dict) -> None:
    import json

    status, body = request(port, LIST_PATH, headers)
    if status != 200:
        raise common.BenchFailure(f"{LIST_PATH} answered {status}: {body[:200]!r}")
    listed = [row["id"] for row in json.loads(body)["results"]]
    status, body = request(port, FLOOR_PATH, {})
    floor = [row["id"] for row in json.loads(body)["results"]]
    if listed != floor or len(listed) != 100:
        raise common.BenchFailure("the list and the floor do not return the same 100 rows")


def list_queries(headers: dict) -> int:
    """The SQL queries of one list request, in this process (Django's test client)."""
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    client = Client(HTTP_AUTHORIZATION=headers["Authorization"], HTTP_ACCEPT="application/json")
    client.get(LIST_PATH)
    with CaptureQueriesContext(connection) as captured:
        response = client.get(LIST_PATH)
    if response.status_code != 200:
        raise common.BenchFailure(f"{LIST_PATH} answered {response.status_code} in process")
    return len(captured)


def add_arguments(parser) -> None:
    parser.add_argument("--rows", type=int, default=10_000, help="anomalies loaded (default 10,000)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of one measurement (default 10)")
    parser.add_argument("--concurrency", type=int, default=16, help="clients at once (default 16)")
    parser.add_argument("--workers", type=int, default=4, help="gunicorn sync workers (default 4)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="list-then-floor measurements (default 3; the median ratio is kept)")


def check(args) -> str | None:
    if min(args.rows, args.concurrency, args.workers, args.rounds) < 1 or args.seconds <= 0:
        return "--rows, --concurrency, --workers and --rounds must be at least 1, --seconds positive"
    return None


def run(args, report: dict) -> None:
    warnings.filterwarnings("ignore", message="No directory at")  # WhiteNoise: no collectstatic here
    from django.contrib.auth.models import Permission, User
    from rest_framework.authtoken.models import Token

    # An on-call reviewer: a plain user with the view permission (a superuser skips the permission
    # lookups every real client pays for).
    user, _ = User.objects.get_or_create(username="bench-oncall")
    user.user_permissions.set([Permission.objects.get(codename="view_dataanomaly")])
    token, _ = Token.objects.get_or_create(user=user)
    headers = {"Authorization": f"Token {token.key}", "Accept": "application/json"}
    load(args.rows)
    queries = list_queries(headers)
    print(f"SQL queries per list request: {queries} (the floor: 1)", flush=True)
    from django.db import connections

    connections.close_all()
    port = free_port()
    server = start_gunicorn(args, port)
    try:
        check_same_rows(port, headers)
        warm = min(3.0, args.seconds)
        drive(port, LIST_PATH, headers, args.concurrency, warm)
        drive(port, FLOOR_PATH, {}, args.concurrency, warm)
        rounds: list[dict[str, dict]] = []
        for round_ in range(args.rounds):
            pair = {}
            for name, path, hdrs in (("list", LIST_PATH, headers), ("floor", FLOOR_PATH, {})):
                pair[name] = figures = drive(port, path, hdrs, args.concurrency, args.seconds)
                print(f"round {round_ + 1} {name:5}: {figures['rps']:7.1f} req/s, p50 {figures['p50_ms']:6.1f} ms, "
                      f"p95 {figures['p95_ms']:6.1f} ms ({figures['requests']} requests)", flush=True)
            rounds.append(pair)
    finally:
        stop(server)
    # The load of a shared machine drifts: each list measurement is compared with the floor measured
    # right after it, and the median of those ratios is the figure.
    ratio = statistics.median(pair["list"]["rps"] / pair["floor"]["rps"] for pair in rounds)
    medians = {name: {key: statistics.median(pair[name][key] for pair in rounds) for key in ("rps", "p50_ms")}
            for name in ("list", "floor")}
    load1 = os.getloadavg()[0]
    print(f"{args.rows:,} anomalies, gunicorn {args.workers} sync workers, concurrency {args.concurrency}, "
          f"{args.rounds} rounds of {args.seconds:g} s, load average {load1:.2f} (medians)")
    print(f"anomaly list  GET {LIST_PATH}: {medians['list']['rps']:.1f} req/s, p50 {medians['list']['p50_ms']:.1f} ms")
    print(f"floor         GET {FLOOR_PATH}: {medians['floor']['rps']:.1f} req/s, p50 {medians['floor']['p50_ms']:.1f} ms")
    print(f"ratio list / floor = {ratio:.2f} (target >= {TARGET_RATIO:.2f})")
    report.update(rows=args.rows, concurrency=args.concurrency, workers=args.workers,
                  list_rps=round(medians["list"]["rps"], 1), list_p50_ms=round(medians["list"]["p50_ms"], 1),
                  floor_rps=round(medians["floor"]["rps"], 1), floor_p50_ms=round(medians["floor"]["p50_ms"], 1),
                  ratio=round(ratio, 3), target_ratio=TARGET_RATIO, load_average=round(load1, 2), queries=queries)


def summary(args, report: dict) -> list[dict]:
    return [common.summary_row(
        f"`bench_api_list.py`, {report['rows']:,} anomalies, concurrency {report['concurrency']}",
        f"{report['list_rps']:.0f} req/s vs floor {report['floor_rps']:.0f}: {report['ratio']:.2f}",
        f"≥ {report['target_ratio']:.2f} of the floor")]


def main(argv=None) -> int:
    return common.main("api_list", __doc__, add_arguments, run, argv, check=check, summary=summary)


if __name__ == "__main__":
    sys.exit(main())
