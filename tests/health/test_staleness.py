"""Staleness, the one definition (``integrity.staleness``): when a bar is due (calendar close,
availability delay, backfill schedule) and when a missing one makes its series stale; replayed
with ``--as-of``."""

from __future__ import annotations

import io
import json
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command

from integrity.closures import add_preset
from integrity.health.staleness import assess_staleness
from integrity.models import Candle, DataAnomaly, HealthCheckRun, Instrument, SeriesStats
from integrity.quality.anomalies import detect_data_anomalies
from integrity.schedules import run_at_or_after, run_at_or_before
from integrity.staleness import Judge, SeriesState, bar_close
from tests.helpers import add_instrument, utc

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("default_thresholds")]

# The week of 2026-11-02 (after the DST change: the NYSE closes 21:00 UTC).
FRIDAY, MONDAY = utc(2026, 10, 30), utc(2026, 11, 2)



@pytest.fixture
def aapl_to_friday():
    """A daily equity whose newest stored session is Friday 10-30 (Monday's is not fetched yet)."""
    add_instrument("AAPL", "equity", "XNYS", timeframes=("1d",))
    Candle.objects.bulk_create([Candle(symbol="AAPL", timeframe="1d", ts=FRIDAY - timedelta(days=d), open=1, high=1,
                                       low=1, close=1, volume=1) for d in (0, 1, 2, 3, 4)])


def stale_symbols(as_of) -> list[str]:
    return [s.symbol for s in assess_staleness(as_of) if s.stale]


class TestWhenABarIsDue:
    @pytest.mark.parametrize("as_of", [utc(2026, 11, 2, 21, 19), utc(2026, 11, 3, 0)])
    def test_a_daily_series_is_not_late_between_the_close_and_the_next_backfill(self, aapl_to_friday, as_of):
        assert stale_symbols(as_of) == []

    def test_it_is_late_past_the_grace_after_the_backfill_that_should_have_fetched_it(self, aapl_to_friday):
        assert stale_symbols(utc(2026, 11, 3, 4)) == []
        assert stale_symbols(utc(2026, 11, 3, 4, 1)) == ["AAPL"]

    def test_an_instruments_own_availability_delay_wins_over_its_asset_classs(self, aapl_to_friday):
        # 21:00 close + 301 min is after Tuesday's 02:00 run: due at Wednesday's.
        Instrument.objects.filter(symbol="AAPL").update(availability_delay_minutes=301)
        assert stale_symbols(utc(2026, 11, 3, 6)) == []
        assert stale_symbols(utc(2026, 11, 4, 6)) == ["AAPL"]

    def test_the_asset_class_delay_comes_from_the_setting(self, aapl_to_friday, settings):
        settings.STALE_AVAILABILITY_DELAY_MINUTES = {"equity": 301}
        assert stale_symbols(utc(2026, 11, 3, 6)) == []

    def test_the_backfill_schedule_comes_from_the_setting(self, aapl_to_friday, settings):
        settings.SCHEDULE_BACKFILL_CRON = "30 22 * * 1-5"  # right after the close, weekdays
        assert stale_symbols(utc(2026, 11, 3, 0, 30)) == []
        assert stale_symbols(utc(2026, 11, 3, 0, 31)) == ["AAPL"]

    def test_a_half_day_closes_at_13_00_new_york(self):
        assert bar_close("XNYS", "1d", utc(2026, 11, 27)) == utc(2026, 11, 27, 18)

    def test_a_forex_day_closes_at_17_00_new_york(self):
        assert bar_close("24/5", "1d", MONDAY) == utc(2026, 11, 2, 22)

    def test_a_scheduled_run_at_the_very_moment_counts_as_run(self):
        assert run_at_or_before("0 2 * * *", utc(2026, 11, 3, 2)) == utc(2026, 11, 3, 2)
        assert run_at_or_after("0 2 * * *", utc(2026, 11, 3, 2)) == utc(2026, 11, 3, 2)


