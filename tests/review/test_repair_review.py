"""The review surfaces of issue 12 §2–3: resolve with a reason (API and admin), and "Re-fetch this range"
(``POST /api/v1/anomalies/{id}/repair/``, the admin action and the anomaly page's button). One behaviour
per test."""

from __future__ import annotations

import re

import pytest
from django.urls import reverse
from django_q.models import OrmQ

from integrity.backfill import cancel_backfill, create_backfill_state, run_backfill
from integrity.models import BackfillState, Candle, DataAnomaly
from integrity.quality.anomalies import detect_data_anomalies
from integrity.repair import run_repair_execution
from tests.helpers import act, add_instrument, client_for, make_anomaly, messages_of, user_with, utc

pytestmark = pytest.mark.django_db

START, END = utc(2024, 1, 1), utc(2024, 1, 5)


@pytest.fixture
def editor_client():
    return client_for(user_with("view_dataanomaly", "change_dataanomaly", name="editor"))


def a_gap() -> DataAnomaly:
    """A real gap: a synthetic BTC-USD 1h series with 5 bars deleted by another writer, then detected."""
    add_instrument()
    assert run_backfill("BTC-USD", "1h", start=START, end=END).ok
    rows = Candle.objects.filter(ts__gte=utc(2024, 1, 2), ts__lt=utc(2024, 1, 2, 5))
    rows._raw_delete(rows.db)
    detect_data_anomalies(full=True, types=["gap"])
    return DataAnomaly.objects.get(anomaly_type="gap")


class TestResolveApi:
    def test_resolve_takes_a_reason_and_a_note(self, editor_client):
        pk = make_anomaly(anomaly_type="outlier").pk
        body = editor_client.post(f"/api/v1/anomalies/{pk}/resolve/", {"reason": "expected", "note": "split day"},
                                  format="json").json()
        assert (body["resolution_status"], body["resolution_reason"], body["resolution_note"]) == (
            "resolved", "expected", "split day")

    def test_resolve_without_a_reason_is_fixed(self, editor_client):
        pk = make_anomaly().pk
        body = editor_client.post(f"/api/v1/anomalies/{pk}/resolve/", {}, format="json").json()
        assert body["resolution_reason"] == "fixed"

    def test_an_unknown_reason_is_400_naming_the_reasons(self, editor_client):
        pk = make_anomaly().pk
        response = editor_client.post(f"/api/v1/anomalies/{pk}/resolve/", {"reason": "meh"}, format="json")
        assert response.status_code == 400
        assert "fixed, false_positive, expected, missing_at_source" in str(response.json()["reason"])
        assert DataAnomaly.objects.get(pk=pk).resolution_status == "open"

    def test_the_list_shows_the_reason_and_the_regressions(self, editor_client):
        make_anomaly(resolution_status="resolved", resolution_reason="false_positive", regressions=2)
        [row] = editor_client.get("/api/v1/anomalies/").json()["results"]
        assert (row["resolution_reason"], row["regressions"]) == ("false_positive", 2)


