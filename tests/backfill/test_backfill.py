"""The backfill service: claiming, lifecycle, idempotent batched writes, validation, recovery."""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from integrity.backfill import (
    BackfillError,
    BackfillRefused,
    create_backfill_state,
    get_active_backfill_states,
    reap_dead_backfills,
    run_backfill,
    update_backfill_state,
)
from integrity.models import (
    AnomalyType,
    BackfillState,
    BackfillStatus,
    Candle,
    DataAnomaly,
    InvalidTransition,
    SymbolFailureTracking,
)
from integrity.providers.synthetic import synthetic_bars
from tests.helpers import add_instrument, assert_same_bars, on_each_page, stored_bars, utc

pytestmark = pytest.mark.django_db(transaction=True)

START, END = utc(2024, 1, 1), utc(2024, 1, 11)  # 240 hourly bars on a 24/7 calendar


def backfill(symbol="BTC-USD", timeframe="1h", **kwargs):
    kwargs.setdefault("start", START)
    kwargs.setdefault("end", END)
    return run_backfill(symbol, timeframe, **kwargs)


class TestClaim:
    def test_it_creates_a_pending_execution_with_a_uuid(self):
        state = create_backfill_state("BTC-USD", "1h", "crypto")
        assert state.status == BackfillStatus.PENDING
        assert len(str(state.execution_id)) == 36

    def test_it_refuses_a_second_claim_naming_the_active_execution(self):
        first = create_backfill_state("BTC-USD", "1h", "crypto")
        with pytest.raises(BackfillRefused) as refused:
            create_backfill_state("BTC-USD", "1h", "crypto")
        assert refused.value.active.execution_id == first.execution_id
        assert str(first.execution_id) in str(refused.value)

    def test_run_backfill_reports_refused_while_the_series_is_busy(self):
        add_instrument()
        holder = create_backfill_state("BTC-USD", "1h", "crypto")
        result = backfill()
        assert result.status == "refused"
        assert result.active_execution_id == str(holder.execution_id)
        assert BackfillState.objects.count() == 1

    def test_get_active_backfill_states_lists_pending_and_in_progress_only(self):
        a = create_backfill_state("A", "1h", "crypto")
        b = create_backfill_state("B", "1h", "crypto")
        b.mark_started()
        c = create_backfill_state("C", "1h", "crypto")
        c.mark_failed("x")
        assert {s.symbol for s in get_active_backfill_states()} == {a.symbol, b.symbol}

    def test_it_rejects_an_unknown_instrument_without_an_asset_class(self):
        with pytest.raises(BackfillError, match="unknown instrument"):
            backfill(symbol="NOPE")

    def test_it_rejects_an_empty_range(self):
        add_instrument()
        with pytest.raises(BackfillError, match="empty range"):
            backfill(start=END, end=START)


class TestUpdateBackfillState:
    def test_it_drives_the_lifecycle_by_execution_id(self):
        state = create_backfill_state("BTC-USD", "1h", "crypto")
        update_backfill_state(state.execution_id, status="in_progress")
        update_backfill_state(state.execution_id, records_inserted=7)
        done = update_backfill_state(state.execution_id, status="completed")
        assert (done.status, done.records_inserted) == ("completed", 7)

    def test_it_refuses_to_change_a_finished_execution(self):
        state = create_backfill_state("BTC-USD", "1h", "crypto")
        update_backfill_state(state.execution_id, status="failed", error_message="boom")
        with pytest.raises(InvalidTransition):
            update_backfill_state(state.execution_id, status="in_progress")
        with pytest.raises(InvalidTransition):
            update_backfill_state(state.execution_id, records_inserted=3)


