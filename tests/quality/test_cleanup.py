"""Duplicate cleanup: ``integrity.cleanup`` and ``manage.py cleanup_duplicates``."""

from __future__ import annotations

import functools
import json
import threading
from datetime import timedelta
from io import StringIO

import pandas as pd
import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.db.models import Count

from integrity import cleanup as cleanup_module
from integrity.cleanup import CleanupConflict, CleanupError, cleanup_duplicate_records
from integrity.models import Candle, DuplicateKeptBy, DuplicateRecordLog
from integrity.validation import validate_bars
from tests.helpers import TtyStringIO, utc

pytestmark = pytest.mark.django_db(transaction=True)

T0 = utc(2024, 1, 1)
INGESTED = utc(2024, 2, 1)


def bar(symbol="BTC-USD", timeframe="1h", ts=T0, ingested_at=INGESTED, close=100.0) -> Candle:
    return Candle(symbol=symbol, timeframe=timeframe, ts=ts, open=close, high=close + 1, low=close - 1,
                  close=close, volume=10.0, ingested_at=ingested_at, updated_at=ingested_at)


def broken(ts=T0, ingested_at=INGESTED, **values) -> Candle:
    """A copy of the bar at ``ts`` that breaks the OHLC rules (high below low unless ``values`` say otherwise)."""
    candle = bar(ts=ts, ingested_at=ingested_at)
    for name, value in (values or {"high": 90.0, "low": 110.0}).items():
        setattr(candle, name, value)
    return candle


def insert(*candles: Candle) -> list[int]:
    """bulk_create in the given order (so ids rise in argument order); returns the ids."""
    return [c.pk for c in Candle.objects.bulk_create(candles)]


def duplicate_groups(count: int, copies: int = 2, symbol="BTC-USD", timeframe="1h") -> list[list[int]]:
    """``count`` groups of ``copies`` rows, an hour apart, each group's last row ingested latest."""
    groups = []
    for g in range(count):
        ts = T0 + timedelta(hours=g)
        groups.append(insert(*[bar(symbol, timeframe, ts, INGESTED + timedelta(minutes=k)) for k in range(copies)]))
    return groups


def remaining_duplicate_groups() -> int:
    return (Candle.objects.values("symbol", "timeframe", "ts").annotate(n=Count("id")).filter(n__gt=1).count())


def assert_invariants() -> None:
    """Every log row's deleted ids are gone and its kept row is there; no duplicate group is left."""
    existing = set(Candle.objects.values_list("id", flat=True))
    logs = list(DuplicateRecordLog.objects.all())
    for log in logs:
        assert not existing.intersection(log.duplicate_ids), f"logged ids still present: {log.duplicate_ids}"
        assert log.kept_id in existing
        assert log.duplicate_count == len(log.duplicate_ids) + 1
    assert remaining_duplicate_groups() == 0


def fail_in_batch(failing: int):
    def hook(batch_index: int) -> None:
        if batch_index == failing:
            raise RuntimeError(f"injected failure in batch {batch_index}")
    return hook


class TestKeptRow:
    def test_it_keeps_the_row_ingested_latest(self):
        late, early, middle = insert(
            bar(ingested_at=INGESTED + timedelta(hours=2)), bar(ingested_at=INGESTED),
            bar(ingested_at=INGESTED + timedelta(hours=1)),
        )
        result = cleanup_duplicate_records()
        assert list(Candle.objects.values_list("id", flat=True)) == [late]
        assert result.groups[0]["kept_id"] == late
        assert result.groups[0]["deleted_ids"] == sorted([early, middle])

    def test_it_breaks_ingested_at_ties_by_the_highest_id(self):
        ids = insert(bar(), bar(), bar())
        cleanup_duplicate_records()
        assert list(Candle.objects.values_list("id", flat=True)) == [max(ids)]

    def test_it_leaves_rows_without_duplicates_alone(self):
        single = insert(bar(ts=T0 + timedelta(hours=5)))
        duplicate_groups(1)
        cleanup_duplicate_records()
        assert Candle.objects.filter(pk__in=single).exists()
        assert Candle.objects.count() == 2


