"""REST API v1: permissions, backfill requests, anomaly review, validation, pagination, schema."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_q.models import OrmQ
from rest_framework.test import APIClient

from integrity import models
from integrity.backfill import create_backfill_state, run_backfill_execution
from tests.helpers import FACTORIES, add_instrument, client_for, make_anomaly, user_with, utc

pytestmark = pytest.mark.django_db


@pytest.fixture
def seeded():
    add_instrument()
    make_anomaly()
    models.DuplicateRecordLog.objects.create(symbol="BTC-USD", timeframe="1h", candle_time=utc(2024, 1, 1),
                                             duplicate_count=2, duplicate_ids=[5], kept_id=6)
    models.SymbolFailureTracking.objects.create(symbol="BTC-USD", consecutive_failures=2)
    models.SeriesStats.objects.create(symbol="BTC-USD", timeframe="1h", bar_count=10)
    models.HealthCheckRun.objects.create(status="healthy")
    state = create_backfill_state("BTC-USD", "1h", "crypto")
    state.mark_failed("x")


# endpoint: (model, detail path, write request (method, path, body), the editor's status for it).
# Read-only endpoints answer an editor's write with 405; the permission check comes first.
ENDPOINTS = {
    "backfills": ("backfillstate", lambda: f"backfills/{models.BackfillState.objects.get().execution_id}/",
                  ("post", "backfills/", {"symbol": "BTC-USD", "timeframe": "1d"}), 202),
    "anomalies": ("dataanomaly", lambda: f"anomalies/{models.DataAnomaly.objects.get().pk}/",
                  ("post", "anomalies/{anomaly}/acknowledge/", {"note": "seen"}), 200),
    "duplicates": ("duplicaterecordlog", lambda: f"duplicates/{models.DuplicateRecordLog.objects.get().pk}/",
                   ("post", "duplicates/", {"symbol": "X"}), 405),
    "symbol-failures": ("symbolfailuretracking", lambda: "symbol-failures/BTC-USD/",
                        ("post", "symbol-failures/BTC-USD/reset/", {}), 200),
    "instruments": ("instrument", lambda: "instruments/BTC-USD/",
                    ("patch", "instruments/BTC-USD/", {"active": False}), 200),
    "series": ("seriesstats", lambda: f"series/{models.SeriesStats.objects.get().pk}/",
               ("post", "series/", {"symbol": "X"}), 405),
    "health": ("healthcheckrun", None, ("post", "health/", {}), 405),
}

ROLES = {
    "anonymous": lambda model: None,
    "no-permission": lambda model: user_with(),
    "viewer": lambda model: user_with(f"view_{model}"),
    "editor": lambda model: user_with(f"view_{model}", f"change_{model}"),
}

# (role) -> (list, detail, write) statuses; None means "the endpoint's own success status".
EXPECTED = {
    "anonymous": (401, 401, 401),
    "no-permission": (403, 403, 403),
    "viewer": (200, 200, 403),
    "editor": (200, 200, None),
}


class TestPermissionMatrix:
    @pytest.mark.parametrize("role", list(ROLES))
    @pytest.mark.parametrize("endpoint", list(ENDPOINTS))
    def test_each_role_gets_what_its_permissions_allow(self, endpoint, role, seeded):
        model, detail, (method, path, body), editor_status = ENDPOINTS[endpoint]
        user = ROLES[role](model)
        client = client_for(user, token=True)
        list_status, detail_status, write_status = EXPECTED[role]
        listed = client.get(f"/api/v1/{endpoint}/")
        assert listed.status_code == list_status, listed.content
        if detail is not None:
            assert client.get(f"/api/v1/{detail()}").status_code == detail_status
        path = path.format(anomaly=models.DataAnomaly.objects.get().pk)
        written = getattr(client, method)(f"/api/v1/{path}", body, format="json")
        assert written.status_code == (write_status or editor_status), written.content
        if role == "anonymous":
            assert listed["WWW-Authenticate"] == "Token"  # a challenge: 401, not 403

    @pytest.mark.parametrize("role,expected", [("viewer", 403), ("editor", 403), ("creator", 201)])
    def test_creating_an_instrument_also_needs_the_add_permission(self, role, expected):
        perms = {"viewer": ["view_instrument"], "editor": ["view_instrument", "change_instrument"],
                 "creator": ["view_instrument", "change_instrument", "add_instrument"]}[role]
        response = client_for(user_with(*perms)).post(
            "/api/v1/instruments/", {"symbol": "ETH-USD", "asset_class": "crypto", "calendar": "24/7",
                                     "timeframes": ["1h"]}, format="json")
        assert response.status_code == expected

    @pytest.mark.parametrize("perms,expected", [(["view_instrument", "change_instrument"], 403),
                                                (["view_instrument", "delete_instrument"], 204)])
    def test_deleting_an_instrument_needs_the_delete_permission(self, perms, expected):
        add_instrument()
        assert client_for(user_with(*perms)).delete("/api/v1/instruments/BTC-USD/").status_code == expected
        assert models.Instrument.objects.filter(symbol="BTC-USD").exists() == (expected != 204)


class TestSessionAuthentication:
    def test_a_logged_in_admin_session_reads_the_api(self, seeded):
        client = APIClient(enforce_csrf_checks=True)
        client.force_login(user_with("view_dataanomaly"))
        assert client.get("/api/v1/anomalies/").status_code == 200

    def test_a_session_write_needs_the_csrf_token(self, seeded):
        client = APIClient(enforce_csrf_checks=True)
        client.force_login(user_with("view_dataanomaly", "change_dataanomaly"))
        pk = models.DataAnomaly.objects.get().pk
        refused = client.post(f"/api/v1/anomalies/{pk}/acknowledge/", {}, format="json")
        assert refused.status_code == 403 and "CSRF" in refused.json()["detail"]
        client.get("/admin/login/")  # sets the csrftoken cookie
        accepted = client.post(f"/api/v1/anomalies/{pk}/acknowledge/", {}, format="json",
                               HTTP_X_CSRFTOKEN=client.cookies["csrftoken"].value)
        assert accepted.status_code == 200

    def test_a_wrong_token_is_401(self):
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")
        assert client.get("/api/v1/anomalies/").status_code == 401


@pytest.fixture
def editor_client():
    return client_for(user_with("view_backfillstate", "change_backfillstate", "view_dataanomaly",
                                "change_dataanomaly", "view_duplicaterecordlog", "change_duplicaterecordlog",
                                "delete_duplicaterecordlog", "view_seriesstats", name="editor"))


class TestBackfillRequests:
    def test_a_request_answers_202_with_a_pending_execution_and_queues_its_run(self, editor_client):
        add_instrument()
        response = editor_client.post("/api/v1/backfills/", {"symbol": "BTC-USD", "timeframe": "1h",
                                                              "start": "2024-01-01T00:00:00Z",
                                                              "end": "2024-01-02T00:00:00Z"}, format="json")
        assert response.status_code == 202
        state = models.BackfillState.objects.get(execution_id=response.json()["execution_id"])
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
        assert str(holder.execution_id) in response.json()["detail"]
        assert models.BackfillState.objects.count() == 1

    @pytest.mark.parametrize("body,field", [
        ({"symbol": "NOPE", "timeframe": "1h"}, "symbol"),
        ({"symbol": "BTC-USD", "timeframe": "7m"}, "timeframe"),
        ({"symbol": "BTC-USD", "timeframe": "1h", "start": "yesterday"}, "start"),
        ({"symbol": "BTC-USD", "timeframe": "1h", "provider": "nasdaq-ftp"}, "provider"),
        ({"symbol": "BTC-USD", "timeframe": "1h", "start": "2024-02-01T00:00:00Z",
          "end": "2024-01-01T00:00:00Z"}, "end"),
        ({"timeframe": "1h"}, "symbol"),
    ])
    def test_an_invalid_request_is_400_with_field_messages(self, editor_client, body, field):
        add_instrument()
        response = editor_client.post("/api/v1/backfills/", body, format="json")
        assert response.status_code == 400 and field in response.json()
        assert not models.BackfillState.objects.exists()

    def test_the_detail_is_found_by_execution_id(self, editor_client):
        state = create_backfill_state("A", "1h", "crypto")
        body = editor_client.get(f"/api/v1/backfills/{state.execution_id}/").json()
        assert (body["execution_id"], body["symbol"], body["status"]) == (str(state.execution_id), "A", "pending")

    @pytest.mark.parametrize("lookup", ["00000000-0000-0000-0000-000000000000", "not-a-uuid"])
    def test_an_unknown_execution_id_is_404(self, editor_client, lookup):
        assert editor_client.get(f"/api/v1/backfills/{lookup}/").status_code == 404

    @pytest.mark.parametrize("query,expected", [
        ("status=failed", ["A"]),
        ("status=failed&status=pending", ["C", "B", "A"]),
        ("symbol=B", ["B"]),
        ("timeframe=1d", ["C"]),
        ("created_after=2024-03-01T00:00:00Z", ["C", "B"]),
        ("created_before=2024-03-01T00:00:00Z", ["A"]),
        ("created_after=2024-03-01T00:00:00Z&created_before=2024-04-01T00:00:00Z", ["B"]),
    ])
    def test_the_list_filters_by_symbol_timeframe_status_and_dates(self, editor_client, query, expected):
        created = {"A": ("1h", utc(2024, 2, 1)), "B": ("1h", utc(2024, 3, 1)), "C": ("1d", utc(2024, 4, 1))}
        for symbol, (timeframe, _) in created.items():
            create_backfill_state(symbol, timeframe, "crypto")
        models.BackfillState.objects.get(symbol="A").mark_failed("boom")
        for symbol, (_, at) in created.items():
            models.BackfillState.objects.filter(symbol=symbol).update(created_at=at)
        rows = editor_client.get(f"/api/v1/backfills/?{query}").json()["results"]
        assert [r["symbol"] for r in rows] == expected


class TestAnomalyEndpoints:
    def test_filters_combine(self, editor_client):
        make_anomaly(severity="high")
        make_anomaly(severity="low")
        make_anomaly(severity="high", resolution_status="resolved")
        rows = editor_client.get("/api/v1/anomalies/?severity=high&resolution_status=open").json()["results"]
        assert len(rows) == 1 and rows[0]["severity"] == "high"

    @pytest.mark.parametrize("query,field,value", [
        *((f"{field}={value}", field, value) for field, value in {
            "symbol": "ETH-USD", "timeframe": "1d", "anomaly_type": "outlier", "severity": "critical",
            "resolution_status": "acknowledged"}.items()),
        ("detected_after=2024-06-01T00:00:00Z", "detected_at", utc(2024, 7, 1)),
        ("detected_before=2024-06-01T00:00:00Z", "detected_at", utc(2024, 5, 1)),
    ])
    def test_each_filter_narrows_the_list(self, editor_client, query, field, value):
        make_anomaly(detected_at=utc(2024, 5, 1))
        make_anomaly(detected_at=utc(2024, 7, 1))
        wanted = make_anomaly(detected_at=utc(2024, 6, 15))
        models.DataAnomaly.objects.filter(pk=wanted.pk).update(**{field: value})
        if field == "detected_at":
            models.DataAnomaly.objects.exclude(pk=wanted.pk).update(detected_at=utc(2024, 6, 1) + (
                timedelta(days=1) if value < utc(2024, 6, 1) else -timedelta(days=1)))
        rows = editor_client.get(f"/api/v1/anomalies/?{query}").json()["results"]
        assert [r["id"] for r in rows] == [wanted.pk]

    @pytest.mark.parametrize("query,field", [
        ("severity=apocalyptic", "severity"),
        ("anomaly_type=weird", "anomaly_type"),
        ("resolution_status=forgotten", "resolution_status"),
        ("timeframe=7m", "timeframe"),
        ("detected_after=last-tuesday", "detected_after"),
    ])
    def test_an_invalid_filter_value_is_400_naming_it(self, editor_client, query, field):
        response = editor_client.get(f"/api/v1/anomalies/?{query}")
        assert response.status_code == 400 and field in response.json()

    def test_a_date_filter_with_an_offset_postgresql_refuses_is_read_as_utc(self, editor_client):
        # Found by schemathesis: Python parses +20:33, PostgreSQL rejects it (offsets end at ±15:59).
        make_anomaly(detected_at=utc(2024, 1, 1, 12))
        response = editor_client.get("/api/v1/anomalies/", {"detected_after": "2024-01-02T08:00:00+20:33"})
        assert response.status_code == 200 and len(response.json()["results"]) == 1  # 11:27 UTC on Jan 1

    @pytest.mark.parametrize("endpoint,param", [("anomalies", "detected_after"), ("backfills", "created_before"),
                                                ("duplicates", "cleaned_after")])
    def test_a_date_filter_outside_the_representable_range_is_400(self, editor_client, endpoint, param):
        response = editor_client.get(f"/api/v1/{endpoint}/", {param: "0001-01-01T00:00:00+20:00"})
        assert response.status_code == 400 and "out of the supported range" in str(response.json()[param])

    def test_the_detail_shows_details_and_review_fields(self, editor_client):
        pk = make_anomaly(details={"missing": 5}).pk
        body = editor_client.get(f"/api/v1/anomalies/{pk}/").json()
        assert body["details"] == {"missing": 5} and body["acknowledged_by"] == "" and body["fingerprint"]

    def test_acknowledge_then_resolve_records_the_reviewer_and_when(self, editor_client):
        pk = make_anomaly().pk
        acked = editor_client.post(f"/api/v1/anomalies/{pk}/acknowledge/", {"note": "outage"}, format="json").json()
        assert acked["resolution_status"] == "acknowledged" and acked["acknowledged_at"]
        body = editor_client.post(f"/api/v1/anomalies/{pk}/resolve/", {}, format="json").json()
        assert (body["resolution_status"], body["acknowledged_by"], body["resolved_by"]) == (
            "resolved", "editor", "editor")
        assert body["resolution_note"] == "outage" and body["resolved_at"]

    @pytest.mark.parametrize("status,action", [("resolved", "acknowledge"), ("resolved", "resolve"),
                                               ("acknowledged", "acknowledge")])
    def test_a_transition_the_lifecycle_forbids_is_409(self, editor_client, status, action):
        pk = make_anomaly(resolution_status=status).pk
        response = editor_client.post(f"/api/v1/anomalies/{pk}/{action}/", {}, format="json")
        assert response.status_code == 409 and f"is {status}" in response.json()["detail"]

    def test_a_review_note_that_is_not_text_is_400(self, editor_client):
        pk = make_anomaly().pk
        response = editor_client.post(f"/api/v1/anomalies/{pk}/acknowledge/", {"note": ["x"]}, format="json")
        assert response.status_code == 400 and "note" in response.json()
        assert models.DataAnomaly.objects.get(pk=pk).resolution_status == "open"

    def test_pages_are_keyset_paginated(self, editor_client):
        now = timezone.now()
        for i in range(5):
            make_anomaly(detected_at=now - timedelta(minutes=i))
        first = editor_client.get("/api/v1/anomalies/?page_size=2").json()
        second = editor_client.get(first["next"]).json()
        assert [r["id"] for r in first["results"] + second["results"]] == list(
            models.DataAnomaly.objects.order_by("-detected_at", "-id").values_list("id", flat=True)[:4])

    def test_a_malformed_cursor_is_400(self, editor_client):
        response = editor_client.get("/api/v1/anomalies/?cursor=garbage")
        assert response.status_code == 400 and "cursor" in response.json()

    def test_the_page_size_is_capped(self, editor_client):
        models.DataAnomaly.objects.bulk_create([
            models.DataAnomaly(symbol="A", timeframe="1h", anomaly_type="gap", severity="low", description="x",
                               fingerprint=f"f{i}") for i in range(1005)])
        assert len(editor_client.get("/api/v1/anomalies/?page_size=5000").json()["results"]) == 1000


class TestReadOnlyAudit:
    @pytest.mark.parametrize("method", ["post", "put", "patch", "delete"])
    def test_duplicates_cannot_be_written_even_with_every_permission(self, editor_client, method):
        log = models.DuplicateRecordLog.objects.create(symbol="A", timeframe="1h", candle_time=utc(2024, 1, 1),
                                                       duplicate_count=2, duplicate_ids=[1, 2], kept_id=3)
        path = "/api/v1/duplicates/" if method == "post" else f"/api/v1/duplicates/{log.pk}/"
        assert getattr(editor_client, method)(path, {"symbol": "B"}, format="json").status_code == 405
        assert models.DuplicateRecordLog.objects.get().symbol == "A"

    def test_duplicates_list_shows_deleted_and_kept_ids_and_filters_by_symbol(self, editor_client):
        for symbol in ("A", "B"):
            models.DuplicateRecordLog.objects.create(symbol=symbol, timeframe="1h", candle_time=utc(2024, 1, 1),
                                                     duplicate_count=2, duplicate_ids=[7, 8], kept_id=9)
        rows = editor_client.get("/api/v1/duplicates/?symbol=B").json()["results"]
        assert [(r["symbol"], r["duplicate_ids"], r["kept_id"]) for r in rows] == [("B", [7, 8], 9)]


class TestSymbolFailures:
    def test_reset_zeroes_the_count_and_rearms_the_alert(self):
        models.SymbolFailureTracking.objects.create(symbol="BTC-USD", consecutive_failures=5, alert_sent=True)
        client = client_for(user_with("view_symbolfailuretracking", "change_symbolfailuretracking"))
        body = client.post("/api/v1/symbol-failures/BTC-USD/reset/").json()
        assert (body["consecutive_failures"], body["alert_sent"]) == (0, False)

    def test_resetting_an_unknown_symbol_is_404(self):
        client = client_for(user_with("view_symbolfailuretracking", "change_symbolfailuretracking"))
        assert client.post("/api/v1/symbol-failures/NOPE/reset/").status_code == 404

    def test_the_list_filters_by_minimum_failures(self):
        models.SymbolFailureTracking.objects.create(symbol="A", consecutive_failures=1)
        models.SymbolFailureTracking.objects.create(symbol="B", consecutive_failures=4)
        rows = client_for(user_with("view_symbolfailuretracking")).get(
            "/api/v1/symbol-failures/?min_failures=3").json()["results"]
        assert [r["symbol"] for r in rows] == ["B"]


class TestInstrumentEndpoints:
    @pytest.fixture
    def client(self):
        return client_for(user_with("view_instrument", "add_instrument", "change_instrument", "delete_instrument"))

    BODY = {"symbol": "AAPL", "asset_class": "equity", "calendar": "XNYS", "timeframes": ["1d"]}

    def test_create_read_update_delete(self, client, settings):
        settings.CSV_DATA_DIRS = ["/data"]
        created = client.post("/api/v1/instruments/", {**self.BODY, "provider": "csv",
                                                       "provider_options": {"directory": "/data"},
                                                       "quality_thresholds": {"outlier_move": 0.3}}, format="json")
        assert created.status_code == 201, created.content
        assert client.get("/api/v1/instruments/AAPL/").json()["provider_options"] == {"directory": "/data"}
        replaced = client.put("/api/v1/instruments/AAPL/", {**self.BODY, "timeframes": ["1d", "1h"]}, format="json")
        assert replaced.status_code == 200 and models.Instrument.objects.get().timeframes == ["1d", "1h"]
        assert client.patch("/api/v1/instruments/AAPL/", {"active": False}, format="json").status_code == 200
        assert not models.Instrument.objects.get().active
        assert client.delete("/api/v1/instruments/AAPL/").status_code == 204
        assert not models.Instrument.objects.exists()

    @pytest.mark.parametrize("change,field,message", [
        ({"calendar": "MOON"}, "calendar", "unknown calendar"),
        ({"timeframes": ["7m"]}, "timeframes", "not a valid choice"),
        ({"timeframes": ["1d", "1d"]}, "timeframes", "each timeframe once"),
        ({"timeframes": "1d"}, "timeframes", "list"),
        ({"provider": "nasdaq-ftp"}, "provider", "not a valid choice"),
        ({"asset_class": "bonds"}, "asset_class", "not a valid choice"),
        ({"quality_thresholds": {"outlier_mvoe": 0.3}}, "quality_thresholds", "unknown threshold"),
        ({"quality_thresholds": {"outlier_move": "big"}}, "quality_thresholds", "must be a number"),
        ({"provider_options": ["x"]}, "provider_options", "dictionary"),
        ({"provider": "binance", "provider_options": {"limt": 500}}, "provider_options", "unknown option(s) limt"),
        ({"symbol": "EUR/USD"}, "symbol", "no '/'"),
        ({"symbol": "X" * 51}, "symbol", "50 characters"),
    ])
    def test_invalid_values_are_400_with_field_messages(self, client, change, field, message):
        response = client.post("/api/v1/instruments/", {**self.BODY, **change}, format="json")
        assert response.status_code == 400, response.content
        assert message in str(response.json()[field])  # a list's item errors are keyed by index
        assert not models.Instrument.objects.exists()

    def test_a_duplicate_symbol_is_400(self, client):
        add_instrument("AAPL")
        response = client.post("/api/v1/instruments/", self.BODY, format="json")
        assert response.status_code == 400 and "symbol" in response.json()

    def test_the_symbol_cannot_be_renamed(self, client):
        add_instrument("AAPL")
        response = client.patch("/api/v1/instruments/AAPL/", {"symbol": "AAPL2"}, format="json")
        assert response.status_code == 400 and "cannot be changed" in response.json()["symbol"][0]
        assert models.Instrument.objects.get().symbol == "AAPL"

    def test_an_invalid_update_changes_nothing(self, client):
        add_instrument("AAPL", calendar="24/7")
        response = client.patch("/api/v1/instruments/AAPL/", {"calendar": "MOON", "active": False}, format="json")
        assert response.status_code == 400
        instrument = models.Instrument.objects.get()
        assert (instrument.calendar, instrument.active) == ("24/7", True)


class TestSeriesEndpoint:
    def test_it_lists_coverage_and_statistics_filtered(self):
        models.SeriesStats.objects.create(symbol="A", timeframe="1h", bar_count=90, expected_bars=100,
                                          coverage_pct=90.0, robust_volatility=0.01)
        models.SeriesStats.objects.create(symbol="B", timeframe="1h", bar_count=100, expected_bars=100,
                                          coverage_pct=100.0)
        client = client_for(user_with("view_seriesstats"))
        rows = client.get("/api/v1/series/?max_coverage=95").json()["results"]
        assert [(r["symbol"], r["bar_count"], r["expected_bars"], r["coverage_pct"], r["robust_volatility"])
                for r in rows] == [("A", 90, 100, 90.0, 0.01)]
        assert client.get("/api/v1/series/?max_coverage=lots").status_code == 400


class TestHealthEndpoint:
    def test_it_returns_the_latest_run_and_a_live_summary(self):
        models.HealthCheckRun.objects.create(status="healthy", started_at=timezone.now() - timedelta(hours=6))
        models.HealthCheckRun.objects.create(status="warning")
        make_anomaly(severity="critical")
        make_anomaly(severity="low", resolution_status="acknowledged")
        create_backfill_state("A", "1h", "crypto")
        models.SymbolFailureTracking.objects.create(symbol="B", consecutive_failures=2)
        body = client_for(user_with("view_healthcheckrun")).get("/api/v1/health/").json()
        assert body["latest_run"]["status"] == "warning"
        live = body["live"]
        assert live["open_anomalies"] == 1 and live["acknowledged_anomalies"] == 1
        assert live["open_anomalies_by_severity"] == {"low": 0, "medium": 0, "high": 0, "critical": 1}
        assert live["open_anomalies_by_type"] == {"gap": 1}
        assert (live["active_backfills"], live["failing_symbols"]) == (1, 1)

    def test_the_live_summary_says_no_worker_is_running_while_a_backfill_waits(self, no_cluster_heartbeats):
        create_backfill_state("A", "1h", "crypto")
        workers = client_for(user_with("view_healthcheckrun")).get("/api/v1/health/").json()["live"]["workers"]
        assert workers["alive"] is False and workers["pending_backfills"] == 1
        assert "no worker is running" in workers["problem"]

    def test_before_any_run_the_latest_run_is_null(self):
        body = client_for(user_with("view_healthcheckrun")).get("/api/v1/health/").json()
        assert body["latest_run"] is None and body["live"]["open_anomalies"] == 0


# A new row for each list endpoint's table (the health view also counts open anomalies).
ROW_FACTORIES = {endpoint: FACTORIES[model] for endpoint, (model, *_) in ENDPOINTS.items()}
ROW_FACTORIES["health"] = lambda: (FACTORIES["healthcheckrun"](), make_anomaly(), make_anomaly(severity="low"))


class TestQueryCounts:
    @pytest.mark.parametrize("endpoint", list(ROW_FACTORIES))
    def test_the_list_query_count_does_not_grow_with_rows(self, endpoint):
        client = client_for(user_with(f"view_{ENDPOINTS[endpoint][0]}"), token=True)
        ROW_FACTORIES[endpoint]()
        client.get(f"/api/v1/{endpoint}/")  # warm the content-type cache
        with CaptureQueriesContext(connection) as few:
            assert client.get(f"/api/v1/{endpoint}/").status_code == 200
        for _ in range(30):
            ROW_FACTORIES[endpoint]()
        with CaptureQueriesContext(connection) as many:
            response = client.get(f"/api/v1/{endpoint}/")
        if endpoint != "health":
            assert len(response.json()["results"]) == 31
        assert len(many) == len(few), [q["sql"] for q in many.captured_queries]


class TestSchema:
    def test_the_openapi_schema_is_served_and_valid(self, client):
        from drf_spectacular.generators import SchemaGenerator
        from drf_spectacular.validation import validate_schema

        response = client.get("/api/schema/?format=json")
        assert response.status_code == 200
        schema = response.json()
        assert schema["openapi"].startswith("3.")
        assert {"/api/v1/backfills/", "/api/v1/anomalies/{id}/acknowledge/", "/api/v1/health/",
                "/api/v1/instruments/{symbol}/", "/api/v1/symbol-failures/{symbol}/reset/"} <= set(schema["paths"])
        assert set(schema["paths"]["/api/v1/backfills/"]["post"]["responses"]) >= {"202", "400", "409"}
        validate_schema(SchemaGenerator().get_schema(request=None, public=True))

    def test_the_interactive_docs_use_local_assets(self, client):
        import re

        html = client.get("/api/docs/").content.decode()
        assert "swagger-ui" in html
        assets = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert assets and all(a.startswith("/static/") for a in assets), assets


class TestStrictFilters:
    """A filter value the filter cannot use is a 400 naming the parameter, never the unfiltered list."""

    @pytest.fixture
    def viewer(self):
        return client_for(user_with(*(f"view_{m}" for m in ("instrument", "symbolfailuretracking", "backfillstate",
                                                            "dataanomaly", "duplicaterecordlog", "seriesstats"))))

    # endpoint: queries whose (first) parameter holds a value its filter cannot use
    UNUSABLE = {
        "instruments": ["active=maybe", "active=", "asset_class=bonds", "asset_class="],
        "symbol-failures": ["alert_sent=banana", "alert_sent=", "min_failures=many"],
        "backfills": ["created_after=", "created_before=last-week", "status=", "status=failed&status=",
                      "status=exploded"],
        "anomalies": ["detected_after=", "detected_before=", "severity=", "symbol="],
        "duplicates": ["cleaned_after=", "cleaned_before=soon", "timeframe="],
        "series": ["timeframe=7m", "max_coverage=", "max_coverage=lots"],
    }

    @pytest.mark.parametrize("endpoint,query", [(e, q) for e, queries in UNUSABLE.items() for q in queries])
    def test_an_unusable_filter_value_is_400_naming_the_parameter(self, viewer, endpoint, query):
        param = query.partition("=")[0]
        add_instrument()
        response = viewer.get(f"/api/v1/{endpoint}/?{query}")
        assert response.status_code == 400, response.content
        assert list(response.json()) == [param]

    def test_an_empty_value_says_to_give_one_or_leave_the_parameter_out(self, viewer):
        response = viewer.get("/api/v1/anomalies/?detected_after=")
        assert response.json() == {"detected_after": ["empty value: give a value or leave the parameter out"]}

    def test_a_value_that_is_not_a_boolean_says_what_a_boolean_is(self, viewer):
        response = viewer.get("/api/v1/instruments/?active=maybe")
        assert response.json() == {"active": ["'maybe' is not a boolean: use true or false"]}

    @pytest.mark.parametrize("value,expected", [("true", ["A"]), ("TRUE", ["A"]), ("1", ["A"]),
                                                ("false", ["B"]), ("False", ["B"]), ("0", ["B"])])
    def test_booleans_are_true_false_1_or_0_in_any_letter_case(self, viewer, value, expected):
        add_instrument("A")
        add_instrument("B")
        models.Instrument.objects.filter(symbol="B").update(active=False)
        rows = viewer.get(f"/api/v1/instruments/?active={value}").json()["results"]
        assert [r["symbol"] for r in rows] == expected

    def test_alert_sent_narrows_the_failures_list(self, viewer):
        models.SymbolFailureTracking.objects.create(symbol="A", consecutive_failures=3, alert_sent=True)
        models.SymbolFailureTracking.objects.create(symbol="B", consecutive_failures=1)
        rows = viewer.get("/api/v1/symbol-failures/?alert_sent=true").json()["results"]
        assert [r["symbol"] for r in rows] == ["A"]
