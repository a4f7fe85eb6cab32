"""The partitioned candle store (``integrity.partitions``, ``manage.py candle_partitions``): on
PostgreSQL ``candles`` is partitioned by timeframe then by time, a bar outside every partition is
kept in a default partition (and the health job warns), the daily maintenance creates partitions
ahead, empties the default partitions and applies retention, and an unpartitioned table with data
converts in place, resumably. SQLite keeps one plain table and the command says so."""

from __future__ import annotations

import json
from datetime import timedelta
from io import StringIO

import pandas as pd
import pytest
from django.core.management import CommandError, call_command
from django.db import connection, transaction

from integrity import partitions
from integrity.health.job import run_health_monitoring
from integrity.models import Candle
from integrity.writer import write_bars
from tests.conftest import is_postgres
from tests.helpers import utc

pytestmark = pytest.mark.django_db

# Partitions, default partitions, catalog queries and the conversion are PostgreSQL mechanisms: on
# SQLite there is nothing of the kind (the SQLite behaviour is TestOnSqlite's).
postgres_only = pytest.mark.postgres_only

NOW = utc(2026, 6, 15, 12, 0)


def bars(start, count: int, step=timedelta(minutes=1)) -> pd.DataFrame:
    ts = pd.date_range(start, periods=count, freq=step, tz="UTC")
    return pd.DataFrame({"ts": ts, "open": 10.0, "high": 11.0, "low": 9.0, "close": 10.5, "volume": 1.0})


def write(symbol: str, timeframe: str, frame: pd.DataFrame) -> None:
    with transaction.atomic():
        write_bars(symbol, timeframe, frame, source="test")


def sql(query: str, params=None):
    with connection.cursor() as cursor:
        cursor.execute(query, params)
        return cursor.fetchall() if cursor.description else None


def rows_in(table: str) -> int:
    return sql(f'SELECT count(*) FROM "{table}"')[0][0]


def exists(table: str) -> bool:
    return sql("SELECT to_regclass(%s) IS NOT NULL", [f"public.{table}"])[0][0]


def insert_foreign(timeframe: str, ts) -> None:
    """A bar written as a foreign writer would: straight into candles, no partition made for it."""
    Candle.objects.create(symbol="FOREIGN", timeframe=timeframe, ts=ts, open=1, high=1, low=1, close=1, volume=1)


@postgres_only
class TestLayout:
    def test_it_partitions_candles_by_timeframe_then_by_time(self):
        kinds = dict(sql("SELECT relname, relkind FROM pg_class WHERE relname IN "
                         "('candles', 'candles_1m', 'candles_1d', 'candles_default', 'candles_1m_default')"))
        assert kinds == {"candles": "p", "candles_1m": "p", "candles_1d": "p", "candles_default": "r",
                         "candles_1m_default": "r"}

    def test_every_partition_has_the_series_index_and_no_unique_constraint(self):
        write("AAA", "1m", bars(utc(2021, 3, 1), 3))
        indexes = [row[0] for row in sql("SELECT indexdef FROM pg_indexes WHERE tablename = 'candles_1m_p202103'")]
        assert any("(symbol, timeframe, ts)" in d and "UNIQUE" not in d for d in indexes)
        assert all("UNIQUE" not in d or "(id, timeframe, ts)" in d for d in indexes)
        insert_foreign("1m", utc(2021, 3, 1))
        insert_foreign("1m", utc(2021, 3, 1))  # a duplicate is stored, as before: cleanup exists for it
        assert Candle.objects.filter(symbol="FOREIGN").count() == 2

    def test_our_writer_creates_the_partitions_a_batch_needs(self):
        write("AAA", "1m", bars(utc(2021, 3, 31, 23, 58), 4))  # across a month boundary
        assert rows_in("candles_1m_p202103") == 2
        assert rows_in("candles_1m_p202104") == 2
        assert rows_in("candles_1m_default") == 0

    def test_hourly_and_daily_bars_are_partitioned_by_year(self):
        write("AAA", "1d", bars(utc(2019, 12, 30), 4, step=timedelta(days=1)))
        assert rows_in("candles_1d_p2019") == 2
        assert rows_in("candles_1d_p2020") == 2

    def test_ids_stay_unique_and_increasing_across_partitions(self):
        write("AAA", "1m", bars(utc(2021, 3, 31, 23, 59), 2))
        write("AAA", "1d", bars(utc(2021, 1, 1), 1, step=timedelta(days=1)))
        ids = list(Candle.objects.order_by("id").values_list("id", flat=True))
        assert len(set(ids)) == 3
        assert ids == sorted(ids)


