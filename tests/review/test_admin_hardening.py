"""Hand-made admin URLs and form values are a 400 page or a field error, never a 500 (issue 10, points 8, 6).

A list accepts only the query string its own links make: the parameters its list filters and date
hierarchy consume, with values the database can store and read. A NUL (``%00``) reaches a 500 on
PostgreSQL only (SQLite stores it), so every test here runs on both databases.
"""

from __future__ import annotations

import html
import re
from datetime import timedelta
from urllib.parse import parse_qsl

import pytest
from django.contrib import admin
from django.contrib.admin.templatetags.admin_list import date_hierarchy, result_headers
from django.urls import reverse
from django.utils import timezone

from integrity.models import DataAnomaly, Instrument
from tests.helpers import FACTORIES, changelist, make_anomaly, post_instrument, utc

pytestmark = pytest.mark.django_db

MODELS = list(FACTORIES)  # every integrity list


def model_admin(model: str):
    [found] = [ma for m, ma in admin.site._registry.items()
               if m._meta.app_label == "integrity" and m._meta.model_name == model]
    return found


def test_every_integrity_list_is_covered():
    registered = {m._meta.model_name for m in admin.site._registry if m._meta.app_label == "integrity"}
    assert registered == set(MODELS)


def hierarchy_field(model: str) -> str:
    """The list's date hierarchy, or for the candle list (none: it would scan the table) its time field."""
    return model_admin(model).date_hierarchy or "ts"


def get(client, model: str, query: str):
    return client.get(f"{changelist(model)}?{query}")


def reason_of(response) -> str:
    assert response.status_code == 400, response.status_code
    text = re.search(r'<p class="errornote">(.*?)</p>', response.content.decode(), re.S).group(1)
    return html.unescape(text)


class TestTheIssuesQueries:
    """The four URLs of the issue, on every integrity list: a 400 page that says why."""

    @pytest.mark.parametrize("model", MODELS)
    @pytest.mark.parametrize("query,because", [
        ("symbol__exact=%00", 'query parameter "symbol__exact": text may not contain the NUL character'),
        ("symbol__regex=(", "this list cannot be filtered by symbol__regex: its filters take "),
        ("symbol__regex=%5C", "this list cannot be filtered by symbol__regex: its filters take "),
    ])
    def test_a_symbol_lookup_the_list_does_not_offer_is_a_400(self, admin_client, model, query, because):
        FACTORIES[model]()
        assert because in reason_of(get(admin_client, model, query))

    @pytest.mark.parametrize("model", MODELS)
    def test_a_year_past_any_date_is_a_400(self, admin_client, model):
        FACTORIES[model]()
        field = hierarchy_field(model)
        reason = reason_of(get(admin_client, model, f"{field}__year=9999999999999999999999"))
        if model_admin(model).date_hierarchy:
            assert f"the date hierarchy's {field}__year, __month and __day must name a date in the years 1 to 9998" \
                in reason
        else:
            assert f"this list cannot be filtered by {field}__year" in reason

    def test_the_anomaly_list_refuses_the_issues_detected_at_year(self, admin_client):
        make_anomaly()
        reason = reason_of(get(admin_client, "dataanomaly", "detected_at__year=9999999999999999999999"))
        assert "detected_at__year='9999999999999999999999'" in reason

    def test_the_page_names_the_lookups_the_list_does_offer(self, admin_client):
        make_anomaly()
        reason = reason_of(get(admin_client, "dataanomaly", "symbol__regex=("))
        for offered in ("severity__exact", "resolution_status__exact", "anomaly_type__exact", "timeframe__exact",
                        "detected_at__gte", "detected_at__year", "q (search)"):
            assert offered in reason
        assert reverse("admin:integrity_dataanomaly_changelist") in get(admin_client, "dataanomaly",
                                                                        "symbol__regex=(").content.decode()


