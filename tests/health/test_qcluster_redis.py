"""The django-q2 broker: the project's database by default, Redis when REDIS_URL is set; with Redis the
queue's backlog and the clusters' heartbeats (whether a worker is alive) are read from Redis.

Settings are read once, at start-up, from the environment, so each case starts a fresh Django process
with the environment under test. The Redis case runs against a real ``redis-server`` started by the
test on a free loopback port (skipped where redis-server is not installed).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import ROOT, django_script_report, start_qcluster, worker_database_url

# Which broker a process would use, and a task queued through it.
QUEUE_ONE = """
import json, django
django.setup()
from django_q.brokers import get_broker
from django_q.conf import Conf
broker = get_broker()
report = {"broker": type(broker).__name__, "orm": Conf.ORM, "list_key": broker.list_key}
if report["broker"] == "Redis":
    from django_q.tasks import async_task
    report["task_id"] = async_task("integrity.tasks.health_task", broker=broker)
    report["queue_size"] = broker.queue_size()
from integrity.queue import queue_state
state = queue_state()
report["workers"] = {"alive": state.alive, "queued": state.queued, "age_known": state.age_known}
print("BROKER " + json.dumps(report))
"""


def broker_report(redis_url: str, tmp_path: Path) -> dict:
    return django_script_report(QUEUE_ONE, "BROKER", REDIS_URL=redis_url, LOG_LEVEL="WARNING",
                                DATABASE_URL=f"sqlite:///{tmp_path / 'unused.sqlite3'}")


@pytest.mark.slow  # starts processes
class TestBroker:
    def test_without_redis_url_the_queue_is_the_projects_database(self, tmp_path):
        report = broker_report("", tmp_path)
        assert (report["broker"], report["orm"]) == ("ORM", "default")

    def test_with_redis_url_tasks_are_queued_in_redis(self, tmp_path, redis_server):
        port, client = redis_server
        report = broker_report(f"redis://127.0.0.1:{port}/0", tmp_path)
        assert report["broker"] == "Redis"
        assert report["orm"] is None
        assert report["queue_size"] == 1
        # The task is really in that server's list, where a qcluster started with the same REDIS_URL reads it.
        assert report["list_key"] == "django_q:marketdata:q"
        assert client.llen(report["list_key"]) == 1

    def test_with_redis_the_workers_view_reads_the_queue_and_its_age_from_redis(self, tmp_path, redis_server):
        port, _ = redis_server
        report = broker_report(f"redis://127.0.0.1:{port}/0", tmp_path)
        assert report["workers"] == {"alive": False, "queued": 1, "age_known": True}


ALIVE = """
import django
django.setup()
from integrity.queue import workers_alive
print("ALIVE", workers_alive())
"""


@pytest.mark.slow  # starts redis-server, a qcluster and Django processes
@pytest.mark.django_db(transaction=True)  # the cluster and the probe share the test database
class TestRedisWorkers:
    def test_a_qcluster_on_redis_is_seen_alive_while_it_runs_and_not_after(self, tmp_path, redis_server):
        port, _ = redis_server
        env = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{port}/0", "DATABASE_URL": worker_database_url(),
               "DJANGO_SETTINGS_MODULE": "marketdata_site.settings", "Q_WORKERS": "1", "LOG_LEVEL": "WARNING"}

        def alive() -> str:
            done = subprocess.run([sys.executable, "-c", ALIVE], cwd=ROOT, env=env, capture_output=True, text=True,
                                  timeout=60)
            return done.stdout.strip().rsplit(" ", 1)[-1]

        log = tmp_path / "qcluster.log"
        cluster = start_qcluster(log, REDIS_URL=env["REDIS_URL"], LOG_LEVEL="WARNING")
        try:
            deadline = time.monotonic() + 60
            while alive() != "True":
                assert cluster.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            cluster.send_signal(signal.SIGTERM)
            cluster.wait(timeout=30)
            assert alive() == "False"
        finally:
            if cluster.poll() is None:
                os.killpg(cluster.pid, signal.SIGKILL)  # the group is the cluster we started (own session)
                cluster.wait(timeout=10)