@postgres_only
class TestDefaultPartition:
    def test_a_bar_outside_every_partition_is_kept_in_the_default_partition(self):
        insert_foreign("1h", utc(2011, 5, 1))
        insert_foreign("30m", utc(2021, 5, 1))  # a timeframe we do not partition
        assert rows_in("candles_1h_default") == 1
        assert rows_in("candles_default") == 1
        assert Candle.objects.filter(symbol="FOREIGN").count() == 2

    def test_the_health_run_warns_while_a_default_partition_holds_rows(self):
        insert_foreign("1h", utc(2011, 5, 1))
        report = run_health_monitoring(scan_anomalies=False)
        assert report.status == "warning"
        assert report.storage["default_rows"] == {"candles_1h_default": 1}
        assert "candle_partitions" in report.storage["problem"]
        assert report.as_dict()["storage"]["problem"] == report.storage["problem"]

    def test_the_health_run_has_no_storage_problem_when_the_defaults_are_empty(self):
        write("AAA", "1m", bars(utc(2021, 3, 1), 3))
        report = run_health_monitoring(scan_anomalies=False)
        assert report.storage == {"layout": "partitioned", "default_rows": {}, "problem": None}
        assert report.status == "healthy"


@postgres_only
class TestMaintenance:
    def test_it_creates_every_timeframes_partitions_ahead(self):
        report = partitions.maintain_partitions(ahead=2, now=NOW, retention={})
        for name in ("candles_1m_p202606", "candles_1m_p202607", "candles_15m_p202608", "candles_1d_p2026"):
            assert exists(name)
        assert not exists("candles_1m_p202609")
        assert "candles_1m_p202608" in report.created

    def test_it_creates_nothing_twice(self):
        partitions.maintain_partitions(ahead=1, now=NOW, retention={})
        assert partitions.maintain_partitions(ahead=1, now=NOW, retention={}).created == []

    def test_it_moves_rows_out_of_the_default_partition_into_their_own(self):
        insert_foreign("1h", utc(2011, 5, 1))
        before = Candle.objects.get(symbol="FOREIGN")
        report = partitions.maintain_partitions(ahead=0, now=NOW, retention={})
        assert report.moved_from_default == {"candles_1h_p2011": 1}
        assert rows_in("candles_1h_default") == 0
        after = Candle.objects.get(symbol="FOREIGN")
        assert (after.id, after.ts, after.close) == (before.id, before.ts, before.close)
        assert report.default_rows == {} and report.warning is None

    def test_it_reports_every_partition_with_its_size(self):
        write("AAA", "1m", bars(utc(2021, 3, 1), 3))
        report = partitions.maintain_partitions(ahead=0, now=NOW, retention={})
        sizes = {p["name"]: p["bytes"] for p in report.partitions}
        assert sizes["candles_1m_p202103"] > 0
        assert "candles_default" in sizes

    def test_retention_drops_whole_partitions_older_than_the_timeframes_retention(self):
        write("AAA", "1m", bars(utc(2026, 1, 31, 23, 59), 2))  # January and February 2026
        write("AAA", "1d", bars(utc(2025, 1, 1), 1, step=timedelta(days=1)))
        report = partitions.maintain_partitions(ahead=0, now=NOW, retention={"1m": 120, "1d": 0})
        # 120 days before 2026-06-15 is 2026-02-15: January is entirely older, February is not.
        assert [d["name"] for d in report.dropped] == ["candles_1m_p202601"]
        assert report.dropped[0]["retention_days"] == 120
        assert not exists("candles_1m_p202601")
        assert list(Candle.objects.filter(timeframe="1m").values_list("ts", flat=True)) == [utc(2026, 2, 1)]
        assert Candle.objects.filter(timeframe="1d").count() == 1

    def test_retention_is_read_per_timeframe_from_the_settings_and_off_by_default(self, settings):
        write("AAA", "1m", bars(utc(2020, 1, 1), 1))
        assert partitions.maintain_partitions(ahead=0, now=NOW).dropped == []
        settings.CANDLE_RETENTION = {"1m": 365}
        assert [d["name"] for d in partitions.maintain_partitions(ahead=0, now=NOW).dropped] == \
            ["candles_1m_p202001"]

    def test_retention_never_drops_a_default_partition(self):
        insert_foreign("1m", utc(2001, 1, 1))
        sql("DELETE FROM candles_1m_default")  # empty again, but old enough for any retention
        partitions.maintain_partitions(ahead=0, now=NOW, retention={"1m": 1})
        assert exists("candles_1m_default")


def unpartition_candles() -> None:
    """Put back the unpartitioned candles table the app had before migration 0007 (the test's
    transaction rolls it back)."""
    sql("DROP TABLE candles CASCADE")
    with connection.schema_editor() as editor:
        editor.create_model(Candle)


def load_unpartitioned() -> list[tuple]:
    """Bars of two months of 1m, a year boundary of 1d, a foreign timeframe and a duplicate."""
    columns = "symbol, timeframe, ts, open, high, low, close, volume, source, ingested_at, updated_at"
    sql(f"INSERT INTO candles ({columns}) SELECT 'AAA', '1m', g, 1, 2, 0.5, 1.5, 10, 'csv', now(), now() "
        "FROM generate_series('2024-01-31 23:00+00'::timestamptz, '2024-02-01 01:00+00', '1 minute') g")
    sql(f"INSERT INTO candles ({columns}) SELECT 'AAA', '1d', g, 1, 2, 0.5, 1.5, 10, 'csv', now(), now() "
        "FROM generate_series('2023-12-30+00'::timestamptz, '2024-01-02+00', '1 day') g")
    sql(f"INSERT INTO candles ({columns}) VALUES ('AAA', '30m', '2024-01-01+00', 1, 2, 0.5, 1.5, 10, '', now(), now()),"
        " ('AAA', '1m', '2024-01-31 23:00+00', 1, 2, 0.5, 1.5, 10, 'dup', now(), now())")
    return snapshot()


