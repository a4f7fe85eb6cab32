"""Recovery: a rerun after a crash resumes, the real error survives a database outage, a worker
asked to stop stops. Real processes (``manage.py backfill``, ``qcluster``) where the behaviour is
about processes; in-process runs for the rules behind them.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import OperationalError, connection, connections
from django.utils import timezone

from integrity.backfill import create_backfill_state, finish, reap_dead_backfills, run_backfill
from integrity.backfill import run as service
from integrity.models import (
    BackfillState,
    BackfillStatus,
    Candle,
    Instrument,
    SymbolFailureTracking,
)
from integrity.providers.synthetic import synthetic_bars
from integrity.shutdown import (
    CLUSTER_REASON,
    SIGTERM_REASON,
    clear_stop_request,
    cluster_stop_event,
    request_stop,
)
from integrity.tasks import EXECUTION_TASK, backfill_series_task
from tests.helpers import (
    ROOT,
    add_instrument,
    assert_same_bars,
    on_each_page,
    stored_bars,
    utc,
    worker_database_url,
)

pytestmark = pytest.mark.django_db(transaction=True)

START, END = utc(2024, 1, 1), utc(2024, 3, 1)  # 1440 hourly bars on a 24/7 calendar
ALL_BARS = 1440


@pytest.fixture(autouse=True)
def no_stop_request():
    clear_stop_request()
    yield
    clear_stop_request()


def expected_bars(until=END):
    return synthetic_bars("BTC-USD", "1h", "24/7", START, until)


def wait_for(condition, what: str, timeout: float = 60.0, process: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the process exited ({process.returncode}) before {what}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def committed(at_least: int) -> BackfillState | None:
    state = BackfillState.objects.filter(symbol="BTC-USD").order_by("-created_at").first()
    return state if state and state.records_inserted >= at_least else None


def worker_env(**extra) -> dict[str, str]:
    return {**os.environ, "DATABASE_URL": worker_database_url(), "DJANGO_SETTINGS_MODULE": "marketdata_site.settings",
            "REDIS_URL": "", **extra}


def stop_pages(monkeypatch, after_pages: int, stop=lambda: request_stop("test")) -> None:
    """The provider's pages, with ``stop()`` called as page number ``after_pages`` is handed over."""
    def hand_over(i):
        if i + 1 == after_pages:
            stop()  # while this page is on its way: the run stops after taking it

    on_each_page(monkeypatch, hand_over)


def failing_n_times(monkeypatch, owner, name: str, times: int, *, land_first: bool = False) -> list[int]:
    """Replace ``owner.name`` by a version that raises OperationalError (a lost connection) on its
    first ``times`` calls, then behaves. ``land_first``: the first call's write lands, then the
    reply is lost. Returns the call log (a justified fake: the outage itself is in TestDatabaseOutage)."""
    real = getattr(owner, name)
    calls: list[int] = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) <= times:
            if land_first and len(calls) == 1:
                real(*args, **kwargs)
            raise OperationalError("server closed the connection unexpectedly")
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, flaky)
    return calls


@pytest.fixture
def sleeps(monkeypatch) -> list[float]:
    """The backoff the finishing writes ask for, recorded instead of slept."""
    asked: list[float] = []
    monkeypatch.setattr(finish, "_sleep", asked.append)
    return asked


# --- 12: a rerun resumes from the checkpoint, even when its own claim reaps the dead run -----------


def dead_run(start=START, checkpoint_bars: int = 300) -> BackfillState:
    """What a `kill -9` leaves: in_progress, bars committed up to the checkpoint, heartbeat gone quiet."""
    add_instrument()
    run_backfill("BTC-USD", "1h", start=start, end=start + timedelta(hours=checkpoint_bars))
    BackfillState.objects.all().delete()  # only the bars stay, as if the dead run wrote them
    state = create_backfill_state("BTC-USD", "1h", "crypto", provider="synthetic", range_start=start,
                                  range_end=start + timedelta(hours=2 * checkpoint_bars))
    state.mark_started(worker="dead-host:1")
    BackfillState.objects.filter(pk=state.pk).update(
        checkpoint_ts=start + timedelta(hours=checkpoint_bars - 1), records_inserted=checkpoint_bars,
        details={"requested_start": start.isoformat()},
        heartbeat_at=timezone.now() - timedelta(hours=1))
    state.refresh_from_db()
    return state


