"""The set-based part of a reconciliation: stage the reference's bars (``reference_bars``, keyed by
the run), then one statement joins them with the stored series over the window and returns only the
bar pairs that disagree — a price (or volume) beyond the tolerance, or a bar one side lacks. Each is
numbered by its place among the calendar's expected bars of the window (and the disagreeing bars off
it), so the Python post-pass (``classify``) can tell consecutive bars without reading the agreeing
ones (and without a sort of the whole window in the statement)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd
from django.db import connection

from ..models import Candle, ReferenceBar
from ..quality.sql import ns_value, to_db

STAGE_BATCH = 5_000
FIELDS = ("open", "high", "low", "close", "volume")


@dataclass
class Pair:
    """A disagreeing bar: its place ``n`` among the window's bar times (``number``), its time (ns) and
    each side's (open, high, low, close, volume), None for the side that lacks it."""

    n: int
    ts: int
    stored: tuple[float, ...] | None
    reference: tuple[float, ...] | None


def stage(run_id: uuid.UUID, frame: pd.DataFrame) -> int:
    """Write the reference bars of ``frame`` (bar frame layout) into ``reference_bars`` under ``run_id``."""
    if frame.empty:
        return 0
    times = frame["ts"].dt.to_pydatetime()
    values = frame[list(FIELDS)].to_numpy(dtype="float64").tolist()
    rows = [ReferenceBar(run_id=run_id, ts=ts, open=o, high=h, low=lo, close=c, volume=v)
            for ts, (o, h, lo, c, v) in zip(times, values, strict=True)]
    ReferenceBar.objects.bulk_create(rows, batch_size=STAGE_BATCH)
    return len(rows)


def unstage(run_id: uuid.UUID) -> int:
    return ReferenceBar.objects.filter(run_id=run_id).delete()[0]


def _run_param(run_id: uuid.UUID):
    return ReferenceBar._meta.get_field("run_id").get_db_prep_value(run_id, connection)


def _differs(side: str, ref: str) -> str:
    # Relative to the reference's value; a value equal on both sides never differs (tolerance 0 too).
    return f"ABS(s.{side} - r.{ref}) > %s * ABS(r.{ref})"


def disagreements_sql(volume: bool) -> str:
    """The classification statement: the pairs of a full outer join on ``ts`` where a side is missing
    or a field differs beyond the tolerance. Parameters: symbol, timeframe, start, end (stored), run,
    start, end (reference), then the price tolerance four times and, with ``volume``, the volume one."""
    candles, staged = Candle._meta.db_table, ReferenceBar._meta.db_table
    differs = " OR ".join(_differs(f, f) for f in ("open", "high", "low", "close"))
    if volume:
        differs += " OR " + _differs("volume", "volume")
    return f"""
        WITH s AS (
            SELECT ts, open, high, low, close, volume FROM {candles}
            WHERE symbol = %s AND timeframe = %s AND ts >= %s AND ts < %s
        ), r AS (
            SELECT ts, open, high, low, close, volume FROM {staged}
            WHERE run_id = %s AND ts >= %s AND ts < %s
        )
        SELECT COALESCE(s.ts, r.ts) AS ts, s.open, s.high, s.low, s.close, s.volume,
               r.open, r.high, r.low, r.close, r.volume
        FROM s FULL OUTER JOIN r ON r.ts = s.ts
        WHERE s.ts IS NULL OR r.ts IS NULL OR {differs}
    """


def disagreements(symbol: str, timeframe: str, run_id: uuid.UUID, start: datetime, end: datetime,
                  tolerance: float, volume_tolerance: float | None, expected: np.ndarray) -> list[Pair]:
    """The disagreeing bar pairs of the series against the run's staged bars in ``[start, end)``,
    in time order, numbered among ``expected`` (the calendar's bar times of the window, ns)."""
    params = [symbol, timeframe, to_db(start), to_db(end), _run_param(run_id), to_db(start), to_db(end),
              *[tolerance] * 4]
    if volume_tolerance is not None:
        params.append(volume_tolerance)
    with connection.cursor() as cursor:
        cursor.execute(disagreements_sql(volume_tolerance is not None), params)
        rows = cursor.fetchall()
    rows = sorted(((ns_value(ts), values) for ts, *values in rows), key=lambda row: row[0])
    times = np.fromiter((ts for ts, _ in rows), dtype="int64", count=len(rows))
    numbers = number(times, expected)
    return [Pair(int(n), ts, None if values[3] is None else tuple(values[:5]),
                 None if values[8] is None else tuple(values[5:]))
            for n, (ts, values) in zip(numbers, rows, strict=True)]


def number(times: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """The place of each of ``times`` (sorted) among the union of ``expected`` and ``times``: two
    disagreeing bars are consecutive when no other expected bar lies between them."""
    if not len(times):
        return np.empty(0, dtype="int64")
    return np.searchsorted(np.union1d(expected, times), times)


class ReferenceLookup:
    """The reference's bars by time (ns), looked up by binary search over the fetched frame (no
    per-bar dict is built: only the few disagreeing bars are ever looked up, by the time-shift test)."""

    def __init__(self, times: np.ndarray, values: np.ndarray):
        self.times, self.values = times, values

    @classmethod
    def of(cls, frame: pd.DataFrame) -> ReferenceLookup:
        if frame.empty:
            return cls(np.empty(0, dtype="int64"), np.empty((0, len(FIELDS))))
        return cls(np.asarray(frame["ts"].array.asi8), frame[list(FIELDS)].to_numpy(dtype="float64"))

    def get(self, ts: int) -> tuple[float, ...] | None:
        index = int(np.searchsorted(self.times, ts))
        if index < len(self.times) and self.times[index] == ts:
            return tuple(self.values[index].tolist())
        return None