class TestKeptRowIsTheNewestValid:
    """A copy breaking the OHLC rules never wins over a valid one, however new it is."""

    def test_an_older_valid_copy_is_kept_over_a_newer_broken_one(self):
        valid, newer_broken = insert(bar(ingested_at=INGESTED), broken(ingested_at=INGESTED + timedelta(hours=1)))
        result = cleanup_duplicate_records()
        assert list(Candle.objects.values_list("id", flat=True)) == [valid]
        assert (result.groups[0]["kept_id"], result.groups[0]["deleted_ids"]) == (valid, [newer_broken])
        assert result.groups[0]["kept_by"] == DuplicateKeptBy.NEWEST_VALID

    def test_the_newest_of_several_valid_copies_is_kept(self):
        oldest, newest_valid, _ = insert(
            bar(ingested_at=INGESTED), bar(ingested_at=INGESTED + timedelta(hours=1)),
            broken(ingested_at=INGESTED + timedelta(hours=2)),
        )
        cleanup_duplicate_records()
        assert list(Candle.objects.values_list("id", flat=True)) == [newest_valid]

    def test_when_no_copy_is_valid_the_newest_is_kept(self):
        _, newest, _ = insert(
            broken(ingested_at=INGESTED), broken(ingested_at=INGESTED + timedelta(hours=2)),
            broken(ingested_at=INGESTED + timedelta(hours=1), volume=-1.0),
        )
        result = cleanup_duplicate_records()
        assert list(Candle.objects.values_list("id", flat=True)) == [newest]
        assert result.groups[0]["kept_by"] == DuplicateKeptBy.NEWEST_NONE_VALID

    @pytest.mark.parametrize(("values", "rule"), [
        ({"high": float("inf")}, "non_finite"),
        ({"volume": float("inf")}, "non_finite"),
        ({"open": 0.0, "low": 0.0}, "non_positive_price"),
        ({"high": 90.0, "low": 110.0}, "high_below_low"),
        ({"high": 99.5}, "high_below_open_close"),
        ({"low": 100.5}, "low_above_open_close"),
        ({"volume": -1.0}, "negative_volume"),
        # SQLite cannot store NaN (it reads back as NULL, which candles' NOT NULL refuses).
        pytest.param({"close": float("nan")}, "non_finite", marks=pytest.mark.postgres_only),
    ])
    def test_every_ohlc_value_rule_disqualifies_a_copy(self, values, rule):
        newer_broken = broken(ingested_at=INGESTED + timedelta(hours=1), **values)
        # The copy breaks exactly what the backfill's validation would reject it for.
        frame = pd.DataFrame([{c: getattr(newer_broken, c) for c in ("ts", "open", "high", "low", "close",
                                                                      "volume")}])
        assert rule in validate_bars(frame, "1h").invalid["reasons"].iloc[0].split(",")
        valid, _ = insert(bar(ingested_at=INGESTED), newer_broken)
        cleanup_duplicate_records()
        assert list(Candle.objects.values_list("id", flat=True)) == [valid]

    def test_each_group_is_decided_on_its_own(self):
        older_valid, _ = insert(bar(ingested_at=INGESTED), broken(ingested_at=INGESTED + timedelta(hours=1)))
        [[_, plain_newest]] = duplicate_groups(1, symbol="ETH-USD")
        result = cleanup_duplicate_records()
        assert set(Candle.objects.values_list("id", flat=True)) == {older_valid, plain_newest}
        assert result.kept_by == {DuplicateKeptBy.NEWEST_VALID: 2}


