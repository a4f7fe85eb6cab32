"""Closures on every door: the API (``/api/v1/closures/``), the admin screen and ``manage.py
closures``: they record, list, edit and remove closures under the same rules (symbol on the
watchlist, end after start, at most 31 days) and send the instrument's series back to be re-read.
"""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from integrity.models import InstrumentClosure, SeriesStats
from tests.helpers import add_instrument, client_for, user_with, utc

pytestmark = pytest.mark.django_db

URL = "/api/v1/closures/"
OUTAGE = {"symbol": "AAPL", "start": "2024-03-13T13:30:00Z", "end": "2024-03-13T20:00:00Z",
          "reason": "exchange outage"}


@pytest.fixture
def instruments():
    add_instrument("AAPL", "equity", "XNYS", ("1d",))
    add_instrument("EURUSD", "forex", "24/5", ("1h",))
    add_instrument("GBPUSD", "forex", "24/5", ("1h", "1d"))


@pytest.fixture
def api(instruments):
    perms = [f"{verb}_instrumentclosure" for verb in ("view", "add", "change", "delete")]
    return client_for(user_with(*perms))


def manage(*args) -> str:
    out = StringIO()
    call_command("closures", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


# --- API -----------------------------------------------------------------------------------------

def test_api_records_a_closure(api):
    response = api.post(URL, OUTAGE, format="json")
    assert response.status_code == 201, response.content
    closure = InstrumentClosure.objects.get()
    assert (closure.symbol, closure.start, closure.end, closure.reason) == (
        "AAPL", utc(2024, 3, 13, 13, 30), utc(2024, 3, 13, 20), "exchange outage")
    assert closure.created_by == "api:u"


def test_api_records_the_same_closure_once(api):
    api.post(URL, OUTAGE, format="json")
    again = api.post(URL, OUTAGE, format="json")
    assert again.status_code == 200 and InstrumentClosure.objects.count() == 1


@pytest.mark.parametrize(("change", "field"), [
    ({"end": "2024-03-13T13:30:00Z"}, "end"),  # end == start
    ({"end": "2024-03-12T13:30:00Z"}, "end"),  # end before start
    ({"end": "2024-05-13T13:30:00Z"}, "end"),  # longer than 31 days
    ({"symbol": "NOPE"}, "symbol"),
    ({"start": "yesterday"}, "start"),
    ({"start": None}, "start"),
])
def test_api_refuses_a_bad_closure_with_400_naming_the_field(api, change, field):
    response = api.post(URL, {**OUTAGE, **change}, format="json")
    assert response.status_code == 400 and field in response.json(), response.content
    assert not InstrumentClosure.objects.exists()


def test_api_filters_closures_by_symbol(api):
    api.post(URL, OUTAGE, format="json")
    api.post(URL, {**OUTAGE, "symbol": "EURUSD"}, format="json")
    listed = api.get(URL, {"symbol": "EURUSD"}).json()
    assert [row["symbol"] for row in listed["results"]] == ["EURUSD"]


def test_api_refuses_an_empty_filter(api):
    assert api.get(URL, {"symbol": ""}).status_code == 400


def test_api_edits_a_closure_under_the_same_rules(api):
    closure_id = api.post(URL, OUTAGE, format="json").json()["id"]
    assert api.patch(f"{URL}{closure_id}/", {"end": "2024-03-13T18:00:00Z"}, format="json").status_code == 200
    assert InstrumentClosure.objects.get().end == utc(2024, 3, 13, 18)
    refused = api.patch(f"{URL}{closure_id}/", {"end": "2024-03-13T12:00:00Z"}, format="json")
    assert refused.status_code == 400 and "end" in refused.json()


def test_api_refuses_to_edit_a_closure_into_one_already_recorded(api):
    api.post(URL, OUTAGE, format="json")
    other = api.post(URL, {**OUTAGE, "end": "2024-03-13T18:00:00Z"}, format="json").json()["id"]
    refused = api.patch(f"{URL}{other}/", {"end": OUTAGE["end"]}, format="json")
    assert refused.status_code == 400, refused.content
    assert InstrumentClosure.objects.get(pk=other).end == utc(2024, 3, 13, 18)


def test_api_deletes_a_closure(api):
    closure_id = api.post(URL, OUTAGE, format="json").json()["id"]
    assert api.delete(f"{URL}{closure_id}/").status_code == 204
    assert not InstrumentClosure.objects.exists()


def test_api_recording_needs_the_add_permission(instruments):
    viewer = client_for(user_with("view_instrumentclosure"))
    assert viewer.get(URL).status_code == 200
    assert viewer.post(URL, OUTAGE, format="json").status_code == 403


def test_recording_a_closure_sends_the_series_back_to_be_rescanned(api):
    SeriesStats.objects.create(symbol="AAPL", timeframe="1d", last_scanned_id=99, last_scanned_ts=utc(2024, 6, 1))
    api.post(URL, OUTAGE, format="json")
    stats = SeriesStats.objects.get()
    assert (stats.last_scanned_id, stats.last_scanned_ts) == (None, utc(2024, 3, 13, 13, 30))


# --- admin ---------------------------------------------------------------------------------------

ADMIN = "/admin/integrity/instrumentclosure/"


def admin_form(**overrides):
    return {"symbol": "AAPL", "start_0": "2024-03-13", "start_1": "13:30:00", "end_0": "2024-03-13",
            "end_1": "20:00:00", "reason": "exchange outage", **overrides}


def test_admin_records_a_closure(admin_client, instruments):
    response = admin_client.post(f"{ADMIN}add/", admin_form())
    assert response.status_code == 302, response.content.decode()[:2000]
    closure = InstrumentClosure.objects.get()
    assert (closure.start, closure.end, closure.created_by) == (utc(2024, 3, 13, 13, 30), utc(2024, 3, 13, 20),
                                                               "admin:root")


@pytest.mark.parametrize(("overrides", "message"), [
    ({"end_1": "13:00:00"}, "end must be after start"),
    ({"symbol": "NOPE"}, "unknown instrument"),
    ({"end_0": "2024-05-13"}, "at most 31 days"),
])
def test_admin_refuses_a_bad_closure_naming_the_problem(admin_client, instruments, overrides, message):
    response = admin_client.post(f"{ADMIN}add/", admin_form(**overrides))
    assert response.status_code == 200 and message in response.content.decode()
    assert not InstrumentClosure.objects.exists()


def test_admin_refuses_a_closure_already_recorded(admin_client, instruments):
    admin_client.post(f"{ADMIN}add/", admin_form())
    again = admin_client.post(f"{ADMIN}add/", admin_form())
    assert again.status_code == 200 and "already exists" in again.content.decode()
    assert InstrumentClosure.objects.count() == 1


def test_admin_lists_edits_and_deletes_closures(admin_client, instruments):
    admin_client.post(f"{ADMIN}add/", admin_form())
    closure = InstrumentClosure.objects.get()
    assert "exchange outage" in admin_client.get(ADMIN).content.decode()
    edited = admin_client.post(f"{ADMIN}{closure.pk}/change/", admin_form(end_1="18:00:00"))
    assert edited.status_code == 302 and InstrumentClosure.objects.get().end == utc(2024, 3, 13, 18)
    deleted = admin_client.post(f"{ADMIN}{closure.pk}/delete/", {"post": "yes"})
    assert deleted.status_code == 302 and not InstrumentClosure.objects.exists()


# --- manage.py closures --------------------------------------------------------------------------

def test_command_adds_lists_and_removes_a_closure(instruments):
    assert "recorded: #" in manage("add", "AAPL", "--start", "2024-03-13T13:30Z", "--end", "2024-03-13T20:00Z",
                                   "--reason", "outage")
    rows = json.loads(manage("list", "--format", "json"))
    assert [(r["symbol"], r["start"], r["end"], r["reason"], r["created_by"]) for r in rows] == [
        ("AAPL", "2024-03-13T13:30:00+00:00", "2024-03-13T20:00:00+00:00", "outage", "cli")]
    assert "1 closure(s) removed" in manage("remove", str(rows[0]["id"]))
    assert not InstrumentClosure.objects.exists()


def test_command_preset_records_christmas_and_new_year_for_forex_instruments(instruments):
    # 2024-01-01 Mon, 2024-12-25 Wed, 2025-01-01 Wed, 2025-12-25 Thu: 4 weekdays x 2 forex instruments.
    assert "8 closure(s) recorded" in manage("add", "--preset", "forex-holidays", "--years", "2024-2025")
    eurusd = InstrumentClosure.objects.filter(symbol="EURUSD").order_by("start")
    assert [(c.start, c.end) for c in eurusd] == [  # each the forex trading day: 17:00 New York to 17:00
        (utc(2023, 12, 31, 22), utc(2024, 1, 1, 22)),
        (utc(2024, 12, 24, 22), utc(2024, 12, 25, 22)),
        (utc(2024, 12, 31, 22), utc(2025, 1, 1, 22)),
        (utc(2025, 12, 24, 22), utc(2025, 12, 25, 22)),
    ]
    assert not InstrumentClosure.objects.filter(symbol="AAPL").exists()


def test_command_preset_is_idempotent(instruments):
    manage("add", "--preset", "forex-holidays", "--years", "2024")
    assert "0 closure(s) recorded, 4 already there" in manage("add", "--preset", "forex-holidays", "--years", "2024")


def test_command_preset_skips_weekend_holidays(instruments):
    manage("add", "--preset", "forex-holidays", "--years", "2027", "--symbol", "EURUSD")
    # 2027: New Year's Day is a Friday, Christmas a Saturday (no forex trading day to close).
    assert [c.reason for c in InstrumentClosure.objects.all()] == ["New Year's Day 2027 (forex-holidays)"]


@pytest.mark.parametrize("args", [
    ("add", "AAPL", "--start", "2024-03-13T20:00Z", "--end", "2024-03-13T13:30Z"),
    ("add", "NOPE", "--start", "2024-03-13", "--end", "2024-03-14"),
    ("add", "AAPL", "--start", "not-a-date", "--end", "2024-03-14"),
    ("add", "--preset", "forex-holidays"),
    ("add", "--preset", "forex-holidays", "--years", "2027-2024"),
    ("add", "--preset", "forex-holidays", "--years", "2024", "--symbol", "AAPL"),
    ("remove", "12345"),
])
def test_command_refuses_bad_arguments_with_exit_2(instruments, args):
    with pytest.raises(CommandError) as error:
        manage(*args)
    assert error.value.returncode == 2
    assert not InstrumentClosure.objects.exists()
