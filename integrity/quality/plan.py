"""Incremental scans: which series changed since their last scan, from where to re-read them, and
the watermarks a scan leaves in ``series_stats`` (see ``integrity.quality.anomalies`` for the rules),
and ``rescan_from``, which sends a series back to be re-read when its expected bars changed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Case, F, Max, Min, Q, Value, When
from django.utils import timezone

from ..conf import conf
from ..models import BackfillState, BackfillStatus, Candle, DataAnomaly, SeriesStats
from ..series import chunks, newest_bars_of
from ..timeframes import EPOCH, timeframe_delta
from .findings import SeriesContext
from .record import UNRESOLVED, WHOLE_SERIES_TYPES


def _overlap_bars() -> int:
    return conf.DETECTION_OVERLAP_BARS


@dataclass
class ScanPlan:
    """Which series an incremental scan re-reads (``changed``) and the watermarks it leaves."""

    changed: list[SeriesContext]
    unchanged: list[SeriesContext]
    watermark: int  # the largest candle id when the scan began
    started_at: datetime  # wall clock, comparable with backfills' updated_at
    # stats row id and watermark of each series that has a series_stats row
    stats: dict[tuple[str, str], tuple[int, int | None]] = field(default_factory=dict)


_WHOLE = object()  # "re-read the whole series" (a revision of unknown range)


def _stats_rows(contexts: list[SeriesContext]) -> dict[tuple[str, str], tuple[int, int | None, datetime | None]]:
    """(stats row id, candle-id watermark, scan start) of each series with a series_stats row."""
    symbols = {c.symbol for c in contexts}
    rows = SeriesStats.objects.values_list("symbol", "timeframe", "id", "last_scanned_id", "last_scan_started_at")
    if len(symbols) <= 500:
        rows = rows.filter(symbol__in=symbols)
    keys = {(c.symbol, c.timeframe) for c in contexts}
    return {(r[0], r[1]): r[2:] for r in rows.order_by() if (r[0], r[1]) in keys}


def _scanned_ts(stats_ids: list[int]) -> dict[tuple[str, str], datetime | None]:
    """The last scanned bar of these series_stats rows."""
    found: dict[tuple[str, str], datetime | None] = {}
    for part in chunks(stats_ids):
        found.update({(r[0], r[1]): r[2] for r in SeriesStats.objects.filter(id__in=part)
                      .values_list("symbol", "timeframe", "last_scanned_ts")})
    return found


def plan_scan(contexts: list[SeriesContext], full: bool, types: list[str] | None) -> ScanPlan:
    """Split the series into changed (re-read) and unchanged, and set ``ctx.since`` of the changed.

    A series is changed when it was never scanned (or not since watermarks exist); when candle rows
    with an id above its watermark exist (written by any writer, anywhere in its history); or when a
    backfill of it was in progress, or updated, at or after its last scan began (our backfill revises
    bars in place, without new ids). Two statements over the watchlist decide it: one GROUP BY over
    the candles newer than the oldest watermark (through the primary key) and one over backfills.
    """
    started_at = timezone.now()
    watermark = Candle.objects.aggregate(m=Max("id"))["m"] or 0
    stats = _stats_rows(contexts) if contexts else {}
    plan = ScanPlan(changed=[], unchanged=[], watermark=watermark, started_at=started_at,
                    stats={key: (row[0], row[1]) for key, row in stats.items()})
    if full:
        for ctx in contexts:
            ctx.since = None
        plan.changed = list(contexts)
        return plan

    # Scanned since watermarks exist: (stats id, candle-id watermark, scan start).
    scanned = {key: row for key, row in stats.items() if row[1] is not None and row[2] is not None}
    reread_from: dict[tuple[str, str], Any] = {}  # oldest changed bar (or _WHOLE) per changed series
    dirty: set[tuple[str, str]] = {(c.symbol, c.timeframe) for c in contexts} - set(scanned)
    if scanned:
        oldest_mark = min(row[1] for row in scanned.values())
        if oldest_mark < watermark:
            changed_rows = (Candle.objects.filter(id__gt=oldest_mark).values("symbol", "timeframe")
                            .annotate(newest_id=Max("id"), oldest_ts=Min("ts")).order_by())
            for row in changed_rows:
                key = (row["symbol"], row["timeframe"])
                mine = scanned.get(key)
                if mine is not None and row["newest_id"] > mine[1]:
                    dirty.add(key)
                    # Oldest bar among rows above the oldest watermark: covers this series' new rows.
                    reread_from[key] = row["oldest_ts"]
        cutoff = min(row[2] for row in scanned.values())
        backfills = (BackfillState.objects
                     .filter(Q(status=BackfillStatus.IN_PROGRESS) | Q(updated_at__gte=cutoff))
                     .values_list("symbol", "timeframe", "status", "updated_at", "range_start"))
        for sym, tf, status, updated_at, range_start in backfills:
            key = (sym, tf)
            mine = scanned.get(key)
            if mine is None or not (status == BackfillStatus.IN_PROGRESS or updated_at >= mine[2]):
                continue
            dirty.add(key)
            previous = reread_from.get(key)
            if range_start is None or previous is _WHOLE:
                reread_from[key] = _WHOLE
            elif previous is None or range_start < previous:
                reread_from[key] = range_start

    for ctx in contexts:
        (plan.changed if (ctx.symbol, ctx.timeframe) in dirty else plan.unchanged).append(ctx)
    changed_ids = [stats[(c.symbol, c.timeframe)][0] for c in plan.changed if (c.symbol, c.timeframe) in stats]
    plan_windows(plan.changed, False, types, scanned_ts=_scanned_ts(changed_ids), reread_from=reread_from)
    return plan


def plan_windows(contexts: list[SeriesContext], full: bool, types: list[str] | None,
                 scanned_ts: dict[tuple[str, str], datetime | None] | None = None,
                 reread_from: dict[tuple[str, str], Any] | None = None) -> None:
    """Set ``ctx.since`` for an incremental scan (None = the whole series).

    From the last scanned bar minus the overlap, widened to the oldest changed bar (``reread_from``)
    and to every unresolved window anomaly, each with the same overlap before it.
    """
    if full or not contexts:
        for ctx in contexts:
            ctx.since = None
        return
    symbols = {c.symbol for c in contexts}
    if scanned_ts is None:
        scanned_ts = {
            (s.symbol, s.timeframe): s.last_scanned_ts
            for s in SeriesStats.objects.filter(symbol__in=symbols).only("symbol", "timeframe", "last_scanned_ts")
        }
    reread_from = reread_from or {}
    unresolved = DataAnomaly.objects.filter(resolution_status__in=UNRESOLVED,
                                            execution_id__isnull=True, period_start__isnull=False)
    if len(symbols) <= 500:
        unresolved = unresolved.filter(symbol__in=symbols)
    if types:
        unresolved = unresolved.filter(anomaly_type__in=types)
    oldest_open = {
        (row["symbol"], row["timeframe"]): row["oldest"]
        for row in unresolved.exclude(anomaly_type__in=WHOLE_SERIES_TYPES)
        .values("symbol", "timeframe").annotate(oldest=Min("period_start")).order_by()
    }
    for ctx in contexts:
        key = (ctx.symbol, ctx.timeframe)
        last = scanned_ts.get(key)
        changed = reread_from.get(key)
        if last is None or changed is _WHOLE:
            ctx.since = None
            continue
        overlap = _overlap_bars() * timeframe_delta(ctx.timeframe)
        since = _reread_from(last, overlap)
        for oldest in (changed, oldest_open.get(key)):
            if oldest is not None and since is not None:
                # Re-examine changed bars and every unresolved anomaly's bars, with the overlap before.
                earlier = _reread_from(oldest, overlap)
                since = None if earlier is None else min(since, earlier)
        ctx.since = since


def _reread_from(ts: datetime, overlap: timedelta) -> datetime | None:
    """``ts - overlap``, or None (the whole series) when that is before the epoch.

    Stored ranges come from many writers (a backfill row may say 0001-01-01): the scan clamps
    instead of raising, and a series re-read from before 1970 is simply re-read whole.
    """
    try:
        since = ts - overlap
    except OverflowError:
        return None
    return since if since >= EPOCH else None


def mark_scanned(contexts: list[SeriesContext], now: datetime,
                 scanned_to: dict[tuple[str, str], datetime | None] | None = None,
                 plan: ScanPlan | None = None) -> None:
    """Record the scan of these series in series_stats: when, up to which bar, and the watermarks
    (candle id, wall clock) taken before it began (one upsert for all of them)."""
    if not contexts:
        return
    if scanned_to is None:
        scanned_to = newest_bars_of([(c.symbol, c.timeframe) for c in contexts])
    watermark = plan.watermark if plan else (Candle.objects.aggregate(m=Max("id"))["m"] or 0)
    started_at = plan.started_at if plan else timezone.now()
    rows = [SeriesStats(symbol=c.symbol, timeframe=c.timeframe, last_scan_at=now,
                        last_scanned_ts=scanned_to.get((c.symbol, c.timeframe)), last_scanned_id=watermark,
                        last_scan_started_at=started_at, updated_at=now)
            for c in contexts]
    SeriesStats.objects.bulk_create(rows, update_conflicts=True, unique_fields=["symbol", "timeframe"],
                                    update_fields=["last_scan_at", "last_scanned_ts", "last_scanned_id",
                                                   "last_scan_started_at", "updated_at"],
                                    batch_size=1000)


def _watermark_slack() -> int:
    return conf.DETECTION_WATERMARK_SLACK


def advance_unchanged(plan: ScanPlan) -> None:
    """Move the watermarks of unchanged series far behind the scan's to it (nothing of theirs
    changed up to it), so the change-detection statement keeps reading only recent rows.

    Only series more than ``DETECTION_WATERMARK_SLACK`` ids behind (default 50,000): a steady
    watchlist where a few series change is not rewritten on every scan; the statement reads at most
    that many rows more than what is new.
    """
    limit = plan.watermark - _watermark_slack()
    lagging = [plan.stats[key][0] for key in ((c.symbol, c.timeframe) for c in plan.unchanged)
               if key in plan.stats and (plan.stats[key][1] or 0) < limit]
    for part in chunks(lagging, 5000):
        SeriesStats.objects.filter(id__in=part, last_scanned_id__lt=plan.watermark).update(
            last_scanned_id=plan.watermark, last_scan_started_at=plan.started_at)



def rescan_from(symbol: str, since: datetime) -> int:
    """Make the next incremental scan re-read every series of ``symbol`` from ``since`` (minus the
    overlap): what a change to the instrument's expected bars (a closure recorded or removed) needs,
    since no candle changed. One UPDATE; series never scanned are read whole anyway."""
    return SeriesStats.objects.filter(symbol=symbol).update(
        last_scanned_id=None,
        last_scanned_ts=Case(When(last_scanned_ts__gt=since, then=Value(since)), default=F("last_scanned_ts")),
    )
