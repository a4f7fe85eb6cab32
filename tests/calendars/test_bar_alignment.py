"""Session-anchored bars (``bar_alignment="session"``): what the calendar expects, and what the
detectors make of a series stamped that way.

NYSE hourly bars from Interactive Brokers or Yahoo open at 09:30, 10:30 … 15:30 New York time (the
last one 30 minutes long); on a 13:00 half day at 09:30 … 12:30. XHKG restarts the grid after its
lunch break: 09:30, 10:30, 11:30 (30 minutes), 13:00, 14:00, 15:00. Expected times below are worked
out from the exchanges' published hours, not read back from the code.
"""

from __future__ import annotations

import io

import pandas as pd
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from integrity.calendars import (
    bar_opens_from_closes,
    count_expected_bars,
    expected_bars,
    is_expected_bar,
    last_completed_bar,
    previous_expected_bar,
)
from integrity.models import BackfillState, Candle, Instrument
from integrity.providers.synthetic import synthetic_bars
from integrity.quality.detectors import run_detectors
from integrity.quality.findings import SeriesContext
from integrity.quality.thresholds import resolve_thresholds, series_contexts
from integrity.validation import validate_bars
from tests.helpers import utc

NY = "America/New_York"


def local(index: pd.DatetimeIndex, tz: str = NY) -> list[str]:
    return [t.strftime("%m-%d %H:%M") for t in index.tz_convert(tz)]


class TestExpectedSessionBars:
    def test_nyse_hourly_bars_open_at_the_half_hour_of_the_session(self):
        bars = expected_bars("XNYS", "1h", utc(2024, 11, 26), utc(2024, 11, 27), "session")
        assert local(bars) == [f"11-26 {h:02d}:30" for h in range(9, 16)]

    def test_the_half_day_ends_with_the_bar_that_opens_at_12_30(self):
        bars = expected_bars("XNYS", "1h", utc(2024, 11, 29), utc(2024, 11, 30), "session")
        assert local(bars) == ["11-29 09:30", "11-29 10:30", "11-29 11:30", "11-29 12:30"]

    def test_the_session_grid_follows_new_york_across_the_dst_change(self):
        # Friday 11-01 opens 13:30 UTC (EDT), Monday 11-04 14:30 UTC (EST).
        bars = expected_bars("XNYS", "1h", utc(2024, 11, 1), utc(2024, 11, 5), "session")
        assert bars[0] == pd.Timestamp("2024-11-01 13:30", tz="UTC")
        assert bars[7] == pd.Timestamp("2024-11-04 14:30", tz="UTC")
        assert len(bars) == 14

    def test_hong_kong_restarts_the_grid_after_the_lunch_break(self):
        bars = expected_bars("XHKG", "1h", utc(2024, 11, 27), utc(2024, 11, 28), "session")
        assert local(bars, "Asia/Hong_Kong") == ["11-27 09:30", "11-27 10:30", "11-27 11:30",
                                                 "11-27 13:00", "11-27 14:00", "11-27 15:00"]

    def test_clock_alignment_is_still_the_default(self):
        bars = expected_bars("XNYS", "1h", utc(2024, 11, 26), utc(2024, 11, 27))
        assert local(bars) == [f"11-26 {h:02d}:00" for h in range(9, 16)]

    def test_minute_bars_are_the_same_either_way_on_a_half_hour_open(self):
        clock = expected_bars("XNYS", "5m", utc(2024, 11, 25), utc(2024, 11, 30))
        session = expected_bars("XNYS", "5m", utc(2024, 11, 25), utc(2024, 11, 30), "session")
        assert clock.equals(session)

    def test_daily_and_crypto_bars_do_not_depend_on_alignment(self):
        for calendar, timeframe in (("XNYS", "1d"), ("24/7", "1h"), ("24/5", "1d")):
            clock = expected_bars(calendar, timeframe, utc(2024, 11, 1), utc(2024, 12, 1))
            session = expected_bars(calendar, timeframe, utc(2024, 11, 1), utc(2024, 12, 1), "session")
            assert clock.equals(session), (calendar, timeframe)

    def test_counting_agrees_with_listing(self):
        bars = expected_bars("XNYS", "1h", utc(2024, 11, 1), utc(2024, 12, 1), "session")
        assert count_expected_bars("XNYS", "1h", utc(2024, 11, 1), utc(2024, 12, 1), "session") == len(bars)

    def test_an_unknown_alignment_is_refused_by_name(self):
        with pytest.raises(ValueError, match="unknown bar alignment 'open'"):
            expected_bars("XNYS", "1h", utc(2024, 11, 1), utc(2024, 11, 2), "open")


