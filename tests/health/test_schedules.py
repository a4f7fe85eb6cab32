"""Schedules and tasks with django-q2: the schedule table, its scheduler, the tasks, a real cluster."""

from __future__ import annotations

import io
import json
from datetime import timedelta

import pytest
from croniter import croniter
from django.conf import settings as django_settings
from django.core.management import CommandError, call_command
from django.utils import timezone
from django_q.brokers.orm import ORM
from django_q.conf import Conf
from django_q.models import Failure, OrmQ, Schedule, Success
from django_q.scheduler import scheduler
from django_q.tasks import async_task

from integrity.models import BackfillState, Candle, HealthCheckRun, SeriesStats
from integrity.schedules import SCHEDULES, setup_schedules
from integrity.tasks import (
    BACKFILL_SERIES_TASK,
    EXECUTION_TASK,
    backfill_all_task,
    backfill_series_task,
    enrichment_task,
    health_task,
)
from tests.helpers import add_instrument, start_qcluster, stop_process_group, utc, wait_for

NOW = utc(2024, 6, 5, 12, 0)
EXPECTED = {
    "integrity.enrichment": ("integrity.tasks.enrichment_task", "30 1 * * *"),
    "integrity.backfill": ("integrity.tasks.backfill_all_task", "0 2 * * *"),
    "integrity.health": ("integrity.tasks.health_task", "0 0,6,12,18 * * *"),
    "integrity.recover": ("integrity.tasks.recover_backfills_task", "*/5 * * * *"),
    "integrity.reconcile": ("integrity.tasks.reconcile_task", "0 4 * * *"),
    "integrity.partitions": ("integrity.tasks.candle_partitions_task", "45 0 * * *"),
}


def orm_broker() -> ORM:
    """The database broker, whatever REDIS_URL says (the tests look at its OrmQ rows)."""
    return ORM(list_key=Conf.CLUSTER_NAME)


@pytest.fixture
def orm_queue(monkeypatch):
    monkeypatch.setattr(Conf, "ORM", "default")  # get_broker() → ORM even when REDIS_URL is set
    return orm_broker()


def schedules() -> dict[str, Schedule]:
    return {s.name: s for s in Schedule.objects.all()}


@pytest.mark.django_db
class TestSetupSchedules:
    def test_running_it_twice_leaves_exactly_one_of_each_schedule(self):
        first = setup_schedules(now=NOW)
        second = setup_schedules(now=NOW + timedelta(minutes=1))
        assert [r["action"] for r in first] == ["created"] * len(EXPECTED)
        assert [r["action"] for r in second] == ["unchanged"] * len(EXPECTED)
        found = schedules()
        assert set(found) == set(EXPECTED)
        for name, (func, cron) in EXPECTED.items():
            schedule = found[name]
            assert (schedule.func, schedule.cron, schedule.schedule_type) == (func, cron, Schedule.CRON)
            assert schedule.repeats == -1

    def test_next_runs_are_the_cron_times_after_now_in_utc(self):
        setup_schedules(now=NOW)  # a Wednesday, 12:00 UTC
        found = schedules()
        assert found["integrity.enrichment"].next_run == utc(2024, 6, 6, 1, 30)
        assert found["integrity.backfill"].next_run == utc(2024, 6, 6, 2, 0)
        assert found["integrity.health"].next_run == utc(2024, 6, 5, 18, 0)

    def test_changing_a_cron_setting_updates_the_schedule_and_its_next_run(self, settings):
        setup_schedules(now=NOW)
        settings.SCHEDULE_HEALTH_CRON = "15 */2 * * *"
        report = {r["name"]: r for r in setup_schedules(now=NOW)}
        assert report["integrity.health"]["action"] == "updated"
        assert report["integrity.backfill"]["action"] == "unchanged"
        health = Schedule.objects.get(name="integrity.health")
        assert health.cron == "15 */2 * * *"
        assert health.next_run == utc(2024, 6, 5, 12, 15)
        assert Schedule.objects.count() == len(EXPECTED)

    def test_a_schedule_whose_next_run_passed_is_moved_to_the_future_not_replayed(self):
        setup_schedules(now=NOW)
        Schedule.objects.filter(name="integrity.health").update(next_run=NOW - timedelta(days=3))
        report = {r["name"]: r for r in setup_schedules(now=NOW)}
        assert report["integrity.health"]["action"] == "updated"
        assert Schedule.objects.get(name="integrity.health").next_run == utc(2024, 6, 5, 18, 0)

    def test_an_edited_schedule_is_put_back(self):
        setup_schedules(now=NOW)
        Schedule.objects.filter(name="integrity.backfill").update(func="somewhere.else", repeats=0)
        setup_schedules(now=NOW)
        backfill = Schedule.objects.get(name="integrity.backfill")
        assert (backfill.func, backfill.repeats) == ("integrity.tasks.backfill_all_task", -1)

    def test_obsolete_integrity_schedules_are_deleted_and_others_kept(self):
        Schedule.objects.create(name="integrity.retired", func="integrity.tasks.gone", schedule_type=Schedule.DAILY)
        Schedule.objects.create(name="reports.daily", func="reports.tasks.run", schedule_type=Schedule.DAILY)
        report = setup_schedules(now=NOW)
        assert {"name": "integrity.retired", "action": "deleted"} in report
        assert set(schedules()) == set(EXPECTED) | {"reports.daily"}

    def test_an_invalid_cron_setting_changes_nothing_and_exits_2(self, settings):
        settings.SCHEDULE_BACKFILL_CRON = "every night"
        with pytest.raises(CommandError) as error:
            call_command("setup_schedules", stdout=io.StringIO())
        assert error.value.returncode == 2
        assert "SCHEDULE_BACKFILL_CRON" in str(error.value)
        assert not Schedule.objects.exists()

    def test_the_command_prints_json(self):
        out = io.StringIO()
        before = timezone.now()
        call_command("setup_schedules", "--format", "json", stdout=out)
        after = timezone.now()
        rows = {r["name"]: r for r in json.loads(out.getvalue())}
        assert set(rows) == set(EXPECTED)
        for name, (func, cron) in EXPECTED.items():
            assert (rows[name]["func"], rows[name]["cron"], rows[name]["action"]) == (func, cron, "created")
            possible = {croniter(cron, t).get_next(type(t)).isoformat() for t in (before, after)}
            assert rows[name]["next_run"] in possible

    def test_a_schedule_switched_off_is_not_created_and_is_deleted_if_it_was(self, settings):
        setup_schedules(now=NOW)
        settings.SCHEDULE_RECONCILE_CRON = "off"
        report = {row["name"]: row["action"] for row in setup_schedules(now=NOW)}
        assert report["integrity.reconcile"] == "deleted"
        assert set(schedules()) == set(EXPECTED) - {"integrity.reconcile"}

    def test_the_table_names_a_real_function_for_every_schedule(self):
        import importlib

        for spec in SCHEDULES:
            module, func = spec.func.rsplit(".", 1)
            assert callable(getattr(importlib.import_module(module), func))