class TestSuccessfulRun:
    def test_it_stores_exactly_the_providers_bars(self):
        add_instrument()
        result = backfill()
        assert result.status == "completed" and result.inserted == 240
        assert_same_bars(stored_bars("BTC-USD", "1h"), synthetic_bars("BTC-USD", "1h", "24/7", START, END))

    def test_it_records_the_execution(self):
        add_instrument()
        result = backfill()
        state = BackfillState.objects.get(execution_id=result.execution_id)
        assert state.status == BackfillStatus.COMPLETED
        assert state.records_inserted == 240
        assert state.started_at <= state.completed_at
        assert state.checkpoint_ts == END - timedelta(hours=1)
        assert (state.range_start, state.range_end) == (START, END)
        assert state.worker

    def test_it_writes_in_batches_each_moving_the_checkpoint(self):
        add_instrument()
        seen = []
        backfill(batch_size=50, progress=lambda state, totals: seen.append((state.checkpoint_ts, totals.inserted)))
        assert [n for _, n in seen] == [50, 100, 150, 200, 240]
        assert seen[0][0] == START + timedelta(hours=49)

    def test_it_follows_the_instruments_trading_calendar(self):
        add_instrument("AAPL", "equity", "XNYS", ("1d",))
        result = run_backfill("AAPL", "1d", start=utc(2024, 7, 1), end=utc(2024, 7, 8))
        # July 4th is a holiday and the 6th/7th a weekend: 1, 2, 3, 5 July.
        assert result.inserted == 4
        assert not Candle.objects.filter(symbol="AAPL", ts=utc(2024, 7, 4)).exists()


class TestIdempotentWrites:
    def test_running_the_same_range_again_inserts_nothing(self):
        add_instrument()
        backfill()
        again = backfill()
        assert (again.status, again.inserted, again.updated) == ("completed", 0, 0)
        assert Candle.objects.count() == 240

    def test_a_revised_bar_updates_the_stored_row_counted_apart(self):
        add_instrument()
        backfill()
        revised = backfill(provider_options={"revision": 1})
        assert (revised.inserted, revised.updated) == (0, 240)
        assert Candle.objects.count() == 240
        assert_same_bars(stored_bars("BTC-USD", "1h"),
                         synthetic_bars("BTC-USD", "1h", "24/7", START, END, revision=1))

    def test_overlapping_ranges_never_create_duplicate_rows(self):
        add_instrument()
        backfill(end=utc(2024, 1, 6))
        result = backfill(start=utc(2024, 1, 4))
        assert result.inserted == 240 - 120
        assert Candle.objects.count() == 240

    def test_it_leaves_rows_of_other_series_alone(self):
        add_instrument()
        add_instrument("ETH-USD")
        backfill()
        backfill(symbol="ETH-USD")
        backfill(provider_options={"revision": 2})
        assert_same_bars(stored_bars("ETH-USD", "1h"), synthetic_bars("ETH-USD", "1h", "24/7", START, END))


class TestValidationDuringBackfill:
    BAD = [utc(2024, 1, 2, 5), utc(2024, 1, 3, 7)]

    def test_invalid_bars_are_not_stored_and_the_run_completes(self):
        add_instrument(invalid=[t.isoformat() for t in self.BAD])
        result = backfill()
        assert result.status == "completed"
        assert (result.inserted, result.invalid) == (238, 2)
        assert not Candle.objects.filter(ts__in=self.BAD).exists()

    def test_invalid_bars_are_counted_on_the_execution(self):
        add_instrument(invalid=[t.isoformat() for t in self.BAD])
        result = backfill()
        state = BackfillState.objects.get(execution_id=result.execution_id)
        assert state.invalid_bars == 2
        assert state.details["validation"]["reason_counts"]["high_below_low"] == 2

    def test_one_invalid_ohlc_anomaly_per_execution_with_examples(self):
        add_instrument(invalid=[t.isoformat() for t in self.BAD])
        result = backfill(batch_size=20)
        anomaly = DataAnomaly.objects.get(anomaly_type=AnomalyType.INVALID_OHLC)
        assert str(anomaly.execution_id) == result.execution_id
        assert anomaly.affected_rows == 2
        assert [e["ts"][:13] for e in anomaly.details["examples"]] == ["2024-01-02T05", "2024-01-03T07"]

    def test_a_clean_run_records_no_anomaly(self):
        add_instrument()
        backfill()
        assert not DataAnomaly.objects.exists()

    def test_strict_mode_fails_the_run_on_any_invalid_bar(self):
        add_instrument(invalid=[self.BAD[1].isoformat()])
        result = backfill(strict=True, batch_size=10)
        assert result.status == "failed"
        assert "--strict" in result.error and "high_below_low" in result.error
        state = BackfillState.objects.get(execution_id=result.execution_id)
        assert state.status == BackfillStatus.FAILED
        # Batches committed before the bad page are kept; nothing after it is written.
        assert not Candle.objects.filter(ts__gte=self.BAD[1]).exists()