class TestLog:
    def test_it_writes_one_log_row_per_group_with_the_exact_ids(self):
        first, second = duplicate_groups(2, copies=3)
        result = cleanup_duplicate_records()
        logs = {log.candle_time: log for log in DuplicateRecordLog.objects.all()}
        assert len(logs) == 2
        for ids, ts in ((first, T0), (second, T0 + timedelta(hours=1))):
            log = logs[ts]
            assert (log.symbol, log.timeframe) == ("BTC-USD", "1h")
            assert log.kept_id == ids[-1]
            assert sorted(log.duplicate_ids) == sorted(ids[:-1])
            assert log.duplicate_count == 3  # rows in the group, the kept one included
            assert log.run_id == result.run_id
            assert log.cleaned_at is not None
            assert log.kept_by == DuplicateKeptBy.NEWEST_VALID

    def test_the_log_row_records_the_rule_that_chose_the_kept_row(self):
        insert(bar(ingested_at=INGESTED), broken(ingested_at=INGESTED + timedelta(hours=1)))
        insert(*[broken(ts=T0 + timedelta(hours=1), ingested_at=INGESTED + timedelta(minutes=k)) for k in range(2)])
        cleanup_duplicate_records()
        logged = dict(DuplicateRecordLog.objects.values_list("candle_time", "kept_by"))
        assert logged == {T0: "newest_valid", T0 + timedelta(hours=1): "newest_none_valid"}
        assert DuplicateRecordLog.objects.get(candle_time=T0).get_kept_by_display() == \
            "Newest copy that passes the OHLC rules"

    def test_the_audit_api_and_admin_show_the_rule(self):
        from django.contrib.auth.models import Permission, User
        from django.test import Client
        from rest_framework.test import APIClient

        insert(bar(ingested_at=INGESTED), broken(ingested_at=INGESTED + timedelta(hours=1)))
        cleanup_duplicate_records()
        viewer = User.objects.create_user("auditor", is_staff=True)
        viewer.user_permissions.set(Permission.objects.filter(codename="view_duplicaterecordlog"))
        api = APIClient()
        api.force_authenticate(viewer)
        rows = api.get("/api/v1/duplicates/").json()["results"]
        assert [row["kept_by"] for row in rows] == ["newest_valid"]
        admin = Client()
        admin.force_login(viewer)
        page = admin.get("/admin/integrity/duplicaterecordlog/?kept_by__exact=newest_valid")
        assert page.status_code == 200
        assert "Newest copy that passes the OHLC rules" in page.content.decode()

    def test_the_database_refuses_an_unknown_rule(self):
        from django.db import IntegrityError

        with pytest.raises(IntegrityError):
            DuplicateRecordLog.objects.create(symbol="BTC-USD", timeframe="1h", candle_time=T0, duplicate_count=2,
                                              duplicate_ids=[1], kept_by="oldest")

    def test_the_result_totals_match_the_log(self):
        duplicate_groups(3, copies=2)
        duplicate_groups(1, copies=4, symbol="ETH-USD")
        result = cleanup_duplicate_records()
        logged = sum(len(log.duplicate_ids) for log in DuplicateRecordLog.objects.all())
        assert (result.groups_total, result.rows_deleted, logged) == (4, 6, 6)
        assert result.series == {("BTC-USD", "1h"): {"groups": 3, "rows_deleted": 3},
                                 ("ETH-USD", "1h"): {"groups": 1, "rows_deleted": 3}}
        assert_invariants()

    def test_the_result_reports_groups_in_symbol_timeframe_ts_order(self):
        duplicate_groups(2, symbol="ZZZ")
        duplicate_groups(2, symbol="AAA", timeframe="1d")
        duplicate_groups(1, symbol="AAA", timeframe="1h")
        result = cleanup_duplicate_records()
        keys = [(g["symbol"], g["timeframe"], g["candle_time"]) for g in result.groups]
        assert keys == sorted(keys)
        assert result.groups[0]["candle_time"] == T0.isoformat()


class TestDryRun:
    def test_it_writes_nothing(self):
        duplicate_groups(3, copies=3)
        result = cleanup_duplicate_records(dry_run=True)
        assert Candle.objects.count() == 9
        assert not DuplicateRecordLog.objects.exists()
        assert (result.dry_run, result.groups_total, result.rows_deleted) == (True, 3, 6)

    def test_it_reports_the_groups_a_real_run_then_deletes(self):
        duplicate_groups(3, copies=3)
        duplicate_groups(2, symbol="ETH-USD", timeframe="1d")
        planned = cleanup_duplicate_records(dry_run=True, batch_size=2)
        done = cleanup_duplicate_records(batch_size=2)
        assert planned.groups == done.groups
        assert (planned.rows_deleted, planned.batches) == (done.rows_deleted, done.batches)
        logged = {(log.symbol, log.timeframe, log.candle_time.isoformat(), log.kept_id, tuple(log.duplicate_ids))
                  for log in DuplicateRecordLog.objects.all()}
        assert logged == {(g["symbol"], g["timeframe"], g["candle_time"], g["kept_id"], tuple(g["deleted_ids"]))
                          for g in planned.groups}


    def test_it_reports_the_same_choice_a_real_run_makes_between_valid_and_broken_copies(self):
        valid, _ = insert(bar(ingested_at=INGESTED), broken(ingested_at=INGESTED + timedelta(hours=1)))
        insert(*[broken(ts=T0 + timedelta(hours=1), ingested_at=INGESTED + timedelta(minutes=k)) for k in range(2)])
        planned = cleanup_duplicate_records(dry_run=True)
        assert [(g["kept_id"], g["kept_by"]) for g in planned.groups][0] == (valid, "newest_valid")
        assert planned.kept_by == {"newest_valid": 1, "newest_none_valid": 1}
        done = cleanup_duplicate_records()
        assert planned.groups == done.groups
        assert planned.kept_by == done.kept_by


