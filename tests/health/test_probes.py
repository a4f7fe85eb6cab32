"""/healthz: 200 while the database answers, 503 otherwise, nothing else disclosed."""

from __future__ import annotations

import json

import pytest
from django.db import connection

from tests.helpers import django_script_report, unused_port

# A fresh Django process, configured only by the environment, asks its own /healthz once.
PROBE = """
import json, django
django.setup()
from django.test import Client
response = Client().get("/healthz")
print("PROBE " + json.dumps({"status": response.status_code, "body": response.content.decode(),
                             "content_type": response["Content-Type"]}))
"""


def probe_with(database_url: str) -> dict:
    return django_script_report(PROBE, "PROBE", DATABASE_URL=database_url, DEBUG="False",
                                SECRET_KEY="probe-test-secret-key-not-the-default", LOG_LEVEL="CRITICAL")


@pytest.mark.django_db
class TestHealthz:
    def test_it_answers_200_without_authentication(self, client):
        response = client.get("/healthz")
        assert response.status_code == 200
        assert response.json() == {"status": "ok"}

    def test_it_answers_503_when_the_database_fails(self, client, monkeypatch):
        def broken_cursor(*args, **kwargs):
            raise connection.Database.OperationalError("connection refused")

        monkeypatch.setattr(connection, "cursor", broken_cursor)
        response = client.get("/healthz")
        assert response.status_code == 503
        assert response.json() == {"status": "unavailable"}

    def test_only_get_is_allowed(self, client):
        assert client.post("/healthz").status_code == 405


@pytest.mark.slow  # starts a Django process per case (about a second each)
class TestHealthzInAFreshProcess:
    def test_it_answers_200_when_the_database_answers(self, tmp_path):
        result = probe_with(f"sqlite:///{tmp_path / 'up.sqlite3'}")
        assert (result["status"], json.loads(result["body"])) == (200, {"status": "ok"})

    def test_it_answers_503_when_postgresql_refuses_the_connection(self):
        port = unused_port()
        result = probe_with(f"postgres://postgres@127.0.0.1:{port}/nowhere")
        assert result["status"] == 503
        assert result["content_type"] == "application/json"
        assert json.loads(result["body"]) == {"status": "unavailable"}  # no host, port, driver or error text
        assert str(port) not in result["body"]

    def test_it_answers_503_when_the_sqlite_file_cannot_be_opened(self, tmp_path):
        result = probe_with(f"sqlite:///{tmp_path / 'no-such-dir' / 'db.sqlite3'}")
        assert (result["status"], json.loads(result["body"])) == (503, {"status": "unavailable"})