class TestRepairApi:
    def test_repair_answers_202_with_a_pending_execution_naming_the_anomaly_and_queues_it(self, editor_client):
        anomaly = a_gap()
        response = editor_client.post(f"/api/v1/anomalies/{anomaly.pk}/repair/", {}, format="json")
        assert response.status_code == 202
        state = BackfillState.objects.get(execution_id=response.json()["execution_id"])
        assert state.status == "pending" and f"anomaly #{anomaly.pk}" in state.requested_by
        assert OrmQ.objects.count() == 1

    def test_the_queued_repair_fixes_the_gap_and_links_the_execution(self, editor_client):
        anomaly = a_gap()
        execution_id = editor_client.post(f"/api/v1/anomalies/{anomaly.pk}/repair/", {},
                                          format="json").json()["execution_id"]

        outcome = run_repair_execution(anomaly.pk, execution_id)

        anomaly.refresh_from_db()
        assert (outcome["outcome"], anomaly.resolution_reason) == ("fixed", "fixed")
        assert anomaly.details["repairs"][-1]["execution_id"] == execution_id
        assert Candle.objects.count() == 96

    def test_repair_says_when_no_worker_is_running(self, editor_client, no_cluster_heartbeats):
        anomaly = a_gap()
        body = editor_client.post(f"/api/v1/anomalies/{anomaly.pk}/repair/", {}, format="json").json()
        assert body["warning"].startswith("no worker is running: start `manage.py qcluster`")

    def test_a_repair_cancelled_while_queued_does_not_run(self, editor_client):
        anomaly = a_gap()
        execution_id = editor_client.post(f"/api/v1/anomalies/{anomaly.pk}/repair/", {},
                                          format="json").json()["execution_id"]
        cancel_backfill(execution_id, by="test")
        assert OrmQ.objects.count() == 0  # taken off the queue

        outcome = run_repair_execution(anomaly.pk, execution_id)  # a worker that picked it up anyway

        anomaly.refresh_from_db()
        assert outcome["outcome"] == "skipped" and "repairs" not in anomaly.details
        assert anomaly.resolution_status == "open"

    def test_repair_of_a_busy_series_is_409_naming_the_holder(self, editor_client):
        anomaly = a_gap()
        holder = create_backfill_state("BTC-USD", "1h", "crypto")
        response = editor_client.post(f"/api/v1/anomalies/{anomaly.pk}/repair/", {}, format="json")
        assert response.status_code == 409 and response.json()["active_execution_id"] == str(holder.execution_id)

    def test_repair_of_a_resolved_anomaly_is_409(self, editor_client):
        pk = make_anomaly(resolution_status="resolved", period_start=START, period_end=START).pk
        response = editor_client.post(f"/api/v1/anomalies/{pk}/repair/", {}, format="json")
        assert response.status_code == 409 and "is resolved" in response.json()["detail"]

    def test_repair_of_a_type_no_refetch_can_fix_is_400(self, editor_client):
        pk = make_anomaly(anomaly_type="stale", period_start=START, period_end=START).pk
        response = editor_client.post(f"/api/v1/anomalies/{pk}/repair/", {}, format="json")
        assert response.status_code == 400 and "cannot be repaired" in response.json()["detail"]

    def test_a_viewer_may_not_repair(self):
        pk = make_anomaly(period_start=START, period_end=START).pk
        viewer = client_for(user_with("view_dataanomaly", name="viewer"))
        assert viewer.post(f"/api/v1/anomalies/{pk}/repair/", {}, format="json").status_code == 403


class TestAdmin:
    STAMP = r"by root at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC"

    def test_the_false_positive_action_resolves_with_that_reason_and_says_so(self, admin_client):
        anomaly = make_anomaly()
        response = act(admin_client, "dataanomaly", "resolve_false_positive", [anomaly.pk])
        anomaly.refresh_from_db()
        assert (anomaly.resolution_status, anomaly.resolution_reason) == ("resolved", "false_positive")
        [message] = messages_of(response)
        assert re.fullmatch(rf"Resolved 1 \(#{anomaly.pk}, {self.STAMP}, as false_positive\)\.", message)

    def test_the_resolve_button_resolves_with_the_chosen_reason_and_note(self, admin_client):
        anomaly = make_anomaly()
        admin_client.post(reverse("admin:integrity_dataanomaly_resolve", args=[anomaly.pk]),
                          {"note": "vendor outage", "reason": "missing_at_source"})
        anomaly.refresh_from_db()
        assert (anomaly.resolution_status, anomaly.resolution_reason, anomaly.resolution_note, anomaly.resolved_by) \
            == ("resolved", "missing_at_source", "vendor outage", "root")

    def test_the_refetch_action_queues_a_repair_per_anomaly(self, admin_client):
        anomaly = a_gap()
        response = act(admin_client, "dataanomaly", "refetch", [anomaly.pk])
        state = BackfillState.objects.get(status="pending")
        assert f"anomaly #{anomaly.pk}" in state.requested_by and OrmQ.objects.count() == 1
        [message] = messages_of(response)
        assert message.startswith(f"Repairs queued: 1 — #{anomaly.pk} BTC-USD 1h ({state.execution_id}). No worker "
                                  "is running: start `manage.py qcluster`")

    def test_the_anomaly_page_has_the_button_and_its_post_queues_the_repair(self, admin_client):
        anomaly = a_gap()
        page = admin_client.get(reverse("admin:integrity_dataanomaly_change", args=[anomaly.pk])).content.decode()
        url = reverse("admin:integrity_dataanomaly_repair", args=[anomaly.pk])
        assert url in page and "Re-fetch this range" in page
        assert admin_client.get(url).status_code == 200

        response = admin_client.post(url, follow=True)

        state = BackfillState.objects.get(status="pending")
        assert response.redirect_chain[-1][0] == reverse("admin:integrity_backfillstate_change",
                                                         args=[str(state.execution_id)])
        [message] = messages_of(response)
        assert message.startswith(f"Repair of anomaly #{anomaly.pk} queued as execution {state.execution_id}. No "
                                  "worker is running")

    def test_the_button_is_refused_with_a_message_when_the_series_is_busy(self, admin_client):
        anomaly = a_gap()
        create_backfill_state("BTC-USD", "1h", "crypto")
        response = admin_client.post(reverse("admin:integrity_dataanomaly_repair", args=[anomaly.pk]), follow=True)
        [message] = messages_of(response)
        assert "not re-fetched" in message and "already pending" in message