class TestOtherHandMadeQueries:
    @pytest.mark.parametrize("model,query,because", [
        ("dataanomaly", "severity__gte=a", "cannot be filtered by severity__gte"),  # an offered field, not this lookup
        ("dataanomaly", "id__gt=99999999999999999999999", "cannot be filtered by id__gt"),
        ("dataanomaly", "detected_at__month=1", "cannot be filtered by detected_at__month"),  # no year: not the hierarchy's
        ("dataanomaly", "description__icontains=x", "cannot be filtered by description__icontains"),
        ("candle", "symbol=BTC-USD", "cannot be filtered by symbol"),
        ("healthcheckrun", "symbol__exact=x", "cannot be filtered by symbol__exact"),
        ("dataanomaly", "severity__exact=%00", 'query parameter "severity__exact": text may not contain the NUL'),
        ("backfillstate", "status__exact=a%00b", 'query parameter "status__exact": text may not contain the NUL'),
        ("dataanomaly", "q=BTC%00", 'query parameter "q": text may not contain the NUL'),
        ("dataanomaly", "%00=1", "text may not contain the NUL"),
        ("dataanomaly", "detected_at__year=9999", "must name a date in the years 1 to 9998"),
        ("dataanomaly", "detected_at__year=0", "must name a date in the years 1 to 9998"),
        ("dataanomaly", "detected_at__year=abc", "(whole numbers)"),
        ("dataanomaly", "detected_at__year=2024&detected_at__month=13", "month must be in 1..12"),
        ("dataanomaly", "detected_at__year=2023&detected_at__month=2&detected_at__day=29",
         "day is out of range for month"),
        ("symbolfailuretracking", "alert_sent__exact=banana", "a filter value is not valid: "),
        ("instrument", "created_at__gte=garbage", "a filter value is not valid: "),
        ("candle", "ts__gte=99999-01-01", "a filter value is not valid: "),
    ])
    def test_it_is_a_400_that_says_why(self, admin_client, model, query, because):
        FACTORIES[model]()
        assert because in reason_of(get(admin_client, model, query))

    def test_a_page_past_the_end_is_a_400_that_says_so(self, admin_client, monkeypatch):
        monkeypatch.setattr(model_admin("dataanomaly"), "list_per_page", 1)
        make_anomaly(), make_anomaly()
        assert get(admin_client, "dataanomaly", "p=2").status_code == 200
        assert reason_of(get(admin_client, "dataanomaly", "p=3")) == \
            "This list cannot be shown for this address: page '3' of this list does not exist."

    @pytest.mark.parametrize("ids", [["abc"], ["1\x00"], ["99999999999999999999999"], [""]])
    def test_an_action_on_ids_that_are_not_ids_is_a_400_and_changes_nothing(self, admin_client, ids):
        anomaly = make_anomaly()
        response = admin_client.post(changelist("dataanomaly"), {"action": "resolve",
                                                                 "_selected_action": [str(anomaly.pk), *ids]})
        assert "is not an id" in reason_of(response)
        assert DataAnomaly.objects.get(pk=anomaly.pk).resolution_status == "open"


def rows_for_every_choice(model: str) -> None:
    """Rows on three days of two years, so every filter and every level of the date hierarchy has choices."""
    field = hierarchy_field(model)
    for when in (utc(2023, 5, 1, 12), utc(2024, 1, 15, 12), utc(2024, 1, 16, 12), timezone.now() - timedelta(hours=1)):
        row = FACTORIES[model]()
        type(row).objects.filter(pk=row.pk).update(**{field: when})
    if model == "dataanomaly":
        DataAnomaly.objects.filter(pk=DataAnomaly.objects.order_by("pk").first().pk).update(
            severity="critical", resolution_status="acknowledged", anomaly_type="outlier")
    if model == "instrument":
        Instrument.objects.filter(pk=Instrument.objects.order_by("pk").first().pk).update(
            provider="binance", active=False, calendar="XNYS", asset_class="equity")


def filter_links(cl) -> list[str]:
    return sorted({choice["query_string"] for spec in cl.filter_specs for choice in spec.choices(cl)})


def links_of_the_list(cl) -> list[str]:
    """The query strings the list page links to, but the date hierarchy's: filter choices, sorting,
    the next page, facets."""
    headers = list(result_headers(cl))
    links = filter_links(cl)
    links += [header["url_primary"] for header in headers if header.get("sortable")]
    links += [header["url_remove"] for header in headers if header.get("url_remove")]
    links += [cl.get_query_string({"p": 2}), cl.add_facet_link, cl.remove_facet_link]
    return sorted({link for link in links if link})


