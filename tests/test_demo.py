"""``manage.py demo`` (what ``make demo`` runs after ``migrate``): every job over a synthetic watchlist."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command

from integrity.management.commands.demo import LEGACY_DUPLICATES, WATCHLIST
from integrity.models import (
    BackfillState,
    Candle,
    DataAnomaly,
    DuplicateRecordLog,
    HealthCheckRun,
    Instrument,
)

pytestmark = pytest.mark.django_db(transaction=True)

SERIES = sum(len(timeframes) for _, _, _, timeframes, _ in WATCHLIST)


def demo() -> str:
    out = StringIO()
    call_command("demo", stdout=out, stderr=StringIO())
    return out.getvalue()


class TestDemo:
    def test_it_backfills_the_watchlist_and_shows_the_backfill_summary(self):
        out = demo()
        assert Instrument.objects.count() == len(WATCHLIST)
        assert BackfillState.objects.filter(status="completed").count() == SERIES
        assert "symbol   tf  status     inserted" in out
        assert f"{SERIES} completed, 0 failed or refused" in out
        for state in BackfillState.objects.all():
            assert str(state.execution_id) in out
            assert Candle.objects.filter(symbol=state.symbol, timeframe=state.timeframe).count() \
                == state.records_inserted > 0

    def test_it_runs_the_cleanup_detection_and_health_jobs(self):
        out = demo()
        assert DuplicateRecordLog.objects.count() == LEGACY_DUPLICATES
        assert Candle.objects.values("symbol", "timeframe", "ts").distinct().count() == Candle.objects.count()
        assert DataAnomaly.objects.filter(anomaly_type="gap").exists()  # the injected gaps were found
        assert DataAnomaly.objects.filter(anomaly_type="invalid_ohlc").exists()  # rejected bad bars
        assert HealthCheckRun.objects.count() == 1
        assert "6. Health check" in out and "Open the admin" in out

    def test_a_second_run_is_incremental_and_changes_no_data(self):
        demo()
        candles = Candle.objects.count()
        out = demo()
        assert Candle.objects.count() == candles
        assert DuplicateRecordLog.objects.count() == LEGACY_DUPLICATES
        second = BackfillState.objects.order_by("-id")[:SERIES]
        assert [(s.status, s.records_inserted, s.records_updated) for s in second] == [("completed", 0, 0)] * SERIES
        assert "0 duplicate group(s)" in out
