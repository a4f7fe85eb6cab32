"""The candle writer: exact values, idempotent re-writes, revisions counted apart, never a duplicate."""

from __future__ import annotations

import re

import pandas as pd
import pytest
from django.db import connection, transaction
from django.db.models import Count

from integrity.models import Candle
from integrity.writer import WriteResult, write_bars
from tests.helpers import stored_bars

pytestmark = pytest.mark.django_db(transaction=True)

SYMBOL, TIMEFRAME = "WRT-USD", "1h"


def bars(start: str, count: int, price: float = 100.0) -> pd.DataFrame:
    ts = pd.date_range(start, periods=count, freq="h", tz="UTC")
    close = [price + i * 0.1 for i in range(count)]
    return pd.DataFrame(
        {
            "ts": ts,
            "open": close,
            "high": [c + 0.5 for c in close],
            "low": [c - 0.5 for c in close],
            "close": close,
            "volume": [float(10 * i) for i in range(count)],
        }
    )


def write(frame: pd.DataFrame, source: str = "synthetic") -> WriteResult:
    with transaction.atomic():
        return write_bars(SYMBOL, TIMEFRAME, frame, source=source)


class TestNewRange:
    def test_it_inserts_every_bar_with_exact_values(self):
        frame = bars("2024-01-01", 50)
        # Values whose text forms are awkward: no rounding may happen on the way in.
        frame.loc[0, ["open", "close"]] = [0.1 + 0.2, 1 / 3]
        frame.loc[1, ["low", "volume"]] = [1e-300, 1.7976931348623157e308]
        frame.loc[1, "high"] = 1.7976931348623157e308

        assert write(frame) == WriteResult(inserted=50, updated=0)

        stored = stored_bars(SYMBOL, TIMEFRAME)
        pd.testing.assert_frame_equal(stored, frame, check_exact=True, check_dtype=False)

    def test_it_stamps_source_and_ingestion_time(self):
        write(bars("2024-01-01", 3), source="binance")

        candle = Candle.objects.get(symbol=SYMBOL, timeframe=TIMEFRAME, ts="2024-01-01T00:00Z")
        assert candle.source == "binance"
        assert candle.ingested_at is not None and candle.ingested_at == candle.updated_at

    def test_an_empty_source_is_stored_as_empty(self):
        write(bars("2024-01-01", 3), source="")

        assert set(Candle.objects.values_list("source", flat=True)) == {""}


class TestRewrites:
    def test_writing_the_same_bars_again_inserts_and_updates_nothing(self):
        frame = bars("2024-01-01", 20)
        write(frame)
        before = dict(Candle.objects.values_list("ts", "updated_at"))

        assert write(frame) == WriteResult(inserted=0, updated=0)
        assert dict(Candle.objects.values_list("ts", "updated_at")) == before

    def test_a_revised_bar_is_updated_and_counted_apart_from_inserts(self):
        write(bars("2024-01-01", 10))
        revised = bars("2024-01-01", 12)
        revised.loc[4, ["close", "high"]] = [250.0, 260.0]

        assert write(revised) == WriteResult(inserted=2, updated=1)

        stored = stored_bars(SYMBOL, TIMEFRAME)
        pd.testing.assert_frame_equal(stored, revised, check_exact=True, check_dtype=False)

    def test_a_batch_overlapping_stored_bars_inserts_only_the_new_ones(self):
        write(bars("2024-01-01", 10))

        result = write(bars("2024-01-01", 17).iloc[7:])

        assert result == WriteResult(inserted=7, updated=0)
        assert Candle.objects.count() == 17

    def test_it_never_creates_a_duplicate_bar(self):
        write(bars("2024-01-01", 10))
        write(bars("2024-01-01 05:00", 10, price=100.5))
        write(bars("2024-01-01", 30))

        most = Candle.objects.values("ts").annotate(n=Count("id")).order_by("-n").first()
        assert most["n"] == 1
        assert Candle.objects.count() == 30

    def test_bars_of_another_series_are_left_alone(self):
        with transaction.atomic():
            write_bars("OTHER", TIMEFRAME, bars("2024-01-01", 5, price=7.0), source="x")

        assert write(bars("2024-01-01", 5)) == WriteResult(inserted=5, updated=0)
        assert set(Candle.objects.filter(symbol="OTHER").values_list("close", flat=True)) == {
            7.0 + i * 0.1 for i in range(5)
        }


def test_it_refuses_to_write_outside_a_transaction():
    with pytest.raises(RuntimeError, match="transaction"):
        write_bars(SYMBOL, TIMEFRAME, bars("2024-01-01", 2))
    assert Candle.objects.count() == 0


def test_a_failed_batch_leaves_nothing_behind():
    with pytest.raises(ZeroDivisionError), transaction.atomic():
        write_bars(SYMBOL, TIMEFRAME, bars("2024-01-01", 5))
        1 / 0  # noqa: B018 — the batch's transaction fails after the write
    assert Candle.objects.count() == 0


