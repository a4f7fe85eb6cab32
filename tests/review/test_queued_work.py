"""Queued work no one runs: the API and the admin say when no worker is running, a pending execution
can be cancelled (API, admin action, ``reap_backfills --pending``), and neither a cancelled run nor a
pending one no worker picked up counts toward the failing-symbol alert."""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone
from django_q.models import OrmQ

from integrity.backfill import (
    create_backfill_state,
    reap_dead_backfills,
    run_backfill,
    run_backfill_execution,
)
from integrity.health.workers import NO_WORKER
from integrity.models import BackfillState, Candle, SymbolFailureTracking
from tests.helpers import act, add_instrument, client_for, cluster_heartbeat, messages_of, user_with, utc

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("no_cluster_heartbeats")]

BODY = {"symbol": "BTC-USD", "timeframe": "1h", "start": "2024-01-01T00:00:00Z", "end": "2024-01-02T00:00:00Z"}


@pytest.fixture
def editor():
    return client_for(user_with("view_backfillstate", "change_backfillstate", name="editor"))


def request_via_api(client) -> BackfillState:
    response = client.post("/api/v1/backfills/", BODY, format="json")
    assert response.status_code == 202, response.content
    return BackfillState.objects.get(execution_id=response.json()["execution_id"])


def alerts_in(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "integrity.alerts"]


class TestNoWorkerReplies:
    def test_a_backfill_queued_through_the_api_says_no_worker_is_running(self, editor):
        add_instrument()
        response = editor.post("/api/v1/backfills/", BODY, format="json")
        assert response.status_code == 202
        assert response.json()["warning"].startswith(NO_WORKER)

    def test_with_a_worker_alive_the_api_reply_has_no_warning(self, editor):
        add_instrument()
        cluster_heartbeat()
        response = editor.post("/api/v1/backfills/", BODY, format="json")
        assert response.status_code == 202 and "warning" not in response.json()

    def test_backfill_now_in_the_admin_says_no_worker_is_running(self, admin_client):
        instrument = add_instrument()
        response = act(admin_client, "instrument", "backfill_now", [instrument.pk])
        [message] = messages_of(response)
        assert message.startswith("Backfills queued: 1 — BTC-USD 1h (")
        assert message.endswith(f". {NO_WORKER[0].upper()}{NO_WORKER[1:]}: the queued backfills wait until a worker "
                                "runs them (or cancel them: Backfill executions → “Cancel selected pending backfills”).")

    def test_retry_in_the_admin_with_a_worker_alive_does_not_warn(self, admin_client):
        add_instrument()
        cluster_heartbeat()
        failed = create_backfill_state("BTC-USD", "1h", "crypto")
        failed.mark_failed("boom")
        response = act(admin_client, "backfillstate", "retry_failed", [failed.pk])
        assert not any(NO_WORKER in m for m in messages_of(response))

    def test_the_dashboard_says_no_worker_is_running_while_a_backfill_waits(self, admin_client):
        add_instrument()
        request_via_api(client_for(user_with("change_backfillstate", name="e")))
        page = admin_client.get(reverse("admin:integrity-dashboard")).content.decode()
        assert 'id="worker-problem"' in page
        assert "no worker is running: start `manage.py qcluster` (1 task(s) queued" in page


