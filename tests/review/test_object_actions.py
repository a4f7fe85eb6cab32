"""Actions where the object is (issue 13): the buttons of an anomaly's page (Acknowledge, Resolve, Re-fetch
this range), of an execution's (Retry, Cancel) and of a symbol's failure tracking (Reset); pages whose
rows the services own (no Save, no Delete); "Delete selected" never first; bulk reports that add up."""

from __future__ import annotations

import re

import pytest
from django.contrib import admin
from django.test import Client
from django.urls import reverse
from django_q.models import OrmQ

from integrity.backfill import create_backfill_state
from integrity.models import BackfillState, DataAnomaly, SymbolFailureTracking
from tests.helpers import (
    FACTORIES,
    act,
    add_instrument,
    changelist,
    make_anomaly,
    messages_of,
    staff_client,
    utc,
)

pytestmark = pytest.mark.django_db

STAMP = r"by root at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC"
REVIEW_BUTTONS = ("Acknowledge", "Resolve", "Re-fetch this range")


def page_of(client, obj, model="dataanomaly") -> str:
    return client.get(reverse(f"admin:integrity_{model}_change", args=[obj.pk])).content.decode()


def buttons(html: str) -> list[str]:
    """The labels of the object-action buttons of a page, in order."""
    return re.findall(r'<a href="[^"]*" class="object-action [^"]*">([^<]*)</a>', html)


def action_url(obj, action: str, model="dataanomaly") -> str:
    return reverse(f"admin:integrity_{model}_{action}", args=[obj.pk])


def a_gap(**fields) -> DataAnomaly:
    return make_anomaly(period_start=utc(2024, 1, 2), period_end=utc(2024, 1, 2, 4), **fields)


