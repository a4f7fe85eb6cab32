"""Issue #15, "Done when": a Binance-format series (local server) reconciled against a
Coinbase-format reference (local server, through ccxt) with 3 price errors under the outlier
threshold, 2 missing bars, a ×2 range and a one-hour shift planted finds exactly those — 3 + 2 + 1 + 1
findings — and a clean pair finds none."""

from __future__ import annotations

from collections import Counter

import pytest

from integrity.conf import conf
from integrity.models import AnomalyType, DataAnomaly
from integrity.reconcile import reconcile
from tests.helpers import utc
from tests.reconcile.pair import END, START, Plant, stored_pair

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("local_binance", "local_coinbase")]

PLANTED = Plant(price={10: 1.004, 30: 0.996, 50: 1.003}, missing_stored={20}, missing_reference={40},
                ratio=(range(60, 66), 2.0), shift=range(75, 81))


def test_it_finds_exactly_the_planted_errors(httpserver):
    stored_pair(httpserver, PLANTED)
    assert max(abs(f - 1) for f in PLANTED.price.values()) < conf.OUTLIER_MOVE_THRESHOLD

    report = reconcile("BTC-USD", "1h", start=START, end=END)

    [series] = report.series
    assert series.status == "ok", series.error
    kinds = Counter(f.details["kind"] for f in series.findings)
    assert kinds == {"price": 3, "missing_stored": 1, "missing_reference": 1, "ratio": 1, "time_shift": 1}
    by_kind = {kind: [f for f in series.findings if f.details["kind"] == kind] for kind in kinds}
    assert sorted(f.period_start for f in by_kind["price"]) == [utc(2024, 1, 1, 10), utc(2024, 1, 2, 6),
                                                                 utc(2024, 1, 3, 2)]
    assert by_kind["missing_stored"][0].period_start == utc(2024, 1, 1, 20)
    assert by_kind["missing_reference"][0].period_start == utc(2024, 1, 2, 16)
    [ratio] = by_kind["ratio"]
    assert (ratio.period_start, ratio.period_end, ratio.details["ratio"]) == (
        utc(2024, 1, 3, 12), utc(2024, 1, 3, 17), 2.0)
    [shift] = by_kind["time_shift"]
    assert (shift.period_start, shift.period_end, shift.details["shift_hours"]) == (
        utc(2024, 1, 4, 3), utc(2024, 1, 4, 8), 1)
    assert DataAnomaly.objects.filter(anomaly_type=AnomalyType.SOURCE_MISMATCH).count() == 7


def test_a_clean_pair_finds_nothing(httpserver):
    stored_pair(httpserver)

    report = reconcile("BTC-USD", "1h", start=START, end=END)

    [series] = report.series
    assert series.status == "ok", series.error
    assert series.reference_bars == 96 and series.findings == []
    assert not DataAnomaly.objects.filter(anomaly_type=AnomalyType.SOURCE_MISMATCH).exists()