class TestEveryLinkTheListMakesStillWorks:
    @pytest.mark.parametrize("model", MODELS)
    def test_every_filter_choice_sort_and_page_link_answers_200(self, admin_client, model, monkeypatch):
        monkeypatch.setattr(model_admin(model), "list_per_page", 2)
        rows_for_every_choice(model)
        links = links_of_the_list(admin_client.get(changelist(model), follow=True).context["cl"])
        assert len(links) > 5
        pages = {link: admin_client.get(changelist(model) + link) for link in links}
        for link, response in pages.items():
            assert response.status_code == 200, (link, response.content.decode()[:300])
        # From a filtered, sorted page, every filter choice again: a second filter on top of the first.
        filtered = next(link for link in links if "__exact=" in link or "__gte=" in link)
        sorted_and_filtered = next(link for link in links_of_the_list(pages[filtered].context["cl"]) if "o=" in link)
        for link in filter_links(admin_client.get(changelist(model) + sorted_and_filtered).context["cl"]):
            assert admin_client.get(changelist(model) + link).status_code == 200, (sorted_and_filtered, link)

    @pytest.mark.parametrize("model", [m for m in MODELS if model_admin(m).date_hierarchy])
    def test_every_date_hierarchy_link_answers_200_down_to_a_day(self, admin_client, model):
        rows_for_every_choice(model)
        level, days = ["?"], []
        while level:
            below = []
            for link in level:
                response = admin_client.get(changelist(model) + link, follow=True)
                assert response.status_code == 200, (link, response.content.decode()[:300])
                hierarchy = date_hierarchy(response.context["cl"])
                if hierarchy.get("back"):
                    assert admin_client.get(changelist(model) + hierarchy["back"]["link"]).status_code == 200
                if "__day=" in link:
                    days.append(link)
                else:
                    below += [choice["link"] for choice in hierarchy["choices"]]
            level = below
        field = model_admin(model).date_hierarchy
        day = {(f"{field}__year", "2024"), (f"{field}__month", "1"), (f"{field}__day", "16")}
        assert any(day <= set(parse_qsl(link[1:])) for link in days)  # beside a status filter the list keeps

    @pytest.mark.parametrize("model", [m for m in MODELS if model_admin(m).search_fields])
    def test_search_answers_200(self, admin_client, model):
        FACTORIES[model]()
        for term in ("BTC", "x y", "(", "\\", "%", "'"):
            assert admin_client.get(changelist(model), {"q": term}).status_code == 200

    def test_the_dashboards_links_into_the_anomaly_list_answer_200(self, admin_client):
        make_anomaly(), make_anomaly(severity="critical", anomaly_type="outlier", resolution_status="acknowledged")
        page = admin_client.get(reverse("admin:integrity-dashboard")).content.decode()
        links = set(re.findall(r'href="(/admin/integrity/dataanomaly/\?[^"]+)"', page))
        assert len(links) >= 3
        for link in links:
            assert admin_client.get(link.replace("&amp;", "&")).status_code == 200


class TestFormsRefuseWhatTheDatabaseCannotStore:
    # provider_options JSON: the field error it gets
    OPTIONS_REFUSED = {
        '{"seed\\u0000": 1}':
            'JSON: a key in the top-level object ("seed\\u0000"): text may not contain the NUL character (\\u0000)',
        '{"seed": "1\\u0000"}': "JSON: seed: text may not contain the NUL character",
        '{"a": {"b": ["\\u0000"]}}': "JSON: a.b[0]: text may not contain the NUL character",
        '{"seed": "\\ud800"}': "JSON: seed: text must be valid Unicode",
        "[" * 100_000: "JSON nests deeper than 32 levels",
        "[" * 40 + "]" * 40: "nests deeper than 32 levels",
    }

    @pytest.mark.parametrize("field,value,message", [
        ("symbol", "ETH\x00USD", "Null characters are not allowed."),
        ("calendar", "24/7\x00", "Select a valid choice."),
        *(("provider_options", value, message) for value, message in OPTIONS_REFUSED.items()),
        ("quality_thresholds", '{"stale_hours": "\\u0000"}', "JSON: stale_hours: text may not contain the NUL"),
        ("timeframes", "1h\x00", "Select a valid choice."),
    ])
    def test_an_instrument_value_no_database_can_store_is_a_field_error(self, admin_client, field, value, message):
        response = post_instrument(admin_client, **{field: value})
        assert response.status_code == 200
        errors = response.context["adminform"].form.errors
        assert list(errors) == [field] and message in " ".join(errors[field])
        assert not Instrument.objects.exists()

    def test_an_anomaly_note_with_a_nul_is_a_field_error(self, admin_client):
        anomaly = make_anomaly()
        response = admin_client.post(reverse("admin:integrity_dataanomaly_resolve", args=[anomaly.pk]),
                                     {"reason": "fixed", "note": "checked\x00"})
        assert response.status_code == 200
        assert "Null characters are not allowed." in str(response.context["form"].errors)
        assert DataAnomaly.objects.get(pk=anomaly.pk).resolution_status == "open"
        assert DataAnomaly.objects.get(pk=anomaly.pk).resolution_note == ""

    def test_a_valid_instrument_still_saves_with_its_json(self, admin_client):
        response = post_instrument(admin_client, provider_options='{"seed": 7}',
                                        quality_thresholds='{"outlier_move": 0.3}')
        assert response.status_code == 302
        saved = Instrument.objects.get(symbol="ETH-USD")
        assert (saved.provider_options, saved.quality_thresholds) == ({"seed": 7}, {"outlier_move": 0.3})