class TestAnomalyButtons:
    def test_an_open_anomaly_offers_acknowledge_resolve_and_refetch(self, admin_client):
        assert buttons(page_of(admin_client, a_gap())) == list(REVIEW_BUTTONS)

    def test_an_acknowledged_anomaly_offers_resolve_and_refetch_but_not_acknowledge(self, admin_client):
        assert buttons(page_of(admin_client, a_gap(resolution_status="acknowledged"))) == [
            "Resolve", "Re-fetch this range"]

    def test_a_resolved_anomaly_offers_no_review_button(self, admin_client):
        assert buttons(page_of(admin_client, a_gap(resolution_status="resolved"))) == []

    def test_an_anomaly_no_refetch_can_repair_offers_no_refetch(self, admin_client):
        stale = make_anomaly(anomaly_type="stale", period_start=utc(2024, 1, 2))
        assert buttons(page_of(admin_client, stale)) == ["Acknowledge", "Resolve"]

    def test_acknowledge_confirms_first_then_records_the_note_and_says_so_once(self, admin_client):
        anomaly = a_gap()
        confirm = admin_client.get(action_url(anomaly, "acknowledge"))
        assert confirm.status_code == 200 and 'name="note"' in confirm.content.decode()
        assert DataAnomaly.objects.get(pk=anomaly.pk).resolution_status == "open"

        response = admin_client.post(action_url(anomaly, "acknowledge"), {"note": "on it"}, follow=True)

        anomaly.refresh_from_db()
        assert (anomaly.resolution_status, anomaly.acknowledged_by, anomaly.resolution_note) == (
            "acknowledged", "root", "on it")
        assert response.redirect_chain[-1][0] == reverse("admin:integrity_dataanomaly_change", args=[anomaly.pk])
        [message] = messages_of(response)
        assert re.fullmatch(rf"Acknowledged 1 \(#{anomaly.pk}, {STAMP}\)\.", message)

    def test_what_a_button_did_is_listed_in_the_anomalys_history(self, admin_client):
        anomaly = a_gap()
        admin_client.post(action_url(anomaly, "resolve"), {"reason": "false_positive", "note": "holiday"})
        history = admin_client.get(reverse("admin:integrity_dataanomaly_history", args=[anomaly.pk]))
        [entry] = history.context["action_list"]
        assert entry.user.username == "root"
        assert re.fullmatch(rf"Resolve: Resolved 1 \(#{anomaly.pk}, {STAMP}, as false_positive\)\.",
                            entry.get_change_message())

    def test_resolve_offers_the_reasons_and_records_the_chosen_one_with_the_note(self, admin_client):
        anomaly = a_gap(resolution_status="acknowledged")
        form = admin_client.get(action_url(anomaly, "resolve")).content.decode()
        assert all(f'value="{r}"' in form for r in ("fixed", "false_positive", "expected", "missing_at_source"))

        response = admin_client.post(action_url(anomaly, "resolve"), {"reason": "expected", "note": "halving"},
                                     follow=True)

        anomaly.refresh_from_db()
        assert (anomaly.resolution_status, anomaly.resolution_reason, anomaly.resolution_note, anomaly.resolved_by) \
            == ("resolved", "expected", "halving", "root")
        [message] = messages_of(response)
        assert re.fullmatch(rf"Resolved 1 \(#{anomaly.pk}, {STAMP}, as expected\)\.", message)

    def test_resolve_without_a_reason_is_a_form_error_and_resolves_nothing(self, admin_client):
        anomaly = a_gap()
        response = admin_client.post(action_url(anomaly, "resolve"), {"note": "looked at it"})
        assert response.status_code == 200
        assert "reason" in response.context["form"].errors
        assert DataAnomaly.objects.get(pk=anomaly.pk).resolution_status == "open"

    def test_a_button_pressed_on_a_page_that_went_stale_is_refused_with_the_reason(self, admin_client):
        anomaly = a_gap()
        DataAnomaly.objects.filter(pk=anomaly.pk).update(resolution_status="resolved", resolved_by="someone")
        response = admin_client.post(action_url(anomaly, "acknowledge"), {}, follow=True)
        assert messages_of(response) == [f"Acknowledged none; refused 1: #{anomaly.pk} is resolved, and only open "
                                         "anomalies can be acknowledged."]
        assert DataAnomaly.objects.get(pk=anomaly.pk).resolved_by == "someone"

    def test_opening_an_action_that_does_not_apply_goes_back_saying_why(self, admin_client):
        anomaly = a_gap(resolution_status="resolved", resolution_reason="fixed")
        response = admin_client.get(action_url(anomaly, "resolve"), follow=True)
        assert messages_of(response) == ["Resolve: not possible — it is already resolved (fixed)"]

    def test_an_action_on_an_anomaly_that_does_not_exist_goes_to_the_list(self, admin_client):
        response = admin_client.post(reverse("admin:integrity_dataanomaly_acknowledge", args=[999999]), follow=True)
        assert response.status_code == 200
        assert response.redirect_chain[-1][0] == reverse("admin:index")
        assert "doesn’t exist" in messages_of(response)[0]

    def test_a_viewer_sees_no_button_and_may_not_press_one(self):
        client = staff_client("view_dataanomaly")
        anomaly = a_gap()
        assert buttons(page_of(client, anomaly)) == []
        assert client.post(action_url(anomaly, "acknowledge")).status_code == 403
        assert DataAnomaly.objects.get(pk=anomaly.pk).resolution_status == "open"

    def test_a_button_post_without_the_csrf_token_is_refused(self, django_user_model):
        client = Client(enforce_csrf_checks=True)
        client.force_login(django_user_model.objects.create_superuser("root", "r@example.com", None))
        anomaly = a_gap()
        assert client.post(action_url(anomaly, "acknowledge")).status_code == 403
        assert DataAnomaly.objects.get(pk=anomaly.pk).resolution_status == "open"


