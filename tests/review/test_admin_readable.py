"""How the review screens read: times in UTC and labelled so, severity badges, the anomaly list open by
default with its description and date-range filters, the backfill list's short ids and errors, prices
at the instrument's precision, pretty-printed JSON, and the instrument form's choices."""

from __future__ import annotations

import re
import uuid

import pytest
from django.urls import reverse

from integrity.admin.base import pretty_json
from integrity.models import BackfillState, Candle, HealthCheckRun, Instrument, RejectedCandle
from integrity.prices import format_price, format_volume
from integrity.timeframes import utc_text
from tests.helpers import add_instrument, changelist, make_anomaly, post_instrument, utc

pytestmark = pytest.mark.django_db

ANOMALIES = changelist("dataanomaly")


def shown_ids(response) -> set[int]:
    return {row.pk for row in response.context["cl"].result_list}


def backfill(**kwargs) -> BackfillState:
    values = {"symbol": "BTC-USD", "timeframe": "1h", "asset_class": "crypto", "status": "failed"}
    return BackfillState.objects.create(**{**values, **kwargs})


# --- times ----------------------------------------------------------------------------------------


def test_a_time_reads_as_utc_with_its_label():
    assert utc_text(utc(2026, 3, 2, 14, 0, 59)) == "2026-03-02 14:00 UTC"


def test_list_columns_show_times_in_utc(admin_client):
    make_anomaly(period_start=utc(2024, 1, 2, 5), period_end=utc(2024, 1, 2, 7))
    page = admin_client.get(ANOMALIES, {"resolution_status__exact": "open"}).content.decode()
    assert "2024-01-02 05:00 UTC" in page and "2024-01-02 07:00 UTC" in page


# --- the anomaly list -----------------------------------------------------------------------------


class TestAnomalyListDefaultsToOpen:
    def test_the_bare_list_redirects_to_the_open_anomalies(self, admin_client):
        response = admin_client.get(ANOMALIES)
        assert response.status_code == 302 and response["Location"] == f"{ANOMALIES}?resolution_status__exact=open"

    def test_the_open_list_hides_acknowledged_and_resolved(self, admin_client):
        open_one = make_anomaly()
        make_anomaly(resolution_status="acknowledged"), make_anomaly(resolution_status="resolved")
        assert shown_ids(admin_client.get(ANOMALIES, follow=True)) == {open_one.pk}

    def test_all_is_a_choice_of_its_own_that_shows_every_status(self, admin_client):
        rows = [make_anomaly(resolution_status=status) for status in ("open", "acknowledged", "resolved")]
        response = admin_client.get(ANOMALIES, follow=True)
        [status_filter] = [spec for spec in response.context["cl"].filter_specs if spec.title == "status"]
        [everything] = [c for c in status_filter.choices(response.context["cl"]) if c["display"] == "All"]
        assert shown_ids(admin_client.get(ANOMALIES + everything["query_string"])) == {r.pk for r in rows}

    def test_a_query_without_a_status_is_taken_as_given(self, admin_client):
        rows = [make_anomaly(resolution_status=status) for status in ("open", "resolved")]
        response = admin_client.get(ANOMALIES, {"q": "BTC"})
        assert response.status_code == 200 and shown_ids(response) == {r.pk for r in rows}

    def test_a_status_that_is_not_one_is_a_400(self, admin_client):
        response = admin_client.get(ANOMALIES, {"resolution_status__exact": "closed"})
        assert response.status_code == 400 and "is not a status" in response.content.decode()

    def test_the_executions_link_to_its_anomalies_covers_every_status(self, admin_client):
        state = backfill(status="completed")
        make_anomaly(execution_id=state.execution_id, resolution_status="resolved")
        page = admin_client.get(reverse("admin:integrity_backfillstate_change", args=[state.pk])).content.decode()
        link = re.search(r'href="([^"]*dataanomaly/\?[^"]+)"', page).group(1).replace("&amp;", "&")
        assert len(shown_ids(admin_client.get(link))) == 1


def test_severity_is_a_coloured_badge(admin_client):
    make_anomaly(severity="critical")
    page = admin_client.get(ANOMALIES, follow=True).content.decode()
    assert '<span class="badge severity-critical">Critical</span>' in page
    assert "integrity/admin.css" in page


def test_the_status_column_names_the_reason_and_the_regressions(admin_client):
    make_anomaly(resolution_status="resolved", resolution_reason="false_positive", regressions=2)
    page = admin_client.get(ANOMALIES, {"resolution_status__exact": "resolved"}).content.decode()
    assert '<span class="status-resolved">Resolved</span> (false positive, came back 2×)' in page


