"""The admin pages link what they are about: an anomaly to its instrument, its candles, its executions
and its quarantined bars; an execution to the anomalies it produced and its symbol's failure tracking;
the dashboard's rows to what they count; an execution id is a link wherever it is shown. Every link is
followed: it must answer 200 with the object or rows it names."""

from __future__ import annotations

import re
import uuid
from html import unescape

import pytest
from django.urls import reverse

from integrity.backfill import create_backfill_state, run_backfill
from integrity.health.job import run_health_monitoring
from integrity.models import (
    AnomalyType,
    BackfillState,
    Candle,
    DataAnomaly,
    RejectedCandle,
    SeriesStats,
    SymbolFailureTracking,
)
from tests.helpers import FACTORIES, add_instrument, changelist, make_anomaly, utc


def field_link(html: str, field: str) -> str:
    """The first link in a detail page's read-only ``field``."""
    row = re.search(rf'class="[^"]*field-{field}[^"]*">(.*?)</div>\s*</div>', html, re.S)
    assert row, f"no field {field} on the page"
    return unescape(re.search(r'href="([^"]+)"', row.group(1)).group(1))


def field_links(html: str, field: str) -> list[str]:
    row = re.search(rf'class="[^"]*field-{field}[^"]*">(.*?)</div>\s*</div>', html, re.S)
    return [unescape(href) for href in re.findall(r'href="([^"]+)"', row.group(1))]


def section_links(html: str, element_id: str) -> list[str]:
    section = re.search(rf'id="{element_id}".*?</table>', html, re.S).group(0)
    return [unescape(href) for href in re.findall(r'href="([^"]+)"', section)]


def anomaly_page(client, anomaly) -> str:
    response = client.get(reverse("admin:integrity_dataanomaly_change", args=[anomaly.pk]))
    assert response.status_code == 200
    return response.content.decode()


def follow(client, url):
    response = client.get(url)
    assert response.status_code == 200, (url, response.content[:500])
    return response


def listed(response) -> list:
    return list(response.context["cl"].result_list)


@pytest.fixture
def series():
    """BTC-USD 1h, 2024-01-01 to 2024-01-04, with bars refused at 2024-01-02 05:00 and 09:00 (one
    execution, one invalid_ohlc anomaly)."""
    add_instrument(invalid=[utc(2024, 1, 2, 5).isoformat(), utc(2024, 1, 2, 9).isoformat()])
    run_backfill("BTC-USD", "1h", start=utc(2024, 1, 1), end=utc(2024, 1, 4))
    return BackfillState.objects.get()


pytestmark = [pytest.mark.django_db(transaction=True)]


# --- an anomaly's page ------------------------------------------------------------------------------


def test_an_anomaly_links_its_instrument(admin_client):
    instrument = add_instrument()
    url = field_link(anomaly_page(admin_client, make_anomaly()), "instrument")
    assert follow(admin_client, url).context["original"] == instrument


def test_an_anomaly_links_the_candles_around_its_period(admin_client, series):
    anomaly = make_anomaly(period_start=utc(2024, 1, 2, 12), period_end=utc(2024, 1, 2, 14))
    rows = listed(follow(admin_client, field_link(anomaly_page(admin_client, anomaly), "candles")))
    stamps = sorted(c.ts for c in rows)
    expected = Candle.objects.filter(symbol="BTC-USD", timeframe="1h", ts__gte=utc(2024, 1, 2, 2),
                                     ts__lt=utc(2024, 1, 3, 1))
    assert stamps == sorted(expected.values_list("ts", flat=True)) and stamps


def test_an_anomaly_without_a_period_links_its_whole_series(admin_client, series):
    add_instrument("ETH-USD")
    run_backfill("ETH-USD", "1h", start=utc(2024, 1, 1), end=utc(2024, 1, 2))
    rows = listed(follow(admin_client, field_link(anomaly_page(admin_client, make_anomaly()), "candles")))
    assert {c.symbol for c in rows} == {"BTC-USD"}


def test_an_invalid_ohlc_anomaly_links_the_execution_that_produced_it(admin_client, series):
    anomaly = DataAnomaly.objects.get(anomaly_type=AnomalyType.INVALID_OHLC)
    url = field_link(anomaly_page(admin_client, anomaly), "executions")
    assert follow(admin_client, url).context["original"] == series


def test_an_invalid_ohlc_anomaly_links_its_quarantined_bars(admin_client, series):
    other = FACTORIES["rejectedcandle"]()  # same series, another execution: not this anomaly's
    anomaly = DataAnomaly.objects.get(anomaly_type=AnomalyType.INVALID_OHLC)
    rows = listed(follow(admin_client, field_link(anomaly_page(admin_client, anomaly), "quarantined_bars")))
    assert {r.ts for r in rows} == {utc(2024, 1, 2, 5), utc(2024, 1, 2, 9)} and other not in rows