class TestRerunAfterACrash:
    def test_a_rerun_resumes_from_the_checkpoint_of_the_run_its_own_claim_reaps(self):
        dead = dead_run()
        result = run_backfill("BTC-USD", "1h", start=START, end=END)
        dead.refresh_from_db()
        assert dead.error_message.startswith("worker lost: heartbeat timeout")  # reaped by the claim
        assert result.status == "completed"
        assert result.resumed_from == dead.checkpoint_ts.isoformat()
        assert result.range_start == dead.checkpoint_ts.isoformat()
        assert (result.inserted, result.retry_count) == (ALL_BARS - 300, 1)
        assert_same_bars(stored_bars("BTC-USD", "1h"), expected_bars())

    def test_the_scheduled_task_resumes_an_incremental_run_its_claim_reaps(self, settings):
        settings.BACKFILL_OVERLAP_BARS = 0
        dead = dead_run(start=timezone.now().replace(minute=0, second=0, microsecond=0) - timedelta(hours=400))
        result = backfill_series_task("BTC-USD", "1h")
        assert result["status"] == "completed"
        assert result["resumed_from"] == dead.checkpoint_ts.isoformat()
        assert result["retry_count"] == 1

    def test_a_queued_execution_resumes_the_run_reaped_when_it_was_requested(self):
        dead = dead_run()
        queued = service.claim_backfill("BTC-USD", "1h", start=START, end=END)
        result = service.run_backfill_execution(str(queued.execution_id))
        assert result["resumed_from"] == dead.checkpoint_ts.isoformat()
        assert result["inserted"] == ALL_BARS - 300

    def test_a_resumed_run_that_fails_again_hands_its_resume_point_on(self):
        dead = dead_run()
        request_stop("test")  # the second run stops before committing anything of its own
        second = run_backfill("BTC-USD", "1h", start=START, end=END)
        assert second.status == "failed" and second.inserted == 0
        clear_stop_request()
        third = run_backfill("BTC-USD", "1h", start=START, end=END)
        assert third.resumed_from == dead.checkpoint_ts.isoformat()
        assert third.retry_count == 2
        assert_same_bars(stored_bars("BTC-USD", "1h"), expected_bars())