class TestFilters:
    def test_it_cleans_only_the_given_symbol(self):
        duplicate_groups(2, symbol="BTC-USD")
        eth = duplicate_groups(2, symbol="ETH-USD")
        result = cleanup_duplicate_records(symbol="BTC-USD")
        assert result.groups_total == 2
        assert {g["symbol"] for g in result.groups} == {"BTC-USD"}
        assert Candle.objects.filter(symbol="ETH-USD").count() == 4
        assert set(Candle.objects.filter(symbol="ETH-USD").values_list("id", flat=True)) == {i for g in eth for i in g}

    def test_it_cleans_only_the_given_timeframe(self):
        duplicate_groups(2, timeframe="1h")
        duplicate_groups(3, timeframe="1d")
        result = cleanup_duplicate_records(timeframe="1d")
        assert result.groups_total == 3
        assert Candle.objects.filter(timeframe="1h").count() == 4
        assert Candle.objects.filter(timeframe="1d").count() == 3

    def test_it_cleans_only_the_given_series(self):
        duplicate_groups(1, symbol="BTC-USD", timeframe="1h")
        duplicate_groups(1, symbol="BTC-USD", timeframe="1d")
        duplicate_groups(1, symbol="ETH-USD", timeframe="1h")
        result = cleanup_duplicate_records(symbol="BTC-USD", timeframe="1h")
        assert [(g["symbol"], g["timeframe"]) for g in result.groups] == [("BTC-USD", "1h")]
        assert remaining_duplicate_groups() == 2


class TestNoDuplicates:
    def test_it_deletes_and_logs_nothing(self):
        insert(*[bar(ts=T0 + timedelta(hours=h)) for h in range(5)])
        result = cleanup_duplicate_records()
        assert (result.groups_total, result.rows_deleted, result.batches, result.groups) == (0, 0, 0, [])
        assert Candle.objects.count() == 5
        assert not DuplicateRecordLog.objects.exists()

    def test_an_empty_table_is_fine(self):
        assert cleanup_duplicate_records().groups_total == 0


class TestBatches:
    def test_batch_size_2_over_5_groups_runs_3_batches(self):
        duplicate_groups(5)
        result = cleanup_duplicate_records(batch_size=2)
        assert (result.batches, result.groups_total, result.rows_deleted) == (3, 5, 5)
        assert_invariants()

    def test_each_batch_commits_before_the_next_starts(self):
        duplicate_groups(5)
        logs_seen = []
        cleanup_duplicate_records(batch_size=2, progress=lambda done, total: logs_seen.append(
            (done, total, DuplicateRecordLog.objects.count())))
        assert logs_seen == [(2, 5, 2), (4, 5, 4), (5, 5, 5)]

    def test_a_batch_size_below_one_is_refused(self):
        with pytest.raises(ValueError, match="batch_size"):
            cleanup_duplicate_records(batch_size=0)

    def test_the_result_keeps_a_capped_list_but_exact_totals(self):
        duplicate_groups(5)
        result = cleanup_duplicate_records(keep_groups=2)
        assert len(result.groups) == 2 and result.groups_truncated
        assert (result.groups_total, result.rows_deleted) == (5, 5)
        assert result.as_dict()["groups_total"] == 5


