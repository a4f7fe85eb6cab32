"""The candle writer: exact values, idempotent re-writes, revisions counted apart, never a duplicate."""

from __future__ import annotations

import pandas as pd
import pytest
from django.db import transaction
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