class TestFailureAndResume:
    def test_a_provider_error_fails_the_run_keeping_committed_batches(self):
        add_instrument(page_size=50, fail_after_pages=2)
        result = backfill(batch_size=50)
        assert result.status == "failed"
        assert "synthetic failure injected after 2 pages" in result.error
        state = BackfillState.objects.get(execution_id=result.execution_id)
        assert state.error_message == result.error
        assert state.checkpoint_ts == START + timedelta(hours=99)
        assert Candle.objects.count() == 100

    def test_rerunning_a_failed_range_resumes_from_its_checkpoint(self):
        instrument = add_instrument(page_size=50, fail_after_pages=2)
        failed = backfill(batch_size=50)
        instrument.provider_options = {"page_size": 50}
        instrument.save()
        resumed = backfill(batch_size=50)
        assert resumed.status == "completed"
        assert resumed.resumed_from == BackfillState.objects.get(
            execution_id=failed.execution_id).checkpoint_ts.isoformat()
        assert resumed.retry_count == 1
        assert resumed.inserted == 140
        assert_same_bars(stored_bars("BTC-USD", "1h"), synthetic_bars("BTC-USD", "1h", "24/7", START, END))

    def test_retry_count_grows_with_each_consecutive_failure_and_resets_after_success(self):
        instrument = add_instrument(fail_after_pages=0)
        assert [backfill().retry_count for _ in range(3)] == [0, 1, 2]
        instrument.provider_options = {}
        instrument.save()
        assert backfill().retry_count == 3
        assert backfill().retry_count == 0


class TestRangeLogic:
    NOW = utc(2024, 3, 1, 12, 30)

    def test_a_new_series_starts_at_the_configured_lookback(self, settings):
        settings.BACKFILL_LOOKBACK_DAYS = {**settings.BACKFILL_LOOKBACK_DAYS, "1h": 2}
        add_instrument()
        result = run_backfill("BTC-USD", "1h", now=self.NOW)
        assert result.range_start == utc(2024, 2, 28, 12).isoformat()
        assert result.inserted == 48

    def test_bars_still_forming_are_never_stored(self, settings):
        settings.BACKFILL_LOOKBACK_DAYS = {**settings.BACKFILL_LOOKBACK_DAYS, "1h": 1}
        add_instrument()
        run_backfill("BTC-USD", "1h", now=self.NOW)
        assert Candle.objects.order_by("-ts").first().ts == utc(2024, 3, 1, 11)

    def test_an_explicit_end_at_the_bar_in_progress_is_capped_at_the_last_completed_bar(self):
        add_instrument()  # (a later end is refused: integrity.ranges, tests/backfill/test_ranges.py)
        result = run_backfill("BTC-USD", "1h", start=utc(2024, 3, 1), end=utc(2024, 3, 1, 13), now=self.NOW)
        assert result.range_end == utc(2024, 3, 1, 12).isoformat()
        assert result.inserted == 12

    def test_an_incremental_run_starts_a_few_bars_before_the_last_stored_bar(self, settings):
        settings.BACKFILL_OVERLAP_BARS = 3
        add_instrument()
        run_backfill("BTC-USD", "1h", start=utc(2024, 2, 29), end=utc(2024, 3, 1), now=self.NOW)
        result = run_backfill("BTC-USD", "1h", now=self.NOW)
        assert result.range_start == utc(2024, 2, 29, 20).isoformat()
        assert (result.inserted, result.updated) == (12, 0)

    def test_an_equity_series_on_a_saturday_ends_with_fridays_session(self):
        add_instrument("AAPL", "equity", "XNYS", ("1d",))
        result = run_backfill("AAPL", "1d", start=utc(2024, 6, 1), now=utc(2024, 6, 15, 10))
        assert result.range_end == utc(2024, 6, 15).isoformat()
        assert Candle.objects.order_by("-ts").first().ts == utc(2024, 6, 14)


