"""Concurrency and crash recovery, with real connections and real processes (PostgreSQL).

These exercise PostgreSQL-specific mechanisms: many sessions racing for the same partial unique
index from separate connections, and a worker process killed with SIGKILL mid-run whose committed
batches must survive while its in-flight batch vanishes. (SQLite serialises writers on one file lock,
so the same races cannot be produced there; its constraint is covered in test_models.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta

import pytest
from django.db import connections
from django.utils import timezone

from integrity.backfill import reap_dead_backfills, run_backfill
from integrity.models import BackfillState, BackfillStatus, Candle
from integrity.providers.synthetic import synthetic_bars
from tests.helpers import ROOT, add_instrument, assert_same_bars, stored_bars, utc, worker_database_url

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.postgres_only, pytest.mark.slow]



class TestConcurrentRequests:
    def test_eight_simultaneous_requests_for_one_series_run_exactly_once(self):
        # Slow pages keep the winner running while the others knock, so all eight overlap.
        add_instrument(page_size=100, page_delay=0.2)
        barrier = threading.Barrier(8)
        results, errors = [], []

        def request():
            try:
                barrier.wait(timeout=30)
                results.append(run_backfill("BTC-USD", "1h", start=utc(2024, 1, 1), end=utc(2024, 1, 21)))
            except Exception as exc:  # surfaced below
                errors.append(exc)
            finally:
                connections.close_all()

        threads = [threading.Thread(target=request) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not errors
        statuses = sorted(r.status for r in results)
        assert statuses.count("completed") == 1, statuses
        refused = [r for r in results if r.status == "refused"]
        assert len(refused) == 7
        winner = BackfillState.objects.get(status=BackfillStatus.COMPLETED)
        assert {r.active_execution_id for r in refused} == {str(winner.execution_id)}
        assert Candle.objects.count() == 480

    def test_concurrent_runs_of_different_series_all_complete(self):
        symbols = [f"S{i}" for i in range(6)]
        for symbol in symbols:
            add_instrument(symbol)
        barrier = threading.Barrier(len(symbols))
        results = []

        def request(symbol):
            barrier.wait(timeout=30)
            results.append(run_backfill(symbol, "1h", start=utc(2024, 1, 1), end=utc(2024, 1, 5)))
            connections.close_all()

        threads = [threading.Thread(target=request, args=(s,)) for s in symbols]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert sorted(r.status for r in results) == ["completed"] * 6
        assert Candle.objects.count() == 6 * 96


class TestKilledWorker:
    START, END = utc(2024, 1, 1), utc(2024, 3, 1)  # 1440 hourly bars

    def start_worker(self) -> subprocess.Popen:
        env = {**os.environ, "DATABASE_URL": worker_database_url(), "DJANGO_SETTINGS_MODULE": "marketdata_site.settings"}
        return subprocess.Popen(
            [sys.executable, "manage.py", "backfill", "--symbols", "BTC-USD", "--timeframe", "1h",
             "--start", self.START.isoformat(), "--end", self.END.isoformat(), "--batch-size", "100",
             "--format", "json"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    def wait_for_checkpoint(self, at_least: int, timeout: float = 60.0) -> BackfillState:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = BackfillState.objects.filter(symbol="BTC-USD").first()
            if state and state.records_inserted >= at_least:
                return state
            time.sleep(0.05)
        raise AssertionError("the worker never committed a batch")

    def test_a_backfill_killed_mid_run_is_reaped_and_resumed_without_loss_or_doubles(self, settings):
        add_instrument(page_size=50, page_delay=0.05)
        worker = self.start_worker()
        try:
            self.wait_for_checkpoint(300)
            os.kill(worker.pid, signal.SIGKILL)
            worker.wait(timeout=30)
        finally:
            if worker.poll() is None:
                worker.kill()
        killed = BackfillState.objects.get(symbol="BTC-USD")
        assert killed.status == BackfillStatus.IN_PROGRESS  # nobody told the database
        stored_at_kill = Candle.objects.count()
        assert 300 <= stored_at_kill < 1440
        # Every committed batch is whole: the rows on disk are exactly the bars up to the checkpoint.
        assert stored_at_kill == killed.records_inserted
        assert Candle.objects.order_by("-ts").first().ts == killed.checkpoint_ts

        # The reaper frees the series once the heartbeat is older than the timeout.
        assert reap_dead_backfills(now=timezone.now() + timedelta(hours=1)) != []
        killed.refresh_from_db()
        assert killed.status == BackfillStatus.FAILED
        assert killed.error_message.startswith("worker lost: heartbeat timeout")

        resumed = run_backfill("BTC-USD", "1h", start=self.START, end=self.END,
                               provider_options={"page_delay": 0})
        assert resumed.status == "completed"
        assert resumed.retry_count == 1
        assert resumed.resumed_from == killed.checkpoint_ts.isoformat()
        assert resumed.inserted == 1440 - stored_at_kill
        assert_same_bars(stored_bars("BTC-USD", "1h"),
                         synthetic_bars("BTC-USD", "1h", "24/7", self.START, self.END))
