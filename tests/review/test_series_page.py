"""The per-series page: a coverage calendar (per UTC day, the share of the calendar's expected bars
stored; a missing session red, each day linking its candles) over a validated range, and the recent bars."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import timedelta
from html import unescape

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from integrity.backfill import run_backfill
from integrity.charts.coverage import COLOURS
from integrity.models import InstrumentClosure
from tests.helpers import add_instrument, staff_client, utc

pytestmark = pytest.mark.django_db

SVG = "{http://www.w3.org/2000/svg}"
RANGE = {"start": "2024-01-01", "end": "2024-01-14"}


def page_url(symbol="AAPL", timeframe="1h") -> str:
    return reverse("admin:integrity-series", args=[symbol, timeframe])


@pytest.fixture
def aapl():
    """AAPL 1h on XNYS (7 bars a session in January), 2024-01-02 to 2024-01-12: the session of
    Tuesday 2024-01-09 missing whole, 2024-01-10 missing its 15:00 and 16:00 bars."""
    add_instrument("AAPL", "equity", "XNYS", gaps=[["2024-01-09T14:00:00Z", "2024-01-09T21:00:00Z"],
                                                  ["2024-01-10T15:00:00Z", "2024-01-10T17:00:00Z"]])
    run_backfill("AAPL", "1h", start=utc(2024, 1, 2), end=utc(2024, 1, 13), now=utc(2024, 1, 13, 1))


def cells(html: str) -> dict[str, ET.Element]:
    svg = re.search(r'<svg[^>]*class="coverage-calendar".*?</svg>', html, re.S).group(0)
    return {r.get("data-day"): r for r in ET.fromstring(svg).iter(SVG + "rect") if r.get("data-day")}


def get(client, url=None, **params):
    return client.get(url or page_url(), params or RANGE)


def test_a_missing_session_is_a_red_cell(admin_client, aapl):
    day = cells(get(admin_client).content.decode())["2024-01-09"]
    assert "state-missing" in day.get("class") and day.get("fill") == COLOURS["missing"]
    assert (day.get("data-expected"), day.get("data-present")) == ("7", "0")


def test_a_day_the_instrument_was_closed_is_grey_not_red(admin_client, aapl):
    InstrumentClosure.objects.create(symbol="AAPL", start=utc(2024, 1, 9), end=utc(2024, 1, 10), reason="outage")
    day = cells(get(admin_client).content.decode())["2024-01-09"]
    assert "state-closed" in day.get("class") and day.get("fill") == COLOURS["closed"]


def test_a_day_short_of_two_bars_is_partial_and_says_so_on_hover(admin_client, aapl):
    day = cells(get(admin_client).content.decode())["2024-01-10"]
    assert "state-partial" in day.get("class") and day.get("fill") == COLOURS["partial-mid"]
    assert day.find(SVG + "title").text == "Wed 2024-01-10: 5 of 7 expected bars stored"


def test_complete_sessions_weekends_and_days_before_the_first_bar_are_told_apart(admin_client, aapl):
    days = cells(get(admin_client).content.decode())
    state = {day: re.search(r"state-(\w+)", rect.get("class")).group(1) for day, rect in days.items()}
    assert len(days) == 14
    assert state["2024-01-01"] == "before"  # New Year, and before the first stored bar
    assert [state[f"2024-01-{d:02}"] for d in (2, 5, 6, 7, 8, 12, 13)] == \
        ["full", "full", "closed", "closed", "full", "full", "closed"]


def test_the_summary_counts_bars_and_days(admin_client, aapl):
    html = get(admin_client).content.decode()
    summary = re.sub(r"\s+", " ", re.search(r'id="coverage-summary">(.*?)</p>', html, re.S).group(1))
    assert summary.startswith("54 of 63 expected bars stored (85.71%)")
    assert "7 day(s) complete, 1 partial, <strong>1 missing</strong>" in summary


def test_a_short_day_links_the_candles_of_that_day(admin_client, aapl):
    html = get(admin_client).content.decode()
    table = re.search(r'id="short-days".*?</table>', html, re.S).group(0)
    links = [unescape(h) for h in re.findall(r'href="([^"]+)"', table)]
    assert len(links) == 2  # 2024-01-10 then 2024-01-09, newest first
    listed = admin_client.get(links[0]).context["cl"].result_list
    assert sorted(c.ts.hour for c in listed) == [14, 17, 18, 19, 20]


def test_the_recent_bars_are_charted_on_the_session_axis(admin_client, aapl):
    html = get(admin_client).content.decode()
    chart = re.search(r'id="recent-chart".*?</svg>', html, re.S).group(0)
    assert 'data-axis="session"' in chart and 'class="y-label"' in chart and 'class="x-label"' in chart


def test_without_a_range_it_shows_the_last_90_days_to_today(admin_client, aapl):
    days = sorted(cells(admin_client.get(page_url()).content.decode()))
    today = timezone.now().date()
    assert len(days) == 90 and days[-1] == today.isoformat()
    assert days[0] == (today - timedelta(days=89)).isoformat()


@pytest.mark.parametrize("params,reason", [
    ({"start": "yesterday"}, "start must be a date written YYYY-MM-DD"),
    ({"start": "2024-13-01"}, "start must be a date written YYYY-MM-DD"),
    ({"end": "2024-1-5"}, "end must be a date written YYYY-MM-DD"),
    ({"start": "2024-02-01", "end": "2024-01-01"}, "end (2024-01-01) is before start (2024-02-01)"),
    ({"start": "2020-01-01", "end": "2024-01-01"}, "at most 731 days at a time"),
    ({"start": "0001-01-01"}, "start must be in 1970 or later"),
    ({"start": "2024-01-01\x00"}, "start must be a date written YYYY-MM-DD"),
])
def test_a_bad_range_is_a_400_that_says_why(admin_client, aapl, params, reason):
    response = admin_client.get(page_url(), params)
    assert response.status_code == 400
    assert reason in unescape(response.content.decode())


def test_an_unknown_series_is_a_404(admin_client, aapl):
    assert admin_client.get(page_url("NOPE")).status_code == 404
    assert admin_client.get(page_url("AAPL", "7m")).status_code == 404


def test_the_page_needs_the_permission_to_view_candles(aapl):
    client = staff_client("view_dataanomaly")
    assert client.get(page_url()).status_code == 403


def test_the_query_count_does_not_grow_with_the_range(admin_client, aapl):
    get(admin_client)  # warm the session and the calendar
    with CaptureQueriesContext(connection) as two_weeks:
        get(admin_client)
    with CaptureQueriesContext(connection) as two_years:
        get(admin_client, start="2022-06-01", end="2024-05-31")
    assert len(two_years) == len(two_weeks)
