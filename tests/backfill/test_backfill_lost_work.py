"""The work a lost worker held is handed to the others (``integrity.backfill.recover``, run by
``integrity.tasks.recover_backfills_task`` on schedule ``integrity.recover``): the runs it was executing
are reaped and their scheduled series claimed and queued again; the tasks it had taken from the queue
but not started are queued again as the same execution. Against the database broker (its queue rows
stand for what a broker still holds; deleting one is a cluster taking it and dying). The same with
Redis and real clusters: tests/health/test_many_hosts.py."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from django_q.models import OrmQ

from integrity.backfill import reap_dead_backfills
from integrity.models import BackfillState
from integrity.tasks import (
    EXECUTION_TASK,
    backfill_all_task,
    backfill_execution_task,
    recover_backfills_task,
    request_backfill,
)
from tests.helpers import add_instrument

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def btc(settings):
    settings.BACKFILL_HEARTBEAT_TIMEOUT_SECONDS = 300
    settings.BACKFILL_LOOKBACK_DAYS = {**settings.BACKFILL_LOOKBACK_DAYS, "1h": 1}
    return add_instrument("BTC-USD")


def queued_executions() -> list[str]:
    return [q.args()[0] for q in OrmQ.objects.all() if q.func() == EXECUTION_TASK]


def aged(state: BackfillState, seconds: float, **fields) -> BackfillState:
    """The execution as if created (and, with ``fields``, heartbeating) ``seconds`` ago."""
    then = timezone.now() - timedelta(seconds=seconds)
    BackfillState.objects.filter(pk=state.pk).update(created_at=then, **{k: then for k in fields})
    state.refresh_from_db()
    return state


def taken_by_a_cluster_that_died() -> None:
    OrmQ.objects.all().delete()


def lost_while_running(state: BackfillState) -> BackfillState:
    state.mark_started(worker="host-b:4242")
    return aged(state, 600, heartbeat_at=True, started_at=True)


class TestLostQueuedTask:
    def test_a_pending_execution_whose_task_left_the_queue_is_queued_again_as_itself(self):
        state = aged(request_backfill("BTC-USD", "1h"), 400)
        first_task = state.details["task_id"]
        taken_by_a_cluster_that_died()
        assert recover_backfills_task() == {"reaped": 0, "reclaimed": 0, "requeued": 1}
        assert queued_executions() == [str(state.execution_id)]
        state.refresh_from_db()
        assert state.status == "pending" and state.details["requeues"] == 1
        assert state.details["task_id"] != first_task and state.details["task_id"] == OrmQ.objects.get().task_id()

    def test_one_still_in_the_queue_is_left_to_its_task(self):
        aged(request_backfill("BTC-USD", "1h"), 400)
        assert recover_backfills_task()["requeued"] == 0
        assert OrmQ.objects.count() == 1

    def test_a_young_one_is_left_alone_its_cluster_may_be_about_to_start_it(self):
        request_backfill("BTC-USD", "1h")
        taken_by_a_cluster_that_died()
        assert recover_backfills_task()["requeued"] == 0

    def test_it_is_not_queued_again_twice_within_the_heartbeat_timeout(self):
        aged(request_backfill("BTC-USD", "1h"), 400)
        taken_by_a_cluster_that_died()
        recover_backfills_task()
        taken_by_a_cluster_that_died()
        assert recover_backfills_task()["requeued"] == 0

    def test_the_first_task_to_start_runs_it_the_other_does_nothing(self):
        state = aged(request_backfill("BTC-USD", "1h"), 400)
        taken_by_a_cluster_that_died()
        recover_backfills_task()
        assert backfill_execution_task(str(state.execution_id))["status"] == "completed"
        assert backfill_execution_task(str(state.execution_id))["status"] == "skipped"  # the first task, late
        assert BackfillState.objects.count() == 1


class TestLostRun:
    def test_a_scheduled_run_whose_worker_was_lost_is_reaped_and_its_series_queued_again(self):
        backfill_all_task()
        lost = lost_while_running(BackfillState.objects.get())
        taken_by_a_cluster_that_died()
        assert recover_backfills_task() == {"reaped": 1, "reclaimed": 1, "requeued": 0}
        lost.refresh_from_db()
        assert lost.status == "failed" and lost.error_message.startswith("worker lost: heartbeat timeout")
        again = BackfillState.objects.exclude(pk=lost.pk).get()
        assert (again.status, again.requested_by, again.retry_count) == ("pending", "schedule", 1)
        assert queued_executions() == [str(again.execution_id)]
        assert backfill_execution_task(str(again.execution_id))["status"] == "completed"

    def test_a_requested_run_whose_worker_was_lost_is_reaped_but_left_to_its_requester(self):
        lost_while_running(request_backfill("BTC-USD", "1h", requested_by="api:editor"))
        assert recover_backfills_task() == {"reaped": 1, "reclaimed": 0, "requeued": 0}
        assert not BackfillState.objects.filter(status="pending").exists()

    def test_a_series_that_lost_its_worker_too_often_waits_for_its_next_scheduled_run(self, settings):
        settings.BACKFILL_REQUEUE_MAX_RETRIES = 2
        backfill_all_task()
        BackfillState.objects.update(retry_count=2)
        lost_while_running(BackfillState.objects.get())
        assert recover_backfills_task()["reclaimed"] == 0
        assert not BackfillState.objects.filter(status="pending").exists()

    def test_a_series_claimed_again_meanwhile_is_left_to_that_claim(self):
        backfill_all_task()
        lost = lost_while_running(BackfillState.objects.get())
        reap_dead_backfills()  # another reaper (the health job) got there first ...
        newer = request_backfill("BTC-USD", "1h")  # ... and someone asked for a run
        assert recover_backfills_task()["reclaimed"] == 0
        assert set(BackfillState.objects.values_list("pk", flat=True)) == {lost.pk, newer.pk}


class TestPendingReaper:
    def test_a_pending_execution_whose_task_still_waits_in_the_queue_is_not_reaped(self, settings):
        state = aged(request_backfill("BTC-USD", "1h"), settings.BACKFILL_PENDING_TIMEOUT_SECONDS + 1)
        assert reap_dead_backfills() == []
        taken_by_a_cluster_that_died()
        [reaped] = reap_dead_backfills()
        assert reaped.pk == state.pk and reaped.error_message.startswith("never started: ")

    def test_the_fan_out_claims_each_series_once_even_when_it_overlaps_itself(self):
        assert backfill_all_task()["enqueued"] == 1
        assert backfill_all_task() == {"enqueued": 0, "already_active": 1, "not_queued": 0}
        assert BackfillState.objects.count() == 1 and len(queued_executions()) == 1
