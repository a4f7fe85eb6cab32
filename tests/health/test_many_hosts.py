"""Many workers on many hosts: three ``qcluster`` processes, each under its own ``WORKER_NAME`` as three
hosts would be, sharing one database and one Redis (a private ``redis-server``) and one queue name
(``Q_CLUSTER_NAME``: the queue they all take from). The daily backfill of 300 series fans out over all
three; the schedule fires once, not once per cluster; every series runs exactly once; and a cluster
killed outright (SIGKILL to its process group) leaves its runs to be reaped and completed by the
others, the stored bars exact.

The synthetic provider keeps it offline; daily bars over 20 days keep it small. The scheduler of a
cluster looks for due schedules about every 30 s (django-q2), which sets the first test's pace."""

from __future__ import annotations

import os
import signal
import time
from datetime import timedelta

import pandas as pd
import pytest
from django.core.cache import caches
from django.db.models import Count, Max, Min, Q
from django.utils import timezone
from django_q.models import Schedule, Task

from integrity.models import BackfillState, Candle
from integrity.providers import FetchRequest, get_provider
from integrity.schedules import setup_schedules
from tests.helpers import (
    add_instrument,
    assert_same_bars,
    django_script_report,
    start_qcluster,
    stop_process_group,
    stored_bars,
    wait_for,
    worker_database_url,
)

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

HOSTS = ("host-a", "host-b", "host-c")
SERIES = 300
LOOKBACK_DAYS = 20
HEARTBEAT_TIMEOUT = 5  # seconds; a run here takes well under one
FAN_OUT = "integrity.tasks.backfill_all_task"

RUN_TASK = """
import json, django
django.setup()
from integrity import tasks
print("RESULT " + json.dumps(getattr(tasks, "{task}")()))
"""


def symbols() -> list[str]:
    return [f"S{i:03d}-USD" for i in range(SERIES)]


def register_series(**provider_options) -> None:
    for symbol in symbols():
        add_instrument(symbol, timeframes=("1d",), **provider_options)


@pytest.fixture
def hosts(tmp_path, redis_server):
    """Start one cluster per host name on the shared Redis; yields a dict name → process and the env
    they share; every cluster still running is stopped at the end."""
    port, _ = redis_server
    shared = {"REDIS_URL": f"redis://127.0.0.1:{port}/0", "Q_WORKERS": "2", "LOG_LEVEL": "WARNING",
              "DJANGO_Q_LOG_LEVEL": "WARNING", "BACKFILL_LOOKBACK_DAYS_1D": str(LOOKBACK_DAYS),
              "BACKFILL_BATCH_SIZE": "5", "BACKFILL_HEARTBEAT_TIMEOUT_SECONDS": str(HEARTBEAT_TIMEOUT)}
    clusters: dict = {}

    def start():
        for host in HOSTS:
            clusters[host] = start_qcluster(tmp_path / f"{host}.log", WORKER_NAME=host, **shared)
        return clusters

    start.env = shared
    yield start
    for process in clusters.values():
        stop_process_group(process)
    caches["workers"].clear()


def run_task(task: str, env: dict) -> dict:
    """Run one of ``integrity.tasks`` in a fresh process on the shared queue, as a cluster's worker would."""
    return django_script_report(RUN_TASK.replace("{task}", task), "RESULT", DATABASE_URL=worker_database_url(),
                                **env)


def completed_series() -> int:
    return BackfillState.objects.filter(status="completed").values("symbol").distinct().count()