@pytest.mark.slow  # starts processes
class TestKilledCommand:
    """`kill -9` of `manage.py backfill`, then the same command again, nothing in between."""

    ARGS = ["manage.py", "backfill", "--symbols", "BTC-USD", "--timeframe", "1h", "--start", START.isoformat(),
            "--end", END.isoformat(), "--batch-size", "100", "--format", "json"]

    def test_the_rerun_resumes_from_the_checkpoint_and_the_bars_are_exact(self):
        add_instrument(page_size=50, page_delay=0.05)
        worker = subprocess.Popen([sys.executable, *self.ARGS], cwd=ROOT, env=worker_env(),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(lambda: committed(300), "a committed batch", process=worker)
            os.kill(worker.pid, signal.SIGKILL)
            worker.wait(timeout=30)
        finally:
            if worker.poll() is None:
                worker.kill()
        killed = BackfillState.objects.get()
        assert killed.status == BackfillStatus.IN_PROGRESS
        stored_at_kill = Candle.objects.count()
        assert stored_at_kill == killed.records_inserted < ALL_BARS
        # A short heartbeat timeout lets the rerun's claim reap the dead run as soon as it is quiet.
        wait_for(lambda: timezone.now() - killed.heartbeat_at > timedelta(seconds=1.5), "a quiet heartbeat")
        Instrument.objects.filter(symbol="BTC-USD").update(provider_options={"page_size": 50})

        rerun = subprocess.run([sys.executable, *self.ARGS], cwd=ROOT, capture_output=True, text=True,
                               timeout=120, env=worker_env(BACKFILL_HEARTBEAT_TIMEOUT_SECONDS="1"))
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        [result] = json.loads(rerun.stdout)
        killed.refresh_from_db()
        assert killed.error_message.startswith("worker lost: heartbeat timeout")
        assert result["status"] == "completed"
        assert result["resumed_from"] == killed.checkpoint_ts.isoformat()
        assert (result["inserted"], result["retry_count"]) == (ALL_BARS - stored_at_kill, 1)
        assert_same_bars(stored_bars("BTC-USD", "1h"), expected_bars())


# --- 13: the real error survives a database outage ------------------------------------------------


class TestFinishingWritesRetry:
    def test_the_failure_is_recorded_once_the_database_answers_again(self, monkeypatch, sleeps):
        add_instrument(fail_after_pages=1, page_size=50)
        calls = failing_n_times(monkeypatch, BackfillState, "mark_failed", times=2)
        result = run_backfill("BTC-USD", "1h", start=START, end=END, batch_size=50)
        state = BackfillState.objects.get()
        assert len(calls) == 3
        assert state.status == BackfillStatus.FAILED
        assert state.error_message == result.error
        assert "synthetic failure injected after 1 pages" in state.error_message
        assert SymbolFailureTracking.objects.get(symbol="BTC-USD").consecutive_failures == 1

    def test_the_completion_is_recorded_once_the_database_answers_again(self, monkeypatch, sleeps):
        add_instrument()
        failing_n_times(monkeypatch, BackfillState, "mark_completed", times=2)
        result = run_backfill("BTC-USD", "1h", start=START, end=END)
        assert result.status == "completed"
        assert BackfillState.objects.get().status == BackfillStatus.COMPLETED
        assert SymbolFailureTracking.objects.get(symbol="BTC-USD").last_success_at is not None

    def test_the_backoff_doubles_between_attempts(self, monkeypatch, sleeps, settings):
        settings.BACKFILL_FINISH_BACKOFF = 0.5
        add_instrument(fail_after_pages=0)
        failing_n_times(monkeypatch, BackfillState, "mark_failed", times=3)
        run_backfill("BTC-USD", "1h", start=START, end=END)
        assert sleeps == [0.5, 1.0, 2.0]

    def test_failure_tracking_is_retried_too(self, monkeypatch, sleeps):
        add_instrument(fail_after_pages=0)
        calls = failing_n_times(monkeypatch, finish, "track_symbol_failure", times=2)
        run_backfill("BTC-USD", "1h", start=START, end=END)
        assert len(calls) == 3
        assert SymbolFailureTracking.objects.get(symbol="BTC-USD").consecutive_failures == 1

    def test_a_write_that_landed_before_its_reply_was_lost_counts_as_done(self, monkeypatch, sleeps):
        add_instrument(fail_after_pages=0)
        failing_n_times(monkeypatch, BackfillState, "mark_failed", times=1, land_first=True)
        result = run_backfill("BTC-USD", "1h", start=START, end=END)
        state = BackfillState.objects.get()
        assert state.status == BackfillStatus.FAILED and state.error_message == result.error
        assert "could not be recorded" not in result.error
        assert SymbolFailureTracking.objects.get(symbol="BTC-USD").consecutive_failures == 1

    def test_it_gives_up_after_the_configured_retries_and_leaves_the_run_to_the_reaper(
            self, monkeypatch, sleeps, settings, caplog):
        settings.BACKFILL_FINISH_RETRIES = 2
        add_instrument(fail_after_pages=0)
        calls = failing_n_times(monkeypatch, BackfillState, "mark_failed", times=99)
        with caplog.at_level(logging.ERROR, logger="integrity.backfill"):
            result = run_backfill("BTC-USD", "1h", start=START, end=END)
        assert len(calls) == 3 and len(sleeps) == 2
        assert result.status == "failed"
        assert "synthetic failure" in result.error
        assert "the failure could not be recorded (OperationalError: server closed the connection" in result.error
        assert any("could not be recorded" in r.getMessage() for r in caplog.records)
        assert BackfillState.objects.get().status == BackfillStatus.IN_PROGRESS
        monkeypatch.undo()
        assert reap_dead_backfills(now=timezone.now() + timedelta(hours=1))


@contextmanager
def maintenance_connection():
    """A connection to the server's ``postgres`` database: the test database cannot refuse connections
    while one of them changes that."""
    import psycopg

    db = connection.settings_dict
    with psycopg.connect(host=db["HOST"] or "127.0.0.1", port=db["PORT"] or 5432, user=db["USER"],
                         password=db["PASSWORD"] or None, dbname="postgres", autocommit=True) as admin:
        yield admin


def backend_pids_of_others() -> list[int]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                       "AND backend_type = 'client backend' AND pid <> pg_backend_pid()")
        return [row[0] for row in cursor.fetchall()]


