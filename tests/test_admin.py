"""Admin screens: lists, read-only audit tables, actions, dashboard and anomaly chart."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django_q.models import OrmQ

from integrity.backfill import create_backfill_state, run_backfill
from integrity.models import (
    BackfillState,
    DataAnomaly,
    DuplicateRecordLog,
    HealthCheckRun,
    SeriesStats,
    SymbolFailureTracking,
)
from integrity.quality.anomalies import detect_data_anomalies
from tests.helpers import add_instrument, utc

pytestmark = pytest.mark.django_db

MODELS = ["instrument", "candle", "backfillstate", "dataanomaly", "duplicaterecordlog", "symbolfailuretracking",
          "healthcheckrun", "seriesstats"]


@pytest.fixture
def admin_client(client):
    user = User.objects.create_superuser("root", "root@example.com", None)
    client.force_login(user)
    return client


def make_anomaly(**kwargs):
    values = {"symbol": "BTC-USD", "timeframe": "1h", "anomaly_type": "gap", "severity": "high",
              "description": "gap", "affected_rows": 3, "fingerprint": f"fp{DataAnomaly.objects.count()}"}
    values.update(kwargs)
    return DataAnomaly.objects.create(**values)


def changelist(model: str) -> str:
    return reverse(f"admin:integrity_{model}_changelist")


class TestLists:
    @pytest.mark.parametrize("model", MODELS)
    def test_every_list_renders(self, admin_client, model):
        assert admin_client.get(changelist(model)).status_code == 200

    @pytest.mark.parametrize("model,factory", [
        ("dataanomaly", lambda: make_anomaly()),
        ("backfillstate", lambda: create_backfill_state(f"S{BackfillState.objects.count()}", "1h", "crypto")),
        ("symbolfailuretracking", lambda: SymbolFailureTracking.objects.create(
            symbol=f"S{SymbolFailureTracking.objects.count()}", consecutive_failures=1)),
    ])
    def test_list_query_count_does_not_grow_with_rows(self, admin_client, model, factory):
        factory()
        admin_client.get(changelist(model))
        with CaptureQueriesContext(connection) as few:
            admin_client.get(changelist(model))
        for _ in range(20):
            factory()
        with CaptureQueriesContext(connection) as many:
            admin_client.get(changelist(model))
        assert len(many) == len(few)

    @pytest.mark.parametrize("model", ["duplicaterecordlog", "healthcheckrun", "seriesstats"])
    def test_audit_tables_cannot_be_added_to(self, admin_client, model):
        assert admin_client.get(reverse(f"admin:integrity_{model}_add")).status_code == 403

    def test_a_duplicate_log_entry_is_read_only(self, admin_client):
        log = DuplicateRecordLog.objects.create(symbol="A", timeframe="1h", candle_time=utc(2024, 1, 1),
                                                duplicate_count=2, duplicate_ids=[1])
        url = reverse("admin:integrity_duplicaterecordlog_change", args=[log.pk])
        admin_client.post(url, {"symbol": "B"})
        assert DuplicateRecordLog.objects.get(pk=log.pk).symbol == "A"


def act(admin_client, model, action, ids):
    return admin_client.post(changelist(model), {"action": action, "_selected_action": [str(i) for i in ids]},
                             follow=True)


class TestActions:
    def test_acknowledge_records_who_and_reports_it(self, admin_client):
        anomaly = make_anomaly()
        response = act(admin_client, "dataanomaly", "acknowledge", [anomaly.pk])
        anomaly.refresh_from_db()
        assert (anomaly.resolution_status, anomaly.acknowledged_by) == ("acknowledged", "root")
        assert "Acknowledged: 1" in response.content.decode()

    def test_resolving_an_already_resolved_anomaly_is_refused_clearly(self, admin_client):
        anomaly = make_anomaly(resolution_status="resolved")
        response = act(admin_client, "dataanomaly", "resolve", [anomaly.pk])
        assert "cannot move it to resolved" in response.content.decode()

    def test_retry_failed_queues_a_new_execution_for_the_series(self, admin_client):
        add_instrument()
        failed = create_backfill_state("BTC-USD", "1h", "crypto")
        failed.mark_failed("boom")
        act(admin_client, "backfillstate", "retry_failed", [failed.pk])
        retry = BackfillState.objects.exclude(pk=failed.pk).get()
        assert (retry.status, retry.retry_count) == ("pending", 1)
        assert OrmQ.objects.count() == 1

    def test_retry_refuses_a_series_that_is_busy(self, admin_client):
        add_instrument()
        failed = create_backfill_state("BTC-USD", "1h", "crypto")
        failed.mark_failed("boom")
        create_backfill_state("BTC-USD", "1h", "crypto")
        response = act(admin_client, "backfillstate", "retry_failed", [failed.pk])
        assert "refused" in response.content.decode()

    def test_backfill_now_queues_every_timeframe_of_the_instrument(self, admin_client):
        instrument = add_instrument(timeframes=("1h", "1d"))
        act(admin_client, "instrument", "backfill_now", [instrument.pk])
        assert sorted(BackfillState.objects.values_list("timeframe", flat=True)) == ["1d", "1h"]

    def test_reset_zeroes_failures_and_rearms_the_alert(self, admin_client):
        row = SymbolFailureTracking.objects.create(symbol="A", consecutive_failures=4, alert_sent=True)
        act(admin_client, "symbolfailuretracking", "reset", [row.pk])
        row.refresh_from_db()
        assert (row.consecutive_failures, row.alert_sent) == (0, False)


class TestDashboardAndChart:
    def test_the_dashboard_is_linked_from_the_index(self, admin_client):
        assert reverse("admin:integrity-dashboard") in admin_client.get(reverse("admin:index")).content.decode()

    def test_the_dashboard_shows_open_anomalies_failures_and_coverage(self, admin_client):
        make_anomaly(severity="critical")
        SymbolFailureTracking.objects.create(symbol="XYZ", consecutive_failures=3)
        SeriesStats.objects.create(symbol="BTC-USD", timeframe="1h", bar_count=10, coverage_pct=87.5)
        HealthCheckRun.objects.create(status="warning")
        html = admin_client.get(reverse("admin:integrity-dashboard")).content.decode()
        assert "critical" in html and "XYZ" in html and "87.5" in html and "warning" in html

    def test_an_anomaly_page_charts_the_candles_with_the_gap_shaded(self, admin_client):
        add_instrument(gaps=[["2024-01-03T10:00:00Z", "2024-01-03T15:00:00Z"]])
        run_backfill("BTC-USD", "1h", start=utc(2024, 1, 1), end=utc(2024, 1, 6), now=utc(2024, 1, 6, 1))
        detect_data_anomalies(now=utc(2024, 1, 6, 1), types=["gap"])
        gap = DataAnomaly.objects.get(anomaly_type="gap")
        html = admin_client.get(reverse("admin:integrity_dataanomaly_change", args=[gap.pk])).content.decode()
        assert "<svg" in html and 'class="anomaly-period"' in html and "<polyline" in html