class TestHeartbeat:
    def test_a_run_heartbeats_between_pages_while_its_batch_is_still_filling(self, monkeypatch):
        from integrity.backfill import run as service

        monkeypatch.setattr(service, "HEARTBEAT_EVERY_SECONDS", 0.0)
        add_instrument(page_size=20)
        long_ago = utc(2000, 1, 1)
        seen = []

        def hand_over(i):
            state = BackfillState.objects.get(symbol="BTC-USD")
            if i:
                seen.append(state.heartbeat_at)
            BackfillState.objects.filter(pk=state.pk).update(heartbeat_at=long_ago)

        on_each_page(monkeypatch, hand_over)
        result = backfill(batch_size=10_000)  # one batch at the end: only heartbeats keep it alive
        assert result.status == "completed"
        assert len(seen) == 11 and all(ts > long_ago for ts in seen)


class TestReaper:
    def start_execution(self, heartbeat_age_seconds):
        state = create_backfill_state("BTC-USD", "1h", "crypto")
        state.mark_started(worker="dead-host:123")
        BackfillState.objects.filter(pk=state.pk).update(
            heartbeat_at=timezone.now() - timedelta(seconds=heartbeat_age_seconds))
        return state

    def test_it_fails_an_execution_whose_heartbeat_timed_out(self, settings):
        settings.BACKFILL_HEARTBEAT_TIMEOUT_SECONDS = 60
        state = self.start_execution(120)
        assert [s.pk for s in reap_dead_backfills()] == [state.pk]
        state.refresh_from_db()
        assert state.status == BackfillStatus.FAILED
        assert state.error_message.startswith("worker lost: heartbeat timeout")
        assert "dead-host:123" in state.error_message

    def test_it_spares_an_execution_with_a_fresh_heartbeat(self, settings):
        settings.BACKFILL_HEARTBEAT_TIMEOUT_SECONDS = 60
        self.start_execution(10)
        assert reap_dead_backfills() == []

    def test_it_frees_the_series_for_a_new_run(self, settings):
        settings.BACKFILL_HEARTBEAT_TIMEOUT_SECONDS = 60
        add_instrument()
        self.start_execution(120)
        assert backfill().status == "completed"  # the claim reaps first

    def test_it_counts_a_reaped_execution_as_a_failure_of_its_symbol(self, settings):
        settings.BACKFILL_HEARTBEAT_TIMEOUT_SECONDS = 60
        self.start_execution(120)
        reap_dead_backfills()
        assert SymbolFailureTracking.objects.get(symbol="BTC-USD").consecutive_failures == 1

    def test_it_fails_a_pending_execution_nobody_picked_up(self, settings):
        settings.BACKFILL_PENDING_TIMEOUT_SECONDS = 60
        state = create_backfill_state("BTC-USD", "1h", "crypto")
        BackfillState.objects.filter(pk=state.pk).update(created_at=timezone.now() - timedelta(minutes=5))
        reap_dead_backfills()
        state.refresh_from_db()
        assert state.status == "failed" and state.error_message.startswith("never started")

    def test_a_reaped_worker_cannot_write_its_next_batch(self, settings):
        settings.BACKFILL_HEARTBEAT_TIMEOUT_SECONDS = 60
        state = self.start_execution(120)
        reap_dead_backfills()
        with pytest.raises(InvalidTransition):
            state.record_progress(checkpoint_ts=START, inserted=1, updated=0, invalid=0)


