"""A real browser (headless Chromium from Debian, driven by Playwright) walks the admin review flow.

Needs /usr/bin/chromium (CI installs Debian's `chromium`); skipped with the reason otherwise.
"""

from __future__ import annotations

import os
import shutil

import pytest
from django.contrib.auth.models import User
from django.db import connections

from integrity.backfill import run_backfill
from integrity.models import DataAnomaly
from integrity.quality.anomalies import detect_data_anomalies
from tests.helpers import add_instrument, utc

CHROMIUM = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or "/usr/bin/chromium"

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)"),
]

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture
def page(monkeypatch):
    # Playwright's sync API runs an event loop; scoped to this test so no later process inherits it.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page()
        page.set_default_timeout(20_000)
        yield page
        browser.close()


def test_a_reviewer_logs_in_opens_the_dashboard_and_acknowledges_an_anomaly(live_server, page):
    try:
        review_flow(live_server, page)
    finally:
        # While Playwright's sync API runs, the body's ORM calls open a connection in a context the
        # fixture teardown cannot see; close it here, or PostgreSQL cannot drop the test database at
        # the end of the session ("being accessed by other users").
        connections.close_all()


def review_flow(live_server, page):
    User.objects.create_superuser("reviewer", "r@example.com", "correct-horse-battery")
    add_instrument(gaps=[["2024-01-03T10:00:00Z", "2024-01-03T15:00:00Z"]])
    run_backfill("BTC-USD", "1h", start=utc(2024, 1, 1), end=utc(2024, 1, 6), now=utc(2024, 1, 6, 1))
    detect_data_anomalies(now=utc(2024, 1, 6, 1), types=["gap"])
    gap = DataAnomaly.objects.get(anomaly_type="gap")

    page.goto(f"{live_server.url}/admin/login/")
    page.fill("#id_username", "reviewer")
    page.fill("#id_password", "correct-horse-battery")
    page.click("input[type=submit]")
    page.click("text=Dashboard")
    assert f"{gap.severity}\t1" in page.locator("#anomalies-by-severity").inner_text()

    page.goto(f"{live_server.url}/admin/integrity/dataanomaly/{gap.pk}/change/")
    chart = page.locator("svg.anomaly-chart")
    assert chart.is_visible() and chart.locator("rect.anomaly-period").count() == 1
    assert chart.locator("rect.missing-bars").count() == 1 and chart.locator("line").count() > 50

    page.goto(f"{live_server.url}/admin/integrity/dataanomaly/")
    page.check(f"input[name=_selected_action][value='{gap.pk}']")
    page.select_option("select[name=action]", "acknowledge")
    page.click("button[name=index]")
    assert f"Acknowledged 1 (#{gap.pk}, by reviewer at" in page.locator(".messagelist").inner_text()
    assert page.locator(f"#result_list input[value='{gap.pk}']").count() == 0  # it left the open list
    gap.refresh_from_db()
    assert (gap.resolution_status, gap.acknowledged_by) == ("acknowledged", "reviewer")
    assert gap.acknowledged_at is not None


def test_the_api_docs_render_without_any_other_host(live_server, page):
    foreign = []

    def only_local(route):
        if route.request.url.startswith(live_server.url):
            route.continue_()
        else:
            foreign.append(route.request.url)
            route.abort()

    page.route("**/*", only_local)
    page.goto(f"{live_server.url}/api/docs/")
    page.wait_for_selector(".opblock-summary")
    assert page.locator(".opblock-summary-path", has_text="/api/v1/anomalies/").count() >= 1
    assert foreign == []

