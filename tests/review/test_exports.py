"""CSV exports of anomalies, backfill executions and the duplicate log (admin action and ``?format=csv``,
one writer: ``integrity.exports``), and the strict ``?search=`` / ``?ordering=`` of those API lists."""

from __future__ import annotations

import csv
import io
import uuid

import pytest
from drf_spectacular.generators import SchemaGenerator

from integrity.exports import safe_cell
from integrity.models import BackfillState, DuplicateRecordLog
from tests.helpers import changelist, client_for, make_anomaly, user_with, utc

pytestmark = pytest.mark.django_db


def csv_rows(response) -> list[dict]:
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    return list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))


def backfill(symbol="BTC-USD", error="", **kwargs) -> BackfillState:
    return BackfillState.objects.create(symbol=symbol, timeframe="1h", asset_class="crypto", status="failed",
                                        error_message=error, **kwargs)


def duplicate(symbol="BTC-USD", hour=0, count=2) -> DuplicateRecordLog:
    return DuplicateRecordLog.objects.create(symbol=symbol, timeframe="1h", candle_time=utc(2024, 1, 1, hour),
                                             duplicate_count=count, duplicate_ids=[1, 2])


@pytest.fixture
def viewer():
    return client_for(user_with("view_dataanomaly", "view_backfillstate", "view_duplicaterecordlog", name="viewer"))


def export_action(admin_client, model, ids):
    return admin_client.post(changelist(model), {"action": "export_csv", "_selected_action": [str(i) for i in ids]})


# --- the writer ---------------------------------------------------------------------------------


@pytest.mark.parametrize("text,shown", [
    ("=HYPERLINK(\"http://x\")", "'=HYPERLINK(\"http://x\")"), ("+1+2", "'+1+2"), ("-2+3", "'-2+3"),
    ("@SUM(A1)", "'@SUM(A1)"), ("\tx", "'\tx"), ("-1.5", "-1.5"), ("-inf", "-inf"), ("BTC-USD", "BTC-USD"),
])
def test_a_cell_that_would_start_a_formula_is_prefixed_but_a_number_is_not(text, shown):
    assert safe_cell(text) == shown


# --- admin actions ------------------------------------------------------------------------------


def test_the_admin_exports_the_selected_anomalies_with_a_header(admin_client):
    keep, _other = make_anomaly(symbol="ETH-USD", description="gap of 3 bars"), make_anomaly()
    [row] = csv_rows(export_action(admin_client, "dataanomaly", [keep.pk]))
    assert (row["id"], row["symbol"], row["description"], row["affected_rows"]) == (
        str(keep.pk), "ETH-USD", "gap of 3 bars", "3")


def test_the_admin_export_of_anomalies_escapes_formula_cells(admin_client):
    anomaly = make_anomaly(description="=cmd|' /C calc'!A0")
    [row] = csv_rows(export_action(admin_client, "dataanomaly", [anomaly.pk]))
    assert row["description"] == "'=cmd|' /C calc'!A0"


def test_the_admin_exports_the_selected_backfill_executions(admin_client):
    keep, _other = backfill(error="@provider down"), backfill("ETH-USD")
    [row] = csv_rows(export_action(admin_client, "backfillstate", [keep.pk]))
    assert (row["execution_id"], row["symbol"], row["status"], row["error_message"]) == (
        str(keep.execution_id), "BTC-USD", "failed", "'@provider down")


def test_the_admin_exports_the_selected_duplicate_log_entries(admin_client):
    keep, _other = duplicate(hour=3), duplicate("ETH-USD")
    [row] = csv_rows(export_action(admin_client, "duplicaterecordlog", [keep.pk]))
    assert (row["symbol"], row["candle_time"], row["duplicate_count"], row["duplicate_ids"]) == (
        "BTC-USD", "2024-01-01T03:00:00+00:00", "2", "[1, 2]")


# --- API ?format=csv ----------------------------------------------------------------------------


def test_format_csv_exports_every_filtered_anomaly_not_a_page(viewer):
    for _ in range(3):
        make_anomaly()
    make_anomaly(symbol="ETH-USD")
    rows = csv_rows(viewer.get("/api/v1/anomalies/?format=csv&symbol=BTC-USD&page_size=2"))
    assert len(rows) == 3 and {r["symbol"] for r in rows} == {"BTC-USD"}


def test_format_csv_of_anomalies_escapes_formula_cells(viewer):
    make_anomaly(description="+SUM(1,2)")
    [row] = csv_rows(viewer.get("/api/v1/anomalies/?format=csv"))
    assert row["description"] == "'+SUM(1,2)"