class TestInterruptedBatch:
    def test_a_failure_in_batch_2_keeps_batch_1_and_rolls_back_batch_2(self):
        groups = duplicate_groups(5, copies=3)
        with pytest.raises(CleanupError, match="batch 2") as caught:
            cleanup_duplicate_records(batch_size=2, _before_commit=fail_in_batch(2))
        # batch 1 (groups 1-2): committed, deletions and logs both there
        for ids in groups[:2]:
            assert list(Candle.objects.filter(pk__in=ids).values_list("id", flat=True)) == [ids[-1]]
        assert {log.kept_id for log in DuplicateRecordLog.objects.all()} == {groups[0][-1], groups[1][-1]}
        # batch 2 (groups 3-4) rolled back entirely; batch 3 never ran
        for ids in groups[2:]:
            assert Candle.objects.filter(pk__in=ids).count() == 3
        assert DuplicateRecordLog.objects.count() == 2
        partial = caught.value.result
        assert (caught.value.batch_index, partial.batches, partial.groups_total, partial.rows_deleted) == (2, 1, 2, 4)

    def test_re_running_after_a_failure_completes_the_job(self):
        duplicate_groups(5, copies=3)
        with pytest.raises(CleanupError):
            cleanup_duplicate_records(batch_size=2, _before_commit=fail_in_batch(2))
        rerun = cleanup_duplicate_records(batch_size=2)
        assert (rerun.groups_total, rerun.rows_deleted) == (3, 6)
        assert DuplicateRecordLog.objects.count() == 5
        assert Candle.objects.count() == 5
        total_logged = sum(len(log.duplicate_ids) for log in DuplicateRecordLog.objects.all())
        assert total_logged == 15 - 5
        assert_invariants()

    def test_a_delete_that_misses_a_computed_id_rolls_back_the_batch(self, monkeypatch):
        duplicate_groups(2)
        real = cleanup_module._group

        def with_a_phantom_id(*row):
            ts, group = real(*row)
            if group["candle_time"] == T0.isoformat():
                group["deleted_ids"].append(10**12)  # an id that is not in candles
            return ts, group

        monkeypatch.setattr(cleanup_module, "_group", with_a_phantom_id)
        with pytest.raises(CleanupConflict, match="computed 3 rows to delete but the DELETE removed 2"):
            cleanup_duplicate_records()
        assert Candle.objects.count() == 4
        assert not DuplicateRecordLog.objects.exists()


    def test_a_log_insert_failing_after_the_delete_rolls_the_delete_back(self, monkeypatch):
        groups = duplicate_groups(3, copies=3)
        real, calls = cleanup_module._insert_logs, []

        def failing_in_batch_2(*args):
            calls.append(1)
            if len(calls) == 2:  # batch 2's DELETE has already run in this transaction
                raise RuntimeError("disk full")
            real(*args)

        monkeypatch.setattr(cleanup_module, "_insert_logs", failing_in_batch_2)
        with pytest.raises(CleanupError, match="batch 2 failed and was rolled back"):
            cleanup_duplicate_records(batch_size=1)
        assert [Candle.objects.filter(pk__in=ids).count() for ids in groups] == [1, 3, 3]
        logged = [i for log in DuplicateRecordLog.objects.all() for i in log.duplicate_ids]
        assert sorted(logged) == sorted(groups[0][:-1])
        assert Candle.objects.count() == 9 - len(logged)  # rows deleted == ids logged


class TestConcurrentChanges:
    def test_rows_changed_after_the_groups_were_found_are_reread_at_batch_time(self):
        groups = duplicate_groups(4, copies=3)

        def after_batch(done, total):
            if done == 2:  # between batch 1 and batch 2, another writer removes rows
                Candle.objects.filter(pk=groups[2][0]).delete()  # group 3 keeps one duplicate
                Candle.objects.filter(pk__in=groups[3][:2]).delete()  # group 4 has none left

        result = cleanup_duplicate_records(batch_size=2, progress=after_batch)
        assert result.groups_total == 3
        log = DuplicateRecordLog.objects.get(candle_time=T0 + timedelta(hours=2))
        assert (log.duplicate_ids, log.kept_id, log.duplicate_count) == ([groups[2][1]], groups[2][2], 2)
        assert not DuplicateRecordLog.objects.filter(candle_time=T0 + timedelta(hours=3)).exists()
        assert_invariants()


