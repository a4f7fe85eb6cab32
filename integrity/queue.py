"""The django-q2 queue as the app sees it: which clusters are alive, what waits in the queue and since
when, and taking one not-yet-started task out of it. Read through the library's own API only.

Liveness: every running ``qcluster`` saves its ``django_q.status.Stat`` (its heartbeat) every guard
cycle with a lifetime of a few seconds; ``Stat.get_all()`` reads the live ones. With the Redis broker
the stats live in Redis; with the database (ORM) broker they live in the Django cache that
``Q_CLUSTER["cache"]`` names, which must be shared between processes: ``marketdata_site/settings.py``
points it at the ``workers`` cache, a ``DatabaseCache`` whose table ``manage.py migrate`` creates
(``create_stats_cache_table``). A stat in the Stopped or Stopping state is not a live cluster.

The oldest queued task: on the database broker the not-yet-taken ``OrmQ`` rows of this cluster's
queue (``lock`` in the past), the oldest read from its signed package's ``started`` (the enqueue
time); on Redis the head of the list. Elsewhere the age is unknown (None) and said so.

Every read runs in a savepoint and answers "unknown" rather than raise: the admin, the API and
``/metrics`` call these while doing something else.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.core.management import call_command
from django.db import DEFAULT_DB_ALIAS, transaction
from django.utils import timezone
from django_q.brokers import get_broker
from django_q.conf import Conf
from django_q.signing import SignedPackage
from django_q.status import Stat

logger = logging.getLogger(__name__)

NOT_RUNNING = {str(Conf.STOPPED), str(Conf.STOPPING)}


@dataclass
class QueueState:
    """What the queue looks like now. ``alive`` is None when the clusters' stats could not be read."""

    broker: str
    alive: bool | None = None
    clusters: list[dict[str, Any]] = field(default_factory=list)
    queued: int | None = None
    oldest_queued_at: datetime | None = None
    age_known: bool = False
    errors: list[str] = field(default_factory=list)

    def oldest_queued_seconds(self, now: datetime) -> float | None:
        if self.oldest_queued_at is None:
            return 0.0 if self.queued == 0 else None
        return round(max(0.0, (now - self.oldest_queued_at).total_seconds()), 1)


def _broker_name(broker) -> str:
    return type(broker).__name__


def _savepoint():
    return transaction.atomic(using=Conf.ORM or DEFAULT_DB_ALIAS)


def live_clusters(broker=None) -> list[dict[str, Any]]:
    """The running clusters of this queue (``Stat.get_all``), as plain dicts. Raises if unreadable."""
    broker = broker or get_broker()
    now = timezone.now()
    with _savepoint():
        stats = Stat.get_all(broker=broker)
    clusters = []
    for stat in stats:
        status = str(getattr(stat, "status", ""))
        if status in NOT_RUNNING:
            continue
        tob = getattr(stat, "tob", None)
        heartbeat = getattr(stat, "timestamp", None)
        clusters.append({
            "cluster_id": str(stat.cluster_id),
            "host": stat.host,
            "pid": stat.pid,
            "status": status,
            "workers": len(stat.workers or []),
            "uptime_seconds": round((now - tob).total_seconds(), 1) if tob else None,
            "heartbeat_at": heartbeat.isoformat() if heartbeat else None,
        })
    return sorted(clusters, key=lambda c: (c["host"], c["pid"] or 0))


def _started(package: Any) -> datetime | None:
    started = package.get("started") if isinstance(package, dict) else None
    return started if isinstance(started, datetime) else None


def _orm_queue(broker, now: datetime) -> tuple[int, datetime | None, bool]:
    from django_q.models import OrmQ

    waiting = OrmQ.objects.using(Conf.ORM).filter(key=broker.list_key, lock__lte=now)
    with _savepoint():
        count = waiting.count()
        first = waiting.order_by("id").first()
    if first is None:
        return count, None, True
    started = _started(first.task) or first.lock
    return count, started, started is not None


def _redis_queue(broker) -> tuple[int, datetime | None, bool]:
    count = broker.queue_size()
    if not count:
        return 0, None, True
    head = broker.connection.lindex(broker.list_key, 0)
    try:
        started = _started(SignedPackage.loads(head)) if head is not None else None
    except Exception:  # noqa: BLE001 — an unreadable package: the age is unknown, said so
        started = None
    return count, started, started is not None