class TestVerdict:
    def test_a_series_never_loaded_is_stale(self):
        verdict = Judge(utc(2026, 11, 3, 6)).judge(SeriesState("24/7", "1h", "clock", "crypto", None, None))
        assert verdict.stale and verdict.due_at is None

    def test_it_names_the_oldest_missing_bar_and_counts_the_missing_ones(self):
        verdict = Judge(utc(2026, 11, 3, 6)).judge(
            SeriesState("24/7", "1h", "clock", "crypto", None, utc(2026, 11, 2, 22)))
        assert (verdict.first_missing, verdict.expected_bar, verdict.missing_bars) == (
            utc(2026, 11, 2, 23), utc(2026, 11, 3, 0), 2)
        assert verdict.due_at == utc(2026, 11, 3, 2) and verdict.lag_hours == 4.0


class TestReplay:
    def run(self, *args) -> tuple[int, dict]:
        out = io.StringIO()
        try:
            call_command("health_check", "--format", "json", "--skip-scan", *args, stdout=out)
            code = 0
        except CommandError as exc:
            code = exc.returncode
        return code, json.loads(out.getvalue()) if out.getvalue() else {}

    def test_health_check_as_of_replays_the_judgement_of_that_moment(self, aapl_to_friday):
        code, report = self.run("--as-of", "2026-11-03T06:00:00Z")
        assert code == 1 and report["as_of"] == "2026-11-03T06:00:00+00:00"
        assert [s["symbol"] for s in report["stale_series"]["series"]] == ["AAPL"]

    def test_health_check_as_of_an_earlier_moment_finds_it_fresh(self, aapl_to_friday):
        code, report = self.run("--as-of", "2026-11-03T00:00:00Z")
        assert code == 0 and report["stale_series"]["count"] == 0

    def test_health_check_as_of_is_read_only(self, aapl_to_friday):
        self.run("--as-of", "2026-11-03T06:00:00Z")  # AAPL stale then: a real run would record and alert
        assert not HealthCheckRun.objects.exists() and not DataAnomaly.objects.exists()
        assert not SeriesStats.objects.filter(stale_alert_sent_at__isnull=False).exists()

    def test_detect_anomalies_as_of_records_nothing(self, aapl_to_friday):
        out = io.StringIO()
        call_command("detect_anomalies", "--types", "stale", "--as-of", "2026-11-03T06:00:00Z", stdout=out)
        assert "1 finding(s) would record" in out.getvalue()  # AAPL was stale then
        assert not DataAnomaly.objects.exists()

    def test_health_check_refuses_an_as_of_in_the_future(self):
        with pytest.raises(CommandError, match="in the future") as caught:
            call_command("health_check", "--as-of", "2999-01-01", stdout=io.StringIO())
        assert caught.value.returncode == 2


class TestClosures:
    """A recorded closure removes expectations from staleness as it does from the gap detector."""

    @pytest.fixture
    def eurusd_to_christmas_eve(self):
        # A forex 1h series complete up to the last hour before the forex Christmas day (22:00 UTC).
        add_instrument("EURUSD", "forex", "24/5", timeframes=("1h",))
        last = utc(2026, 12, 24, 21)
        Candle.objects.bulk_create([Candle(symbol="EURUSD", timeframe="1h", ts=last - timedelta(hours=h), open=1,
                                           high=1, low=1, close=1, volume=1) for h in range(5)])

    def test_a_forex_series_silent_on_christmas_is_stale_without_a_closure(self, eurusd_to_christmas_eve):
        assert stale_symbols(utc(2026, 12, 26, 6)) == ["EURUSD"]

    def test_the_forex_holidays_preset_makes_it_fresh(self, eurusd_to_christmas_eve):
        add_preset("forex-holidays", [2026])
        assert stale_symbols(utc(2026, 12, 26, 6)) == []

    def test_the_stale_detector_honours_the_closure_too(self, eurusd_to_christmas_eve):
        add_preset("forex-holidays", [2026])
        found = detect_data_anomalies(now=utc(2026, 12, 26, 6), types=["stale"], dry_run=True)
        assert found.findings == []

    def test_the_stale_detector_finds_it_stale_without_the_closure(self, eurusd_to_christmas_eve):
        found = detect_data_anomalies(now=utc(2026, 12, 26, 6), types=["stale"], dry_run=True)
        assert [f.symbol for f in found.findings] == ["EURUSD"]
