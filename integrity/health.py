"""The health-monitoring job: one pass over the whole watchlist, recorded as a ``HealthCheckRun``.

``run_health_monitoring`` runs these checks, each in its own ``try``: a check that raises is recorded
in the run's ``errors`` (and makes the run critical) while the others still run.

1. ``reap`` — fail backfills whose worker is gone (``reap_dead_backfills``), freeing their series.
2. ``staleness`` — for every active series (instrument × its timeframes): the last stored bar against
   the newest bar its calendar expects to be complete now (``last_completed_bar``). A series is
   stale when it is more than ``HEALTH_STALE_HOURS`` (6) behind, or has no bar at all. Calendar-aware:
   on a Saturday morning an equity whose last bar is Friday's is *not* behind. The last bars come
   from one query for the whole watchlist (see ``last_bars``), never one query per series.
3. ``failures`` — symbols with consecutive backfill failures (>= 1), flagged at
   ``FAILURE_ALERT_THRESHOLD``.
4. ``anomaly_scan`` — the anomaly suite, incrementally (``detect_data_anomalies()``): stale for
   every series (reusing the newest bars the staleness check read), the other detectors only for
   series changed since their last scan — see ``integrity.quality.anomalies``.
5. ``anomaly_totals`` — open anomalies by severity and by type.
6. ``alerts`` — see below.

Status: ``critical`` if any *open* critical anomaly, any symbol at or above the failure threshold, or
any check errored; ``warning`` if any stale series, any open high anomaly or any symbol with at least
one consecutive failure; ``healthy`` otherwise. (Acknowledged anomalies do not count: a human has
them in hand.)

Alerts, each sent once, claimed by a compare-and-set update before sending (so two concurrent runs
never both send):
    * a series that becomes stale — ``series_stats.stale_alert_sent_at`` set when alerted, cleared
      when the series is fresh again (re-arming it); one digest alert per run lists the newly stale
      series; with ``ALERT_RECOVERY_NOTICES`` a digest of series fresh again is sent too;
    * a critical open anomaly — ``data_anomalies.alert_sent_at`` (whoever created it: this job, the
      ``detect_anomalies`` command, a backfill); one digest alert per run;
    * a symbol at the failure threshold whose alert was never sent (e.g. the threshold was lowered) —
      the same ``alert_sent`` flag ``track_symbol_failure`` uses, so never twice.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, Max
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from .alerts import Alert, recovery_notices_enabled, send_alert
from .calendars import last_completed_bar
from .models import (
    BackfillState,
    Candle,
    DataAnomaly,
    HealthCheckRun,
    HealthStatus,
    Instrument,
    ResolutionStatus,
    SeriesStats,
    Severity,
    SymbolFailureTracking,
    Timeframe,
)

logger = logging.getLogger(__name__)

# Lists in the stored results are cut at this length (the counts are always complete).
MAX_LISTED = 1000
# Series named in one digest alert's text (the context carries up to MAX_LISTED).
MAX_IN_ALERT_TEXT = 50
_CHUNK = 500

SEVERITIES = [s.value for s in Severity]


def stale_hours() -> float:
    return float(getattr(settings, "HEALTH_STALE_HOURS", 6.0))


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _aware(value) -> datetime | None:
    """A datetime from a raw query: psycopg gives aware datetimes, SQLite gives text (UTC)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = parse_datetime(value)
    if value is not None and value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value


def _chunks(items: list, size: int = _CHUNK) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


# --- staleness ---------------------------------------------------------------------------------


@dataclass
class SeriesFreshness:
    symbol: str
    timeframe: str
    calendar: str
    last_bar: datetime | None
    stats_id: int | None = None
    stale_alert_sent_at: datetime | None = None
    expected_bar: datetime | None = None
    hours_behind: float | None = None
    stale: bool = False
    alignment: str = "clock"

    def as_dict(self) -> dict[str, Any]:
        return {
            "symbol": self.symbol,
            "timeframe": self.timeframe,
            "calendar": self.calendar,
            "last_bar": _iso(self.last_bar),
            "expected_bar": _iso(self.expected_bar),
            "hours_stale": None if self.hours_behind is None else round(self.hours_behind, 2),
        }