class TestSessionBarChecks:
    def test_session_bars_are_expected_only_on_the_session_grid(self):
        session = expected_bars("XNYS", "1h", utc(2024, 11, 25), utc(2024, 11, 30), "session")
        clock = expected_bars("XNYS", "1h", utc(2024, 11, 25), utc(2024, 11, 30))
        assert is_expected_bar("XNYS", "1h", session, "session").all()
        assert not is_expected_bar("XNYS", "1h", clock, "session").any()
        assert not is_expected_bar("XNYS", "1h", session).any()

    def test_a_bar_in_the_lunch_break_is_not_expected(self):
        lunch = pd.DatetimeIndex([pd.Timestamp("2024-11-27 12:00", tz="Asia/Hong_Kong")])
        assert not is_expected_bar("XHKG", "1h", lunch, "session").any()

    def test_the_shortened_last_bar_is_complete_at_the_close(self):
        # 2024-11-29 closes 13:00 EST = 18:00 UTC; its last bar opens 12:30 EST = 17:30 UTC.
        assert last_completed_bar("XNYS", "1h", utc(2024, 11, 29, 18), "session") == utc(2024, 11, 29, 17, 30)
        assert last_completed_bar("XNYS", "1h", utc(2024, 11, 29, 17, 59), "session") == utc(2024, 11, 29, 16, 30)

    def test_the_previous_session_bar_skips_the_night(self):
        assert previous_expected_bar("XNYS", "1h", utc(2024, 11, 26, 14, 30), "session") == utc(2024, 11, 25, 20, 30)

    def test_validation_takes_session_bars_on_whole_minutes(self):
        frame = synthetic_bars("AAPL", "1h", "XNYS", utc(2024, 11, 25), utc(2024, 11, 26), "session")
        assert len(validate_bars(frame, "1h", alignment="session").valid) == 7
        assert validate_bars(frame, "1h").invalid["reasons"].eq("misaligned_ts").all()
        frame.loc[0, "ts"] += pd.Timedelta(seconds=30)
        assert list(validate_bars(frame, "1h", alignment="session").invalid["reasons"]) == ["misaligned_ts"]


# --- the detectors on a session-anchored series ------------------------------------------------


def session_ctx(symbol: str, calendar: str = "XNYS", timeframe: str = "1h") -> SeriesContext:
    return SeriesContext(symbol=symbol, timeframe=timeframe, calendar=calendar, asset_class="equity",
                         thresholds=resolve_thresholds("equity", {}), alignment="session")


def store(symbol: str, frame: pd.DataFrame, timeframe: str = "1h") -> None:
    Candle.objects.bulk_create(
        [Candle(symbol=symbol, timeframe=timeframe, ts=r.ts.to_pydatetime(), open=r.open, high=r.high,
                low=r.low, close=r.close, volume=r.volume, source="test")
         for r in frame.itertuples(index=False)],
    )