class TestClusterSettings:
    def test_missed_runs_are_not_caught_up(self):
        assert django_settings.Q_CLUSTER["catch_up"] is False
        assert Conf.CATCH_UP is False

    def test_a_task_gets_one_attempt(self):
        assert Conf.MAX_ATTEMPTS == 1

    def test_the_task_timeout_is_below_the_broker_retry(self):
        assert Conf.TIMEOUT < Conf.RETRY


@pytest.mark.django_db(transaction=True)  # the scheduler closes stale connections: no test transaction
class TestScheduler:
    def due(self, name: str, ago: timedelta) -> None:
        Schedule.objects.filter(name=name).update(next_run=timezone.now() - ago)

    def test_a_due_schedule_is_enqueued_in_the_broker(self):
        setup_schedules()
        self.due("integrity.health", timedelta(minutes=1))
        scheduler(broker=orm_broker())
        [queued] = OrmQ.objects.all()
        assert queued.key == Conf.CLUSTER_NAME
        assert queued.func() == "integrity.tasks.health_task"
        assert queued.group() == "integrity.health"
        health = Schedule.objects.get(name="integrity.health")
        assert health.task == queued.task_id()
        assert health.next_run > timezone.now()
        assert health.next_run == croniter("0 0,6,12,18 * * *", timezone.now()).get_next(type(health.next_run))

    def test_every_due_schedule_is_enqueued_and_only_those(self):
        setup_schedules()
        self.due("integrity.enrichment", timedelta(minutes=2))
        self.due("integrity.backfill", timedelta(seconds=5))
        scheduler(broker=orm_broker())
        assert sorted(q.func() for q in OrmQ.objects.all()) == ["integrity.tasks.backfill_all_task",
                                                                "integrity.tasks.enrichment_task"]
        assert Schedule.objects.get(name="integrity.health").task is None  # not due: left alone

    def test_schedules_not_due_are_not_enqueued(self):
        setup_schedules()
        scheduler(broker=orm_broker())
        assert not OrmQ.objects.exists()

    def test_missed_runs_are_not_replayed(self):
        setup_schedules()
        self.due("integrity.health", timedelta(days=3))  # twelve runs missed
        scheduler(broker=orm_broker())
        scheduler(broker=orm_broker())
        assert OrmQ.objects.count() == 1
        assert Schedule.objects.get(name="integrity.health").next_run > timezone.now()