_LAST_BARS_SQL = {
    # One statement for the whole watchlist. The correlated max(ts) is answered from the
    # (symbol, timeframe, ts) index with one backward probe per series (PostgreSQL's and SQLite's
    # min/max optimisation), so the cost grows with the number of series, not with their history
    # — a plain GROUP BY over candles reads every row (see bench/bench_health.py). The LEFT JOIN
    # brings the stale-alert state along. On PostgreSQL the timeframes are matched by containment
    # against the known list rather than unnested: the planner then estimates the row count well
    # (set-returning functions are assumed to return 100 rows, which made it JIT-compile the plan).
    "postgresql": """
        SELECT i.symbol, tf.value, i.calendar,
               (SELECT max(c.ts) FROM {candles} c WHERE c.symbol = i.symbol AND c.timeframe = tf.value),
               ss.id, ss.stale_alert_sent_at, i.bar_alignment
        FROM {instruments} i
        JOIN (VALUES {timeframes}) AS tf(value) ON i.timeframes @> jsonb_build_array(tf.value)
        LEFT JOIN {stats} ss ON ss.symbol = i.symbol AND ss.timeframe = tf.value
        WHERE i.active
    """,
    "sqlite": """
        SELECT i.symbol, tf.value, i.calendar,
               (SELECT max(c.ts) FROM {candles} c WHERE c.symbol = i.symbol AND c.timeframe = tf.value),
               ss.id, ss.stale_alert_sent_at, i.bar_alignment
        FROM {instruments} i
        JOIN json_each(CASE WHEN json_type(i.timeframes) = 'array' THEN i.timeframes ELSE '[]' END) AS tf
        LEFT JOIN {stats} ss ON ss.symbol = i.symbol AND ss.timeframe = tf.value
        WHERE i.active AND tf.value IN (SELECT column1 FROM (VALUES {timeframes}))
    """,
}


def last_bars() -> list[SeriesFreshness]:
    """Every active series with its last stored bar and its stale-alert state, in one query."""
    sql = _LAST_BARS_SQL.get(connection.vendor)
    if sql is None:
        return _last_bars_orm()
    sql = sql.format(candles=Candle._meta.db_table, instruments=Instrument._meta.db_table,
                     stats=SeriesStats._meta.db_table,
                     timeframes=", ".join(f"('{tf}')" for tf in Timeframe.values))  # fixed choices, not input
    seen: set[tuple[str, str]] = set()
    series = []
    with connection.cursor() as cursor:
        cursor.execute(sql)
        for symbol, tf, calendar, last, stats_id, alerted, alignment in cursor.fetchall():
            if (symbol, tf) in seen:  # a timeframe listed twice on an instrument
                continue
            seen.add((symbol, tf))
            series.append(SeriesFreshness(symbol, tf, calendar, _aware(last), stats_id, _aware(alerted),
                                          alignment=alignment))
    series.sort(key=lambda s: (s.symbol, s.timeframe))
    return series


def _last_bars_orm() -> list[SeriesFreshness]:
    """Portable fallback: one GROUP BY over the watchlist's candles."""
    instruments = list(Instrument.objects.filter(active=True).values_list("symbol", "calendar", "timeframes",
                                                                          "bar_alignment"))
    symbols = [i[0] for i in instruments]
    last = {}
    stats = {}
    for chunk in _chunks(symbols):
        for row in (Candle.objects.filter(symbol__in=chunk).values("symbol", "timeframe")
                    .annotate(last=Max("ts")).order_by()):
            last[(row["symbol"], row["timeframe"])] = row["last"]
        for row in SeriesStats.objects.filter(symbol__in=chunk).values_list(
                "symbol", "timeframe", "id", "stale_alert_sent_at"):
            stats[(row[0], row[1])] = (row[2], row[3])
    series = []
    for symbol, calendar, timeframes, alignment in instruments:
        for tf in dict.fromkeys(timeframes if isinstance(timeframes, list) else []):
            stats_id, alerted = stats.get((symbol, tf), (None, None))
            series.append(SeriesFreshness(symbol, tf, calendar, last.get((symbol, tf)), stats_id, alerted,
                                          alignment=alignment))
    series.sort(key=lambda s: (s.symbol, s.timeframe))
    return series


