"""Whether anything will run the queued work: the ``workers`` entry of the health report, the
dashboard's worker panel, the ``/metrics`` worker gauges and the "no worker" note on queued replies.

A django-q2 cluster is alive when its heartbeat (``Stat``) is current (``integrity.queue``). The
report says how many clusters run, what waits (queued tasks and the oldest one's wait, pending
backfill executions) and, as ``problem``, what needs a person:

- no cluster alive while work waits (a queued task, a pending execution, or a schedule that only a
  cluster runs) → "no worker is running: start `manage.py qcluster`";
- a cluster alive but the oldest queued task has waited more than ``WORKER_QUEUE_WAIT_WARNING_SECONDS``
  → the workers are busy or stuck;
- the clusters' heartbeats cannot be read → said so.

A problem makes the health run a warning (``HealthReport.compute_status``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from django.db.models import Count, Min
from django.utils import timezone
from django_q.models import Schedule

from ..conf import conf
from ..models import BackfillState, BackfillStatus
from ..queue import queue_state, workers_alive

NO_WORKER = "no worker is running: start `manage.py qcluster`"


def duration_text(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@dataclass
class WorkerStatus:
    alive: bool | None  # None: the clusters' heartbeats could not be read
    broker: str
    clusters: list[dict[str, Any]] = field(default_factory=list)
    queued: int | None = None
    oldest_queued_seconds: float | None = None  # None: unknown (or not readable)
    pending_backfills: int = 0
    oldest_pending_seconds: float | None = None
    schedules: int = 0
    problem: str | None = None
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _waiting_work(status: WorkerStatus) -> list[str]:
    parts = []
    if status.queued:
        age = ("" if status.oldest_queued_seconds is None
               else f", the oldest for {duration_text(status.oldest_queued_seconds)}")
        parts.append(f"{status.queued} task(s) queued{age}")
    if status.pending_backfills:
        parts.append(f"{status.pending_backfills} backfill(s) pending")
    if status.schedules:
        parts.append(f"{status.schedules} schedule(s) not running")
    return parts


def _problem(status: WorkerStatus) -> str | None:
    if status.alive is None:
        return "cannot tell whether a worker is running: " + "; ".join(status.errors)
    if not status.alive:
        waiting = _waiting_work(status)
        return f"{NO_WORKER} ({', '.join(waiting)})" if waiting else None
    limit = conf.WORKER_QUEUE_WAIT_WARNING_SECONDS
    if status.oldest_queued_seconds is not None and status.oldest_queued_seconds > limit:
        return (f"the oldest queued task has waited {duration_text(status.oldest_queued_seconds)} with "
                f"{len(status.clusters)} cluster(s) alive (more than {limit} s): the workers are busy or stuck")
    return None


def worker_status(now: datetime | None = None) -> WorkerStatus:
    now = now or timezone.now()
    queue = queue_state(now)
    status = WorkerStatus(alive=queue.alive, broker=queue.broker, clusters=queue.clusters, queued=queue.queued,
                          oldest_queued_seconds=queue.oldest_queued_seconds(now), errors=list(queue.errors))
    pending = BackfillState.objects.filter(status=BackfillStatus.PENDING).aggregate(n=Count("id"),
                                                                                    oldest=Min("created_at"))
    status.pending_backfills = pending["n"]
    if pending["oldest"] is not None:
        status.oldest_pending_seconds = round(max(0.0, (now - pending["oldest"]).total_seconds()), 1)
    status.schedules = Schedule.objects.count()
    status.problem = _problem(status)
    return status


def no_worker_note() -> str | None:
    """For a reply that says "queued": the note to add when no cluster is alive to run it."""
    return NO_WORKER if workers_alive() is False else None


def worker_line(workers: dict[str, Any]) -> str:
    """One line for ``health_check``'s text output, from the report's ``workers`` entry."""
    if workers.get("problem"):
        return f"workers: {workers['problem']}"
    clusters = workers.get("clusters") or []
    processes = sum(c.get("workers", 0) for c in clusters)
    oldest = workers.get("oldest_queued_seconds")
    queued = workers.get("queued")
    wait = f", the oldest for {duration_text(oldest)}" if queued and oldest is not None else ""
    alive = f"{len(clusters)} cluster(s) alive ({processes} worker process(es))" if workers.get("alive") \
        else "no cluster alive, nothing waiting"
    return f"workers: {alive}; {queued if queued is not None else 'unknown'} task(s) queued{wait}"
