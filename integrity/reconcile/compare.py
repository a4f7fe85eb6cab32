"""The set-based part of a reconciliation: stage the reference's bars (``reference_bars``, keyed by
the run), then one statement joins them with the stored series over the window and returns only the
bar pairs that disagree — a price (or volume) beyond the tolerance, or a bar one side lacks —
numbered by their place in the union of both sides' bar times, so the Python post-pass
(``classify``) can tell consecutive bars without reading the agreeing ones."""

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
    """A disagreeing bar: its place ``n`` in the window's union of bar times, its time (ns) and each
    side's (open, high, low, close, volume), None for the side that lacks it."""

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
    """The classification statement; parameters: symbol, timeframe, start, end (stored), run, start,
    end (reference), then the price tolerance four times and, with ``volume``, the volume tolerance."""
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
        ), pairs AS (
            SELECT COALESCE(s.ts, r.ts) AS ts,
                   s.open AS so, s.high AS sh, s.low AS sl, s.close AS sc, s.volume AS sv,
                   r.open AS ro, r.high AS rh, r.low AS rl, r.close AS rc, r.volume AS rv,
                   CASE WHEN s.ts IS NULL OR r.ts IS NULL OR {differs} THEN 1 ELSE 0 END AS bad
            FROM s FULL OUTER JOIN r ON r.ts = s.ts
        ), numbered AS (
            SELECT pairs.*, ROW_NUMBER() OVER (ORDER BY ts) AS n FROM pairs
        )
        SELECT n, ts, so, sh, sl, sc, sv, ro, rh, rl, rc, rv FROM numbered WHERE bad = 1 ORDER BY n
    """


def disagreements(symbol: str, timeframe: str, run_id: uuid.UUID, start: datetime, end: datetime,
                  tolerance: float, volume_tolerance: float | None) -> list[Pair]:
    """The disagreeing bar pairs of the series against the run's staged bars in ``[start, end)``."""
    params = [symbol, timeframe, to_db(start), to_db(end), _run_param(run_id), to_db(start), to_db(end),
              *[tolerance] * 4]
    if volume_tolerance is not None:
        params.append(volume_tolerance)
    with connection.cursor() as cursor:
        cursor.execute(disagreements_sql(volume_tolerance is not None), params)
        rows = cursor.fetchall()
    pairs = []
    for n, ts, *values in rows:
        stored, reference = tuple(values[:5]), tuple(values[5:])
        pairs.append(Pair(int(n), ns_value(ts), None if stored[3] is None else stored,
                          None if reference[3] is None else reference))
    return pairs


def reference_lookup(frame: pd.DataFrame) -> dict[int, tuple[float, ...]]:
    """The reference's bars by time (ns): what the time-shift test looks bars up in."""
    if frame.empty:
        return {}
    times = frame["ts"].array.asi8
    values = frame[list(FIELDS)].to_numpy(dtype="float64")
    return dict(zip(np.asarray(times).tolist(), map(tuple, values.tolist()), strict=True))