class TestTheAnomalyPageSavesNothing:
    def test_it_has_no_save_no_delete_and_no_note_to_type(self, admin_client):
        html = page_of(admin_client, a_gap())
        assert 'name="_save"' not in html and 'name="_continue"' not in html
        assert "deletelink" not in html
        assert 'name="resolution_note"' not in html and 'name="resolve_as"' not in html

    def test_posting_it_with_a_note_changes_nothing_and_says_so(self, admin_client):
        anomaly = a_gap()
        response = admin_client.post(reverse("admin:integrity_dataanomaly_change", args=[anomaly.pk]),
                                     {"resolution_note": "fixed it", "resolve_as": "fixed"}, follow=True)
        anomaly.refresh_from_db()
        assert (anomaly.resolution_status, anomaly.resolution_note) == ("open", "")
        assert messages_of(response) == ["Nothing was saved: this page edits nothing; use the buttons above "
                                         "(Acknowledge, Resolve, Re-fetch this range)."]

    def test_an_anomaly_cannot_be_deleted(self, admin_client):
        anomaly = a_gap()
        assert admin_client.post(reverse("admin:integrity_dataanomaly_delete", args=[anomaly.pk]),
                                 {"post": "yes"}).status_code == 403
        act(admin_client, "dataanomaly", "delete_selected", [anomaly.pk])
        assert DataAnomaly.objects.filter(pk=anomaly.pk).exists()


class TestExecutionButtons:
    def test_a_failed_execution_offers_retry_and_not_cancel(self, admin_client):
        state = create_backfill_state("BTC-USD", "1h", "crypto")
        state.mark_failed("boom")
        assert buttons(page_of(admin_client, state, "backfillstate")) == ["Retry"]

    def test_a_pending_execution_offers_cancel_and_not_retry(self, admin_client):
        state = create_backfill_state("BTC-USD", "1h", "crypto")
        assert buttons(page_of(admin_client, state, "backfillstate")) == ["Cancel"]

    def test_a_running_or_completed_execution_offers_neither(self, admin_client):
        running = create_backfill_state("BTC-USD", "1h", "crypto")
        running.mark_started(worker="host:1")
        assert buttons(page_of(admin_client, running, "backfillstate")) == []
        running.mark_completed(3)
        assert buttons(page_of(admin_client, running, "backfillstate")) == []

    def test_retry_queues_a_new_execution_of_the_range_and_goes_to_it(self, admin_client):
        add_instrument()
        failed = create_backfill_state("BTC-USD", "1h", "crypto", range_start=utc(2024, 1, 1),
                                       range_end=utc(2024, 1, 2))
        failed.mark_failed("boom")

        response = admin_client.post(action_url(failed, "retry", "backfillstate"), follow=True)

        retry = BackfillState.objects.exclude(pk=failed.pk).get()
        assert (retry.status, retry.range_start, retry.range_end) == ("pending", utc(2024, 1, 1), utc(2024, 1, 2))
        assert OrmQ.objects.count() == 1
        assert response.redirect_chain[-1][0] == reverse("admin:integrity_backfillstate_change",
                                                         args=[str(retry.execution_id)])
        [message] = messages_of(response)
        assert message.startswith(f"Retry of {failed.execution_id} queued as execution {retry.execution_id}.")

    def test_retry_of_a_busy_series_is_refused_with_the_holder_named(self, admin_client):
        add_instrument()
        failed = create_backfill_state("BTC-USD", "1h", "crypto")
        failed.mark_failed("boom")
        holder = create_backfill_state("BTC-USD", "1h", "crypto")
        response = admin_client.post(action_url(failed, "retry", "backfillstate"), follow=True)
        [message] = messages_of(response)
        assert message.startswith("BTC-USD 1h not retried:") and str(holder.execution_id) in message
        assert BackfillState.objects.count() == 2

    def test_cancel_cancels_a_pending_execution_with_the_reason_given(self, admin_client):
        add_instrument()
        state = create_backfill_state("BTC-USD", "1h", "crypto")
        response = admin_client.post(action_url(state, "cancel", "backfillstate"), {"reason": "wrong range"},
                                     follow=True)
        state.refresh_from_db()
        assert (state.status, state.error_message) == ("failed", "cancelled: wrong range (by admin:root)")
        assert messages_of(response) == [f"Cancelled execution {state.execution_id} (BTC-USD 1h)."]

    def test_cancel_of_an_execution_a_worker_started_meanwhile_is_refused(self, admin_client):
        state = create_backfill_state("BTC-USD", "1h", "crypto")
        state.mark_started(worker="host:1")
        response = admin_client.post(action_url(state, "cancel", "backfillstate"), {}, follow=True)
        assert messages_of(response) == [f"Not cancelled: execution {state.execution_id} is not pending: it is "
                                         "in_progress by its worker host:1: stop the worker (SIGTERM) or wait for it "
                                         "to finish"]
        assert BackfillState.objects.get(pk=state.pk).status == "in_progress"

    def test_a_repair_execution_links_the_anomaly_it_repairs_and_its_state(self, admin_client):
        anomaly = a_gap(resolution_status="resolved", resolution_reason="fixed")
        state = create_backfill_state("BTC-USD", "1h", "crypto", requested_by=f"repair of anomaly #{anomaly.pk} for x")
        html = page_of(admin_client, state, "backfillstate")
        url = reverse("admin:integrity_dataanomaly_change", args=[anomaly.pk])
        assert f'<a class="repaired-anomaly" href="{url}">#{anomaly.pk} gap BTC-USD 1h</a> — now resolved (fixed)' in html

    def test_a_user_without_the_change_permission_gets_no_buttons(self):
        client = staff_client("view_backfillstate")
        state = create_backfill_state("BTC-USD", "1h", "crypto")
        assert buttons(page_of(client, state, "backfillstate")) == []
        assert client.post(action_url(state, "cancel", "backfillstate")).status_code == 403


