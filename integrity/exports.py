"""CSV exports: the one streaming CSV writer and the column layouts of the exported tables.

The admin's "Export selected … as CSV" actions and the API's ``?format=csv`` both answer with
``csv_response``, so a table exports the same columns from either. Rows are read in chunks
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
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from django.db.models import QuerySet
from django.http import StreamingHttpResponse
from django.utils import timezone

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


def csv_response(lines: Iterable[str], name: str) -> StreamingHttpResponse:
    """A streamed CSV download named ``{name}-{UTC stamp}.csv``."""
    response = StreamingHttpResponse(lines, content_type="text/csv; charset=utf-8")
    stamp = timezone.now().strftime("%Y%m%dT%H%M%SZ")
    response["Content-Disposition"] = f'attachment; filename="{name}-{stamp}.csv"'
    return response


@dataclass(frozen=True)
class Export:
    """The CSV layout of one table: its file name, its columns, its order when none is given."""

    name: str
    columns: tuple[str, ...]
    order: tuple[str, ...]

    def lines(self, queryset: QuerySet, chunk_size: int = 2000) -> Iterator[str]:
        if not queryset.ordered:
            queryset = queryset.order_by(*self.order)
        rows = queryset.values_list(*self.columns).iterator(chunk_size=chunk_size)
        return csv_text(self.columns, ([cell(value) for value in row] for row in rows))

    def response(self, queryset: QuerySet) -> StreamingHttpResponse:
        return csv_response(self.lines(queryset), self.name)


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

