"""Issue 12, section 1 acceptance: with the default schedules (backfill 02:00, health 00/06/12/18
UTC), a complete daily XNYS series and a complete 1h forex (24/5) series, replayed over a month of
health runs — weekdays, weekends, holidays, a half day, both DST changes — are never stale; when the
02:00 backfill fails, the 06:00 run reports them stale.

The schedule is simulated: at each backfill run the series get exactly the bars due by then (closed
on the calendar, plus the asset class's availability delay); each health run is the real job,
judged ``as_of`` that moment, its anomaly scan (and so the stale detector) included.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from croniter import croniter

from integrity.calendars import expected_bars, last_completed_bar
from integrity.conf import conf
from integrity.health.job import run_health_monitoring
from integrity.models import Candle, DataAnomaly
from integrity.staleness import availability_delay
from tests.helpers import add_instrument, use_default_thresholds, utc

pytestmark = pytest.mark.django_db

SERIES = (("AAPL", "equity", "XNYS", "1d"), ("EURUSD", "forex", "24/5", "1h"))

# Two months of 2026 between them: spring has Presidents' Day (02-16) and the US DST start (03-08);
# autumn has the DST end (11-01), Thanksgiving (11-26) and the 13:00 half day after it (11-27).
WINDOWS = {
    "spring": (utc(2026, 2, 9), utc(2026, 3, 16)),
    "autumn": (utc(2026, 10, 26), utc(2026, 12, 1)),
}


@pytest.fixture(autouse=True)
def default_schedule(settings):
    use_default_thresholds(settings)  # the default grace, availability delays and backfill schedule
    settings.SCHEDULE_HEALTH_CRON = conf.default("SCHEDULE_HEALTH_CRON")


def runs(cron: str, start: datetime, end: datetime) -> list[datetime]:
    times, it = [], croniter(cron, start - timedelta(microseconds=1))
    while (t := it.get_next(datetime)) < end:
        times.append(t)
    return times


def backfill(at: datetime, since: datetime) -> None:
    """What a successful scheduled run at ``at`` stores: every bar due by then, from ``since``."""
    rows = []
    for symbol, asset_class, calendar, timeframe in SERIES:
        newest = last_completed_bar(calendar, timeframe, at - availability_delay(asset_class))
        stored = Candle.objects.filter(symbol=symbol, timeframe=timeframe).order_by("-ts").first()
        start = stored.ts + timedelta(seconds=1) if stored else since
        rows += [Candle(symbol=symbol, timeframe=timeframe, ts=ts.to_pydatetime(), open=1, high=1, low=1,
                        close=1, volume=1)
                 for ts in expected_bars(calendar, timeframe, start, newest + timedelta(seconds=1))]
    Candle.objects.bulk_create(rows)


def replay(start: datetime, end: datetime, failed_backfills: frozenset = frozenset()):
    """Yield (time, health report) for every scheduled health run in [start, end)."""
    for symbol, asset_class, calendar, timeframe in SERIES:
        add_instrument(symbol, asset_class, calendar, timeframes=(timeframe,))
    history = start - timedelta(days=14)
    backfill(start - timedelta(days=1), since=history)  # complete up to the run before the window
    events = ([(t, "backfill") for t in runs(conf.SCHEDULE_BACKFILL_CRON, start, end)]
              + [(t, "health") for t in runs(conf.SCHEDULE_HEALTH_CRON, start, end)])
    for at, kind in sorted(events):
        if kind == "backfill":
            if at not in failed_backfills:
                backfill(at, since=history)
        else:
            yield at, run_health_monitoring(as_of=at)


def stale_at(report) -> set[tuple[str, str]]:
    return {(s["symbol"], s["timeframe"]) for s in report.stale_series.series}


@pytest.mark.parametrize("window", list(WINDOWS))
def test_complete_series_are_never_stale_over_a_month_of_scheduled_health_runs(window):
    judged = [(at, stale_at(report), report.status) for at, report in replay(*WINDOWS[window])]
    assert len(judged) >= 4 * 34
    assert [(at, stale) for at, stale, _ in judged if stale] == []
    assert not DataAnomaly.objects.filter(anomaly_type="stale").exists()  # the detector agrees
    assert {status for _, _, status in judged} == {"healthy"}


def test_when_the_0200_backfill_fails_the_0600_run_reports_the_series_stale():
    failed = utc(2026, 11, 3, 2)  # a Tuesday: Monday's session and the forex night are due then
    reports = dict(replay(utc(2026, 11, 2), utc(2026, 11, 3, 7), failed_backfills=frozenset({failed})))
    assert stale_at(reports[utc(2026, 11, 3, 0)]) == set()
    assert stale_at(reports[utc(2026, 11, 3, 6)]) == {("AAPL", "1d"), ("EURUSD", "1h")}


def test_the_stale_report_says_what_the_judgement_used():
    failed = utc(2026, 11, 3, 2)
    reports = dict(replay(utc(2026, 11, 2), utc(2026, 11, 3, 7), failed_backfills=frozenset({failed})))
    daily = next(s for s in reports[utc(2026, 11, 3, 6)].stale_series.series if s["timeframe"] == "1d")
    assert (daily["last_bar"], daily["expected_bar"], daily["due_at"], daily["hours_stale"]) == (
        "2026-10-30T00:00:00+00:00", "2026-11-02T00:00:00+00:00", "2026-11-03T02:00:00+00:00", 4.0)


def test_the_stale_detector_records_the_same_series_at_the_0600_run():
    failed = utc(2026, 11, 3, 2)
    list(replay(utc(2026, 11, 2), utc(2026, 11, 3, 7), failed_backfills=frozenset({failed})))
    found = DataAnomaly.objects.filter(anomaly_type="stale", resolution_status="open")
    assert {(a.symbol, a.timeframe) for a in found} == {("AAPL", "1d"), ("EURUSD", "1h")}
    daily = found.get(symbol="AAPL")
    assert daily.details["due_at"] == "2026-11-03T02:00:00+00:00"
    assert daily.details["hours_stale"] == 4.0


def test_the_next_successful_backfill_makes_them_fresh_again():
    failed = utc(2026, 11, 3, 2)
    reports = dict(replay(utc(2026, 11, 2), utc(2026, 11, 4, 7), failed_backfills=frozenset({failed})))
    assert stale_at(reports[utc(2026, 11, 3, 18)]) == {("AAPL", "1d"), ("EURUSD", "1h")}
    assert stale_at(reports[utc(2026, 11, 4, 6)]) == set()