def test_the_list_shows_the_description_cut_with_the_whole_on_hover(admin_client):
    text = "5 missing 1h bars from 2024-01-03 05:00 UTC to 2024-01-03 09:00 UTC (the provider had none)"
    make_anomaly(description=text)
    page = admin_client.get(ANOMALIES, follow=True).content.decode()
    assert f'title="{text}">5 missing 1h bars from 2024-01-03 05:00 UTC to 2024-01-03 09…<' in page


def test_the_list_shows_period_end_and_affected_rows(admin_client):
    response = admin_client.get(ANOMALIES, follow=True)
    columns = response.context["cl"].list_display
    assert {"period_start", "period_end", "affected_rows", "detected_at", "description_short"} <= set(columns)


class TestDateRangeFilters:
    def test_detected_at_from_and_to_dates_include_both_days(self, admin_client):
        rows = {day: make_anomaly() for day in (1, 2, 3, 4)}
        for day, row in rows.items():
            type(row).objects.filter(pk=row.pk).update(detected_at=utc(2024, 1, day, 23, 30))
        response = admin_client.get(ANOMALIES, {"resolution_status__exact": "all", "detected_at__range__gte": "2024-01-02",
                                                "detected_at__range__lte": "2024-01-03"})
        assert shown_ids(response) == {rows[2].pk, rows[3].pk}

    def test_period_start_can_be_filtered_from_a_date(self, admin_client):
        early, late = make_anomaly(period_start=utc(2023, 5, 1)), make_anomaly(period_start=utc(2024, 5, 1))
        response = admin_client.get(ANOMALIES, {"resolution_status__exact": "all",
                                                "period_start__range__gte": "2024-01-01"})
        assert shown_ids(response) == {late.pk} and early.pk not in shown_ids(response)

    def test_a_date_that_does_not_parse_is_a_400_naming_it(self, admin_client):
        response = admin_client.get(ANOMALIES, {"detected_at__range__gte": "yesterday"})
        assert response.status_code == 400
        assert response.context["reason"] == "a filter value is not valid: detected_at__range__gte='yesterday': " \
                                             "Enter a valid date"

    def test_the_backfill_list_filters_by_started_at(self, admin_client):
        old, new = backfill(started_at=utc(2024, 1, 1, 3)), backfill(started_at=utc(2024, 2, 1, 3))
        response = admin_client.get(changelist("backfillstate"), {"started_at__range__lte": "2024-01-15"})
        assert shown_ids(response) == {old.pk} and new.pk not in shown_ids(response)


# --- the backfill list ----------------------------------------------------------------------------


def test_the_backfill_list_shows_a_short_execution_id_linking_to_it(admin_client):
    state = backfill()
    page = admin_client.get(changelist("backfillstate")).content.decode()
    text = str(state.execution_id)
    assert f'title="{text}">{text[:8]}…</a>' in page


def test_the_backfill_list_shows_the_error_cut_with_the_whole_on_hover(admin_client):
    error = "provider binance: HTTP 429 Too Many Requests " + "x" * 200
    backfill(error_message=error)
    page = admin_client.get(changelist("backfillstate")).content.decode()
    assert f'title="{error}"' in page and error[:120].rstrip() + "…" in page


# --- prices ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("value,decimals,asset_class,shown", [
    (101.23000000000001, None, "equity", "101.23"),
    (0.5123456, None, "equity", "0.5123"),
    (1.0845612345, None, "forex", "1.08456"),
    (151.2345678, None, "forex", "151.235"),
    (67012.3456789, None, "crypto", "67012.35"),
    (3.456789123, None, "crypto", "3.45679"),
    (0.0000123412345, None, "crypto", "0.0000123412"),
    (101.23456, 4, "equity", "101.2346"),
    (float("nan"), 2, "equity", "nan"),
    ("inf", 2, "equity", "inf"),
    (None, 2, "equity", "-"),
])
def test_a_price_reads_at_its_precision(value, decimals, asset_class, shown):
    assert format_price(value, decimals, asset_class) == shown


def test_the_candle_list_shows_prices_at_the_instruments_decimals(admin_client):
    instrument = add_instrument("AAPL", asset_class="equity", calendar="XNYS")
    Instrument.objects.filter(pk=instrument.pk).update(price_decimals=3)
    Candle.objects.create(symbol="AAPL", timeframe="1h", ts=utc(2024, 1, 2, 15), open=187.123456789, high=188.5,
                          low=186.0000000001, close=187.25, volume=1000)
    page = admin_client.get(changelist("candle"), {"q": "AAPL"}).content.decode()
    assert "187.123" in page and "186.000" in page and "187.123456789" not in page


