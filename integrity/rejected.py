"""Rejected bars: written to the quarantine (``rejected_candles``) and read back out of it.

``quarantine_bars`` is called by the backfill inside the transaction of each candle batch, so the
quarantine rows, the candles and the checkpoint of a batch commit together (a crash leaves neither
half). It is set-based: the page's rejected bars are reduced to one row per bar time (a
``duplicate_ts`` group is one row with its number of copies) and upserted in multi-row statements
on (symbol, timeframe, ts), so re-running a backfill updates the rows it rejects again instead of
adding new ones (see ``integrity.models.rejected``).

``csv_lines`` is the one CSV layout of the quarantine (on ``integrity.exports``' writer), used by the
admin's export action and the API's ``?format=csv``; ``rejected_span`` and ``rejected_points`` serve the ``invalid_ohlc`` finding
(its period) and its chart.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from datetime import datetime

import pandas as pd
from django.db import connection
from django.db.models import Count, Max, Min
from django.utils import timezone

from .exports import Export, cell, csv_text, safe_cell
from .models import AnomalyType, DataAnomaly, RejectedCandle, ResolutionStatus

VALUE_COLUMNS = ("open", "high", "low", "close", "volume")
CSV_COLUMNS = ("symbol", "timeframe", "ts", *VALUE_COLUMNS, "rules", "copies", "execution_id", "provider",
               "rejected_at")
_UPSERT_BATCH = 1000
_UPDATED_ON_CONFLICT = [*VALUE_COLUMNS, "raw_values", "rules", "copies", "execution_id", "provider", "rejected_at"]


def _raw(value: float) -> float | str:
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def quarantine_bars(symbol: str, timeframe: str, invalid: pd.DataFrame, *, execution_id, provider: str = "",
                    now: datetime | None = None) -> int:
    """Upsert the rejected bars ``invalid`` (``ValidationResult.invalid`` layout: bar columns plus
    ``reasons``) of one series; returns the number of quarantine rows written. Bars without a
    timestamp are skipped. Needs a transaction (the caller's batch)."""
    if invalid is None or invalid.empty:
        return 0
    if not connection.in_atomic_block:
        raise RuntimeError("quarantine_bars must run inside the batch's transaction.atomic()")
    frame = invalid[invalid["ts"].notna()]
    if frame.empty:
        return 0
    # One row per bar time: the last copy's values, every copy's rules, the number of copies.
    grouped = frame.groupby("ts", sort=True)
    last = grouped.tail(1).drop_duplicates("ts", keep="last").set_index("ts").sort_index()
    copies = grouped.size()
    rules = grouped["reasons"].agg(lambda values: ",".join(dict.fromkeys(
        code for combo in values for code in str(combo).split(",") if code)))
    now = now or timezone.now()
    values = {column: last[column].to_numpy(dtype="float64").tolist() for column in VALUE_COLUMNS}
    rows = [
        RejectedCandle(
            symbol=symbol, timeframe=timeframe, ts=ts.to_pydatetime(),
            **{column: _finite(values[column][i]) for column in VALUE_COLUMNS},
            raw_values={column: _raw(values[column][i]) for column in VALUE_COLUMNS},
            rules=rules.iloc[i], copies=int(copies.iloc[i]), execution_id=execution_id, provider=provider,
            rejected_at=now,
        )
        for i, ts in enumerate(last.index)
    ]
    RejectedCandle.objects.bulk_create(
        rows, batch_size=_UPSERT_BATCH, update_conflicts=True,
        unique_fields=["symbol", "timeframe", "ts"], update_fields=_UPDATED_ON_CONFLICT,
    )
    return len(rows)


def _csv_value(row: dict, column: str) -> str:
    if column in VALUE_COLUMNS:
        raw = _as_came(row, column)
        return "" if raw is None else safe_cell(str(raw))
    return cell(row[column])


def _quarantine_rows(queryset, chunk_size: int) -> Iterator[dict]:
    qs = RejectedCandle.objects.all() if queryset is None else queryset
    if not qs.query.order_by:
        qs = qs.order_by("symbol", "timeframe", "ts")
    return qs.values(*CSV_COLUMNS, "raw_values").iterator(chunk_size=chunk_size)


def csv_lines(queryset: Iterable[RejectedCandle] | None = None, chunk_size: int = 2000) -> Iterator[str]:
    """The quarantine rows of ``queryset`` (default: all, by series and time) as CSV text lines,
    header first; values as they came (``nan``, ``inf``). Streams: reads ``chunk_size`` rows at a time."""
    rows = _quarantine_rows(queryset, chunk_size)
    return csv_text(CSV_COLUMNS, ([_csv_value(row, column) for column in CSV_COLUMNS] for row in rows))


def _as_came(row: dict, column: str):
    if column in VALUE_COLUMNS:
        return (row["raw_values"] or {}).get(column, row[column])
    return row[column]


class _RejectedExport(Export):
    def lines(self, queryset, chunk_size: int = 2000) -> Iterator[str]:
        return csv_lines(queryset, chunk_size)

    def rows(self, queryset, chunk_size: int = 2000) -> Iterator[list]:
        """Values as they came (``nan``, ``inf`` as text), for the XLSX export."""
        return ([_as_came(row, column) for column in CSV_COLUMNS] for row in _quarantine_rows(queryset, chunk_size))


# The quarantine's export, for the admin action and the API (``integrity.exports``).
REJECTED_EXPORT = _RejectedExport("rejected-candles", CSV_COLUMNS, ("symbol", "timeframe", "ts"))


def rejected_points(symbol: str, timeframe: str, start: datetime, end: datetime,
                    limit: int = 200) -> list[tuple[datetime, float | None, float | None, float | None, str]]:
    """The quarantined bars of a series in [start, end) as (ts, high, low, close; None where not
    finite, the rules they broke), for charts: at most ``limit``, by ts."""
    rows = (RejectedCandle.objects.filter(symbol=symbol, timeframe=timeframe, ts__gte=start, ts__lt=end)
            .order_by("ts").values_list("ts", "high", "low", "close", "rules")[:limit])
    return list(rows)


def resolve_superseded_findings(symbol: str, timeframe: str, execution_id) -> int:
    """Resolve the unresolved ``invalid_ohlc`` findings of earlier executions of the series whose
    quarantined bars were all refused again by ``execution_id`` (their rows now name it): the bars
    are reported once, by the newest finding. One statement; returns how many were resolved."""
    still_theirs = RejectedCandle.objects.filter(symbol=symbol, timeframe=timeframe).values("execution_id")
    superseded = (DataAnomaly.objects
                  .filter(symbol=symbol, timeframe=timeframe, anomaly_type=AnomalyType.INVALID_OHLC,
                          execution_id__isnull=False, details__quarantined__gt=0,
                          resolution_status__in=[ResolutionStatus.OPEN, ResolutionStatus.ACKNOWLEDGED])
                  .exclude(execution_id=execution_id).exclude(execution_id__in=still_theirs))
    note = f"superseded: its bars were refused again by backfill {execution_id}, whose finding reports them"
    return superseded.update(**DataAnomaly.review_changes(ResolutionStatus.RESOLVED, "backfill", timezone.now(),
                                                          note))


def rejected_span(execution_id) -> tuple[datetime | None, datetime | None, int]:
    """(first, last, rows) of the bars an execution quarantined (None, None, 0 if none)."""
    agg = RejectedCandle.objects.filter(execution_id=execution_id).aggregate(
        first=Min("ts"), last=Max("ts"), rows=Count("id"))
    return agg["first"], agg["last"], agg["rows"]