def assess_staleness(now: datetime, errors: list | None = None) -> list[SeriesFreshness]:
    """All active series, judged against their calendar's newest completed bar at ``now``.

    A calendar that cannot be evaluated (a misconfigured instrument) is reported in ``errors`` and
    its series are skipped; the others are still judged.
    """
    threshold = stale_hours()
    series = last_bars()
    expected: dict[tuple[str, str, str], datetime | None] = {}
    broken: set[tuple[str, str, str]] = set()
    judged = []
    for item in series:
        key = (item.calendar, item.timeframe, item.alignment)
        if key in broken:
            continue
        if key not in expected:
            try:
                expected[key] = last_completed_bar(item.calendar, item.timeframe, now, item.alignment)
            except Exception as exc:  # noqa: BLE001 — one bad calendar must not hide the other series
                broken.add(key)
                if errors is not None:
                    errors.append({"check": "staleness",
                                   "error": f"calendar {item.calendar!r} {item.timeframe}: {exc}"})
                continue
        item.expected_bar = expected[key]
        if item.last_bar is None:
            item.stale = True  # on the watchlist, never loaded
        elif item.expected_bar is not None:
            item.hours_behind = max(0.0, (item.expected_bar - item.last_bar).total_seconds() / 3600)
            item.stale = item.hours_behind > threshold
        judged.append(item)
    return judged


def _claim(model, ids: list[int], field: str, value) -> list[int]:
    """Compare-and-set ``field`` from NULL to ``value`` (or back to NULL) on ``ids``; the ids we won.

    The rows are locked and re-checked in one transaction (PostgreSQL re-evaluates the WHERE clause
    on rows another transaction changed; SQLite's IMMEDIATE transactions serialise writers), so of
    concurrent claimers exactly one wins each row.
    """
    won: list[int] = []
    lookup = {f"{field}__isnull": value is not None}
    for chunk in _chunks(ids):
        with transaction.atomic():
            mine = list(model.objects.select_for_update().filter(pk__in=chunk, **lookup)
                        .values_list("pk", flat=True))
            if mine:
                model.objects.filter(pk__in=mine).update(**{field: value})
        won.extend(mine)
    return won


def _ensure_stats_rows(items: list[SeriesFreshness]) -> None:
    """Create the missing ``series_stats`` rows of ``items`` and fill in their ids."""
    missing = [s for s in items if s.stats_id is None]
    if not missing:
        return
    SeriesStats.objects.bulk_create(
        [SeriesStats(symbol=s.symbol, timeframe=s.timeframe) for s in missing],
        ignore_conflicts=True, batch_size=_CHUNK,
    )
    by_key = {(s.symbol, s.timeframe): s for s in missing}
    for chunk in _chunks(sorted({s.symbol for s in missing})):
        for pk, symbol, tf, alerted in SeriesStats.objects.filter(symbol__in=chunk).values_list(
                "id", "symbol", "timeframe", "stale_alert_sent_at"):
            item = by_key.get((symbol, tf))
            if item is not None:
                item.stats_id, item.stale_alert_sent_at = pk, alerted


def _series_lines(items: list[SeriesFreshness]) -> str:
    lines = []
    for s in items[:MAX_IN_ALERT_TEXT]:
        if s.last_bar is None:
            lines.append(f"- {s.symbol} {s.timeframe}: no bars stored")
        else:
            lines.append(f"- {s.symbol} {s.timeframe}: last bar {s.last_bar:%Y-%m-%d %H:%M} UTC, "
                         f"{s.hours_behind:.1f} h behind (expected {s.expected_bar:%Y-%m-%d %H:%M})")
    if len(items) > MAX_IN_ALERT_TEXT:
        lines.append(f"… and {len(items) - MAX_IN_ALERT_TEXT} more")
    return "\n".join(lines)


