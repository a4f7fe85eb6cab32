"""/healthz: 200 while the database answers, 503 otherwise, nothing else disclosed."""

from __future__ import annotations

import pytest
from django.db import connection

pytestmark = pytest.mark.django_db


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
