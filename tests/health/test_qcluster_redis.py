"""The django-q2 broker: the project's database by default, Redis when REDIS_URL is set.

Settings are read once, at start-up, from the environment, so each case starts a fresh Django process
with the environment under test. The Redis case runs against a real ``redis-server`` started by the
test on a free loopback port (skipped where redis-server is not installed).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import django_script_report, unused_port

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
print("BROKER " + json.dumps(report))
"""


def broker_report(redis_url: str, tmp_path: Path) -> dict:
    return django_script_report(QUEUE_ONE, "BROKER", REDIS_URL=redis_url, LOG_LEVEL="WARNING",
                                DATABASE_URL=f"sqlite:///{tmp_path / 'unused.sqlite3'}")


@pytest.fixture
def redis_server(tmp_path):
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    import redis

    port = unused_port()
    process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no", "--dir", str(tmp_path)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(host="127.0.0.1", port=port)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or process.poll() is not None:
                    pytest.fail("redis-server did not start")
                time.sleep(0.05)
        yield port, client
    finally:
        client.close()
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


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