class TestFailureTrackingButtons:
    def test_reset_zeroes_the_failures_and_says_so(self, admin_client):
        row = SymbolFailureTracking.objects.create(symbol="A", consecutive_failures=4, alert_sent=True)
        assert buttons(page_of(admin_client, row, "symbolfailuretracking")) == ["Reset"]
        response = admin_client.post(action_url(row, "reset", "symbolfailuretracking"), follow=True)
        row.refresh_from_db()
        assert (row.consecutive_failures, row.alert_sent) == (0, False)
        assert messages_of(response) == ["reset: A (consecutive failures 0, alert re-armed)."]

    def test_a_healthy_symbol_offers_no_reset(self, admin_client):
        row = SymbolFailureTracking.objects.create(symbol="OK", consecutive_failures=0)
        assert buttons(page_of(admin_client, row, "symbolfailuretracking")) == []

    def test_its_page_saves_nothing_and_cannot_delete(self, admin_client):
        row = SymbolFailureTracking.objects.create(symbol="A", consecutive_failures=4)
        url = reverse("admin:integrity_symbolfailuretracking_change", args=[row.pk])
        assert 'name="_save"' not in admin_client.get(url).content.decode()
        admin_client.post(url, {"consecutive_failures": "0"})
        assert SymbolFailureTracking.objects.get(pk=row.pk).consecutive_failures == 4
        assert admin_client.post(reverse("admin:integrity_symbolfailuretracking_delete", args=[row.pk]),
                                 {"post": "yes"}).status_code == 403


