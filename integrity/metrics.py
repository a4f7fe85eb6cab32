"""``GET /metrics``: the Prometheus exposition, built with ``prometheus_client`` from a custom collector.

Access:
    * ``METRICS_TOKEN`` set: the request must carry ``Authorization: Bearer <token>``; otherwise 401.
    * ``METRICS_TOKEN`` unset: only loopback clients (``REMOTE_ADDR`` 127.0.0.0/8 or ::1); otherwise
      403. Behind a reverse proxy on the same host every request looks local — set a token there.

Every scrape builds a fresh ``CollectorRegistry`` holding one ``StoreCollector``, which reads the store
at that moment (so every process serving ``/metrics`` reports the same figures, and nothing of the
default global registry — process metrics, other collectors — is exposed).

Gauges:
    marketdata_watched_series                          active series (instrument × timeframe)
    marketdata_stale_series                            stale series (integrity.staleness: a due bar missing
                                                       longer than STALE_GRACE_MINUTES, or no bar at all)
    marketdata_series_lag_seconds{series}              per series ("SYMBOL/TIMEFRAME"): seconds since its oldest
                                                       missing bar was due (0: nothing due is missing;
                                                       no sample for a series with no bar at all)
    marketdata_open_anomalies{severity}                open anomalies per severity
    marketdata_failing_symbols                         symbols with >= 1 consecutive backfill failure
    marketdata_failing_symbols_at_threshold            symbols at or above FAILURE_ALERT_THRESHOLD
    marketdata_backfills{status}                       backfill executions per status
    marketdata_repair_attempts{outcome}                repair attempts recorded on anomalies, per outcome
    marketdata_last_health_run_timestamp_seconds       when the last finished health run finished
    marketdata_last_health_run_duration_seconds        how long it took
    marketdata_last_health_run_status{status}          1 for its status, 0 for the others
    marketdata_workers_alive                           1 when a django-q2 cluster is alive (its heartbeat is current)
    marketdata_worker_clusters                         live django-q2 clusters
    marketdata_worker_processes                        worker processes of the live clusters
    marketdata_worker_heartbeat_age_seconds            since the freshest heartbeat of a live cluster (no sample: none)
    marketdata_queued_tasks                            tasks waiting in the django-q2 queue
    marketdata_oldest_queued_task_age_seconds          how long the oldest of them has waited (0: none; NaN: unknown)
    marketdata_metrics_collector_errors{collector}     1 when a collector failed in this scrape

Histograms:
    marketdata_series_lag_distribution_seconds         the lags of marketdata_series_lag_seconds across the
                                                       watchlist (series with bars): how many series are at most
                                                       N seconds behind, without a label per series
    marketdata_backfill_duration_seconds               started_at → completed_at  } backfill executions completed
    marketdata_backfill_rows                           rows inserted              } in the last RECENT_BACKFILLS

Staleness is computed live (one index-backed query for the watchlist), so it is current between
health runs; everything else is one aggregate query over an indexed column.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta

from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from .conf import conf
from .health import staleness
from .health.summaries import backfill_counts, open_anomaly_totals
from .models import (
    BackfillState,
    BackfillStatus,
    DataAnomaly,
    HealthCheckRun,
    HealthStatus,
    SymbolFailureTracking,
)
from .queue import queue_state
from .repair.recheck import CONFIRMED_AT_SOURCE, FIXED, MISSING_AT_SOURCE, STILL_PRESENT
from .repair.service import BUSY, FAILED

logger = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # what generate_latest writes

# Completed backfill executions within this window feed the duration and rows histograms.
RECENT_BACKFILLS = timedelta(hours=24)
DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600)
ROWS_BUCKETS = (0, 10, 100, 1_000, 10_000, 100_000, 1_000_000)
# 0 (nothing due is missing), a minute, 5 and 15 minutes, an hour, 4 and 12 hours, a day, 3 days, a week.
LAG_BUCKETS = (0, 60, 300, 900, 3600, 4 * 3600, 12 * 3600, 86400, 3 * 86400, 7 * 86400)


def _is_loopback(address: str | None) -> bool:
    try:
        ip = ipaddress.ip_address((address or "").split("%")[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or bool(mapped and mapped.is_loopback)


def check_access(request: HttpRequest) -> HttpResponse | None:
    """None when the request may read the metrics, else the refusal to return."""
    token = conf.METRICS_TOKEN
    if token:
        header = request.META.get("HTTP_AUTHORIZATION", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode()):
            return None
        response = HttpResponse("authentication required\n", status=401, content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    if _is_loopback(request.META.get("REMOTE_ADDR")):
        return None
    return HttpResponse("metrics are served to loopback clients only; set METRICS_TOKEN to allow others\n",
                        status=403, content_type="text/plain")


def _gauge(name: str, doc: str, value: float | None = None, label: str | None = None,
           samples: Iterable[tuple[str, float]] = ()) -> GaugeMetricFamily:
    """One gauge: a single ``value``, or one sample per ``(label value, value)`` under ``label``."""
    if label is None:
        return GaugeMetricFamily(name, doc, value=value)
    family = GaugeMetricFamily(name, doc, labels=[label])
    for label_value, sample in samples:
        family.add_metric([str(label_value)], sample)
    return family


def _histogram(name: str, doc: str, values: list[float], bounds: tuple[float, ...]) -> HistogramMetricFamily:
    buckets = [(str(float(b)), sum(1 for v in values if v <= b)) for b in bounds] + [("+Inf", len(values))]
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=float(sum(values)))


def _stale() -> Iterator[Metric]:
    series = staleness.assess_staleness(timezone.now())
    yield _gauge("marketdata_watched_series", "Active series (instrument x timeframe) on the watchlist.", len(series))
    yield _gauge("marketdata_stale_series",
                 "Series with a bar due at a scheduled backfill missing for more than STALE_GRACE_MINUTES, "
                 "or with no bar at all.", sum(1 for s in series if s.stale))
    lags = [(f"{s.symbol}/{s.timeframe}", (s.lag_hours or 0.0) * 3600) for s in series if s.last_bar is not None]
    yield _gauge("marketdata_series_lag_seconds",
                 "Per series (SYMBOL/TIMEFRAME): seconds since its oldest missing bar was due (0: nothing due is "
                 "missing; no sample for a series with no bar at all).", label="series", samples=lags)
    yield _histogram("marketdata_series_lag_distribution_seconds",
                     "The watchlist's series (those with bars) by lag: seconds since their oldest missing bar was due.",
                     [lag for _, lag in lags], LAG_BUCKETS)


def _anomalies() -> Iterator[Metric]:
    totals = open_anomaly_totals().by_severity
    yield _gauge("marketdata_open_anomalies", "Open (not acknowledged, not resolved) data anomalies by severity.",
                 label="severity", samples=totals.items())


def _failures() -> Iterator[Metric]:
    failing = SymbolFailureTracking.objects.filter(consecutive_failures__gte=1)
    yield _gauge("marketdata_failing_symbols", "Symbols whose last backfill(s) failed (>= 1 consecutive failure).",
                 failing.count())
    yield _gauge("marketdata_failing_symbols_at_threshold",
                 "Symbols with at least FAILURE_ALERT_THRESHOLD consecutive backfill failures.",
                 failing.filter(consecutive_failures__gte=conf.FAILURE_ALERT_THRESHOLD).count())


def _backfills() -> Iterator[Metric]:
    yield _gauge("marketdata_backfills", "Backfill executions by status.", label="status",
                 samples=backfill_counts().items())
    since = timezone.now() - RECENT_BACKFILLS
    rows = list(BackfillState.objects.filter(status=BackfillStatus.COMPLETED, completed_at__gte=since,
                                             started_at__isnull=False)
                .values_list("started_at", "completed_at", "records_inserted"))  # one query
    yield _histogram("marketdata_backfill_duration_seconds",
                     "Duration of the backfill executions completed in the last 24 h.",
                     [max(0.0, (done - start).total_seconds()) for start, done, _ in rows], DURATION_BUCKETS)
    yield _histogram("marketdata_backfill_rows", "Rows inserted by the backfill executions completed in the last 24 h.",
                     [inserted for _, _, inserted in rows], ROWS_BUCKETS)


def _repairs() -> Iterator[Metric]:
    counts = Counter({outcome: 0 for outcome in (FIXED, MISSING_AT_SOURCE, CONFIRMED_AT_SOURCE, STILL_PRESENT,
                                                 FAILED, BUSY)})
    for attempts in DataAnomaly.objects.filter(details__has_key="repairs").values_list("details__repairs",
                                                                                       flat=True):  # one query
        counts.update(str(a.get("outcome")) for a in attempts or [] if isinstance(a, dict))
    yield _gauge("marketdata_repair_attempts", "Repair attempts recorded on anomalies, by outcome.",
                 label="outcome", samples=sorted(counts.items()))


def _last_health_run() -> Iterator[Metric]:
    run = HealthCheckRun.objects.filter(finished_at__isnull=False).order_by("-finished_at").first()
    yield _gauge("marketdata_last_health_run_timestamp_seconds",
                 "Unix time the last finished health run finished (0: never).",
                 run.finished_at.timestamp() if run else 0)
    yield _gauge("marketdata_last_health_run_duration_seconds", "Duration of the last finished health run.",
                 (run.duration_ms or 0) / 1000 if run else 0)
    statuses = [s for s in HealthStatus.values if s != HealthStatus.RUNNING]
    yield _gauge("marketdata_last_health_run_status", "Status of the last finished health run (1 = current).",
                 label="status", samples=[(s, 1 if run and run.status == s else 0) for s in statuses])


def _workers() -> Iterator[Metric]:
    now = timezone.now()
    state = queue_state(now)
    if state.alive is None:
        raise RuntimeError("; ".join(state.errors))  # reported as this collector's error
    yield _gauge("marketdata_workers_alive", "1 when at least one django-q2 cluster is alive (current heartbeat).",
                 1 if state.alive else 0)
    yield _gauge("marketdata_worker_clusters", "Live django-q2 clusters.", len(state.clusters))
    yield _gauge("marketdata_worker_processes", "Worker processes of the live django-q2 clusters.",
                 sum(c["workers"] for c in state.clusters))
    beats = [datetime.fromisoformat(c["heartbeat_at"]) for c in state.clusters if c.get("heartbeat_at")]
    beats = [beat if beat.tzinfo else beat.replace(tzinfo=UTC) for beat in beats]
    if beats:  # no sample when no cluster is alive (marketdata_workers_alive 0 says so)
        yield _gauge("marketdata_worker_heartbeat_age_seconds",
                     "Seconds since the freshest heartbeat of a live django-q2 cluster.",
                     max(0.0, (now - max(beats)).total_seconds()))
    if state.queued is not None:
        yield _gauge("marketdata_queued_tasks", "Tasks waiting in the django-q2 queue (not yet taken by a worker).",
                     state.queued)
        age = state.oldest_queued_seconds(now)
        yield _gauge("marketdata_oldest_queued_task_age_seconds",
                     "Seconds the oldest queued task has waited (0: none queued; NaN: unknown for this broker).",
                     float("nan") if age is None else float(age))


COLLECTORS: list[tuple[str, Callable[[], Iterator[Metric]]]] = [
    ("stale_series", _stale),
    ("anomalies", _anomalies),
    ("failures", _failures),
    ("backfills", _backfills),
    ("repairs", _repairs),
    ("last_health_run", _last_health_run),
    ("workers", _workers),
]


class StoreCollector(Collector):
    """The scrape-time metrics: every part reads the store when collected; a part that fails is left out
    and flagged in ``marketdata_metrics_collector_errors``, the others still report."""

    def collect(self) -> Iterator[Metric]:
        errors = set()
        for name, part in COLLECTORS:
            try:
                families = list(part())  # all or nothing per part
            except Exception:  # noqa: BLE001 — one broken collector must not blank the whole scrape
                logger.exception("metrics collector %s failed", name)
                errors.add(name)
                continue
            yield from families
        yield _gauge("marketdata_metrics_collector_errors", "1 when a collector failed during this scrape.",
                     label="collector", samples=[(name, 1 if name in errors else 0) for name, _ in COLLECTORS])


def render_metrics() -> str:
    """The exposition text of one scrape (a fresh registry: nothing of the process-global one)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector())
    return generate_latest(registry).decode()


@never_cache
@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    refusal = check_access(request)
    if refusal is not None:
        return refusal
    return HttpResponse(render_metrics(), content_type=CONTENT_TYPE)


__all__ = ["metrics", "render_metrics", "check_access", "StoreCollector"]
