"""The filtered anomaly list at 1M anomaly rows: latency, plan and query count (PostgreSQL).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/marketdata_bench python bench/bench_api.py [--rows 1000000]

Loads ROWS anomalies (COPY), then requests one page of
``/api/v1/anomalies/?severity=high&resolution_status=open`` in-process (DRF test client, token
auth) N times and prints the median, the EXPLAIN of the page query (it must use an index, not a
sequential scan and sort) and the number of SQL queries per request at 10k rows and at ROWS rows.
Target: median ≤ 50 ms; the query count does not grow with the data.
"""

from __future__ import annotations

import statistics
import sys
import time

import common

URL = "/api/v1/anomalies/?severity=high&resolution_status=open"
TARGET_MS = 50


def load(rows: int) -> None:
    import numpy as np
    import pandas as pd
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE data_anomalies RESTART IDENTITY")
    rng = np.random.default_rng(3)
    chunk = 200_000
    base = pd.Timestamp("2020-01-01", tz="UTC")
    for offset in range(0, rows, chunk):
        n = min(chunk, rows - offset)
        detected = base + pd.to_timedelta(rng.integers(0, 6 * 365 * 86400, n), unit="s")
        status = rng.choice(["open", "acknowledged", "resolved"], n, p=[0.2, 0.1, 0.7])
        frame = pd.DataFrame({
            "symbol": [f"S{i:04d}" for i in rng.integers(0, 2000, n)],
            "timeframe": rng.choice(["1m", "1h", "1d"], n),
            "anomaly_type": rng.choice(["gap", "outlier", "stale", "duplicate", "off_calendar", "invalid_ohlc"], n),
            "detected_at": detected.strftime("%Y-%m-%d %H:%M:%S+00"),
            "severity": rng.choice(["low", "medium", "high", "critical"], n, p=[0.4, 0.35, 0.2, 0.05]),
            "description": "benchmark anomaly",
            "affected_rows": rng.integers(1, 100, n),
            "resolution_status": status,
            "created_at": detected.strftime("%Y-%m-%d %H:%M:%S+00"),
            "fingerprint": [f"bench-{offset + i}" for i in range(n)],
            "details": "{}",
            "last_seen_at": detected.strftime("%Y-%m-%d %H:%M:%S+00"),
            "acknowledged_by": "", "resolved_by": "", "resolution_note": "", "regressions": 0,
            "resolution_reason": "",
            "updated_at": detected.strftime("%Y-%m-%d %H:%M:%S+00"),
        })
        with connection.cursor() as cursor:
            columns = ", ".join(frame.columns)
            with cursor.cursor.copy(f"COPY data_anomalies ({columns}) FROM STDIN") as copy:
                copy.write(frame.to_csv(sep="\t", header=False, index=False))
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE data_anomalies")


def measure(client, repeat: int) -> tuple[float, int]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    client.get(URL)  # warm
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        response = client.get(URL)
        times.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, response.content[:200]
    with CaptureQueriesContext(connection) as queries:
        client.get(URL)
    return statistics.median(times), len(queries)


def plan() -> str:
    from django.db import connection

    from integrity.api.filters import AnomalyFilter
    from integrity.models import DataAnomaly

    qs = AnomalyFilter({"severity": ["high"], "resolution_status": ["open"]},
                       queryset=DataAnomaly.objects.all()).qs.order_by("-detected_at", "-id")[:101]
    sql, params = qs.query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS OFF) " + sql, params)
        return "\n".join(row[0] for row in cursor.fetchall())


def add_arguments(parser) -> None:
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=50)


def check(args) -> str | None:
    return None if args.rows >= 1 and args.repeat >= 1 else "--rows and --repeat must be at least 1"


def api_client():
    """An API client with the token of the bench's superuser (created once)."""
    from django.contrib.auth.models import User
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    user = User.objects.filter(username="bench").first() or User.objects.create_superuser("bench", "b@x", None)
    token, _ = Token.objects.get_or_create(user=user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


def run(args, report: dict) -> None:
    client = api_client()

    load(10_000)
    small_ms, small_queries = measure(client, args.repeat)
    load(args.rows)
    big_ms, big_queries = measure(client, args.repeat)
    print(f"anomaly rows: 10,000 → median {small_ms:.1f} ms, {small_queries} queries per request")
    print(f"anomaly rows: {args.rows:,} → median {big_ms:.1f} ms, {big_queries} queries per request "
          f"(target <= {TARGET_MS} ms; queries constant: {'yes' if big_queries == small_queries else 'NO'})")
    print(f"ratio {args.rows:,} / 10,000 rows = {big_ms / small_ms:.2f}")
    page_plan = plan()
    print("plan of the page query:")
    print(page_plan)
    report.update(rows=args.rows, median_ms_small=round(small_ms, 2), median_ms=round(big_ms, 2),
                  target_ms=TARGET_MS, queries_small=small_queries, queries=big_queries, plan=page_plan,
                  index_scan="Index" in page_plan)


def summary(args, report: dict) -> list[dict]:
    return [common.summary_row(
        f"`bench_api.py`, {report['rows']:,} anomalies",
        f"median {report['median_ms']:.1f} ms, {report['queries']} queries"
        + (", index scan" if report["index_scan"] else ", NO index scan"),
        f"≤ {report['target_ms']:g} ms")]


def main(argv=None) -> int:
    return common.main("api", __doc__, add_arguments, run, argv, check=check, summary=summary)


if __name__ == "__main__":
    sys.exit(main())
