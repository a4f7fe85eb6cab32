"""CSV and XLSX exports: the one streaming CSV writer, the XLSX writer and the column layouts of the
exported tables.

The admin's "Export selected … as CSV" actions and the API's ``?format=csv`` both answer with
``csv_response``, so a table exports the same columns from either; the admin's "… as XLSX" actions
write the same columns and rows to a spreadsheet (``xlsx_response``: instants as UTC date-times,
numbers as numbers, text formula-safe as in the CSV). Rows are read in chunks
(``QuerySet.iterator``) and written as they are read: an export of every row never holds the table
in memory. Text cells are safe to open in a spreadsheet: a cell that would start a formula (``=``,
``+``, ``-``, ``@``, tab, carriage return) is prefixed with ``'``, unless it is a number (``-1.5``,
``-inf``). The quarantine of rejected bars has its own layout (``integrity.rejected.csv_lines``) on
the same writer.
"""

from __future__ import annotations

import csv
import io
import json
import math
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from uuid import UUID

from django.db.models import QuerySet
from django.http import FileResponse, StreamingHttpResponse
from django.utils import timezone
from openpyxl import Workbook
from openpyxl.cell import WriteOnlyCell
from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE

_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(text: str) -> str:
    """``text`` as a spreadsheet shows it, not as a formula it would run."""
    if not text.startswith(_FORMULA_STARTS):
        return text
    try:
        float(text)
    except ValueError:
        return "'" + text
    return text


def cell(value) -> str:
    """One value as CSV text: instants in ISO 8601, lists and objects as JSON, None as empty."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (list, tuple, dict)):
        return safe_cell(json.dumps(value, default=str))
    if isinstance(value, (UUID, bool, int, float)):
        return str(value)
    return safe_cell(str(value))


def csv_text(header: Sequence[str], rows: Iterable[Sequence[str]]) -> Iterator[str]:
    """The header, then each row, as CSV text lines (cells already text)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")

    def take() -> str:
        text = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate(0)
        return text

    writer.writerow(header)
    yield take()
    for row in rows:
        writer.writerow(row)
        yield take()


def _stamp() -> str:
    return timezone.now().strftime("%Y%m%dT%H%M%SZ")


def csv_response(lines: Iterable[str], name: str) -> StreamingHttpResponse:
    """A streamed CSV download named ``{name}-{UTC stamp}.csv``."""
    response = StreamingHttpResponse(lines, content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{name}-{_stamp()}.csv"'
    return response


XLSX_CONTENT_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
XLSX_DATETIME_FORMAT = "yyyy-mm-dd hh:mm:ss"


def xlsx_value(value):
    """One value as a spreadsheet cell: instants as naive UTC date-times (a spreadsheet has no time
    zones; every instant here is UTC), finite numbers as numbers, everything else as ``cell``'s text without
    the control characters XLSX cannot hold."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).replace(tzinfo=None) if timezone.is_aware(value) else value
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int) or (isinstance(value, float) and math.isfinite(value)):
        return value
    return ILLEGAL_CHARACTERS_RE.sub("", cell(value))


def _xlsx_cell(sheet, value):
    if not isinstance(value, datetime):
        return value
    shown = WriteOnlyCell(sheet, value)
    shown.number_format = XLSX_DATETIME_FORMAT
    return shown


def xlsx_response(header: Sequence[str], rows: Iterable[Sequence], name: str) -> FileResponse:
    """An XLSX download named ``{name}-{UTC stamp}.xlsx``: one sheet, ``header`` then ``rows`` (values
    as ``xlsx_value`` makes them). Written row by row (openpyxl's write-only mode) to a temporary file,
    so a large export is not held in memory."""
    workbook = Workbook(write_only=True)
    sheet = workbook.create_sheet(name[:31])
    sheet.append(list(header))
    for row in rows:
        sheet.append([_xlsx_cell(sheet, xlsx_value(value)) for value in row])
    target = tempfile.TemporaryFile()
    workbook.save(target)
    target.seek(0)
    return FileResponse(target, as_attachment=True, filename=f"{name}-{_stamp()}.xlsx",
                        content_type=XLSX_CONTENT_TYPE)


@dataclass(frozen=True)
class Export:
    """The CSV layout of one table: its file name, its columns, its order when none is given."""

    name: str
    columns: tuple[str, ...]
    order: tuple[str, ...]

    def rows(self, queryset: QuerySet, chunk_size: int = 2000) -> Iterator[Sequence]:
        """The values of ``columns``, row by row (``chunk_size`` rows read at a time)."""
        if not queryset.ordered:
            queryset = queryset.order_by(*self.order)
        return queryset.values_list(*self.columns).iterator(chunk_size=chunk_size)

    def lines(self, queryset: QuerySet, chunk_size: int = 2000) -> Iterator[str]:
        return csv_text(self.columns, ([cell(value) for value in row] for row in self.rows(queryset, chunk_size)))

    def response(self, queryset: QuerySet) -> StreamingHttpResponse:
        return csv_response(self.lines(queryset), self.name)

    def xlsx_response(self, queryset: QuerySet) -> FileResponse:
        """The same columns and rows as the CSV, as a spreadsheet."""
        return xlsx_response(self.columns, self.rows(queryset), self.name)


ANOMALIES = Export("anomalies", (
    "id", "symbol", "timeframe", "anomaly_type", "severity", "resolution_status", "resolution_reason",
    "period_start", "period_end", "affected_rows", "detected_at", "last_seen_at", "regressions", "execution_id",
    "description", "resolution_note",
), ("-detected_at", "-id"))

BACKFILLS = Export("backfill-executions", (
    "execution_id", "symbol", "asset_class", "timeframe", "status", "provider", "range_start", "range_end",
    "created_at", "started_at", "completed_at", "records_inserted", "records_updated", "invalid_bars",
    "retry_count", "requested_by", "worker", "error_message",
), ("-created_at", "-id"))

DUPLICATES = Export("duplicate-log", (
    "id", "symbol", "timeframe", "candle_time", "duplicate_count", "duplicate_ids", "kept_id", "kept_by", "run_id",
    "cleaned_at",
), ("-cleaned_at", "-id"))

