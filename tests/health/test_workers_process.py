"""A real ``manage.py qcluster``: while it runs the app sees a worker alive (its heartbeat reaches the
web process through the shared ``workers`` cache), after it stops it does not, and a backfill queued
through the API is run by it."""

from __future__ import annotations

import signal
import subprocess

import pytest
from django.core.cache import caches

from integrity.health.workers import worker_status
from integrity.metrics import render_metrics
from integrity.models import BackfillState
from integrity.queue import live_clusters
from tests.helpers import add_instrument, client_for, start_qcluster, stop_process_group, user_with, wait_for

# The cluster reads committed rows; a cluster an earlier test stopped is forgotten.
pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("no_cluster_heartbeats")]


def running(process: subprocess.Popen):
    """Whether the cluster of this ``qcluster`` process has a current heartbeat."""
    return lambda: process.pid in [c["pid"] for c in live_clusters()]


@pytest.fixture
def qcluster(tmp_path):
    """``manage.py qcluster`` (one worker, the database broker) in its own session; stopped at the end."""
    process = start_qcluster(tmp_path / "qcluster.log")
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
        wait_for(running(qcluster), "no heartbeat of the cluster", qcluster)
        status = worker_status()
        assert status.alive and status.problem is None
        assert [c["pid"] for c in status.clusters] == [qcluster.pid]
        assert "marketdata_workers_alive 1.0" in render_metrics().splitlines()

    def test_it_is_not_alive_after_qcluster_stops(self, qcluster):
        wait_for(running(qcluster), "no heartbeat of the cluster", qcluster)
        stop(qcluster)
        assert qcluster.returncode == 0, qcluster.log.read_text()[-3000:]
        assert worker_status().alive is False  # its last heartbeat says Stopped
        assert "marketdata_workers_alive 0.0" in render_metrics().splitlines()

    def test_a_backfill_queued_while_it_runs_is_not_flagged_and_gets_run(self, qcluster):
        add_instrument()
        wait_for(running(qcluster), "no heartbeat of the cluster", qcluster)
        client = client_for(user_with("change_backfillstate", name="editor"))
        response = client.post("/api/v1/backfills/", {"symbol": "BTC-USD", "timeframe": "1h",
                                                      "start": "2024-01-01T00:00:00Z",
                                                      "end": "2024-01-02T00:00:00Z"}, format="json")
        assert response.status_code == 202 and "warning" not in response.json()
        execution = BackfillState.objects.filter(execution_id=response.json()["execution_id"])
        wait_for(lambda: execution.get().status == "completed", "the backfill did not complete", qcluster)