class TestOuterTransaction:
    @pytest.mark.django_db  # the test runs in a transaction: the batches become savepoints in it
    def test_it_runs_inside_an_outer_transaction(self):
        groups = duplicate_groups(3)
        with pytest.raises(CleanupError):
            cleanup_duplicate_records(batch_size=1, _before_commit=fail_in_batch(2))
        assert Candle.objects.filter(pk__in=groups[1]).count() == 2  # the failed savepoint rolled back
        assert DuplicateRecordLog.objects.count() == 1
        result = cleanup_duplicate_records(batch_size=1)
        assert result.groups_total == 2
        assert_invariants()


class TestAnomalies:
    def test_a_real_cleanup_resolves_the_series_duplicate_anomaly(self):
        anomalies = pytest.importorskip("integrity.quality.record")
        if not hasattr(anomalies, "resolve_cleaned_duplicates"):
            pytest.skip("integrity.quality.record.resolve_cleaned_duplicates is not there yet")
        from integrity.models import DataAnomaly

        duplicate_groups(1)
        anomaly = DataAnomaly.objects.create(symbol="BTC-USD", timeframe="1h", anomaly_type="duplicate",
                                             severity="medium", description="1 duplicate group", fingerprint="x")
        dry = cleanup_duplicate_records(dry_run=True)
        anomaly.refresh_from_db()
        assert (dry.anomalies_resolved, anomaly.resolution_status) == (None, "open")
        result = cleanup_duplicate_records()
        anomaly.refresh_from_db()
        assert (result.anomalies_resolved, anomaly.resolution_status) == (1, "resolved")


@pytest.mark.postgres_only  # bigint[] is the PostgreSQL column type; SQLite stores a JSON text array
class TestPostgresArray:
    def test_duplicate_ids_are_stored_as_a_real_bigint_array(self):
        ids = duplicate_groups(1, copies=4)[0]
        cleanup_duplicate_records()
        with connection.cursor() as cursor:
            cursor.execute("SELECT array_length(duplicate_ids, 1), duplicate_ids, pg_typeof(duplicate_ids)::text"
                           " FROM duplicate_records_log")
            length, stored, type_name = cursor.fetchone()
        assert (length, sorted(stored), type_name) == (3, sorted(ids[:-1]), "bigint[]")


@pytest.mark.postgres_only  # row locks (FOR UPDATE); SQLite's IMMEDIATE transaction locks the whole file
class TestPostgresLocking:
    def test_a_batch_locks_its_rows_against_concurrent_writers(self):
        [ids] = duplicate_groups(1, copies=3)
        outcome = {}

        def concurrent_delete_of_the_kept_row():
            from django.db import OperationalError
            from django.db import connection as other

            try:
                with other.cursor() as cursor:
                    cursor.execute("SET lock_timeout = '200ms'")
                    cursor.execute("DELETE FROM candles WHERE id = %s", [ids[-1]])
                outcome["error"] = None
            except OperationalError as exc:
                outcome["error"] = exc
            finally:
                other.close()

        def before_commit(batch_index):
            worker = threading.Thread(target=concurrent_delete_of_the_kept_row)
            worker.start()
            worker.join()

        cleanup_duplicate_records(_before_commit=before_commit)
        assert "lock timeout" in str(outcome["error"])
        assert list(Candle.objects.values_list("id", flat=True)) == [ids[-1]]
        assert_invariants()


def run(*args, **kwargs) -> tuple[int, str, str]:
    out, err = StringIO(), StringIO()
    try:
        call_command("cleanup_duplicates", *args, stdout=out, stderr=err, **kwargs)
        code = 0
    except CommandError as exc:
        code = exc.returncode
    return code, out.getvalue(), err.getvalue()