@pytest.mark.django_db
@pytest.mark.usefixtures("default_thresholds")
class TestDetectorsOnSessionBars:
    def test_a_complete_session_anchored_series_with_a_half_day_gives_no_finding(self):
        store("AAPL", synthetic_bars("AAPL", "1h", "XNYS", utc(2024, 11, 25), utc(2024, 12, 3), "session"))
        assert run_detectors([session_ctx("AAPL")], now=utc(2024, 12, 2, 21, 5)) == []

    def test_hong_kong_with_its_lunch_break_gives_no_finding(self):
        store("0700.HK", synthetic_bars("0700.HK", "1h", "XHKG", utc(2024, 11, 25), utc(2024, 11, 30), "session"))
        assert run_detectors([session_ctx("0700.HK", "XHKG")], now=utc(2024, 11, 29, 8, 5)) == []

    def test_the_same_bars_judged_on_the_clock_grid_are_off_calendar(self):
        store("AAPL", synthetic_bars("AAPL", "1h", "XNYS", utc(2024, 11, 25), utc(2024, 11, 27), "session"))
        clock = SeriesContext(symbol="AAPL", timeframe="1h", calendar="XNYS", asset_class="equity",
                              thresholds=resolve_thresholds("equity", {}))
        types = {f.anomaly_type for f in run_detectors([clock], now=utc(2024, 11, 26, 21, 5))}
        assert "off_calendar" in types

    def test_a_deleted_session_bar_is_one_missing_bar(self):
        store("AAPL", synthetic_bars("AAPL", "1h", "XNYS", utc(2024, 11, 25), utc(2024, 11, 28), "session"))
        Candle.objects.filter(symbol="AAPL", ts=utc(2024, 11, 26, 16, 30)).delete()
        findings = run_detectors([session_ctx("AAPL")], now=utc(2024, 11, 27, 21, 5))
        assert [(f.anomaly_type, f.period_start, f.affected_rows) for f in findings] == [
            ("gap", utc(2024, 11, 26, 16, 30), 1)]

    def test_a_clock_grid_bar_inside_a_session_series_is_off_calendar(self):
        store("AAPL", synthetic_bars("AAPL", "1h", "XNYS", utc(2024, 11, 25), utc(2024, 11, 28), "session"))
        Candle.objects.create(symbol="AAPL", timeframe="1h", ts=utc(2024, 11, 26, 16), open=100, high=100,
                              low=100, close=100, volume=1)
        findings = run_detectors([session_ctx("AAPL")], now=utc(2024, 11, 27, 21, 5), types={"off_calendar"})
        assert [(f.anomaly_type, f.period_start, f.affected_rows) for f in findings] == [
            ("off_calendar", utc(2024, 11, 26, 16), 1)]

    def test_a_session_series_is_stale_only_once_a_session_bar_is_due(self, settings):
        settings.SCHEDULE_BACKFILL_CRON = "*/15 * * * *"
        store("AAPL", synthetic_bars("AAPL", "1h", "XNYS", utc(2024, 11, 25), utc(2024, 11, 26), "session"))
        # Stored up to 11-25. The next bar, 11-26 09:30 EST (14:30 UTC), completes at 15:30 UTC,
        # published by 15:45 and due at that run, so the series is late past the 2 h grace from
        # 17:45 UTC (on the clock grid, the 09:00 bucket would have been due at 15:15, late from 17:15).
        assert run_detectors([session_ctx("AAPL")], now=utc(2024, 11, 26, 17, 30), types={"stale"}) == []
        stale = run_detectors([session_ctx("AAPL")], now=utc(2024, 11, 26, 17, 46), types={"stale"})
        assert [f.anomaly_type for f in stale] == ["stale"]

    def test_the_watchlist_gives_the_detectors_the_instruments_alignment(self):
        Instrument.objects.create(symbol="AAPL", asset_class="equity", calendar="XNYS", timeframes=["1h"],
                                  bar_alignment="session")
        [context] = series_contexts()
        assert context.alignment == "session"