def queue_state(now: datetime | None = None) -> QueueState:
    """Liveness and queue backlog now; parts that cannot be read are None with the reason in ``errors``."""
    now = now or timezone.now()
    broker = get_broker()
    state = QueueState(broker=_broker_name(broker))
    try:
        state.clusters = live_clusters(broker)
        state.alive = bool(state.clusters)
    except Exception as exc:  # noqa: BLE001 — reported, never raised at a reader
        logger.warning("cannot read the django-q2 cluster stats: %s", exc)
        state.errors.append(f"cluster stats: {exc.__class__.__name__}: {exc}"[:300])
    try:
        if state.broker == "ORM":
            state.queued, state.oldest_queued_at, state.age_known = _orm_queue(broker, now)
        elif state.broker == "Redis":
            state.queued, state.oldest_queued_at, state.age_known = _redis_queue(broker)
        else:
            state.queued = broker.queue_size()
    except Exception as exc:  # noqa: BLE001
        logger.warning("cannot read the django-q2 queue: %s", exc)
        state.errors.append(f"queue: {exc.__class__.__name__}: {exc}"[:300])
    return state


def workers_alive() -> bool | None:
    """True/False: a cluster is (not) alive; None: its stats could not be read."""
    try:
        return bool(live_clusters())
    except Exception as exc:  # noqa: BLE001
        logger.warning("cannot read the django-q2 cluster stats: %s", exc)
        return None


def queued_task_ids() -> set[str] | None:
    """The ids of the tasks the broker still holds for a worker to take (database broker: every
    ``OrmQ`` row of this queue, taken or not, since the broker hands an unacknowledged one out again;
    Redis: the list). Read once, whatever the queue's length; None when it cannot be read (another
    broker, or an error: said in the log)."""
    broker = get_broker()
    try:
        if _broker_name(broker) == "ORM":
            from django_q.models import OrmQ

            with _savepoint():
                rows = list(OrmQ.objects.using(Conf.ORM).filter(key=broker.list_key).only("id", "payload"))
            return {row.task_id() for row in rows}
        if _broker_name(broker) == "Redis":
            ids = set()
            for payload in broker.connection.lrange(broker.list_key, 0, -1):
                try:
                    package = SignedPackage.loads(payload)
                except Exception:  # noqa: BLE001 — not ours to judge: skip it
                    continue
                if isinstance(package, dict) and package.get("id"):
                    ids.add(package["id"])
            return ids
    except Exception as exc:  # noqa: BLE001
        logger.warning("cannot read the django-q2 queue: %s", exc)
    return None


def remove_queued_tasks(task_ids) -> int:
    """Take tasks no worker has taken yet out of the queue (database and Redis brokers), reading the
    queue once whatever their number; how many were removed. One not there (taken, finished, or
    another broker) is harmless: a worker that picks up a cancelled execution does nothing."""
    wanted = {task_id for task_id in task_ids if task_id}
    if not wanted:
        return 0
    removed = 0
    broker = get_broker()
    try:
        if _broker_name(broker) == "ORM":
            from django_q.models import OrmQ

            rows = OrmQ.objects.using(Conf.ORM).filter(key=broker.list_key, lock__lte=timezone.now())
            for row in rows.only("id", "payload", "lock").iterator():
                if row.task.get("id") in wanted:
                    # Compare-and-set on the lock: a worker that took it meanwhile keeps it.
                    removed += rows.filter(pk=row.pk, lock=row.lock).delete()[0]
        elif _broker_name(broker) == "Redis":
            for payload in broker.connection.lrange(broker.list_key, 0, -1):
                try:
                    package = SignedPackage.loads(payload)
                except Exception:  # noqa: BLE001
                    continue
                if isinstance(package, dict) and package.get("id") in wanted:
                    removed += broker.connection.lrem(broker.list_key, 1, payload)
    except Exception as exc:  # noqa: BLE001 — best effort; the worker's no-op is the guarantee
        logger.warning("could not remove %s queued task(s): %s", len(wanted), exc)
    return removed


def create_stats_cache_table(using: str = DEFAULT_DB_ALIAS, **kwargs) -> None:
    """``post_migrate``: create the database cache tables (the ``workers`` cache the clusters' stats
    live in with the database broker). Idempotent: an existing table is left alone."""
    call_command("createcachetable", database=using, verbosity=0)