def alert_stale_transitions(series: list[SeriesFreshness]) -> list[dict[str, Any]]:
    """Alert series that became stale (once), re-arm series that are fresh again."""
    sent: list[dict[str, Any]] = []
    stale = [s for s in series if s.stale]
    _ensure_stats_rows(stale)
    candidates = {s.stats_id: s for s in stale if s.stale_alert_sent_at is None and s.stats_id is not None}
    newly = [candidates[pk] for pk in _claim(SeriesStats, list(candidates), "stale_alert_sent_at", timezone.now())]
    if newly:
        newly.sort(key=lambda s: (s.symbol, s.timeframe))
        names = ", ".join(f"{s.symbol} {s.timeframe}" for s in newly[:3]) + (" …" if len(newly) > 3 else "")
        alert = Alert(
            kind="series_stale",
            subject=f"{len(newly)} series became stale: {names}",
            message=f"No new bars for more than {stale_hours():g} h past the expected bar:\n" + _series_lines(newly),
            severity="high",
            context={"series": [s.as_dict() for s in newly[:MAX_LISTED]], "count": len(newly),
                     "threshold_hours": stale_hours()},
        )
        sent.append(_deliver(alert))
    fresh = {s.stats_id: s for s in series if not s.stale and s.stale_alert_sent_at is not None}
    recovered = [fresh[pk] for pk in _claim(SeriesStats, list(fresh), "stale_alert_sent_at", None)]
    if recovered and recovery_notices_enabled():
        recovered.sort(key=lambda s: (s.symbol, s.timeframe))
        alert = Alert(
            kind="series_fresh",
            subject=f"{len(recovered)} series fresh again: "
                    + ", ".join(f"{s.symbol} {s.timeframe}" for s in recovered[:3])
                    + (" …" if len(recovered) > 3 else ""),
            message="\n".join(f"- {s.symbol} {s.timeframe}: last bar {_iso(s.last_bar)}"
                              for s in recovered[:MAX_IN_ALERT_TEXT]),
            severity="low",
            context={"series": [s.as_dict() for s in recovered[:MAX_LISTED]], "count": len(recovered)},
        )
        sent.append(_deliver(alert))
    return sent


# --- failures, anomalies -------------------------------------------------------------------------


def failing_symbols() -> list[dict[str, Any]]:
    threshold = settings.FAILURE_ALERT_THRESHOLD
    rows = SymbolFailureTracking.objects.filter(consecutive_failures__gte=1).order_by(
        "-consecutive_failures", "symbol")
    return [
        {
            "symbol": row.symbol,
            "consecutive_failures": row.consecutive_failures,
            "last_failure_at": _iso(row.last_failure_at),
            "last_error": (row.last_error or "")[:300],
            "at_threshold": row.consecutive_failures >= threshold,
            "alert_sent": row.alert_sent,
        }
        for row in rows
    ]


def alert_unsent_failures() -> list[dict[str, Any]]:
    """Safety net: symbols at the threshold whose alert never went out (same flag as failures.py)."""
    sent = []
    threshold = settings.FAILURE_ALERT_THRESHOLD
    for row in SymbolFailureTracking.objects.filter(alert_sent=False, consecutive_failures__gte=threshold):
        won = SymbolFailureTracking.objects.filter(
            pk=row.pk, alert_sent=False, consecutive_failures__gte=threshold
        ).update(alert_sent=True, alert_sent_at=timezone.now())
        if won:
            sent.append(_deliver(Alert(
                kind="symbol_failing",
                subject=f"{row.symbol}: {row.consecutive_failures} consecutive backfill failures",
                message=f"Last error: {row.last_error or 'unknown'}",
                severity="high",
                context={"symbol": row.symbol, "consecutive_failures": row.consecutive_failures},
            )))
    return sent


def open_anomaly_totals() -> dict[str, Any]:
    by_severity = dict.fromkeys(SEVERITIES, 0)
    by_type: dict[str, int] = {}
    rows = (DataAnomaly.objects.filter(resolution_status=ResolutionStatus.OPEN)
            .values("severity", "anomaly_type").annotate(n=Count("id")).order_by())
    for row in rows:
        by_severity[row["severity"]] = by_severity.get(row["severity"], 0) + row["n"]
        by_type[row["anomaly_type"]] = by_type.get(row["anomaly_type"], 0) + row["n"]
    return {"open": sum(by_severity.values()), "by_severity": by_severity, "by_type": dict(sorted(by_type.items()))}