@pytest.mark.django_db
class TestBackfillOfASessionAnchoredInstrument:
    def test_a_session_instrument_stores_every_session_bar_and_rejects_none(self):
        from integrity.backfill import run_backfill

        Instrument.objects.create(symbol="AAPL", asset_class="equity", calendar="XNYS", timeframes=["1h"],
                                  bar_alignment="session")
        result = run_backfill("AAPL", "1h", start=utc(2024, 11, 25), end=utc(2024, 12, 3),
                              now=utc(2024, 12, 3))
        expected = expected_bars("XNYS", "1h", utc(2024, 11, 25), utc(2024, 12, 3), "session")
        stored = pd.DatetimeIndex(Candle.objects.filter(symbol="AAPL").order_by("ts").values_list("ts", flat=True))
        assert (result.invalid, len(stored)) == (0, len(expected))
        assert stored.equals(expected.as_unit(stored.unit))


class TestCloseLabels:
    def ns(self, *local: str):
        return pd.DatetimeIndex(list(local)).tz_localize(NY).tz_convert("UTC").as_unit("ns").asi8

    def opens(self, values, alignment) -> list[str]:
        return local(pd.DatetimeIndex(values.view("M8[ns]")).tz_localize("UTC"))

    def test_a_close_stamp_moves_back_one_bar_on_the_clock_grid(self):
        closes = self.ns("2024-11-26 10:00", "2024-11-26 16:00")
        assert self.opens(bar_opens_from_closes("XNYS", "1h", closes), "clock") == ["11-26 09:00", "11-26 15:00"]

    def test_the_shortened_last_session_bar_opens_at_the_half_hour(self):
        closes = self.ns("2024-11-26 10:30", "2024-11-26 16:00", "2024-11-29 13:00")
        assert self.opens(bar_opens_from_closes("XNYS", "1h", closes, "session"), "session") == [
            "11-26 09:30", "11-26 15:30", "11-29 12:30"]


@pytest.mark.django_db
class TestBackfillCommandAlignmentOptions:
    def write(self, path, frame: pd.DataFrame) -> None:
        lines = ["time,open,high,low,close,volume"]
        lines += [f"{r.ts.strftime('%Y-%m-%dT%H:%M:%SZ')},{r.open!r},{r.high!r},{r.low!r},{r.close!r},"
                  f"{int(r.volume)}" for r in frame.itertuples(index=False)]
        path.write_text("\n".join(lines) + "\n")

    def run(self, *args) -> int:
        try:
            call_command("backfill", *args, stdout=io.StringIO(), stderr=io.StringIO())
        except CommandError as exc:
            return exc.returncode
        return 0

    def test_a_new_instrument_takes_the_bar_alignment_given(self, tmp_path):
        frame = synthetic_bars("AAPL", "1h", "XNYS", utc(2024, 11, 25), utc(2024, 11, 27), "session")
        self.write(tmp_path / "a.csv", frame)
        assert self.run("--symbol", "AAPL", "--timeframe", "1h", "--file", str(tmp_path / "a.csv"),
                        "--asset-class", "equity", "--bar-alignment", "session",
                        "--start", "2024-11-25", "--end", "2024-11-27") == 0
        assert Instrument.objects.get(symbol="AAPL").bar_alignment == "session"
        assert Candle.objects.filter(symbol="AAPL").count() == len(frame) == 14

    def test_close_labelled_bars_are_stored_at_their_open_and_the_run_says_so(self, tmp_path):
        frame = synthetic_bars("AAPL", "1h", "XNYS", utc(2024, 11, 25), utc(2024, 11, 27), "session")
        # Stamped at the close: 10:30 … 16:00 New York time, the last bar 30 minutes long.
        closes = pd.DatetimeIndex(frame["ts"]) + pd.Timedelta(hours=1)
        closes = closes.where(closes.tz_convert(NY).strftime("%H:%M") != "16:30",
                              closes - pd.Timedelta(minutes=30))
        shifted = frame.assign(ts=closes)
        self.write(tmp_path / "a.csv", shifted)
        assert self.run("--symbol", "AAPL", "--timeframe", "1h", "--file", str(tmp_path / "a.csv"),
                        "--asset-class", "equity", "--bar-alignment", "session", "--timestamp-label", "close",
                        "--start", "2024-11-25", "--end", "2024-11-27") == 0
        stored = pd.DatetimeIndex(Candle.objects.filter(symbol="AAPL").order_by("ts").values_list("ts", flat=True))
        assert stored.equals(pd.DatetimeIndex(frame["ts"]).as_unit(stored.unit))
        state = BackfillState.objects.get(symbol="AAPL")
        assert (state.details["timestamp_label"], state.details["bar_alignment"]) == ("close", "session")

    def test_bar_alignment_differing_from_an_existing_instrument_is_a_usage_error(self):
        Instrument.objects.create(symbol="AAPL", asset_class="equity", calendar="XNYS", timeframes=["1h"])
        with pytest.raises(CommandError, match="--bar-alignment is for new instruments") as error:
            call_command("backfill", "--symbol", "AAPL", "--timeframe", "1h", "--bar-alignment", "session",
                         stdout=io.StringIO(), stderr=io.StringIO())
        assert error.value.returncode == 2
        assert not BackfillState.objects.exists()

    def test_an_unknown_timestamp_label_is_refused_by_the_api_rules(self):
        from integrity.providers.base import ProviderConfigError
        from integrity.providers.csv import validate_options

        with pytest.raises(ProviderConfigError, match="timestamp_label must be 'open' or 'close'"):
            validate_options({"file": "x.csv", "timestamp_label": "end"})


