"""Admin screens: lists, read-only audit tables, actions, dashboard and anomaly chart."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.contrib import admin
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from django_q.models import OrmQ

from integrity.admin_site import IntegrityAdminSite
from integrity.backfill import create_backfill_state, run_backfill
from integrity.health.job import run_health_monitoring
from integrity.models import (
    BackfillState,
    Candle,
    DataAnomaly,
    HealthCheckRun,
    Instrument,
    SeriesStats,
    SymbolFailureTracking,
)
from integrity.quality.anomalies import detect_data_anomalies
from tests.helpers import (
    FACTORIES,
    act,
    add_instrument,
    changelist,
    make_anomaly,
    messages_of,
    post_instrument,
    utc,
)

pytestmark = pytest.mark.django_db


def anomaly_page(client, anomaly_type: str, last_day: int, **faults) -> str:
    """The admin page of the one ``anomaly_type`` anomaly detected in BTC-USD 1h bars from 2024-01-01 to
    2024-01-``last_day``, the synthetic provider injecting ``faults`` (gaps, spikes)."""
    add_instrument(**faults)
    now = utc(2024, 1, last_day, 1)
    run_backfill("BTC-USD", "1h", start=utc(2024, 1, 1), end=utc(2024, 1, last_day), now=now)
    detect_data_anomalies(now=now, types=[anomaly_type])
    anomaly = DataAnomaly.objects.get(anomaly_type=anomaly_type)
    return client.get(reverse("admin:integrity_dataanomaly_change", args=[anomaly.pk])).content.decode()


def chart_of(html: str) -> str:
    return re.search(r'<svg[^>]*class="anomaly-chart".*?</svg>', html, re.S).group(0)


class TestLists:
    @pytest.mark.parametrize("model", list(FACTORIES))
    def test_every_list_renders(self, admin_client, model):
        FACTORIES[model]()
        assert admin_client.get(changelist(model), follow=True).status_code == 200

    @pytest.mark.parametrize("model", list(FACTORIES))
    def test_list_query_count_does_not_grow_with_rows(self, admin_client, model):
        FACTORIES[model]()
        admin_client.get(changelist(model), follow=True)  # warm session and content-type caches
        with CaptureQueriesContext(connection) as few:
            admin_client.get(changelist(model), follow=True)
        for _ in range(20):
            FACTORIES[model]()
        with CaptureQueriesContext(connection) as many:
            response = admin_client.get(changelist(model), follow=True)
        assert response.context["cl"].result_count == 21
        assert len(many) == len(few), [q["sql"] for q in many.captured_queries]

    @pytest.mark.parametrize("model,query", [
        ("dataanomaly", "severity__exact=high&resolution_status__exact=open&anomaly_type__exact=gap"),
        ("dataanomaly", "timeframe__exact=1h&q=BTC"),
        ("backfillstate", "status__exact=pending&asset_class__exact=crypto&timeframe__exact=1h"),
        ("instrument", "asset_class__exact=crypto&q=I"),
    ])
    def test_a_filtered_list_query_count_does_not_grow_with_rows(self, admin_client, model, query):
        FACTORIES[model]()
        admin_client.get(f"{changelist(model)}?{query}")
        with CaptureQueriesContext(connection) as few:
            admin_client.get(f"{changelist(model)}?{query}")
        for _ in range(20):
            FACTORIES[model]()
        with CaptureQueriesContext(connection) as many:
            response = admin_client.get(f"{changelist(model)}?{query}")
        assert response.context["cl"].result_count == 21
        assert len(many) == len(few)

    @pytest.mark.parametrize("model,query,shown,hidden", [
        ("dataanomaly", "severity__exact=critical", {"severity": "critical"}, {"severity": "low"}),
        ("dataanomaly", "resolution_status__exact=acknowledged", {"resolution_status": "acknowledged"},
         {"resolution_status": "open"}),
        ("dataanomaly", "anomaly_type__exact=outlier", {"anomaly_type": "outlier"}, {"anomaly_type": "gap"}),
        ("dataanomaly", "timeframe__exact=1d", {"timeframe": "1d"}, {"timeframe": "1h"}),
        ("dataanomaly", "detected_at__year=2023", {"detected_at": utc(2023, 5, 1)}, {"detected_at": utc(2024, 5, 1)}),
        ("dataanomaly", "q=ETH", {"symbol": "ETH-USD"}, {"symbol": "BTC-USD"}),
        ("backfillstate", "status__exact=failed", {"status": "failed"}, {"status": "pending"}),
        ("backfillstate", "asset_class__exact=equity", {"asset_class": "equity"}, {"asset_class": "crypto"}),
        ("instrument", "asset_class__exact=forex", {"asset_class": "forex"}, {"asset_class": "crypto"}),
        ("healthcheckrun", "status__exact=critical", {"status": "critical"}, {"status": "healthy"}),
        ("symbolfailuretracking", "alert_sent__exact=1", {"alert_sent": True}, {"alert_sent": False}),
    ])
    def test_filters_and_search_narrow_the_list(self, admin_client, model, query, shown, hidden):
        keep, drop = FACTORIES[model](), FACTORIES[model]()
        type(keep).objects.filter(pk=keep.pk).update(**shown)
        type(drop).objects.filter(pk=drop.pk).update(**hidden)
        response = admin_client.get(f"{changelist(model)}?{query}")
        assert response.status_code == 200  # an unconfigured filter would redirect with ?e=1
        assert [o.pk for o in response.context["cl"].result_list] == [keep.pk]

    @pytest.mark.parametrize("model", ["dataanomaly", "backfillstate", "duplicaterecordlog", "healthcheckrun",
                                       "instrument", "symbolfailuretracking", "seriesstats"])
    def test_every_list_but_candles_has_a_date_hierarchy(self, admin_client, model):
        FACTORIES[model]()
        assert 'class="toplinks"' in admin_client.get(changelist(model), follow=True).content.decode()


class TestCandleList:
    """The candle table is the big one: its list avoids every whole-table scan."""

    def test_search_is_by_exact_symbol_in_any_case(self, admin_client):
        FACTORIES["candle"]()
        Candle.objects.create(symbol="BTC-USDT", timeframe="1h", ts=utc(2024, 1, 1), open=1, high=1, low=1,
                              close=1, volume=1)
        for term in ("BTC-USD", "btc-usd", " BTC-USD "):
            rows = admin_client.get(changelist("candle"), {"q": term}).context["cl"].result_list
            assert [c.symbol for c in rows] == ["BTC-USD"]

    def test_the_source_filter_offers_the_providers_without_reading_the_table(self, admin_client):
        FACTORIES["candle"]()
        Candle.objects.filter(pk=FACTORIES["candle"]().pk).update(source="binance")
        with CaptureQueriesContext(connection) as queries:
            response = admin_client.get(changelist("candle"), {"source": "binance"})
        assert [c.source for c in response.context["cl"].result_list] == ["binance"]
        assert queries.captured_queries and not any("DISTINCT" in q["sql"] for q in queries.captured_queries)

    def test_the_time_filter_offers_fixed_ranges(self, admin_client):
        FACTORIES["candle"]()
        Candle.objects.create(symbol="BTC-USD", timeframe="1h", ts=timezone.now(), open=1, high=1, low=1, close=1,
                              volume=1)
        today = timezone.now().replace(hour=0, minute=0, second=0, microsecond=0)
        response = admin_client.get(changelist("candle"), {"ts__gte": today.isoformat(sep=" ")})
        assert response.context["cl"].result_count == 1

    @pytest.mark.postgres_only  # reads PostgreSQL's planner statistics (pg_class.reltuples)
    def test_the_unfiltered_count_comes_from_the_statistics_on_a_large_table(self, admin_client, monkeypatch):
        from integrity.admin import EstimatedCountPaginator

        for _ in range(30):
            FACTORIES["candle"]()
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE candles")
        for _ in range(5):
            FACTORIES["candle"]()  # not in the statistics yet
        monkeypatch.setattr(EstimatedCountPaginator, "estimate_from", 10)
        assert admin_client.get(changelist("candle")).context["cl"].result_count == 30
        assert admin_client.get(changelist("candle"), {"q": "BTC-USD"}).context["cl"].result_count == 35
        monkeypatch.setattr(EstimatedCountPaginator, "estimate_from", 1000)
        assert admin_client.get(changelist("candle")).context["cl"].result_count == 35


class TestReadOnlyAudit:
    @pytest.mark.parametrize("model", ["duplicaterecordlog", "healthcheckrun", "seriesstats", "backfillstate"])
    def test_audit_tables_cannot_be_added_to(self, admin_client, model):
        assert admin_client.get(reverse(f"admin:integrity_{model}_add")).status_code == 403

    @pytest.mark.parametrize("model,field,value", [
        ("duplicaterecordlog", "symbol", "CHANGED"),
        ("healthcheckrun", "status", "critical"),
        ("backfillstate", "symbol", "CHANGED"),
    ])
    def test_an_audit_row_cannot_be_edited_or_deleted(self, admin_client, model, field, value):
        row = FACTORIES[model]()
        if model == "backfillstate":
            row.mark_failed("boom")  # a finished execution
        before = getattr(type(row).objects.get(pk=row.pk), field)
        page = admin_client.get(reverse(f"admin:integrity_{model}_change", args=[row.pk])).content.decode()
        assert 'name="_save"' not in page
        admin_client.post(reverse(f"admin:integrity_{model}_change", args=[row.pk]), {field: value})
        assert admin_client.post(reverse(f"admin:integrity_{model}_delete", args=[row.pk]),
                                 {"post": "yes"}).status_code == 403
        assert getattr(type(row).objects.get(pk=row.pk), field) == before

    @pytest.mark.parametrize("model", ["duplicaterecordlog", "healthcheckrun", "backfillstate"])
    def test_audit_lists_offer_no_bulk_delete(self, admin_client, model):
        row = FACTORIES[model]()
        response = act(admin_client, model, "delete_selected", [row.pk])
        assert type(row).objects.filter(pk=row.pk).exists()
        assert "delete_selected" not in response.content.decode()


class TestAnomalyActions:
    """Each review action reports once, and what it says is what happened (issue 10, point 16)."""

    STAMP = r"by root at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC"

    def test_acknowledge_records_who_and_when_and_reports_it(self, admin_client):
        anomaly = make_anomaly()
        before = timezone.now()
        response = act(admin_client, "dataanomaly", "acknowledge", [anomaly.pk])
        anomaly.refresh_from_db()
        assert (anomaly.resolution_status, anomaly.acknowledged_by) == ("acknowledged", "root")
        assert anomaly.acknowledged_at >= before
        [message] = messages_of(response)
        assert re.fullmatch(rf"Acknowledged 1 \(#{anomaly.pk}, {self.STAMP}\)\.", message)

    def test_resolve_records_who_and_when_and_reports_it(self, admin_client):
        anomaly = make_anomaly(resolution_status="acknowledged")
        response = act(admin_client, "dataanomaly", "resolve", [anomaly.pk])
        anomaly.refresh_from_db()
        assert (anomaly.resolution_status, anomaly.resolved_by) == ("resolved", "root")
        assert anomaly.resolved_at is not None
        [message] = messages_of(response)
        assert re.fullmatch(rf"Resolved 1 \(#{anomaly.pk}, {self.STAMP}\)\.", message)

    def test_resolving_two_open_anomalies_says_so_and_nothing_else(self, admin_client):
        a, b = make_anomaly(), make_anomaly()
        response = act(admin_client, "dataanomaly", "resolve", [a.pk, b.pk])
        assert set(DataAnomaly.objects.values_list("resolution_status", flat=True)) == {"resolved"}
        [message] = messages_of(response)
        assert re.fullmatch(rf"Resolved 2 \(#{a.pk}, #{b.pk}, {self.STAMP}\)\.", message)

    @pytest.mark.parametrize("action,status", [("acknowledge", "acknowledged"), ("resolve", "resolved")])
    def test_on_a_list_filtered_by_status_the_moved_rows_are_not_reported_as_refused(self, admin_client, action,
                                                                                       status):
        a, b = make_anomaly(), make_anomaly()
        response = act(admin_client, "dataanomaly", action, [a.pk, b.pk], query="resolution_status__exact=open")
        assert set(DataAnomaly.objects.values_list("resolution_status", flat=True)) == {status}
        [message] = messages_of(response)
        assert re.fullmatch(rf"{status.capitalize()} 2 \(#{a.pk}, #{b.pk}, {self.STAMP}\)\.", message)

    def test_resolving_an_already_resolved_anomaly_is_refused_clearly(self, admin_client):
        anomaly = make_anomaly(resolution_status="resolved", resolved_by="someone")
        response = act(admin_client, "dataanomaly", "resolve", [anomaly.pk])
        assert messages_of(response) == [f"Resolved none; refused 1: #{anomaly.pk} is already resolved."]
        anomaly.refresh_from_db()
        assert anomaly.resolved_by == "someone"

    def test_a_mixed_acknowledge_moves_what_it_may_and_names_the_rest_with_the_rule(self, admin_client):
        open_one = make_anomaly()
        done = make_anomaly(resolution_status="resolved")
        seen = make_anomaly(resolution_status="acknowledged", acknowledged_by="someone")
        response = act(admin_client, "dataanomaly", "acknowledge", [open_one.pk, done.pk, seen.pk])
        assert dict(DataAnomaly.objects.values_list("pk", "resolution_status")) == {
            open_one.pk: "acknowledged", done.pk: "resolved", seen.pk: "acknowledged"}
        assert DataAnomaly.objects.get(pk=seen.pk).acknowledged_by == "someone"
        [message] = messages_of(response)
        assert re.fullmatch(
            rf"Acknowledged 1 \(#{open_one.pk}, {self.STAMP}\); refused 2: #{done.pk} is resolved, and only open "
            rf"anomalies can be acknowledged; #{seen.pk} is already acknowledged\.", message)

    def test_a_mixed_resolve_on_a_filtered_list_reports_once_and_truthfully(self, admin_client):
        open_one, seen = make_anomaly(), make_anomaly(resolution_status="acknowledged")
        done = make_anomaly(resolution_status="resolved")
        make_anomaly(severity="low")  # outside the filter, not selected
        response = act(admin_client, "dataanomaly", "resolve", [open_one.pk, seen.pk, done.pk],
                       query="severity__exact=high")
        [message] = messages_of(response)
        assert re.fullmatch(rf"Resolved 2 \(#{open_one.pk}, #{seen.pk}, {self.STAMP}\); refused 1: "
                            rf"#{done.pk} is already resolved\.", message)
        assert DataAnomaly.objects.filter(resolution_status="resolved").count() == 3

    def test_select_all_on_a_filtered_list_moves_the_whole_filtered_list_and_counts_it(self, admin_client):
        opened = [make_anomaly() for _ in range(23)]
        make_anomaly(resolution_status="acknowledged")  # outside the filter
        response = admin_client.post(f"{changelist('dataanomaly')}?resolution_status__exact=open",
                                     {"action": "acknowledge", "select_across": "1", "index": "0",
                                      "_selected_action": [str(opened[0].pk)]}, follow=True)
        [message] = messages_of(response)
        ids = ", ".join(f"#{a.pk}" for a in sorted(opened, key=lambda a: a.pk)[:20])
        assert re.fullmatch(rf"Acknowledged 23 \({ids} and 3 more, {self.STAMP}\)\.", message)
        assert DataAnomaly.objects.filter(resolution_status="acknowledged").count() == 24

    def test_a_view_only_reviewer_cannot_run_review_actions(self, client):
        viewer = User.objects.create_user("viewer", is_staff=True)
        viewer.user_permissions.set(Permission.objects.filter(codename="view_dataanomaly"))
        client.force_login(viewer)
        anomaly = make_anomaly()
        page = client.get(changelist("dataanomaly")).content.decode()
        assert 'value="acknowledge"' not in page
        act(client, "dataanomaly", "acknowledge", [anomaly.pk])
        assert DataAnomaly.objects.get(pk=anomaly.pk).resolution_status == "open"


class TestBackfillActions:
    def test_retry_failed_queues_a_new_execution_for_the_series_and_reports_it(self, admin_client):
        add_instrument()
        failed = create_backfill_state("BTC-USD", "1h", "crypto")
        failed.mark_failed("boom")
        response = act(admin_client, "backfillstate", "retry_failed", [failed.pk])
        retry = BackfillState.objects.exclude(pk=failed.pk).get()
        assert (retry.status, retry.retry_count, retry.requested_by) == ("pending", 1, "admin:root")
        assert OrmQ.objects.count() == 1
        [message] = messages_of(response)
        assert message.startswith(f"Backfills queued: 1 — BTC-USD 1h ({retry.execution_id}).")

    def test_retry_skips_executions_that_did_not_fail(self, admin_client):
        add_instrument()
        state = create_backfill_state("BTC-USD", "1h", "crypto")
        response = act(admin_client, "backfillstate", "retry_failed", [state.pk])
        assert messages_of(response) == [f"Backfills queued: none. Not done: 1 — BTC-USD 1h ({state.execution_id}) "
                                         "not retried: it is pending; only a failed execution is retried."]
        assert BackfillState.objects.count() == 1

    def test_retry_refuses_a_series_that_is_busy(self, admin_client):
        add_instrument()
        failed = create_backfill_state("BTC-USD", "1h", "crypto")
        failed.mark_failed("boom")
        holder = create_backfill_state("BTC-USD", "1h", "crypto")
        response = act(admin_client, "backfillstate", "retry_failed", [failed.pk])
        [message] = messages_of(response)
        assert message.startswith("Backfills queued: none. Not done: 1 — BTC-USD 1h refused:")
        assert str(holder.execution_id) in message
        assert BackfillState.objects.count() == 2

    def test_reap_fails_dead_executions_and_reports_them(self, admin_client):
        dead = create_backfill_state("BTC-USD", "1h", "crypto")
        dead.mark_started(worker="gone:1")
        BackfillState.objects.filter(pk=dead.pk).update(heartbeat_at=timezone.now() - timedelta(hours=2))
        response = act(admin_client, "backfillstate", "reap_dead", [dead.pk])
        dead.refresh_from_db()
        assert dead.status == "failed" and "heartbeat timeout" in dead.error_message
        [message] = messages_of(response)
        assert message.startswith(f"Reaped: 1 — BTC-USD 1h ({dead.execution_id})")

    def test_reap_leaves_a_live_execution_alone_and_says_why(self, admin_client):
        live = create_backfill_state("BTC-USD", "1h", "crypto")
        live.mark_started(worker="here:1")
        response = act(admin_client, "backfillstate", "reap_dead", [live.pk])
        assert BackfillState.objects.get(pk=live.pk).status == "in_progress"
        [message] = messages_of(response)
        assert message.startswith(f"Reaped: none. Not done: 1 — BTC-USD 1h ({live.execution_id}) not reaped: it is "
                                  "in_progress and its worker is alive")

    def test_reap_of_a_finished_execution_is_refused(self, admin_client):
        done = create_backfill_state("BTC-USD", "1h", "crypto")
        done.mark_failed("x")
        response = act(admin_client, "backfillstate", "reap_dead", [done.pk])
        assert messages_of(response) == [f"Reaped: none. Not done: 1 — BTC-USD 1h ({done.execution_id}) not reaped: "
                                         "it has finished (failed)."]


class TestInstrumentAndFailureActions:
    def test_backfill_now_queues_every_timeframe_of_the_instrument(self, admin_client):
        instrument = add_instrument(timeframes=("1h", "1d"))
        response = act(admin_client, "instrument", "backfill_now", [instrument.pk])
        assert sorted(BackfillState.objects.values_list("timeframe", flat=True)) == ["1d", "1h"]
        [message] = messages_of(response)
        assert message.startswith("Backfills queued: 2 — BTC-USD 1h (") and "; BTC-USD 1d (" in message

    def test_backfill_now_refuses_an_instrument_without_timeframes(self, admin_client):
        instrument = add_instrument(timeframes=())
        response = act(admin_client, "instrument", "backfill_now", [instrument.pk])
        assert messages_of(response) == ["Backfills queued: none. Not done: 1 — BTC-USD refused: it has no "
                                         "timeframes to backfill."]
        assert not BackfillState.objects.exists()

    def test_backfill_now_refuses_a_busy_series_and_queues_the_others(self, admin_client):
        instrument = add_instrument(timeframes=("1h", "1d"))
        holder = create_backfill_state("BTC-USD", "1h", "crypto")
        response = act(admin_client, "instrument", "backfill_now", [instrument.pk])
        [message] = messages_of(response)
        assert message.startswith("Backfills queued: 1 — BTC-USD 1d (")
        assert ". Not done: 1 — BTC-USD 1h refused:" in message and str(holder.execution_id) in message

    def test_reset_zeroes_failures_rearms_the_alert_and_reports_it(self, admin_client):
        row = SymbolFailureTracking.objects.create(symbol="A", consecutive_failures=4, alert_sent=True)
        response = act(admin_client, "symbolfailuretracking", "reset", [row.pk])
        row.refresh_from_db()
        assert (row.consecutive_failures, row.alert_sent) == (0, False)
        assert messages_of(response) == ["Reset: 1 — A."]

    def test_reset_of_a_healthy_symbol_is_refused(self, admin_client):
        row = SymbolFailureTracking.objects.create(symbol="OK", consecutive_failures=0)
        response = act(admin_client, "symbolfailuretracking", "reset", [row.pk])
        assert messages_of(response) == ["Reset: none. Not done: 1 — OK not reset: it has no consecutive failures "
                                         "and no alert outstanding."]


class TestInstrumentForm:
    def test_a_valid_instrument_is_saved(self, admin_client):
        assert post_instrument(admin_client).status_code == 302
        assert Instrument.objects.get(symbol="ETH-USD").timeframes == ["1h"]

    @pytest.mark.parametrize("field,value,message", [
        ("provider", "nasdaq-ftp", "Select a valid choice"),
        ("calendar", "MOON", "Select a valid choice. MOON is not one of the available choices."),
        ("timeframes", "7m", "Select a valid choice. 7m is not one of the available choices."),
        ("quality_thresholds", '{"outlier_mvoe": 0.3}', "unknown threshold"),
        ("provider_options", '{"limt": 500}', "unknown option(s) limt"),
    ])
    def test_invalid_values_are_refused_with_a_field_message(self, admin_client, field, value, message):
        provider = {"provider": "binance"} if field == "provider_options" else {}
        response = post_instrument(admin_client, **{**provider, field: value})
        assert response.status_code == 200 and message in str(response.context["adminform"].form.errors)
        assert not Instrument.objects.exists()


class TestTheSite:
    def test_the_default_site_is_the_integrity_site_with_its_title(self, admin_client):
        assert isinstance(admin.site, IntegrityAdminSite)
        assert "marketdata-integrity" in admin_client.get(reverse("admin:index")).content.decode()

    @pytest.mark.parametrize("url_name", ["admin:auth_user_changelist", "admin:django_q_schedule_changelist",
                                          "admin:integrity_instrument_changelist"])
    def test_every_app_registered_on_the_default_site_keeps_its_screens(self, admin_client, url_name):
        assert admin_client.get(reverse(url_name)).status_code == 200


class TestDashboardAndChart:
    def test_the_dashboard_is_linked_from_the_index(self, admin_client):
        assert reverse("admin:integrity-dashboard") in admin_client.get(reverse("admin:index")).content.decode()

    def test_the_dashboard_needs_the_permission_to_view_anomalies(self, client):
        client.force_login(User.objects.create_user("staff", is_staff=True))
        assert reverse("admin:integrity-dashboard") not in client.get(reverse("admin:index")).content.decode()
        assert client.get(reverse("admin:integrity-dashboard")).status_code == 403

    def test_the_dashboard_shows_every_panel(self, admin_client):
        add_instrument("NEVER-LOADED")  # on the watchlist, no bars: stale in the health run
        make_anomaly(severity="critical", anomaly_type="outlier")
        make_anomaly(severity="low", resolution_status="acknowledged")
        SymbolFailureTracking.objects.create(symbol="XYZ", consecutive_failures=3, last_error="HTTP 503")
        SeriesStats.objects.create(symbol="BTC-USD", timeframe="1h", bar_count=10, expected_bars=12,
                                   coverage_pct=83.3)
        create_backfill_state("RUNNING-1", "1h", "crypto")
        run_health_monitoring(scan_anomalies=False)
        html = admin_client.get(reverse("admin:integrity-dashboard")).content.decode()

        def section(element_id: str) -> str:
            return re.search(rf'id="{element_id}".*?</(table|p)>', html, re.S).group(0)

        assert re.search(r"critical</td><td><a [^>]*>1</a>", section("anomalies-by-severity"))
        assert re.search(r"outlier</td><td><a [^>]*>1</a>", section("anomalies-by-type"))
        assert "1 acknowledged" in section("acknowledged-total")
        assert "NEVER-LOADED" in section("stale-series") and "no bars yet" in section("stale-series")
        assert "XYZ" in section("failing-symbols") and "HTTP 503" in section("failing-symbols")
        assert "RUNNING-1 1h" in section("active-backfills")
        assert "83.3%" in section("coverage")
        assert HealthCheckRun.objects.get().status in section("latest-run")

    def test_the_dashboard_query_count_does_not_grow_with_rows(self, admin_client):
        url = reverse("admin:integrity-dashboard")
        for factory in FACTORIES.values():
            factory()
        admin_client.get(url)
        with CaptureQueriesContext(connection) as few:
            admin_client.get(url)
        for factory in FACTORIES.values():
            for _ in range(10):
                factory()
        with CaptureQueriesContext(connection) as many:
            admin_client.get(url)
        assert len(many) == len(few)

    def test_an_anomaly_page_charts_the_candles_with_the_gap_shaded(self, admin_client):
        svg = chart_of(anomaly_page(admin_client, "gap", 6, gaps=[["2024-01-03T10:00:00Z", "2024-01-03T15:00:00Z"]]))
        assert 'class="anomaly-period"' in svg and '<rect class="missing-bars" data-missing="5"' in svg
        assert 'class="anomaly-bar"' not in svg  # a gap has no bars of its own: an empty shaded band

    def test_an_outlier_page_highlights_the_outlier_bar(self, admin_client):
        svg = chart_of(anomaly_page(admin_client, "outlier", 6, spikes=["2024-01-04T12:00:00Z"]))
        assert svg.count('class="anomaly-bar"') == 1
        spiked = Candle.objects.get(ts=utc(2024, 1, 4, 12))
        lines = re.findall(r'<line x1="[\d.]+" y1="([\d.]+)" x2="[\d.]+" y2="([\d.]+)" stroke="(#[0-9a-f]+)"', svg)
        assert [colour for *_, colour in lines].count("#c0392b") == 1  # only the spiked bar is red
        highest = min(float(y1) for y1, _, _ in lines)  # SVG y grows downwards: the tallest high
        red = next(float(y1) for y1, _, colour in lines if colour == "#c0392b")
        assert red == highest and spiked.high == Candle.objects.order_by("-high").first().high

    def test_the_anomaly_page_loads_nothing_from_other_hosts(self, admin_client):
        html = anomaly_page(admin_client, "gap", 5, gaps=[["2024-01-03T10:00:00Z", "2024-01-03T12:00:00Z"]])
        sources = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert sources and not [s for s in sources if s.startswith(("http:", "https:", "//"))]

    def test_an_anomaly_without_a_period_says_there_is_nothing_to_chart(self, admin_client):
        stale = make_anomaly(anomaly_type="stale")
        html = admin_client.get(reverse("admin:integrity_dataanomaly_change", args=[stale.pk])).content.decode()
        assert "nothing to chart" in html
