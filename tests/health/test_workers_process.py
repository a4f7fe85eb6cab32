"""A real ``manage.py qcluster``: while it runs the app sees a worker alive (its heartbeat reaches the
web process through the shared ``workers`` cache), after it stops it does not, and a backfill queued
through the API is run by it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from django.core.cache import caches

from integrity.health.workers import worker_status
from integrity.metrics import render_metrics
from integrity.models import BackfillState
from integrity.queue import live_clusters
from tests.helpers import ROOT, add_instrument, client_for, stop_process_group, user_with, worker_database_url

# The cluster reads committed rows; a cluster an earlier test stopped is forgotten.
pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("no_cluster_heartbeats")]


def running(process: subprocess.Popen):
    """Whether the cluster of this ``qcluster`` process has a current heartbeat."""
    return lambda: process.pid in [c["pid"] for c in live_clusters()]


def wait_for(condition, what: str, process: subprocess.Popen, log, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        assert process.poll() is None, f"qcluster exited early:\n{log.read_text()[-3000:]}"
        time.sleep(0.2)
    pytest.fail(f"{what} within {timeout} s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def qcluster(tmp_path):
    """``manage.py qcluster`` (one worker, the database broker) in its own session; stopped at the end."""
    log = tmp_path / "qcluster.log"
    env = {**os.environ, "DATABASE_URL": worker_database_url(), "DJANGO_SETTINGS_MODULE": "marketdata_site.settings",
           "REDIS_URL": "", "Q_WORKERS": "1", "DJANGO_Q_LOG_LEVEL": "INFO"}
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "manage.py", "qcluster"], cwd=ROOT, env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    process.log = log
    yield process
    stop_process_group(process)
    caches["workers"].clear()  # the next test starts with no heartbeat of this cluster


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"qcluster did not stop:\n{process.log.read_text()[-3000:]}")


class TestRealCluster:
    def test_it_is_alive_while_qcluster_runs(self, qcluster):
        wait_for(running(qcluster), "no heartbeat of the cluster", qcluster, qcluster.log)
        status = worker_status()
        assert status.alive and status.problem is None
        assert [c["pid"] for c in status.clusters] == [qcluster.pid]
        assert "marketdata_workers_alive 1.0" in render_metrics().splitlines()

    def test_it_is_not_alive_after_qcluster_stops(self, qcluster):
        wait_for(running(qcluster), "no heartbeat of the cluster", qcluster, qcluster.log)
        stop(qcluster)
        assert qcluster.returncode == 0, qcluster.log.read_text()[-3000:]
        assert worker_status().alive is False  # its last heartbeat says Stopped
        assert "marketdata_workers_alive 0.0" in render_metrics().splitlines()

    def test_a_backfill_queued_while_it_runs_is_not_flagged_and_gets_run(self, qcluster):
        add_instrument()
        wait_for(running(qcluster), "no heartbeat of the cluster", qcluster, qcluster.log)
        client = client_for(user_with("change_backfillstate", name="editor"))
        response = client.post("/api/v1/backfills/", {"symbol": "BTC-USD", "timeframe": "1h",
                                                      "start": "2024-01-01T00:00:00Z",
                                                      "end": "2024-01-02T00:00:00Z"}, format="json")
        assert response.status_code == 202 and "warning" not in response.json()
        execution = BackfillState.objects.filter(execution_id=response.json()["execution_id"])
        wait_for(lambda: execution.get().status == "completed", "the backfill did not complete", qcluster,
                 qcluster.log)