def test_a_repaired_anomaly_links_each_repair_execution(admin_client):
    first, second = (create_backfill_state(s, "1h", "crypto") for s in ("BTC-USD", "ETH-USD"))
    anomaly = make_anomaly(details={"repairs": [
        {"at": "2024-01-05T00:00:00Z", "execution_id": str(e.execution_id), "outcome": "fixed"} for e in (first, second)]})
    urls = field_links(anomaly_page(admin_client, anomaly), "executions")
    assert [follow(admin_client, url).context["original"] for url in urls] == [first, second]


def test_an_anomaly_with_no_execution_shows_no_link(admin_client):
    html = anomaly_page(admin_client, make_anomaly())
    assert field_links(html, "executions") == [] and field_links(html, "quarantined_bars") == []


# --- an execution's page ----------------------------------------------------------------------------


def execution_page(client, state) -> str:
    return follow(client, reverse("admin:integrity_backfillstate_change", args=[state.pk])).content.decode()


def test_an_execution_is_found_by_its_execution_id(admin_client, series):
    url = reverse("admin:integrity_backfillstate_change", args=[str(series.execution_id)])
    assert follow(admin_client, url).context["original"] == series


def test_an_execution_links_the_anomalies_it_produced(admin_client, series):
    make_anomaly(anomaly_type=AnomalyType.INVALID_OHLC, execution_id=uuid.uuid4())  # another execution's
    rows = listed(follow(admin_client, field_link(execution_page(admin_client, series), "anomalies")))
    assert rows == [DataAnomaly.objects.get(execution_id=series.execution_id)]


def test_an_execution_links_the_bars_it_refused(admin_client, series):
    other = FACTORIES["rejectedcandle"]()  # another execution's
    rows = listed(follow(admin_client, field_link(execution_page(admin_client, series), "quarantined_bars")))
    assert {r.ts for r in rows} == {utc(2024, 1, 2, 5), utc(2024, 1, 2, 9)} and other not in rows


def test_the_anomaly_list_refuses_an_execution_filter_that_is_not_an_id(admin_client):
    assert admin_client.get(f"{changelist('dataanomaly')}?execution_id=not-a-uuid").status_code == 400


def test_an_execution_links_its_symbols_failure_tracking(admin_client):
    state = create_backfill_state("XYZ", "1h", "crypto")
    tracking = SymbolFailureTracking.objects.create(symbol="XYZ", consecutive_failures=2)
    url = field_link(execution_page(admin_client, state), "failure_tracking")
    assert follow(admin_client, url).context["original"] == tracking


# --- execution ids are links ------------------------------------------------------------------------


def test_the_rejected_bars_list_links_each_execution(admin_client, series):
    html = follow(admin_client, changelist("rejectedcandle")).content.decode()
    urls = {unescape(u) for u in re.findall(r'class="execution-link" href="([^"]+)"', html)}
    assert [follow(admin_client, url).context["original"] for url in urls] == [series]


def test_a_rejected_bars_page_links_its_execution(admin_client, series):
    bar = RejectedCandle.objects.order_by("ts").first()
    html = follow(admin_client, reverse("admin:integrity_rejectedcandle_change", args=[bar.pk])).content.decode()
    assert follow(admin_client, field_link(html, "execution")).context["original"] == series


# --- the dashboard ----------------------------------------------------------------------------------


@pytest.fixture
def dashboard(admin_client):
    def get() -> str:
        return follow(admin_client, reverse("admin:integrity-dashboard")).content.decode()
    return get


def test_a_stale_series_links_its_open_anomalies_and_its_candles(admin_client, dashboard, series):
    run_health_monitoring(scan_anomalies=False)  # 2024's bars are stale now
    mine = make_anomaly(anomaly_type="stale")
    make_anomaly(anomaly_type="gap", resolution_status="resolved")
    make_anomaly(symbol="ETH-USD")
    anomalies, candles, coverage = section_links(dashboard(), "stale-series")
    shown = listed(follow(admin_client, anomalies))
    assert mine in shown
    assert {(a.symbol, a.timeframe, a.resolution_status) for a in shown} == {("BTC-USD", "1h", "open")}
    assert {(c.symbol, c.timeframe) for c in listed(follow(admin_client, candles))} == {("BTC-USD", "1h")}
    assert coverage == reverse("admin:integrity-series", args=["BTC-USD", "1h"])


def test_a_series_in_the_coverage_table_links_its_page_and_its_statistics(admin_client, dashboard, series):
    stats = SeriesStats.objects.create(symbol="BTC-USD", timeframe="1h", bar_count=10)
    page, statistics = section_links(dashboard(), "coverage")
    assert follow(admin_client, page).context["title"] == "BTC-USD 1h"
    assert follow(admin_client, statistics).context["original"] == stats


def test_a_failing_symbol_links_its_failure_tracking(admin_client, dashboard):
    tracking = SymbolFailureTracking.objects.create(symbol="XYZ", consecutive_failures=3, last_error="HTTP 503")
    [url] = section_links(dashboard(), "failing-symbols")
    assert follow(admin_client, url).context["original"] == tracking


def test_an_active_backfill_links_its_execution(admin_client, dashboard):
    state = create_backfill_state("RUNNING-1", "1h", "crypto")
    [url] = section_links(dashboard(), "active-backfills")
    assert follow(admin_client, url).context["original"] == state
