"""The quarantine of bars refused at ingest (issue 12 §4) in the admin and the API: read-only lists,
filters (strict in the API), CSV export; and the invalid_ohlc chart that shows the refused bars."""

from __future__ import annotations

import csv
import io
import uuid

import pytest
from django.urls import reverse

from integrity.backfill import run_backfill
from integrity.charts import anomaly_chart_svg
from integrity.models import AnomalyType, DataAnomaly, RejectedCandle
from tests.helpers import add_instrument, changelist, client_for, user_with, utc

pytestmark = pytest.mark.django_db

E1, E2 = uuid.UUID(int=1), uuid.UUID(int=2)


def reject(symbol="BTC-USD", timeframe="1h", hour=0, rules="high_below_low", execution=E1, **values):
    raw = {"open": 1.0, "high": 0.5, "low": 1.0, "close": 1.0, "volume": 1.0, **values}
    finite = {k: (v if isinstance(v, float) else None) for k, v in raw.items()}
    return RejectedCandle.objects.create(symbol=symbol, timeframe=timeframe, ts=utc(2024, 1, 1, hour),
                                         raw_values=raw, rules=rules, execution_id=execution, **finite)


@pytest.fixture
def viewer():
    return client_for(user_with("view_rejectedcandle", name="viewer"))


def csv_rows(content: bytes) -> list[dict]:
    return list(csv.DictReader(io.StringIO(content.decode())))


# --- admin -------------------------------------------------------------------------------------


def listed(admin_client, query="") -> list[int]:
    response = admin_client.get(f"{changelist('rejectedcandle')}?{query}")
    assert response.status_code == 200
    return sorted(o.pk for o in response.context["cl"].result_list)


@pytest.mark.parametrize("query,expected", [
    ("rule=negative_volume", ["b"]),
    ("rule=high_below_low", ["a", "c"]),
    (f"execution_id={E2}", ["c"]),
    ("timeframe__exact=1d", ["c"]),
    ("q=eth-usd", ["b"]),
])
def test_the_admin_list_filters_by_rule_execution_timeframe_and_symbol(admin_client, query, expected):
    rows = {"a": reject(hour=1), "b": reject("ETH-USD", rules="negative_volume", volume=-1.0),
            "c": reject(timeframe="1d", rules="high_below_low,misaligned_ts", execution=E2)}
    assert listed(admin_client, query) == sorted(rows[k].pk for k in expected)


def test_the_admin_list_refuses_a_filter_value_it_cannot_use(admin_client):
    reject()
    assert admin_client.get(f"{changelist('rejectedcandle')}?execution_id=not-a-uuid").status_code == 400


def test_the_admin_screen_is_read_only(admin_client):
    row = reject()
    assert admin_client.get(reverse("admin:integrity_rejectedcandle_add")).status_code == 403
    page = admin_client.get(reverse("admin:integrity_rejectedcandle_change", args=[row.pk])).content.decode()
    assert 'name="_save"' not in page


def test_the_admin_exports_the_selected_rows_as_csv_with_values_as_they_came(admin_client):
    keep, _other = reject(hour=1, open="nan"), reject(hour=2)
    response = admin_client.post(changelist("rejectedcandle"),
                                 {"action": "export_csv", "_selected_action": [str(keep.pk)]})
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    [row] = csv_rows(b"".join(response.streaming_content))
    assert (row["ts"], row["open"], row["high"], row["rules"], row["execution_id"]) == (
        "2024-01-01T01:00:00+00:00", "nan", "0.5", "high_below_low", str(E1))


# --- API ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("query,expected", [
    ("symbol=ETH-USD", [2]),
    ("timeframe=1d", [3]),
    ("rule=negative_volume", [2]),
    (f"execution_id={E2}", [3]),
    ("ts_after=2024-01-01T02:00:00Z", [2, 3]),
    ("ts_before=2024-01-01T02:00:00Z", [1]),
])
def test_the_api_list_filters(viewer, query, expected):
    reject(hour=1)
    reject("ETH-USD", hour=2, rules="negative_volume", volume=-1.0)
    reject(timeframe="1d", hour=3, execution=E2)
    rows = viewer.get(f"/api/v1/rejected-candles/?{query}").json()["results"]
    assert sorted(int(r["ts"][11:13]) for r in rows) == expected


def test_the_api_shows_values_as_they_came_and_the_rules_as_a_list(viewer):
    reject(open="nan", high="inf", rules="non_finite,high_below_low")
    [row] = viewer.get("/api/v1/rejected-candles/").json()["results"]
    assert (row["open"], row["high"], row["low"]) == ("nan", "inf", 1.0)
    assert row["rules"] == ["non_finite", "high_below_low"] and row["execution_id"] == str(E1)


@pytest.mark.parametrize("query,field", [
    ("rule=bogus", "rule"), ("execution_id=not-a-uuid", "execution_id"), ("timeframe=2h", "timeframe"),
    ("symbol=", "symbol"), ("ts_after=yesterday", "ts_after"),
])
def test_an_unusable_filter_is_400_naming_it(viewer, query, field):
    response = viewer.get(f"/api/v1/rejected-candles/?{query}")
    assert response.status_code == 400 and field in response.json()


def test_format_csv_exports_every_filtered_row_not_a_page(viewer):
    for hour in range(5):
        reject(hour=hour)
    reject("ETH-USD", hour=1)
    response = viewer.get("/api/v1/rejected-candles/?format=csv&symbol=BTC-USD&page_size=2")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    rows = csv_rows(b"".join(response.streaming_content))
    assert [r["ts"][11:13] for r in rows] == ["00", "01", "02", "03", "04"]
    assert {r["symbol"] for r in rows} == {"BTC-USD"}


def test_format_csv_with_a_bad_filter_is_still_400(viewer):
    assert viewer.get("/api/v1/rejected-candles/?format=csv&rule=bogus").status_code == 400


def test_the_api_needs_the_view_permission():
    assert client_for(user_with(name="nobody")).get("/api/v1/rejected-candles/").status_code == 403
    assert client_for(None).get("/api/v1/rejected-candles/").status_code in (401, 403)


def test_the_api_is_read_only():
    editor = client_for(user_with("view_rejectedcandle", "change_rejectedcandle", name="editor"))
    assert editor.post("/api/v1/rejected-candles/", {}, format="json").status_code == 405


# --- the invalid_ohlc chart --------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_invalid_ohlc_chart_marks_the_rejected_bars():
    bad = [utc(2024, 1, 2, 5), utc(2024, 1, 2, 9)]
    add_instrument(invalid=[t.isoformat() for t in bad])
    run_backfill("BTC-USD", "1h", start=utc(2024, 1, 1), end=utc(2024, 1, 4))
    anomaly = DataAnomaly.objects.get(anomaly_type=AnomalyType.INVALID_OHLC)
    assert anomaly_chart_svg(anomaly).count('class="rejected-bar"') == 2


@pytest.mark.django_db(transaction=True)
def test_the_invalid_ohlc_chart_does_not_mark_the_stored_bars_between_the_rejected_ones():
    add_instrument(invalid=[utc(2024, 1, 2, 5).isoformat(), utc(2024, 1, 2, 9).isoformat()])
    run_backfill("BTC-USD", "1h", start=utc(2024, 1, 1), end=utc(2024, 1, 4))
    anomaly = DataAnomaly.objects.get(anomaly_type=AnomalyType.INVALID_OHLC)
    assert 'class="anomaly-bar"' not in anomaly_chart_svg(anomaly)  # 06:00–08:00 passed validation