@pytest.mark.django_db
class TestTasks:
    def test_the_backfill_task_queues_one_task_per_active_series(self, orm_queue):
        add_instrument("AAPL", asset_class="equity", calendar="XNYS", timeframes=("1d", "1h"))
        add_instrument("BTC-USD", timeframes=("1h",))
        retired = add_instrument("OLD-USD", timeframes=("1h",))
        retired.active = False
        retired.save()
        assert backfill_all_task() == {"enqueued": 3, "already_active": 0, "not_queued": 0}
        claims = {(s.symbol, s.timeframe): s for s in BackfillState.objects.all()}
        assert sorted(claims) == [("AAPL", "1d"), ("AAPL", "1h"), ("BTC-USD", "1h")]
        assert {(s.status, s.requested_by) for s in claims.values()} == {("pending", "schedule")}
        queued = {q.task_id(): (q.func(), tuple(q.args())) for q in OrmQ.objects.all()}
        assert sorted(queued.values()) == sorted((EXECUTION_TASK, (str(s.execution_id),)) for s in claims.values())
        assert {s.details["task_id"] for s in claims.values()} == set(queued)

    def test_the_backfill_task_leaves_a_series_already_running_to_its_run(self, orm_queue):
        add_instrument("BTC-USD", timeframes=("1h",))
        running = BackfillState.objects.create(symbol="BTC-USD", timeframe="1h", asset_class="crypto")
        assert backfill_all_task() == {"enqueued": 0, "already_active": 1, "not_queued": 0}
        assert list(BackfillState.objects.all()) == [running] and not OrmQ.objects.exists()

    def test_the_series_task_runs_an_incremental_backfill(self, settings):
        settings.BACKFILL_LOOKBACK_DAYS = {**settings.BACKFILL_LOOKBACK_DAYS, "1h": 2}
        add_instrument("BTC-USD")
        result = backfill_series_task("BTC-USD", "1h")
        assert result["status"] == "completed"
        assert result["inserted"] == Candle.objects.count() > 24
        assert BackfillState.objects.get().requested_by == "schedule"

    def test_the_series_task_is_refused_while_the_series_is_running(self):
        add_instrument("BTC-USD")
        BackfillState.objects.create(symbol="BTC-USD", timeframe="1h", asset_class="crypto")
        assert backfill_series_task("BTC-USD", "1h")["status"] == "refused"

    def test_the_enrichment_task_recomputes_series_stats(self):
        add_instrument("BTC-USD")
        Candle.objects.bulk_create([Candle(symbol="BTC-USD", timeframe="1h", ts=utc(2024, 6, 5, h), open=1, high=1,
                                           low=1, close=1, volume=1) for h in range(10)])
        assert enrichment_task() == {"series": 1}
        assert SeriesStats.objects.get(symbol="BTC-USD").bar_count == 10

    def test_the_health_task_runs_the_health_job(self, monkeypatch):
        from integrity.quality.anomalies import DetectionResult

        monkeypatch.setattr("integrity.quality.anomalies.detect_data_anomalies",
                            lambda **kw: DetectionResult(dry_run=False, full=False))
        result = health_task()
        run = HealthCheckRun.objects.get()
        assert result["run_id"] == run.pk
        assert result["status"] == run.status == "healthy"


# --- a real cluster --------------------------------------------------------------------------------


@pytest.mark.postgres_only  # the cluster is a separate process sharing the test database: needs a server
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
class TestRealCluster:
    def test_a_qcluster_executes_a_queued_health_task_and_gives_a_failing_task_one_attempt(self, tmp_path):
        task_id = async_task("integrity.tasks.health_task", broker=orm_broker(), task_name="health from test")
        # Not on the watchlist: run_backfill raises BackfillError, so the task fails.
        failing_id = async_task(BACKFILL_SERIES_TASK, "NOT-LISTED", "1h", broker=orm_broker(),
                                task_name="failing backfill from test")

        def finished() -> bool:
            return (Success.objects.filter(id=task_id).exists() and Failure.objects.filter(id=failing_id).exists()
                    and not OrmQ.objects.exists())

        cluster = start_qcluster(tmp_path / "qcluster.log")
        try:
            wait_for(finished, "the tasks did not finish within 60 s", cluster)
        finally:
            stop_process_group(cluster)
        done = Success.objects.get(id=task_id)
        assert done.func == "integrity.tasks.health_task"
        run = HealthCheckRun.objects.get()
        assert done.result["run_id"] == run.pk
        assert run.finished_at is not None
        failed = Failure.objects.get(id=failing_id)
        assert "unknown instrument 'NOT-LISTED'" in failed.result
        # One attempt: with max_attempts=1 the failed task is acknowledged (removed from the queue)
        # instead of being handed to a worker again once the retry window passes.
        assert failed.attempt_count == 1
        assert not OrmQ.objects.exists()
        assert cluster.returncode == 0, cluster.log.read_text()[-3000:]  # stopped by SIGTERM, cleanly