def test_format_csv_exports_the_filtered_backfill_executions(viewer):
    keep = backfill()
    backfill("ETH-USD")
    [row] = csv_rows(viewer.get("/api/v1/backfills/?format=csv&symbol=BTC-USD"))
    assert row["execution_id"] == str(keep.execution_id)


def test_format_csv_exports_the_filtered_duplicate_log(viewer):
    duplicate(hour=1)
    duplicate("ETH-USD")
    [row] = csv_rows(viewer.get("/api/v1/duplicates/?format=csv&symbol=BTC-USD"))
    assert row["candle_time"] == "2024-01-01T01:00:00+00:00"


def test_format_csv_follows_the_search_and_the_ordering(viewer):
    make_anomaly(affected_rows=1, description="small gap")
    make_anomaly(affected_rows=9, description="big gap")
    make_anomaly(description="spike")
    rows = csv_rows(viewer.get("/api/v1/anomalies/?format=csv&search=gap&ordering=-affected_rows"))
    assert [r["affected_rows"] for r in rows] == ["9", "1"]


def test_format_csv_with_a_bad_ordering_is_still_400(viewer):
    assert viewer.get("/api/v1/duplicates/?format=csv&ordering=bogus").status_code == 400


# --- API ?search= and ?ordering= ----------------------------------------------------------------


@pytest.mark.parametrize("search,expected", [("eth", ["ETH-USD"]), ("spike", ["SOL-USD"]), ("gap btc", ["BTC-USD"])])
def test_search_finds_anomalies_by_symbol_or_description(viewer, search, expected):
    make_anomaly(description="gap of 2 bars")
    make_anomaly(symbol="ETH-USD", description="gap of 5 bars")
    make_anomaly(symbol="SOL-USD", description="price spike", anomaly_type="outlier")
    rows = viewer.get(f"/api/v1/anomalies/?search={search}").json()["results"]
    assert [r["symbol"] for r in rows] == expected


def test_search_finds_backfills_by_error_message(viewer):
    backfill(error="provider timeout")
    backfill("ETH-USD", error="bad symbol")
    [row] = viewer.get("/api/v1/backfills/?search=TIMEOUT").json()["results"]
    assert row["symbol"] == "BTC-USD"


def test_ordering_orders_the_anomaly_list(viewer):
    for rows in (5, 1, 3):
        make_anomaly(affected_rows=rows)
    listed = viewer.get("/api/v1/anomalies/?ordering=affected_rows").json()["results"]
    assert [r["affected_rows"] for r in listed] == [1, 3, 5]


def test_ordering_pages_follow_the_ordering(viewer):
    for count in (4, 2, 3, 5):
        duplicate(count=count, hour=count)
    first = viewer.get("/api/v1/duplicates/?ordering=-duplicate_count&page_size=2").json()
    second = viewer.get(first["next"]).json()
    assert [r["duplicate_count"] for r in first["results"] + second["results"]] == [5, 4, 3, 2]


@pytest.mark.parametrize("url", [
    "/api/v1/anomalies/?ordering=severity", "/api/v1/anomalies/?ordering=-detected_at,bogus",
    "/api/v1/backfills/?ordering=error_message", "/api/v1/duplicates/?ordering=duplicate_ids",
])
def test_an_ordering_the_list_does_not_offer_is_400_naming_the_allowed_fields(viewer, url):
    response = viewer.get(url)
    assert response.status_code == 400
    assert "use " in response.json()["ordering"][0]


@pytest.mark.parametrize("url,param", [("/api/v1/anomalies/?ordering=", "ordering"),
                                       ("/api/v1/backfills/?search=", "search")])
def test_search_or_ordering_without_a_value_is_400(viewer, url, param):
    response = viewer.get(url)
    assert response.status_code == 400 and param in response.json()


def test_a_cursor_of_another_ordering_is_400(viewer):
    for _ in range(3):
        backfill(execution_id=uuid.uuid4())
    first = viewer.get("/api/v1/backfills/?page_size=1").json()
    cursor = first["next"].split("cursor=")[1].split("&")[0]
    assert viewer.get(f"/api/v1/backfills/?ordering=invalid_bars&cursor={cursor}").status_code == 400


def test_the_schema_documents_search_and_ordering():
    schema = SchemaGenerator().get_schema(request=None, public=True)
    params = {p["name"]: p for p in schema["paths"]["/api/v1/anomalies/"]["get"]["parameters"]}
    assert "detected_at" in params["ordering"]["description"] and "description" in params["search"]["description"]