class TestAuditRules:
    @pytest.mark.parametrize("model", sorted(FACTORIES))
    def test_delete_selected_is_never_the_first_action(self, admin_client, model):
        FACTORIES[model]()
        html = admin_client.get(changelist(model)).content.decode()
        offered = re.findall(r'<option value="([^"]+)"', html.split('name="action"', 1)[1].split("</select>")[0]) \
            if 'name="action"' in html else []
        assert not offered or offered[0] != "delete_selected"

    @pytest.mark.parametrize("model", ["candle", "dataanomaly", "duplicaterecordlog", "backfillstate",
                                       "rejectedcandle", "healthcheckrun", "symbolfailuretracking"])
    def test_an_audit_bearing_row_cannot_be_deleted_or_added_in_the_admin(self, admin_client, model):
        row = FACTORIES[model]()
        assert admin_client.get(reverse(f"admin:integrity_{model}_add")).status_code == 403
        assert admin_client.post(reverse(f"admin:integrity_{model}_delete", args=[row.pk]),
                                 {"post": "yes"}).status_code == 403
        act(admin_client, model, "delete_selected", [row.pk])
        assert type(row).objects.filter(pk=row.pk).exists()

    def test_a_candle_cannot_be_edited_in_the_admin(self, admin_client):
        candle = FACTORIES["candle"]()
        url = reverse("admin:integrity_candle_change", args=[candle.pk])
        assert 'name="_save"' not in admin_client.get(url).content.decode()
        admin_client.post(url, {"symbol": "BTC-USD", "timeframe": "1h", "ts_0": "2024-01-01", "ts_1": "00:00:00",
                                "open": "9", "high": "9", "low": "9", "close": "9", "volume": "9", "source": "x"})
        candle.refresh_from_db()
        assert (candle.open, candle.source) == (1, "test")

    def test_every_integrity_list_puts_delete_last_where_it_is_offered(self, rf, admin_user):
        request = rf.get("/")
        request.user = admin_user
        for model, model_admin in admin.site._registry.items():
            if model._meta.app_label == "integrity":
                names = list(model_admin.get_actions(request))
                assert "delete_selected" not in names[:-1], model
                assert names != ["delete_selected"], model


class TestBulkReportsAddUp:
    def test_acknowledging_100_of_which_97_are_already_reviewed_says_3_and_97(self, admin_client):
        fresh = [make_anomaly() for _ in range(3)]
        seen = [make_anomaly(resolution_status="acknowledged") for _ in range(50)]
        done = [make_anomaly(resolution_status="resolved") for _ in range(47)]
        response = act(admin_client, "dataanomaly", "acknowledge", [a.pk for a in fresh + seen + done])
        [message] = messages_of(response)
        assert message.startswith(f"Acknowledged 3 (#{fresh[0].pk}, #{fresh[1].pk}, #{fresh[2].pk}, by root at ")
        assert "; refused 97: " in message and " and 30 more are already acknowledged; " in message
        assert message.endswith(" and 27 more are resolved, and only open anomalies can be acknowledged.")
        assert DataAnomaly.objects.filter(resolution_status="acknowledged").count() == 53

    def test_retrying_two_failures_of_one_series_queues_one_and_says_why_not_the_other(self, admin_client):
        add_instrument()
        older = create_backfill_state("BTC-USD", "1h", "crypto")
        older.mark_failed("boom")
        newer = create_backfill_state("BTC-USD", "1h", "crypto")
        newer.mark_failed("boom again")
        response = act(admin_client, "backfillstate", "retry_failed", [older.pk, newer.pk])
        [message] = messages_of(response)
        retry = BackfillState.objects.get(status="pending")
        assert message.startswith(f"Backfills queued: 1 — BTC-USD 1h ({retry.execution_id}). Not done: 1 — BTC-USD 1h "
                                  f"({older.execution_id}) not retried: a newer failed execution of the series is "
                                  "retried instead.")

    def test_refetching_more_than_an_action_queues_counts_the_rest(self, admin_client, monkeypatch):
        monkeypatch.setattr("integrity.admin.anomalies.REFETCH_LIMIT", 1)
        add_instrument()
        add_instrument("ETH-USD")
        first, second = a_gap(), a_gap(symbol="ETH-USD")
        response = act(admin_client, "dataanomaly", "refetch", [first.pk, second.pk])
        [message] = messages_of(response)
        state = BackfillState.objects.get()
        assert message.startswith(f"Repairs queued: 1 — #{first.pk} BTC-USD 1h ({state.execution_id}). Not done: 1 — "
                                  f"#{second.pk} not re-fetched: at most 1 repairs are queued per action.")
