"""The on-call walk-through (issue 13), in a real browser (headless Chromium driven by Playwright):
dashboard → a stale series → its anomaly → its chart → Re-fetch this range → the execution → back to
the anomaly, resolved; then the series' stale anomaly acknowledged with a note. Every page is saved as a screenshot (the folder is printed; ``REVIEW_SCREENS_DIR``
chooses it) for a person to look at; docs/screens/ holds some of them.

The queue runs synchronously here (django-q2's ``sync``), so the repair has run when its POST returns,
as a worker would have run it a moment later.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

import pytest
from django.contrib.auth.models import User
from django.db import connections

from integrity.backfill import run_backfill
from integrity.health.job import run_health_monitoring
from integrity.models import Candle, DataAnomaly
from tests.helpers import add_instrument, utc
from tests.review.test_browser import ARGS, CHROMIUM

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)"),
]

PASSWORD = "correct-horse-battery"


@pytest.fixture
def screens(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("REVIEW_SCREENS_DIR") or tmp_path_factory.mktemp("review-screens"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\nwalk-through screenshots: {folder}")
    return folder


@pytest.fixture
def page(monkeypatch):
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        # The admin's navigation sidebar closed: the screenshots show the page, not the menu.
        page.add_init_script("localStorage.setItem('django.admin.navSidebarIsOpen', 'false')")
        page.set_default_timeout(30_000)
        yield page
        browser.close()


@pytest.fixture
def synchronous_queue(monkeypatch):
    from django_q.conf import Conf

    monkeypatch.setattr(Conf, "SYNC", True)


def a_stale_series_with_a_gap() -> DataAnomaly:
    """BTC-USD 1h loaded for 2024-01-01..05, five bars of 01-02 deleted by another writer, then the health
    job as of 2024-01-06 12:00 (no automatic repair): the series is stale and has an open gap."""
    User.objects.create_superuser("oncall", "oncall@example.com", PASSWORD)
    add_instrument()
    assert run_backfill("BTC-USD", "1h", start=utc(2024, 1, 1), end=utc(2024, 1, 5), now=utc(2024, 1, 5)).ok
    rows = Candle.objects.filter(ts__gte=utc(2024, 1, 2), ts__lt=utc(2024, 1, 2, 5))
    rows._raw_delete(rows.db)
    report = run_health_monitoring(as_of=utc(2024, 1, 6, 12))
    assert report.stale_series.count == 1
    return DataAnomaly.objects.get(anomaly_type="gap", resolution_status="open")


def test_an_on_call_engineer_walks_from_a_stale_series_to_its_repaired_anomaly(
        live_server, page, screens, synchronous_queue, settings):
    settings.REPAIR_AUTO = False  # the engineer repairs it, not the health job
    try:
        walk(live_server, page, screens)
    finally:
        connections.close_all()  # see test_browser.py: PostgreSQL must be able to drop the test database


def shot(page, screens: Path, name: str) -> None:
    page.screenshot(path=screens / f"{name}.png", full_page=True)


def walk(live_server, page, screens: Path) -> None:
    gap = a_stale_series_with_a_gap()

    page.goto(f"{live_server.url}/admin/login/")
    page.fill("#id_username", "oncall")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.click("text=Dashboard")
    page.wait_for_url("**/integrity/dashboard/")
    stale = page.locator("#stale-series a.series-anomalies")
    assert stale.inner_text() == "BTC-USD 1h"
    shot(page, screens, "01-dashboard")

    stale.click()  # the series' open anomalies
    page.wait_for_url("**/dataanomaly/?**")
    rows = page.locator("#result_list tbody tr")
    assert rows.count() == DataAnomaly.objects.filter(symbol="BTC-USD", resolution_status="open").count() >= 2
    shot(page, screens, "02-series-anomalies")

    rows.filter(has_text="gap").locator("th a, td a").first.click()  # its anomaly
    page.wait_for_url(f"**/dataanomaly/{gap.pk}/change/**")
    assert urlparse(page.url).path == f"/admin/integrity/dataanomaly/{gap.pk}/change/"
    tools = page.locator(".object-tools").text_content()
    assert all(label in tools for label in ("Acknowledge", "Resolve", "Re-fetch this range"))
    assert page.locator("input[name=_save]").count() == 0
    shot(page, screens, "03-anomaly")

    chart = page.locator("svg.anomaly-chart")  # its chart: the gap's period shaded among the bars around it
    assert chart.is_visible() and chart.locator("rect.anomaly-period").count() == 1
    chart.screenshot(path=screens / "04-chart.png")

    page.click("a.object-action-repair_this")
    page.wait_for_url("**/repair/")
    assert "Re-fetch BTC-USD 1h from 2024-01-01" in page.locator("p.explanation").inner_text()
    shot(page, screens, "05-repair-confirm")

    page.click("input[name=confirm]")  # the queue runs it at once here
    page.wait_for_url("**/backfillstate/**")
    message = page.locator(".messagelist").inner_text()
    assert f"Repair of anomaly #{gap.pk} ran as execution" in message
    assert "completed; the anomaly is now resolved (fixed)." in message
    assert urlparse(page.url).path.startswith("/admin/integrity/backfillstate/")
    assert "completed" in page.locator(".field-status .readonly").inner_text().lower()
    shot(page, screens, "06-execution")

    page.click("a.repaired-anomaly")  # back to the anomaly
    page.wait_for_url(f"**/dataanomaly/{gap.pk}/change/")
    assert urlparse(page.url).path == f"/admin/integrity/dataanomaly/{gap.pk}/change/"
    assert page.locator(".field-resolution_status .readonly").inner_text().lower() == "resolved"
    assert "fixed" in page.locator(".field-resolution_reason .readonly").inner_text().lower()
    assert page.locator("a.object-action").count() == 0  # nothing left to do on it
    shot(page, screens, "07-anomaly-resolved")

    gap.refresh_from_db()
    assert (gap.resolution_status, gap.resolution_reason, gap.resolved_by) == ("resolved", "fixed", "repair")

    # The series is still stale (the re-fetch filled the gap only): the engineer takes it in hand.
    page.goto(f"{live_server.url}/admin/integrity/dashboard/")
    page.click("#stale-series a.series-anomalies")
    page.wait_for_url("**/dataanomaly/?**")
    page.locator("#result_list tbody tr").filter(has_text="Stale").locator("th a, td a").first.click()
    page.wait_for_url("**/change/**")
    page.click("a.object-action-acknowledge_this")
    page.wait_for_url("**/acknowledge/")
    page.fill("textarea[name=note]", "vendor feed paused since Jan 5; ticket OPS-42")
    shot(page, screens, "08-acknowledge")
    page.click("input[name=confirm]")
    page.wait_for_url("**/change/")
    assert page.locator(".messagelist").inner_text().startswith("Acknowledged 1 (#")
    assert page.locator(".field-resolution_status .readonly").inner_text().lower() == "acknowledged"
    assert "ticket OPS-42" in page.locator(".field-resolution_note .readonly").inner_text()
    assert page.locator("a.object-action").all_text_contents() == ["Resolve"]
    shot(page, screens, "09-stale-acknowledged")

    assert sorted(p.name for p in screens.glob("*.png")) == [
        "01-dashboard.png", "02-series-anomalies.png", "03-anomaly.png", "04-chart.png", "05-repair-confirm.png",
        "06-execution.png", "07-anomaly-resolved.png", "08-acknowledge.png", "09-stale-acknowledged.png"]
