"""``GET /metrics``: Prometheus text exposition (format 0.0.4), written by hand.

Access:
    * ``METRICS_TOKEN`` set: the request must carry ``Authorization: Bearer <token>``; otherwise 401.
    * ``METRICS_TOKEN`` unset: only loopback clients (``REMOTE_ADDR`` 127.0.0.0/8 or ::1); otherwise
      403. Behind a reverse proxy on the same host every request looks local — set a token there.

Metrics (gauges):
    marketdata_watched_series                          active series (instrument × timeframe)
    marketdata_stale_series                            stale series (integrity.staleness: a due bar missing
                                                       longer than STALE_GRACE_MINUTES, or no bar at all)
    marketdata_open_anomalies{severity}                open anomalies per severity
    marketdata_failing_symbols                         symbols with >= 1 consecutive backfill failure
    marketdata_failing_symbols_at_threshold            symbols at or above FAILURE_ALERT_THRESHOLD
    marketdata_backfills{status}                       backfill executions per status
    marketdata_last_health_run_timestamp_seconds       when the last finished health run finished
    marketdata_last_health_run_duration_seconds        how long it took
    marketdata_last_health_run_status{status}          1 for its status, 0 for the others
    marketdata_workers_alive                           1 when a django-q2 cluster is alive (its heartbeat is current)
    marketdata_worker_clusters                         live django-q2 clusters
    marketdata_worker_processes                        worker processes of the live clusters
    marketdata_queued_tasks                            tasks waiting in the django-q2 queue
    marketdata_oldest_queued_task_age_seconds          how long the oldest of them has waited (0: none; NaN: unknown)
    marketdata_metrics_collector_errors{collector}     1 when a collector failed in this scrape

Staleness is computed live (one index-backed query for the watchlist), so it is current between
health runs; everything else is a COUNT over an indexed column.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from .conf import conf
from .health import staleness
from .health.summaries import backfill_counts, open_anomaly_totals
from .models import HealthCheckRun, HealthStatus, SymbolFailureTracking
from .queue import queue_state

logger = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


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


def _escape(value: str) -> str:
    return str(value).replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


class Exposition:
    def __init__(self):
        self.lines: list[str] = []

    def metric(self, name: str, help_text: str, samples: list[tuple[dict[str, str], float]]) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} gauge")
        for labels, value in samples:
            label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            self.lines.append(f"{name}{{{label_text}}} {_number(value)}" if label_text else f"{name} {_number(value)}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _number(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    value = float(value)
    return "NaN" if value != value else repr(value)  # Prometheus spells it NaN


def _stale(out: Exposition) -> None:
    series = staleness.assess_staleness(timezone.now())
    out.metric("marketdata_watched_series", "Active series (instrument x timeframe) on the watchlist.",
               [({}, len(series))])
    out.metric("marketdata_stale_series",
               "Series with a bar due at a scheduled backfill missing for more than STALE_GRACE_MINUTES, "
               "or with no bar at all.",
               [({}, sum(1 for s in series if s.stale))])


def _anomalies(out: Exposition) -> None:
    totals = open_anomaly_totals().by_severity
    out.metric("marketdata_open_anomalies", "Open (not acknowledged, not resolved) data anomalies by severity.",
               [({"severity": k}, v) for k, v in totals.items()])


def _failures(out: Exposition) -> None:
    threshold = conf.FAILURE_ALERT_THRESHOLD
    failing = SymbolFailureTracking.objects.filter(consecutive_failures__gte=1)
    out.metric("marketdata_failing_symbols", "Symbols whose last backfill(s) failed (>= 1 consecutive failure).",
               [({}, failing.count())])
    out.metric("marketdata_failing_symbols_at_threshold",
               "Symbols with at least FAILURE_ALERT_THRESHOLD consecutive backfill failures.",
               [({}, failing.filter(consecutive_failures__gte=threshold).count())])


def _backfills(out: Exposition) -> None:
    out.metric("marketdata_backfills", "Backfill executions by status.",
               [({"status": k}, v) for k, v in backfill_counts().items()])


def _last_health_run(out: Exposition) -> None:
    run = HealthCheckRun.objects.filter(finished_at__isnull=False).order_by("-finished_at").first()
    out.metric("marketdata_last_health_run_timestamp_seconds",
               "Unix time the last finished health run finished (0: never).",
               [({}, run.finished_at.timestamp() if run else 0)])
    out.metric("marketdata_last_health_run_duration_seconds", "Duration of the last finished health run.",
               [({}, (run.duration_ms or 0) / 1000 if run else 0)])
    statuses = [s for s in HealthStatus.values if s != HealthStatus.RUNNING]
    out.metric("marketdata_last_health_run_status", "Status of the last finished health run (1 = current).",
               [({"status": s}, 1 if run and run.status == s else 0) for s in statuses])


def _workers(out: Exposition) -> None:
    now = timezone.now()
    state = queue_state(now)
    if state.alive is None:
        raise RuntimeError("; ".join(state.errors))  # reported as this collector's error
    out.metric("marketdata_workers_alive", "1 when at least one django-q2 cluster is alive (current heartbeat).",
               [({}, 1 if state.alive else 0)])
    out.metric("marketdata_worker_clusters", "Live django-q2 clusters.", [({}, len(state.clusters))])
    out.metric("marketdata_worker_processes", "Worker processes of the live django-q2 clusters.",
               [({}, sum(c["workers"] for c in state.clusters))])
    if state.queued is not None:
        out.metric("marketdata_queued_tasks", "Tasks waiting in the django-q2 queue (not yet taken by a worker).",
                   [({}, state.queued)])
        age = state.oldest_queued_seconds(now)
        out.metric("marketdata_oldest_queued_task_age_seconds",
                   "Seconds the oldest queued task has waited (0: none queued; NaN: unknown for this broker).",
                   [({}, float("nan") if age is None else float(age))])


COLLECTORS: list[tuple[str, Callable[[Exposition], None]]] = [
    ("stale_series", _stale),
    ("anomalies", _anomalies),
    ("failures", _failures),
    ("backfills", _backfills),
    ("last_health_run", _last_health_run),
    ("workers", _workers),
]


def render_metrics() -> str:
    out = Exposition()
    errors = []
    for name, collect in COLLECTORS:
        try:
            collect(out)
        except Exception:  # noqa: BLE001 — one broken collector must not blank the whole scrape
            logger.exception("metrics collector %s failed", name)
            errors.append(name)
    out.metric("marketdata_metrics_collector_errors", "1 when a collector failed during this scrape.",
               [({"collector": name}, 1 if name in errors else 0) for name, _ in COLLECTORS])
    return out.text()


@never_cache
@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    refusal = check_access(request)
    if refusal is not None:
        return refusal
    return HttpResponse(render_metrics(), content_type=CONTENT_TYPE)


__all__ = ["metrics", "render_metrics", "check_access"]