class TestCancel:
    def test_the_api_cancels_a_pending_execution_and_frees_the_series(self, editor):
        add_instrument()
        state = request_via_api(editor)
        response = editor.post(f"/api/v1/backfills/{state.execution_id}/cancel/", {"reason": "wrong range"},
                               format="json")
        assert response.status_code == 200
        body = response.json()
        assert body["status"] == "failed"
        assert body["error_message"] == "cancelled: wrong range (by api:editor)"
        assert body["details"]["cancelled"]["by"] == "api:editor"
        assert not OrmQ.objects.exists()  # its queued task is gone too
        request_via_api(editor)  # the series is free again

    def test_the_api_refuses_to_cancel_an_execution_a_worker_has_started(self, editor):
        add_instrument()
        state = request_via_api(editor)
        state.mark_started(worker="host:1")
        response = editor.post(f"/api/v1/backfills/{state.execution_id}/cancel/", {}, format="json")
        assert response.status_code == 409
        assert "is not pending: it is in_progress by its worker host:1" in response.json()["detail"]
        assert BackfillState.objects.get(pk=state.pk).status == "in_progress"

    def test_the_admin_action_cancels_the_selected_pending_executions(self, admin_client):
        add_instrument("BTC-USD")
        add_instrument("ETH-USD")
        pending = create_backfill_state("BTC-USD", "1h", "crypto")
        finished = create_backfill_state("ETH-USD", "1h", "crypto")
        finished.mark_failed("boom")
        response = act(admin_client, "backfillstate", "cancel_pending", [pending.pk, finished.pk])
        pending.refresh_from_db()
        assert (pending.status, pending.error_message) == ("failed", "cancelled: cancelled in the admin (by admin:root)")
        assert messages_of(response) == [f"Cancelled: 1 — BTC-USD 1h ({pending.execution_id}). Not done: 1 — ETH-USD 1h "
                                         f"({finished.execution_id}) not cancelled: it is failed."]

    def test_reap_backfills_pending_cancels_every_pending_execution(self):
        add_instrument()
        state = create_backfill_state("BTC-USD", "1h", "crypto")
        out = StringIO()
        call_command("reap_backfills", "--pending", "--format", "json", stdout=out)
        rows = json.loads(out.getvalue())
        assert [r["execution_id"] for r in rows] == [str(state.execution_id)]
        assert rows[0]["error_message"].startswith("cancelled: no worker picked it up (reap_backfills --pending)")
        assert BackfillState.objects.get(pk=state.pk).status == "failed"

    def test_reap_backfills_without_pending_leaves_a_fresh_pending_execution(self):
        add_instrument()
        state = create_backfill_state("BTC-USD", "1h", "crypto")
        call_command("reap_backfills", stdout=StringIO())
        assert BackfillState.objects.get(pk=state.pk).status == "pending"

    def test_a_worker_that_picks_up_a_cancelled_execution_does_nothing(self, editor):
        add_instrument()
        state = request_via_api(editor)
        editor.post(f"/api/v1/backfills/{state.execution_id}/cancel/", {}, format="json")
        before = BackfillState.objects.get(pk=state.pk)
        result = run_backfill_execution(str(state.execution_id))
        assert result["status"] == "skipped"
        assert result["error"].startswith("not run: the execution is failed (cancelled: ")
        after = BackfillState.objects.get(pk=state.pk)
        assert (after.status, after.started_at, after.updated_at) == ("failed", None, before.updated_at)
        assert not Candle.objects.exists()


class TestAfterACancel:
    def test_the_next_run_resumes_the_failed_run_before_the_cancelled_one(self, editor):
        instrument = add_instrument(page_size=6, fail_after_pages=2)
        failed = run_backfill("BTC-USD", "1h", start=utc(2024, 1, 1), end=utc(2024, 1, 2), batch_size=6)
        assert failed.status == "failed"
        queued = request_via_api(editor)  # a retry no worker ran, then cancelled
        editor.post(f"/api/v1/backfills/{queued.execution_id}/cancel/", {}, format="json")
        instrument.provider_options = {"page_size": 6}
        instrument.save()
        rerun = run_backfill("BTC-USD", "1h", start=utc(2024, 1, 1), end=utc(2024, 1, 2), batch_size=6)
        assert (rerun.status, rerun.retry_count, rerun.inserted) == ("completed", 1, 12)
        assert rerun.resumed_from == BackfillState.objects.get(execution_id=failed.execution_id).checkpoint_ts.isoformat()


class TestNotASymbolFailure:
    def test_three_cancelled_runs_raise_no_failing_symbol_alert(self, editor, caplog):
        add_instrument()
        with caplog.at_level(logging.WARNING, logger="integrity.alerts"):
            for _ in range(3):
                state = request_via_api(editor)
                assert editor.post(f"/api/v1/backfills/{state.execution_id}/cancel/", {},
                                   format="json").status_code == 200
        assert not SymbolFailureTracking.objects.filter(consecutive_failures__gt=0).exists()
        assert alerts_in(caplog) == []

    def test_three_pending_runs_no_worker_picked_up_raise_no_failing_symbol_alert(self, caplog, settings):
        add_instrument()
        with caplog.at_level(logging.WARNING, logger="integrity.alerts"):
            for _ in range(3):
                state = create_backfill_state("BTC-USD", "1h", "crypto")
                BackfillState.objects.filter(pk=state.pk).update(
                    created_at=timezone.now() - timedelta(seconds=settings.BACKFILL_PENDING_TIMEOUT_SECONDS + 1))
                [reaped] = reap_dead_backfills()
                assert reaped.error_message.startswith("never started: ")
        assert not SymbolFailureTracking.objects.filter(consecutive_failures__gt=0).exists()
        assert alerts_in(caplog) == []

    def test_a_dead_in_progress_run_still_counts_as_a_failure(self):
        add_instrument()
        state = create_backfill_state("BTC-USD", "1h", "crypto")
        state.mark_started(worker="host:1")
        BackfillState.objects.filter(pk=state.pk).update(heartbeat_at=timezone.now() - timedelta(hours=1))
        reap_dead_backfills()
        assert SymbolFailureTracking.objects.get(symbol="BTC-USD").consecutive_failures == 1