@pytest.mark.parametrize(("value", "shown"), [
    (471174.0, "471,174"),
    (12.5, "12.5"),
    (0.00012345, "0.00012345"),
    (1234.123456789, "1,234.12345679"),
    (None, "-"),
    (float("nan"), "nan"),
])
def test_a_volume_reads_without_a_trailing_zero_and_with_thousands_separated(value, shown):
    assert format_volume(value) == shown


def test_the_candle_list_shows_volume_as_a_person_reads_it(admin_client):
    add_instrument("AAPL", asset_class="equity", calendar="XNYS")
    Candle.objects.create(symbol="AAPL", timeframe="1h", ts=utc(2024, 1, 2, 15), open=187.0, high=188.5,
                          low=186.0, close=187.25, volume=471174.0)
    page = admin_client.get(changelist("candle"), {"q": "AAPL"}).content.decode()
    assert "471,174" in page and "471174.0" not in page


def test_the_rejected_bar_list_shows_prices_at_the_asset_class_precision(admin_client):
    add_instrument("AAPL", asset_class="equity", calendar="XNYS")
    RejectedCandle.objects.create(
        symbol="AAPL", timeframe="1h", ts=utc(2024, 1, 2, 15), open=187.123456789, high=186.5, low=187.0, close=187.0,
        volume=10, raw_values={"open": 187.123456789, "high": 186.5, "low": 187.0, "close": "nan", "volume": 10},
        rules="high_below_low", execution_id=uuid.uuid4())
    page = admin_client.get(changelist("rejectedcandle")).content.decode()
    assert "187.12<" in page and "186.50<" in page and ">nan<" in page and "187.123456789" not in page


# --- JSON -----------------------------------------------------------------------------------------


def test_json_is_indented_with_sorted_keys_and_escaped():
    assert pretty_json({"b": 1, "a": "<script>"}) == (
        '<pre class="pretty-json">{\n  &quot;a&quot;: &quot;&lt;script&gt;&quot;,\n  &quot;b&quot;: 1\n}</pre>')


def test_an_anomalys_details_are_pretty_with_prices_at_the_instruments_precision(admin_client):
    add_instrument("AAPL", asset_class="equity", calendar="XNYS")
    anomaly = make_anomaly(symbol="AAPL", anomaly_type="outlier",
                           details={"previous_close": 187.123456789, "close": 250.0000001, "ratio": 1.336})
    page = admin_client.get(reverse("admin:integrity_dataanomaly_change", args=[anomaly.pk])).content.decode()
    details = re.search(r'<pre class="pretty-json">(.*?)</pre>', page, re.S).group(1)
    assert details.splitlines() == ["{", '  &quot;close&quot;: &quot;250.00&quot;,',
                                    '  &quot;previous_close&quot;: &quot;187.12&quot;,', "  &quot;ratio&quot;: 1.336",
                                    "}"]


def test_a_health_runs_results_are_pretty(admin_client):
    run = HealthCheckRun.objects.create(status="healthy", results={"stale_series": {"count": 0}}, errors=["x"])
    page = admin_client.get(reverse("admin:integrity_healthcheckrun_change", args=[run.pk])).content.decode()
    assert "{\n  &quot;stale_series&quot;: {\n    &quot;count&quot;: 0\n  }\n}" in page
    assert '[\n  &quot;x&quot;\n]' in page


def test_a_backfills_details_are_pretty(admin_client):
    state = backfill(details={"validation": {"checked": 10}})
    page = admin_client.get(reverse("admin:integrity_backfillstate_change", args=[state.pk])).content.decode()
    assert "{\n  &quot;validation&quot;: {\n    &quot;checked&quot;: 10\n  }\n}" in page


def test_a_backfills_details_are_shown_once_not_also_as_one_json_line(admin_client):
    state = backfill(details={"validation": {"checked": 10}})
    page = admin_client.get(reverse("admin:integrity_backfillstate_change", args=[state.pk])).content.decode()
    assert page.count("&quot;checked&quot;") == 1
    assert page.index("Execution id") < page.index("Anomalies it produced") < page.index("Details")


# --- the instrument form --------------------------------------------------------------------------