def snapshot() -> list[tuple]:
    return sql("SELECT id, symbol, timeframe, ts, close, source FROM candles ORDER BY id")


@postgres_only
class TestConversion:
    def test_it_converts_a_table_with_data_in_place(self):
        unpartition_candles()
        before = load_unpartitioned()
        result = partitions.convert_candles(batch_ids=50)
        assert result == {"state": "partitioned", "converted": True, "moved": len(before)}
        assert partitions.layout_state() == "partitioned"
        assert snapshot() == before  # same rows, same ids
        assert not exists(partitions.OLD_TABLE)
        assert rows_in("candles_1m_p202401") == 60 + 1  # 23:00 … 23:59 and the duplicate
        assert rows_in("candles_1m_p202402") == 61
        assert rows_in("candles_1d_p2023") == 2
        assert rows_in("candles_default") == 1  # the foreign timeframe: kept, in the default partition

    def test_new_rows_continue_the_id_sequence_after_conversion(self):
        unpartition_candles()
        before = load_unpartitioned()
        partitions.convert_candles()
        write("AAA", "1m", bars(utc(2024, 3, 1), 1))
        assert Candle.objects.get(ts=utc(2024, 3, 1)).id > max(row[0] for row in before)

    def test_an_interrupted_conversion_continues_where_it_stopped(self):
        unpartition_candles()
        before = load_unpartitioned()

        def crash(moved, total):
            raise KeyboardInterrupt("killed")

        with pytest.raises(KeyboardInterrupt):
            partitions.convert_candles(progress=crash, batch_ids=50)
        assert partitions.layout_state() == "converting"
        moved, left = rows_in("candles"), rows_in(partitions.OLD_TABLE)
        assert moved == 50 and moved + left == len(before)  # every row in exactly one table
        assert "candle_partitions --convert" in partitions.storage_status()["problem"]
        assert partitions.convert_candles(batch_ids=50)["moved"] == left
        assert snapshot() == before

    def test_converting_a_partitioned_table_does_nothing(self):
        assert partitions.convert_candles() == {"state": "partitioned", "converted": False, "moved": 0}

    def test_the_command_converts_with_convert(self):
        unpartition_candles()
        before = load_unpartitioned()
        out = StringIO()
        call_command("candle_partitions", "--convert", "--format", "json", stdout=out)
        assert json.loads(out.getvalue())["moved"] == len(before)
        assert snapshot() == before

    def test_maintenance_refuses_an_unconverted_table(self):
        unpartition_candles()
        with pytest.raises(CommandError, match="--convert") as raised:
            call_command("candle_partitions", stdout=StringIO())
        assert raised.value.returncode == 1


class TestCommand:
    def test_it_rejects_an_ahead_that_is_not_a_number_of_months(self):
        with pytest.raises(CommandError, match="--ahead") as raised:
            call_command("candle_partitions", "--ahead", "soon", stdout=StringIO())
        assert raised.value.returncode == 2

    def test_on_sqlite_it_says_partitioning_is_postgresql_only(self):
        if is_postgres():
            pytest.skip("the SQLite answer; PostgreSQL's is test_on_postgresql_it_reports_the_partitions")
        out = StringIO()
        call_command("candle_partitions", stdout=out)
        assert "PostgreSQL-only" in out.getvalue()
        out = StringIO()
        call_command("candle_partitions", "--format", "json", stdout=out)
        assert "PostgreSQL-only" in json.loads(out.getvalue())["skipped"]

    def test_on_sqlite_the_health_run_has_no_storage_problem(self):
        if is_postgres():
            pytest.skip("the SQLite answer; PostgreSQL's are TestDefaultPartition's")
        assert run_health_monitoring(scan_anomalies=False).storage == {
            "layout": "sqlite", "default_rows": {}, "problem": None}

    @postgres_only
    def test_on_postgresql_it_reports_the_partitions(self):
        insert_foreign("1h", utc(2011, 5, 1))
        out = StringIO()
        call_command("candle_partitions", "--ahead", "1", stdout=out)
        text = out.getvalue()
        assert "created candles_1h_p2011 (1 row(s) moved in from the default partition)" in text
        assert "candles_1m_default" in text
        out = StringIO()
        call_command("candle_partitions", "--format", "json", stdout=out)
        report = json.loads(out.getvalue())
        assert report["default_rows"] == {} and report["warning"] is None
        assert {p["name"] for p in report["partitions"]} >= {"candles_1h_p2011", "candles_default"}


class TestDailyTask:
    def test_the_scheduled_task_maintains_the_partitions_or_says_why_not(self):
        from integrity.tasks import candle_partitions_task

        result = candle_partitions_task()
        if is_postgres():
            assert result["warning"] is None and "created" in result
        else:
            assert result == {"skipped": "candle partitioning is PostgreSQL-only"}