class TestFailureTracking:
    def fail_once(self):
        return backfill()

    def test_each_failed_execution_increments_the_symbols_count(self):
        add_instrument(fail_after_pages=0)
        for _ in range(2):
            backfill()
        tracking = SymbolFailureTracking.objects.get(symbol="BTC-USD")
        assert tracking.consecutive_failures == 2
        assert tracking.last_failure_at is not None
        assert "synthetic failure" in tracking.last_error

    def test_a_success_resets_the_count(self):
        instrument = add_instrument(fail_after_pages=0)
        backfill()
        instrument.provider_options = {}
        instrument.save()
        backfill()
        tracking = SymbolFailureTracking.objects.get(symbol="BTC-USD")
        assert tracking.consecutive_failures == 0 and tracking.last_success_at is not None

    def test_it_alerts_once_at_the_third_consecutive_failure(self, caplog):
        add_instrument(fail_after_pages=0)
        with caplog.at_level(logging.WARNING, logger="integrity.alerts"):
            for _ in range(5):
                backfill()
        alerts = [r for r in caplog.records if r.name == "integrity.alerts"]
        assert len(alerts) == 1
        assert "3 consecutive backfill failures" in alerts[0].getMessage()
        tracking = SymbolFailureTracking.objects.get(symbol="BTC-USD")
        assert tracking.alert_sent and tracking.alert_sent_at is not None

    def test_the_alert_is_rearmed_after_a_success(self, caplog):
        instrument = add_instrument(fail_after_pages=0)
        with caplog.at_level(logging.WARNING, logger="integrity.alerts"):
            for _ in range(3):
                backfill()
            instrument.provider_options = {}
            instrument.save()
            backfill()
            assert not SymbolFailureTracking.objects.get(symbol="BTC-USD").alert_sent
            instrument.provider_options = {"fail_after_pages": 0}
            instrument.save()
            for _ in range(3):
                backfill()
        alerts = [r for r in caplog.records if r.name == "integrity.alerts"]
        assert len(alerts) == 2


class TestEveryBarRejected:
    def test_a_run_whose_every_bar_is_rejected_fails_with_the_reasons_counted(self):
        add_instrument(invalid_rate=1.0)
        result = backfill(end=START + timedelta(hours=30))
        assert result.status == "failed"
        assert result.error == "30 of 30 bars rejected: high_below_low, high_below_open_close, low_above_open_close"
        state = BackfillState.objects.get()
        assert (state.status, state.error_message, state.records_inserted) == ("failed", result.error, 0)
        assert state.details["validation"]["invalid_count"] == 30
        # The rejected bars are still a finding, and the run a failure of the symbol.
        assert DataAnomaly.objects.get().affected_rows == 30
        assert SymbolFailureTracking.objects.get(symbol="BTC-USD").consecutive_failures == 1

    def test_a_run_that_received_no_bars_completes_with_nothing_to_do(self):
        add_instrument(gaps=[[START.isoformat(), END.isoformat()]])
        result = backfill()
        assert (result.status, result.inserted) == ("completed", 0)

    def test_the_command_exits_1_when_every_bar_of_a_file_is_misaligned(self, tmp_path):
        lines = ["time,open,high,low,close,volume"]
        lines += [f"{(START + timedelta(hours=i, minutes=30)):%Y-%m-%d %H:%M:%S},10,11,9,10.5,100" for i in range(30)]
        path = tmp_path / "BTC.csv"
        path.write_text("\n".join(lines) + "\n")
        out, err = StringIO(), StringIO()
        with pytest.raises(CommandError) as exit_:
            call_command("backfill", "--file", str(path), "--symbol", "BTC-USD", "--timeframe", "1h",
                         "--asset-class", "crypto", "--start", START.isoformat(), "--end", "2024-01-03",
                         "--format", "json", stdout=out, stderr=err)
        assert exit_.value.returncode == 1
        [result] = json.loads(out.getvalue())
        assert result["status"] == "failed"
        assert result["error"].startswith("30 of 30 bars rejected: misaligned_ts — no bar starts on the 1h grid "
                                          "(first: 2024-01-01T00:30:00+00:00)")
        assert BackfillState.objects.get().status == BackfillStatus.FAILED