def assert_bars_exact(symbols_to_compare) -> None:
    """Every series: as many bars as days in its executions' range, each once; the ones named: exactly the
    provider's bars over that range."""
    counts = {row["symbol"]: (row["n"], row["days"]) for row in
              Candle.objects.values("symbol").annotate(n=Count("id"), days=Count("ts", distinct=True))}
    # From the first run's start (a lost run committed its first pages) to the completed run's end.
    ranges = {row["symbol"]: (row["start"], row["end"]) for row in
              BackfillState.objects.values("symbol").annotate(
                  start=Min("range_start"), end=Max("range_end", filter=Q(status="completed")))}
    wrong = {}
    for symbol, (start, end) in ranges.items():
        days = len(range(0, int((end - start).total_seconds()) // 86_400))
        if counts.get(symbol) != (days, days):
            wrong[symbol] = (counts.get(symbol), days)
    assert wrong == {}, f"series whose bars are not one per day of their range: {wrong}"
    for symbol in symbols_to_compare:
        start, end = ranges[symbol]
        request = FetchRequest(symbol, "1d", start, end, calendar="24/7", asset_class="crypto")
        expected = pd.concat(get_provider("synthetic").fetch(request), ignore_index=True)
        assert_same_bars(stored_bars(symbol, "1d"), expected)


def test_the_daily_schedule_fires_once_and_each_series_runs_exactly_once_spread_over_three_hosts(hosts):
    register_series()
    setup_schedules()
    Schedule.objects.exclude(name="integrity.backfill").delete()  # only the fan-out is under test
    Schedule.objects.filter(name="integrity.backfill").update(next_run=timezone.now() - timedelta(seconds=1))
    clusters = hosts()
    started = time.monotonic()
    wait_for(lambda: completed_series() == SERIES, f"{SERIES} series completed", *clusters.values(), timeout=150,
             every=1)
    # Every cluster's scheduler has looked at the (no longer) due schedule at least once by now.
    wait_for(lambda: time.monotonic() - started > 35, "every scheduler ran", *clusters.values(), every=1)

    assert Task.objects.filter(func=FAN_OUT).count() == 1  # fired once, not once per cluster
    assert Schedule.objects.get(name="integrity.backfill").next_run > timezone.now()
    runs = BackfillState.objects.values("symbol").annotate(n=Count("id"))
    assert {row["n"] for row in runs} == {1} and len(runs) == SERIES  # exactly once each
    assert set(BackfillState.objects.values_list("status", flat=True)) == {"completed"}
    hosts_used = {worker.split(":")[0] for worker in BackfillState.objects.values_list("worker", flat=True)}
    assert hosts_used == set(HOSTS)  # the fan-out spread over all three
    assert_bars_exact(symbols()[:3])


def test_a_killed_cluster_leaves_its_runs_to_be_reaped_and_completed_by_the_others(hosts):
    register_series(page_size=5, page_delay=0.05)  # a run takes a few pages: long enough to be caught mid-run
    clusters = hosts()
    assert run_task("backfill_all_task", hosts.env)["enqueued"] == SERIES
    running_on_b = BackfillState.objects.filter(status="in_progress", worker__startswith="host-b:")
    wait_for(running_on_b.exists, "a run in progress on host-b", *clusters.values(), every=0.05)
    os.killpg(clusters["host-b"].pid, signal.SIGKILL)  # the whole cluster: guard, pusher, workers
    clusters["host-b"].wait(timeout=10)
    lost = set(running_on_b.values_list("execution_id", flat=True))
    assert lost, "host-b finished its runs before it was killed: nothing to recover"

    def recovered() -> bool:
        run_task("recover_backfills_task", hosts.env)  # what schedule integrity.recover runs
        return completed_series() == SERIES

    survivors = [clusters["host-a"], clusters["host-c"]]
    wait_for(recovered, f"{SERIES} series completed after recovery", *survivors, timeout=150, every=2)

    for state in BackfillState.objects.filter(execution_id__in=lost):
        assert state.status == "failed" and state.error_message.startswith("worker lost: heartbeat timeout")
    lost_symbols = list(BackfillState.objects.filter(execution_id__in=lost).values_list("symbol", flat=True))
    completed = BackfillState.objects.filter(status="completed")
    assert completed.count() == SERIES  # exactly one completed run per series
    assert all(not w.startswith("host-b:") for w in completed.filter(symbol__in=lost_symbols)
               .values_list("worker", flat=True))  # completed by the others
    assert not BackfillState.objects.filter(status__in=["pending", "in_progress"]).exists()
    assert_bars_exact(lost_symbols[:3])