def alert_critical_anomalies() -> list[dict[str, Any]]:
    """One alert for the open critical anomalies not alerted yet (each claimed by CAS first)."""
    pending = list(DataAnomaly.objects.filter(
        severity=Severity.CRITICAL, resolution_status=ResolutionStatus.OPEN, alert_sent_at__isnull=True,
    ).order_by("detected_at", "id").only("id", "symbol", "timeframe", "anomaly_type", "description",
                                         "period_start", "period_end"))
    # Claimed in batches (one locked SELECT and one UPDATE per chunk), not one UPDATE per anomaly.
    claimed = set(_claim(DataAnomaly, [a.pk for a in pending], "alert_sent_at", timezone.now()))
    won = [a for a in pending if a.pk in claimed]
    if not won:
        return []
    listed = "\n".join(f"- #{a.pk} {a.symbol} {a.timeframe} {a.anomaly_type}: {a.description}"
                       for a in won[:MAX_IN_ALERT_TEXT])
    if len(won) > MAX_IN_ALERT_TEXT:
        listed += f"\n… and {len(won) - MAX_IN_ALERT_TEXT} more"
    first = won[0]
    subject = (f"critical {first.anomaly_type} on {first.symbol} {first.timeframe}" if len(won) == 1
               else f"{len(won)} new critical anomalies")
    return [_deliver(Alert(
        kind="critical_anomaly",
        subject=subject,
        message=listed,
        severity="critical",
        context={"anomalies": [{"id": a.pk, "symbol": a.symbol, "timeframe": a.timeframe,
                                "anomaly_type": a.anomaly_type, "description": a.description,
                                "period_start": _iso(a.period_start), "period_end": _iso(a.period_end)}
                               for a in won[:MAX_LISTED]],
                 "count": len(won)},
    ))]


def _deliver(alert: Alert) -> dict[str, Any]:
    return {"kind": alert.kind, "subject": alert.subject, "severity": alert.severity,
            "channels": send_alert(alert)}


# --- the job -----------------------------------------------------------------------------------


def compute_status(report: dict[str, Any]) -> str:
    anomalies = report.get("anomalies", {}).get("open_by_severity", {})
    failing = report.get("failing_symbols", {})
    if report.get("errors") or anomalies.get("critical", 0) or failing.get("at_threshold", 0):
        return HealthStatus.CRITICAL.value
    if report.get("stale_series", {}).get("count", 0) or anomalies.get("high", 0) or failing.get("count", 0):
        return HealthStatus.WARNING.value
    return HealthStatus.HEALTHY.value


def _run_check(name: str, report: dict[str, Any], check: Callable[[], None]) -> None:
    started = time.monotonic()
    try:
        check()
    except Exception as exc:  # noqa: BLE001 — recorded on the run; the other checks go on
        logger.exception("health check %s failed", name)
        report["errors"].append({
            "check": name,
            "error": f"{exc.__class__.__name__}: {exc}"[:2000],
            "traceback": traceback.format_exc()[-4000:],
        })
    report["timings_ms"][name] = round((time.monotonic() - started) * 1000, 1)


