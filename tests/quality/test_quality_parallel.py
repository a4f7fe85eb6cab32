"""A big detection sweep may split its window pass by series over several connections: same findings."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import transaction

from integrity.models import Candle
from integrity.quality import window
from integrity.quality.anomalies import detect_data_anomalies
from tests.helpers import add_instrument, utc

pytestmark = pytest.mark.usefixtures("default_thresholds")

START = utc(2024, 3, 4)
NOW = utc(2024, 3, 6)


def load_series(symbols: list[str]) -> None:
    """1h crypto series of 40 bars, each with a 3-bar hole and a one-bar spike that reverts."""
    rows = []
    for n, symbol in enumerate(symbols):
        add_instrument(symbol=symbol)
        for i in range(40):
            if 10 <= i < 13:
                continue
            close = 100.0 + n + (60.0 if i == 25 else 0.0)
            rows.append(Candle(symbol=symbol, timeframe="1h", ts=START + timedelta(hours=i), open=close,
                               high=close + 1, low=close - 1, close=close, volume=5.0))
    Candle.objects.bulk_create(rows)


def found(result) -> list[tuple]:
    return sorted((f.symbol, f.anomaly_type, f.period_start, f.period_end, f.affected_rows)
                  for f in result.findings)


@pytest.mark.postgres_only  # the split needs several PostgreSQL connections seeing committed rows
@pytest.mark.django_db(transaction=True)
def test_a_sweep_split_over_connections_finds_exactly_what_one_connection_finds(settings, monkeypatch):
    load_series([f"PAR{i}-USD" for i in range(5)])
    settings.DETECTION_PARALLEL_WORKERS = 1
    serial = found(detect_data_anomalies(full=True, dry_run=True, now=NOW))

    calls = []
    split = window._window_pg_parallel
    monkeypatch.setattr(window, "_window_pg_parallel", lambda *a, **k: calls.append(a[2]) or split(*a, **k))
    settings.DETECTION_PARALLEL_WORKERS = 3
    settings.DETECTION_PARALLEL_MIN_ROWS = 0
    parallel = found(detect_data_anomalies(full=True, dry_run=True, now=NOW))

    assert calls == [3]
    assert parallel == serial
    assert {t for _s, t, *_ in serial} == {"gap", "outlier"} and len(serial) == 10


class TestWhenTheSweepIsSplit:
    @pytest.fixture(autouse=True)
    def parallel_settings(self, settings):
        settings.DETECTION_PARALLEL_WORKERS = 4
        settings.DETECTION_PARALLEL_MIN_ROWS = 1000

    SPECS = [object()] * 10

    @pytest.mark.django_db(transaction=True)
    def test_a_big_pass_outside_a_transaction_uses_the_configured_connections(self):
        assert window._parallel_workers(self.SPECS, expected_rows=None) == 4
        assert window._parallel_workers(self.SPECS[:2], expected_rows=5000) == 2

    @pytest.mark.django_db(transaction=True)
    def test_a_small_pass_uses_one_connection(self):
        assert window._parallel_workers(self.SPECS, expected_rows=999) == 1

    @pytest.mark.django_db(transaction=True)
    def test_a_single_series_uses_one_connection(self):
        assert window._parallel_workers(self.SPECS[:1], expected_rows=None) == 1

    @pytest.mark.django_db(transaction=True)
    def test_inside_a_transaction_it_uses_one_connection(self):
        # Other connections could not see this transaction's rows.
        with transaction.atomic():
            assert window._parallel_workers(self.SPECS, expected_rows=None) == 1

    @pytest.mark.django_db(transaction=True)
    def test_one_worker_turns_it_off(self, settings):
        settings.DETECTION_PARALLEL_WORKERS = 1
        assert window._parallel_workers(self.SPECS, expected_rows=None) == 1
