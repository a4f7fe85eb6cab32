"""The data model's invariants, enforced by the database on both engines."""

from __future__ import annotations

import pytest
from django.db import IntegrityError, connection, transaction

from integrity.models import (
    BackfillState,
    BackfillStatus,
    DataAnomaly,
    DuplicateRecordLog,
    InvalidTransition,
    SymbolFailureTracking,
)

pytestmark = pytest.mark.django_db(transaction=True)


def make_state(**kwargs) -> BackfillState:
    values = {"symbol": "AAPL", "asset_class": "equity", "timeframe": "1d"}
    values.update(kwargs)
    return BackfillState.objects.create(**values)


class TestOneActiveBackfillPerSeries:
    def test_it_rejects_a_second_pending_backfill_for_the_same_series(self):
        make_state()
        with pytest.raises(IntegrityError):
            make_state()

    def test_it_rejects_a_pending_backfill_while_one_is_in_progress(self):
        state = make_state()
        state.mark_started()
        with pytest.raises(IntegrityError):
            make_state()

    def test_it_allows_a_new_backfill_once_the_previous_one_finished(self):
        state = make_state()
        state.mark_started()
        state.mark_completed(10)
        assert make_state().status == BackfillStatus.PENDING

    def test_it_allows_concurrent_backfills_of_other_series(self):
        make_state()
        make_state(timeframe="1h")
        make_state(symbol="MSFT")
        assert BackfillState.objects.count() == 3

    def test_it_rejects_the_duplicate_even_through_a_raw_update(self):
        make_state()
        other = make_state(timeframe="1h")
        with pytest.raises(IntegrityError), transaction.atomic():
            BackfillState.objects.filter(pk=other.pk).update(timeframe="1d")


class TestStatusValuesAreChecked:
    def test_it_rejects_an_unknown_backfill_status(self):
        state = make_state()
        with pytest.raises(IntegrityError), transaction.atomic():
            BackfillState.objects.filter(pk=state.pk).update(status="exploded")

    def test_it_rejects_an_unknown_severity(self):
        with pytest.raises(IntegrityError), transaction.atomic():
            DataAnomaly.objects.create(
                symbol="AAPL", timeframe="1d", anomaly_type="gap", severity="apocalyptic",
                description="x", fingerprint="f1",
            )

    def test_it_rejects_an_unknown_anomaly_type(self):
        with pytest.raises(IntegrityError), transaction.atomic():
            DataAnomaly.objects.create(
                symbol="AAPL", timeframe="1d", anomaly_type="vibes", severity="low",
                description="x", fingerprint="f1",
            )

    def test_it_rejects_an_unknown_resolution_status(self):
        with pytest.raises(IntegrityError), transaction.atomic():
            DataAnomaly.objects.create(
                symbol="AAPL", timeframe="1d", anomaly_type="gap", severity="low",
                resolution_status="ignored", description="x", fingerprint="f1",
            )

    def test_it_rejects_an_unknown_timeframe_on_a_backfill(self):
        with pytest.raises(IntegrityError), transaction.atomic():
            make_state(timeframe="7m")


class TestBackfillLifecycle:
    def test_it_moves_pending_to_in_progress_to_completed(self):
        state = make_state()
        state.mark_started(worker="host:1")
        assert state.status == BackfillStatus.IN_PROGRESS
        assert state.started_at is not None and state.heartbeat_at is not None
        state.mark_completed(42)
        state.refresh_from_db()
        assert (state.status, state.records_inserted) == (BackfillStatus.COMPLETED, 42)
        assert state.completed_at >= state.started_at

    def test_it_can_fail_a_pending_execution(self):
        state = make_state()
        state.mark_failed("provider unreachable")
        state.refresh_from_db()
        assert state.status == BackfillStatus.FAILED
        assert state.error_message == "provider unreachable"

    def test_it_cannot_complete_an_execution_that_never_started(self):
        state = make_state()
        with pytest.raises(InvalidTransition):
            state.mark_completed(1)

    @pytest.mark.parametrize("finish", ["completed", "failed"])
    def test_it_never_leaves_a_terminal_state_through_the_methods(self, finish):
        state = make_state()
        state.mark_started()
        state.mark_completed(1) if finish == "completed" else state.mark_failed("boom")
        with pytest.raises(InvalidTransition):
            state.mark_started()
        with pytest.raises(InvalidTransition):
            state.mark_failed("again")
        with pytest.raises(InvalidTransition):
            state.mark_completed(5)
        state.refresh_from_db()
        assert state.status == finish

    def test_it_never_leaves_a_terminal_state_through_save(self):
        state = make_state()
        state.mark_started()
        state.mark_completed(1)
        loaded = BackfillState.objects.get(pk=state.pk)
        loaded.status = BackfillStatus.IN_PROGRESS
        with pytest.raises(InvalidTransition):
            loaded.save()
        assert BackfillState.objects.get(pk=state.pk).status == BackfillStatus.COMPLETED

    def test_a_stale_copy_cannot_overwrite_a_newer_state(self):
        state = make_state()
        stale_copy = BackfillState.objects.get(pk=state.pk)
        state.mark_failed("reaped")
        with pytest.raises(InvalidTransition):
            stale_copy.mark_started()


class TestDuplicateIdsColumn:
    def test_it_round_trips_a_list_of_big_ids(self):
        log = DuplicateRecordLog.objects.create(
            symbol="AAPL", timeframe="1d", candle_time="2024-01-02T00:00:00Z", duplicate_count=3,
            duplicate_ids=[2**40, 7],
        )
        assert DuplicateRecordLog.objects.get(pk=log.pk).duplicate_ids == [2**40, 7]

    @pytest.mark.postgres_only  # the column type is a PostgreSQL array; SQLite stores JSON text
    def test_it_is_a_bigint_array_on_postgresql(self):
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT data_type, udt_name FROM information_schema.columns "
                "WHERE table_name = 'duplicate_records_log' AND column_name = 'duplicate_ids'"
            )
            assert cursor.fetchone() == ("ARRAY", "_int8")


class TestFailureTracking:
    def test_it_keeps_one_row_per_symbol(self):
        SymbolFailureTracking.objects.create(symbol="AAPL")
        with pytest.raises(IntegrityError), transaction.atomic():
            SymbolFailureTracking.objects.create(symbol="AAPL")