@pytest.mark.django_db
class TestAlignmentOnTheReviewSurfaces:
    @pytest.fixture
    def api(self):
        from django.contrib.auth.models import User
        from rest_framework.test import APIClient

        client = APIClient()
        client.force_authenticate(User.objects.create_superuser("root", "root@example.com", "pw"))
        return client

    def instrument(self, **overrides) -> dict:
        return {"symbol": "AAPL", "asset_class": "equity", "calendar": "XNYS", "timeframes": ["1h"],
                "provider": "synthetic", **overrides}

    def test_the_api_creates_a_session_anchored_instrument(self, api):
        response = api.post("/api/v1/instruments/", self.instrument(bar_alignment="session"), format="json")
        assert response.status_code == 201, response.content
        assert response.json()["bar_alignment"] == "session"

    def test_the_api_refuses_an_alignment_the_provider_does_not_deliver(self, api):
        response = api.post("/api/v1/instruments/", self.instrument(bar_alignment="session", provider="alpaca"),
                            format="json")
        assert response.status_code == 400
        assert "delivers clock-aligned bars" in str(response.json()["bar_alignment"])

    def test_the_api_refuses_an_unknown_alignment(self, api):
        response = api.post("/api/v1/instruments/", self.instrument(bar_alignment="open"), format="json")
        assert response.status_code == 400
        assert "bar_alignment" in response.json()

    def test_the_admin_form_refuses_an_alignment_the_provider_does_not_deliver(self):
        from integrity.admin import InstrumentForm

        form = InstrumentForm(data={**self.instrument(bar_alignment="session", provider="binance",
                                                      asset_class="crypto", calendar="24/7"),
                                    "timeframes": ["1h"], "provider_options": "{}", "quality_thresholds": "{}",
                                    "active": True})
        assert not form.is_valid()
        assert "delivers clock-aligned bars" in str(form.errors["bar_alignment"])


@pytest.mark.django_db
def test_a_new_instrument_whose_load_stores_nothing_is_not_left_on_the_watchlist(tmp_path):
    frame = synthetic_bars("AAPL", "1h", "XNYS", utc(2024, 11, 25), utc(2024, 11, 27), "session")
    TestBackfillCommandAlignmentOptions().write(tmp_path / "a.csv", frame)
    code = TestBackfillCommandAlignmentOptions().run(
        "--symbol", "AAPL", "--timeframe", "1h", "--file", str(tmp_path / "a.csv"), "--asset-class", "equity",
        "--start", "2024-11-25", "--end", "2024-11-27")  # session-anchored bars, clock-aligned instrument
    assert code == 1
    assert not Instrument.objects.filter(symbol="AAPL").exists()
    assert BackfillState.objects.get(symbol="AAPL").error_message.startswith("14 of 14 bars rejected: misaligned_ts")