# --- the merge is bounded to the batch -------------------------------------------------------------
# Without a bound the SQLite merge walked the whole stored series for every staged row (a 133k-bar
# backfill took 922 s against 1 s on PostgreSQL). These tests read the plans of the statements the
# writer really runs, so they say "bounded" without timing anything.

STAGING_TABLE = "integrity_incoming_bars"


class CapturedMerges:
    """Records the writer's statements and, for each merge statement, the database's plan of it."""

    def __init__(self):
        self.statements: list[str] = []
        self.plans: list[list[str]] = []

    def __call__(self, execute, sql, params, many, context):
        self.statements.append(sql)
        if not many and STAGING_TABLE in sql and ("UPDATE candles" in sql or "INSERT INTO candles" in sql):
            self.plans.append(self.explain(context["cursor"].cursor, sql, params))
        return execute(sql, params, many, context)

    @staticmethod
    def explain(raw_cursor, sql, params) -> list[str]:
        if connection.vendor == "postgresql":
            raw_cursor.execute("EXPLAIN " + sql, params)
            return [row[0] for row in raw_cursor.fetchall()]
        raw_cursor.execute("EXPLAIN QUERY PLAN " + sql, params)
        return [row[-1] for row in raw_cursor.fetchall()]


def write_capturing(frame: pd.DataFrame) -> tuple[WriteResult, CapturedMerges]:
    captured = CapturedMerges()
    with connection.execute_wrapper(captured):
        result = write(frame)
    return result, captured


def analyze_candles() -> None:
    """Planner statistics, as a long-running deployment has them (PostgreSQL autovacuum, SQLite optimize)."""
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE candles")


def assert_bounded_sqlite(plan: list[str]) -> None:
    candles = [line for line in plan if line.split()[1:2] in (["candles"], ["c"])]  # "SCAN c ...", "SEARCH candles ..."
    assert candles, plan
    for line in candles:
        assert line.startswith("SEARCH") and "candles_symbol_tf_ts_idx" in line and re.search(r"\bts[<>=]", line), \
            f"candles must be reached through its index within the batch's ts range: {plan}"
    by_ts = any("ts=?" in line for line in candles)
    staged_by_key = any(line.startswith("SEARCH i ") for line in plan)
    assert by_ts or staged_by_key, f"each stored row must find its staged bar by key (or vice versa): {plan}"


def assert_bounded_postgresql(plan: list[str]) -> None:
    text = "\n".join(plan)
    assert "Seq Scan on candles" not in text, text
    # The table's index, or on the partitioned store (integrity.partitions) its copy on the partition.
    assert re.search(r"candles\w*_symbol_(tf|timeframe)_ts_idx", text), text
    assert "ts >=" in text and "ts <=" in text, f"the index search must carry the batch's ts range: {text}"


class TestBoundedMerge:
    @pytest.mark.parametrize("statistics", [False, True], ids=["fresh", "analyzed"])
    def test_the_merge_reaches_stored_bars_only_through_the_index_within_the_batch_range(self, statistics):
        series = bars("2024-01-01", 5000)
        write(series.iloc[:3000])  # a long stored series before the batch
        write(series.iloc[4000:])  # ... and after it
        if statistics:
            analyze_candles()
        overlapping = series.iloc[2900:3100].reset_index(drop=True)  # 100 stored bars, 100 new ones
        overlapping.loc[5, "close"] = overlapping.loc[5, "close"] + 1.0

        result, captured = write_capturing(overlapping)

        assert result == WriteResult(inserted=100, updated=1)
        assert captured.plans, captured.statements
        for plan in captured.plans:
            if connection.vendor == "postgresql":
                assert_bounded_postgresql(plan)
            else:
                assert_bounded_sqlite(plan)

    def test_a_batch_into_an_empty_range_is_inserted_without_staging_or_merging(self):
        write(bars("2024-01-01", 500))

        result, captured = write_capturing(bars("2024-02-01", 100))

        assert result == WriteResult(inserted=100, updated=0)
        assert not captured.plans
        assert not any(STAGING_TABLE in sql for sql in captured.statements)

    def test_a_batch_filling_a_hole_between_stored_bars_inserts_only_the_missing_bars(self):
        full = bars("2024-01-01", 100)
        write(pd.concat([full.iloc[:40], full.iloc[60:]], ignore_index=True))

        assert write(full.iloc[30:70].reset_index(drop=True)) == WriteResult(inserted=20, updated=0)
        pd.testing.assert_frame_equal(stored_bars(SYMBOL, TIMEFRAME), full, check_exact=True, check_dtype=False)

    def test_a_revision_in_the_middle_of_a_long_series_touches_only_its_own_bars(self):
        write(bars("2024-01-01", 1000))
        before = dict(Candle.objects.values_list("ts", "updated_at"))
        revised = bars("2024-01-01", 1000).iloc[500:510].reset_index(drop=True)
        revised.loc[3, "volume"] = 1e9

        assert write(revised) == WriteResult(inserted=0, updated=1)
        after = dict(Candle.objects.values_list("ts", "updated_at"))
        changed = [ts for ts in before if before[ts] != after[ts]]
        assert changed == [revised.loc[3, "ts"].to_pydatetime()]