class TestCommand:
    def test_json_output_lists_every_group_and_exits_0(self):
        groups = duplicate_groups(2, copies=3)
        code, out, _ = run("--format", "json", "--batch-size", "1")
        assert code == 0
        payload = json.loads(out)
        assert {"run_id", "dry_run", "groups_total", "rows_deleted", "groups"} <= payload.keys()
        assert (payload["dry_run"], payload["groups_total"], payload["rows_deleted"], payload["batches"]) == \
            (False, 2, 4, 2)
        assert payload["groups"][0] == {"symbol": "BTC-USD", "timeframe": "1h", "candle_time": T0.isoformat(),
                                        "kept_id": groups[0][-1], "kept_by": "newest_valid",
                                        "deleted_ids": groups[0][:-1], "duplicate_count": 3}
        assert payload["kept_by"] == {"newest_valid": 2}
        assert str(DuplicateRecordLog.objects.first().run_id) == payload["run_id"]

    def test_dry_run_json_reports_without_deleting(self):
        duplicate_groups(2)
        code, out, _ = run("--dry-run", "--format", "json")
        assert code == 0
        assert (json.loads(out)["dry_run"], json.loads(out)["rows_deleted"]) == (True, 2)
        assert Candle.objects.count() == 4

    def test_text_output_summarises_per_series(self):
        duplicate_groups(2, symbol="BTC-USD")
        duplicate_groups(1, symbol="ETH-USD", copies=3)
        code, out, _ = run("--dry-run")
        assert code == 0
        assert "3 duplicate groups, would delete 4 rows" in out
        assert "ETH-USD" in out and "BTC-USD" in out
        assert "nothing was written" in out

    def test_text_output_says_which_rule_chose_each_kept_row(self):
        valid, _ = insert(bar(ingested_at=INGESTED), broken(ingested_at=INGESTED + timedelta(hours=1)))
        insert(*[broken(ts=T0 + timedelta(hours=1), ingested_at=INGESTED + timedelta(minutes=k)) for k in range(2)])
        code, out, _ = run("--dry-run")
        assert code == 0
        assert "kept: 1 newest (none valid), 1 newest valid" in out
        assert f"kept {valid} (newest valid)" in out

    def test_filters_reach_the_service(self):
        duplicate_groups(1, symbol="BTC-USD")
        duplicate_groups(1, symbol="ETH-USD", timeframe="1d")
        code, out, _ = run("--symbol", "ETH-USD", "--timeframe", "1d", "--format", "json")
        assert code == 0
        assert [g["symbol"] for g in json.loads(out)["groups"]] == ["ETH-USD"]

    def test_a_terminal_gets_a_progress_bar_with_rate_and_eta_not_in_error_red(self):
        duplicate_groups(3)
        err = TtyStringIO()
        call_command("cleanup_duplicates", "--batch-size", "1", stdout=StringIO(), stderr=err, force_color=True)
        final = err.getvalue().rsplit("\r", 1)[-1]
        assert final.startswith("duplicate groups: 100%") and "3/3" in final
        assert "group/s" in final and "<00:00" in final
        assert "\x1b[31" not in err.getvalue()

    @pytest.mark.parametrize("args", [(), ("--format", "json")])
    def test_without_a_terminal_or_with_json_stderr_stays_quiet(self, args):
        duplicate_groups(2)
        code, _, err = run("--batch-size", "1", *args)
        assert code == 0 and err == ""

    def test_an_unknown_timeframe_exits_2(self):
        code, _, _ = run_with_returncode("--timeframe", "7m")
        assert code == 2

    @pytest.mark.parametrize("size", ["0", "-3", "many"])
    def test_a_bad_batch_size_exits_2(self, size):
        code, _, _ = run_with_returncode("--batch-size", size)
        assert code == 2

    def test_an_interrupted_batch_exits_1_and_reports_what_was_committed(self, monkeypatch):
        duplicate_groups(3)
        from integrity.management.commands import cleanup_duplicates

        monkeypatch.setattr(cleanup_duplicates, "cleanup_duplicate_records",
                            functools.partial(cleanup_duplicate_records, _before_commit=fail_in_batch(2)))
        code, out, _ = run("--batch-size", "1", "--format", "json")
        assert code == 1
        payload = json.loads(out)
        assert "batch 2" in payload["error"]
        assert (payload["groups_total"], payload["rows_deleted"]) == (1, 1)
        assert DuplicateRecordLog.objects.count() == 1


def run_with_returncode(*args) -> tuple[int, str, str]:
    """Like the command line: a CommandError becomes its returncode."""
    from django.core.management.base import CommandError

    try:
        return run(*args)
    except CommandError as exc:
        return exc.returncode, "", str(exc)
