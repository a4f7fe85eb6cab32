"""The schedule table: what runs when. ``manage.py setup_schedules`` writes it into django-q2.

Every entry is a django-q2 CRON schedule whose expression comes from a setting (environment
variable; defaults in ``integrity.conf``), evaluated in UTC (``TIME_ZONE`` is UTC, and django-q2
computes cron times in it):

    name                 task                                  setting
    integrity.enrichment integrity.tasks.enrichment_task       SCHEDULE_ENRICHMENT_CRON
    integrity.backfill   integrity.tasks.backfill_all_task     SCHEDULE_BACKFILL_CRON
    integrity.health     integrity.tasks.health_task           SCHEDULE_HEALTH_CRON
    integrity.recover    integrity.tasks.recover_backfills_task SCHEDULE_RECOVER_CRON
    integrity.reconcile  integrity.tasks.reconcile_task        SCHEDULE_RECONCILE_CRON (``off``: none)
    integrity.partitions integrity.tasks.candle_partitions_task SCHEDULE_PARTITIONS_CRON

``setup_schedules`` is idempotent: it creates missing schedules, updates changed ones (a new cron
expression moves ``next_run`` to the expression's next time), leaves unchanged ones alone and deletes
schedules under our ``integrity.`` prefix that are no longer in the table. An unchanged schedule
whose ``next_run`` is already past (the cluster was down) is moved to its next future time, so a
deploy never replays missed runs; the cluster itself has ``catch_up: False`` for the same reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from croniter import croniter
from django.db import transaction
from django.utils import timezone

from .conf import conf

PREFIX = "integrity."


@dataclass(frozen=True)
class ScheduleSpec:
    name: str
    func: str
    setting: str
    description: str

    @property
    def default_cron(self) -> str:
        return conf.default(self.setting)

    @property
    def cron(self) -> str:
        return getattr(conf, self.setting)


SCHEDULES: tuple[ScheduleSpec, ...] = (
    ScheduleSpec("integrity.enrichment", "integrity.tasks.enrichment_task", "SCHEDULE_ENRICHMENT_CRON",
                 "recompute series statistics (coverage, volatility)"),
    ScheduleSpec("integrity.backfill", "integrity.tasks.backfill_all_task", "SCHEDULE_BACKFILL_CRON",
                 "incremental backfill: one task per active series"),
    ScheduleSpec("integrity.health", "integrity.tasks.health_task", "SCHEDULE_HEALTH_CRON",
                 "health monitoring: staleness, failures, anomalies, alerts"),
    ScheduleSpec("integrity.recover", "integrity.tasks.recover_backfills_task", "SCHEDULE_RECOVER_CRON",
                 "recovery: the runs and queued tasks of lost workers handed to the others"),
    ScheduleSpec("integrity.reconcile", "integrity.tasks.reconcile_task", "SCHEDULE_RECONCILE_CRON",
                 "reconciliation with the reference sources (instruments without one are skipped)"),
    ScheduleSpec("integrity.partitions", "integrity.tasks.candle_partitions_task", "SCHEDULE_PARTITIONS_CRON",
                 "candle partitions (PostgreSQL): create ahead, empty the default partitions, retention"),
)
OFF = "off"  # a schedule whose setting says this is not scheduled (and deleted if it was)


def scheduled() -> tuple[ScheduleSpec, ...]:
    """The entries of ``SCHEDULES`` that are switched on."""
    return tuple(spec for spec in SCHEDULES if spec.cron.strip().lower() != OFF)


class ScheduleConfigError(ValueError):
    pass


_TICK = timedelta(microseconds=1)


def next_run_for(cron: str, now: datetime | None = None) -> datetime:
    """The first time strictly after ``now`` that ``cron`` fires, in UTC."""
    base = (now or timezone.now()).astimezone(UTC)
    return croniter(cron, base).get_next(datetime).astimezone(UTC)


def run_at_or_before(cron: str, at: datetime) -> datetime:
    """The last time at or before ``at`` that ``cron`` fires, in UTC (the run a replay at ``at`` saw)."""
    return croniter(cron, at.astimezone(UTC) + _TICK).get_prev(datetime).astimezone(UTC).replace(fold=0)


def run_at_or_after(cron: str, at: datetime) -> datetime:
    """The first time at or after ``at`` that ``cron`` fires, in UTC."""
    return croniter(cron, at.astimezone(UTC) - _TICK).get_next(datetime).astimezone(UTC).replace(fold=0)


def validate_cron(spec: ScheduleSpec) -> str:
    cron = spec.cron
    if not croniter.is_valid(cron) or len(cron.split()) != 5:
        raise ScheduleConfigError(f"{spec.setting}={cron!r} is not a five-field cron expression "
                                  f"(minute hour day-of-month month day-of-week), e.g. {spec.default_cron!r}")
    return cron


def setup_schedules(now: datetime | None = None) -> list[dict[str, Any]]:
    """Create or update the schedules of ``SCHEDULES``; returns what was done to each."""
    from django_q.models import Schedule

    now = now or timezone.now()
    specs = scheduled()
    crons = {spec.name: validate_cron(spec) for spec in specs}  # all valid, or change nothing
    report = []
    with transaction.atomic():
        for spec in specs:
            cron = crons[spec.name]
            existing = Schedule.objects.select_for_update().filter(name=spec.name).order_by("id")
            schedule = existing.first()
            if schedule is not None:
                Schedule.objects.filter(name=spec.name).exclude(pk=schedule.pk).delete()  # stray copies
            wanted = {"func": spec.func, "schedule_type": Schedule.CRON, "cron": cron, "repeats": -1,
                      "args": None, "kwargs": None, "hook": None, "cluster": None}
            if schedule is None:
                schedule = Schedule.objects.create(name=spec.name, **wanted)
                # Schedule.save() computes a new CRON schedule's next_run from the wall clock; ours is
                # from ``now`` (the same thing outside tests), written without save()'s recomputation.
                Schedule.objects.filter(pk=schedule.pk).update(next_run=next_run_for(cron, now))
                schedule.refresh_from_db()
                action = "created"
            else:
                changed = {k: v for k, v in wanted.items() if getattr(schedule, k) != v}
                if "cron" in changed or schedule.next_run is None or schedule.next_run <= now:
                    changed["next_run"] = next_run_for(cron, now)
                if changed:
                    Schedule.objects.filter(pk=schedule.pk).update(**changed)
                    schedule.refresh_from_db()
                action = "updated" if changed else "unchanged"
            report.append({"name": spec.name, "func": spec.func, "cron": cron, "setting": spec.setting,
                           "next_run": schedule.next_run.astimezone(UTC).isoformat(), "action": action,
                           "description": spec.description})
        known = [spec.name for spec in specs]
        for name in Schedule.objects.filter(name__startswith=PREFIX).exclude(name__in=known).values_list(
                "name", flat=True):
            report.append({"name": name, "action": "deleted"})
        Schedule.objects.filter(name__startswith=PREFIX).exclude(name__in=known).delete()
    return report