def run_health_monitoring(now: datetime | None = None, *, scan_anomalies: bool = True) -> dict[str, Any]:
    """Run every check, send the alerts due, persist a ``HealthCheckRun`` and return its report.

    ``scan_anomalies=False`` skips the anomaly suite (the totals of stored anomalies and their
    alerts still run); ``report["anomaly_scan"]`` is then None.
    """
    started_at = timezone.now()
    started = time.monotonic()
    now = now or started_at
    run = HealthCheckRun.objects.create(started_at=started_at, status=HealthStatus.RUNNING)
    report: dict[str, Any] = {
        "run_id": run.pk,
        "status": HealthStatus.RUNNING.value,
        "as_of": now.isoformat(),
        "started_at": started_at.isoformat(),
        "reaped_backfills": [],
        "stale_series": {"count": 0, "threshold_hours": stale_hours(), "series": []},
        "failing_symbols": {"count": 0, "at_threshold": 0, "threshold": settings.FAILURE_ALERT_THRESHOLD,
                            "symbols": []},
        "anomaly_scan": None,
        "anomalies": {"open": 0, "open_by_severity": dict.fromkeys(SEVERITIES, 0), "open_by_type": {}},
        "alerts": [],
        "errors": [],
        "timings_ms": {},
    }
    series: list[SeriesFreshness] = []

    def reap():
        from .backfill import reap_dead_backfills

        report["reaped_backfills"] = [
            {"execution_id": str(s.execution_id), "symbol": s.symbol, "timeframe": s.timeframe,
             "error": s.error_message}
            for s in reap_dead_backfills(now=now)
        ]

    def staleness():
        series.extend(assess_staleness(now, report["errors"]))
        stale = sorted((s for s in series if s.stale),
                       key=lambda s: (-(s.hours_behind if s.hours_behind is not None else float("inf")),
                                      s.symbol, s.timeframe))
        report["stale_series"].update({
            "count": len(stale),
            "watched": len(series),
            "series": [s.as_dict() for s in stale[:MAX_LISTED]],
            "truncated": len(stale) > MAX_LISTED,
        })

    def failures():
        rows = failing_symbols()
        report["failing_symbols"].update({
            "count": len(rows),
            "at_threshold": sum(1 for r in rows if r["at_threshold"]),
            "symbols": rows[:MAX_LISTED],
        })

    def anomaly_scan():
        from .quality.anomalies import detect_data_anomalies

        # The staleness check has just read every watched series' newest bar: share it.
        newest = {(s.symbol, s.timeframe): s.last_bar for s in series}
        result = detect_data_anomalies(now=now, newest_bars=newest)
        report["anomaly_scan"] = {**result.as_dict(), "new_anomalies": len(result.new_anomaly_ids)}

    def anomaly_totals():
        totals = open_anomaly_totals()
        report["anomalies"] = {"open": totals["open"], "open_by_severity": totals["by_severity"],
                               "open_by_type": totals["by_type"]}

    def alerts():
        sent = report["alerts"]
        # Each kind on its own, so one failing does not stop the next.
        for name, deliver in (("stale", lambda: alert_stale_transitions(series)),
                              ("critical_anomalies", alert_critical_anomalies),
                              ("failing_symbols", alert_unsent_failures)):
            _run_check(f"alerts.{name}", report, lambda d=deliver: sent.extend(d()))

    try:
        _run_check("reap", report, reap)
        _run_check("staleness", report, staleness)
        _run_check("failures", report, failures)
        if scan_anomalies:
            _run_check("anomaly_scan", report, anomaly_scan)
        _run_check("anomaly_totals", report, anomaly_totals)
        alerts()  # times and records its parts itself
    finally:
        finished_at = timezone.now()
        report["status"] = compute_status(report)
        report["finished_at"] = finished_at.isoformat()
        report["duration_ms"] = int((time.monotonic() - started) * 1000)
        HealthCheckRun.objects.filter(pk=run.pk).update(
            finished_at=finished_at,
            duration_ms=report["duration_ms"],
            status=report["status"],
            results=report,
            errors=report["errors"],
            alerts_sent=len(report["alerts"]),
        )
    logger.info("health run %s: %s (%s stale, %s failing, %s open anomalies, %s alert(s), %s error(s)) in %s ms",
                run.pk, report["status"], report["stale_series"]["count"], report["failing_symbols"]["count"],
                report["anomalies"]["open"], len(report["alerts"]), len(report["errors"]), report["duration_ms"])
    return report


def backfill_counts() -> dict[str, int]:
    from .models import BackfillStatus

    counts = dict.fromkeys(BackfillStatus.values, 0)
    for row in BackfillState.objects.values("status").annotate(n=Count("id")).order_by():
        counts[row["status"]] = row["n"]
    return counts
