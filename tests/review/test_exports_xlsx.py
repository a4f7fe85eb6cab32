"""XLSX exports from the admin: anomalies, backfill executions, rejected bars and the duplicate log, in the
CSV export's columns (``integrity.exports.xlsx_response``), opened back with openpyxl."""

from __future__ import annotations

import io
import uuid
from datetime import datetime

import pytest
from openpyxl import load_workbook

from integrity.exports import ANOMALIES, BACKFILLS, DUPLICATES, XLSX_CONTENT_TYPE
from integrity.models import BackfillState, DuplicateRecordLog, RejectedCandle
from integrity.rejected import CSV_COLUMNS
from tests.helpers import changelist, make_anomaly, staff_client, utc

pytestmark = pytest.mark.django_db


def export_xlsx(client, model, ids) -> list[tuple]:
    """The rows (header first) of the one sheet the admin's "Export selected … as XLSX" answers."""
    response = client.post(changelist(model), {"action": "export_xlsx", "_selected_action": [str(i) for i in ids]})
    assert response.status_code == 200 and response["Content-Type"] == XLSX_CONTENT_TYPE
    assert response["Content-Disposition"].endswith('.xlsx"')
    workbook = load_workbook(io.BytesIO(b"".join(response.streaming_content)), read_only=True)
    return list(workbook.worksheets[0].iter_rows(values_only=True))


def as_dict(rows: list[tuple]) -> list[dict]:
    return [dict(zip(rows[0], row, strict=True)) for row in rows[1:]]


def test_the_anomaly_export_has_the_csv_header_and_only_the_selected_rows(admin_client):
    keep, _other = make_anomaly(symbol="ETH-USD", description="gap of 3 bars", period_start=utc(2024, 1, 2, 5)), \
        make_anomaly()
    rows = export_xlsx(admin_client, "dataanomaly", [keep.pk])
    assert rows[0] == ANOMALIES.columns
    [row] = as_dict(rows)
    assert (row["id"], row["symbol"], row["description"], row["affected_rows"]) == (keep.pk, "ETH-USD",
                                                                                     "gap of 3 bars", 3)


def test_instants_are_utc_date_times_in_the_sheet(admin_client):
    anomaly = make_anomaly(period_start=utc(2024, 1, 2, 5, 30))
    [row] = as_dict(export_xlsx(admin_client, "dataanomaly", [anomaly.pk]))
    assert row["period_start"] == datetime(2024, 1, 2, 5, 30)


def test_a_text_cell_that_would_start_a_formula_stays_text(admin_client):
    anomaly = make_anomaly(description="=cmd|' /C calc'!A0")
    [row] = as_dict(export_xlsx(admin_client, "dataanomaly", [anomaly.pk]))
    assert row["description"] == "'=cmd|' /C calc'!A0"


def test_control_characters_xlsx_cannot_hold_are_dropped_not_a_500(admin_client):
    anomaly = make_anomaly(description="bad\x01byte")
    [row] = as_dict(export_xlsx(admin_client, "dataanomaly", [anomaly.pk]))
    assert row["description"] == "badbyte"


def test_the_backfill_export_has_the_selected_executions(admin_client):
    keep = BackfillState.objects.create(symbol="BTC-USD", timeframe="1h", asset_class="crypto", status="failed",
                                        error_message="provider down", records_inserted=7)
    BackfillState.objects.create(symbol="ETH-USD", timeframe="1h", asset_class="crypto", status="failed")
    rows = export_xlsx(admin_client, "backfillstate", [keep.pk])
    assert rows[0] == BACKFILLS.columns
    [row] = as_dict(rows)
    assert (row["execution_id"], row["status"], row["records_inserted"], row["error_message"]) == (
        str(keep.execution_id), "failed", 7, "provider down")


def test_the_rejected_bar_export_keeps_values_as_they_came(admin_client):
    bar = RejectedCandle.objects.create(
        symbol="BTC-USD", timeframe="1h", ts=utc(2024, 1, 1), open=None, high=2, low=1, close=1.5, volume=1,
        raw_values={"open": "nan", "high": 2, "low": 1, "close": 1.5, "volume": 1}, rules="not_finite",
        execution_id=uuid.uuid4())
    rows = export_xlsx(admin_client, "rejectedcandle", [bar.pk])
    assert rows[0] == CSV_COLUMNS
    [row] = as_dict(rows)
    assert (row["ts"], row["open"], row["close"], row["rules"]) == (datetime(2024, 1, 1), "nan", 1.5, "not_finite")


def test_the_duplicate_log_export_has_the_selected_entries(admin_client):
    keep = DuplicateRecordLog.objects.create(symbol="BTC-USD", timeframe="1h", candle_time=utc(2024, 1, 1, 3),
                                             duplicate_count=2, duplicate_ids=[1, 2])
    rows = export_xlsx(admin_client, "duplicaterecordlog", [keep.pk])
    assert rows[0] == DUPLICATES.columns
    [row] = as_dict(rows)
    assert (row["candle_time"], row["duplicate_count"], row["duplicate_ids"]) == (datetime(2024, 1, 1, 3), 2, "[1, 2]")


def test_a_viewer_may_export_as_xlsx():
    client = staff_client("view_dataanomaly")
    anomaly = make_anomaly()
    assert as_dict(export_xlsx(client, "dataanomaly", [anomaly.pk]))[0]["id"] == anomaly.pk
