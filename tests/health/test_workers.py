"""Whether a worker is alive and how long queued work has waited: the health job's ``workers`` entry,
``health_check`` and ``/metrics`` (a real ``qcluster``: test_workers_process.py)."""

from __future__ import annotations

import json
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone
from django_q.conf import Conf

from integrity.health.job import run_health_monitoring
from integrity.health.workers import NO_WORKER, worker_status
from integrity.metrics import render_metrics
from integrity.tasks import request_backfill
from tests.helpers import add_instrument, cluster_heartbeat

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("no_cluster_heartbeats")]


def queue_one_backfill():
    add_instrument()
    return request_backfill("BTC-USD", "1h", requested_by="test")


def sample(text: str, name: str) -> float:
    """The value of an unlabelled sample (prometheus_client writes every value as a float)."""
    return float(next(line for line in text.splitlines() if line.startswith(f"{name} ")).split()[1])


class TestWorkerStatus:
    def test_it_without_a_cluster_is_not_alive_and_with_nothing_waiting_no_problem(self):
        status = worker_status()
        assert (status.alive, status.clusters, status.queued, status.problem) == (False, [], 0, None)

    def test_it_sees_a_cluster_whose_heartbeat_is_current(self):
        beat = cluster_heartbeat()
        status = worker_status()
        assert status.alive is True
        assert [(c["cluster_id"], c["status"], c["workers"]) for c in status.clusters] == [
            (str(beat.cluster_id), str(Conf.IDLE), 1)]

    def test_it_does_not_count_a_stopped_clusters_last_heartbeat(self):
        cluster_heartbeat(status=Conf.STOPPED)
        assert worker_status().alive is False

    def test_it_measures_how_long_the_oldest_queued_task_has_waited(self):
        queue_one_backfill()
        status = worker_status(now=timezone.now() + timedelta(minutes=10))
        assert status.queued == 1
        assert 595 <= status.oldest_queued_seconds <= 605

    def test_it_names_qcluster_when_work_waits_and_no_cluster_is_alive(self):
        queue_one_backfill()
        problem = worker_status().problem
        assert problem.startswith(f"{NO_WORKER} (1 task(s) queued, the oldest for ")
        assert problem.endswith(", 1 backfill(s) pending)")

    def test_it_with_a_cluster_alive_warns_when_a_task_waits_past_the_setting(self, settings):
        settings.WORKER_QUEUE_WAIT_WARNING_SECONDS = 60
        cluster_heartbeat()
        queue_one_backfill()
        assert worker_status().problem is None
        later = worker_status(now=timezone.now() + timedelta(minutes=2)).problem
        assert "the workers are busy or stuck" in later and "1 cluster(s) alive" in later


@pytest.fixture
def unreadable_heartbeats(settings):
    """The ``workers`` cache points at a table that does not exist (``migrate`` never created it)."""
    settings.CACHES = {**settings.CACHES, "workers": {"BACKEND": "django.core.cache.backends.db.DatabaseCache",
                                                      "LOCATION": "no_such_cache_table"}}


class TestUnreadableHeartbeats:
    def test_the_report_says_it_cannot_tell_and_keeps_the_queue(self, unreadable_heartbeats):
        queue_one_backfill()
        status = worker_status()
        assert (status.alive, status.queued) == (None, 1)
        assert status.problem.startswith("cannot tell whether a worker is running: cluster stats: ")

    def test_metrics_report_the_workers_collector_failed(self, unreadable_heartbeats):
        text = render_metrics()
        assert 'marketdata_metrics_collector_errors{collector="workers"} 1' in text
        assert "marketdata_workers_alive" not in text


class TestHealthJob:
    def test_the_report_has_a_workers_entry(self):
        report = run_health_monitoring(scan_anomalies=False).as_dict()
        assert report["status"] == "healthy"
        assert report["workers"]["alive"] is False and report["workers"]["broker"] == "ORM"

    def test_queued_work_without_a_worker_makes_the_run_a_warning(self):
        queue_one_backfill()
        report = run_health_monitoring(scan_anomalies=False)
        assert report.status == "warning"
        assert report.workers["problem"].startswith(NO_WORKER)

    def test_health_check_json_reports_the_workers(self):
        queue_one_backfill()
        out = StringIO()
        with pytest.raises(CommandError):  # warning: exit 1
            call_command("health_check", "--format", "json", "--skip-scan", stdout=out)
        workers = json.loads(out.getvalue())["workers"]
        assert (workers["alive"], workers["queued"], workers["pending_backfills"]) == (False, 1, 1)
        assert workers["oldest_queued_seconds"] is not None

    def test_health_check_text_says_no_worker_is_running(self):
        queue_one_backfill()
        out = StringIO()
        with pytest.raises(CommandError):
            call_command("health_check", "--skip-scan", stdout=out)
        assert f"workers: {NO_WORKER}" in out.getvalue()


class TestMetrics:
    def test_without_a_cluster_the_gauges_say_none_alive_and_what_waits(self):
        queue_one_backfill()
        text = render_metrics()
        assert sample(text, "marketdata_workers_alive") == 0
        assert sample(text, "marketdata_worker_clusters") == 0
        assert sample(text, "marketdata_queued_tasks") == 1
        age = sample(text, "marketdata_oldest_queued_task_age_seconds")
        assert 0 <= age < 60
        assert 'marketdata_metrics_collector_errors{collector="workers"} 0' in text

    def test_a_live_cluster_is_counted_with_its_workers(self):
        cluster_heartbeat()
        text = render_metrics()
        assert sample(text, "marketdata_workers_alive") == 1
        assert sample(text, "marketdata_worker_processes") == 1
        assert sample(text, "marketdata_oldest_queued_task_age_seconds") == 0
        assert 0 <= sample(text, "marketdata_worker_heartbeat_age_seconds") < 60

    def test_without_a_live_cluster_there_is_no_heartbeat_age(self):
        assert "marketdata_worker_heartbeat_age_seconds " not in render_metrics()