class TestInstrumentForm:
    def form_page(self, admin_client) -> str:
        return admin_client.get(reverse("admin:integrity_instrument_add")).content.decode()

    def test_the_calendar_is_a_searchable_choice_of_every_known_code(self, admin_client):
        page = self.form_page(admin_client)
        select = re.search(r'<select name="calendar".*?</select>', page, re.S).group(0)
        assert 'class="integrity-searchable"' in select and "select2" in page
        for option in ('value="24/7"', 'value="24/5"', 'value="XNYS"', 'value="XLON"', ">NYSE (= XNYS)<"):
            assert option in select

    def test_an_alias_calendar_is_accepted(self, admin_client):
        assert post_instrument(admin_client, calendar="NYSE", asset_class="equity", symbol="AAPL").status_code == 302
        assert Instrument.objects.get(symbol="AAPL").calendar == "NYSE"

    def test_timeframes_are_checkboxes(self, admin_client):
        page = self.form_page(admin_client)
        assert len(re.findall(r'<input type="checkbox" name="timeframes" value="[^"]+"', page)) == 6

    def test_the_timeframes_ticked_are_saved_shortest_first(self, admin_client):
        assert post_instrument(admin_client, timeframes=["1d", "5m", "1h"]).status_code == 302
        assert Instrument.objects.get(symbol="ETH-USD").timeframes == ["5m", "1h", "1d"]

    def test_the_form_names_each_providers_accepted_options(self, admin_client):
        page = self.form_page(admin_client)
        assert "binance: base_url, provider_symbol, limit" in page and "csv: file, directory" in page

    @pytest.mark.parametrize("provider,options,message", [
        ("alpaca", '{"extended_hours": "maybe"}', "extended_hours must be true or false"),
        ("ccxt", '{"exchange": "binance", "limit": "many"}', "limit"),
        ("csv", '{"fiel": "x.csv"}', "unknown option(s) fiel"),
    ])
    def test_options_the_provider_refuses_are_a_field_error_not_a_500(self, admin_client, provider, options, message):
        response = post_instrument(admin_client, provider=provider, provider_options=options)
        assert response.status_code == 200
        errors = response.context["adminform"].form.errors
        assert "provider_options" in errors and message in " ".join(errors["provider_options"])
        assert not Instrument.objects.exists()

    def test_price_decimals_past_twelve_is_a_field_error(self, admin_client):
        response = post_instrument(admin_client, price_decimals="13")
        assert response.status_code == 200 and "price_decimals" in response.context["adminform"].form.errors

    def test_price_decimals_are_saved(self, admin_client):
        assert post_instrument(admin_client, price_decimals="4").status_code == 302
        assert Instrument.objects.get(symbol="ETH-USD").price_decimals == 4


# --- price_decimals through the API ---------------------------------------------------------------


def test_the_api_saves_an_instruments_price_decimals_and_refuses_more_than_twelve():
    from tests.helpers import client_for, user_with

    api = client_for(user_with("view_instrument", "change_instrument", "add_instrument"))
    body = {"symbol": "AAPL", "asset_class": "equity", "calendar": "XNYS", "timeframes": ["1d"]}
    refused = api.post("/api/v1/instruments/", {**body, "price_decimals": 13}, format="json")
    assert refused.status_code == 400 and "price_decimals" in refused.json()
    saved = api.post("/api/v1/instruments/", {**body, "price_decimals": 4}, format="json")
    assert saved.status_code == 201 and saved.json()["price_decimals"] == 4


@pytest.mark.parametrize("options,message", [
    ('{"seed": "x"}', "seed must be a whole number"),
    ('{"gaps": [["2024-01-03", "soon"]]}', "gaps, spikes and invalid must hold bar times"),
])
def test_synthetic_options_are_checked_by_the_providers_own_rules(admin_client, options, message):
    response = post_instrument(admin_client, provider_options=options)
    assert response.status_code == 200
    assert message in " ".join(response.context["adminform"].form.errors["provider_options"])


def test_the_dashboards_stale_series_read_their_instants_in_utc(admin_client):
    HealthCheckRun.objects.create(status="warning", results={"stale_series": {"count": 1, "series": [{
        "symbol": "BTC-USD", "timeframe": "1h", "hours_stale": 34.0, "last_bar": "2024-01-04T23:00:00+00:00",
        "expected_bar": "2024-01-06T00:00:00+00:00", "due_at": "2024-01-05T02:00:00+00:00"}]}})
    page = admin_client.get(reverse("admin:integrity-dashboard")).content.decode()
    assert "last bar 2024-01-04 23:00 UTC" in page
    assert "expected 2024-01-06 00:00 UTC, due at the 2024-01-05 02:00 UTC backfill" in page
    assert "+00:00" not in page
