"""Backfill ranges are bounded (one rule set for the API, the admin, the CLI and the service), and the
incremental anomaly scan survives any range already stored."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.admin.sites import AdminSite
from django.contrib.auth.models import User
from django.contrib.messages.storage.fallback import FallbackStorage
from django.test import RequestFactory
from django.utils import timezone

from integrity.admin import BackfillStateAdmin
from integrity.backfill import BackfillError, run_backfill, run_backfill_execution
from integrity.models import BackfillState, BackfillStatus, Candle, Instrument
from integrity.quality.anomalies import detect_data_anomalies
from integrity.ranges import RangeError, check_backfill_range
from integrity.tasks import request_backfill
from tests.helpers import add_instrument, refused_backfill, utc

NOW = utc(2024, 3, 1, 12, 30)


def refused(timeframe, start, end, **kwargs) -> RangeError:
    with pytest.raises(RangeError) as error:
        check_backfill_range(timeframe, start, end, now=kwargs.pop("now", NOW), **kwargs)
    return error.value


class TestTheRules:
    def test_a_start_before_1970_is_refused(self):
        error = refused("1d", datetime(1, 1, 1, tzinfo=UTC), None)
        assert (error.field, error.rule) == ("start", "before_earliest")
        assert "before 1970-01-01T00:00:00+00:00" in str(error)

    def test_1970_itself_is_allowed(self):
        check_backfill_range("1d", utc(1970, 1, 1), utc(1971, 1, 1), now=NOW)

    def test_a_start_in_the_future_is_refused(self):
        error = refused("1h", utc(9999, 1, 1), None)
        assert (error.field, error.rule) == ("start", "in_future")
        assert "in the future" in str(error)

    def test_an_end_after_the_bar_in_progress_is_refused(self):
        error = refused("1h", utc(2024, 3, 1), utc(2024, 3, 1, 14))
        assert (error.field, error.rule) == ("end", "in_future")
        assert "2024-03-01T13:00:00+00:00" in str(error)  # the end of the 12:00 bar

    def test_the_end_of_the_bar_in_progress_is_allowed(self):
        check_backfill_range("1h", utc(2024, 3, 1), utc(2024, 3, 1, 13), now=NOW)

    def test_an_end_before_1970_is_refused(self):
        error = refused("1d", None, utc(1969, 12, 31))
        assert (error.field, error.rule) == ("end", "before_earliest")

    def test_a_start_not_before_the_end_is_refused(self):
        error = refused("1h", utc(2024, 2, 1), utc(2024, 1, 1))
        assert (error.field, error.rule) == ("end", "empty_range")

    def test_more_bars_than_the_setting_allows_is_refused_naming_the_setting(self, settings):
        settings.BACKFILL_MAX_BARS = {**settings.BACKFILL_MAX_BARS, "1m": 1000}
        error = refused("1m", utc(2024, 2, 1), utc(2024, 2, 1, 16, 41))  # 1001 bars
        assert (error.field, error.rule) == (None, "too_many_bars")
        assert "1,001 1m bars" in str(error) and "BACKFILL_MAX_BARS_1M" in str(error)
        check_backfill_range("1m", utc(2024, 2, 1), utc(2024, 2, 1, 16, 40), now=NOW)  # exactly 1000

    def test_the_bar_limit_is_per_timeframe(self, settings):
        settings.BACKFILL_MAX_BARS = {**settings.BACKFILL_MAX_BARS, "1m": 1000}
        check_backfill_range("1h", utc(2024, 1, 1), utc(2024, 3, 1), now=NOW)

    def test_an_open_ended_range_is_counted_up_to_now(self, settings):
        settings.BACKFILL_MAX_BARS = {**settings.BACKFILL_MAX_BARS, "1h": 100}
        assert refused("1h", utc(2024, 2, 1), None).rule == "too_many_bars"

    def test_1m_from_1970_is_refused_by_default(self):
        error = refused("1m", utc(1970, 1, 1), None, now=timezone.now())
        assert error.rule == "too_many_bars"

    def test_a_provider_may_declare_its_earliest_bar(self, monkeypatch):
        from integrity.providers import synthetic

        monkeypatch.setattr(synthetic, "EARLIEST_BAR", utc(2017, 7, 14), raising=False)
        error = refused("1d", utc(2017, 1, 1), None, provider="synthetic")
        assert "the earliest bar provider synthetic has" in str(error)
        check_backfill_range("1d", utc(2017, 7, 14), None, provider="synthetic", now=NOW)


@pytest.mark.django_db
class TestTheApi:
    @pytest.fixture
    def client(self):
        from tests.helpers import client_for, user_with

        add_instrument()
        return client_for(user_with("view_backfillstate", "change_backfillstate"))

    def post(self, client, **body):
        return client.post("/api/v1/backfills/", {"symbol": "BTC-USD", "timeframe": "1h", **body}, format="json")

    @pytest.mark.parametrize("body,field,words", [
        ({"start": "0001-01-01T00:00:00Z"}, "start", "before 1970-01-01"),
        ({"start": "9999-01-01T00:00:00Z"}, "start", "in the future"),
        ({"end": "9999-01-01T00:00:00Z"}, "end", "in the future"),
        ({"start": "2024-02-01T00:00:00Z", "end": "2024-01-01T00:00:00Z"}, "end", "must be after start"),
    ])
    def test_a_range_out_of_bounds_is_400_naming_the_rule(self, client, body, field, words):
        response = self.post(client, **body)
        assert response.status_code == 400
        assert words in response.json()[field][0]
        assert not BackfillState.objects.exists()

    def test_too_many_bars_is_400_naming_the_setting(self, client):
        response = self.post(client, timeframe="1m", start="1970-01-01T00:00:00Z")
        assert response.status_code == 400
        [message] = response.json()["non_field_errors"]
        assert "more than one backfill may ask for" in message and "BACKFILL_MAX_BARS_1M" in message
        assert not BackfillState.objects.exists()

    def test_a_range_within_bounds_is_accepted(self, client):
        assert self.post(client, start="2024-01-01T00:00:00Z", end="2024-01-02T00:00:00Z").status_code == 202


@pytest.mark.django_db(transaction=True)  # a failing run closes and reopens its connection
class TestTheService:
    def test_request_backfill_refuses_before_claiming(self):
        add_instrument()
        with pytest.raises(BackfillError, match="before 1970"):
            request_backfill("BTC-USD", "1h", start=datetime(1, 1, 1, tzinfo=UTC))
        assert not BackfillState.objects.exists()

    def test_run_backfill_refuses_before_claiming(self):
        add_instrument()
        with pytest.raises(BackfillError, match="in the future"):
            run_backfill("BTC-USD", "1h", start=utc(9999, 1, 1))
        assert not BackfillState.objects.exists()

    def test_a_queued_execution_with_a_range_out_of_bounds_fails_with_the_reason(self):
        # A row written before the rules existed (or by hand): its run fails, it never stays pending.
        add_instrument()
        state = BackfillState.objects.create(symbol="BTC-USD", asset_class="crypto", timeframe="1h",
                                             range_start=datetime(1, 1, 1, tzinfo=UTC))
        result = run_backfill_execution(str(state.execution_id))
        assert result["status"] == "failed" and "before 1970" in result["error"]
        state.refresh_from_db()
        assert state.status == BackfillStatus.FAILED and "before 1970" in state.error_message
        assert not Candle.objects.exists()


@pytest.mark.django_db
class TestTheAdmin:
    def test_retrying_a_failed_execution_whose_range_is_too_long_is_refused_with_the_reason(self, settings):
        settings.BACKFILL_MAX_BARS = {**settings.BACKFILL_MAX_BARS, "1h": 100}
        add_instrument()
        failed = BackfillState.objects.create(symbol="BTC-USD", asset_class="crypto", timeframe="1h",
                                              status=BackfillStatus.FAILED, range_start=utc(2024, 1, 1),
                                              range_end=utc(2024, 2, 1), error_message="boom")
        request = RequestFactory().post("/admin/integrity/backfillstate/")
        request.user = User.objects.create_superuser("root")
        request.session = {}
        request._messages = FallbackStorage(request)
        BackfillStateAdmin(BackfillState, AdminSite()).retry_failed(request, BackfillState.objects.filter(pk=failed.pk))
        messages = [str(m) for m in request._messages]
        assert any("refused" in m and "BACKFILL_MAX_BARS_1H" in m for m in messages), messages
        assert BackfillState.objects.count() == 1


@pytest.mark.django_db(transaction=True)
class TestTheCommand:
    @pytest.mark.parametrize("args,words", [
        (("--start", "0001-01-01"), "before 1970-01-01"),
        (("--start", "9999-01-01"), "in the future"),
        (("--start", "2024-02-01", "--end", "2024-01-01"), "must be after start"),
        (("--timeframe", "1m", "--add-timeframe", "--start", "1970-01-01"), "BACKFILL_MAX_BARS_1M"),
    ])
    def test_a_range_out_of_bounds_is_exit_code_2_with_the_reason(self, args, words):
        add_instrument()
        error = refused_backfill("--symbols", "BTC-USD", *args, match=words)
        assert error.returncode == 2
        assert not BackfillState.objects.exists()

    def test_the_limit_applies_to_the_instruments_own_timeframes(self, settings):
        settings.BACKFILL_MAX_BARS = {**settings.BACKFILL_MAX_BARS, "1m": 1000}
        add_instrument(timeframes=("1h", "1m"))
        error = refused_backfill("--symbols", "BTC-USD", "--start", "2024-01-01", "--end", "2024-01-02", match="1m bars")
        assert error.returncode == 2

    def test_a_new_instrument_is_not_registered_when_the_range_is_refused(self):
        refused_backfill("--symbols", "NEW", "--asset-class", "crypto", "--start", "1900-01-01", match="before 1970")
        assert not Instrument.objects.exists()


@pytest.mark.django_db(transaction=True)
class TestStoredRangesNeverBreakTheScan:
    @pytest.fixture
    def scanned_series(self):
        add_instrument()
        run_backfill("BTC-USD", "1h", start=utc(2024, 1, 1), end=utc(2024, 1, 3), now=utc(2024, 1, 3, 0, 30))
        detect_data_anomalies(now=utc(2024, 1, 3, 0, 30))

    def pending_from_year_one(self):
        # Written straight to the table, as an old release's API accepted it.
        return BackfillState.objects.create(symbol="BTC-USD", asset_class="crypto", timeframe="1h",
                                            range_start=datetime(1, 1, 1, tzinfo=UTC),
                                            range_end=utc(2024, 1, 3))

    def test_the_incremental_scan_rereads_the_series_whole_instead_of_raising(self, scanned_series):
        self.pending_from_year_one()
        result = detect_data_anomalies(now=utc(2024, 1, 3, 0, 35))
        assert result.series_rescanned == 1 and result.findings == []

    def test_the_health_job_runs_without_error(self, scanned_series):
        from integrity.health.job import run_health_monitoring

        self.pending_from_year_one()
        report = run_health_monitoring(now=utc(2024, 1, 3, 0, 35))
        assert report.errors == []
        assert report.anomaly_scan["series_rescanned"] == 1

    def test_an_anomaly_stored_with_a_period_in_year_one_does_not_break_it_either(self, scanned_series):
        from integrity.models import DataAnomaly

        DataAnomaly.objects.create(symbol="BTC-USD", timeframe="1h", anomaly_type="gap", severity="high",
                                   description="legacy", affected_rows=1, fingerprint="legacy-gap",
                                   period_start=datetime(1, 1, 1, tzinfo=UTC),
                                   period_end=datetime(1, 1, 2, tzinfo=UTC))
        self.pending_from_year_one()
        assert detect_data_anomalies(now=utc(2024, 1, 3, 0, 35) + timedelta(minutes=1)).series_rescanned == 1