# A connection to lose is a server's: pg_terminate_backend and a database refusing new connections
# (what a PostgreSQL restart looks like to a worker) exist on PostgreSQL only; SQLite is a file.
@pytest.mark.postgres_only
class TestDatabaseOutage:
    def test_a_run_whose_connection_is_cut_records_the_real_error_once_the_database_is_back(
            self, settings, caplog):
        settings.BACKFILL_FINISH_RETRIES = 50
        settings.BACKFILL_FINISH_BACKOFF = 0.1
        add_instrument(page_size=50, page_delay=0.05)
        database = connection.settings_dict["NAME"]
        results = []

        def work():
            try:
                results.append(run_backfill("BTC-USD", "1h", start=START, end=END, batch_size=100))
            finally:
                connections.close_all()

        worker = threading.Thread(target=work)
        with caplog.at_level(logging.WARNING, logger="integrity.backfill"), maintenance_connection() as admin:
            worker.start()
            wait_for(lambda: committed(200), "a committed batch")
            admin.execute(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS false')
            try:
                [pid] = backend_pids_of_others()
                admin.execute("SELECT pg_terminate_backend(%s)", [pid])
                # The database stays away until the run has tried to record its end and failed.
                wait_for(lambda: any(r.getMessage().startswith("recording the failure of backfill")
                                     for r in caplog.records), "a failed attempt to record the failure")
            finally:
                admin.execute(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS true')
            worker.join(timeout=120)
        assert not worker.is_alive()
        [result] = results
        state = BackfillState.objects.get()
        assert state.status == BackfillStatus.FAILED
        assert state.error_message == result.error
        # What happened first, then what followed (the reconnect refused while the database was away).
        assert state.error_message.startswith(
            "OperationalError: terminating connection due to administrator command; then OperationalError: ")
        assert SymbolFailureTracking.objects.get(symbol="BTC-USD").consecutive_failures == 1
        # Nothing half-written: the stored bars are exactly those up to the checkpoint, and a rerun
        # resumes there.
        assert Candle.objects.count() == state.records_inserted
        assert_same_bars(stored_bars("BTC-USD", "1h"), expected_bars(until=state.checkpoint_ts + timedelta(hours=1)))
        Instrument.objects.filter(symbol="BTC-USD").update(provider_options={"page_size": 50})
        rerun = run_backfill("BTC-USD", "1h", start=START, end=END)
        assert rerun.resumed_from == state.checkpoint_ts.isoformat()
        assert_same_bars(stored_bars("BTC-USD", "1h"), expected_bars())


# --- 14: a worker asked to stop stops --------------------------------------------------------------


class TestStopRequests:
    def test_a_stop_request_commits_the_bars_held_and_fails_the_run_resumable(self, monkeypatch):
        add_instrument(page_size=50)
        stop_pages(monkeypatch, after_pages=3)
        result = run_backfill("BTC-USD", "1h", start=START, end=END, batch_size=1000)
        state = BackfillState.objects.get()
        # The 150 bars of three pages were still in the batch buffer: committed, not dropped.
        assert (state.status, state.records_inserted) == (BackfillStatus.FAILED, 150)
        assert state.checkpoint_ts == START + timedelta(hours=149)
        assert state.error_message == result.error == (
            "worker stopping (test): 150 bars inserted, resumable from checkpoint 2024-01-07T05:00:00+00:00")
        assert_same_bars(stored_bars("BTC-USD", "1h"), expected_bars(until=START + timedelta(hours=150)))

    def test_a_rerun_resumes_where_the_stopped_run_left_off(self, monkeypatch):
        add_instrument(page_size=50)
        stop_pages(monkeypatch, after_pages=3)
        stopped = run_backfill("BTC-USD", "1h", start=START, end=END, batch_size=100)
        clear_stop_request()
        monkeypatch.undo()
        rerun = run_backfill("BTC-USD", "1h", start=START, end=END)
        assert rerun.resumed_from == BackfillState.objects.get(
            execution_id=stopped.execution_id).checkpoint_ts.isoformat()
        assert rerun.inserted == ALL_BARS - 150
        assert_same_bars(stored_bars("BTC-USD", "1h"), expected_bars())

    def test_a_stopped_run_is_not_counted_as_a_failure_of_the_symbol(self, monkeypatch):
        add_instrument(page_size=50)
        stop_pages(monkeypatch, after_pages=1)
        run_backfill("BTC-USD", "1h", start=START, end=END)
        assert not SymbolFailureTracking.objects.filter(symbol="BTC-USD", consecutive_failures__gt=0).exists()

    def test_a_run_started_while_the_worker_is_stopping_ends_at_once(self):
        add_instrument()
        request_stop("test")
        result = run_backfill("BTC-USD", "1h", start=START, end=END)
        assert result.status == "failed"
        assert result.error == "worker stopping (test): 0 bars inserted, nothing committed; a rerun starts at the " \
                               "range start"
        assert not Candle.objects.exists()

    def test_sigterm_stops_the_run_and_then_reaches_the_handler_it_replaced(self, monkeypatch):
        add_instrument(page_size=50)
        received = []
        original = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
        try:
            stop_pages(monkeypatch, after_pages=2, stop=lambda: os.kill(os.getpid(), signal.SIGTERM))
            result = run_backfill("BTC-USD", "1h", start=START, end=END, batch_size=1000)
            assert received == [signal.SIGTERM]  # delivered once the run had recorded its end
        finally:
            signal.signal(signal.SIGTERM, original)
        assert result.error.startswith(f"worker stopping ({SIGTERM_REASON}): 100 bars inserted")
        assert BackfillState.objects.get().status == BackfillStatus.FAILED
        assert Candle.objects.count() == 100

    def test_outside_a_task_cluster_only_a_request_or_a_signal_stops_a_run(self):
        assert cluster_stop_event() is None


# --- the real cluster ------------------------------------------------------------------------------


@pytest.fixture
def cluster(tmp_path):
    """Start ``manage.py qcluster`` (one worker, the database broker, batches of 50) in its own session."""
    log = tmp_path / "qcluster.log"
    started: list[subprocess.Popen] = []

    def start() -> subprocess.Popen:
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [sys.executable, "manage.py", "qcluster"], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
                env=worker_env(Q_WORKERS="1", BACKFILL_BATCH_SIZE="50", DJANGO_Q_LOG_LEVEL="INFO"))
        started.append(process)
        return process

    start.log = log
    yield start
    for process in started:
        if process.poll() is None or live_group_members(process.pid):
            os.killpg(process.pid, signal.SIGKILL)  # the group is the cluster we started (own session)
            process.wait(timeout=10)


def live_group_members(pgid: int) -> list[int]:
    """Processes of the group that still run (an exited one may linger as a zombie until reaped)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def queue_long_backfill() -> tuple[BackfillState, str]:
    """About a minute and a half of work if nobody stops it: 144 pages of 10 bars, 0.6 s each."""
    from django_q.brokers.orm import ORM
    from django_q.conf import Conf
    from django_q.tasks import async_task

    add_instrument(page_size=10, page_delay=0.6)
    state = create_backfill_state("BTC-USD", "1h", "crypto", provider="synthetic", range_start=START, range_end=END)
    task_id = async_task(EXECUTION_TASK, str(state.execution_id), broker=ORM(list_key=Conf.CLUSTER_NAME))
    return state, task_id


def assert_stopped_resumable(state: BackfillState, reason: str) -> None:
    state.refresh_from_db()
    assert state.status == BackfillStatus.FAILED
    assert state.error_message.startswith(f"worker stopping ({reason}): ")
    assert state.error_message.endswith(f"resumable from checkpoint {state.checkpoint_ts.isoformat()}")
    # Committed up to the checkpoint, exactly; nothing after it.
    assert Candle.objects.count() == state.records_inserted < ALL_BARS
    assert_same_bars(stored_bars("BTC-USD", "1h"), expected_bars(until=state.checkpoint_ts + timedelta(hours=1)))
    Instrument.objects.filter(symbol="BTC-USD").update(provider_options={"page_size": 500})
    rerun = run_backfill("BTC-USD", "1h", start=START, end=END)
    assert rerun.status == "completed"
    assert rerun.resumed_from == state.checkpoint_ts.isoformat()
    assert_same_bars(stored_bars("BTC-USD", "1h"), expected_bars())


@pytest.mark.slow  # starts a cluster
class TestStoppingCluster:
    def test_sigterm_to_qcluster_stops_a_long_backfill_between_batches_and_the_cluster_exits(self, cluster):
        state, task_id = queue_long_backfill()
        process = cluster()
        wait_for(lambda: committed(100), "two committed batches", process=process)
        process.send_signal(signal.SIGTERM)  # the main process only, as `kill PID` or `docker stop` do
        try:
            # Q_TIMEOUT is 3300 s and the backfill has about a minute of pages left: the cluster
            # is only back this soon because the backfill stopped at its next page.
            process.wait(timeout=45)
        except subprocess.TimeoutExpired:
            pytest.fail(f"qcluster still running after SIGTERM:\n{cluster.log.read_text()[-3000:]}")
        assert process.returncode == 0, cluster.log.read_text()[-3000:]
        assert_stopped_resumable(state, CLUSTER_REASON)
        from django_q.models import Task

        assert Task.objects.get(id=task_id).result["error"] == BackfillState.objects.get(pk=state.pk).error_message

    def test_sigterm_to_every_cluster_process_stops_the_backfill_and_then_its_worker(self, cluster):
        state, _ = queue_long_backfill()
        process = cluster()
        running = wait_for(lambda: committed(100), "two committed batches", process=process)
        worker_pid = int(running.worker.rsplit(":", 1)[1])
        os.killpg(process.pid, signal.SIGTERM)  # every process of the cluster, as systemd does
        # The worker records its end, then takes the signal as it would have: it exits. (django-q2's
        # own main process may hang in its shutdown here — its Sentinel died of the same signal while
        # waiting on the stop event — until a service manager's stop timeout kills it; the fixture does.)
        wait_for(lambda: worker_pid not in live_group_members(process.pid), "the worker to exit", timeout=45)
        assert_stopped_resumable(state, SIGTERM_REASON)
