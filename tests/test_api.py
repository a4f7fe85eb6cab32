"""REST API v1: permissions, backfill requests, anomaly review, validation, pagination, schema."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_q.models import OrmQ
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from integrity.backfill import create_backfill_state, run_backfill_execution
from integrity.models import (
    BackfillState,
    DataAnomaly,
    DuplicateRecordLog,
    HealthCheckRun,
    Instrument,
    SeriesStats,
    SymbolFailureTracking,
)
from tests.helpers import add_instrument, utc

pytestmark = pytest.mark.django_db

MODELS = {
    "backfills": "backfillstate",
    "anomalies": "dataanomaly",
    "duplicates": "duplicaterecordlog",
    "symbol-failures": "symbolfailuretracking",
    "instruments": "instrument",
    "series": "seriesstats",
    "health": "healthcheckrun",
}


def user_with(*codenames: str, name: str = "u") -> User:
    user = User.objects.create_user(name)  # no password: no slow hashing in tests
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames, content_type__app_label="integrity"))
    return User.objects.get(pk=user.pk)  # fresh permission cache


def client_for(user: User | None, token: bool = False) -> APIClient:
    client = APIClient()
    if user is not None:
        if token:
            client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
        else:
            client.force_authenticate(user)
    return client


def anomaly(**kwargs) -> DataAnomaly:
    values = {"symbol": "BTC-USD", "timeframe": "1h", "anomaly_type": "gap", "severity": "high",
              "description": "5 missing bars", "affected_rows": 5, "fingerprint": f"fp-{DataAnomaly.objects.count()}"}
    values.update(kwargs)
    return DataAnomaly.objects.create(**values)


@pytest.fixture
def seeded():
    add_instrument()
    anomaly()
    DuplicateRecordLog.objects.create(symbol="BTC-USD", timeframe="1h", candle_time=utc(2024, 1, 1),
                                      duplicate_count=2, duplicate_ids=[5], kept_id=6)
    SymbolFailureTracking.objects.create(symbol="BTC-USD", consecutive_failures=2)
    SeriesStats.objects.create(symbol="BTC-USD", timeframe="1h", bar_count=10)
    HealthCheckRun.objects.create(status="healthy")
    state = create_backfill_state("BTC-USD", "1h", "crypto")
    state.mark_failed("x")


class TestPermissionMatrix:
    @pytest.mark.parametrize("endpoint", list(MODELS))
    def test_anonymous_requests_get_401(self, endpoint, seeded):
        assert APIClient().get(f"/api/v1/{endpoint}/").status_code == 401

    @pytest.mark.parametrize("endpoint", list(MODELS))
    def test_a_user_without_permission_gets_403(self, endpoint, seeded):
        assert client_for(user_with()).get(f"/api/v1/{endpoint}/").status_code == 403

    @pytest.mark.parametrize("endpoint,model", list(MODELS.items()))
    def test_a_viewer_can_read(self, endpoint, model, seeded):
        assert client_for(user_with(f"view_{model}"), token=True).get(f"/api/v1/{endpoint}/").status_code == 200

    @pytest.mark.parametrize("path,body", [
        ("/api/v1/backfills/", {"symbol": "BTC-USD", "timeframe": "1d"}),
        ("/api/v1/anomalies/{anomaly}/acknowledge/", {}),
        ("/api/v1/symbol-failures/BTC-USD/reset/", {}),
        ("/api/v1/instruments/", {"symbol": "ETH-USD", "asset_class": "crypto", "calendar": "24/7",
                                  "timeframes": ["1h"]}),
    ])
    def test_a_viewer_cannot_write(self, path, body, seeded):
        viewer = user_with(*(f"view_{m}" for m in MODELS.values()))
        path = path.format(anomaly=DataAnomaly.objects.first().pk)
        assert client_for(viewer).post(path, body, format="json").status_code == 403

    def test_an_editor_can_write(self, seeded):
        editor = user_with("view_dataanomaly", "change_dataanomaly", "view_symbolfailuretracking",
                           "change_symbolfailuretracking", "add_instrument", "change_instrument",
                           "view_instrument")
        client = client_for(editor)
        pk = DataAnomaly.objects.first().pk
        assert client.post(f"/api/v1/anomalies/{pk}/acknowledge/", {}, format="json").status_code == 200
        assert client.post("/api/v1/symbol-failures/BTC-USD/reset/").status_code == 200
        created = client.post("/api/v1/instruments/", {"symbol": "ETH-USD", "asset_class": "crypto",
                                                       "calendar": "24/7", "timeframes": ["1h"]}, format="json")
        assert created.status_code == 201


@pytest.fixture
def editor_client():
    return client_for(user_with("view_backfillstate", "change_backfillstate", "view_dataanomaly",
                                "change_dataanomaly", name="editor"))


class TestBackfillRequests:
    def test_a_request_answers_202_with_a_pending_execution_and_queues_its_run(self, editor_client):
        add_instrument()
        response = editor_client.post("/api/v1/backfills/", {"symbol": "BTC-USD", "timeframe": "1h",
                                                              "start": "2024-01-01T00:00:00Z",
                                                              "end": "2024-01-02T00:00:00Z"}, format="json")
        assert response.status_code == 202
        state = BackfillState.objects.get(execution_id=response.json()["execution_id"])
        assert state.status == "pending" and state.requested_by == "api:editor"
        assert OrmQ.objects.count() == 1

    def test_the_queued_run_completes_the_requested_execution(self, editor_client):
        add_instrument()
        response = editor_client.post("/api/v1/backfills/", {"symbol": "BTC-USD", "timeframe": "1h",
                                                              "start": "2024-01-01T00:00:00Z",
                                                              "end": "2024-01-02T00:00:00Z"}, format="json")
        result = run_backfill_execution(response.json()["execution_id"])
        assert (result["status"], result["inserted"]) == ("completed", 24)
        detail = editor_client.get(f"/api/v1/backfills/{response.json()['execution_id']}/").json()
        assert detail["status"] == "completed" and detail["records_inserted"] == 24

    def test_a_second_request_for_a_busy_series_answers_409_naming_the_holder(self, editor_client):
        add_instrument()
        holder = create_backfill_state("BTC-USD", "1h", "crypto")
        response = editor_client.post("/api/v1/backfills/", {"symbol": "BTC-USD", "timeframe": "1h"}, format="json")
        assert response.status_code == 409
        assert response.json()["active_execution_id"] == str(holder.execution_id)

    @pytest.mark.parametrize("body,field", [
        ({"symbol": "NOPE", "timeframe": "1h"}, "symbol"),
        ({"symbol": "BTC-USD", "timeframe": "7m"}, "timeframe"),
        ({"symbol": "BTC-USD", "timeframe": "1h", "start": "yesterday"}, "start"),
        ({"symbol": "BTC-USD", "timeframe": "1h", "start": "2024-02-01T00:00:00Z",
          "end": "2024-01-01T00:00:00Z"}, "end"),
    ])
    def test_an_invalid_request_is_400_with_field_messages(self, editor_client, body, field):
        add_instrument()
        response = editor_client.post("/api/v1/backfills/", body, format="json")
        assert response.status_code == 400 and field in response.json()
        assert not BackfillState.objects.exists()

    def test_the_list_filters_by_status(self, editor_client):
        for symbol in ("A", "B"):
            create_backfill_state(symbol, "1h", "crypto")
        BackfillState.objects.filter(symbol="A").update(status="failed")
        rows = editor_client.get("/api/v1/backfills/?status=failed").json()["results"]
        assert [r["symbol"] for r in rows] == ["A"]


class TestAnomalyEndpoints:
    def test_filters_combine(self, editor_client):
        anomaly(severity="high")
        anomaly(severity="low")
        anomaly(severity="high", resolution_status="resolved")
        rows = editor_client.get("/api/v1/anomalies/?severity=high&resolution_status=open").json()["results"]
        assert len(rows) == 1 and rows[0]["severity"] == "high"

    def test_an_invalid_filter_value_is_400(self, editor_client):
        response = editor_client.get("/api/v1/anomalies/?severity=apocalyptic")
        assert response.status_code == 400 and "severity" in response.json()

    def test_acknowledge_then_resolve_records_the_reviewer(self, editor_client):
        pk = anomaly().pk
        editor_client.post(f"/api/v1/anomalies/{pk}/acknowledge/", {"note": "outage"}, format="json")
        body = editor_client.post(f"/api/v1/anomalies/{pk}/resolve/", {}, format="json").json()
        assert (body["resolution_status"], body["acknowledged_by"], body["resolved_by"]) == (
            "resolved", "editor", "editor")
        assert body["resolution_note"] == "outage"

    def test_reviewing_a_resolved_anomaly_is_409(self, editor_client):
        pk = anomaly(resolution_status="resolved").pk
        assert editor_client.post(f"/api/v1/anomalies/{pk}/acknowledge/", {}, format="json").status_code == 409

    def test_pages_are_keyset_paginated(self, editor_client):
        now = timezone.now()
        for i in range(5):
            anomaly(detected_at=now - timedelta(minutes=i))
        first = editor_client.get("/api/v1/anomalies/?page_size=2").json()
        second = editor_client.get(first["next"]).json()
        assert [r["id"] for r in first["results"] + second["results"]] == list(
            DataAnomaly.objects.order_by("-detected_at", "-id").values_list("id", flat=True)[:4])

    def test_the_list_query_count_does_not_grow_with_rows(self, editor_client):
        anomaly()
        editor_client.get("/api/v1/anomalies/")  # warm the permission cache
        with CaptureQueriesContext(connection) as few:
            editor_client.get("/api/v1/anomalies/")
        for _ in range(30):
            anomaly()
        with CaptureQueriesContext(connection) as many:
            editor_client.get("/api/v1/anomalies/")
        assert len(many) == len(few)


class TestInstrumentEndpoints:
    @pytest.fixture
    def client(self):
        return client_for(user_with("view_instrument", "add_instrument", "change_instrument", "delete_instrument"))

    def test_an_unknown_calendar_is_400(self, client):
        response = client.post("/api/v1/instruments/", {"symbol": "X", "asset_class": "equity", "calendar": "MOON",
                                                        "timeframes": ["1d"]}, format="json")
        assert response.status_code == 400 and "calendar" in response.json()

    def test_an_unknown_timeframe_is_400(self, client):
        response = client.post("/api/v1/instruments/", {"symbol": "X", "asset_class": "equity", "calendar": "XNYS",
                                                        "timeframes": ["7m"]}, format="json")
        assert response.status_code == 400 and "timeframes" in response.json()

    def test_an_instrument_is_edited_by_symbol(self, client):
        add_instrument("BTC-USD")
        response = client.patch("/api/v1/instruments/BTC-USD/", {"active": False}, format="json")
        assert response.status_code == 200 and not Instrument.objects.get(symbol="BTC-USD").active


class TestHealthEndpoint:
    def test_it_returns_the_latest_run_and_a_live_summary(self):
        HealthCheckRun.objects.create(status="warning")
        anomaly(severity="critical")
        body = client_for(user_with("view_healthcheckrun")).get("/api/v1/health/").json()
        assert body["latest_run"]["status"] == "warning"
        assert body["live"]["open_anomalies_by_severity"] == {"critical": 1}


class TestSchema:
    def test_the_openapi_schema_is_served_and_valid(self, client):
        from drf_spectacular.generators import SchemaGenerator
        from drf_spectacular.validation import validate_schema

        response = client.get("/api/schema/?format=json")
        assert response.status_code == 200
        validate_schema(SchemaGenerator().get_schema(request=None, public=True))

    def test_the_interactive_docs_use_local_assets(self, client):
        html = client.get("/api/docs/").content.decode()
        assert "swagger-ui" in html and "cdn" not in html.lower()
